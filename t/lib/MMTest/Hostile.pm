package MMTest::Hostile;
use strict;
use warnings;

use Exporter 'import';
use IO::Select;
use IO::Socket::INET;
use IO::Socket::UNIX;
use Socket qw(SOCK_STREAM);
use Time::HiRes ();

use MMTest::Util qw(wait_until);

our @EXPORT_OK = qw(control_request hold_connections log_mark log_since wait_log random_bytes);

=head1 NAME

MMTest::Hostile - raw-socket helpers for the hostile-input and fault tests (t/85-t/88)

=head1 SYNOPSIS

    use MMTest::Hostile qw(control_request log_mark wait_log);

    # Speak milter to our milter directly, as an MTA would (or would not).
    my $m = MMTest::Hostile::Milter->connect($stack->milter_port);
    $m->negotiate;
    $m->raw("\0\0\0\0");                       # anything at all
    ok($m->closed_within(10), 'the milter closed the connection');

    # One request on the multiplexor's control socket, any bytes.
    my $reply = control_request($stack->mx_socket, "tick \xff\n");

    # What a daemon logged since a mark.
    my $mark = log_mark($stack, 'milter');
    ...
    wait_log($stack, 'milter', $mark, qr/unknown milter command/, 10);

=head1 DESCRIPTION

The end-to-end harness talks to our daemons only through a real MTA and
C<mm-mx-ctrl>, which never send malformed input.  These helpers put
chosen bytes straight on the milter's TCP socket or the multiplexor's
control socket, and read what comes back, with bounded waits.

=head1 FUNCTIONS

=head2 control_request($socket_path, $bytes [, %opts])

Connects to a UNIX control socket, writes $bytes (any length, any bytes),
optionally shuts down the writing side (C<shutdown_write =E<gt> 1>), and
reads until the server closes the connection.  Returns the reply bytes;
dies when the reply does not end within C<timeout> seconds (default 20).

=cut

sub control_request {
    my ($path, $bytes, %o) = @_;
    my $s = IO::Socket::UNIX->new(Type => SOCK_STREAM, Peer => $path)
        or die "MMTest::Hostile: connect $path: $!\n";
    binmode $s;
    _write_all($s, $bytes);
    shutdown($s, 1) if $o{shutdown_write};
    my $reply = _read_to_eof($s, $o{timeout} // 20);
    close $s;
    return $reply;
}

=head2 hold_connections($socket_path, $n [, $first_bytes])

Opens $n connections to a UNIX socket and returns them, each having sent
$first_bytes (default nothing).  The caller holds them open as long as it
keeps the list.

=cut

sub hold_connections {
    my ($path, $n, $first) = @_;
    my @held;
    for (1 .. $n) {
        my $s = IO::Socket::UNIX->new(Type => SOCK_STREAM, Peer => $path)
            or die "MMTest::Hostile: connection $_ of $n to $path: $!\n";
        binmode $s;
        _write_all($s, $first) if defined $first && length $first;
        push @held, $s;
    }
    return @held;
}

=head2 log_mark($stack, $daemon) / log_since($stack, $daemon, $mark)

C<log_mark> notes how much C<$daemon> (C<milter> or C<mx>) has logged so
far; C<log_since> returns what it logged after that mark.

=head2 wait_log($stack, $daemon, $mark, $regex, $seconds)

Waits until what C<$daemon> logged after $mark matches $regex and returns
that text; dies with the text after $seconds.

=cut

sub _log_of { my ($stack, $daemon) = @_; return $daemon eq 'mx' ? $stack->mx_log : $stack->milter_log }

sub log_mark  { my ($stack, $daemon) = @_; return length _log_of($stack, $daemon) }
sub log_since { my ($stack, $daemon, $mark) = @_; return substr(_log_of($stack, $daemon), $mark) }

sub wait_log {
    my ($stack, $daemon, $mark, $re, $secs) = @_;
    my $text = '';
    eval {
        wait_until($secs, "$daemon log line $re", sub {
            $text = log_since($stack, $daemon, $mark);
            $text =~ $re;
        });
    };
    die "$@--- $daemon log since the mark ---\n$text" if $@;
    return $text;
}

=head2 random_bytes($n, $seed)

$n pseudo-random bytes from a fixed seed, so a failure can be replayed.

=cut

sub random_bytes {
    my ($n, $seed) = @_;
    # A small xorshift generator: the same bytes on every perl.
    my $x = ($seed * 2654435761 + 1) & 0xffffffff;
    my $out = '';
    for (1 .. $n) {
        $x ^= ($x << 13) & 0xffffffff;
        $x ^= $x >> 17;
        $x ^= ($x << 5) & 0xffffffff;
        $out .= chr($x & 0xff);
    }
    return $out;
}

sub _write_all {
    my ($s, $bytes) = @_;
    my $off = 0;
    while ($off < length $bytes) {
        my $n = syswrite($s, $bytes, 1 << 16, $off);
        die "MMTest::Hostile: write: $!\n" unless defined $n;
        $off += $n;
    }
}

sub _read_to_eof {
    my ($s, $secs) = @_;
    my $sel = IO::Select->new($s);
    my $deadline = Time::HiRes::time() + $secs;
    my $buf = '';
    while (1) {
        my $left = $deadline - Time::HiRes::time();
        die "MMTest::Hostile: no end of reply within ${secs}s (so far: " . length($buf) . " bytes)\n"
            if $left <= 0;
        next unless $sel->can_read($left);
        my $n = sysread($s, $buf, 65536, length $buf);
        return $buf if !$n;    # EOF (or a reset, which ends the reply too)
    }
}

package MMTest::Hostile::Milter;

use IO::Select;
use IO::Socket::INET;
use Time::HiRes ();

=head1 MMTest::Hostile::Milter

A milter-protocol client that lets the test send anything.

=head2 MMTest::Hostile::Milter->connect($port [, $host])

Connects to the milter's TCP socket (default host 127.0.0.1).

=cut

sub connect {
    my ($class, $port, $host) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => $host // '127.0.0.1', PeerPort => $port, Proto => 'tcp',
        Timeout => 10) or die "MMTest::Hostile::Milter: connect to port $port: $!\n";
    binmode $s;
    return bless { s => $s, buf => '', sel => IO::Select->new($s), eof => 0 }, $class;
}

=head2 raw($bytes) / send($cmd, $data) / packet($cmd, $data)

C<raw> writes bytes as they are; C<send> writes one packet (length,
command byte, data); C<packet> only builds one (class or object method).

=cut

sub raw { my ($self, $bytes) = @_; MMTest::Hostile::_write_all($self->{s}, $bytes); return $self }

sub packet { my (undef, $cmd, $data) = @_; $data //= ''; return pack('N', 1 + length $data) . $cmd . $data }

sub send { my ($self, $cmd, $data) = @_; return $self->raw($self->packet($cmd, $data)) }

# Fills the buffer until it holds $n bytes; false at EOF.
sub _fill {
    my ($self, $n, $deadline) = @_;
    while (length $self->{buf} < $n) {
        return 0 if $self->{eof};
        my $left = $deadline - Time::HiRes::time();
        die "MMTest::Hostile::Milter: no reply in time\n" if $left <= 0;
        next unless $self->{sel}->can_read($left);
        my $got = sysread($self->{s}, $self->{buf}, 65536, length $self->{buf});
        $self->{eof} = 1 unless $got;
    }
    return 1;
}

=head2 read_packet([$seconds])

Reads one packet from the milter: C<[$cmd, $data]>, or undef when the
milter closed the connection.  Dies when nothing complete arrives within
$seconds (default 30).

=cut

sub read_packet {
    my ($self, $secs) = @_;
    my $deadline = Time::HiRes::time() + ($secs // 30);
    $self->_fill(4, $deadline) or return undef;
    my $len = unpack('N', $self->{buf});
    $self->_fill(4 + $len, $deadline) or return undef;
    my $p = substr($self->{buf}, 0, 4 + $len, '');
    return [ substr($p, 4, 1), substr($p, 5) ];
}

=head2 call($cmd, $data)

Sends a packet and returns the milter's reply packet (undef at EOF).

=cut

sub call { my ($self, $cmd, $data) = @_; $self->send($cmd, $data); return $self->read_packet }

=head2 closed_within($seconds)

True when the milter closes the connection within $seconds; packets it
sends before that are dropped.

=cut

sub closed_within {
    my ($self, $secs) = @_;
    my $deadline = Time::HiRes::time() + $secs;
    while (Time::HiRes::time() < $deadline) {
        my $p = eval { $self->read_packet($deadline - Time::HiRes::time()) };
        return 0 if $@;
        return 1 unless $p;
    }
    return 0;
}

=head2 negotiate / macros / connect_inet / helo / mail / rcpt / header / eoh / body / eom / quit

The steps of a session as Postfix sends them.  C<negotiate> offers
protocol version 6 with every action and step; C<macros($stage, [name
=E<gt> value, ...])> sends a macro packet (no reply); C<mail> and C<rcpt>
take the address and ESMTP arguments; each returns the reply packet.
C<eom> returns the modification packets and the final reply:
C<([$pkt, ...], $final)>.  C<quit> sends SMFIC_QUIT and closes.

=cut

sub negotiate { $_[0]->call('O', pack('NNN', 6, 0x1ff, 0x1fffff)) }

sub macros {
    my ($self, $stage, $pairs) = @_;
    return $self->send('D', $stage . join('', map { "$_\0" } @$pairs));
}

sub connect_inet {
    my ($self, $host, $addr, $port) = @_;
    return $self->call('C', "$host\0" . '4' . pack('n', $port) . "$addr\0");
}

sub helo   { $_[0]->call('H', "$_[1]\0") }
sub mail   { my ($self, @a) = @_; $self->call('M', join('', map { "$_\0" } @a)) }
sub rcpt   { my ($self, @a) = @_; $self->call('R', join('', map { "$_\0" } @a)) }
sub header { $_[0]->call('L', "$_[1]\0$_[2]\0") }
sub eoh    { $_[0]->call('N', '') }
sub body   { $_[0]->call('B', $_[1]) }

sub eom {
    my ($self, $secs) = @_;
    $self->send('E', '');
    my @mods;
    while (1) {
        my $p = $self->read_packet($secs // 60) or return (\@mods, undef);
        next if $p->[0] eq 'p';    # progress
        return (\@mods, $p) if $p->[0] =~ /\A[cartdy]\z/;
        push @mods, $p;
    }
}

sub quit {
    my ($self) = @_;
    eval { $self->send('Q', '') };
    CORE::close($self->{s});
}

=head2 close

Closes the connection at once (an MTA that goes away).

=cut

sub close { CORE::close($_[0]{s}) }

1;
