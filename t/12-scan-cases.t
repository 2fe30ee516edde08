#!/usr/bin/perl
# Data-driven scan cases: t/data/core/scan/<case>/ holds INPUTMSG and
# COMMANDS (HEADERS is derived from INPUTMSG's header section, unfolded);
# expect/REPLY, expect/RESULTS and expect/NEWBODY (absent = must not be
# written) hold what the worker must produce with filters/scan.pl.
# Set CORE_REGEN=1 to (re)write the expect/ files after reviewing a change.
use strict;
use warnings;
use Test::More;
use File::Temp qw(tempdir);
use File::Copy qw(copy);
use File::Path qw(make_path);
use lib 't/data/core/lib';
use CoreWorker;
use MMTest::File qw(slurp slurp_if_exists spew);

my $S = 't/data/core/scan';

my $tmp = tempdir(CLEANUP => 1);
my $q = "$tmp/quarantine";
make_path("$tmp/spool", $q);
my $w = CoreWorker->new(filter => 't/data/core/filters/scan.pl',
			env => { MAILMUNGE_SPOOLDIR => "$tmp/spool", MAILMUNGE_QUARANTINEDIR => $q });

opendir(my $dh, $S) or die;
my @cases = sort grep { !/^\./ && -d "$S/$_" } readdir($dh);
closedir($dh);
ok(@cases >= 5, 'scan cases found');

foreach my $case (@cases) {
	my $dir = "$tmp/spool/mm-$case";
	make_path($dir);
	copy("$S/$case/$_", "$dir/$_") for grep { -e "$S/$case/$_" } qw(INPUTMSG COMMANDS PRISTINE_HEADERS);
	if (-e "$S/$case/HEADERS") {
		copy("$S/$case/HEADERS", "$dir/HEADERS");
	} else {
		my ($head) = split(/\n\n/, slurp("$dir/INPUTMSG"), 2);
		spew("$dir/PRISTINE_HEADERS", "$head\n") unless -e "$dir/PRISTINE_HEADERS";
		$head =~ s/\n[ \t]+/ /g;
		spew("$dir/HEADERS", "$head\n");
	}
	my $reply = $w->cmd("scan QID-$case $dir");
	my %got = (REPLY => "$reply\n", RESULTS => slurp_if_exists("$dir/RESULTS"), NEWBODY => slurp_if_exists("$dir/NEWBODY"));
	if ($ENV{CORE_REGEN}) {
		make_path("$S/$case/expect");
		foreach my $f (sort keys %got) {
			unlink("$S/$case/expect/$f");
			spew("$S/$case/expect/$f", $got{$f}) if defined($got{$f});
		}
	}
	foreach my $f (qw(REPLY RESULTS NEWBODY)) {
		is($got{$f}, slurp_if_exists("$S/$case/expect/$f"), "$case: $f");
	}
}
is($w->cmd('ping'), 'PONG', 'worker still serving');
is($w->finish(), 0, 'clean exit');

done_testing();
