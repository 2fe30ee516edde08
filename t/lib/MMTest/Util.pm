package MMTest::Util;
use strict;
use warnings;

use Exporter 'import';
use Cwd ();
use File::Basename ();
use File::Spec;
use File::Temp ();
use IO::Socket::INET;
use MMTest::File qw(slurp slurp_if_exists spew);
use POSIX ();
use Time::HiRes ();

our @EXPORT_OK = qw(
    free_port wait_until repo_root slurp slurp_if_exists spew private_dir
    pid_alive stop_pid port_open have_root skip_or_fail procs_in
    start_terminal_command read_until
);

=head1 NAME

MMTest::Util - small helpers shared by the end-to-end test harness

=head1 SYNOPSIS

    use MMTest::Util qw(free_port wait_until private_dir);

    my $port = free_port();
    my $dir  = private_dir('postfix');
    wait_until(5, 'the sink to listen', sub { port_open($port) });

=head1 CLEAN-UP ON SIGNALS

Loading this module makes SIGINT, SIGTERM and SIGHUP end the test with
C<exit>, unless the test installed its own handlers, so that the
harness objects' destructors still stop the daemons they started.

=cut

for my $sig (qw(INT TERM HUP)) {
    $SIG{$sig} = sub { warn "caught SIG$sig, cleaning up\n"; exit 1 }
        unless defined $SIG{$sig} && ref $SIG{$sig};
}

=head1 FUNCTIONS

=head2 repo_root()

Returns the absolute path of the repository the tests run from (the
directory that holds C<t/>), found from this module's own location.

=cut

sub repo_root {
    my $here = File::Spec->rel2abs(__FILE__);
    # t/lib/MMTest/Util.pm -> four levels up is the repository.
    my $dir = File::Basename::dirname($here);
    for (1 .. 3) { $dir = File::Basename::dirname($dir) }
    return Cwd::abs_path($dir);
}

=head2 free_port()

Returns a TCP port on 127.0.0.1 that was free a moment ago (bound to port 0
and released).  Good enough for tests; another process could take it in
between, in which case the daemon that wanted it fails with a clear error.

=cut

sub free_port {
    my $s = IO::Socket::INET->new(
        LocalAddr => '127.0.0.1', LocalPort => 0, Proto => 'tcp', Listen => 1, ReuseAddr => 1,
    ) or die "cannot bind a probe socket: $!";
    my $port = $s->sockport;
    close $s;
    return $port;
}

=head2 port_open($port [, $host])

True if something accepts TCP connections on $host (default 127.0.0.1)
port $port.

=cut

sub port_open {
    my ($port, $host) = @_;
    my $s = IO::Socket::INET->new(
        PeerAddr => $host // '127.0.0.1', PeerPort => $port, Proto => 'tcp', Timeout => 1,
    );
    return 0 unless $s;
    close $s;
    return 1;
}

=head2 wait_until($seconds, $what, $code)

Calls $code every 50 ms until it returns true and returns that value.
Dies with "timed out after N s waiting for WHAT" when $seconds pass.

=cut

sub wait_until {
    my ($seconds, $what, $code) = @_;
    my $deadline = Time::HiRes::time() + $seconds;
    while (1) {
        my $r = $code->();
        return $r if $r;
        die "timed out after ${seconds}s waiting for $what\n" if Time::HiRes::time() > $deadline;
        Time::HiRes::sleep(0.05);
    }
}

=head2 private_dir($label)

Creates a fresh temporary directory (removed at exit) whose mode is 0755,
so that daemons which drop privileges can still traverse it.  Set
C<MMTEST_KEEP=1> in the environment to keep it for post-mortem inspection.

=cut

sub private_dir {
    my ($label) = @_;
    my $dir = File::Temp::tempdir("mmtest-$label-XXXXXX", TMPDIR => 1, CLEANUP => !$ENV{MMTEST_KEEP});
    chmod 0755, $dir or die "chmod $dir: $!";
    return $dir;
}

=head2 slurp($path) / slurp_if_exists($path) / spew($path, $bytes [, $mode])

Re-exported from L<MMTest::File>: read a whole file as bytes (dying, or
undef for a missing file); write bytes to a file (and optionally chmod it).

=cut

=head2 pid_alive($pid)

True if a process with this pid exists (a zombie child is reaped first and
then counts as gone).

=cut

sub pid_alive {
    my ($pid) = @_;
    return 0 unless $pid && $pid > 0;
    my $r = waitpid($pid, POSIX::WNOHANG());
    return 0 if $r == $pid;
    return kill(0, $pid) ? 1 : 0;
}

=head2 stop_pid($pid [, $grace])

Sends SIGTERM to $pid, waits up to $grace seconds (default 5) for it to
go, then sends SIGKILL.  Returns true if the process is gone.

=cut

sub stop_pid {
    my ($pid, $grace) = @_;
    return 1 unless pid_alive($pid);
    kill 'TERM', $pid;
    my $deadline = Time::HiRes::time() + ($grace // 5);
    while (Time::HiRes::time() < $deadline) {
        return 1 unless pid_alive($pid);
        Time::HiRes::sleep(0.05);
    }
    kill 'KILL', $pid;
    Time::HiRes::sleep(0.1);
    return !pid_alive($pid);
}

=head2 have_root()

True when running with euid 0 (the MTAs need root to start).

=cut

sub have_root { return $> == 0 }

=head2 skip_or_fail($reason)

For a test that cannot run here: C<plan skip_all> with $reason, except
when the environment variable C<CI> is C<true> (CI installs everything,
so a missing part is a failure there): then one failing test and exit.

=cut

sub skip_or_fail {
    my ($why) = @_;
    require Test::More;
    Test::More::plan(skip_all => $why) unless ($ENV{CI} // '') eq 'true';
    Test::More::plan(tests => 1);
    Test::More::fail("CI=true but $why");
    exit 1;
}

=head2 procs_in(@dirs)

The pids of the processes whose working directory is one of @dirs or
below (Postfix and PostgreSQL daemons work in their queue and data
directories, so this finds any that outlived a test).

=cut

sub procs_in {
    my @dirs = map { Cwd::abs_path($_) // $_ } @_;
    my @pids;
    for my $p (glob('/proc/[0-9]*')) {
        my $cwd = readlink("$p/cwd") // next;
        $cwd =~ s/ \(deleted\)\z//;    # its directory was removed meanwhile
        next if $p eq "/proc/$$";
        push @pids, $p =~ m{(\d+)\z} if grep { $cwd eq $_ || index($cwd, "$_/") == 0 } @dirs;
    }
    return @pids;
}

=head2 start_terminal_command($dir, \%env, @command)

Starts @command in $dir as a terminal would run it in the foreground
(SIGINT at its default, not ignored as in a shell's background job), with
%env added to the environment and stdout and stderr on one pipe. Returns
the pid and the pipe's read end.

=cut

sub start_terminal_command {
    my ($dir, $env, @command) = @_;
    pipe(my $rd, my $wr) or die "pipe: $!";
    my $pid = fork() // die "fork: $!";
    if (!$pid) {
        close($rd);
        open(STDOUT, '>&', $wr) or die;
        open(STDERR, '>&', $wr) or die;
        $SIG{INT} = 'DEFAULT';
        chdir($dir) or die "chdir $dir: $!";
        @ENV{ keys %$env } = values %$env;
        exec(@command) or die "exec $command[0]: $!";
    }
    close($wr);
    return ($pid, $rd);
}

=head2 read_until($fh, $regex, $seconds)

Reads from $fh until what was read matches $regex, the other end closes,
or $seconds pass; returns all that was read.

=cut

sub read_until {
    my ($fh, $re, $secs) = @_;
    my $text = '';
    my $deadline = Time::HiRes::time() + $secs;
    while (Time::HiRes::time() < $deadline && $text !~ $re) {
        my $rin = '';
        vec($rin, fileno($fh), 1) = 1;
        next unless select(my $r = $rin, undef, undef, 1) > 0;
        my $n = sysread($fh, my $buf, 4096);
        last unless $n;
        $text .= $buf;
    }
    return $text;
}

1;
