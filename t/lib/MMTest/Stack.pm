package MMTest::Stack;
use strict;
use warnings;

use File::Spec;
use IO::Socket::UNIX;
use POSIX ();
use Socket qw(SOCK_STREAM);
use Time::HiRes ();

use MMTest::Teardown;
use MMTest::Util qw(free_port wait_until private_dir port_open slurp slurp_if_exists repo_root pid_alive);

=head1 NAME

MMTest::Stack - our multiplexor and milter, started for one end-to-end test file

=head1 SYNOPSIS

    my $stack = MMTest::Stack->new(
        filter => 't/data/e2e/basic-filter.pl',
        mta    => 'postfix',                  # what the workers are told
        milter_args => ['-r', '-H', '-s', '-t'],
    );
    $stack->start;
    my $pf = MMTest::Postfix->new(relay_port => $sink->port,
                                  milter => $stack->milter_spec_postfix);
    ...
    $stack->stop_multiplexor;   # e.g. to test tempfail when it is down
    $stack->stop;               # also on destruction

=head1 DESCRIPTION

Runs C<target/debug/mailmunge-multiplexor> and C<target/debug/mailmunge>
in the foreground (C<-D>) as children of the test, each in its own process
group, on a private spool directory owned by the worker user, with the
milter listening on C<inet:PORT@127.0.0.1> (TCP, as upstream's tests do:
the MTAs run as other users).  When the test runs as root both daemons get
C<-U mailmunge>.

The daemons' environment carries C<PERL5LIB> (the repository's F<perl/>),
C<MAILMUNGE_SPOOLDIR>, C<MAILMUNGE_QUARANTINEDIR> (a private directory) and
C<MAILMUNGE_MTA>, which the workers inherit.  Their stderr goes to
F<mx.log> and F<milter.log> in the stack's directory (see C<mx_log>,
C<milter_log>).

=head1 METHODS

=head2 MMTest::Stack->new(%opts)

Options: C<filter> (path, relative to the repository or absolute;
required), C<mta> (C<postfix> or C<sendmail>, default C<postfix>),
C<mx_args> (extra multiplexor arguments; defaults C<-m 1 -x 2 -l -b 60
-c 10> come first), C<milter_args> (extra milter arguments), C<user>
(default C<mailmunge> when root), C<env> (more environment variables),
C<milter_socket> (C<inet>, the default, or C<unix>), C<copy_filter> (run a
private copy of the filter, so the test can change it with
C<edit_filter>), C<spool_size> (put the spool on a tmpfs of that size,
e.g. C<2m>, mounted at start and unmounted by C<stop>: a spool that can
fill up).  When the repository is not readable for the worker user
(e.g. a clone below a 0700 home directory), the stack always runs copies
of F<perl/> and the filter from its own directory.

=cut

sub new {
    my ($class, %o) = @_;
    my $root = repo_root();
    my $filter = $o{filter} // die "MMTest::Stack: filter required\n";
    $filter = File::Spec->catfile($root, $filter) unless File::Spec->file_name_is_absolute($filter);
    my $self = bless {
        root        => $root,
        filter      => $filter,
        mta         => $o{mta} // 'postfix',
        mx_args     => $o{mx_args} // [],
        milter_args => $o{milter_args} // [],
        user        => $o{user} // ($> == 0 ? 'mailmunge' : undef),
        env         => $o{env} // {},
        dir         => private_dir('stack'),
        owner       => $$,
        pids        => {},
        spool_size  => $o{spool_size},
    }, $class;
    # Stopped at exit before File::Temp removes its directory.
    MMTest::Teardown->register($self, 'stop');
    # Workers run as the -U user and must read the filter and perl/.  When
    # the repository is not reachable for that user (say a clone below a
    # 0700 home directory), run private copies from the stack directory.
    my $copy_all = defined $self->{user} && !_reachable($root, $self->{user});
    if ($copy_all) {
        my $perl = File::Spec->catdir($self->{dir}, 'perl');
        system('cp', '-R', File::Spec->catdir($root, 'perl'), $perl) == 0 or die "copy perl/: $?\n";
        system('chmod', '-R', 'a+rX', $perl) == 0 or die "chmod perl/: $?\n";
        $self->{perl_lib} = $perl;
        $o{copy_filter} = 1;
    }
    if ($o{copy_filter}) {
        # A private copy the test may edit (see edit_filter).
        my $copy = File::Spec->catfile($self->{dir}, 'filter.pl');
        MMTest::Util::spew($copy, slurp($filter), 0755);
        $self->{filter} = $copy;
    }
    $self->{spool}      = File::Spec->catdir($self->{dir}, 'spool');
    $self->{quarantine} = File::Spec->catdir($self->{dir}, 'quarantine');
    $self->{mx_socket}  = File::Spec->catfile($self->{spool}, 'mailmunge-multiplexor.sock');
    $self->{milter_port} = $o{milter_port} // free_port();
    # With milter_socket => 'unix' the milter listens on a UNIX socket in
    # the spool directory instead (as in upstream's production example).
    $self->{milter_unix} = ($o{milter_socket} // 'inet') eq 'unix'
        ? File::Spec->catfile($self->{spool}, 'mailmunge.sock') : undef;
    return $self;
}

# True if $user can traverse every directory down to $path and read it.
sub _reachable {
    my ($path, $user) = @_;
    my (undef, undef, $uid, $gid) = getpwnam($user) or return 0;
    my @parts = File::Spec->splitdir($path);
    my $dir = '';
    for my $i (0 .. $#parts) {
        $dir = $i == 0 ? ($parts[0] eq '' ? '/' : $parts[0]) : File::Spec->catdir($dir, $parts[$i]);
        my @st = stat($dir) or return 0;
        my $mode = $st[2];
        my $need = $i == $#parts ? 05 : 01;    # r-x on the last, x on the others
        my $bits = $st[4] == $uid ? ($mode >> 6) & 07 : $st[5] == $gid ? ($mode >> 3) & 07 : $mode & 07;
        return 0 unless ($bits & $need) == $need;
    }
    return 1;
}

=head2 unavailable

Class method: a reason string when the daemons are not built (run
C<cargo build --bins>), else the empty string.

=cut

sub unavailable {
    my $root = repo_root();
    for my $b (qw(mailmunge mailmunge-multiplexor)) {
        return "target/debug/$b is not built (cargo build --bins)" unless -x "$root/target/debug/$b";
    }
    return '';
}

=head2 dir / spool / quarantine_dir / mx_socket / milter_port

Accessors: the stack's private directory, the spool directory (C<-z>),
the quarantine directory the workers use, the multiplexor socket and the
milter's TCP port.

=cut

sub dir            { $_[0]{dir} }
sub spool          { $_[0]{spool} }
sub quarantine_dir { $_[0]{quarantine} }
sub mx_socket      { $_[0]{mx_socket} }
sub milter_port    { $_[0]{milter_port} }

=head2 milter_spec_postfix / milter_spec_sendmail

The milter's address in Postfix (C<inet:127.0.0.1:PORT>) and Sendmail
(C<inet:PORT@127.0.0.1>) syntax.

=cut

sub milter_spec_postfix  { $_[0]{milter_unix} ? "unix:$_[0]{milter_unix}" : "inet:127.0.0.1:$_[0]{milter_port}" }
sub milter_spec_sendmail { $_[0]{milter_unix} ? "unix:$_[0]{milter_unix}" : "inet:$_[0]{milter_port}\@127.0.0.1" }

sub _milter_listen {
    my ($self) = @_;
    return $self->{milter_unix} ? "unix:$self->{milter_unix}" : "inet:$self->{milter_port}\@127.0.0.1";
}

sub _milter_ready {
    my ($self) = @_;
    return port_open($self->{milter_port}) unless $self->{milter_unix};
    return 0 unless -S $self->{milter_unix};
    my $s = IO::Socket::UNIX->new(Type => SOCK_STREAM, Peer => $self->{milter_unix}) or return 0;
    close $s;
    return 1;
}

=head2 mx_log / milter_log

The daemons' stderr so far (for diagnostics).

=cut

sub _log { slurp_if_exists(File::Spec->catfile($_[0]{dir}, $_[1])) // '' }
sub mx_log     { $_[0]->_log('mx.log') }
sub milter_log { $_[0]->_log('milter.log') }

=head2 diagnostics

Both logs, labelled, for C<diag> after a failure.

=cut

sub diagnostics {
    my ($self) = @_;
    return "--- multiplexor stderr ---\n" . $self->mx_log . "--- milter stderr ---\n" . $self->milter_log;
}

sub _prepare_dirs {
    my ($self) = @_;
    for my $d ($self->{spool}, $self->{quarantine}) {
        my $fresh = !-d $d;
        if ($fresh) { mkdir $d, 0750 or die "mkdir $d: $!" }
        my $mount = $d eq $self->{spool} && $self->{spool_size} && !$self->{mounted};
        $self->_mount_spool if $mount;
        next unless $fresh || $mount;
        if (defined $self->{user}) {
            my (undef, undef, $uid, $gid) = getpwnam($self->{user})
                or die "MMTest::Stack: unknown user $self->{user} (.ci/install-deps creates it)\n";
            chown $uid, $gid, $d or die "chown $d: $!";
        }
    }
}

# A small tmpfs as the spool (spool_size): the only way to fill it without
# filling the machine's disk.
sub _mount_spool {
    my ($self) = @_;
    my $d = $self->{spool};
    system('mount', '-t', 'tmpfs', '-o', "size=$self->{spool_size},mode=0750", 'tmpfs', $d) == 0
        or die "MMTest::Stack: cannot mount a tmpfs on $d (needs root)\n";
    $self->{mounted} = 1;
}

sub _unmount_spool {
    my ($self) = @_;
    return unless delete $self->{mounted};
    system('umount', $self->{spool}) == 0 and return;
    # Something still works in it (a worker being killed): detach it now,
    # the kernel frees it when the last user goes.
    system('umount', '-l', $self->{spool});
}

=head2 spool_mounted

True while the spool is the stack's own tmpfs (C<spool_size>).

=cut

sub spool_mounted { $_[0]{mounted} ? 1 : 0 }

sub _spawn {
    my ($self, $name, $log, @cmd) = @_;
    my $logfile = File::Spec->catfile($self->{dir}, $log);
    my %env = (
        # Inherited entries the worker user cannot read would make perl die
        # (EACCES is fatal in @INC), so they are left out.
        PERL5LIB                => join(':', $self->{perl_lib} // File::Spec->catdir($self->{root}, 'perl'),
            grep { length && (!defined $self->{user} || _reachable(File::Spec->rel2abs($_), $self->{user})) }
            split(/:/, $ENV{PERL5LIB} // '')),
        MAILMUNGE_SPOOLDIR      => $self->{spool},
        MAILMUNGE_QUARANTINEDIR => $self->{quarantine},
        MAILMUNGE_MTA           => $self->{mta},
        # Our daemons copy their syslog messages to stderr (-> mx.log, milter.log).
        MAILMUNGE_LOG_STDERR    => 1,
        %{ $self->{env} },
    );
    my $pid = fork() // die "fork: $!";
    if ($pid == 0) {
        POSIX::setpgid(0, 0);
        @ENV{ keys %env } = values %env;
        open STDIN, '<', '/dev/null';
        open STDOUT, '>>', $logfile;
        open STDERR, '>>', $logfile;
        chdir '/';
        { no warnings 'exec'; exec { $cmd[0] } @cmd; }
        print STDERR "exec $cmd[0]: $!\n";
        POSIX::_exit(127);
    }
    $self->{pids}{$name} = $pid;
    return $pid;
}

sub _mx_answers {
    my ($self) = @_;
    return 0 unless -S $self->{mx_socket};
    my $s = IO::Socket::UNIX->new(Type => SOCK_STREAM, Peer => $self->{mx_socket}) or return 0;
    print {$s} "status\n";
    my $reply = <$s>;
    close $s;
    return defined $reply && length $reply;
}

=head2 start

Starts the multiplexor, waits (bounded) until its socket answers
C<status>, then starts the milter and waits until its port accepts
connections.  Dies with both logs on failure.

=cut

sub start {
    my ($self) = @_;
    $self->start_multiplexor;
    $self->start_milter;
    return $self;
}

=head2 start_milter

Starts only the milter (the multiplexor must be running) and waits
(bounded) until its port accepts connections.

=cut

sub start_milter {
    my ($self) = @_;
    $self->_prepare_dirs;
    my $bin = File::Spec->catfile($self->{root}, 'target', 'debug', 'mailmunge');
    my @cmd = ($bin, '-D', '-p', $self->_milter_listen, '-m', $self->{mx_socket},
        '-z', $self->{spool}, (defined $self->{user} ? ('-U', $self->{user}) : ()), @{ $self->{milter_args} });
    my $pid = $self->_spawn(milter => 'milter.log', @cmd);
    eval {
        wait_until(20, 'the milter on ' . $self->_milter_listen, sub {
            die "milter exited early\n" unless pid_alive($pid);
            $self->_milter_ready;
        });
    };
    if ($@) { my $e = $@; $self->stop; die "MMTest::Stack: $e" . $self->diagnostics }
    return $self;
}

=head2 start_multiplexor / stop_multiplexor

Start or stop only the multiplexor (the milter keeps running), e.g. to
check that mail is tempfailed while the multiplexor is down.

=cut

sub _spawn_multiplexor {
    my ($self) = @_;
    $self->_prepare_dirs;
    my $bin = File::Spec->catfile($self->{root}, 'target', 'debug', 'mailmunge-multiplexor');
    my @cmd = ($bin, '-D', '-f', $self->{filter}, '-s', $self->{mx_socket}, '-z', $self->{spool},
        (defined $self->{user} ? ('-U', $self->{user}) : ()),
        '-m', '1', '-x', '2', '-l', '-b', '60', '-c', '10', @{ $self->{mx_args} });
    return $self->_spawn(mx => 'mx.log', @cmd);
}

sub start_multiplexor {
    my ($self) = @_;
    my $pid = $self->_spawn_multiplexor;
    eval {
        wait_until(20, 'the multiplexor socket to answer', sub {
            die "multiplexor exited early\n" unless pid_alive($pid);
            $self->_mx_answers;
        });
    };
    if ($@) { my $e = $@; $self->stop; die "MMTest::Stack: $e" . $self->diagnostics }
    return $self;
}

sub _stop_one {
    my ($self, $name) = @_;
    my $pid = delete $self->{pids}{$name} or return;
    return unless $$ == $self->{owner};
    # Own process group: the multiplexor's workers go with it.
    kill 'TERM', -$pid;
    my $deadline = Time::HiRes::time() + 10;
    while (Time::HiRes::time() < $deadline) {
        last if waitpid($pid, POSIX::WNOHANG()) == $pid;
        Time::HiRes::sleep(0.05);
    }
    kill 'KILL', -$pid;
    waitpid($pid, 0);
    # Stray workers that outlived their multiplexor.
    kill 'KILL', -$pid;
}

sub stop_multiplexor { $_[0]->_stop_one('mx') }

=head2 mx_pid

The multiplexor's pid (undef when it is not running).  It leads its own
process group, which its workers share.

=cut

sub mx_pid { $_[0]{pids}{mx} }

=head2 kill_multiplexor

Sends SIGKILL to the multiplexor process alone (not its group, as a crash
would leave it), reaps it and returns its pid, which is also the id of
the process group its orphaned workers are still in.  C<stop> kills
whatever is left in that group.

=cut

sub kill_multiplexor {
    my ($self) = @_;
    my $pid = delete $self->{pids}{mx} or die "MMTest::Stack: the multiplexor is not running\n";
    kill 'KILL', $pid;
    waitpid($pid, 0);
    push @{ $self->{old_groups} }, $pid;
    return $pid;
}

=head2 multiplexor_refuses_to_start([$seconds])

Starts the multiplexor as C<start_multiplexor> does, but expects it to
fail: waits up to $seconds (default 20) for it to exit and returns its
wait status and what it wrote on stderr.  If it is still running then,
returns C<(undef, $stderr)> and leaves it running (C<stop> ends it).

=cut

sub multiplexor_refuses_to_start {
    my ($self, $seconds) = @_;
    my $before = length $self->mx_log;
    my $pid = $self->_spawn_multiplexor;
    my $status;
    eval {
        wait_until($seconds // 20, 'the multiplexor to give up', sub {
            return 0 unless waitpid($pid, POSIX::WNOHANG()) == $pid;
            $status = $?;
            return 1;
        });
    };
    delete $self->{pids}{mx} if defined $status;
    return ($status, substr($self->mx_log, $before));
}

=head2 filter

The path of the filter the multiplexor runs.

=cut

sub filter { $_[0]{filter} }

=head2 edit_filter($code)

With C<copy_filter>: calls $code with the filter's text and writes back
what it returns.

=cut

sub edit_filter {
    my ($self, $code) = @_;
    my $text = slurp($self->{filter});
    MMTest::Util::spew($self->{filter}, $code->($text), 0755);
}

=head2 ctrl(@args)

Runs C<target/debug/mm-mx-ctrl -s SOCKET @args> and returns its output
(stdout and stderr); C<$?> is left as the command set it.

=cut

sub ctrl {
    my ($self, @args) = @_;
    my $bin = File::Spec->catfile($self->{root}, 'target', 'debug', 'mm-mx-ctrl');
    my $cmd = join ' ', map { "'$_'" } $bin, '-s', $self->{mx_socket}, @args;
    return scalar `$cmd 2>&1`;
}

=head2 ctrl_within($seconds, @args)

Runs C<mm-mx-ctrl -s SOCKET @args> like C<ctrl>, but gives up (killing
it) after $seconds.  Returns a hash: C<out> (stdout and stderr), C<status>
(the wait status, undef when it was killed), C<elapsed> (seconds, with
fractions).

=cut

sub ctrl_within {
    my ($self, $seconds, @args) = @_;
    my $bin = File::Spec->catfile($self->{root}, 'target', 'debug', 'mm-mx-ctrl');
    pipe(my $rd, my $wr) or die "pipe: $!";
    my $t0 = Time::HiRes::time();
    my $pid = fork() // die "fork: $!";
    if ($pid == 0) {
        close $rd;
        open STDOUT, '>&', $wr or POSIX::_exit(127);
        open STDERR, '>&', $wr or POSIX::_exit(127);
        open STDIN, '<', '/dev/null';
        { no warnings 'exec'; exec { $bin } $bin, '-s', $self->{mx_socket}, @args; }
        POSIX::_exit(127);
    }
    close $wr;
    my $out = MMTest::Util::read_until($rd, qr/(?!)/, $seconds);
    close $rd;
    # Its output ended (or the time is up): it exits now or is killed.
    my $status;
    eval {
        wait_until(0.5, 'mm-mx-ctrl to exit', sub {
            return 0 unless waitpid($pid, POSIX::WNOHANG()) == $pid;
            $status = $?;
            return 1;
        });
    };
    if (!defined $status) { kill 'KILL', $pid; waitpid($pid, 0) }
    return { out => $out, status => $status, elapsed => Time::HiRes::time() - $t0 };
}

=head2 restart_milter(@args)

Stops the milter and starts it again with @args as its extra arguments
(they replace C<milter_args>), e.g. C<restart_milter('-X')>.

=cut

sub restart_milter {
    my ($self, @args) = @_;
    $self->stop_milter;
    $self->{milter_args} = [@args];
    return $self->start_milter;
}

=head2 stop_milter

Stops only the milter.

=cut

sub stop_milter { $_[0]->_stop_one('milter') }

=head2 stop

Stops the milter, then the multiplexor and its workers.  Idempotent;
also called on destruction.

=cut

sub stop {
    my ($self) = @_;
    $self->_stop_one('milter');
    $self->_stop_one('mx');
    # Workers orphaned by kill_multiplexor.
    if ($$ == $self->{owner}) {
        kill 'KILL', -$_ for @{ delete $self->{old_groups} // [] };
    }
    $self->_unmount_spool if $$ == $self->{owner};
    return;
}

sub DESTROY { local ($., $@, $!, $^E, $?); $_[0]->stop }

=head2 running($name)

True if the C<mx> or C<milter> child is still alive.

=cut

sub running {
    my ($self, $name) = @_;
    return pid_alive($self->{pids}{$name} // 0);
}

=head2 quarantine_entries

The quarantine subdirectories the workers created so far (full paths,
sorted).

=cut

sub quarantine_entries {
    my ($self) = @_;
    my @out;
    for my $top (sort glob(File::Spec->catfile($self->{quarantine}, '*'))) {
        push @out, -d $top ? sort(glob(File::Spec->catfile($top, '*'))) : ();
    }
    return grep { -d } @out;
}

1;
