package MMTest::Fault;
use strict;
use warnings;

use File::Spec;
use JSON::PP ();
use POSIX ();
use Test::More;
use Time::HiRes ();

use MMTest::E2E;
use MMTest::Util qw(private_dir wait_until slurp_if_exists spew);

=encoding utf8

=head1 NAME

MMTest::Fault - helpers for the fault suite (t/80-*.t .. t/84-*.t)

=head1 SYNOPSIS

    my $f = MMTest::Fault->setup(mx_args => ['-x', '4'], milter_args => [qw(-r -s -t)]);
    my $e2e = $f->e2e;
    my $s = $f->start_session(id => $f->id('crash'), subject => 'block');
    my $pid = $f->wait_ready('scan-' . $s->{id});
    ...
    my $res = $f->finish_session($s);
    $f->nothing_lost;           # every message sent so far is accounted for
    $f->recovers;               # a normal message passes again, within a deadline
    $f->spool_is_clean;

=head1 DESCRIPTION

Runs an L<MMTest::E2E> setup (Postfix, our milter and multiplexor) with
F<t/data/e2e/fault-filter.pl>, whose workers misbehave on request (see
the comment at its top), and keeps a ledger of every message the test
sent, so that C<nothing_lost> can check each one: accepted ones were
delivered exactly once and filtered, refused ones were refused with a
temporary failure and never delivered (protocol/e2e.md §9).

The workers report the pid of a blocked worker in the fault directory
(C<MMTEST_FAULT_DIR>, owned by the worker user), so the test kills exactly
the worker that serves a given request.

=head1 METHODS

=head2 MMTest::Fault->setup(%opts)

Creates the fault directory and calls L<MMTest::E2E/setup> with the fault
filter and C<mta =E<gt> 'postfix'>; other options (C<mx_args>,
C<milter_args>, C<copy_filter>, ...) are passed on.  Skips the file as
C<setup> does when something is missing.

=cut

sub setup {
    my ($class, %o) = @_;
    my $dir = private_dir('fault');
    if ($> == 0 && (my @pw = getpwnam('mailmunge'))) {
        chown $pw[2], $pw[3], $dir or die "chown $dir: $!";
        chmod 0750, $dir or die "chmod $dir: $!";
    }
    my $e2e = MMTest::E2E->setup(
        mta    => 'postfix',
        filter => 't/data/e2e/fault-filter.pl',
        %o,
        env    => { MMTEST_FAULT_DIR => $dir, %{ $o{env} // {} } },
    );
    return bless { e2e => $e2e, dir => $dir, sent => [], sessions => {}, owner => $$, seq => 0 }, $class;
}

=head2 e2e / stack / dir

The L<MMTest::E2E> setup, its L<MMTest::Stack> and the fault directory.

=cut

sub e2e   { $_[0]{e2e} }
sub stack { $_[0]{e2e}->stack }
sub dir   { $_[0]{dir} }

=head2 id($label)

A message id unique in this test run.

=cut

sub id {
    my ($self, $label) = @_;
    return sprintf('fault-%s-%d-%d', $label, $$, ++$self->{seq});
}

=head2 send(%args)

L<MMTest::E2E/send>, recorded in the ledger (C<id> is required).  Returns
the result hash.

=cut

sub send {
    my ($self, %a) = @_;
    my $id = $a{id} // die "MMTest::Fault::send: id required\n";
    my $res = $self->{e2e}->send(%a);
    $self->record($id, $res);
    return $res;
}

=head2 record($id, $result)

Adds a send result to the ledger (done by C<send> and C<finish_session>).

=cut

sub record {
    my ($self, $id, $res) = @_;
    push @{ $self->{sent} }, { id => $id, res => $res };
}

=head2 start_session(%args)

Starts C<send(%args)> in a child process, so the test can act while the
SMTP session waits for the filter.  Returns a handle for
C<finish_session>.

=cut

sub start_session {
    my ($self, %a) = @_;
    my $id = $a{id} // die "MMTest::Fault::start_session: id required\n";
    my $file = File::Spec->catfile($self->{dir}, ".session-$id.json");
    my $pid = fork() // die "fork: $!";
    if ($pid == 0) {
        # The harness objects belong to the parent (they check the owner
        # pid); only the result is written here, then _exit skips every
        # destructor and Test::More's end-of-test checks.
        my $res = $self->{e2e}->send(%a);
        my $json = eval { JSON::PP->new->canonical->encode($res) } // '{"ok":0,"failure":"cannot encode"}';
        spew("$file.tmp", $json);
        rename("$file.tmp", $file);
        POSIX::_exit(0);
    }
    my $s = { id => $id, pid => $pid, file => $file };
    $self->{sessions}{$pid} = $s;
    return $s;
}

=head2 finish_session($handle [, $timeout])

Waits (default 90 s) for the session's child, records its result in the
ledger and returns it.

=cut

sub finish_session {
    my ($self, $s, $timeout) = @_;
    my $res = eval {
        wait_until($timeout // 90, "the SMTP session of $s->{id}", sub {
            return 0 unless waitpid($s->{pid}, POSIX::WNOHANG()) == $s->{pid};
            return 1;
        });
        JSON::PP->new->decode(slurp_if_exists($s->{file}) // die "no result from the session of $s->{id}\n");
    };
    if (!$res) {
        kill 'KILL', $s->{pid};
        waitpid($s->{pid}, 0);
        $res = { ok => 0, failed_at => 'session', failure => $@ || 'no result', rcpt => [] };
    }
    delete $self->{sessions}{ $s->{pid} };
    unlink $s->{file};
    $self->record($s->{id}, $res);
    return $res;
}

=head2 poll_status_during(@handles)

Asks C<mm-mx-ctrl status> again and again (each time with a 10 s limit)
until every session in @handles has ended (at most 90 s).  Returns a list
of hashes, one per call: C<elapsed> (seconds), C<out>, C<status> (see
L<MMTest::Stack/ctrl_within>).

=cut

sub poll_status_during {
    my ($self, @s) = @_;
    my @polls;
    my $deadline = Time::HiRes::time() + 90;
    while (Time::HiRes::time() < $deadline) {
        push @polls, $self->stack->ctrl_within(10, 'status');
        # (kill 0, not MMTest::Util::pid_alive, which would reap the child
        # that finish_session waits for.)
        last unless grep { !-e $_->{file} && kill(0, $_->{pid}) } @s;
        Time::HiRes::sleep(0.2);
    }
    return @polls;
}

=head2 wait_ready($key [, $timeout])

Waits (default 30 s) until a worker blocked on KEY has written its pid,
and returns the pid.

=cut

sub wait_ready {
    my ($self, $key, $timeout) = @_;
    my $file = File::Spec->catfile($self->{dir}, "ready-$key.pid");
    return wait_until($timeout // 30, "a worker to block on $key", sub {
        my $t = slurp_if_exists($file) // return 0;
        return $t =~ /^(\d+)\n/ ? $1 : 0;
    });
}

=head2 release($key)

Lets a worker blocked on KEY go on.

=cut

sub release {
    my ($self, $key) = @_;
    spew(File::Spec->catfile($self->{dir}, "release-$key"), '');
}

=head2 trigger($name, $on)

Creates (true $on) or removes a trigger file the filter looks for, such
as C<die-at-start>.

=cut

sub trigger {
    my ($self, $name, $on) = @_;
    my $f = File::Spec->catfile($self->{dir}, $name);
    if ($on) { spew($f, '') } else { unlink $f }
}

=head2 busy_worker($pid)

The line of C<mm-mx-ctrl busyworkers> for the worker with this pid
(C<SLOT B PID COMMAND ...>), or undef.

=cut

sub busy_worker {
    my ($self, $pid) = @_;
    my $out = $self->stack->ctrl('busyworkers');
    my ($line) = grep { /^\d+ B \Q$pid\E\b/ } split /\n/, $out;
    return $line;
}

=head2 reply_text($result)

The lines of the reply that refused a message, joined with C< | >.

=cut

sub reply_text {
    my ($self, $res) = @_;
    return join(' | ', @{ ($self->{e2e}->rejection($res) // {})->{lines} // [] });
}

=head2 tempfailed($result, $stage, $re, $name)

Asserts that the message was refused at $stage (C<mail>, C<rcpt>,
C<data>, ...) with a reply matching $re, which must be a 4xx reply.

=cut

sub tempfailed {
    my ($self, $res, $stage, $re, $name) = @_;
    my $text = $self->reply_text($res);
    ok(!$res->{ok}, "$name: not accepted") or return diag('accepted although the filter could not decide');
    is($res->{failed_at}, $stage, "$name: refused at " . uc($stage)) or diag($res->{failure});
    like($text, qr/^4\d\d /, "$name: a temporary failure") or diag($self->{e2e}->diagnostics);
    like($text, $re, "$name: reply text");
}

=head2 TEMPFAIL

What Postfix answers when the milter tempfails without a text of its own
(protocol/e2e.md §5), as a regular expression for C<tempfailed>.

=cut

use constant TEMPFAIL => qr/^451 4\.7\.1 Service unavailable - try again later$/;

=head2 kill_worker_cases

The four worker-kill cases that t/80 and t/84 share, each a subtest: a
worker killed with SIGKILL while it decides the scan, relayok, senderok
and recipok.  The relay check runs at connect; Postfix reports its
tempfail at MAIL.

=cut

sub kill_worker_cases {
    my ($self) = @_;
    my @cases = (
        [ 'scan',  'scan',     'data', { subject => 'block' }, sub { "scan-$_[0]" } ],
        [ 'relay', 'relayok',  'mail', { local_addr => '127.0.0.5' }, 'relay' ],
        [ 'sender', 'senderok', 'mail', { from => 'block-sender@example.com' }, 'block-sender' ],
        [ 'rcpt',  'recipok',  'rcpt', { to => ['block-rcpt@example.org'] }, 'block-rcpt' ],
    );
    for my $c (@cases) {
        my ($label, $command, $stage, $send, $key) = @$c;
        Test::More::subtest("kill -9 during $command" => sub {
            $self->kill_worker_during(label => $label, command => $command, stage => $stage,
                send => $send, key => $key);
        });
    }
    return;
}

=head2 kill_worker_during(%case)

One worker-kill case: starts a session (C<send>: the arguments for
C<send>, C<label>) that makes a worker block in C<command> (C<relayok>,
C<senderok>, C<recipok>, C<scan>), waits for the pid the worker reports
under C<key> (a string, or code called with the message id), checks that
this pid is the worker busy with that command, sends it SIGKILL, and
asserts that the client was tempfailed at C<stage>; then that a normal
message passes again and the spool is clean.

=cut

sub kill_worker_during {
    my ($self, %c) = @_;
    my $id = $self->id($c{label});
    my $s = $self->start_session(id => $id, %{ $c{send} });
    my $key = ref $c{key} ? $c{key}->($id) : $c{key};
    my $pid = $self->wait_ready($key);
    like($self->busy_worker($pid) // '', qr/^\d+ B $pid \Q$c{command}\E /, "pid $pid is the worker busy with $c{command}");
    ok(kill('KILL', $pid), "SIGKILL to worker $pid");
    my $res = $self->finish_session($s);
    $self->tempfailed($res, $c{stage}, TEMPFAIL, "worker killed during $c{command}");
    $self->recovers(30);
    $self->spool_is_clean;
    return $res;
}

=head2 workers_die_at_start($stage)

Makes every new worker kill itself (SIGKILL) in C<initialize>, retires the
running ones with C<reread>, and asserts that the next message is
tempfailed at $stage (the first step that needs a worker), that
C<mm-mx-ctrl lasterror> and the log report a worker that died by signal 9
without a word on stderr; then lets workers start again and checks that
mail passes and C<lasterror> says so.

=cut

sub workers_die_at_start {
    my ($self, $stage) = @_;
    my $stack = $self->stack;
    $self->trigger('die-at-start', 1);
    is($stack->ctrl('reread'), "Forced reread of filter rules\n", 'reread');
    my $res = $self->send(id => $self->id('startup'), subject => 'plain');
    $self->tempfailed($res, $stage, TEMPFAIL, 'worker died at start-up');
    my $why = eval {
        wait_until(10, 'lasterror to report the dead worker', sub {
            my $t = $stack->ctrl('lasterror');
            $t =~ /It wrote nothing on stderr\./ ? $t : 0;
        });
    };
    like($why // '', qr/^Worker \d+ \(pid \d+\) died before answering a request, \d+ s ago \(signal 9\); no worker has answered since\.$/m,
        'mm-mx-ctrl lasterror names the signal') or diag($@ . $stack->ctrl('lasterror'));
    like($stack->mx_log, qr/died before answering a request \(signal 9\); it wrote nothing on stderr$/m,
        'the log line says the worker wrote nothing');
    $self->trigger('die-at-start', 0);
    $self->recovers(30);
    like($stack->ctrl('lasterror'), qr/a worker has answered since\./, 'lasterror: workers answer again');
    $self->spool_is_clean;
}

=head2 sessions_with_status($status_bound, @subjects)

Sends one message per subject, all at the same time, asks
C<mm-mx-ctrl status> all along (C<poll_status_during>), and asserts that
every status request succeeded within $status_bound seconds.  Returns the
session results (each with C<secs>, the time from the start until that
session ended) and the polls, as two array references.

=cut

sub sessions_with_status {
    my ($self, $bound, @subjects) = @_;
    my $t0 = Time::HiRes::time();
    my @s = map { $self->start_session(id => $self->id($_), subject => $_) } @subjects;
    my @polls = $self->poll_status_during(@s);
    my @res = map {
        my $r = $self->finish_session($_);
        $r->{secs} = Time::HiRes::time() - $t0;
        $r;
    } @s;
    my ($slowest) = sort { $b <=> $a } map { $_->{elapsed} } @polls;
    my @failed = grep { ($_->{status} // -1) != 0 } @polls;
    ok(@polls && !@failed, sprintf('mm-mx-ctrl status answered all %d times', scalar @polls))
        or diag(join "\n", map { $_->{out} } @failed);
    cmp_ok($slowest // 99, '<', $bound, sprintf('status answers within %d s (slowest %.2f s)', $bound, $slowest // 99));
    return (\@res, \@polls);
}

=head2 hanging_workers(busy_timeout => $secs, status_bound => $secs)

The hang cases that t/81 and t/84 share: two messages at once, whose
workers hang during the scan, one without a word (C<block>), one after
half a reply line (C<halfline>).  Asserts that C<mm-mx-ctrl status>
answered within C<status_bound> seconds and showed both workers busy,
that both messages were tempfailed at the busy timeout (not before, not
much later), that the multiplexor killed both workers for it, and that a
normal message passes again with a clean spool afterwards.

=cut

sub hanging_workers {
    my ($self, %o) = @_;
    my $timeout = $o{busy_timeout} or die "hanging_workers: busy_timeout required\n";
    my $stack = $self->stack;
    my $mark = length $stack->mx_log;
    my ($res, $polls) = $self->sessions_with_status($o{status_bound} // 2, qw(block halfline));
    my ($hang, $half) = @$res;
    ok((grep { (() = $_->{out} =~ /: busy$/mg) >= 2 } @$polls), 'status answered while both workers hung')
        or diag(join "\n", map { $_->{out} } @$polls);
    $self->tempfailed($hang, 'data', TEMPFAIL, 'hanging worker');
    $self->tempfailed($half, 'data', TEMPFAIL, 'half a line, then hanging');
    for ([ $hang, 'hanging worker' ], [ $half, 'half a line' ]) {
        my ($r, $name) = @$_;
        cmp_ok($r->{secs}, '>=', $timeout - 1, "$name: refused at the busy timeout, not before");
        cmp_ok($r->{secs}, '<', $timeout + 20, "$name: and not much later");
    }
    my $log = substr($stack->mx_log, $mark);
    is(scalar(() = $log =~ /Killing busy worker \d+ pid=\d+ cmd=scan .*: Busy timeout$/mg), 2,
        'both workers killed for the busy timeout') or diag($log);
    $self->recovers(30);
    $self->spool_is_clean;
    return;
}

=head2 nothing_lost([$timeout])

Accounts for every message in the ledger once the MTA's queue is empty
(waiting up to $timeout, default 60 s): each accepted message reached the
sink exactly once and carries C<X-MMTest-Filtered: yes>; each refused one
was refused with a 4xx reply and never reached the sink.  Reports the
counts.

=cut

sub nothing_lost {
    my ($self, $timeout) = @_;
    my $e2e = $self->{e2e};
    subtest 'nothing lost, nothing unfiltered' => sub {
        my (@accepted, @refused);
        push @{ $_->{res}{ok} ? \@accepted : \@refused }, $_ for @{ $self->{sent} };
        my $deadline = Time::HiRes::time() + ($timeout // 60);
        for my $m (@accepted) {
            my $left = $deadline - Time::HiRes::time();
            my $got = eval { $e2e->sink->wait_for_id($m->{id}, $left > 1 ? $left : 1) };
            ok($got, "$m->{id}: accepted and delivered") or diag($@ . $e2e->diagnostics);
            is($got && $got->header('X-MMTest-Filtered'), 'yes', "$m->{id}: delivered filtered") if $got;
        }
        eval { $e2e->mta->wait_queue_empty(30) };
        is($@, '', 'the MTA queue is empty');
        for my $m (@accepted) {
            my @copies = $e2e->sink->find_id($m->{id});
            is(scalar(@copies), 1, "$m->{id}: delivered once") if @copies != 1;
        }
        for my $m (@refused) {
            my $code = ($e2e->rejection($m->{res}) // {})->{code} // 0;
            like($code, qr/^4\d\d\z/, "$m->{id}: refused with a temporary failure")
                or diag($m->{res}{failure});
            is(scalar(my @c = $e2e->sink->find_id($m->{id})), 0, "$m->{id}: refused, never delivered");
        }
        my $sent = @{ $self->{sent} };
        note(sprintf('%d sent: %d delivered filtered, %d tempfailed (still with the client), 0 lost',
            $sent, scalar(@accepted), scalar(@refused)));
        is(scalar(@accepted) + scalar(@refused), $sent, 'every message accounted for');
    };
}

=head2 recovers([$seconds])

A normal message passes again: sends one every so often until one is
accepted, for at most $seconds (default 30).  Each attempt is in the
ledger; refusals on the way must be temporary.  Returns the seconds it
took, or undef.

=cut

sub recovers {
    my ($self, $seconds) = @_;
    my $t0 = Time::HiRes::time();
    my $bad;
    my $ok = eval {
        wait_until($seconds // 30, 'a normal message to be accepted again', sub {
            my $id = $self->id('probe');
            my $res = $self->send(id => $id, subject => 'plain');
            return 1 if $res->{ok};
            my $code = ($self->{e2e}->rejection($res) // {})->{code} // 0;
            $bad = $res->{failure} if $code !~ /^4/;
            die "refused permanently: $res->{failure}\n" if $bad;
            return 0;
        });
    };
    my $took = Time::HiRes::time() - $t0;
    ok($ok, sprintf('a normal message passes again (after %.1f s)', $took))
        or diag(($@ // '') . $self->{e2e}->diagnostics);
    return $ok ? $took : undef;
}

=head2 spool_is_clean([$seconds])

Asserts that no working directory (C<mm-*>) is left in the spool, waiting
up to $seconds (default 10) for the milter to remove the last ones.

=cut

sub spool_is_clean {
    my ($self, $seconds) = @_;
    my $spool = $self->stack->spool;
    my @left;
    my $ok = eval {
        wait_until($seconds // 10, 'the spool to be clean', sub {
            opendir(my $dh, $spool) or return 0;
            @left = grep { /^mm-/ } readdir $dh;
            return !@left;
        });
    };
    ok($ok, 'no working directory left in the spool') or diag("left in $spool: @left");
}

=head2 group_members($pgid)

The pids of the processes in process group $pgid.

=cut

sub group_members {
    my ($self, $pgid) = @_;
    my @pids;
    for my $p (glob('/proc/[0-9]*/stat')) {
        my $stat = slurp_if_exists($p) // next;
        my ($pid, $rest) = $stat =~ /^(\d+) \(.*\) (.*)$/s or next;
        my (undef, undef, $pg) = split ' ', $rest;
        push @pids, $pid if $pg == $pgid;
    }
    return @pids;
}

=head2 teardown

Ends sessions still running, stops the setup.  Also on destruction.

=cut

sub teardown {
    my ($self) = @_;
    return unless $$ == $self->{owner};
    for my $s (values %{ $self->{sessions} }) {
        kill 'KILL', $s->{pid};
        waitpid($s->{pid}, 0);
    }
    $self->{sessions} = {};
    my $e2e = delete $self->{e2e} or return;
    $e2e->teardown;
}

sub DESTROY { local ($., $@, $!, $^E, $?); $_[0]->teardown }

1;
