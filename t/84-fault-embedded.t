#!/usr/bin/perl
# Fault suite (protocol/e2e.md §9) with the multiplexor's -E: workers are
# forked from a process that preloaded the filter
# (protocol/multiplexor.md §23).  The worker-kill cases of t/80 and the
# hang cases of t/81 again, plus a worker closing its reply channel, which
# must be noticed at once.
use strict;
use warnings;
use Test::More;

use MMTest::Fault;
use MMTest::Util qw(wait_until slurp_if_exists);

my $TEMPFAIL = MMTest::Fault::TEMPFAIL;
my $BUSY_TIMEOUT = 10;

my $f = MMTest::Fault->setup(milter_args => [qw(-r -s -t)], mx_args => ['-E', '-x', '4', '-b', $BUSY_TIMEOUT]);
my $stack = $f->stack;

# The parent's command line of a process.
sub parent_cmdline {
    my ($pid) = @_;
    my $stat = slurp_if_exists("/proc/$pid/stat") // return '';
    my ($ppid) = $stat =~ /\) \S+ (\d+)/ or return '';
    (my $cmd = slurp_if_exists("/proc/$ppid/cmdline") // '') =~ tr/\0/ /;
    return $cmd;
}

subtest 'workers come from the preloading process' => sub {
    my $found = eval {
        wait_until(20, 'a worker forked by the preloading process', sub {
            for (split /\n/, $stack->ctrl('workers')) {
                my ($pid) = /^\d+ [IB] (\d+)/ or next;
                return $pid if parent_cmdline($pid) =~ /^mailmunge-multiplexor: preloaded /;
            }
            return 0;
        });
    };
    ok($found, 'a worker is a child of the preloading process') or diag($@ . $stack->ctrl('workers'));
};

$f->kill_worker_cases;

subtest 'workers die during start-up' => sub {
    $f->workers_die_at_start('mail');
};

subtest 'hanging past the busy timeout, and half a line then hanging' => sub {
    $f->hanging_workers(busy_timeout => $BUSY_TIMEOUT, status_bound => 2);
};

subtest 'the reply channel closed: noticed at once' => sub {
    # The forked worker's duplicate of its reply channel sits on fd 3,
    # where the preloading process had its control socket.
    my ($res) = $f->sessions_with_status(2, 'closeout');
    $f->tempfailed($res->[0], 'data', $TEMPFAIL, 'closed reply channel');
    cmp_ok($res->[0]{secs}, '<', $BUSY_TIMEOUT / 2, 'refused well before the busy timeout');
    $f->recovers(30);
    $f->spool_is_clean;
};

$f->nothing_lost;
$f->teardown;
done_testing;
