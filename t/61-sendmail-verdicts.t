#!/usr/bin/perl
# Verdicts through Sendmail: relay/HELO/sender/recipient checks and end-of-message
# bounce, tempfail, discard and a crashing filter, with the filter's SMTP codes
# and texts; then the multiplexor stopped and started again.
use strict;
use warnings;
use Test::More;

use MMTest::E2E;
use MMTest::Cases;

my $e2e = MMTest::E2E->setup(mta => 'sendmail', milter_args => [qw(-r -H -s -t)]);
MMTest::Cases::verdicts($e2e);
MMTest::Cases::multiplexor_down($e2e);
MMTest::Cases::spool_is_clean($e2e);
$e2e->teardown;
done_testing;
