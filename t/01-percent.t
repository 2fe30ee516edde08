#!/usr/bin/perl
# The worker's percent codec against the vectors shared with the Rust code
# (protocol/percent-vectors.tsv), plus the COMMANDS-file reader on the
# milter's own escaping variant ("fencode" vectors).
use strict;
use warnings;
use Test::More;
use File::Temp qw(tempdir);
use Mailmunge::Filter;
use Mailmunge::Context;

my $file = 'protocol/percent-vectors.tsv';
open(my $fh, '<', $file) or die("Cannot read $file (run from the repository root): $!");

sub unescape
{
	my ($s) = @_;
	$s =~ s/\\(x([0-9A-Fa-f]{2})|t|\\)/$1 eq 't' ? "\t" : $1 eq '\\' ? '\\' : chr(hex($2))/ge;
	return $s;
}

my %count;
while (my $line = <$fh>) {
	chomp($line);
	next if $line =~ /^#/ || $line !~ /\S/;
	my ($kind, $in, $out, $note) = split(/\t/, $line, 4);
	$in = unescape($in // '');
	$out = unescape($out // '');
	$note //= '';
	$count{$kind}++;
	if ($kind eq 'encode') {
		is(Mailmunge::Filter->_percent_encode($in), $out, "encode: $note");
		is(Mailmunge::Filter->_percent_decode($out), $in, "encode round trip: $note");
	} elsif ($kind eq 'decode') {
		is(Mailmunge::Filter->_percent_decode($in), $out, "decode: $note");
	} elsif ($kind eq 'fencode') {
		# What the milter writes into COMMANDS must come back unchanged
		# through the COMMANDS reader (a Subject line and a macro value).
		is(Mailmunge::Filter->_percent_decode($out), $in, "fencode decodes: $note");
		my $dir = tempdir(CLEANUP => 1);
		open(my $c, '>', "$dir/COMMANDS") or die;
		print $c "U$out\n=m $out\nF\n";
		close($c);
		open($c, '<', "$dir/COMMANDS") or die;
		my $ctx = Mailmunge::Context->new()->_read_command_filehandle('Mailmunge::Filter', $c, 1);
		close($c);
		is($ctx->subject, $in eq '' ? undef : $in, "COMMANDS U line: $note");
	} else {
		fail("unknown vector kind $kind");
	}
}
close($fh);
ok($count{encode} >= 10 && $count{decode} >= 5 && $count{fencode} >= 3, 'vectors of every kind were read');

# Defaults for blank values (used by reply lines: blank -> '?').
is(Mailmunge::Filter->_percent_encode(undef, '?'), '?', 'undef encodes the default');
is(Mailmunge::Filter->_percent_encode('', '?'), '?', 'empty encodes the default');
is(Mailmunge::Filter->_percent_encode('0', '?'), '0', '"0" is not blank');
is(Mailmunge::Filter->_percent_decode('', '%3F'), '?', 'blank decodes the default');
is(Mailmunge::Filter->_percent_encode(undef), '', 'no default: empty');

# Characters beyond one byte go out as UTF-8 instead of being truncated.
is(Mailmunge::Filter->_percent_encode("\x{2122}"), '%E2%84%A2', 'wide character sent as UTF-8');
is(Mailmunge::Filter->_percent_encode("caf\x{e9}"), 'caf%E9', 'Latin-1 character stays one byte');

# Every byte: escaped exactly when outside 0x21..0x7E or one of % \ ' ",
# always as two upper-case hex digits; decoding takes either case.
my ($enc_ok, $dec_ok) = (0, 0);
foreach my $i (0 .. 255) {
	my $c = chr($i);
	my $escaped = ($i < 0x21 || $i > 0x7E || $c =~ /[%\\'"]/) ? sprintf('%%%02X', $i) : $c;
	$enc_ok++ if Mailmunge::Filter->_percent_encode("<$c>") eq "<$escaped>";
	my ($hi, $lo) = (sprintf('%x', $i >> 4), sprintf('%x', $i & 15));
	$dec_ok++ if 4 == grep { Mailmunge::Filter->_percent_decode("<%$_>") eq "<$c>" }
		("$hi$lo", uc("$hi$lo"), uc($hi) . $lo, $hi . uc($lo));
}
is($enc_ok, 256, 'every byte encodes as specified');
is($dec_ok, 256, 'every escape decodes, in any case mix');
is(Mailmunge::Filter->_percent_decode('%4g%%41%4'), '%4g%A%4', 'a % without two hex digits stays');

# Callable on an object too.
my $f = bless {}, 'Mailmunge::Filter';
is($f->_percent_encode('a b'), 'a%20b', 'method call on an object');

done_testing();
