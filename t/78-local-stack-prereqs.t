#!/usr/bin/perl
# script/local-stack on a machine that lacks what it needs: it stops before
# building or installing anything and names the exact fix (README's
# promise for a bare Debian 12 with only Rust). Stubs on PATH stand in for
# a missing cargo and for Debian packages that are not installed.
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use File::Temp qw(tempdir);
use MMTest::Util qw(repo_root have_root skip_or_fail spew);

my $top = repo_root();
my $script = "$top/script/local-stack";

# Runs local-stack with PATH set to $path, as $user when given; returns
# (exit status, stdout and stderr together).
sub run_stack {
	my ($path, $user, $dir) = @_;
	my @cmd = ('env', "PATH=$path", $script, '--dir', $dir);
	unshift @cmd, 'runuser', '-u', $user, '--' if $user;
	my $pid = open(my $out, '-|') // die "fork: $!";
	if (!$pid) {
		open(STDERR, '>&', \*STDOUT) or die;
		exec(@cmd) or die "exec: $!";
	}
	my $text = do { local $/; <$out> } // '';
	close($out);
	return ($? >> 8, $text);
}

my $stubs = tempdir(CLEANUP => 1);
chmod(0755, $stubs);
# Only the tools the script needs before it builds, cargo excepted.
my $nocargo = "$stubs/nocargo";
mkdir($nocargo) or die;
for my $tool (qw(bash dirname realpath mkdir grep dpkg-query id env sed cat)) {
	my ($real) = grep { -x } map { "$_/$tool" } qw(/usr/bin /bin);
	symlink($real, "$nocargo/$tool") or die "$tool: $!" if $real;
}
# A cargo that is there, and a dpkg that knows no package.
my $nopkg = "$stubs/nopkg";
mkdir($nopkg) or die;
spew("$nopkg/cargo", "#!/bin/sh\necho 'stub cargo ran' >&2\nexit 1\n");
spew("$nopkg/dpkg-query", "#!/bin/sh\nexit 1\n");
chmod(0755, "$nopkg/cargo", "$nopkg/dpkg-query");

{
	my $dir = "$stubs/local-a";
	my ($rc, $out) = run_stack($nocargo, undef, $dir);
	is($rc, 1, 'without cargo: exit status 1') or diag($out);
	like($out, qr{^local-stack: cargo is not on PATH\. Install Rust with rustup}m, 'says to install Rust with rustup');
	like($out, qr{^    \. "\$HOME/\.cargo/env"$}m, 'and how to load it into the current shell');
	unlike($out, qr/installing|building/, 'before installing or building anything');
	ok(!-e "$dir/log", 'and before setting anything up');
}

# The package message is for users other than root (root installs).
my $user;
if (have_root()) {
	$user = 'mailmunge';
	skip_or_fail("needs the mailmunge user to run local-stack as non-root (.ci/install-deps creates it)")
		unless getpwnam($user);
	skip_or_fail("user $user cannot read $script (run-tests gives it an ACL)")
		unless system('runuser', '-u', $user, '--', 'test', '-x', $script) == 0;
}
{
	my @pkgs = grep { !/^#/ && /\S/ } split /\n/, do {
		open(my $fh, '<', "$top/script/runtime-packages") or die; local $/; <$fh>
	};
	my $dir = "$stubs/local-b";
	mkdir($dir) or die;
	chown((getpwnam($user))[2, 3], $dir) if $user;
	my ($rc, $out) = run_stack("$nopkg:/usr/bin:/bin", $user, $dir);
	is($rc, 1, 'without the Debian packages, as ' . ($user // 'this user') . ': exit status 1') or diag($out);
	my $sudo = -x '/usr/bin/sudo' ? 'sudo ' : '';
	like($out, qr{install them as root first:\n    \Q${sudo}\Eapt-get install \Q@pkgs\E( gcc libc6-dev)?\n},
		"names the exact apt-get command, with every package of script/runtime-packages") or diag($out);
	unlike($out, qr/stub cargo ran|building/, 'before building');
}

done_testing();
