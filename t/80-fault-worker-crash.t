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

$f->kill_worker_cases;

subtest 'workers die during start-up' => sub {
    # The first request of each session is the relay check (-r).
    $f->workers_die_at_start('mail');
};

$f->nothing_lost;
$f->teardown;
done_testing;
