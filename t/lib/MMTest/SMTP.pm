package MMTest::SMTP;
use strict;
use warnings;

use IO::Socket::IP;
use IO::Select;
use POSIX qw(strftime);

=head1 NAME

MMTest::SMTP - a small SMTP client for end-to-end tests that keeps every reply

=head1 SYNOPSIS

    use MMTest::SMTP;
    my $r = MMTest::SMTP->send_mail(
        port => $mta->port, helo => 'client.example',
        from => 'a@example.com', to => ['b@example.org'],
        data => MMTest::SMTP->build_message(id => 'case-1'),
    );
    ok($r->{ok}, 'accepted') or diag $r->{failure};
    is($r->{rcpt}[0]{code}, 250);

    # or step by step
    my $c = MMTest::SMTP->new(port => $port);
    my $reply = $c->cmd('EHLO client.example');

=head1 DESCRIPTION

Unlike Net::SMTP this client returns the exact reply of each step (code
and every text line), which the tests compare with what the filter asked
for.  By default it connects from source address 127.0.0.2, so that the
client is not "loopback" in the sense of the filter's Postfix recipient
relaxation (which only looks at 127.0.0.1 and ::1).

A reply is a hash reference C<{ code =E<gt> 250, lines =E<gt> [...],
text =E<gt> '...' }>: C<lines> holds each full reply line without CRLF,
C<text> the lines' texts after "CODE-" / "CODE " joined with "\n".

=head1 METHODS

=head2 MMTest::SMTP->new(port => $port, %opts)

Connects (options C<host>, default 127.0.0.1, may be an IPv6 address
such as C<::1>; C<local_addr>, default 127.0.0.2; C<timeout>, default
120 s per reply) and reads the greeting,
available as C<< $c->greeting >>.  Dies if the connection fails.

=cut

sub new {
    my ($class, %o) = @_;
    my $sock = IO::Socket::IP->new(
        PeerHost  => $o{host} // '127.0.0.1',
        PeerPort  => $o{port} // die("MMTest::SMTP: port required\n"),
        LocalHost => $o{local_addr} // '127.0.0.2',
        Proto     => 'tcp',
        Timeout   => 10,
    ) or die "MMTest::SMTP: cannot connect to port $o{port}: " . ($@ || $!) . "\n";
    binmode $sock;
    $sock->autoflush(1);
    my $self = bless { sock => $sock, timeout => $o{timeout} // 120, buf => '' }, $class;
    $self->{greeting} = $self->read_reply;
    return $self;
}

=head2 greeting

The greeting reply.

=cut

sub greeting { $_[0]{greeting} }

sub _read_line {
    my ($self) = @_;
    my $sel = IO::Select->new($self->{sock});
    while ($self->{buf} !~ /\n/) {
        $sel->can_read($self->{timeout})
            or die "MMTest::SMTP: no reply within $self->{timeout}s\n";
        my $n = sysread($self->{sock}, $self->{buf}, 65536, length $self->{buf});
        die "MMTest::SMTP: read: $!\n" unless defined $n;
        if ($n == 0) {
            return undef if $self->{buf} eq '';
            my $rest = $self->{buf};
            $self->{buf} = '';
            return $rest;
        }
    }
    $self->{buf} =~ s/\A([^\n]*)\n//;
    (my $line = $1) =~ s/\r\z//;
    return $line;
}

=head2 read_reply

Reads one (possibly multi-line) reply.  A closed connection yields code
0 with text C<connection closed>.

=cut

sub read_reply {
    my ($self) = @_;
    my @lines;
    while (1) {
        my $line = $self->_read_line;
        if (!defined $line) {
            return { code => 0, lines => \@lines, text => 'connection closed' } unless @lines;
            last;
        }
        push @lines, $line;
        last unless $line =~ /^\d{3}-/;
    }
    my ($code) = $lines[0] =~ /^(\d{3})/;
    my $text = join "\n", map { my $l = $_; $l =~ s/^\d{3}[- ]?//; $l } @lines;
    return { code => $code // 0, lines => \@lines, text => $text };
}

=head2 cmd($line)

Sends one command line (CRLF is added) and returns the reply.

=cut

sub cmd {
    my ($self, $line) = @_;
    $self->_write("$line\r\n");
    return $self->read_reply;
}

sub _write {
    my ($self, $bytes) = @_;
    my $off = 0;
    while ($off < length $bytes) {
        my $n = syswrite($self->{sock}, $bytes, 1 << 16, $off);
        die "MMTest::SMTP: write: $!\n" unless defined $n;
        $off += $n;
    }
}

=head2 data($message)

Sends DATA; if the server answers 354, sends $message (LF or CRLF line
ends; dot-stuffed here) and the final dot, and returns the final reply.
Otherwise returns the reply to DATA.  C<body_sent> in the reply says which.

=cut

sub data {
    my ($self, $message) = @_;
    my $r = $self->cmd('DATA');
    $r->{body_sent} = 0;
    return $r unless $r->{code} == 354;
    (my $m = $message) =~ s/\r?\n/\r\n/g;
    $m .= "\r\n" unless $m =~ /\r\n\z/;
    $m =~ s/^\./../mg;
    $self->_write($m . ".\r\n");
    my $end = $self->read_reply;
    $end->{body_sent} = 1;
    return $end;
}

=head2 quit

Sends QUIT (ignoring errors) and closes the connection.

=cut

sub quit {
    my ($self) = @_;
    eval { $self->cmd('QUIT') };
    close $self->{sock};
}

=head2 MMTest::SMTP->send_mail(%args)

One complete transaction: connect, C<EHLO helo> (default
C<client.mmtest.invalid>), C<MAIL FROM:E<lt>fromE<gt>>, one C<RCPT TO> per
address in C<to>, DATA with C<data>, QUIT.  Addresses are wrapped in angle
brackets unless they already carry them.  Stops at the first step that
does not succeed.  C<before_data>, a code reference, is called just before
the DATA command.  Other options are passed to C<new>.

Returns a hash reference with the reply of each step (C<greeting>,
C<helo>, C<mail>, C<rcpt> (list), C<data>: the DATA command's reply when
it was not 354, else the reply after the final dot; its C<body_sent> says
which) plus C<ok> (true if the
message was accepted), C<failed_at> (the step that failed) and
C<failure> (that reply's lines joined, for diagnostics).

=cut

sub send_mail {
    my ($class, %a) = @_;
    my %res = (rcpt => []);
    my $fail = sub {
        my ($step, $r) = @_;
        $res{ok} = 0;
        $res{failed_at} = $step;
        $res{failure} = "$step: " . join(' | ', @{ $r->{lines} }) . ($r->{code} ? '' : " ($r->{text})");
        return \%res;
    };
    my %conn = map { exists $a{$_} ? ($_ => $a{$_}) : () } qw(port host local_addr timeout);
    my $c = $class->new(%conn);
    $res{greeting} = $c->greeting;
    if ($res{greeting}{code} != 220) { $c->quit; return $fail->(greeting => $res{greeting}) }

    my $helo = $a{helo} // 'client.mmtest.invalid';
    $res{helo} = $c->cmd("EHLO $helo");
    if ($res{helo}{code} != 250) { $c->quit; return $fail->(helo => $res{helo}) }

    my $wrap = sub { my $x = shift; $x =~ /^</ ? $x : "<$x>" };
    $res{mail} = $c->cmd('MAIL FROM:' . $wrap->($a{from} // ''));
    if ($res{mail}{code} != 250) { $c->quit; return $fail->(mail => $res{mail}) }

    my $accepted = 0;
    my $last_bad;
    for my $to (@{ $a{to} || [] }) {
        my $r = $c->cmd('RCPT TO:' . $wrap->($to));
        push @{ $res{rcpt} }, $r;
        if ($r->{code} =~ /^2/) { $accepted++ } else { $last_bad = $r }
    }
    if (!$accepted) { $c->quit; return $fail->(rcpt => $last_bad // { lines => [], text => 'no recipients', code => 0 }) }

    $a{before_data}->() if $a{before_data};
    $res{data} = $c->data($a{data} // $class->build_message);
    if ($res{data}{code} != 250) { $c->quit; return $fail->(data => $res{data}) }
    $c->quit;
    $res{ok} = 1;
    return \%res;
}

=head2 MMTest::SMTP->build_message(%args)

Builds a simple RFC 5322 message (LF line ends): C<id> (goes into
C<X-MMTest-Id> and the Message-ID), C<from>, C<to>, C<subject>, C<headers>
(list of C<[Name, value]> pairs added after the standard ones) and
C<body> (default: three short lines).

=cut

my $counter = 0;

sub build_message {
    my ($class, %a) = @_;
    my $id = $a{id} // sprintf('m%d-%d-%d', time, $$, ++$counter);
    my @h = (
        [ 'From',       $a{from} // 'Sender <sender@example.com>' ],
        [ 'To',         $a{to} // 'Recipient <rcpt@example.org>' ],
        [ 'Subject',    $a{subject} // "MMTest message $id" ],
        [ 'Date',       strftime('%a, %d %b %Y %H:%M:%S +0000', gmtime) ],
        [ 'Message-ID', "<$id\@mmtest.invalid>" ],
        [ 'X-MMTest-Id', $id ],
        @{ $a{headers} || [] },
    );
    my $body = $a{body} // "Hello,\n\nthis is an end-to-end test message.\n";
    return join('', map { "$_->[0]: $_->[1]\n" } @h) . "\n" . $body;
}

1;
