use strict;
use warnings;

package Mailmunge::Test::SMTPForward;
use base qw(Mailmunge::Test);

use IO::Select;
use IO::Socket::SSL;
use Mailmunge::Response;

# Seconds allowed for connecting and for each reply line.
my $TIMEOUT = 25;

# Back-end replies that say "temporary" but describe a permanent problem;
# passing them on as tempfails would only make the client retry for days.
my $REALLY_PERMANENT = qr{
	DNS\ A-record\ is\ empty$
      | DNS\ server\ failure$
      | Mailbox\ Full$
      | Mailbox\ size\ limit\ exceeded$
      | Message\ size\ exceeds\ fixed\ limit$
      | No\ such\ user.*-FAIL
      | Recipient\ address\ rejected:\ User\ unknown\ in\ local\ recipient\ table$
      | Recipient\ address\ rejected:\ User\ unknown\ in\ virtual\ mailbox\ table$
      | Recipient\ address\ rejected:\ unverified\ address:\ unknown\ user:\ ".*"$
      | Refused\.\ The\ domain\ of\ your\ sender\ address\ has\ no\ mail\ exchanger
      | Relay\ access\ denied$
      | Sender\ address\ rejected:\ Domain\ not\ found$
      | User\ has\ exceeded\ his/her\ disk\ space\ limit\.$
}x;

sub check_against_smtp_server
{
	my ($self, $ctx, $recip, $server, $port) = @_;
	# A back end that hangs up must not kill the worker on the next write.
	local $SIG{PIPE} = 'IGNORE';
	$port = 25 unless defined($port);
	my $sender = $ctx->sender;
	$sender = '' unless defined($sender);
	$sender = "<$sender>" unless $sender =~ /^<.*>$/;
	$recip = '' unless defined($recip);
	$recip = "<$recip>" unless $recip =~ /^<.*>$/;
	my $helo = $ctx->connecting_name || ('[' . ($ctx->connecting_ip || '127.0.0.1') . ']');

	my $sock = IO::Socket::SSL->new(
		PeerAddr           => $server,
		PeerPort           => $port,
		Proto              => 'tcp',
		Timeout            => $TIMEOUT,
		SSL_startHandshake => 0,
		SSL_hostname       => $server,
		SSL_verify_mode    => SSL_VERIFY_NONE);
	return Mailmunge::Response->TEMPFAIL(message => "Could not connect to SMTP server $server: $!")
	    unless $sock;

	my $s = { sock => $sock, buf => '', ctx => $ctx, recip => $recip, server => $server };

	my $resp = $self->_reply($s);
	return $self->_quit_with($s, $resp) unless $resp->is_success;

	if ($server ne '127.0.0.1' && $server ne '::1') {
		my $me = quotemeta($self->filter->get_host_name());
		if ($resp->message =~ /^$me\b/) {
			return $self->_quit_with($s, Mailmunge::Response->REJECT(
				message => "Verification server loop: Trying to verify $recip against myself",
				code => 554, dsn => '5.4.6'));
		}
	}

	if ($resp->message =~ /\bESMTP\b/) {
		_send($s, "EHLO $helo");
		my %ext;
		my $e = $self->_ehlo_reply($s, \%ext);
		if (!$e->is_success) {
			_send($s, "HELO $helo");
		} elsif (exists($ext{STARTTLS}) && $self->_starttls($s, $helo)) {
			# _starttls already sent the EHLO over TLS.
		} else {
			# Start afresh in plain text so the EHLO reply below is
			# the one we read.
			_send($s, 'RSET');
			$self->_reply($s);
			_send($s, "EHLO $helo");
		}
	} else {
		_send($s, "HELO $helo");
	}

	$resp = $self->_reply($s);
	return $self->_quit_with($s, $resp) unless $resp->is_success;

	_send($s, "MAIL From:$sender");
	$resp = $self->_reply($s);
	return $self->_quit_with($s, $resp) unless $resp->is_success;

	_send($s, "RCPT To:$recip");
	$resp = $self->_quit_with($s, $self->_reply($s));

	if ($resp->is_tempfail && $resp->message =~ $REALLY_PERMANENT) {
		$self->_log($s, 'info', 'Converting tempfail to reject: ' . $resp->message);
		$resp->status('REJECT');
		$resp->fix_code_dsn();
	}
	return $resp;
}

sub _log
{
	my ($self, $s, $level, $msg) = @_;
	$self->filter->log($s->{ctx}, $level, "check_against_smtp_server: $s->{server}: $s->{recip}: $msg");
}

sub _send
{
	my ($s, $line) = @_;
	my $data = "$line\r\n";
	while (length($data)) {
		my $n = $s->{sock}->syswrite($data);
		return 0 unless defined($n) && $n > 0;
		substr($data, 0, $n, '');
	}
	return 1;
}

# One line from the server without its line ending, or undef on EOF,
# error or timeout.  Our own buffer so the timeout also covers data that
# trickles in slowly and so nothing is left buffered across STARTTLS.
sub _getline
{
	my ($s) = @_;
	while (1) {
		if ($s->{buf} =~ s/\A([^\n]*)\n//) {
			my $l = $1;
			$l =~ s/\s+\z//;
			return $l;
		}
		my $sock = $s->{sock};
		my $ready = (ref($sock) && $sock->isa('IO::Socket::SSL') && $sock->pending)
		    || IO::Select->new($sock)->can_read($TIMEOUT);
		return undef unless $ready;
		my $n = $sock->sysread(my $chunk, 4096);
		if (!$n) {
			return undef if $s->{buf} eq '';
			my $l = $s->{buf};
			$s->{buf} = '';
			$l =~ s/\s+\z//;
			return $l;
		}
		$s->{buf} .= $chunk;
	}
}

# Reads up to the final line of a reply and turns it into a Response.
sub _reply
{
	my ($self, $s) = @_;
	while (defined(my $line = _getline($s))) {
		next unless $line =~ /^(\d\d\d)(?:\s+(.*))?\z/s;
		my ($code, $text) = ($1, defined($2) ? $2 : '');
		my $dsn = '';
		if ($text =~ /^(\d\.\d{1,3}\.\d{1,3})\s+(.*)\z/s) {
			($dsn, $text) = ($1, $2);
		}
		if ($code =~ /^[123]/) {
			return Mailmunge::Response->CONTINUE(code => $code, message => $text, dsn => $dsn);
		}
		# Upstream quirk kept: refusals are logged at debug level only
		# (protocol/perl-api.md §10.4).
		if ($code =~ /^4/) {
			$self->_log($s, 'debug', "$code $dsn $text");
			return Mailmunge::Response->TEMPFAIL(code => $code, message => $text, dsn => $dsn);
		}
		if ($code =~ /^5/) {
			$self->_log($s, 'debug', "$code $dsn $text");
			return Mailmunge::Response->REJECT(code => $code, message => $text, dsn => $dsn);
		}
		$self->_log($s, 'warning', "Invalid SMTP reply code $code");
		return Mailmunge::Response->TEMPFAIL(
			message => "Invalid SMTP reply code $code from server $s->{server} for $s->{recip}",
			code => 451, dsn => '4.3.0');
	}
	$self->_log($s, 'info', 'Empty response');
	return Mailmunge::Response->TEMPFAIL(
		message => '_get_smtp_return_code: Empty response from SMTP server',
		code => 451, dsn => '4.3.0');
}

# Reads a (multi-line) EHLO reply, collecting the keywords into %$ext.
sub _ehlo_reply
{
	my ($self, $s, $ext) = @_;
	my $first = 1;
	while (defined(my $line = _getline($s))) {
		if ($line !~ /^([245]\d\d)([- ]?)(\S*)\s*(.*)\z/) {
			return Mailmunge::Response->TEMPFAIL(message => "$s->{server} said: $line");
		}
		my ($code, $sep, $kw, $rest) = ($1, $2, $3, $4);
		if ($first) {
			$ext->{hostname} = $kw;
			$first = 0;
		} else {
			$ext->{uc($kw)} = $rest;
		}
		next if $sep eq '-';
		return Mailmunge::Response->CONTINUE(code => $code, dsn => '2.5.0') if $code =~ /^2/;
		return Mailmunge::Response->TEMPFAIL(code => $code, dsn => '4.0.0') if $code =~ /^4/;
		return Mailmunge::Response->REJECT(code => $code, dsn => '5.0.0');
	}
	return Mailmunge::Response->TEMPFAIL(message => "$s->{server} closed the connection");
}

# Returns true if the session now runs over TLS and a new EHLO was sent.
sub _starttls
{
	my ($self, $s, $helo) = @_;
	_send($s, 'STARTTLS');
	my $r = $self->_reply($s);
	return 0 unless $r->is_success;
	if ($s->{sock}->connect_SSL()) {
		$self->_log($s, 'debug', 'STARTTLS succeeded');
		_send($s, "EHLO $helo");
		return 1;
	}
	my $err = $IO::Socket::SSL::SSL_ERROR || 'unknown error';
	$s->{sock}->stop_SSL();
	$self->_log($s, 'debug', "offered STARTTLS, but failed with $err.  Falling back to plaintext");
	return 0;
}

sub _quit_with
{
	my ($self, $s, $resp) = @_;
	if (_send($s, 'QUIT')) {
		# Read and ignore the reply; it must not be logged as a
		# verdict, so read raw lines.
		my $line = _getline($s);
	}
	$s->{sock}->close();
	return $resp;
}

1;

__END__

=head1 NAME

Mailmunge::Test::SMTPForward - ask a back-end SMTP server whether it would accept a recipient

=head1 SYNOPSIS

    use Mailmunge::Test::SMTPForward;

    sub filter_recipient {
        my ($self, $ctx) = @_;
        my $check = Mailmunge::Test::SMTPForward->new($self);
        my $resp = $check->check_against_smtp_server(
            $ctx, $ctx->recipients->[0], 'mailstore.example.com');
        return $resp unless $resp->is_success;
        return Mailmunge::Response->CONTINUE();
    }

=head1 DESCRIPTION

A gateway that relays mail to an internal server can refuse unknown
recipients at RCPT time by asking that server first.  This plug-in
opens an SMTP session to the back end, greets it with the client's host
name (or its bracketed IP address), upgrades to TLS when offered (no
certificate check: the answer is only advisory), sends C<MAIL From:>
with the message's sender and C<RCPT To:> with the recipient, and quits.

=head1 METHODS

=head2 Mailmunge::Test::SMTPForward->new($filter)

Inherited from L<Mailmunge::Test>.  Log lines go through C<< $filter->log >>.

=head2 check_against_smtp_server($ctx, $recipient, $server [, $port])

Runs the session against C<$server> (host name or address) on C<$port>
(default 25) and returns a L<Mailmunge::Response> that mirrors the back
end's reply to C<RCPT To:> (code, enhanced status code and text), or
to the earlier command that failed.

=over 4

=item *

If the connection cannot be made: TEMPFAIL
C<Could not connect to SMTP server SERVER: REASON>.

=item *

4xx and 5xx replies are logged at level C<debug> as
C<check_against_smtp_server: SERVER: RECIPIENT: CODE DSN TEXT> and
returned as TEMPFAIL or REJECT.

=item *

A server that closes the connection or stops answering for 25 seconds
gives TEMPFAIL 451 4.3.0.

=item *

A greeting that starts with our own host name (unless C<$server> is
C<127.0.0.1> or C<::1>) means we would be asking ourselves: REJECT 554
5.4.6 C<Verification server loop: Trying to verify RECIPIENT against myself>.

=item *

Temporary failures whose text is a well-known permanent condition
(C<Mailbox Full>, C<Relay access denied>, C<User unknown in local
recipient table> and similar) are turned into REJECT.

=back

=cut
