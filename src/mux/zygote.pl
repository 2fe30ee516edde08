# The preloading process behind `mailmunge-multiplexor -E` (see zygote.rs).
#
# Loads the filter once, the way upstream's embedded interpreter does
# (@ARGV = ('-embserver') or ('-embserveru'), $0 = the filter), then forks
# one worker per request. Run as: perl -e <this> -- FILTER MODE SLOTNAME
#
# Descriptors: 3 = control socket (requests in, replies out), 1 = event
# pipe ("exit <pid> <wait status>" lines), 2 = log pipe, 0 = /dev/null.
#
# Control protocol:
#   zygote -> mux  "ready\n" once loaded, or "error <text>\n" and exit 1.
#   mux -> zygote  "fork <slot>\n" followed by 3 or 4 descriptors passed
#                  with SCM_RIGHTS (worker stdin, stdout, stderr[, status]),
#                  one NUL byte each (what IO::FDPass expects).
#   zygote -> mux  "<pid>\n" or "error <text>\n".
# End of file on the control socket: stop forking, reap the remaining
# workers (still reporting their exits), then exit.  So does a request
# that is out of step (descriptors missing, a line that is not a fork
# request or does not end within a few seconds): the stream can no longer
# be trusted, and a zygote blocked on it would stop reaping its workers
# (protocol/multiplexor.md §23).
use strict;
use warnings;
no warnings 'once';
use POSIX ();
use IO::Handle;

my ($zy_filter, $zy_mode) = @ARGV;
# Under -T (from the filter's #! line) our own arguments are trusted.
($zy_filter) = ($zy_filter // '') =~ /\A(.*)\z/s;
($zy_mode) = ($zy_mode // '') =~ /\A(-embserveru?)\z/ or $zy_mode = '-embserver';
my $zy_ctl;
open($zy_ctl, '+<&=', 3) or do { print STDERR "mailmunge zygote: fd 3: $!\n"; POSIX::_exit(1); };
$zy_ctl->autoflush(1);
STDOUT->autoflush(1);
STDERR->autoflush(1);

sub zy_fail {
    my ($msg) = @_;
    $msg =~ s/[\r\n]+/ /g;
    syswrite($zy_ctl, "error $msg\n");
    POSIX::_exit(1);
}

eval { require IO::FDPass; 1 }
    or zy_fail('nofdpass the Perl module IO::FDPass is needed for -E (Debian package libio-fdpass-perl)');

# exit() in the filter's top-level code ends the load, as it ends perl_run
# upstream; later (in workers) it is a real exit.
our $ZY_LOADING = 1;
BEGIN {
    *CORE::GLOBAL::exit = sub {
        die "__mailmunge_zygote_exit__\n" if $main::ZY_LOADING;
        CORE::exit(@_ ? $_[0] : 0);
    };
}

{
    package main;
    @ARGV = ($zy_mode);
    $0 = $zy_filter;
    my $ok = do $zy_filter;
    my $err = $@;
    $main::ZY_LOADING = 0;
    if ($err && $err ne "__mailmunge_zygote_exit__\n") {
        print STDERR $err;
        zy_fail("loading $zy_filter failed: $err");
    }
    if (!defined($ok) && !$err && $!) {
        zy_fail("cannot read $zy_filter: $!");
    }
}
if (!$main::MAILMUNGE_FILTER) {
    zy_fail("$zy_filter did not register a filter object (does it call \$filter->run()?)");
}
$0 = "mailmunge-multiplexor: preloaded $zy_filter";

my %zy_children;
my $zy_open = 1;
$SIG{CHLD} = sub { };

sub zy_reap {
    while ((my $pid = waitpid(-1, POSIX::WNOHANG())) > 0) {
        delete $zy_children{$pid};
        print STDOUT "exit $pid $?\n";
    }
}

# A line the multiplexor wrote in one piece: once its first byte is
# here, the rest must follow at once.  Reads byte by byte, so that the
# NUL bytes carrying descriptors stay for IO::FDPass.
sub zy_readline {
    my $line = '';
    while (1) {
        my $rin = '';
        vec($rin, fileno($zy_ctl), 1) = 1;
        my $nready = select(my $rout = $rin, undef, undef, 3);
        if (!defined($nready) || $nready < 0) {
            next if $!{EINTR};
            return undef;
        }
        return undef if $nready == 0;
        my $c;
        my $n = sysread($zy_ctl, $c, 1);
        if (!defined $n) {
            next if $!{EINTR};
            return undef;
        }
        return undef if $n == 0;
        return $line if $c eq "\n";
        $line .= $c;
        return undef if length($line) > 200;
    }
}

# One descriptor; a signal (a worker's SIGCHLD) interrupting the wait is
# not an error: nothing was received yet.
sub zy_recv_fd {
    while (1) {
        my $fd = IO::FDPass::recv(fileno($zy_ctl));
        return $fd if defined($fd) && $fd >= 0;
        return undef unless $!{EINTR};
    }
}

sub zy_fork {
    my ($slot) = @_;
    my $n = ($zy_mode eq '-embserveru') ? 4 : 3;
    my @fds;
    for (1 .. $n) {
        my $fd = zy_recv_fd();
        if (!defined $fd) {
            POSIX::close($_) for @fds;
            return (0, "error did not receive descriptors: $!");
        }
        push @fds, $fd;
    }
    STDOUT->flush;
    STDERR->flush;
    my $pid = fork();
    if (!defined $pid) {
        POSIX::close($_) for @fds;
        return (1, "error fork failed: $!");
    }
    if ($pid == 0) {
        $SIG{$_} = 'DEFAULT' for qw(TERM CHLD HUP INT);
        $SIG{PIPE} = 'IGNORE';
        # Close the control socket through its Perl handle: PerlIO counts
        # the handles on each descriptor, and after a bare POSIX::close(3)
        # the count would stay behind.  The next handle on fd 3 (the
        # filter's duplicate of its reply channel lands there) would then
        # never really be closed, and a worker closing its reply channel
        # would go unnoticed until the busy timeout
        # (protocol/multiplexor.md §23).
        close($zy_ctl);
        undef $zy_ctl;
        POSIX::dup2($fds[0], 0);
        POSIX::dup2($fds[1], 1);
        POSIX::dup2($fds[2], 2);
        POSIX::dup2($fds[3], 3) if $n == 4;
        for my $fd (@fds) {
            POSIX::close($fd) if $fd > 3;
        }
        $0 = "mailmunge: Filtering worker $slot";
        main::_mailmunge_do_main_loop();
        CORE::exit(0);
    }
    POSIX::close($_) for @fds;
    $zy_children{$pid} = 1;
    return (1, $pid);
}

syswrite($zy_ctl, "ready\n");
while (1) {
    zy_reap();
    last if !$zy_open && !%zy_children;
    my $rin = '';
    vec($rin, fileno($zy_ctl), 1) = 1 if $zy_open;
    my $nready = select(my $rout = $rin, undef, undef, $zy_open ? 5 : 0.5);
    next unless $zy_open && $nready && $nready > 0;
    my $req = zy_readline();
    if (!defined $req) {
        shutdown($zy_ctl, 2);
        $zy_open = 0;
        next;
    }
    my ($in_step, $answer) = (0, 'error unknown request');
    ($in_step, $answer) = zy_fork($1) if $req =~ /^fork (\d+)$/;
    syswrite($zy_ctl, "$answer\n");
    if (!$in_step) {
        shutdown($zy_ctl, 2);
        $zy_open = 0;
    }
}
POSIX::_exit(0);
