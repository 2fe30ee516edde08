package MMTest::Sink;
use strict;
use warnings;

use IO::Socket::INET;
use POSIX ();
use Time::HiRes ();
use File::Spec;

use MMTest::Util qw(private_dir wait_until);
use MMTest::Sink::Message;

=head1 NAME

MMTest::Sink - a capturing SMTP server on 127.0.0.1 for end-to-end tests

=head1 SYNOPSIS

    my $sink = MMTest::Sink->new;          # listening at once
    my $port = $sink->port;                # point the MTA's relayhost here
    ...
    my $msg = $sink->wait_for_id($id, 20); # an MMTest::Sink::Message
    $sink->stop;                           # also done on destruction

=head1 DESCRIPTION

The sink accepts every message it is offered and writes it, with its
envelope, into one file per message in its spool directory
(see L<MMTest::Sink::Message> and protocol/e2e.md for the file layout).
The server runs in a forked child process in its own process group, and
forks once more per SMTP connection, so an MTA that keeps several
connections open is never blocked.  Its greeting name is
C<sink.mmtest.invalid>, which differs from every MTA name the harness
uses so that the MTAs' loop detection stays quiet.

=head1 METHODS

=head2 MMTest::Sink->new(%opts)

Binds a listening socket on 127.0.0.1 (C<port> option, default: any free
port), creates the spool directory (C<dir> option, default: a private
temporary directory) and starts serving.

=cut

sub new {
    my ($class, %opts) = @_;
    my $self = bless {
        dir  => $opts{dir} // private_dir('sink'),
        name => 'sink.mmtest.invalid',
        owner => $$,
    }, $class;
    my $listen = IO::Socket::INET->new(
        LocalAddr => '127.0.0.1', LocalPort => $opts{port} // 0, Proto => 'tcp',
        Listen => 64, ReuseAddr => 1,
    ) or die "MMTest::Sink: cannot listen on 127.0.0.1: $!\n";
    $self->{port} = $listen->sockport;

    my $pid = fork() // die "MMTest::Sink: fork: $!\n";
    if ($pid == 0) {
        # The server: its own process group so stop() can take the
        # per-connection children along.
        POSIX::setpgid(0, 0);
        $self->_serve($listen);
        POSIX::_exit(0);
    }
    close $listen;
    $self->{pid} = $pid;
    return $self;
}

=head2 port / dir / pid

The TCP port the sink listens on, the directory the messages are written
to, and the pid of the server process.

=cut

sub port { $_[0]{port} }
sub dir  { $_[0]{dir} }
sub pid  { $_[0]{pid} }

=head2 messages()

Returns every message received so far, oldest first, as
L<MMTest::Sink::Message> objects.

=cut

sub messages {
    my ($self) = @_;
    opendir my $dh, $self->{dir} or die "opendir $self->{dir}: $!";
    my @files = sort grep { /\.msg\z/ } readdir $dh;
    closedir $dh;
    return map { MMTest::Sink::Message->from_file(File::Spec->catfile($self->{dir}, $_)) } @files;
}

=head2 find_id($id)

Returns the messages whose top-level C<X-MMTest-Id> header equals $id
(the tests put a unique id into each message they send).

=cut

sub find_id {
    my ($self, $id) = @_;
    return grep { my $v = $_->header('X-MMTest-Id'); defined $v && $v eq $id } $self->messages;
}

=head2 wait_for_id($id [, $timeout])

Waits up to $timeout seconds (default 30) until a message with this
C<X-MMTest-Id> has arrived and returns it (the first one, if the MTA
delivered several copies).  Dies with a clear message on timeout.

=cut

sub wait_for_id {
    my ($self, $id, $timeout) = @_;
    my @m = wait_until($timeout // 30, "message $id at the sink", sub {
        my @found = $self->find_id($id);
        return @found ? \@found : undef;
    });
    return $m[0][0];
}

=head2 wait_for_count($n [, $timeout])

Waits until at least $n messages have arrived and returns them all.

=cut

sub wait_for_count {
    my ($self, $n, $timeout) = @_;
    my $list = wait_until($timeout // 30, "$n message(s) at the sink", sub {
        my @m = $self->messages;
        return @m >= $n ? \@m : undef;
    });
    return @$list;
}

=head2 clear()

Removes every stored message.

=cut

sub clear {
    my ($self) = @_;
    unlink $_->file for $self->messages;
    return;
}

=head2 stop()

Stops the server and any connection it is still handling.  Idempotent;
also called when the object is destroyed.

=cut

sub stop {
    my ($self) = @_;
    my $pid = delete $self->{pid} or return;
    return unless $$ == $self->{owner};
    kill 'TERM', -$pid;
    for (1 .. 100) {
        last if waitpid($pid, POSIX::WNOHANG()) == $pid;
        Time::HiRes::sleep(0.02);
    }
    kill 'KILL', -$pid;
    waitpid($pid, 0);
    return;
}

sub DESTROY { local ($., $@, $!, $^E, $?); $_[0]->stop }

# ---- the server side -------------------------------------------------------

sub _serve {
    my ($self, $listen) = @_;
    $SIG{CHLD} = 'IGNORE';    # connection children reap themselves
    $SIG{TERM} = sub { POSIX::_exit(0) };
    my $seq = 0;
    while (1) {
        my $conn = $listen->accept or next;
        $seq++;
        my $kid = fork();
        if (defined $kid && $kid == 0) {
            close $listen;
            $SIG{ALRM} = sub { POSIX::_exit(1) };
            alarm 120;    # never hang around forever
            eval { $self->_session($conn, $seq) };
            POSIX::_exit(0);
        }
        close $conn;
    }
}

sub _reply {
    my ($conn, $text) = @_;
    print {$conn} "$text\r\n";
}

sub _session {
    my ($self, $conn, $seq) = @_;
    binmode $conn;
    $conn->autoflush(1);
    my $name = $self->{name};
    _reply($conn, "220 $name ESMTP MMTest sink");
    my ($helo, $from, @rcpts) = ('');
    my $n = 0;
    while (defined(my $line = <$conn>)) {
        $line =~ s/\r?\n\z//;
        if ($line =~ /^(?:HELO|EHLO)\s*(.*)$/i) {
            $helo = $1;
            ($from, @rcpts) = ();
            if ($line =~ /^EHLO/i) {
                print {$conn} "250-$name\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n";
            } else {
                _reply($conn, "250 $name");
            }
        } elsif ($line =~ /^MAIL FROM:\s*(.*)$/i) {
            ($from, @rcpts) = ($1);
            _reply($conn, '250 2.1.0 Ok');
        } elsif ($line =~ /^RCPT TO:\s*(.*)$/i) {
            if (!defined $from) { _reply($conn, '503 5.5.1 MAIL first'); next }
            push @rcpts, $1;
            _reply($conn, '250 2.1.5 Ok');
        } elsif ($line =~ /^DATA$/i) {
            if (!@rcpts) { _reply($conn, '503 5.5.1 RCPT first'); next }
            _reply($conn, '354 End data with <CR><LF>.<CR><LF>');
            my $data = '';
            while (defined(my $d = <$conn>)) {
                last if $d eq ".\r\n" || $d eq ".\n";
                $d =~ s/^\.//;
                $data .= $d;
            }
            $n++;
            $self->_store($helo, $from, \@rcpts, $data, "$seq-$n");
            ($from, @rcpts) = ();
            _reply($conn, '250 2.0.0 Ok: stored');
        } elsif ($line =~ /^RSET$/i) {
            ($from, @rcpts) = ();
            _reply($conn, '250 2.0.0 Ok');
        } elsif ($line =~ /^NOOP/i) {
            _reply($conn, '250 2.0.0 Ok');
        } elsif ($line =~ /^QUIT$/i) {
            _reply($conn, '221 2.0.0 Bye');
            last;
        } else {
            _reply($conn, '502 5.5.2 Command not recognized');
        }
    }
    close $conn;
}

sub _store {
    my ($self, $helo, $from, $rcpts, $data, $tag) = @_;
    my ($s, $us) = Time::HiRes::gettimeofday();
    my $base = sprintf('%010d.%06d-%d-%s', $s, $us, $$, $tag);
    my $tmp  = File::Spec->catfile($self->{dir}, "$base.tmp");
    open my $fh, '>:raw', $tmp or die "sink: create $tmp: $!";
    print {$fh} "HELO $helo\n", "MAIL $from\n", map({ "RCPT $_\n" } @$rcpts), "\n", $data;
    close $fh or die "sink: write $tmp: $!";
    rename $tmp, File::Spec->catfile($self->{dir}, "$base.msg") or die "sink: rename: $!";
}

1;
