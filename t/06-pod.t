#!/usr/bin/perl
# POD of the core modules is well-formed and names every public method
# (with core modules only: Pod::Checker, B).
use strict;
use warnings;
use Test::More;
use Pod::Checker;
use B ();

my %modules = (
	'Mailmunge'            => 'perl/Mailmunge.pm',
	'Mailmunge::Base'      => 'perl/Mailmunge/Base.pm',
	'Mailmunge::Constants' => 'perl/Mailmunge/Constants.pm',
	'Mailmunge::Response'  => 'perl/Mailmunge/Response.pm',
	'Mailmunge::Context'   => 'perl/Mailmunge/Context.pm',
	'Mailmunge::Filter'    => 'perl/Mailmunge/Filter.pm',
);

foreach my $pkg (sort keys %modules) {
	my $file = $modules{$pkg};
	my $checker = Pod::Checker->new(-warnings => 0);
	open(my $null, '>', '/dev/null') or die;
	$checker->parse_from_file($file, $null);
	is($checker->num_errors, 0, "$file: POD has no errors");

	require $file =~ s{^perl/}{}r;
	open(my $fh, '<', $file) or die;
	my $pod = '';
	my $in = 0;
	while (my $l = <$fh>) {
		$in = 1 if $l =~ /^=(head|item|over|pod)/;
		$pod .= $l if $in && $l =~ /^=(head\d|item)\s/;
		$in = 0 if $l =~ /^=cut/;
	}
	close($fh);
	my %documented = map { $_ => 1 } ($pod =~ /(\w+)/g);
	no strict 'refs';
	foreach my $name (sort keys %{"${pkg}::"}) {
		next if $name =~ /^_/ || $name =~ /^[A-Z_]+$/ && $name !~ /^(CONTINUE|REJECT|TEMPFAIL|DISCARD|ACCEPT_AND_NO_MORE_FILTERING)$/;
		my $code = *{"${pkg}::$name"}{CODE} or next;
		# Skip imported functions; keep accessors made by make_accessors.
		my $gv = B::svref_2object($code)->GV;
		my $own = $gv->STASH->NAME eq $pkg
		    || ($gv->NAME eq '__ANON__' && $gv->STASH->NAME eq 'Mailmunge::Base' && $pkg ne 'Mailmunge::Base');
		next unless $own;
		ok($documented{$name}, "$pkg\::$name is documented");
	}
}

done_testing();
