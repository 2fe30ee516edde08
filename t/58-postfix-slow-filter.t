#!/usr/bin/perl
# A filter that hangs longer than the multiplexor's busy timeout (-b 10):
# the message is tempfailed through Postfix, never accepted unfiltered, and
# mail flows again afterwards.
use strict;
use warnings;
use Test::More;

use MMTest::E2E;
use MMTest::Cases;

my $e2e = MMTest::E2E->setup(mta => 'postfix', mx_args => [qw(-b 10)]);
MMTest::Cases::slow_filter($e2e);
MMTest::Cases::spool_is_clean($e2e);
$e2e->teardown;
done_testing;
