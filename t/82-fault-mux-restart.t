#!/usr/bin/perl
# Fault suite (protocol/e2e.md §9): the multiplexor killed with SIGKILL
# while several SMTP sessions wait for their scans, then started again.
# The sessions in flight and every message sent while it is down are
# tempfailed; its orphaned workers go away by themselves; after the restart
# every accepted message is filtered; nothing is lost.
use strict;
use warnings;
use Test::More;

use MMTest::Fault;
use MMTest::Util qw(wait_until);

my $TEMPFAIL = MMTest::Fault::TEMPFAIL;
my $IN_FLIGHT = 4;

my $f = MMTest::Fault->setup(mx_args => [qw(-x 6)]);
my $stack = $f->stack;

my $old_group;
subtest "SIGKILL to the multiplexor with $IN_FLIGHT scans in flight" => sub {
    my @s = map { $f->start_session(id => $f->id("inflight$_"), subject => 'block') } 1 .. $IN_FLIGHT;
    my @pids = map { $f->wait_ready("scan-$_->{id}") } @s;
    is(scalar(grep { ($f->busy_worker($_) // '') =~ / scan / } @pids), $IN_FLIGHT, "$IN_FLIGHT workers busy scanning");
    $old_group = $stack->kill_multiplexor;
    ok(scalar($f->group_members($old_group)) >= $IN_FLIGHT, 'its workers outlive it for now');
    for my $i (0 .. $#s) {
        my $res = $f->finish_session($s[$i]);
        $f->tempfailed($res, 'data', $TEMPFAIL, "session $i in flight");
    }
    # The orphans finish their scans (their replies go nowhere), see the
    # end of their input and exit: nothing is left of the old multiplexor.
    $f->release("scan-$_->{id}") for @s;
    my $gone = eval { wait_until(20, 'the orphaned workers to exit', sub { !$f->group_members($old_group) }) };
    ok($gone, 'the orphaned workers exit by themselves') or diag(join ' ', 'left:', $f->group_members($old_group));
    $f->spool_is_clean;
};

subtest 'while the multiplexor is down: tempfail, never accepted' => sub {
    for my $n (1 .. 2) {
        my $res = $f->send(id => $f->id("down$n"), subject => 'plain');
        # The milter's connect-time check finds no multiplexor; Postfix
        # reports the tempfail at MAIL.
        $f->tempfailed($res, 'mail', $TEMPFAIL, "message $n while down");
    }
};

subtest 'restarted: mail flows again, filtered, also under load' => sub {
    # The killed multiplexor left its socket file behind; the new one
    # replaces it.
    ok(-S $stack->mx_socket, 'stale socket file still there');
    ok(eval { $stack->start_multiplexor; 1 }, 'multiplexor restarted') or diag($@);
    $f->recovers(30);
    my @s = map { $f->start_session(id => $f->id("after$_"), subject => 'plain') } 1 .. $IN_FLIGHT;
    my @res = map { $f->finish_session($_) } @s;
    is(scalar(grep { $_->{ok} } @res), $IN_FLIGHT, "all $IN_FLIGHT concurrent sessions accepted")
        or diag(join "\n", map { $_->{failure} // 'ok' } @res);
    $f->spool_is_clean;
};

$f->nothing_lost;
$f->teardown;
done_testing;
