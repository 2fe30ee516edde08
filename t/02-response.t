#!/usr/bin/perl
# Mailmunge::Response: constructors, defaults, status validation,
# fix_code_dsn and predicates (protocol/perl-api.md §4).
use strict;
use warnings;
use Test::More;
use Test::Deep;
use Mailmunge::Response;

my $R = 'Mailmunge::Response';

cmp_deeply({%{$R->CONTINUE()}}, {status => 'CONTINUE', message => 'ok', delay => 0}, 'CONTINUE defaults');
cmp_deeply({%{$R->ACCEPT_AND_NO_MORE_FILTERING()}}, {status => 'ACCEPT_AND_NO_MORE_FILTERING', message => 'ok', delay => 0}, 'ACCEPT defaults');
cmp_deeply({%{$R->REJECT()}}, {status => 'REJECT', message => '', delay => 0}, 'REJECT defaults');
cmp_deeply({%{$R->TEMPFAIL()}}, {status => 'TEMPFAIL', message => '', delay => 0}, 'TEMPFAIL defaults');
cmp_deeply({%{$R->DISCARD()}}, {status => 'DISCARD', message => '', delay => 0}, 'DISCARD defaults');
cmp_deeply({%{$R->new()}}, {status => 'CONTINUE', message => '', delay => 0}, 'new() defaults');

my $r = $R->REJECT(message => 'GO AWAY', code => '200', dsn => '5.0.2');
cmp_deeply({%$r}, {status => 'REJECT', message => 'GO AWAY', code => '200', dsn => '5.0.2', delay => 0}, 'fields kept as given');
$r->fix_code_dsn();
cmp_deeply({%$r}, {status => 'REJECT', message => 'GO AWAY', code => 554, dsn => '5.0.2', delay => 0}, 'fix_code_dsn fixes the code only');

my @cases = (
	# status, code, dsn => code, dsn
	['CONTINUE', undef, undef, '250', '2.1.0'],
	['CONTINUE', '220', '2.0.0', '220', '2.0.0'],
	['CONTINUE', '550', '5.1.1', '250', '2.1.0'],
	['ACCEPT_AND_NO_MORE_FILTERING', '251', '2.1.5', '251', '2.1.5'],
	['DISCARD', '451', '4.3.0', '250', '2.1.0'],
	['TEMPFAIL', undef, undef, '451', '4.3.0'],
	['TEMPFAIL', '421', '4.7.0', '421', '4.7.0'],
	['TEMPFAIL', '550', '5.0.0', '451', '4.3.0'],
	['TEMPFAIL', '4511', '4.1234.1', '451', '4.3.0'],
	['REJECT', '553', '5.7.3', '553', '5.7.3'],
	['REJECT', '450', '4.1.1', '554', '5.7.1'],
	['REJECT', 'abc', '5.7', '554', '5.7.1'],
);
foreach my $c (@cases) {
	my ($st, $code, $dsn, $wcode, $wdsn) = @$c;
	my $x = $R->new(status => $st, code => $code, dsn => $dsn);
	$x->fix_code_dsn();
	is($x->code, $wcode, "$st code " . ($code // 'undef'));
	is($x->dsn, $wdsn, "$st dsn " . ($dsn // 'undef'));
}

# Extra pairs override the constructor defaults; order is honoured.
is($R->CONTINUE(message => 'fine')->message, 'fine', 'override default message');
is($R->REJECT(delay => 5)->delay, 5, 'numeric delay kept');
is($R->REJECT(delay => 'x')->delay, 0, 'bad delay becomes 0');
is($R->REJECT(delay => -1)->delay, 0, 'negative delay becomes 0');

# Status validation.
eval { $R->new(status => 'BOGUS') };
like($@, qr/^Illegal status BOGUS/, 'bad status croaks');
eval { $R->new(colour => 'red') };
like($@, qr/Can't locate object method "colour"/, 'unknown key dies');
my $s = $R->CONTINUE();
$s->status(undef);
is($s->status, 'CONTINUE', 'undef does not clear');

# Predicates return 1/0.
my %pred = (
	CONTINUE => [0, 0, 0, 1, 1],
	ACCEPT_AND_NO_MORE_FILTERING => [0, 0, 0, 1, 1],
	DISCARD => [0, 1, 0, 0, 1],
	TEMPFAIL => [1, 0, 0, 0, 0],
	REJECT => [0, 0, 1, 0, 0],
);
foreach my $st (sort keys %pred) {
	my $x = $R->new(status => $st);
	is_deeply([$x->is_tempfail, $x->is_discard, $x->is_reject, $x->is_success, $x->is_success_or_discard],
		  $pred{$st}, "predicates for $st");
}

done_testing();
