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

my $f = MMTest::Fault->setup(milter_args => [qw(-r -s -t)], mx_args => [qw(-x 3)]);

subtest 'kill -9 during scan' => sub {
    $f->kill_worker_during(label => 'scan', command => 'scan', stage => 'data',
        send => { subject => 'block' }, key => sub { "scan-$_[0]" });
};

subtest 'kill -9 during relayok' => sub {
    # The relay check runs at connect; Postfix reports its tempfail at MAIL.
    $f->kill_worker_during(label => 'relay', command => 'relayok', stage => 'mail',
        send => { local_addr => '127.0.0.5' }, key => 'relay');
};

subtest 'kill -9 during senderok' => sub {
    $f->kill_worker_during(label => 'sender', command => 'senderok', stage => 'mail',
        send => { from => 'block-sender@example.com' }, key => 'block-sender');
};

subtest 'kill -9 during recipok' => sub {
    $f->kill_worker_during(label => 'rcpt', command => 'recipok', stage => 'rcpt',
        send => { to => ['block-rcpt@example.org'] }, key => 'block-rcpt');
};

subtest 'workers die during start-up' => sub {
    # The first request of each session is the relay check (-r).
    $f->workers_die_at_start('mail');
};

$f->nothing_lost;
$f->teardown;
done_testing;
