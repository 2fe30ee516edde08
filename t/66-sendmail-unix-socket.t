#!/usr/bin/perl
# Sendmail talking to the milter over a UNIX socket (upstream's production
# example: S=unix:/var/spool/mailmunge/mailmunge.sock), with verdicts and
# modifications.
use strict;
use warnings;
use Test::More;

use MMTest::E2E;
use MMTest::Cases;

my $e2e = MMTest::E2E->setup(mta => 'sendmail', milter_socket => 'unix', milter_args => [qw(-r -H -s -t)]);
like($e2e->stack->milter_spec_sendmail, qr{^unix:/}, 'milter on a UNIX socket');
MMTest::Cases::verdicts($e2e);
MMTest::Cases::modifications($e2e);
MMTest::Cases::spool_is_clean($e2e);
$e2e->teardown;
done_testing;
