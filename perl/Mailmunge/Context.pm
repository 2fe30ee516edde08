package Mailmunge::Context;
use strict;
use warnings;

use base qw(Mailmunge::Base);

use Carp;
use IO::File;
use Sys::Syslog ();
use POSIX ();
use Mailmunge::Constants;

=head1 NAME

Mailmunge::Context - what a filter callback knows about the current SMTP stage or message

=head1 SYNOPSIS

    sub filter_message {
        my ($self, $ctx) = @_;
        if ($ctx->subject && $ctx->subject =~ /viagra/i) {
            return Mailmunge::Response->REJECT(message => 'No thanks');
        }
        $ctx->action_add_header('X-Filtered', 'yes');
        return;
    }

=head1 DESCRIPTION

The framework builds a fresh Context for every callback (C<filter_message>
and C<filter_wrapup> share one) and fills in whatever is known at that
stage.  Fields live in the object's hash under the key of the same name.

In C<filter_message> and C<filter_wrapup> the Context also collects the
message modifications the filter asks for, writing them to the F<RESULTS>
file in the message's working directory.

=cut

my @ACCESSORS = qw(
	bounced client_port connecting_ip connecting_name cwd discarded
	esmtp_args first_recip helo hostip hostname in_filter_wrapup
	mailmunge_id message_id message_quarantined mime_entity
	mta_is_postfix my_ip my_port qid rcpt_addr rcpt_host rcpt_mailer
	recipient_esmtp_args recipients sender subject subject_count
	suspicious_chars_in_body suspicious_chars_in_headers tempfailed
	was_resent
);
__PACKAGE__->make_accessors(@ACCESSORS);

# RESULTS lines (letter + arguments) longer than this are cut short: the
# milter reads lines into an 8 KiB buffer including newline and NUL.
my $MAX_RESULTS_LINE = 8190;

=head1 CONSTRUCTOR

=head2 Mailmunge::Context->new(field => value, ...)

Creates a Context and sets each field through the method of that name
(C<new> of L<Mailmunge::Base>).  Undefined values are skipped, like every
accessor does.

=cut

=head1 ACCESSORS

Each accessor returns the field's value and, given a defined argument, sets
it first.  An undefined argument never clears a field.

=over

=item bounced

=item discarded

=item tempfailed

Set to 1 by C<action_bounce>, C<action_discard> and C<action_tempfail>.

=item client_port

=item my_ip

=item my_port

The SMTP client's TCP port and the server's own address and port
(C<filter_relay> and C<filter_helo> only).

=item connecting_ip

=item connecting_name

Address and name of the host that connected.  Unlike C<hostip> and
C<hostname> these are never replaced by a trusted C<X-Mailmunge-Remailed>
header.

=item hostip

=item hostname

Address and name of the SMTP client, or of the original client for a
message we re-sent ourselves.

=item helo

The HELO/EHLO argument.

=item cwd

The message's working directory (C<filter_sender> onwards).

=item esmtp_args

Array reference of ESMTP parameters: those of MAIL FROM in
C<filter_sender> and C<filter_message>, those of the current RCPT TO in
C<filter_recipient>.

=item recipients

Array reference: the one recipient being checked in C<filter_recipient>,
every accepted recipient in C<filter_message>.

=item first_recip

The first RCPT TO address of the transaction (C<filter_recipient>).

=item rcpt_mailer

=item rcpt_host

=item rcpt_addr

The MTA's mailer triple for the recipient being checked.

=item recipient_esmtp_args

Hash reference: recipient => array reference of its RCPT TO parameters.

=item sender

The envelope sender as the MTA gave it, usually with angle brackets.

=item qid

The MTA queue identifier (may be C<NOQUEUE> early in the transaction, or
undef when the MTA had not assigned one).

=item mailmunge_id

The milter's own identifier for the transaction.

=item subject

=item subject_count

The first Subject: header and how many there were.

=item message_id

The Message-ID: header.

=item suspicious_chars_in_headers

=item suspicious_chars_in_body

True if the milter saw suspicious characters there.

=item mime_entity

The parsed message (a L<MIME::Entity>) during C<filter_message> and
C<filter_wrapup>; its bodies are files under the working directory's
F<Work> directory.

=item message_quarantined

The quarantine directory once C<action_quarantine_entire_message> ran.

=item in_filter_wrapup

True while C<filter_wrapup> runs.

=item mta_is_postfix

True when the MTA is Postfix.

=item was_resent

True if the message carried a trusted C<X-Mailmunge-Remailed> header.

=back

=cut

=head2 sendmail_macro($name [, $value])

Gets (or, with a defined C<$value>, sets) the MTA macro C<$name>, written
without braces (C<daemon_port>, C<auth_authen>, C<i>).  Macros are known from
C<filter_sender> onwards.

=head2 mta_macro($name [, $value])

Another name for C<sendmail_macro>.

=cut

sub sendmail_macro
{
	my ($self, $name, $val) = @_;
	return undef unless defined($name);
	$self->{sendmail_macros}->{$name} = $val if defined($val);
	return $self->{sendmail_macros} ? $self->{sendmail_macros}->{$name} : undef;
}

sub mta_macro { my $self = shift; return $self->sendmail_macro(@_); }

=head2 get_recipient_mailer($rcpt)

Returns C<[mailer, host, addr]> for a recipient listed in the COMMANDS
file, or undef.

=cut

sub get_recipient_mailer
{
	my ($self, $rcpt) = @_;
	return undef unless defined($rcpt) && $self->{recipient_mailer};
	return $self->{recipient_mailer}->{$rcpt};
}

=head2 privdata($key [, $value])

A private scratch area attached to this Context.  Stores C<$value> under
C<$key> when it is defined; returns the current value.

=cut

sub privdata
{
	my ($self, $key, $val) = @_;
	$self->{privdata}->{$key} = $val if defined($val);
	return $self->{privdata}->{$key};
}

=head2 new_mime_entity([$entity])

Asks for the message body to be replaced by C<$entity>'s: given a true
argument during C<filter_message>, stores it (also as C<mime_entity>) and
the framework writes the new body after C<filter_message> returns.  In
C<filter_wrapup> the body can no longer change, so the argument is ignored
and undef is returned.  Without an argument, returns the pending
replacement, if any.

=cut

sub new_mime_entity
{
	my ($self, $entity) = @_;
	if ($entity) {
		return undef if $self->{in_filter_wrapup};
		$self->{new_mime_entity} = $entity;
		$self->{mime_entity} = $entity;
	}
	return $self->{new_mime_entity};
}

=head2 in_message_context([$flag])

With a defined, plain (non-reference) argument, sets whether message
actions are allowed and returns the new value.  Without one, returns the
flag and logs a warning naming the caller when it is false.

Older code passes the filter object first: C<in_message_context($filter)>
only checks (it never sets the flag, whatever older versions did) and
C<in_message_context($filter, $flag)> sets.

=cut

sub in_message_context
{
	my ($self, @args) = @_;
	# Older code passes the filter object first: ($filter) to check,
	# ($filter, $value) to set.
	shift(@args) if @args && ref($args[0]);
	my $flag = $args[0];
	if (defined($flag) && !ref($flag)) {
		$self->{in_message_context} = $flag;
		return $flag;
	}
	return $self->{in_message_context} if $self->{in_message_context};
	my $method = (caller(1))[3] // 'in_message_context';
	my $by = (caller(2))[3] // 'main';
	$method =~ s/.*:://;
	$self->log('warning', "$method called outside of message context by $by");
	return 0;
}

=head2 message_rejected()

True once the message has been bounced, discarded or tempfailed.

=cut

sub message_rejected
{
	my ($self) = @_;
	return ($self->{bounced} || $self->{discarded} || $self->{tempfailed}) ? 1 : 0;
}

=head2 canonical_sender()

The sender lower-cased and without its enclosing angle brackets.

=head2 canonical_recipients()

Array reference of the recipients, each canonicalised like the sender.

=cut

sub canonical_sender
{
	my ($self) = @_;
	require Mailmunge::Filter;
	return Mailmunge::Filter->canonical_email($self->sender);
}

sub canonical_recipients
{
	my ($self) = @_;
	require Mailmunge::Filter;
	return [ map { Mailmunge::Filter->canonical_email($_) } @{$self->recipients || []} ];
}

=head2 log($level, $message)

Sends C<$message> to syslog at C<$level> (C<err>, C<warning>, C<info>,
C<debug> ...), prefixed with the queue ID when one is known.

=cut

sub log
{
	my ($self, $level, $msg) = @_;
	my $qid = ref($self) ? $self->{qid} : undef;
	$msg = "$qid: $msg" if defined($qid) && $qid ne '' && $qid ne 'NOQUEUE';
	_syslog($level, $msg);
	return;
}

# Logging must never take the worker down (no syslog socket in a
# container, say), so failures are swallowed.
sub _syslog
{
	my ($level, $msg) = @_;
	$msg = '' unless defined($msg);
	eval { Sys::Syslog::syslog($level || 'info', '%s', $msg); };
	return;
}

=head2 copy_or_link($src, $dst)

Hard-links C<$src> to C<$dst>, or copies it when linking fails.  Returns 1
on success and 0 on failure.  May be called on the class.

=cut

sub copy_or_link
{
	my ($self, $src, $dst) = @_;
	return 1 if link($src, $dst);
	my ($in, $out);
	open($in, '<', $src) or return 0;
	if (!open($out, '>', $dst)) {
		close($in);
		return 0;
	}
	binmode($in);
	binmode($out);
	my $buf;
	while (1) {
		my $n = sysread($in, $buf, 4096);
		if (!defined($n)) {
			close($in); close($out);
			return 0;
		}
		last if $n == 0;
		if (!print $out $buf) {
			close($in); close($out);
			return 0;
		}
	}
	close($in);
	return close($out) ? 1 : 0;
}

# ------------------------------------------------------------------ RESULTS

# Private: the RESULTS handle, opened for appending in the current
# directory on first use.  Dies if it cannot be opened.
sub _results_fh
{
	my ($self) = @_;
	if (!$self->{results_fh}) {
		# A plain open, then blessed as IO::File->new would have
		# returned it: the same handle for a fraction of the cost.
		my $fh;
		open($fh, '>>', 'RESULTS')
		    or die("Could not open RESULTS file: $!\n");
		binmode($fh);
		$self->{results_fh} = bless($fh, 'IO::File');
	}
	return $self->{results_fh};
}

# Private: close RESULTS if open.  Dies if close fails (data not on disk).
sub _close_results_fh
{
	my ($self) = @_;
	my $fh = delete $self->{results_fh};
	return 1 unless $fh;
	$fh->close() or die("Could not close RESULTS file: $!\n");
	return 1;
}

# Private: write one RESULTS line: the letter, then each argument
# percent-encoded (no default) and joined by single spaces.
sub _write_result_line
{
	my ($self, $letter, @args) = @_;
	require Mailmunge::Filter;
	my $line = $letter . join(' ', map { Mailmunge::Filter->_percent_encode($_) } @args);
	if (length($line) > $MAX_RESULTS_LINE) {
		$self->log('warning', 'Cannot write line over 8190 bytes long to RESULTS file; truncating.  Original line began with: ' . substr($line, 0, 40));
		$line = substr($line, 0, $MAX_RESULTS_LINE);
		# Do not leave half of a %XX escape at the end.
		$line =~ s/%[0-9A-F]?$//;
	}
	my $fh = $self->_results_fh();
	print $fh "$line\n" or die("Could not write RESULTS line: $!\n");
	return 1;
}

# Private: final 'F' line, then close RESULTS.
sub _signal_complete
{
	my ($self) = @_;
	$self->_write_result_line('F');
	return $self->_close_results_fh();
}

# Private: 'C' line - the body was replaced (NEWBODY is ready).
sub _signal_changed
{
	my ($self) = @_;
	return $self->_modify('Message body replaced', 'C');
}

# Private: Postfix logs far less about milter actions than Sendmail does,
# so with Postfix the modifications are logged here.
sub _log_if_postfix
{
	my ($self, $level, $msg) = @_;
	return unless $self->{mta_is_postfix};
	$self->log($level, $msg);
	return;
}

# Private: the common tail of a message modification: describe it in the
# log (Postfix only), then write its RESULTS line.  Returns 1.
sub _modify
{
	my ($self, $what, $letter, @args) = @_;
	$self->_log_if_postfix('info', $what);
	return $self->_write_result_line($letter, @args);
}

# Private: push buffered RESULTS lines to the file, for code that reads
# the file back during the scan (DKIM signing).
sub _flush_results
{
	my ($self) = @_;
	$self->{results_fh}->flush() if $self->{results_fh};
	return;
}

# ------------------------------------------------------------------ actions

=head1 MESSAGE ACTIONS

These may only be used while a message is being scanned (C<filter_message>,
C<filter_wrapup> and what they call).  Elsewhere they log a warning and
return 0 (undef for C<action_quarantine_entire_message>).

=head2 action_bounce([$text [, $code [, $dsn]]])

Rejects the message.  Defaults: text C<Forbidden for policy reasons>,
code 554, DSN 5.7.1; a code or DSN not of the 5xx class is replaced by the
default.  A message we re-sent ourselves is discarded instead.  Returns 1.

=cut

# Private: $code and $dsn, each replaced by the default of the status's
# class unless it already fits (the rule of Response::fix_code_dsn).
sub _fixed_code_dsn
{
	my ($status, $code, $dsn) = @_;
	require Mailmunge::Response;
	my $r = Mailmunge::Response->new(status => $status, code => $code, dsn => $dsn);
	$r->fix_code_dsn();
	return ($r->code, $r->dsn);
}

sub action_bounce
{
	my ($self, $text, $code, $dsn) = @_;
	return 0 unless $self->in_message_context();
	if ($self->was_resent) {
		$self->log('info', 'Converting "bounce" to "discard" for resent mail');
		return $self->action_discard();
	}
	$self->bounced(1);
	$text = 'Forbidden for policy reasons' unless defined($text) && $text ne '';
	($code, $dsn) = _fixed_code_dsn('REJECT', $code, $dsn);
	$self->_write_result_line('B', $code, $dsn, $text);
	return 1;
}

=head2 action_discard()

Accepts the message and throws it away.  Returns 1.

=cut

sub action_discard
{
	my ($self) = @_;
	return 0 unless $self->in_message_context();
	$self->discarded(1);
	$self->_write_result_line('D', '');
	return 1;
}

=head2 action_tempfail([$text [, $code [, $dsn]]])

Refuses the message temporarily.  Defaults: C<Try again later>, 451,
4.3.0 (codes outside the 4xx class are replaced).  Returns 1, or 0 without
doing anything for a message we re-sent ourselves.

=cut

sub action_tempfail
{
	my ($self, $text, $code, $dsn) = @_;
	return 0 unless $self->in_message_context();
	if ($self->was_resent) {
		$self->log('info', 'Refusing to tempfail resent mail');
		return 0;
	}
	$self->tempfailed(1);
	$text = 'Try again later' unless defined($text) && $text ne '';
	($code, $dsn) = _fixed_code_dsn('TEMPFAIL', $code, $dsn);
	$self->_write_result_line('T', $code, $dsn, $text);
	return 1;
}

=head2 action_change_header($name, $value [, $index])

Sets the C<$index>-th (default first) header called C<$name> to C<$value>;
the MTA adds it if there is none.  Give the name without a colon.

=cut

sub action_change_header
{
	my ($self, $hdr, $value, $idx) = @_;
	return 0 unless $self->in_message_context();
	$idx = 1 unless defined($idx);
	return $self->_modify("Header changed: $idx: $hdr: $value", 'I', $hdr, $idx, $value);
}

=head2 action_delete_header($name [, $index])

Deletes the C<$index>-th (default first) header called C<$name>.

=cut

sub action_delete_header
{
	my ($self, $hdr, $idx) = @_;
	return 0 unless $self->in_message_context();
	$idx = 1 unless defined($idx);
	return $self->_modify("Header deleted: $idx: $hdr", 'J', $hdr, $idx);
}

=head2 action_delete_all_headers($name)

Deletes every header called C<$name> (as counted in the F<HEADERS> file).
Returns 1, or undef when F<HEADERS> cannot be read.

=cut

sub action_delete_all_headers
{
	my ($self, $hdr) = @_;
	return 0 unless $self->in_message_context();
	my $fh = IO::File->new('HEADERS', '<') or return undef;
	my $want = lc($hdr) . ':';
	my $len = length($want);
	my $count = 0;
	while (defined(my $line = <$fh>)) {
		$count++ if lc(substr($line, 0, $len)) eq $want;
	}
	$fh->close();
	# Highest index first, so earlier deletions do not renumber later ones.
	for (my $i = $count; $i >= 1; $i--) {
		$self->action_delete_header($hdr, $i);
	}
	return 1;
}

=head2 change_sender($sender)

Replaces the envelope sender.  Returns 1.

=cut

sub change_sender
{
	my ($self, $sender) = @_;
	return 0 unless $self->in_message_context();
	return $self->_modify("Sender changed: $sender", 'f', $sender);
}

=head2 add_recipient($rcpt)

Adds an envelope recipient.  Returns 1.

=cut

sub add_recipient
{
	my ($self, $rcpt) = @_;
	return 0 unless $self->in_message_context();
	return $self->_modify("Recipient added: $rcpt", 'R', $rcpt);
}

=head2 delete_recipient($rcpt)

Removes an envelope recipient.  Returns 1.

=cut

sub delete_recipient
{
	my ($self, $rcpt) = @_;
	return 0 unless $self->in_message_context();
	return $self->_modify("Recipient deleted: $rcpt", 'S', $rcpt);
}

=head2 action_add_header($name, $value)

Appends a header.  Returns 1.

=cut

sub action_add_header
{
	my ($self, $hdr, $value) = @_;
	return 0 unless $self->in_message_context();
	return $self->_modify("Header added: $hdr: $value", 'H', $hdr, $value);
}

=head2 action_insert_header($name, $value [, $position])

Inserts a header at C<$position> (0 = before all others).  A missing or
C<-1> position appends, like C<action_add_header>.  Returns 1.

=cut

sub action_insert_header
{
	my ($self, $hdr, $value, $pos) = @_;
	return 0 unless $self->in_message_context();
	$pos = -1 unless defined($pos);
	return $self->action_add_header($hdr, $value) if $pos eq '-1';
	return $self->_modify("Header inserted: $pos: $hdr: $value", 'N', $hdr, $pos, $value);
}

=head2 action_sm_quarantine($reason)

Asks the MTA to hold the message in its own quarantine (Postfix's hold
queue).

=cut

sub action_sm_quarantine
{
	my ($self, $reason) = @_;
	return 0 unless $self->in_message_context();
	return $self->_modify("Message held in Postfix 'hold' queue", 'Q', $reason);
}

=head2 action_quarantine_entire_message([$reason])

Copies the message and what is known about it into a new directory under
C<Path:QUARANTINEDIR>.  Delivery is not affected.  Returns the directory
(the earlier one when already quarantined) or undef on failure.

=cut

sub action_quarantine_entire_message
{
	my ($self, $reason) = @_;
	return undef unless $self->in_message_context();
	return $self->{message_quarantined} if $self->{message_quarantined};
	my $dir = $self->get_quarantine_dir() or return undef;
	$self->_write_quarantine_info($dir, $reason);
	$self->message_quarantined($dir);
	return $dir;
}

=head2 action_from_response($response)

Carries out a L<Mailmunge::Response>: TEMPFAIL becomes C<action_tempfail>,
REJECT C<action_bounce> and DISCARD C<action_discard> (each with the
Response's message only), returning 1.  Other statuses, or anything that
is not a Response, return 0.

=cut

sub action_from_response
{
	my ($self, $resp) = @_;
	return 0 unless ref($resp) && eval { $resp->isa('Mailmunge::Response') };
	if ($resp->is_tempfail) {
		$self->action_tempfail($resp->message);
		return 1;
	}
	if ($resp->is_reject) {
		$self->action_bounce($resp->message);
		return 1;
	}
	if ($resp->is_discard) {
		$self->action_discard();
		return 1;
	}
	return 0;
}

# ------------------------------------------------------------------ quarantine

=head2 get_quarantine_dir()

Creates and returns a fresh directory
C<QUARANTINEDIR/YYYY-MM-DD-HH/qdir-YYYY-MM-DD-HH.MM.SS-NNNN> (local time),
or undef if that is impossible.

=cut

sub get_quarantine_dir
{
	my ($self) = @_;
	my $base = Mailmunge::Constants->get('Path:QUARANTINEDIR');
	return undef unless defined($base) && $base ne '';
	my $now = time();
	my $hour_dir = "$base/" . $self->_hour_str($now);
	# Another worker may create the hour directory at the same moment.
	if (!-d $hour_dir && !mkdir($hour_dir, 0750) && !-d $hour_dir) {
		return undef;
	}
	my $stem = "$hour_dir/qdir-" . $self->_time_str($now);
	for (my $n = 1; $n <= 10000; $n++) {
		my $dir = sprintf('%s-%04d', $stem, $n);
		return $dir if mkdir($dir, 0750);
	}
	return undef;
}

# Private: YYYY-MM-DD-HH.MM.SS in local time.
sub _time_str
{
	my ($self, $now) = @_;
	return POSIX::strftime('%Y-%m-%d-%H.%M.%S', localtime($now // time()));
}

# Private: YYYY-MM-DD-HH in local time.
sub _hour_str
{
	my ($self, $now) = @_;
	return POSIX::strftime('%Y-%m-%d-%H', localtime($now // time()));
}

# Private: fill a quarantine directory.
sub _write_quarantine_info
{
	my ($self, @args) = @_;
	# Older callers passed the filter object first.
	shift(@args) if ref($args[0]);
	my ($dir, $reason) = @args;
	my $put = sub {
		my ($name, $text) = @_;
		if (open(my $fh, '>', "$dir/$name")) {
			print $fh $text;
			close($fh);
		}
	};
	$put->('SENDER', $self->sender . "\n") if $self->sender;
	$put->('MTA-QID', $self->qid . "\n") if $self->qid;
	my $rcpts = $self->recipients;
	if ($rcpts && @$rcpts) {
		$put->('RECIPIENTS', join('', map { "$_\n" } @$rcpts));
	}
	$self->copy_or_link('HEADERS', "$dir/HEADERS");
	# Upstream copied HEADERS here by mistake; use the pristine copy
	# when the milter wrote one.
	$self->copy_or_link(-e 'PRISTINE_HEADERS' ? 'PRISTINE_HEADERS' : 'HEADERS',
			    "$dir/PRISTINE_HEADERS");
	$put->('MSG.0', "$reason\n") if defined($reason) && $reason ne '';
	$self->log('info', "Message quarantined in $dir");
	$self->copy_or_link('INPUTMSG', "$dir/ENTIRE_MESSAGE");
	return 1;
}

# ------------------------------------------------------------------ COMMANDS

# Private: fill this Context from an open COMMANDS file.  Returns $self,
# or undef when $need_f is true and the file did not end with 'F'.
sub _read_command_filehandle
{
	my ($self, $filter, $fh, $need_f) = @_;
	$filter = 'Mailmunge::Filter' unless $filter;
	require Mailmunge::Filter;
	my $saw_f = 0;
	my $last_rcpt;
	# With the stock decoder a line without '%' decodes to itself, and so
	# does each of its pieces: such lines (nearly all) skip the calls.
	my $stock = ($filter->can('_percent_decode') // 0) == \&Mailmunge::Filter::_percent_decode;
	# Likewise recipients go straight into the hash unless a subclass
	# has its own way of storing them.
	my $own_store = ($self->can('_push_recipient') // 0) == \&_push_recipient
	    && ($self->can('_set_recipient_mailer') // 0) == \&_set_recipient_mailer;
	while (defined(my $raw = <$fh>)) {
		chomp($raw);
		my $verbatim = $stock && index($raw, '%') < 0;
		# The whole line is decoded first (so the letter itself may be
		# escaped); '=' and 'R' lines split the raw text and decode
		# each piece, because their pieces are space-separated.
		my $line = $verbatim ? $raw : $filter->_percent_decode($raw);
		my $letter = substr($line, 0, 1);
		next if $letter eq '';
		my $arg = substr($line, 1);
		my $rawarg = substr($raw, 1);
		if ($letter eq 'F') {
			$saw_f = 1;
			last;
		}
		if ($letter eq '=') {
			my ($macro, $val) = split(/\s+/, $rawarg);
			next if !defined($macro) || $macro eq '';
			$self->sendmail_macro($filter->_percent_decode($macro), $filter->_percent_decode($val // ''));
			next;
		}
		if ($letter eq 'R') {
			# split(' ') yields no empty pieces, so the '?' default of
			# the decoder only ever applies to missing ones.
			my ($rcpt, $mailer, $host, $addr) = $verbatim ? split(' ', $rawarg)
			    : map { $filter->_percent_decode($_, '?') } split(' ', $rawarg);
			$rcpt = '?' unless defined($rcpt);
			my $triple = [ $mailer // '?', $host // '?', $addr // '?' ];
			if ($own_store) {
				push(@{$self->{recipients}}, $rcpt);
				$self->{recipient_mailer}->{$rcpt} = $triple;
			} else {
				$self->_push_recipient($rcpt);
				$self->_set_recipient_mailer($rcpt, $triple);
			}
			$last_rcpt = $rcpt;
			next;
		}
		if    ($letter eq 'S') { $self->sender($arg); }
		elsif ($letter eq 's') { $self->_push_esmtp_arg($arg); }
		elsif ($letter eq 'r') { $self->_push_recipient_esmtp_args($last_rcpt, $arg) if defined($last_rcpt); }
		elsif ($letter eq '!') { $self->suspicious_chars_in_headers(1); }
		elsif ($letter eq '?') { $self->suspicious_chars_in_body(1); }
		elsif ($letter eq 'I') { $self->hostip($arg); $self->connecting_ip($arg); }
		elsif ($letter eq 'H') { $self->hostname($arg); $self->connecting_name($arg); }
		elsif ($letter eq 'Q') { $self->qid($arg); }
		elsif ($letter eq 'X') { $self->message_id($arg); }
		elsif ($letter eq 'E') { $self->helo($arg); }
		elsif ($letter eq 'i') { $self->mailmunge_id($arg); }
		elsif ($letter eq 'U') {
			my $n = $self->_incr_subject_count();
			if ($n == 1) {
				$self->subject($arg);
			} elsif ($n <= 4) {
				$filter->log($self, 'warning', 'Message contains more than one Subject: header: ' . $self->subject . " --> $arg");
			} elsif ($n == 5) {
				$filter->log($self, 'warning', 'Message contains at least five Subject: headers: ' . $self->subject . " --> $arg");
			}
		}
		else {
			$filter->log($self, 'warning', "Unknown command $letter from mailmunge");
		}
	}
	if ($need_f && !$saw_f) {
		$filter->log($self, 'err', "COMMANDS file from mailmunge did not terminate with 'F' -- check disk space in spool directory");
		return undef;
	}
	return $self;
}

# Private helpers used while reading COMMANDS.
sub _incr_subject_count
{
	my ($self) = @_;
	$self->{subject_count} = ($self->{subject_count} || 0) + 1;
	return $self->{subject_count};
}

sub _push_esmtp_arg
{
	my ($self, $arg) = @_;
	push(@{$self->{esmtp_args}}, $arg);
	return;
}

sub _push_recipient
{
	my ($self, $rcpt) = @_;
	push(@{$self->{recipients}}, $rcpt);
	return;
}

sub _set_recipient_mailer
{
	my ($self, $rcpt, $triple) = @_;
	$self->{recipient_mailer}->{$rcpt} = $triple;
	return;
}

sub _push_recipient_esmtp_args
{
	my ($self, $rcpt, $arg) = @_;
	push(@{$self->{recipient_esmtp_args}->{$rcpt}}, $arg);
	return;
}

1;

__END__

=head1 SEE ALSO

L<Mailmunge::Filter>, L<Mailmunge::Response>

=cut
