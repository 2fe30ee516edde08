#!/usr/bin/perl
# A client on ::1 through Sendmail.  Sendmail hands the milter the address
# as "IPv6:0:0:0:0:0:0:0:1" (family '6'); libmilter strips the "IPv6:"
# prefix before inet_pton (mi_inet_pton), so the milter must accept it.
use strict;
use warnings;
use Test::More;

use MMTest::E2E;
use MMTest::Cases;

my $e2e = MMTest::E2E->setup(mta => 'sendmail', milter_args => ['-r'], mta_opts => { ipv6 => 1 });
MMTest::Cases::ipv6($e2e);
MMTest::Cases::spool_is_clean($e2e);
$e2e->teardown;
done_testing;
