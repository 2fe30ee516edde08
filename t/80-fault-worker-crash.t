#!/usr/bin/perl
# Fault suite (protocol/e2e.md §9): a worker killed with SIGKILL while it
# decides relayok, senderok, recipok or a scan, and workers that die during
# start-up.  Each time the SMTP client gets a temporary failure at the stage
# whose verdict was lost, nothing is accepted unfiltered or lost, no working
# directory stays in the spool, and a normal message passes again soon.
use strict;
use warnings;
use Test::More;

use MMTest::Fault;

# What Postfix says when the milter tempfails without a text of its own
# (protocol/e2e.md §5).
my $TEMPFAIL = qr/^451 4\.7\.1 Service unavailable - try again later$/;

my $f = MMTest::Fault->setup(milter_args => [qw(-r -s -t)], mx_args => [qw(-x 3)]);

# One case: start a session that makes a worker block in $command, check
# that the pid it reported is the busy worker serving $command, kill it,
# and check what the client saw.
sub kill_mid_command {
    my (%c) = @_;
    my $id = $f->id($c{label});
    my $s = $f->start_session(id => $id, %{ $c{send} });
    my $key = ref $c{key} ? $c{key}->($id) : $c{key};
    my $pid = $f->wait_ready($key);
    like($f->busy_worker($pid) // '', qr/^\d+ B $pid \Q$c{command}\E /, "pid $pid is the worker busy with $c{command}");
    ok(kill('KILL', $pid), "SIGKILL to worker $pid");
    my $res = $f->finish_session($s);
    $f->tempfailed($res, $c{stage}, $TEMPFAIL, "worker killed during $c{command}");
    $f->recovers(30);
    $f->spool_is_clean;
}

subtest 'kill -9 during scan' => sub {
    kill_mid_command(label => 'scan', command => 'scan', stage => 'data',
        send => { subject => 'block' }, key => sub { "scan-$_[0]" });
};

subtest 'kill -9 during relayok' => sub {
    # The relay check runs at connect; Postfix reports its tempfail at MAIL.
    kill_mid_command(label => 'relay', command => 'relayok', stage => 'mail',
        send => { local_addr => '127.0.0.5' }, key => 'relay');
};

subtest 'kill -9 during senderok' => sub {
    kill_mid_command(label => 'sender', command => 'senderok', stage => 'mail',
        send => { from => 'block-sender@example.com' }, key => 'block-sender');
};

subtest 'kill -9 during recipok' => sub {
    kill_mid_command(label => 'rcpt', command => 'recipok', stage => 'rcpt',
        send => { to => ['block-rcpt@example.org'] }, key => 'block-rcpt');
};

subtest 'workers die during start-up' => sub {
    my $stack = $f->stack;
    # New workers kill themselves in initialize(); reread retires the
    # running ones, so the next request needs a new worker.
    $f->trigger('die-at-start', 1);
    is($stack->ctrl('reread'), "Forced reread of filter rules\n", 'reread');
    my $id = $f->id('startup');
    my $res = $f->send(id => $id, subject => 'plain');
    # The first request of the session is the relay check.
    $f->tempfailed($res, 'mail', $TEMPFAIL, 'worker died at start-up');
    my $why = eval {
        MMTest::Util::wait_until(10, 'lasterror to report the dead worker', sub {
            my $t = $stack->ctrl('lasterror');
            $t =~ /It wrote nothing on stderr\./ ? $t : 0;
        });
    };
    like($why // '', qr/^Worker \d+ \(pid \d+\) died before answering a request, \d+ s ago \(signal 9\); no worker has answered since\.$/m,
        'mm-mx-ctrl lasterror names the signal') or diag($@ . $stack->ctrl('lasterror'));
    like($stack->mx_log, qr/died before answering a request \(signal 9\); it wrote nothing on stderr$/m,
        'the log line says the worker wrote nothing');
    $f->trigger('die-at-start', 0);
    $f->recovers(30);
    like($stack->ctrl('lasterror'), qr/a worker has answered since\./, 'lasterror: workers answer again');
    $f->spool_is_clean;
};

$f->nothing_lost;
$f->teardown;
done_testing;
