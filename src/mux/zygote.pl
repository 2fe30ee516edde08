# The preloading process behind `mailmunge-multiplexor -E` (see zygote.rs).
#
# Loads the filter once, the way upstream's embedded interpreter does
# (@ARGV = ('-embserver') or ('-embserveru'), $0 = the filter), then forks
# one worker per request. Run as: perl -e <this> -- FILTER MODE
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
#
# The spare: to keep fork() off an activation's path, the zygote forks
# one child in advance, which waits on a private socket pair (on its fd 3,
# where a fresh child has the control socket).  A fork request hands it
# the descriptors (SCM_RIGHTS, one NUL byte each, as above), is answered
# with the spare's pid, and only then sends the spare "<slot>\n", which
# sets it going: the woken spare may take the zygote's CPU, and the
# multiplexor should have its answer first.  The spare then becomes the
# worker exactly as a freshly forked child does.  While it waits it does
# what needs no descriptors (Mailmunge::Filter::_prepare_worker: syslog,
# the spool directory).  The next spare is
# forked once the control socket has been quiet for 10 ms.  Without a
# spare (none forked yet, or it died: the descriptors cannot be handed
# over) the request forks a child as before.  A spare that sees end of
# file on its private socket before its slot (the zygote let it go:
# retirement, or the zygote died) exits quietly; its exit is not
# reported, since the multiplexor never heard of it.  A spare dying on
# its own is replaced only after the next request.
use strict;
use warnings;
no warnings 'once';
use POSIX ();
use IO::Handle;
use Socket ();
use Scalar::Util ();

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

# What a scan loads on first use, loaded here once so that every worker
# has it from the start: in-memory file handles, and, for a filter on
# MIME-tools, the decoders of the usual transfer encodings.  Otherwise each
# new worker searched @INC, compiled them and loaded a shared object in its
# first scan (protocol/multiplexor.md §23.1).
for my $m ('PerlIO::scalar',
           $INC{'MIME/Decoder.pm'}
               ? map { "MIME::Decoder::$_" } qw(NBit Base64 QuotedPrint Binary)
               : ()) {
    (my $file = "$m.pm") =~ s{::}{/}g;
    eval { require $file; 1 };
}

# Descriptors per worker: stdin, stdout, stderr, and the -Z status pipe.
my $zy_nfds = ($zy_mode eq '-embserveru') ? 4 : 3;
# Workers handed out (their exits are reported).
my %zy_children;
# The spare, if one is waiting: { pid, sock } (our end of its socket pair).
my $zy_spare;
# Spares let go; reaped without a report.
my %zy_quiet;
# A spare is forked once the control socket is quiet: after start-up and
# after each request served, not after a spare died on its own (that would
# fork again and again if spares cannot live).
my $zy_want_spare = 1;
my $zy_open = 1;
$SIG{CHLD} = sub { };
# Handing descriptors to a spare that has died must fail, not kill us.
$SIG{PIPE} = "IGNORE";

sub zy_reap {
    while ((my $pid = waitpid(-1, POSIX::WNOHANG())) > 0) {
        if (delete $zy_children{$pid}) {
            print STDOUT "exit $pid $?\n";
        } elsif ($zy_spare && $pid == $zy_spare->{pid}) {
            close($zy_spare->{sock});
            $zy_spare = undef;
        } else {
            delete $zy_quiet{$pid};
        }
    }
}

# select() on one handle for reading; undef on a real error, else the
# number of ready handles (0 on timeout, and on EINTR: try again).
sub zy_wait_readable {
    my ($fh, $timeout) = @_;
    my $rin = '';
    vec($rin, fileno($fh), 1) = 1;
    my $nready = select(my $rout = $rin, undef, undef, $timeout);
    return 0 if (!defined($nready) || $nready < 0) && $!{EINTR};
    return undef if !defined($nready) || $nready < 0;
    return $nready;
}

# A line the multiplexor wrote in one piece: once its first byte is
# here, the rest must follow at once.  The line is looked at with
# MSG_PEEK and only its own bytes are read, so that the NUL bytes
# carrying descriptors stay for IO::FDPass.
sub zy_readline {
    my ($fh, $limit) = @_;
    my $deadline = time() + $limit;
    while (1) {
        my $nready = zy_wait_readable($fh, 0.05);
        return undef unless defined $nready;
        if ($nready) {
            my $peek = '';
            my $r = recv($fh, $peek, 256, Socket::MSG_PEEK());
            if (!defined $r) {
                next if $!{EINTR};
                return undef;
            }
            return undef if $peek eq '';
            my $end = index($peek, "\n");
            if ($end >= 0) {
                my $line = '';
                while (length($line) <= $end) {
                    my $n = sysread($fh, $line, $end + 1 - length($line), length($line));
                    next if !defined($n) && $!{EINTR};
                    return undef unless $n;
                }
                chop($line);
                return $line;
            }
            return undef if length($peek) > 200;
            # A partial line: let the rest arrive.
            select(undef, undef, undef, 0.002);
        }
        return undef if time() > $deadline;
    }
}

# One descriptor; a signal (a worker's SIGCHLD) interrupting the wait is
# not an error: nothing was received yet.
sub zy_recv_fd {
    my ($fh) = @_;
    while (1) {
        my $fd = IO::FDPass::recv(fileno($fh));
        return $fd if defined($fd) && $fd >= 0;
        return undef unless $!{EINTR};
    }
}

# The worker's own setup, in a fresh child or a spare: the descriptors go
# to 0-2 (and 3 with -Z), then the filter's main loop.  $own is the Perl
# handle on fd 3 (the control socket, or the spare's private socket); the
# received descriptors are all above 3.
sub zy_become_worker {
    my ($own, $slot, @fds) = @_;
    # Close fd 3 through its Perl handle: PerlIO counts the handles on
    # each descriptor, and after a bare POSIX::close(3) the count would
    # stay behind.  The next handle on fd 3 (the filter's duplicate of its
    # reply channel lands there) would then never really be closed, and a
    # worker closing its reply channel would go unnoticed until the busy
    # timeout (protocol/multiplexor.md §23).
    close($own);
    POSIX::dup2($fds[0], 0);
    POSIX::dup2($fds[1], 1);
    POSIX::dup2($fds[2], 2);
    POSIX::dup2($fds[3], 3) if @fds == 4;
    for my $fd (@fds) {
        POSIX::close($fd) if $fd > 3;
    }
    $0 = "mailmunge: Filtering worker $slot";
    main::_mailmunge_do_main_loop();
    CORE::exit(0);
}

sub zy_child_signals {
    $SIG{$_} = 'DEFAULT' for qw(TERM CHLD HUP INT);
    $SIG{PIPE} = 'IGNORE';
}

# In the spare: wait for the descriptors and the slot, then become the
# worker.  Anything else (end of file: the zygote let us go) ends it
# quietly; it never runs the filter without its descriptors.
sub zy_spare_main {
    my ($sock) = @_;
    zy_child_signals();
    # The private socket takes fd 3 in place of the control socket, so
    # that the descriptors received land above 3 as in a fresh child.
    close($zy_ctl);
    undef $zy_ctl;
    POSIX::dup2(fileno($sock), 3) or POSIX::_exit(0);
    close($sock);
    my $own;
    open($own, '+<&=', 3) or POSIX::_exit(0);
    $0 = "mailmunge-multiplexor: spare worker of $zy_filter";
    # What a worker does first that needs no descriptors (Mailmunge::Filter:
    # syslog, the spool directory) is done now, while nobody waits.
    my $filter = $main::MAILMUNGE_FILTER;
    eval { $filter->_prepare_worker() if Scalar::Util::blessed($filter) && $filter->can('_prepare_worker'); 1 };
    my @fds;
    for (1 .. $zy_nfds) {
        my $fd = zy_recv_fd($own);
        POSIX::_exit(0) unless defined $fd;
        push @fds, $fd;
    }
    my $line = '';
    while ($line !~ /\n/) {
        my $n = sysread($own, $line, 64, length($line));
        next if !defined($n) && $!{EINTR};
        POSIX::_exit(0) if !$n || length($line) > 32;
    }
    POSIX::_exit(0) unless $line =~ /\A(\d+)\n\z/;
    zy_become_worker($own, $1, @fds);
}

sub zy_fork_spare {
    $zy_want_spare = 0;
    my ($ours, $theirs);
    socketpair($ours, $theirs, Socket::AF_UNIX(), Socket::SOCK_STREAM(), 0) or return;
    STDOUT->flush;
    STDERR->flush;
    my $pid = fork();
    if (!defined $pid) {
        close($ours);
        close($theirs);
        return;
    }
    if ($pid == 0) {
        close($ours);
        zy_spare_main($theirs);
    }
    close($theirs);
    $zy_spare = { pid => $pid, sock => $ours };
}

# Lets the spare go (it exits at end of file); reaped without a report.
sub zy_drop_spare {
    return unless $zy_spare;
    close($zy_spare->{sock});
    $zy_quiet{$zy_spare->{pid}} = 1;
    $zy_spare = undef;
}

# Gives the descriptors to the spare: its pid, or undef if there is none
# or it is gone (the descriptors are still ours then).  The slot follows
# in zy_start_spare once the multiplexor has its answer.
sub zy_hand_off {
    my (@fds) = @_;
    my $spare = $zy_spare or return undef;
    my $fd = fileno($spare->{sock});
    for my $d (@fds) {
        next if IO::FDPass::send($fd, $d);
        zy_drop_spare();
        return undef;
    }
    return $spare->{pid};
}

# Sends the spare its slot, which sets it going, and lets it go.  Done
# after the answer: the spare, woken, may take this CPU, and the
# multiplexor should have its pid by then.  If the spare died meanwhile,
# its exit is reported like a worker's (it is one for the multiplexor).
sub zy_start_spare {
    my ($slot) = @_;
    my $spare = $zy_spare or return;
    syswrite($spare->{sock}, "$slot\n");
    close($spare->{sock});
    $zy_spare = undef;
}

# Receives a fork request's descriptors and has the spare (or a fresh
# child) take them: (in step, answer line, spare used).
sub zy_fork {
    my ($slot) = @_;
    my @fds;
    for (1 .. $zy_nfds) {
        my $fd = zy_recv_fd($zy_ctl);
        if (!defined $fd) {
            POSIX::close($_) for @fds;
            return (0, "error did not receive descriptors: $!", 0);
        }
        push @fds, $fd;
    }
    $zy_want_spare = 1;
    my $pid = zy_hand_off(@fds);
    my $spare = defined($pid);
    if (!$spare) {
        STDOUT->flush;
        STDERR->flush;
        $pid = fork();
        if (!defined $pid) {
            POSIX::close($_) for @fds;
            return (1, "error fork failed: $!", 0);
        }
        if ($pid == 0) {
            zy_child_signals();
            zy_become_worker($zy_ctl, $slot, @fds);
        }
    }
    POSIX::close($_) for @fds;
    $zy_children{$pid} = 1;
    return (1, $pid, $spare);
}

syswrite($zy_ctl, "ready\n");
while (1) {
    zy_reap();
    last if !$zy_open && !%zy_children && !%zy_quiet && !$zy_spare;
    my $timeout = $zy_open ? 5 : 0.5;
    # The next spare is forked when no request is waiting.
    $timeout = 0.01 if $zy_open && $zy_want_spare;
    my $nready = $zy_open ? zy_wait_readable($zy_ctl, $timeout) : select(undef, undef, undef, $timeout);
    next unless $zy_open;
    if (defined($nready) && $nready == 0) {
        zy_fork_spare() if $zy_want_spare && !$zy_spare;
        next;
    }
    my $req = defined($nready) ? zy_readline($zy_ctl, 3) : undef;
    if (!defined $req) {
        shutdown($zy_ctl, 2);
        $zy_open = 0;
        zy_drop_spare();
        next;
    }
    my ($in_step, $answer, $spare) = (0, 'error unknown request', 0);
    my $slot = ($req =~ /^fork (\d+)$/) ? $1 : undef;
    ($in_step, $answer, $spare) = zy_fork($slot) if defined $slot;
    syswrite($zy_ctl, "$answer\n");
    zy_start_spare($slot) if $spare;
    if (!$in_step) {
        shutdown($zy_ctl, 2);
        $zy_open = 0;
        zy_drop_spare();
    }
}
POSIX::_exit(0);
