#!/usr/bin/perl
# A MIMEDefang-style filter (Mailmunge::Filter::Compat) through Postfix: parts
# dropped or kept with warnings, a part added, boilerplate, filter_begin
# tempfail, the queue id seen by filter_end.
use strict;
use warnings;
use Test::More;

use MMTest::E2E;
use MMTest::Cases;

my $e2e = MMTest::E2E->setup(mta => 'postfix', filter => 't/data/e2e/compat-filter.pl');
MMTest::Cases::compat($e2e);
MMTest::Cases::spool_is_clean($e2e);
$e2e->teardown;
done_testing;
