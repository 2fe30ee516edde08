#!/usr/bin/perl
# Golden replay: run upstream's capture filter as a worker on our modules
# and replay every command recorded against upstream 3.09 (the stage files
# in t/data/core/golden/<case>/).  Replies, the capture filter's own record
# of each callback's context, and the RESULTS / NEWBODY / quarantine files
# of each scan must match byte for byte (after the normalisation described
# in t/data/core/golden/README.md).
use strict;
use warnings;
use Test::More;
use File::Temp qw(tempdir);
use File::Copy qw(copy);
use File::Path qw(make_path remove_tree);
use lib 't/data/core/lib';
use CoreWorker;
use MMTest::File qw(slurp slurp_if_exists spew);

my $G = 't/data/core/golden';
my @cases = qw(c01-basic c02-folded-headers c14-60-rcpts c24-all-mods v01-relay-reject v09-sender-verdicts);

# Two variants: the plain Mailmunge::Filter capture filter (fixtures in
# golden/<case>) and the Mailmunge::Filter::Compat one (golden/compat/<case>),
# the latter only once Compat is available.
my @variants = (['capture-filter.pl', $G]);
if (system($^X, '-Iperl', '-e', 'require Mailmunge::Filter::Compat') == 0) {
	push @variants, ['capture-filter-compat.pl', "$G/compat"];
} else {
	diag('Mailmunge::Filter::Compat not available: compat replay skipped');
}

# Inverse of MMDiffCapture::esc.
sub unesc
{
	my ($s) = @_;
	return undef if $s eq '(undef)';
	$s =~ s/^"//; $s =~ s/"$//;
	$s =~ s/\\(x([0-9a-f]{2})|[\\"nrt0])/
	    defined($2) ? chr(hex($2)) : {'\\'=>'\\','"'=>'"',n=>"\n",r=>"\r",t=>"\t",'0'=>"\0"}->{$1}/ge;
	return $s;
}

sub quoted_list
{
	my ($s) = @_;
	my @out;
	push @out, unesc($1) while $s =~ /("(?:[^"\\]|\\.)*"|\(undef\))/g;
	return @out;
}

sub norm
{
	my ($text, $spool, $qdir) = @_;
	return undef unless defined($text);
	$text =~ s/\Q$spool\E/<SPOOL>/g;
	$text =~ s{\Q$qdir\E/\d{4}-\d\d-\d\d-\d\d/qdir-\d{4}-\d\d-\d\d-\d\d\.\d\d\.\d\d-(\d{4})}{<QDIR>/DATE/qdir-DATETIME-$1}g;
	$text =~ s/msg-\d+-\d+\./msg-PID-N./g;
	# Owners and modes depend on who runs the test.
	$text = join('', grep { !/^ls / } split(/^/m, $text));
	return $text;
}

foreach my $variant (@variants) {
my ($filter, $F) = @$variant;
foreach my $case (@cases) {
	subtest "$filter $case" => sub {
		my $tmp = tempdir(CLEANUP => 1);
		my ($spool, $cap, $qdir) = map { "$tmp/$_" } qw(spool cap quarantine);
		make_path($spool, $cap, $qdir);
		my $w = CoreWorker->new(
			filter => "$G/filter/$filter",
			env => { MAILMUNGE_SPOOLDIR => $spool, MM_CAPTURE_DIR => $cap,
				 MM_QUARANTINE_DIR => $qdir,
				 PERL5LIB => join(':', grep { defined && $_ ne '' } $ENV{PERL5LIB}, "$G/stub") });
		opendir(my $dh, "$F/$case") or die;
		my @stages = sort grep { /^stage-\d+-\w+\.txt$/ } readdir($dh);
		closedir($dh);
		ok(@stages > 0, 'has stages');
		foreach my $stage (@stages) {
			my $golden = slurp("$F/$case/$stage");
			my ($cmd) = $golden =~ /^command (\w+)$/m;
			my ($argline) = $golden =~ /^args (.*)$/m;
			my @args = map { s/<SPOOL>/$spool/gr } quoted_list($argline);
			my ($want) = $golden =~ /^reply (".*")$/m;
			$want = unesc($want);

			# Rebuild the message directory as the worker found it.
			if ($cmd eq 'senderok' || $cmd eq 'recipok') {
				my $dir = $cmd eq 'senderok' ? $args[4] : $args[6];
				make_path($dir);
				foreach my $f (qw(COMMANDS HEADERS PRISTINE_HEADERS INPUTMSG)) {
					my ($v) = $golden =~ /^file $f: (.*)$/m;
					if (!defined($v) || $v eq '(absent)') { unlink("$dir/$f"); next; }
					spew("$dir/$f", unesc($v));
				}
			} elsif ($cmd eq 'scan') {
				my $dir = $args[1];
				my ($capname) = $golden =~ /^capture (\S+)$/m;
				make_path($dir);
				unlink("$dir/RESULTS", "$dir/NEWBODY");
				remove_tree("$dir/Work");
				copy("$F/$case/$capname/$_", "$dir/$_") for qw(INPUTMSG HEADERS PRISTINE_HEADERS COMMANDS);
			}
			my $line = join(' ', $cmd, map { CoreWorker->encode($_) } @args);
			is($w->cmd($line), $want, "$stage: reply");
			is(norm(slurp_if_exists("$cap/$stage"), $spool, $qdir), norm($golden, $spool, $qdir), "$stage: callback record");
		}
		is($w->finish(), 0, 'worker exits 0');

		# Per-message captures: RESULTS, NEWBODY, context, MIME structure,
		# actions, quarantine.
		opendir($dh, "$F/$case") or die;
		my @msgs = sort grep { -d "$F/$case/$_" } grep { !/^\./ } readdir($dh);
		closedir($dh);
		foreach my $m (@msgs) {
			foreach my $f (qw(RESULTS NEWBODY ctx.txt mime.txt actions.txt COMMANDS INPUTMSG)) {
				my $gold = slurp_if_exists("$F/$case/$m/$f");
				my $ours = slurp_if_exists("$cap/$m/$f");
				is(norm($ours, $spool, $qdir), norm($gold, $spool, $qdir), "$m/$f") if defined($gold) || defined($ours);
			}
			if (-d "$F/$case/$m/quarantine") {
				opendir(my $q, "$F/$case/$m/quarantine") or die;
				foreach my $f (sort grep { !/^\./ } readdir($q)) {
					is(slurp_if_exists("$cap/$m/quarantine/$f"), slurp("$F/$case/$m/quarantine/$f"), "$m/quarantine/$f");
				}
				closedir($q);
				my @ours = sort grep { !/^\./ } map { s{.*/}{}r } glob("$cap/$m/quarantine/*");
				my @gold = sort grep { !/^\./ } map { s{.*/}{}r } glob("$F/$case/$m/quarantine/*");
				is_deeply(\@ours, \@gold, "$m: quarantine file set");
			}
		}
	};
}
}

done_testing();
