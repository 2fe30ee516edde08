use strict;
use warnings;

package main;

# The filter object registered by run() in embedded mode; the process that
# loaded the filter file forks workers which then call
# main::_mailmunge_do_main_loop().
our $MAILMUNGE_FILTER;

sub _mailmunge_do_main_loop
{
	if (!$MAILMUNGE_FILTER) {
		print STDERR "No filter object was registered when the filter file was loaded.\n";
		print STDERR "Check the filter for errors with:\n";
		print STDERR "    perl -c /path/to/mailmunge-filter.pl\n";
		exit(42);
	}
	return $MAILMUNGE_FILTER->_main_loop();
}

package Mailmunge::Filter;

use Encode ();
use IO::File;
use IO::Handle;
use MIME::Base64 ();
use MIME::Parser;
use MIME::Words ();
use Socket qw(:addrinfo SOCK_RAW);
use Sys::Hostname ();
use Time::Local ();

use Mailmunge;
use Mailmunge::Constants;
use Mailmunge::Context;
use Mailmunge::Response;

=head1 NAME

Mailmunge::Filter - base class of Mailmunge filters

=head1 SYNOPSIS

    package MyFilter;
    use base qw(Mailmunge::Filter);

    sub filter_sender {
        my ($self, $ctx) = @_;
        return Mailmunge::Response->REJECT(message => 'Go away')
            if $ctx->canonical_sender eq 'spammer@example.com';
        return Mailmunge::Response->CONTINUE();
    }

    package main;
    my $filter = MyFilter->new();
    $filter->run();
    1;

=head1 DESCRIPTION

A filter file defines a subclass of Mailmunge::Filter that overrides some
of the C<filter_*> callbacks, creates one object and calls C<run>.  The
multiplexor runs the file as a worker process (with one of the arguments
C<-server>, C<-serveru>, C<-embserver> or C<-embserveru>) and feeds it one
command per line on standard input; each command ends up in a callback and
produces exactly one reply line on standard output.

An exception thrown by a callback is caught: it is logged, the command gets
a temporary-failure (or C<error:>) reply and the worker keeps serving.

=cut

# Commands whose reply is a verdict line ("ok N ..."); used to choose the
# reply when a handler dies.
my %VERDICT_COMMAND = map { $_ => 1 } qw(relayok helook senderok recipok);

# Messages up to this size (bytes) are parsed with the parser's scratch
# copies of encoded parts in memory rather than in files under the system
# temporary directory (protocol/perl-core.md "Scan cost").
our $TMP_IN_CORE_MAX = 4 * 1024 * 1024;

=head1 CONSTRUCTION AND RUNNING

=head2 new()

Creates the filter object and looks through C<@ARGV> (without removing
anything) for the mode argument: C<-server> (serve commands on
stdin/stdout), C<-serveru> (the same, plus status tags on file descriptor
3), C<-embserver> or C<-embserveru> (register the object for a process that
forks workers later).  C<-f> is accepted and ignored.  Zero or several mode
arguments print a usage message and exit, unless the environment variable
C<HARNESS_ACTIVE> is set (as under C<prove>), which allows unit tests to
create filter objects freely.

=cut

sub new
{
	my ($class) = @_;
	my $self = bless {
		do_status_tags  => 0,
		enter_main_loop => 0,
		status_tags     => [],
	}, $class;
	$self->_parse_cmdline_args();
	return $self;
}

sub _parse_cmdline_args
{
	my ($self) = @_;
	my $modes = 0;
	foreach my $arg (@ARGV) {
		if ($arg eq '-server') {
			$modes++;
			$self->{enter_main_loop} = 1;
		} elsif ($arg eq '-serveru') {
			$modes++;
			$self->{enter_main_loop} = 1;
			$self->{do_status_tags} = 1;
		} elsif ($arg eq '-embserver') {
			$modes++;
		} elsif ($arg eq '-embserveru') {
			$modes++;
			$self->{do_status_tags} = 1;
		} elsif ($arg eq '-f') {
			print STDERR "$0: the -f option is obsolete and is ignored\n";
		}
	}
	if ($modes > 1) {
		$self->_missing_cmdline_args('Only one of -server, -serveru, -embserver or -embserveru should be supplied');
	} elsif ($modes == 0) {
		$self->_missing_cmdline_args("Usage: $0 -server|-serveru|-embserver|-embserveru");
	}
	$self->_open_status_handle() if $self->{do_status_tags};
	return;
}

# Hook for bad command lines.  Under a test harness it does nothing, so
# tests can build filter objects without arguments.
sub _missing_cmdline_args
{
	my ($self, $msg) = @_;
	return if $ENV{HARNESS_ACTIVE};
	print STDERR "This program is a Mailmunge filter; it is meant to be started by\n";
	print STDERR "mailmunge-multiplexor, not run by hand.\n";
	print STDERR "$msg\n";
	exit(1);
}

# Adopt file descriptor 3 (the status pipe) without duplicating it.  If it
# is not open, status tags stay off.
sub _open_status_handle
{
	my ($self) = @_;
	return 1 if $self->{status_handle};
	my $fh;
	if (open($fh, '>&=', 3)) {
		$fh->autoflush(1);
		$self->{status_handle} = $fh;
		return 1;
	}
	return 0;
}

=head2 run()

Calls C<prefork_initialize>, then either serves commands until standard
input ends (C<-server>, C<-serveru>; the process then exits) or registers
the object as C<$main::MAILMUNGE_FILTER> and returns 0 (embedded modes, or
no mode under a test harness).

=cut

sub run
{
	my ($self) = @_;
	$self->prefork_initialize();
	return $self->_main_loop() if $self->{enter_main_loop};
	$self->_register();
	return 0;
}

# Store the filter where main::_mailmunge_do_main_loop finds it.
sub _register
{
	my ($self) = @_;
	die("Filter already registered\n") if $main::MAILMUNGE_FILTER;
	$main::MAILMUNGE_FILTER = $self;
	return;
}

sub _init_logging
{
	my ($self) = @_;
	eval { Sys::Syslog::openlog($self->log_identifier, $self->log_options, $self->log_facility); };
	return;
}

# Workers start every command in the spool directory; failure is not fatal.
sub _cd_to_spooldir
{
	my $dir = Mailmunge::Constants->get('Path:SPOOLDIR');
	chdir($dir) if defined($dir);
	return;
}

# The part of a worker's start that needs none of the multiplexor's
# descriptors (syslog, the spool directory).  With -E the spare worker does
# it while it waits for them, off the activation's path
# (protocol/multiplexor.md §23); _main_loop then skips it.
sub _prepare_worker
{
	my ($self) = @_;
	return if $self->{_worker_prepared};
	require Sys::Syslog;
	$self->_init_logging();
	$self->_cd_to_spooldir();
	$self->{_worker_prepared} = 1;
	return;
}

# The worker's command loop: one line in, one line out, until EOF.
sub _main_loop
{
	my ($self) = @_;
	$self->_open_status_handle() if $self->{do_status_tags};
	$self->_protect_reply_channel();
	$self->_prepare_worker();
	# A worker that cannot initialise must not serve mail; make sure the
	# reason reaches syslog as well as stderr.
	if (!eval { $self->initialize(); 1 }) {
		my $err = $@;
		$self->log('NOQUEUE', 'err', 'initialize() failed: ' . _one_line($err));
		die($err);
	}

	while (defined(my $line = <STDIN>)) {
		$self->_cd_to_spooldir();
		chomp($line);
		$self->_do_command_line($line);
	}

	my $ret = eval { $self->cleanup() };
	if ($@) {
		$self->log('NOQUEUE', 'err', 'cleanup() died: ' . _one_line($@));
		$ret = 0;
	}
	if (!defined($ret) || $ret !~ /^-?\d+$/) {
		$self->log('NOQUEUE', 'warning', 'cleanup() did not return an integer; exiting with status 0');
		$ret = 0;
	}
	exit($ret);
}

# Run one command line.  Exactly one reply line, unless a handler returned
# normally without replying (see below).
sub _do_command_line
{
	my ($self, $line) = @_;
	my @args = map { $self->_percent_decode($_) } split(/\s+/, $line);
	my $cmd = @args ? lc(shift(@args)) : '';

	$self->{_replies} = 0;
	my $handler;
	$handler = "_handle_$cmd" if $cmd =~ /^\w+$/;
	my $ok = eval {
		if ($handler && $self->can($handler)) {
			$self->$handler(@args);
		} else {
			my $resp = $self->unknown_command($cmd, @args);
			$resp = $self->_ensure_response('NOQUEUE', $resp, 'unknown_command');
			$self->_reply_with_status('NOQUEUE', $resp, 'unknown_command');
		}
		1;
	};
	if (!$ok) {
		my $err = _one_line($@);
		$self->log('NOQUEUE', 'err', "Command '$cmd' failed: $err");
		$self->{status_tags} = [];
		if ($self->{_replies} == 0) {
			if ($cmd eq 'map') {
				$self->_reply_array('TEMP', 'Internal software error');
			} elsif ($VERDICT_COMMAND{$cmd} || !$handler || !$self->can($handler)) {
				$self->_reply_with_status('NOQUEUE', Mailmunge::Response->TEMPFAIL(message => 'Internal software error'), $cmd);
			} else {
				$self->_reply_error("$cmd failed: $err");
			}
		}
	} elsif ($self->{_replies} == 0) {
		# Possibly a subclass handler that forgot to reply, or an
		# override of _reply_to_mx that writes by itself: a line of
		# ours could desynchronise the pipe, so only log.
		$self->log('NOQUEUE', 'err', "Command '$cmd' produced no reply through _reply_to_mx");
	}
	return;
}

# Keep the reply pipe for replies only: a stray print (or a program run by
# the filter) writing to standard output would otherwise desynchronise
# the multiplexor.  Replies go to a private duplicate of fd 1 (closed on
# exec); STDOUT itself is pointed at STDERR, which the multiplexor logs.
sub _protect_reply_channel
{
	my ($self) = @_;
	return if $self->{reply_fh};
	# A subclass that overrides _reply_to_mx may print to STDOUT itself;
	# leave STDOUT alone for it, as upstream did.
	return unless ($self->can('_reply_to_mx') // 0) == \&_reply_to_mx;
	my $reply;
	open($reply, '>&', \*STDOUT) or return;
	$reply->autoflush(1);
	if (!open(STDOUT, '>&', \*STDERR)) {
		close($reply);
		return;
	}
	STDOUT->autoflush(1);
	$self->{reply_fh} = $reply;
	return;
}

sub _one_line
{
	my ($msg) = @_;
	$msg = 'unknown error' unless defined($msg) && $msg ne '';
	$msg =~ s/\s+$//;
	$msg =~ s/[\r\n]+/ /g;
	return $msg;
}

# ------------------------------------------------------------------ replies

# Private: every reply goes through here, flushed at once.
sub _reply_to_mx
{
	my ($self, $msg) = @_;
	$self->{_replies}++;
	my $fh = $self->{reply_fh} || \*STDOUT;
	# print then flush: what printflush does, without its select dance.
	print {$fh} "$msg\n";
	$fh->flush();
	return;
}

sub _reply_error
{
	my ($self, $msg) = @_;
	if ($msg) {
		$msg =~ s/[\r\n]+/ /g;
		return $self->_reply_to_mx("error: $msg");
	}
	return $self->_reply_to_mx('error:');
}

sub _reply_ok
{
	my ($self, $msg) = @_;
	return $self->_reply_to_mx($msg ? "ok $msg" : 'ok');
}

sub _reply_array
{
	my ($self, @items) = @_;
	return $self->_reply_to_mx(join(' ', map { $self->_percent_encode($_, '?') } @items));
}

# Private: the verdict line "ok N message code dsn delay".
sub _reply_with_status
{
	my ($self, $ctx, $resp, $what) = @_;
	$resp->fix_code_dsn();
	my $status = $resp->status // '';
	my $n;
	if ($status eq 'CONTINUE') {
		$n = 1;
	} elsif ($status eq 'ACCEPT_AND_NO_MORE_FILTERING') {
		$n = 2;
		$self->log($ctx, 'debug', 'ACCEPT_AND_NO_MORE_FILTERING: No further filtering for this message');
	} elsif ($status eq 'DISCARD') {
		$n = 3;
		$self->log($ctx, 'info', 'DISCARD: Discarding this message');
	} elsif ($status eq 'REJECT') {
		$n = 0;
		$self->log($ctx, 'debug', "REJECT: rejected $what");
	} else {
		if ($status ne 'TEMPFAIL') {
			$self->log($ctx, 'warning', "Unknown code $status given to reply_with_status: Converting to TEMPFAIL");
		}
		$n = -1;
		$self->log($ctx, 'debug', "TEMPFAIL: tempfailed $what");
	}
	return $self->_reply_to_mx("ok $n " . join(' ', map { $self->_percent_encode($_, '?') }
						    ($resp->message, $resp->code, $resp->dsn, $resp->delay)));
}

# Private: anything but a Response becomes a logged tempfail.
sub _ensure_response
{
	my ($self, $ctx, $resp, $func) = @_;
	return $resp if ref($resp) && eval { $resp->isa('Mailmunge::Response') };
	$self->log($ctx, 'err', "$func did NOT return a Mailmunge::Response object!  Check your filter code; tempfailing");
	return Mailmunge::Response->TEMPFAIL(message => 'Internal software error');
}

# ------------------------------------------------------------------ percent codec

# Lookup tables of the percent codec: byte => '%XX', and 'XX' (either
# case) => byte; cheaper than formatting or converting each match.
my %PERCENT_ESCAPE = map { chr($_) => sprintf('%%%02X', $_) } 0 .. 255;
my %PERCENT_BYTE;
foreach my $byte (0 .. 255) {
	my ($hi, $lo) = (sprintf('%x', $byte >> 4), sprintf('%x', $byte & 15));
	foreach my $h (lc($hi), uc($hi)) {
		$PERCENT_BYTE{"$h$_"} = chr($byte) foreach (lc($lo), uc($lo));
	}
}

# Private (used by Context and test helpers): escape every byte outside
# 0x21..0x7E and % \ ' " as %XX.  Blank input encodes $default instead.
sub _percent_encode
{
	my ($self, $str, $default) = @_;
	$str = $default if !defined($str) || $str eq '';
	$str = '' unless defined($str);
	# Characters that do not fit in a byte are sent as UTF-8 rather than
	# being cut down to their low 8 bits.
	utf8::encode($str) if $str =~ /[^\x00-\xFF]/;
	$str =~ s/([^\x21-\x7E]|[%\\'"])/$PERCENT_ESCAPE{$1}/g;
	return $str;
}

# Private: undo _percent_encode.  A % not followed by two hex digits is
# kept as it is.  Blank input decodes $default instead.
sub _percent_decode
{
	my ($self, $str, $default) = @_;
	$str = $default if !defined($str) || $str eq '';
	$str = '' unless defined($str);
	# Most fields have nothing escaped; skip the substitution for them.
	return $str if index($str, '%') < 0;
	$str =~ s/%([0-9A-Fa-f]{2})/$PERCENT_BYTE{$1}/g;
	return $str;
}

# ------------------------------------------------------------------ commands

sub _handle_ping
{
	my ($self) = @_;
	return $self->_reply_to_mx('PONG');
}

sub _handle_map
{
	my ($self, $map, $key) = @_;
	my ($code, $val) = $self->filter_map($map, $key);
	return $self->_reply_array($code, $val);
}

sub _handle_tick
{
	my ($self, $n) = @_;
	$n ||= 0;
	if ($self->tick($n)) {
		return $self->_reply_array('tock', $n);
	}
	return $self->_reply_error("tick $n: Filter does not implement tick method");
}

# Private: the Context of a relayok/helook check; @more are further
# field => value pairs.
sub _connection_context
{
	my ($self, $ip, $name, $port, $myip, $myport, $qid, @more) = @_;
	return Mailmunge::Context->new(
		hostip          => $ip,
		hostname        => $name,
		connecting_ip   => $ip,
		connecting_name => $name,
		client_port     => $port,
		my_ip           => $myip,
		my_port         => $myport,
		qid             => $qid,
		mta_is_postfix  => $self->mta_is_postfix() ? 1 : 0,
		@more,
	);
}

sub _handle_relayok
{
	my ($self, $ip, $name, $port, $myip, $myport, $qid) = @_;
	my $ctx = $self->_connection_context($ip, $name, $port, $myip, $myport, $qid);
	my $resp = $self->filter_relay($ctx);
	$resp = $self->_ensure_response($ctx, $resp, 'filter_relay');
	return $self->_reply_with_status($ctx, $resp, 'host ' . ($ip // '') . ' (' . ($name // '') . ')');
}

sub _handle_helook
{
	my ($self, $ip, $name, $helo, $port, $myip, $myport, $qid) = @_;
	my $ctx = $self->_connection_context($ip, $name, $port, $myip, $myport, $qid, helo => $helo);
	my $resp = $self->filter_helo($ctx);
	$resp = $self->_ensure_response($ctx, $resp, 'filter_helo');
	return $self->_reply_with_status($ctx, $resp, 'helo ' . ($helo // ''));
}

# Private: for senderok/recipok, chdir into the message directory and read
# its COMMANDS file.  Returns the Context (with cwd set), or undef after
# replying with a tempfail.
sub _message_context
{
	my ($self, $dir, $qid, $what) = @_;
	if (!defined($dir) || !chdir($dir)) {
		my $err = "$!";
		$dir = '' unless defined($dir);
		$self->_reply_with_status($qid, Mailmunge::Response->TEMPFAIL(message => "Could not chdir($dir): $err"), $what);
		return undef;
	}
	my $ctx = $self->read_commands_file();
	if (!$ctx) {
		$self->_reply_with_status($qid, Mailmunge::Response->TEMPFAIL(message => 'Could not read COMMANDS file'), $what);
		return undef;
	}
	$ctx->cwd($dir);
	return $ctx;
}

sub _handle_senderok
{
	my ($self, $sender, $ip, $name, $helo, $dir, $qid, @esmtp) = @_;
	my $what = 'sender ' . ($sender // '');
	my $ctx = $self->_message_context($dir, $qid, $what) or return;
	$ctx->esmtp_args(\@esmtp);
	my $resp = $self->filter_sender($ctx);
	$resp = $self->_ensure_response($ctx, $resp, 'filter_sender');
	return $self->_reply_with_status($ctx, $resp, $what);
}

sub _handle_recipok
{
	my ($self, $rcpt, $sender, $ip, $name, $first, $helo, $dir, $qid,
	    $mailer, $host, $addr, @esmtp) = @_;
	my $what = 'recipient ' . ($rcpt // '');
	my $ctx = $self->_message_context($dir, $qid, $what) or return;
	$ctx->recipients([$rcpt]) if defined($rcpt);
	$ctx->first_recip($first);
	$ctx->rcpt_mailer($mailer);
	$ctx->rcpt_host($host);
	$ctx->rcpt_addr($addr);
	$ctx->esmtp_args(\@esmtp);

	my $resp = $self->filter_recipient($ctx);
	$resp = $self->_ensure_response($ctx, $resp, 'filter_recipient');

	# Postfix's non-SMTP milter (mail submitted locally, seen as coming
	# from loopback) cannot refuse single recipients.
	if (defined($ip) && ($ip eq '127.0.0.1' || $ip eq '::1') && $self->mta_is_postfix()) {
		if (!$resp->is_success_or_discard) {
			$self->log($ctx, 'warning', 'Converting ' . $resp->status . ' to CONTINUE for Postfix mail on loopback');
			$resp->status('CONTINUE');
			$resp->fix_code_dsn();
		}
	}
	return $self->_reply_with_status($ctx, $resp, $what);
}

# Private: the scan command - run filter_message and filter_wrapup on the
# message in $dir and leave the answer in RESULTS (and NEWBODY).
sub _handle_scan
{
	my ($self, $qid, $dir) = @_;
	if (!defined($dir) || !chdir($dir)) {
		my $err = "$!";
		return $self->_reply_error('Could not chdir(' . ($dir // '') . "): $err");
	}

	$self->push_tag($qid, 'Reading COMMANDS');
	my $ctx = $self->read_commands_file(undef, 1);
	$self->pop_tag($qid);
	return $self->_reply_error('Could not read COMMANDS file') unless $ctx;

	$ctx->in_message_context(1);
	$ctx->cwd($dir);

	my $ok = eval { $self->_scan_message($ctx, $qid); 1 };
	if (!$ok) {
		my $err = _one_line($@);
		# Leave RESULTS without its final F: the milter must not act
		# on half a set of changes.
		eval { $ctx->{results_fh}->close() if $ctx->{results_fh}; };
		delete $ctx->{results_fh};
		$self->{status_tags} = [];
		$self->log($ctx, 'err', "scan failed: $err");
		return $self->_reply_error("scan failed: $err");
	}
	return;
}

# Private: the body of scan after COMMANDS has been read.  Replies itself;
# dies on unexpected errors (the caller turns that into an error reply).
sub _scan_message
{
	my ($self, $ctx, $qid) = @_;
	my $workdir = './Work';
	if (!mkdir($workdir, 0750)) {
		return $self->_reply_error("Could not mkdir($workdir): $!");
	}
	my $fh = $self->inputmsg_fh();
	if (!$fh) {
		my $err = "$!";
		$ctx->_signal_complete();
		return $self->_reply_error('Could not open ' . $self->inputmsg() . ": $err");
	}
	my $size = -s $fh;
	my $parser = $self->_mime_parser($workdir, defined($size) && $size <= $TMP_IN_CORE_MAX);
	$self->push_tag($qid, 'Parsing Message');
	my $entity = eval { $parser->parse($fh) };
	my $perr = $@ ? _one_line($@) : "$!";
	$self->pop_tag($qid);
	close($fh);
	if (!$entity) {
		$ctx->_signal_complete();
		return $self->_reply_error('Could not parse MIME in ' . $self->inputmsg() . ": $perr");
	}
	$ctx->mime_entity($entity);

	# A copy we re-sent ourselves (Mailmunge::Action::Stream) names the
	# original client; only believe that when it came from this host.
	my $remailed = $entity->head->get('X-Mailmunge-Remailed');
	if (defined($remailed)) {
		my $cip = $ctx->connecting_ip // '';
		if ($cip eq '127.0.0.1' || $cip eq '::1') {
			my @words = split(' ', $remailed);
			if (@words == 2) {
				my ($ip, $orig_qid) = @words;
				$self->log($ctx, 'info', "Resent from queue-ID: $orig_qid; original IP: $ip");
				$ctx->hostip($ip);
				$ctx->hostname($self->ip_to_hostname($ip));
				$ctx->was_resent(1);
			}
		}
		$ctx->action_delete_all_headers('X-Mailmunge-Remailed');
	}

	$self->push_tag($qid, 'In filter_message');
	my $ret = $self->filter_message($ctx);
	$self->pop_tag($qid);
	$ctx->action_from_response($ret);

	if ($ctx->new_mime_entity && !$ctx->message_rejected) {
		# On failure _replace_message has already replied.
		return unless $self->_replace_message($ctx);
	}

	if (!$ctx->message_rejected) {
		$self->push_tag($qid, 'In filter_wrapup');
		$ctx->in_filter_wrapup(1);
		$ret = $self->filter_wrapup($ctx);
		$ctx->action_from_response($ret);
		$self->pop_tag($qid);
		$ctx->in_filter_wrapup(0);
	}

	$ctx->_signal_complete();
	return $self->_reply_ok();
}

# Private: RESULTS helpers as older filters called them on the filter
# object ($filter->_write_result_line($ctx, ...)); the Context owns them.
sub _write_result_line { my ($self, $ctx, @rest) = @_; return $ctx->_write_result_line(@rest); }
sub _signal_complete   { my ($self, $ctx) = @_; return $ctx ? $ctx->_signal_complete() : undef; }
sub _signal_changed    { my ($self, $ctx) = @_; return $ctx->_signal_changed(); }
sub _log_if_postfix
{
	my ($self, $ctx, $level, $msg) = @_;
	return unless $self->mta_is_postfix();
	return $self->log($ctx, $level, $msg);
}

# Private: the parser for one scan.  Ours is made once per worker for each
# setting and reused: MIME::Parser resets all its per-message state when a
# parse starts, and output file names come from a counter of the filer
# class, not of the object.  A subclass that overrides _create_mime_parser
# gets its own parser for every scan, as before.
sub _mime_parser
{
	my ($self, $dir, $tmp_in_core) = @_;
	my $ours = ($self->can('_create_mime_parser') // 0) == \&_create_mime_parser;
	return $self->_create_mime_parser($dir, $tmp_in_core) unless $ours;
	my $key = ($tmp_in_core ? 1 : 0) . $dir;
	return $self->{_mime_parsers}{$key} //= $self->_create_mime_parser($dir, $tmp_in_core);
}

# Private: a MIME::Parser that files bodies on disk under $dir.  With
# $tmp_in_core its temporary copies stay in memory: the bodies and the
# entity are the same either way, only cheaper to make.
sub _create_mime_parser
{
	my ($self, $dir, $tmp_in_core) = @_;
	my $parser = Mailmunge::Filter::_Parser->new();
	$parser->extract_nested_messages(1);
	$parser->extract_uuencode(1);
	$parser->output_to_core(0);
	$parser->tmp_to_core($tmp_in_core ? 1 : 0);
	my $filer = Mailmunge::Filter::_FileInto->new($dir);
	$filer->ignore_filename(1);
	$parser->filer($filer);
	return $parser;
}

# Private: write NEWBODY and the M / MIME-Version / C lines.  Returns 1,
# or 0 after replying with an error.
sub _replace_message
{
	my ($self, $ctx) = @_;
	my $entity = $ctx->new_mime_entity;
	if (!$entity) {
		$ctx->_signal_complete();
		$self->_reply_error('No replacement entity for _replace_message()');
		return 0;
	}
	my $fh;
	if (!open($fh, '>', $self->_newbody())) {
		my $err = "$!";
		$ctx->_signal_complete();
		$self->_reply_error('Could not open ' . $self->_newbody() . ": $err");
		return 0;
	}
	$self->push_tag($ctx, 'Writing new body');
	$entity->print_body($fh);
	$self->pop_tag($ctx);
	if (!close($fh)) {
		my $err = "$!";
		$ctx->_signal_complete();
		$self->_reply_error('Could not close ' . $self->_newbody() . ": $err");
		return 0;
	}

	my $head = $entity->head;
	my $ct = $head->get('Content-Type');
	if (!defined($ct)) {
		$ct = $entity->mime_type;
		my $boundary = $head->multipart_boundary;
		$ct .= "; boundary=\"$boundary\"" if defined($boundary);
	}
	$ct =~ s/^\s+//;
	$ct =~ s/\s+$//;
	$ctx->_write_result_line('M', $ct);

	# Bring the other Content-* headers of the message in line with the
	# replacement's.  "Old" is whatever $ctx->mime_entity is now: normally
	# the replacement itself (then nothing is emitted), but Compat filters
	# put the rebuilt original back there.  Upstream walked these in hash
	# order; we sort them so the RESULTS bytes are reproducible.
	my $old_entity = $ctx->mime_entity;
	my $old_head = $old_entity ? $old_entity->head : undef;
	my (%new_hdr, %old_hdr);
	foreach my $tag (grep { /^content-/i } $head->tags) {
		$new_hdr{lc($tag)} = [$tag, $head->get($tag)];
	}
	if ($old_head) {
		foreach my $tag (grep { /^content-/i } $old_head->tags) {
			$old_hdr{lc($tag)} = [$tag, $old_head->get($tag)];
		}
	}
	foreach my $key (sort keys %new_hdr) {
		next if $key eq 'content-type';
		my ($name, $val) = @{$new_hdr{$key}};
		$val = '' unless defined($val);
		next if exists($old_hdr{$key}) && defined($old_hdr{$key}->[1]) && $old_hdr{$key}->[1] eq $val;
		chomp($val);
		$ctx->action_change_header($name, $val);
	}
	foreach my $key (sort keys %old_hdr) {
		next if $key eq 'content-type' || exists($new_hdr{$key});
		$ctx->action_delete_header($old_hdr{$key}->[0]);
	}

	if (!$head->get('MIME-Version')) {
		$ctx->action_change_header('MIME-Version', '1.0');
	}
	$ctx->_signal_changed();
	return 1;
}

=head1 CALLBACKS

Override these in your subclass.

=head2 initialize()

Called once in every worker process before it serves its first command
(after the fork in embedded mode).  Open per-process resources, such as
database handles, here.

=head2 prefork_initialize()

Called by C<run> before anything else.  In embedded mode this happens
once, before workers are forked, so it suits read-only data that can be
shared.

=head2 cleanup()

Called when the multiplexor closes the worker's input.  Its integer return
value becomes the worker's exit status (anything else counts as 0).

=head2 filter_relay($ctx)

Called when a client connects.  Must return a L<Mailmunge::Response>.
The base version returns CONTINUE.

=head2 filter_helo($ctx)

Called for HELO/EHLO.  Must return a Response; the base version returns
CONTINUE.

=head2 filter_sender($ctx)

Called for MAIL FROM.  Must return a Response; the base version returns
CONTINUE.

=head2 filter_recipient($ctx)

Called for each RCPT TO.  Must return a Response; the base version
returns CONTINUE.

=head2 filter_message($ctx)

Called once the whole message has arrived.  Inspect C<< $ctx->mime_entity >>
and use the Context's action methods; returning a Response with status
TEMPFAIL, REJECT or DISCARD applies it.  The base version does nothing.

=head2 filter_wrapup($ctx)

Called after C<filter_message> (same Context) unless the message was
rejected, discarded or tempfailed; the body can no longer be replaced but
headers can (DKIM signing goes here).  The base version does nothing.

=head2 filter_map($map, $key)

Answers a Sendmail socketmap lookup with a two-element list: a code
(C<OK>, C<NOTFOUND>, C<TEMP>, C<TIMEOUT> or C<PERM>) and a value or
message.  The base version answers C<PERM>.

=head2 tick($n)

Called periodically when the multiplexor is configured for it; return
true on success.  The base version returns 0.

=head2 unknown_command($cmd, @args)

Called for a command the filter has no handler for; must return a
Response.  The base version rejects with C<Unknown command>.

=cut

sub initialize         { return; }
sub prefork_initialize { return; }
sub cleanup            { return 0; }
sub filter_relay       { return Mailmunge::Response->CONTINUE(); }
sub filter_helo        { return Mailmunge::Response->CONTINUE(); }
sub filter_sender      { return Mailmunge::Response->CONTINUE(); }
sub filter_recipient   { return Mailmunge::Response->CONTINUE(); }
sub filter_message     { return; }
sub filter_wrapup      { return; }
sub filter_map         { return ('PERM', 'Filter does not implement map method'); }
sub tick               { return 0; }
sub unknown_command    { return Mailmunge::Response->REJECT(message => 'Unknown command'); }

=head1 HELPERS

Unless noted, these can be called on the class as well as on an object.

=head2 mailmunge_version()

The Mailmunge version string.

=cut

sub mailmunge_version { return $Mailmunge::VERSION; }

=head2 log_identifier()

=head2 log_options()

=head2 log_facility()

The arguments given to C<openlog>: C<mailmunge-filter>, C<pid,ndelay> and
C<mail>.  Override them to log differently.

=cut

sub log_identifier { return 'mailmunge-filter'; }
sub log_options    { return 'pid,ndelay'; }
sub log_facility   { return 'mail'; }

=head2 product_name()

C<Mailmunge>; used in the synthesized Received: header.

=cut

sub product_name { return 'Mailmunge'; }

=head2 log($ctx_or_qid, $level, $message)

Logs C<$message> to syslog at C<$level>, prefixed with the queue ID taken
from the Context (or given as a string) unless it is empty or C<NOQUEUE>.
Plugins log through this method, so overriding it captures their messages.

=cut

sub log
{
	my ($self, $ctx, $level, $msg) = @_;
	my $qid = ref($ctx) ? $ctx->qid : $ctx;
	$msg = '' unless defined($msg);
	$msg = "$qid: $msg" if defined($qid) && $qid ne '' && $qid ne 'NOQUEUE';
	Mailmunge::Context::_syslog($level, $msg);
	return;
}

=head2 canonical_email($address)

Lower-cases C<$address> and removes one leading C<< < >> and one trailing
C<< > >>.

=cut

sub canonical_email
{
	my ($self, $email) = @_;
	$email = '' unless defined($email);
	$email = lc($email);
	$email =~ s/^<//;
	$email =~ s/>$//;
	return $email;
}

=head2 domain_of($address)

The part of the canonical address after its last C<@> (the whole canonical
address when there is none).

=cut

sub domain_of
{
	my ($self, $email) = @_;
	$email = $self->canonical_email($email);
	$email =~ s/.*@//;
	return $email;
}

=head2 ip_to_hostname($ip [, $fcrdns])

Reverse-resolves an IPv4 or IPv6 address.  With C<$fcrdns> true (the
default) the name must also resolve forward to the same address.  Returns
the name, or C<[$ip]> when there is no (confirmed) name.

=cut

sub ip_to_hostname
{
	my ($self, $ip, $fcrdns) = @_;
	$fcrdns = 1 unless defined($fcrdns);
	return '[]' unless defined($ip);
	my ($err, @ai) = getaddrinfo($ip, '', { socktype => SOCK_RAW });
	return "[$ip]" if $err || !@ai;
	my ($name, $addr);
	foreach my $a (@ai) {
		my ($nerr, $host) = getnameinfo($a->{addr}, 0, NIx_NOSERV);
		next if $nerr || !defined($host);
		($name, $addr) = ($host, $a->{addr});
		last;
	}
	return "[$ip]" unless defined($name);
	return $name unless $fcrdns;
	my ($ferr, @fwd) = getaddrinfo($name, '', { socktype => SOCK_RAW });
	return "[$ip]" if $ferr;
	foreach my $f (@fwd) {
		return $name if $f->{addr} eq $addr;
	}
	return "[$ip]";
}

my ($MTA_IS_POSTFIX, $MTA_IS_SENDMAIL);

# Decide once per process which MTA we work for.
sub _detect_mta
{
	return if defined($MTA_IS_POSTFIX);
	($MTA_IS_POSTFIX, $MTA_IS_SENDMAIL) = (0, 0);
	my $forced = $ENV{MAILMUNGE_MTA};
	if (defined($forced) && $forced ne '') {
		$MTA_IS_POSTFIX = 1 if lc($forced) eq 'postfix';
		$MTA_IS_SENDMAIL = 1 if lc($forced) eq 'sendmail';
		return;
	}
	my $pf = -r '/etc/postfix/main.cf';
	my $sm = -r '/etc/mail/sendmail.cf';
	if ($pf && !$sm) { $MTA_IS_POSTFIX = 1; return; }
	if ($sm && !$pf) { $MTA_IS_SENDMAIL = 1; return; }
	my $prog = Mailmunge::Constants->get_program_path('sendmail') or return;
	my $out;
	if (open($out, '-|', "'$prog' -bt < /dev/null 2>&1")) {
		while (defined(my $l = <$out>)) {
			if ($l =~ /unsupported: -bt/i) { $MTA_IS_POSTFIX = 1; last; }
			if ($l =~ /address test mode/i) { $MTA_IS_SENDMAIL = 1; last; }
		}
		close($out);
	}
	return;
}

=head2 mta_is_postfix()

=head2 mta_is_sendmail()

Return 1 if the MTA is Postfix (respectively Sendmail), else 0.  The answer
is worked out once per process from the MTA's configuration files, or by
asking C<sendmail -bt> when they are ambiguous.  The environment variable
C<MAILMUNGE_MTA> (C<postfix>, C<sendmail> or anything else for neither)
skips the detection.

=cut

sub mta_is_postfix  { _detect_mta(); return $MTA_IS_POSTFIX; }
sub mta_is_sendmail { _detect_mta(); return $MTA_IS_SENDMAIL; }

=head2 inputmsg()

=head2 headers_file()

=head2 pristine_headers_file()

The names, relative to the message directory, of the complete message
(C<INPUTMSG>), its unfolded top-level headers (C<HEADERS>) and the headers
exactly as received (C<PRISTINE_HEADERS>).

=cut

sub inputmsg              { return 'INPUTMSG'; }
sub headers_file          { return 'HEADERS'; }
sub pristine_headers_file { return 'PRISTINE_HEADERS'; }
sub _commands_file        { return 'COMMANDS'; }
sub _newbody              { return 'NEWBODY'; }

=head2 inputmsg_fh()

Opens the message file for reading and returns the handle, or undef.

=cut

sub inputmsg_fh
{
	my ($self) = @_;
	my $fh;
	open($fh, '<', $self->inputmsg()) or return undef;
	return $fh;
}

=head2 inputmsg_absolute($ctx)

The absolute path of the message file, or undef outside message context.

=cut

sub inputmsg_absolute
{
	my ($self, $ctx) = @_;
	return undef unless $ctx && $ctx->in_message_context();
	return $ctx->cwd . '/' . $self->inputmsg();
}

=head2 spooldir()

The configured spool directory (C<Path:SPOOLDIR>).

=cut

sub spooldir { return Mailmunge::Constants->get('Path:SPOOLDIR'); }

=head2 read_commands_file($ctx, $need_f)

Reads the COMMANDS file of the current directory into C<$ctx> (a new
Context when undef).  With C<$need_f> true the file must end with its
C<F> line.  Returns the Context, or undef (after logging) on failure.

=cut

sub read_commands_file
{
	my ($self, $ctx, $need_f) = @_;
	my $fh;
	if (!open($fh, '<', $self->_commands_file())) {
		$self->log($ctx, 'err', 'Could not open ' . $self->_commands_file() . ": $!");
		return undef;
	}
	$ctx = Mailmunge::Context->new() unless $ctx;
	$ctx->mta_is_postfix($self->mta_is_postfix() ? 1 : 0) unless defined($ctx->mta_is_postfix);
	my $res = $ctx->_read_command_filehandle($self, $fh, $need_f);
	close($fh);
	return $res;
}

=head2 push_tag($qid_or_ctx, $tag)

=head2 pop_tag($qid_or_ctx)

Report what the worker is doing to the multiplexor (shown by
C<mm-mx-ctrl status> and similar) as a stack of tags; C<pop_tag> goes back
to the tag that was current before the matching C<push_tag>.  These do
nothing unless the worker was started with C<-serveru> / C<-embserveru>.

=cut

sub push_tag
{
	my ($self, $qid, $tag) = @_;
	return unless $self->{do_status_tags};
	$tag = '' unless defined($tag);
	push(@{$self->{status_tags}}, $tag);
	return $self->_set_tag($qid, scalar(@{$self->{status_tags}}), $tag eq '' ? '' : "> $tag");
}

sub pop_tag
{
	my ($self, $qid) = @_;
	return unless $self->{do_status_tags};
	pop(@{$self->{status_tags}});
	my $depth = scalar(@{$self->{status_tags}});
	my $tag = $depth ? $self->{status_tags}->[-1] : 'no_tag';
	$tag = 'no_tag' if $tag eq '';
	return $self->_set_tag($qid, $depth, $tag);
}

# Private: one status line on fd 3: "DEPTH: TAG QID", percent-encoded.
sub _set_tag
{
	my ($self, $qid, $depth, $tag) = @_;
	return unless $self->{do_status_tags} && $self->{status_handle};
	my $fh = $self->{status_handle};
	if (!defined($tag) || $tag eq '') {
		eval { $fh->print("\n") };
		return;
	}
	$tag =~ s/[^[:graph:]]/ /g;
	$qid = $qid->qid if ref($qid);
	my $line = "$depth: $tag";
	$line .= " $qid" if $qid && $qid ne 'NOQUEUE';
	eval { $fh->print($self->_percent_encode($line) . "\n") };
	return;
}

=head2 rfc2822_date([$time])

The date C<$time> (default now) in local time, formatted for a mail
header, e.g. C<Fri, 01 Jan 2021 15:49:21 -0500>.

=cut

my @DAY_NAMES = qw(Sun Mon Tue Wed Thu Fri Sat);
my @MONTH_NAMES = qw(Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec);

sub rfc2822_date
{
	my ($self, $now) = @_;
	$now = time() unless defined($now);
	my ($sec, $min, $hour, $mday, $mon, $year, $wday) = localtime($now);
	return sprintf('%s, %02d %s %04d %02d:%02d:%02d %s',
		       $DAY_NAMES[$wday], $mday, $MONTH_NAMES[$mon], $year + 1900,
		       $hour, $min, $sec, header_timezone($now));
}

=head2 header_timezone([$time])

The local UTC offset at C<$time> (default now) as C<+HHMM> or C<-HHMM>.
Works as a plain function or as a method, and follows daylight-saving
changes.

=cut

sub header_timezone
{
	my $now = (@_ && defined($_[-1]) && !ref($_[-1]) && $_[-1] =~ /^\d+$/) ? $_[-1] : time();
	my @lt = localtime($now);
	my $offset = Time::Local::timegm(@lt[0..5]) - Time::Local::timelocal(@lt[0..5]);
	my $sign = $offset >= 0 ? '+' : '-';
	my $minutes = int(abs($offset) / 60);
	return sprintf('%s%02d%02d', $sign, int($minutes / 60), $minutes % 60);
}

=head2 get_host_name()

This host's name, made fully qualified through the resolver when that
gives a longer name.  Computed once per process.

=cut

my $HOST_NAME;

sub get_host_name
{
	return $HOST_NAME if defined($HOST_NAME);
	my $name = eval { Sys::Hostname::hostname() };
	$name = 'localhost' unless defined($name) && $name ne '';
	my ($fqdn) = gethostbyname($name);
	$name = $fqdn if defined($fqdn) && length($fqdn) > length($name);
	return $HOST_NAME = $name;
}

=head2 synthesize_received_header($ctx)

A C<Received:> header (with trailing newline) like the one the MTA will
add for the current message; content scanners such as SpamAssassin expect
to see it.

=cut

sub synthesize_received_header
{
	my ($self, $ctx) = @_;
	my $hn = $ctx->sendmail_macro('if_name');
	$hn = $self->get_host_name() unless defined($hn) && $hn ne '';
	my $ip = $ctx->connecting_ip // '';
	my $name = $ctx->connecting_name // '';
	my $helo = $ctx->helo // '';
	my $hdr = ($name ne "[$ip]")
	    ? "Received: from $helo ($name [$ip])\n"
	    : "Received: from $helo ([$ip])\n";
	my $with = $ctx->sendmail_macro('auth_authen') ? 'ESMTPA' : 'ESMTP';
	$hdr .= "\tby $hn (envelope-sender " . ($ctx->sender // '') . ') ('
	    . $self->product_name() . ") with $with id " . ($ctx->qid // '');
	my $rcpts = $ctx->recipients || [];
	if (scalar(@$rcpts) == 1) {
		$hdr .= "\n\tfor $rcpts->[0]; ";
	} else {
		$hdr .= '; ';
	}
	return $hdr . $self->rfc2822_date() . "\n";
}

=head2 privdata($key [, $value])

Per-process private storage on the filter object: stores C<$value> under
C<$key> when it is defined and returns the current value.  Handy for
resources opened in C<initialize>.

=cut

sub privdata
{
	my ($self, $key, $val) = @_;
	$self->{privdata}->{$key} = $val if defined($val);
	return $self->{privdata}->{$key};
}

=head2 decode_mime_string($string)

Decodes RFC 2047 encoded words in a header value and returns a Perl
character string.  Words in an unknown or wrong charset are tried as UTF-8
and then as Windows-1252, so something readable comes back.

=cut

sub decode_mime_string
{
	my ($self, $str) = @_;
	return '' unless defined($str);
	my $out = '';
	foreach my $chunk (MIME::Words::decode_mimewords($str)) {
		my ($data, $charset) = @$chunk;
		next unless defined($data);
		my $piece;
		if (defined($charset)) {
			$piece = eval { Encode::decode($charset, $data, Encode::FB_CROAK | Encode::LEAVE_SRC) };
		}
		if (!defined($piece)) {
			$piece = eval { Encode::decode('UTF-8', $data, Encode::FB_CROAK | Encode::LEAVE_SRC) };
		}
		if (!defined($piece)) {
			$piece = eval { Encode::decode('windows-1252', $data, Encode::FB_PERLQQ | Encode::LEAVE_SRC) };
		}
		if (!defined($piece)) {
			# Give the word back re-encoded rather than losing it.
			$piece = '=?' . ($charset || 'windows-1252') . '?B?' . MIME::Base64::encode_base64($data, '') . '?=';
		}
		$out .= $piece;
	}
	return $out;
}

=head2 copy_or_link($src, $dst)

Hard-links or copies a file; see L<Mailmunge::Context/copy_or_link>.

=cut

sub copy_or_link
{
	my ($self, $src, $dst) = @_;
	return Mailmunge::Context->copy_or_link($src, $dst);
}

=head1 MESSAGE ACTIONS (OLDER SPELLING)

Each of these takes the Context first and calls the Context method of the
same name with the remaining arguments, returning its result:

=over

=item action_from_response($ctx, $response)

=item action_bounce($ctx, $text, $code, $dsn)

=item action_discard($ctx)

=item action_tempfail($ctx, $text, $code, $dsn)

=item action_change_header($ctx, $name, $value, $index)

=item action_delete_header($ctx, $name, $index)

=item action_delete_all_headers($ctx, $name)

=item change_sender($ctx, $sender)

=item add_recipient($ctx, $rcpt)

=item delete_recipient($ctx, $rcpt)

=item action_add_header($ctx, $name, $value)

=item action_insert_header($ctx, $name, $value, $position)

=item action_sm_quarantine($ctx, $reason)

=item action_quarantine_entire_message($ctx, $reason)

=back

=cut

foreach my $method (qw(action_from_response action_bounce action_discard
		       action_tempfail action_change_header action_delete_header
		       action_delete_all_headers change_sender add_recipient
		       delete_recipient action_add_header action_insert_header
		       action_sm_quarantine action_quarantine_entire_message)) {
	no strict 'refs';
	*{"Mailmunge::Filter::$method"} = sub {
		my ($self, $ctx, @args) = @_;
		return $ctx->$method(@args);
	};
}

# Private: the filer of our parsers.  With ignore_filename set, the stock
# output_path looks up the part's recommended file name and then makes up
# a name whether or not there was one; output_filename looks it up again
# for the extension.  This goes straight to the made-up name: the same
# file, one header lookup fewer per part.  When neither the part's
# Content-Type nor its Content-Disposition mentions a name at all (most
# parts), output_filename is shown the head through a view that already
# knows there is no recommended name, which spares two header parses.
package Mailmunge::Filter::_FileInto;
our @ISA = ('MIME::Parser::FileInto');

sub output_path
{
	my ($self, $head) = @_;
	return $self->SUPER::output_path($head) unless $self->ignore_filename;
	my $view = _names_nothing($head) ? Mailmunge::Filter::_UnnamedHead->new($head) : $head;
	return $self->find_unused_path($self->output_dir($head), $self->output_filename($view));
}

# True when MIME::Head::recommended_filename of $head is surely undef: it
# only reads the parameters filename (Content-Disposition) and name
# (Content-Type) of the first such field, parameter names are taken from
# the field's text with newlines removed and lowercased, and no character
# but N, A, M and E lowercases to n, a, m or e.
sub _names_nothing
{
	my ($head) = @_;
	return 0 unless ref($head) eq 'MIME::Head';
	foreach my $tag ('content-disposition', 'content-type') {
		my $raw = $head->get($tag, 0);
		next unless defined($raw);
		$raw =~ tr/\n//d;
		return 0 if $raw =~ /name/i;
	}
	return 1;
}

# Private: a MIME::Head seen by our filer's output_filename when the part
# names no file; every other method goes to the head itself.
package Mailmunge::Filter::_UnnamedHead;

sub new { my ($class, $head) = @_; return bless({ head => $head }, $class); }
sub recommended_filename { return undef; }
sub mime_type { my $self = shift; return $self->{head}->mime_type(@_); }

our $AUTOLOAD;
sub AUTOLOAD
{
	my $self = shift;
	(my $method = $AUTOLOAD) =~ s/.*:://;
	return $self->{head}->$method(@_);
}
sub DESTROY { return; }

# Private: our parsers.  The only difference from MIME::Parser is the
# reader a parse starts with (MIME::Parser makes a stock one when none is
# given; every other reader of the parse is spawned from it and so shares
# its class).  See protocol/perl-core.md "Scan cost".
package Mailmunge::Filter::_Parser;

# Input layers under which read() returns the bytes readline would.
my %PLAIN_LAYER = map { $_ => 1 } qw(unix perlio stdio scalar);
our @ISA = ('MIME::Parser');

sub process_part
{
	my ($self, $in, $rdr, @rest) = @_;
	$rdr ||= Mailmunge::Filter::_Reader->new();
	return $self->SUPER::process_part($in, $rdr, @rest);
}

# MIME::Parser looks for uuencoded or BinHex data in every plain-text body
# (extract_uuencode is on) by reading the body line by line; almost always
# nothing is there and the parse goes on from the start of the body.  We
# answer that usual case with a pattern search over blocks and leave the
# handle as the stock loop would (at end of input, same line counter); when
# a line might qualify, the stock method does the whole job from scratch.
# See protocol/perl-core.md "Scan cost".
sub hunt_for_uuencode
{
	my ($self, $encoded, $ent) = @_;
	return $self->SUPER::hunt_for_uuencode($encoded, $ent) unless _can_sniff($encoded);
	$self->debug('sniffing around for UUENCODE');
	$encoded->seek(0, 0) or die("MIME parser: cannot seek: $!\n");
	my $lines0 = $.;    # seek made $. the counter of $encoded
	my ($found, $lines) = _sniff_encoded($encoded);
	if (!defined($found) || $found) {
		# Undo our reading so the stock method starts where we did.
		$encoded->seek(0, 0) or die("MIME parser: cannot seek: $!\n");
		$. = $lines0;
		return $self->SUPER::hunt_for_uuencode($encoded, $ent);
	}
	my $at = tell($encoded);    # makes $. its line counter again
	$. = $lines0 + $lines;
	$self->debug('no one made the cut');
	return 0;
}

# Whether our search gives what the stock line loop would: lines cut at
# "\n", a plain untied handle whose read() returns readline's bytes, and
# one that certainly seeks (a regular file or memory), so no failure of
# the stock method's own seek goes unreproduced.
sub _can_sniff
{
	my ($fh) = @_;
	return 0 unless defined($/) && $/ eq "\n" && Mailmunge::Filter::_Reader::_plain_handle($fh);
	my @layers = PerlIO::get_layers($fh);
	return 0 if grep { !$PLAIN_LAYER{$_} } @layers;
	return (grep { $_ eq 'scalar' } @layers) || -f $fh;
}

# Whether a line of $fh (from its position to the end) starts like
# uuencoded or BinHex data, as the stock heuristic tests line by line, and
# how many lines readline would have returned (undef on a read error).
# Reads to end of input when nothing qualifies.
sub _sniff_encoded
{
	my ($fh) = @_;
	# An in-memory handle on an undefined scalar (an empty body) makes
	# read() warn where readline does not.
	no warnings 'uninitialized';
	my ($carry, $lines, $last) = ('', 0, '');
	while (1) {
		my $n = read($fh, my $block, $Mailmunge::Filter::_Reader::BLOCK);
		# The stock loop would stop at a read error; it may do that itself.
		return (undef, 0) unless defined($n);
		last unless $n;
		$last = substr($block, -1);
		$lines += ($block =~ tr/\n//);
		# $carry is the unfinished last line of the previous block, so
		# every ^ below is at the start of a line as readline cuts them.
		my $buf = $carry . $block;
		return (1, 0) if $buf =~ /^begin [0-7]{3}/m || $buf =~ /^\(This file must be converted with/mi;
		my $nl = rindex($buf, "\n");
		$carry = $nl < 0 ? $buf : substr($buf, $nl + 1);
	}
	$lines++ if $last ne '' && $last ne "\n";
	return (0, $lines);
}

# Private: a MIME::Parser::Reader whose read_chunk reads the input in
# blocks and looks only at lines starting with "--", instead of reading,
# testing and printing every line.  It writes the same bytes, leaves the
# same end-of-stream state and puts the input back where the stock loop
# would have left it (just after the boundary line), so the stock code
# that reads on from there sees no difference.  Whenever a precondition
# of that equivalence is not obviously met (terminators, newline
# normalisation, a handle that is not a plain seekable PerlIO one,
# unusual $/ or $\) the stock method does the work.
package Mailmunge::Filter::_Reader;
our @ISA = ('MIME::Parser::Reader');

# Bytes read at a time; tests set it tiny to put boundaries on block edges.
our $BLOCK = 65536;


sub read_chunk
{
	my ($self, $in, $out, $keep_newline, $normalize_newlines) = @_;
	my $start = _fast_start($self, $in, $out, $normalize_newlines);
	return $self->SUPER::read_chunk($in, $out, $keep_newline, $normalize_newlines)
		unless defined($start);
	my ($text, $eos, $resume) = _scan_to_boundary($self->{BH}, $in, $out);
	# As the stock loop: the held line loses its line end on a boundary.
	$text =~ s/[\r\n]+\Z// if ($eos =~ /^(DELIM|CLOSE)/ && !($keep_newline && $text =~ m/^[\r\n]\z/));
	if (defined($resume)) {
		seek($in, $start + $resume, 0) or die("MIME reader: cannot seek input: $!\n");
	}
	print $out $text;
	${$self->{EOS}} = $eos;
	return 1;
}

# The input position if the block path applies, else undef.
sub _fast_start
{
	my ($self, $in, $out, $normalize_newlines) = @_;
	return undef if $normalize_newlines || %{$self->{TH}};
	return undef unless defined($/) && $/ eq "\n" && !defined($\);
	return undef unless _plain_handle($in) && _plain_handle($out);
	return undef if grep { !$PLAIN_LAYER{$_} } PerlIO::get_layers($in);
	my $pos = tell($in);
	return undef unless defined($pos) && $pos >= 0;
	# Seeking where we are proves the handle can go back later.
	return undef unless seek($in, $pos, 0);
	return $pos;
}

sub _plain_handle
{
	my ($fh) = @_;
	my $class = ref($fh);
	return 0 unless $class eq 'GLOB' || $class eq 'IO::File' || $class eq 'IO::Handle';
	return !tied(*$fh);
}

# Reads $in from its position and prints to $out what the stock loop
# prints before its last (held) line, as soon as it can no longer be that
# line, so memory stays at about a block plus the longest line.  Returns
# the held line (everything not printed yet), the end-of-stream token and,
# when a boundary line of %$bh ended the chunk, the offset just after that
# line relative to the start (undef at end of input).
sub _scan_to_boundary
{
	my ($bh, $in, $out) = @_;
	my $buf = '';       # input from offset $gone on; starts at a line start
	my $gone = 0;       # bytes of input already printed and dropped
	my $ls = 0;         # start of the first line not known to be no boundary
	my $checked = 0;    # the line at $ls is known not to be one
	my $from = 0;       # where to search on within the line at $ls
	my $eof = 0;
	# The first line comes through readline as in the stock loop, which
	# leaves the handle's per-open state (what slurp-mode reads see at
	# end of input) as that loop would.
	my $first = readline($in);
	if (defined($first)) {
		$buf = $first;
	} else {
		$eof = 1;
	}
	while (1) {
		my $len = length($buf);
		if (!$checked) {
			if ($ls + 2 > $len && !$eof) {
				# Too little to tell whether the line starts with "--".
			} elsif (substr($buf, $ls, 2) eq '--') {
				my $nl = index($buf, "\n", $from);
				if ($nl >= 0 || $eof) {
					my $end = $nl >= 0 ? $nl + 1 : $len;
					(my $maybe = substr($buf, $ls, $end - $ls)) =~ s/[ \t\r\n]+\Z//;
					if ($bh->{$maybe}) {
						my $h = _line_before($buf, $ls);
						print $out substr($buf, 0, $h) if $h;
						return (substr($buf, $h, $ls - $h), $bh->{$maybe}, $gone + $end);
					}
					$ls = $from = $end;
					next if $end < $len;
				} else {
					$from = $len;
				}
			} else {
				$checked = 1;
				$from = $ls;
			}
		}
		if ($checked) {
			my $p = index($buf, "\n--", $from);
			if ($p >= 0) {
				$ls = $from = $p + 1;
				$checked = 0;
				next;
			}
			my $q = rindex($buf, "\n");
			if ($q >= $from) {
				# The last line may still turn out to start with "--".
				$ls = $from = $q + 1;
				$checked = 0;
				next;
			}
			$from = $len;
		}
		last if $eof;
		# Keep the line that could be held back, print what is before it.
		my $keep = $checked ? $ls : _line_before($buf, $ls);
		if ($keep > 0) {
			print $out substr($buf, 0, $keep);
			substr($buf, 0, $keep, '');
			$gone += $keep;
			$ls -= $keep;
			$from -= $keep;
		}
		next if read($in, $buf, $BLOCK, length($buf));
		# End of input (or a read error): the stock loop's final readline
		# leaves the handle in its own end state; do the same.
		my $line = readline($in);
		if (defined($line)) {
			$buf .= $line;
		} else {
			$eof = 1;
		}
	}
	# No boundary: the stock loop prints everything, its last line unchanged.
	return ($buf, 'EOF', undef);
}

# Start of the line that ends just before offset $ls (a line start).
sub _line_before
{
	my ($buf, $ls) = @_;
	return 0 if $ls < 2;
	return rindex($buf, "\n", $ls - 2) + 1;
}

package Mailmunge::Filter;
1;

__END__

=head1 SEE ALSO

L<Mailmunge::Context>, L<Mailmunge::Response>, L<Mailmunge::Constants>

=cut
