#!/usr/bin/perl
# The systemd units (systemd/*.service), as script/install writes them:
# systemd accepts them, and their hardening keeps systemd's exposure
# estimate at 5.0 or below (protocol/SECURITY.md §11). systemd is not PID 1
# here, so the units are checked offline, not started.
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use File::Temp qw(tempdir);
use MMTest::Util qw(repo_root slurp spew skip_or_fail);

my $top = repo_root();
chomp(my $analyze = `command -v systemd-analyze 2>/dev/null` // '');
skip_or_fail('needs systemd-analyze (Debian package systemd)') unless $analyze;
-x "$top/target/debug/mailmunge-start" or skip_or_fail('target/debug/mailmunge-start not built');

# A prefix whose bin/ holds the programs, so that ExecStart= exists.
my $dir = tempdir(CLEANUP => 1);
mkdir("$dir/bin") or die;
symlink("$top/target/debug/mailmunge-start", "$dir/bin/mailmunge-start") or die;
my @units = qw(mailmunge.service mailmunge-multiplexor.service);
for my $u (@units) {
	my $text = slurp("$top/systemd/$u");
	$text =~ s/\@prefix\@/$dir/g;
	$text =~ s/\@SPOOLDIR\@/\/var\/spool\/mailmunge/g;
	$text =~ s/\@(MMUSER|MMGROUP)\@/mailmunge/g;
	spew("$dir/$u", $text);
}

my $out = `cd '$dir' && '$analyze' verify --man=no @{[map { "./$_" } @units]} 2>&1`;
is($?, 0, 'systemd-analyze verify accepts both units') or diag($out);
is($out, '', '... without a warning');

for my $u (@units) {
	my $text = slurp("$dir/$u");
	for my $want ('NoNewPrivileges=yes', 'ProtectSystem=full', 'PrivateTmp=yes',
		'RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK') {
		like($text, qr/^\Q$want\E$/m, "$u: $want");
	}
	like($text, qr/^CapabilityBoundingSet=.*CAP_SETUID.*CAP_SETGID/m, "$u: capabilities bounded to what start-up needs");
	my $report = `cd '$dir' && '$analyze' security --offline=true --threshold=50 --no-pager ./$u 2>&1`;
	is($?, 0, "$u: exposure 5.0 or below") or diag($report);
	my ($level) = $report =~ /Overall exposure level for \S+: ([\d.]+)/;
	ok(defined($level) && $level <= 5.0, "$u: exposure level " . ($level // '?'));
}

done_testing();
