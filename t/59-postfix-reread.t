#!/usr/bin/perl
# Operator workflow through Postfix: change the filter file, run
# "mm-mx-ctrl reread", and the next message meets the new code.
use strict;
use warnings;
use Test::More;

use MMTest::E2E;
use MMTest::Cases;

my $e2e = MMTest::E2E->setup(mta => 'postfix', copy_filter => 1);
MMTest::Cases::reread($e2e);
MMTest::Cases::spool_is_clean($e2e);
$e2e->teardown;
done_testing;
