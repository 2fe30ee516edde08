use strict;
use warnings;

package Mailmunge::Test::Rspamd;
use base qw(Mailmunge::Test);

use IO::Select;
use IO::Socket::INET;
use JSON ();
use Time::HiRes ();
use Mailmunge::Response;

sub rspamd_check
{
	my ($self, $ctx, $host, $port, $timeout) = @_;
	$host = '127.0.0.1' unless defined($host) && $host ne '';
	$port = 11333 unless defined($port) && $port ne '';
	$timeout = 300 unless defined($timeout) && $timeout > 0;
	local $SIG{PIPE} = 'IGNORE';

	my $sock = IO::Socket::INET->new(PeerAddr => $host, PeerPort => $port, Proto => 'tcp', Timeout => 5);
	return { response => Mailmunge::Response->TEMPFAIL(message => 'Unable to connect to rspamd') }
	    unless $sock;

	my $deadline = Time::HiRes::time() + $timeout;
	my ($reply, $err) = $self->_exchange($ctx, $sock, $deadline);
	$sock->close();
	if (!defined($reply)) {
		return { response => Mailmunge::Response->TEMPFAIL(message => 'Calling rspamd timed out') }
		    if $err eq 'timeout';
		return { response => Mailmunge::Response->TEMPFAIL(message => "Calling rspamd failed: $err") };
	}
	my ($results, $perr) = _parse_reply($reply);
	return { response => Mailmunge::Response->TEMPFAIL(message => $perr) } unless $results;
	return { response => _verdict($results), results => $results };
}

# Sends the request and reads the whole reply; returns ($reply) or
# (undef, error text).
sub _exchange
{
	my ($self, $ctx, $sock, $deadline) = @_;
	my $filter = $self->filter;
	my $msgfile = (ref($filter) && $filter->can('inputmsg')) ? $filter->inputmsg : 'INPUTMSG';
	my $dir = $ctx->cwd;
	$msgfile = "$dir/$msgfile" if defined($dir) && $dir ne '' && $msgfile !~ m{^/};
	my $fh;
	open($fh, '<', $msgfile) or return (undef, "cannot open $msgfile: $!");
	binmode($fh);
	my $size = -s $fh;

	my @hdr = ("POST /checkv2 HTTP/1.0", "Content-Length: $size");
	my %one = (From => $ctx->sender, IP => $ctx->hostip, Helo => $ctx->helo,
		   Hostname => $ctx->hostname, 'Queue-Id' => $ctx->qid);
	foreach my $k ('From', 'IP', 'Helo', 'Hostname', 'Queue-Id') {
		my $v = $one{$k};
		next unless defined($v) && $v ne '';
		$v =~ s/[\r\n]+/ /g;
		push(@hdr, "$k: $v");
	}
	foreach my $r (@{$ctx->recipients || []}) {
		(my $v = $r) =~ s/[\r\n]+/ /g;
		push(@hdr, "Rcpt: $v");
	}
	my $ok = _write_all($sock, join("\r\n", @hdr) . "\r\n\r\n", $deadline);
	while ($ok eq '1') {
		my $n = read($fh, my $buf, 65536);
		last unless $n;
		$ok = _write_all($sock, $buf, $deadline);
	}
	close($fh);
	return (undef, $ok) unless $ok eq '1';

	my $reply = '';
	my $sel = IO::Select->new($sock);
	while (1) {
		my $left = $deadline - Time::HiRes::time();
		return (undef, 'timeout') if $left <= 0;
		return (undef, 'timeout') unless $sel->can_read($left);
		my $n = sysread($sock, my $buf, 65536);
		return (undef, "read error: $!") unless defined($n);
		last if $n == 0;
		$reply .= $buf;
		# Done once the announced body is complete, even if the server
		# keeps the connection open.
		if ($reply =~ /\A(.*?\r?\n\r?\n)/s) {
			my $hlen = length($1);
			my ($clen) = substr($reply, 0, $hlen) =~ /^Content-Length:\s*(\d+)/mi;
			last if defined($clen) && length($reply) - $hlen >= $clen;
		}
	}
	return ($reply);
}

# Returns '1' on success, 'timeout' or an error text.
sub _write_all
{
	my ($sock, $data, $deadline) = @_;
	my $sel = IO::Select->new($sock);
	while (length($data)) {
		my $left = $deadline - Time::HiRes::time();
		return 'timeout' if $left <= 0 || !$sel->can_write($left);
		my $n = syswrite($sock, $data);
		return "write error: $!" unless defined($n);
		substr($data, 0, $n, '');
	}
	return '1';
}

sub _parse_reply
{
	my ($reply) = @_;
	my ($head, $body) = split(/\r?\n\r?\n/, $reply, 2);
	$head = '' unless defined($head);
	$body = '' unless defined($body);
	my @lines = split(/\r?\n/, $head);
	my $status = shift(@lines);
	$status = '' unless defined($status);
	return (undef, "Could not interpret rspamd response: $status")
	    unless $status =~ m{^HTTP/\d+\.\d+\s+(\d+)};
	return (undef, "Unsuccessful response from rspamd: $status") unless $1 eq '200';
	foreach my $l (@lines) {
		next unless $l =~ /^Content-Type:\s*([^;\s]+)/i;
		return (undef, "Unexpected Content-Type from rspamd: $1") unless lc($1) eq 'application/json';
	}
	my $data = eval { JSON->new->decode($body) };
	return (undef, 'Could not parse JSON from rspamd') unless ref($data) eq 'HASH';
	return ($data);
}

sub _verdict
{
	my ($r) = @_;
	return Mailmunge::Response->CONTINUE() if $r->{is_skipped};
	my $action = $r->{action};
	return Mailmunge::Response->TEMPFAIL(message => 'rspamd results did not contain an "action" key')
	    unless defined($action);
	return Mailmunge::Response->TEMPFAIL(message => 'Please try again later')
	    if $action eq 'greylist' || $action eq 'soft reject';
	return Mailmunge::Response->REJECT(message => 'Message rejected due to unacceptable content')
	    if $action eq 'reject';
	return Mailmunge::Response->CONTINUE();
}

1;

__END__

=head1 NAME

Mailmunge::Test::Rspamd - scan a message with rspamd

=head1 SYNOPSIS

    use Mailmunge::Test::Rspamd;

    sub filter_message {
        my ($self, $ctx) = @_;
        my $ans = Mailmunge::Test::Rspamd->new($self)->rspamd_check($ctx, '127.0.0.1', 11333, 30);
        if ($ans->{results}) {
            $ctx->action_add_header('X-Spam-Score', $ans->{results}{score});
        }
        $ctx->action_from_response($ans->{response});
        return;
    }

=head1 DESCRIPTION

Sends the message (C<INPUTMSG>) with its envelope (sender, recipients,
client address and name, HELO, queue ID) to an rspamd "normal" worker's
C</checkv2> HTTP endpoint and maps rspamd's recommended action to a
L<Mailmunge::Response>.  Whether to apply that response is up to the
caller.

=head1 METHODS

=head2 Mailmunge::Test::Rspamd->new($filter)

Inherited from L<Mailmunge::Test>.

=head2 rspamd_check($ctx, $host, $port [, $timeout])

Talks to rspamd at C<$host>:C<$port> (defaults 127.0.0.1 and 11333) and
gives up after C<$timeout> seconds (default 300) for the whole
exchange; connecting alone may take at most 5 seconds.  Returns a hash
reference:

=over 4

=item response

A L<Mailmunge::Response>: CONTINUE for rspamd's C<no action>,
C<add header>, C<rewrite subject> or a skipped message; TEMPFAIL
C<Please try again later> for C<greylist> and C<soft reject>; REJECT
C<Message rejected due to unacceptable content> for C<reject>.  When
rspamd cannot be used, TEMPFAIL with the reason: C<Unable to connect to
rspamd>, C<Calling rspamd timed out>, C<Calling rspamd failed: ...>,
C<Unsuccessful response from rspamd: ...>, and the like.

=item results

Present only when rspamd answered: its JSON reply as a hash (C<action>,
C<score>, C<required_score>, C<symbols>, ...).

=back

=cut
