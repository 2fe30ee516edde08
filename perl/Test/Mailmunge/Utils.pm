use strict;
use warnings;

# Helper functions for Mailmunge unit tests.  They are defined in package
# main on purpose: existing test scripts call them unqualified after a
# plain "use Test::Mailmunge::Utils;".
package main;

use Cwd qw(getcwd);
use File::Basename qw(dirname);
use File::Spec;
use IO::File;
use MIME::Parser;
use POSIX ();
use Socket ();
use Mailmunge::Context;
use Mailmunge::Filter;

# Where this file lives, to find the repository's target/debug binaries.
my $UTILS_DIR = dirname(File::Spec->rel2abs(__FILE__));

sub make_test_context
{
	return Mailmunge::Context->new(
		recipients      => ['good@example.com'],
		sender          => 'test@example.com',
		hostip          => '192.168.1.1',
		hostname        => 'server.example.com',
		connecting_ip   => '192.168.1.1',
		connecting_name => 'server.example.com',
		first_recip     => 'good@example.com',
		helo            => 'server.example.com',
		cwd             => '.',
		qid             => 'queue-id-here');
}

# Finds one of our programs: $MAILMUNGE_BINDIR, upstream's ../c layout,
# this repository's target/debug, then $PATH.
sub mailmunge_program_path
{
	my ($name) = @_;
	my @cands;
	push(@cands, "$ENV{MAILMUNGE_BINDIR}/$name") if $ENV{MAILMUNGE_BINDIR};
	push(@cands, "../c/$name");
	push(@cands, File::Spec->catfile($UTILS_DIR, '..', '..', '..', 'target', 'debug', $name));
	push(@cands, map { "$_/$name" } grep { length } split(/:/, $ENV{PATH} || ''));
	foreach my $c (@cands) {
		return Cwd::abs_path($c) if -f $c && -x _;
	}
	return undef;
}

sub _wait_for
{
	my ($seconds, $cond) = @_;
	my $deadline = time() + $seconds;
	while (time() <= $deadline) {
		return 1 if $cond->();
		select(undef, undef, undef, 0.05);
	}
	return $cond->();
}

sub test_worker_user
{
	return $ENV{MAILMUNGE_TEST_USER} || 'mailmunge';
}

# As root, the workers run as the test user: they get the directory
# (owner, mode 0750) rather than everyone getting write access to it.
sub give_dir_to_test_worker
{
	my ($dir) = @_;
	return 1 unless $> == 0;
	my ($uid, $gid) = (getpwnam(test_worker_user()))[2, 3];
	return 0 unless defined($uid);
	chown($uid, $gid, $dir) or return 0;
	return chmod(0750, $dir) ? 1 : 0;
}

sub start_multiplexor
{
	my ($dir, $filter, @extra) = @_;
	$dir = File::Spec->rel2abs($dir);
	$filter = File::Spec->rel2abs($filter);
	$ENV{TESTDIR} = getcwd();
	my $prog = mailmunge_program_path('mailmunge-multiplexor');
	if (!$prog) {
		warn("start_multiplexor: mailmunge-multiplexor not found\n");
		return 0;
	}
	my @args = ('-l', '-Z', '-z', $dir, '-s', "$dir/mx.sock", '-f', $filter,
		    '-p', "$dir/mx.pid", '-Y', 'mm-mx-test-instance');
	# The multiplexor refuses to run workers as root.
	if ($> == 0) {
		push(@args, '-U', test_worker_user());
		give_dir_to_test_worker($dir);
	}
	push(@args, @extra);
	my $rc = system($prog, @args);
	return 0 unless $rc == 0;
	# The daemon is normally listening when it returns; be tolerant anyway.
	return _wait_for(10, sub { -S "$dir/mx.sock" }) ? 1 : 0;
}

sub _read_pid
{
	my ($dir) = @_;
	my $fh = IO::File->new("$dir/mx.pid", 'r') or return undef;
	my $pid = <$fh>;
	$fh->close();
	return undef unless defined($pid);
	chomp($pid);
	return $pid =~ /^\d+$/ ? $pid : undef;
}

sub stop_multiplexor
{
	my ($dir) = @_;
	my $pid = _read_pid($dir);
	return 0 unless $pid;
	kill('TERM', $pid) or return 0;
	# Wait (bounded) so the test's directory is not removed under it.
	return _wait_for(15, sub { !kill(0, $pid) }) ? 1 : 0;
}

sub mm_mx_ctrl
{
	my ($dir, @cmd) = @_;
	my $prog = mailmunge_program_path('mm-mx-ctrl') or return '';
	my $fh;
	open($fh, '-|', $prog, '-s', "$dir/mx.sock", @cmd) or return '';
	my $ans = <$fh>;
	close($fh);
	return '' unless defined($ans);
	chomp($ans);
	return $ans;
}

sub results_has_lines
{
	my ($dir, @wanted) = @_;
	my $fh = IO::File->new("$dir/RESULTS", 'r') or return 0;
	my %have;
	while (defined(my $line = <$fh>)) {
		chomp($line);
		$have{$line} = 1;
	}
	$fh->close();
	foreach my $w (@wanted) {
		return 0 unless $have{$w};
	}
	return 1;
}

sub write_commands_file
{
	my ($dir, $ctx) = @_;
	my $fh = IO::File->new("$dir/COMMANDS", 'w') or die("Could not write $dir/COMMANDS: $!");
	my $enc = sub { Mailmunge::Filter->_percent_encode(@_) };
	my $line = sub { my ($letter, $val) = @_; $fh->print($letter . $enc->($val) . "\n") if $val; };
	$line->('S', $ctx->sender);
	$fh->print("!\n") if $ctx->suspicious_chars_in_headers;
	$fh->print("?\n") if $ctx->suspicious_chars_in_body;
	$line->('I', $ctx->connecting_ip);
	$line->('H', $ctx->connecting_name);
	$line->('Q', $ctx->qid);
	$line->('X', $ctx->message_id);
	$line->('E', $ctx->helo);
	$line->('i', $ctx->mailmunge_id);
	$line->('U', $ctx->subject);
	foreach my $m (sort keys(%{$ctx->{sendmail_macros} || {}})) {
		$fh->print('=' . $enc->($m) . ' ' . $enc->($ctx->sendmail_macro($m)) . "\n");
	}
	my $resc = $ctx->recipient_esmtp_args || {};
	foreach my $r (@{$ctx->recipients || []}) {
		my ($mailer, $host, $addr) = @{$ctx->get_recipient_mailer($r) || []};
		$fh->print('R' . join(' ', $enc->($r), $enc->($mailer, '?'), $enc->($host, '?'), $enc->($addr, '?')) . "\n");
		foreach my $arg (@{$resc->{$r} || []}) {
			$fh->print('r' . $enc->($arg) . "\n");
		}
	}
	$line->('J', $ctx->hostip) if $ctx->was_resent;
	$fh->print("F\n");
	$fh->close() or die("Could not write $dir/COMMANDS: $!");
	return 1;
}

sub set_context_fields_from_msg
{
	my ($ctx, $entity) = @_;
	return undef unless $entity && $entity->head;
	$ctx->mime_entity($entity);
	my %field = (sender => 'Return-Path', subject => 'Subject', message_id => 'Message-ID');
	foreach my $acc (qw(sender subject message_id)) {
		my $v = $entity->head->get($field{$acc});
		next unless defined($v) && $v ne '';
		chomp($v);
		$ctx->$acc($v);
	}
	return $ctx;
}

sub parse_and_copy_msg
{
	my ($dir, $msg, $subject) = @_;
	my $in = IO::File->new($msg, 'r') or die("parse_and_copy_msg: cannot read $msg: $!");
	my $out = IO::File->new("$dir/INPUTMSG", 'w') or die("parse_and_copy_msg: cannot write $dir/INPUTMSG: $!");
	binmode($in);
	binmode($out);
	while (defined(my $l = <$in>)) {
		$l =~ s/__SUBJECT__/$subject/ if defined($subject) && $subject ne '';
		$out->print($l);
	}
	$in->close();
	$out->close() or die("parse_and_copy_msg: cannot write $dir/INPUTMSG: $!");
	# When running as root, the multiplexor's workers (unprivileged) must
	# be able to write RESULTS and Work/ here.
	give_dir_to_test_worker($dir);

	my $parser = MIME::Parser->new();
	$parser->output_to_core(1);
	my $entity = $parser->parse_open("$dir/INPUTMSG");
	my $head = $entity->head;
	_write_file("$dir/PRISTINE_HEADERS", $head->as_string);
	$head->unfold;
	_write_file("$dir/HEADERS", $head->as_string);
	return set_context_fields_from_msg(Mailmunge::Context->new(), $entity);
}

sub _write_file
{
	my ($path, $data) = @_;
	my $fh = IO::File->new($path, 'w') or die("cannot write $path: $!");
	$fh->print($data);
	$fh->close() or die("cannot write $path: $!");
}

sub dns_available
{
	foreach my $host (qw(www.google.com www.perl.org)) {
		my ($err, @res) = Socket::getaddrinfo($host, undef, { socktype => Socket::SOCK_STREAM() });
		return 1 if !$err && @res;
	}
	return 0;
}

1;

__END__

=head1 NAME

Test::Mailmunge::Utils - helper functions for Mailmunge unit tests

=head1 SYNOPSIS

    use Test::More;
    use Test::Mailmunge::Tmpdir;
    use Test::Mailmunge::Utils;

    my $tmp = Test::Mailmunge::Tmpdir->new();
    my $dir = $tmp->{dir};
    start_multiplexor($dir, 't/filters/my-filter.pl') or BAIL_OUT('no multiplexor');
    mkdir("$dir/msg", 0755);
    my $ctx = parse_and_copy_msg("$dir/msg", 't/data/some.eml', 'addhdr');
    $ctx->recipients(['<someone@example.org>']);
    write_commands_file("$dir/msg", $ctx);
    is(mm_mx_ctrl($dir, 'scan', 'QID', "$dir/msg"), 'ok');
    ok(results_has_lines("$dir/msg", 'HX-Added I%20am%20new!', 'F'));
    stop_multiplexor($dir);

=head1 DESCRIPTION

Loading this module defines the functions below B<in package main>, so
test scripts call them without a package prefix.

=head1 FUNCTIONS

=head2 make_test_context()

Returns a L<Mailmunge::Context> filled with plausible values: recipient
C<good@example.com>, sender C<test@example.com>, client 192.168.1.1 /
C<server.example.com> (also the HELO name), cwd C<.> and queue ID
C<queue-id-here>.

=head2 mailmunge_program_path($name)

Returns the absolute path of the program C<$name>
(C<mailmunge-multiplexor> or C<mm-mx-ctrl>), looked up in
C<$MAILMUNGE_BINDIR>, in C<../c/>, in this source tree's
C<target/debug/> and along C<$PATH>; undef if not found.

=head2 test_worker_user()

The user the multiplexor's workers run as when the tests run as root:
C<$MAILMUNGE_TEST_USER>, or C<mailmunge>.

=head2 give_dir_to_test_worker($dir)

When running as root, makes the test worker user the owner of C<$dir>
with mode 0750, so that workers can write there while nobody else can
(no world-writable directories).  Does nothing otherwise.  Returns 1 on
success, 0 if the user does not exist or the change failed.

=head2 start_multiplexor($dir, $filter [, @extra_options])

Runs the multiplexor as a daemon with spool directory C<$dir>, control
socket C<$dir/mx.sock>, pid file C<$dir/mx.pid>, the filter program
C<$filter> (which must be executable), verbose logging and status
tags, plus any C<@extra_options>.  Sets C<$ENV{TESTDIR}> to the current
directory, which filters can use to find modules.  When running as
root, adds C<-U> with C<test_worker_user()> and hands C<$dir> to that
user (see C<give_dir_to_test_worker>).  Returns 1 once the control socket exists, 0
on failure.

=head2 stop_multiplexor($dir)

Sends SIGTERM to the multiplexor whose pid is in C<$dir/mx.pid> and waits
up to 15 seconds for it to exit.  Returns 1 if it exited.

=head2 mm_mx_ctrl($dir, $command, @args)

Runs C<mm-mx-ctrl -s $dir/mx.sock $command @args> and returns the first
line of its output without the newline, or the empty string if it
could not be run or printed nothing.

=head2 results_has_lines($dir, @lines)

True if every one of C<@lines> appears as a whole line of
C<$dir/RESULTS>.

=head2 write_commands_file($dir, $ctx)

Writes C<$dir/COMMANDS> so that a filter's scan reads back the
information in C<$ctx>: sender, suspicious-character flags, client
address and name, queue ID, message ID, HELO, Mailmunge ID, subject,
MTA macros, recipients (with their mailer triples and ESMTP arguments),
and a terminating C<F>.

=head2 set_context_fields_from_msg($ctx, $entity)

Stores C<$entity> as C<$ctx>'s C<mime_entity> and copies its
C<Return-Path>, C<Subject> and C<Message-ID> headers (if present) into
C<sender>, C<subject> and C<message_id>.  Returns C<$ctx>.

=head2 parse_and_copy_msg($dir, $file [, $subject])

Copies the message in C<$file> to C<$dir/INPUTMSG>, replacing the first
C<__SUBJECT__> on each line with C<$subject> when one is given; parses it;
writes C<$dir/PRISTINE_HEADERS> (header as found) and C<$dir/HEADERS>
(one unfolded header per line), and returns a new
L<Mailmunge::Context> prepared by C<set_context_fields_from_msg>.  When
running as root, C<$dir> is handed to the workers' user
(C<give_dir_to_test_worker>).

=head2 dns_available()

True if public DNS names resolve from this machine; tests that need the
Internet skip themselves otherwise.

=cut
