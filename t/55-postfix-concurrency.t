#!/usr/bin/perl
# Several SMTP sessions at once through Postfix and our daemons: every
# message keeps its own body, envelope and modifications.
use strict;
use warnings;
use Test::More;

use MMTest::E2E;
use MMTest::Cases;

my $e2e = MMTest::E2E->setup(mta => 'postfix', mx_args => [qw(-x 8)]);
MMTest::Cases::concurrent($e2e, 8);
MMTest::Cases::spool_is_clean($e2e);
$e2e->teardown;
done_testing;
