#!/usr/bin/perl
# Benchmark filter: a Mailmunge::Filter subclass that does nothing. A scan
# still runs the whole worker path (read COMMANDS, parse INPUTMSG into a
# MIME entity, write RESULTS), so what is measured is the cost of the
# framework, not of any filter policy.
use strict;
use warnings;

package Bench::NoopFilter;
use base qw(Mailmunge::Filter);

sub filter_message
{
	return;
}

package main;
Bench::NoopFilter->new()->run();
1;
