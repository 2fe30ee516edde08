#!/usr/bin/env perl
# The scripted test filter (Test::Mailmunge::Filter) as a worker program.
use strict;
use warnings;
use File::Basename qw(dirname);
use lib dirname(__FILE__) . '/../../../../perl';
use Test::Mailmunge::Filter;

my $filter = Test::Mailmunge::Filter->new();
$filter->run();
1;
