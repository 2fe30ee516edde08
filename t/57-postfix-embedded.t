#!/usr/bin/perl
# The same verdicts and modifications through Postfix with the multiplexor's
# embedded Perl (-E): workers forked from a preloaded interpreter; the milter
# with -C (spool files opened and closed per callback).
use strict;
use warnings;
use Test::More;

use MMTest::E2E;
use MMTest::Cases;

my $e2e = MMTest::E2E->setup(mta => 'postfix', milter_args => [qw(-r -H -s -t -C)], mx_args => ['-E']);
MMTest::Cases::verdicts($e2e);
MMTest::Cases::modifications($e2e);
MMTest::Cases::spool_is_clean($e2e);
$e2e->teardown;
done_testing;
