#!/usr/bin/perl
# Message modifications through Sendmail: headers, recipients, sender, body
# (small and multi-MB), both kinds of quarantine, X-Scanned-By, DKIM signing.
use strict;
use warnings;
use Test::More;

use MMTest::E2E;
use MMTest::Cases;

my ($dkim_key, $dkim_pub) = MMTest::Cases::dkim_key();
my $e2e = MMTest::E2E->setup(mta => 'sendmail',
    env => { MMTEST_DKIM_KEY => $dkim_key });
MMTest::Cases::modifications($e2e);
MMTest::Cases::dkim($e2e, $dkim_pub);
MMTest::Cases::spool_is_clean($e2e);
$e2e->teardown;
done_testing;
