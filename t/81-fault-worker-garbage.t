#!/usr/bin/perl
# Fault suite (protocol/e2e.md §9): workers that break the line protocol
# during a scan - hanging past the busy timeout (-b 10), half a reply line
# and then hanging, a line of garbage, "ok" before the results are written,
# a 1 MB line, closing the reply channel - and one that only prints junk on
# STDOUT.  Each broken reply tempfails the message (never accepted
# unfiltered), and while it happens mm-mx-ctrl status answers at once.
use strict;
use warnings;
use Test::More;
use Time::HiRes ();

use MMTest::Fault;

my $TEMPFAIL = MMTest::Fault::TEMPFAIL;
my $BUSY_TIMEOUT = 10;
# How long a status request may take while a worker misbehaves: the
# multiplexor reads each worker on its own, so this is a generous bound
# for a loaded 2-core machine, far below the busy timeout.
my $STATUS_BOUND = 2;

my $f = MMTest::Fault->setup(mx_args => ['-x', '4', '-b', $BUSY_TIMEOUT]);
my $stack = $f->stack;

sub sessions { return $f->sessions_with_status($STATUS_BOUND, @_) }

sub log_since {
    my ($mark) = @_;
    return substr($stack->mx_log, $mark);
}

subtest 'hanging past the busy timeout, and half a line then hanging' => sub {
    $f->hanging_workers(busy_timeout => $BUSY_TIMEOUT, status_bound => $STATUS_BOUND);
};

subtest 'a line of garbage on the reply channel' => sub {
    my $mark = length $stack->mx_log;
    my $milter_mark = length $stack->milter_log;
    my ($res) = sessions('garbage');
    $f->tempfailed($res->[0], 'data', $TEMPFAIL, 'garbage reply');
    like(substr($stack->milter_log, $milter_mark), qr/Error from multiplexor: .*this is not a reply line/,
        'the milter took the garbage for an error');
    like(MMTest::Util::wait_until(10, 'the worker to be retired', sub {
        my $l = log_since($mark);
        $l =~ /Unsolicited output from worker/ ? $l : 0;
    }), qr/wrote output while idle; retiring it/, 'the worker, out of step, is retired');
    $f->recovers(30);
    # The worker went on creating files in the working directory while the
    # milter removed it.
    $f->spool_is_clean;
    unlike(substr($stack->milter_log, $milter_mark), qr/failed to clean up/, 'removed without a failure');
};

subtest '"ok" before the results are written' => sub {
    my ($res) = sessions('earlyok');
    $f->tempfailed($res->[0], 'data', $TEMPFAIL, 'premature ok');
    like($stack->milter_log, qr/Filter did not create RESULTS file|RESULTS file did not finish with 'F' line/,
        'the milter found no finished results');
    $f->recovers(30);
    $f->spool_is_clean;
};

subtest 'a 1 MB reply line' => sub {
    my $mark = length $stack->mx_log;
    my ($res) = sessions('bigline');
    $f->tempfailed($res->[0], 'data', $TEMPFAIL, '1 MB line');
    like(log_since($mark), qr/reply longer than 4096 bytes truncated.*Killing busy worker \d+ pid=\d+ cmd=scan .*: Reply line too long/s,
        'truncated, and the worker retired');
    $f->recovers(30);
    $f->spool_is_clean;
};

subtest 'the reply channel closed' => sub {
    my ($res) = sessions('closeout');
    $f->tempfailed($res->[0], 'data', $TEMPFAIL, 'closed reply channel');
    cmp_ok($res->[0]{secs}, '<', $BUSY_TIMEOUT / 2, 'noticed at once, not at the busy timeout');
    $f->recovers(30);
    $f->spool_is_clean;
};

subtest 'junk printed on STDOUT is harmless' => sub {
    my $mark = length $stack->mx_log;
    my ($res) = sessions('stdoutjunk');
    ok($res->[0]{ok}, 'accepted') or diag($res->[0]{failure});
    # Mailmunge::Filter points STDOUT at stderr, which the multiplexor logs (-l).
    like(log_since($mark), qr/Worker \d+ stderr: junk printed on STDOUT by the filter/, 'the junk went to the log');
    $f->spool_is_clean;
};

$f->nothing_lost;
$f->teardown;
done_testing;
