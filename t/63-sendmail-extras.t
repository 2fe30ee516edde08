#!/usr/bin/perl
# More through Sendmail: early accept/discard, loopback recipient checks, a
# recipient the MTA refused, many recipients, 8-bit bodies, duplicate
# Content-Type headers, the milter's -X and -x.
use strict;
use warnings;
use Test::More;

use MMTest::E2E;
use MMTest::Cases;

my $e2e = MMTest::E2E->setup(mta => 'sendmail', milter_args => [qw(-s -t)],
    mta_opts => MMTest::Cases::mta_rejects_recipient_opts('sendmail'));
MMTest::Cases::extras($e2e);
MMTest::Cases::edges($e2e);
MMTest::Cases::milter_macros($e2e);
MMTest::Cases::reserved_for_loopback($e2e);
MMTest::Cases::one_connection_many_messages($e2e);
MMTest::Cases::spool_is_clean($e2e);
$e2e->teardown;
done_testing;
