#!/usr/bin/perl
# script/install into a temporary DESTDIR: upstream's layout
# (protocol/deployment.md §1.2), modes, substituted paths, and nothing chowned
# or created outside.
use strict;
use warnings;
use Test::More;
use FindBin;
use File::Temp qw(tempdir);
use File::Find;
use MMTest::File qw(slurp slurp_if_exists);

my $top = "$FindBin::Bin/..";
-x "$top/target/debug/mailmunge-start"
	or plan skip_all => 'target/debug not built (run cargo build --bins)';

my $dest = tempdir(CLEANUP => 1);
my $out = `'$top/script/install' DESTDIR='$dest' PREFIX=/usr PERLINSTALLDIRS=vendor PERLLIBDIR=/usr/share/perl5 PROFILE=debug BUILD=no SPOOLDIR=/srv/mm-spool QDIR=/srv/mm-q CONFDIR=/etc/mm SENDMAIL=/usr/lib/sendmail MMUSER=mmu MMGROUP=mmg 2>&1`;
is($?, 0, 'install exits 0') or diag($out);

sub mode_of { my @s = stat("$dest$_[0]"); return @s ? sprintf('%04o', $s[2] & 07777) : 'missing'; }
sub installed { return slurp_if_exists("$dest$_[0]") // ''; }

# Programs: every src/bin/*.rs plus mailmunge-util.
opendir(my $bd, "$top/src/bin") or die;
my @bins = map { s/\.rs$//r } grep { /\.rs$/ } readdir($bd);
ok(scalar(grep { $_ eq 'mailmunge-start' } @bins), 'mailmunge-start is one of the programs');
for my $b (@bins, 'mailmunge-util') {
	is(mode_of("/usr/bin/$b"), '0755', "/usr/bin/$b 0755");
}
like(installed('/usr/bin/mailmunge-util'), qr{\A#!/\S*perl\n}, 'mailmunge-util has a perl #! line');

# Perl modules: the whole perl/ tree, 0644.
my @pms;
find({ no_chdir => 1, wanted => sub { push @pms, $1 if m{^\Q$top\E/perl/(.*\.pm)$} } }, "$top/perl");
ok(@pms >= 3, 'found Perl modules to check');
for my $pm (@pms) {
	is(mode_of("/usr/share/perl5/$pm"), '0644', "$pm 0644");
}

# Constants.pm carries this installation's paths.
my $const = "$dest/usr/share/perl5/Mailmunge/Constants.pm";
for ([SPOOLDIR => '/srv/mm-spool'], [QUARANTINEDIR => '/srv/mm-q'], [CONFDIR => '/etc/mm'], [SENDMAIL => '/usr/lib/sendmail']) {
	my ($key, $want) = @$_;
	my $got = `env -u MAILMUNGE_$key '$^X' -e 'require "$const"; print Mailmunge::Constants->get("Path:$key")'`;
	is($got, $want, "Constants Path:$key = $want");
}

# Configuration, units, init script.
is(mode_of('/etc/mm'), '0755', 'CONFDIR 0755');
is(mode_of('/etc/mm/mailmunge-filter.pl.example'), '0755', 'example filter 0755');
is(mode_of('/etc/default/mailmunge.example'), '0644', '/etc/default/mailmunge.example 0644');
is(mode_of('/etc/default/mailmunge'), 'missing', 'the live /etc/default/mailmunge is never installed');
is(installed('/etc/default/mailmunge.example'), slurp("$top/etc/default/mailmunge"), 'default file copied verbatim');
for my $u ('mailmunge.service', 'mailmunge-multiplexor.service') {
	is(mode_of("/etc/systemd/system/$u"), '0644', "$u 0644");
	unlike(installed("/etc/systemd/system/$u"), qr/@[A-Za-z]+@/, "$u: every placeholder substituted");
}
is(mode_of('/etc/init.d/mailmunge'), '0755', '/etc/init.d/mailmunge 0755');
my $sysv = installed('/etc/init.d/mailmunge');
unlike($sysv, qr/@[A-Za-z]+@/, 'init script: every placeholder substituted');
like($sysv, qr{^MX_USER=mmu$}m, 'init script default user');
like($sysv, qr{^MX_GROUP=mmg$}m, 'init script default group');
like($sysv, qr{^SPOOLDIR="/srv/mm-spool"$}m, 'init script default spool');
like($sysv, qr{"/usr/bin" /usr/local/bin /usr/bin}, 'init script looks in PREFIX/bin first');
is(system('sh', '-n', "$dest/etc/init.d/mailmunge"), 0, 'init script parses');

my $mm = installed('/etc/systemd/system/mailmunge.service');
my $mx = installed('/etc/systemd/system/mailmunge-multiplexor.service');
like($mm, qr{^ExecStart=/usr/bin/mailmunge-start --foreground milter$}m, 'milter unit ExecStart');
like($mx, qr{^ExecStart=/usr/bin/mailmunge-start --foreground multiplexor$}m, 'multiplexor unit ExecStart');
like($mm, qr{^Environment=LC_ALL=C SPOOLDIR=/srv/mm-spool MX_SOCKET=/srv/mm-spool/mailmunge-multiplexor\.sock MX_USER=mmu MM_ALLOW_GROUP_ACCESS=yes MX_GROUP=mmg SOCKET=/srv/mm-spool/mailmunge\.sock$}m, 'milter unit defaults');
like($mx, qr{^Environment=LC_ALL=C SPOOLDIR=/srv/mm-spool MX_BUSY=600 MX_LOG=yes MX_MAXIMUM=10 MX_MINIMUM=2 MX_SOCKET=/srv/mm-spool/mailmunge-multiplexor\.sock MX_USER=mmu MX_GROUP=mmg MM_ALLOW_GROUP_ACCESS=yes$}m, 'multiplexor unit defaults');
for my $unit ($mm, $mx) {
	like($unit, qr{^EnvironmentFile=-/etc/default/mailmunge\nEnvironmentFile=-/etc/sysconfig/mailmunge$}m, 'both environment files, upstream order');
	like($unit, qr{^TimeoutStopSec=30s$}m, 'TimeoutStopSec=30s');
	like($unit, qr{^Restart=on-failure$}m, 'Restart=on-failure');
}
# Upstream's unit relations (protocol/deployment.md §3).
like($mm, qr{^BindsTo=mailmunge-multiplexor\.service$}m, 'BindsTo');
like($mm, qr{^After=mailmunge-multiplexor\.service$}m, 'After multiplexor');
like($mm, qr{^PropagatesReloadTo=mailmunge-multiplexor\.service$}m, 'PropagatesReloadTo');
like($mm, qr{^Before=postfix\.service$}m, 'Before postfix');
like($mm, qr{^Before=sendmail\.service$}m, 'Before sendmail');
like($mm, qr{^\[Install\]\nWantedBy=multi-user\.target$}m, 'milter unit is the one to enable');
like($mx, qr{^PartOf=mailmunge\.service$}m, 'PartOf');
like($mx, qr{^KillMode=mixed$}m, 'KillMode=mixed');
like($mx, qr{^ExecReload=/bin/kill -INT \$MAINPID$}m, 'reload sends SIGINT');
unlike($mx, qr{^\[Install\]}m, 'multiplexor unit has no [Install]');

SKIP: {
	my $sa = `command -v systemd-analyze 2>/dev/null`;
	chomp($sa);
	skip 'no systemd-analyze', 1 unless $sa;
	my @complaints = grep { /\.service:\d+:/ } `'$sa' verify --man=no '$dest/etc/systemd/system/mailmunge.service' '$dest/etc/systemd/system/mailmunge-multiplexor.service' 2>&1`;
	is_deeply(\@complaints, [], 'systemd-analyze finds no unknown keys or syntax errors');
}

# Man pages.
for my $m (qw(man8/mailmunge.8 man8/mailmunge-multiplexor.8 man8/mm-mx-ctrl.8 man8/mailmunge-start.8 man7/mailmunge-protocol.7 man1/mailmunge-util.1 man1/mm-try.1 man7/mailmunge-notify.7)) {
	is(mode_of("/usr/share/man/$m"), '0644', "$m 0644");
	like(installed("/usr/share/man/$m"), qr/^\.TH /m, "$m is a man page");
}

# Spool and quarantine: 0750; under DESTDIR nothing is chowned.
for my $d ('/srv/mm-spool', '/srv/mm-q') {
	is(mode_of($d), '0750', "$d 0750");
	is((stat("$dest$d"))[4], $>, "$d not chowned under DESTDIR");
}

# Upstream's default paths when nothing is overridden.
my $dest2 = tempdir(CLEANUP => 1);
`'$top/script/install' DESTDIR='$dest2' PREFIX=/usr PERLLIBDIR=/usr/share/perl5 PROFILE=debug BUILD=no 2>&1`;
is($?, 0, 'second install with defaults exits 0');
ok(-d "$dest2/var/spool/mailmunge" && -d "$dest2/var/spool/mm-quarantine", 'default spool and quarantine paths');
ok(-d "$dest2/etc/mailmunge", 'default CONFDIR /etc/mailmunge');
like(`cat '$dest2/etc/systemd/system/mailmunge.service'`, qr{^ExecStart=/usr/bin/mailmunge-start }m, 'PREFIX=/usr in units');

# A real install (no DESTDIR) as root chowns the new spool and quarantine
# directories to the daemons' user. Every path points into a temporary
# directory, and the user already exists, so nothing outside is touched.
SKIP: {
	skip 'needs root and the mailmunge user', 4 unless $> == 0 && getpwnam('mailmunge');
	my $root = tempdir(CLEANUP => 1);
	my $o = `'$top/script/install' PREFIX='$root/usr' SYSCONFDIR='$root/etc' SPOOLDIR='$root/spool' QDIR='$root/q' PERLLIBDIR='$root/perl' PROFILE=debug BUILD=no 2>&1`;
	is($?, 0, 'install without DESTDIR exits 0') or diag($o);
	my ($uid, $gid) = (getpwnam('mailmunge'))[2, 3];
	for my $d ("$root/spool", "$root/q") {
		my @st = stat($d);
		is_deeply([sprintf('%04o', $st[2] & 07777), $st[4], $st[5]], ['0750', $uid, $gid], "$d 0750 mailmunge:mailmunge");
	}
	chmod(0770, "$root/spool") or die;
	`'$top/script/install' PREFIX='$root/usr' SYSCONFDIR='$root/etc' SPOOLDIR='$root/spool' QDIR='$root/q' PERLLIBDIR='$root/perl' PROFILE=debug BUILD=no 2>&1`;
	is(sprintf('%04o', (stat("$root/spool"))[2] & 07777), '0770', 'reinstall leaves an existing spool directory alone');
}

# Bad settings are refused before anything is installed.
my $dest3 = tempdir(CLEANUP => 1);
my $err = `'$top/script/install' DESTDIR='$dest3' PREFIX=relative BUILD=no PROFILE=debug 2>&1`;
isnt($?, 0, 'relative PREFIX is refused');
like($err, qr/PREFIX must be an absolute path/, '... with a message');
$err = `'$top/script/install' DESTDIR='$dest3' BOGUS BUILD=no 2>&1`;
isnt($?, 0, 'unknown argument is refused');
# A path that sed would turn into Perl code (protocol/SECURITY.md §8).
$err = `'$top/script/install' DESTDIR='$dest3' "SPOOLDIR=/srv/x',system('id'),'" BUILD=no PROFILE=debug 2>&1`;
isnt($?, 0, 'a SPOOLDIR with a quote is refused');
like($err, qr/SPOOLDIR may hold only letters, digits/, '... naming the variable');
opendir(my $d3, $dest3) or die;
is(scalar(grep { !/^\.\.?$/ } readdir($d3)), 0, 'nothing installed by refused runs');

done_testing();
