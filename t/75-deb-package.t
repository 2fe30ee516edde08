#!/usr/bin/perl
# The Debian package end to end (protocol/deployment.md §15): script/build-deb
# builds it; installed over an admin's upstream-layout files it keeps
# /etc/default/mailmunge and the filter; the installed init script (or
# systemd) starts the installed daemons, which filter a message through a
# private Postfix with the admin's filter and the installed Perl modules; a
# reinstall while they run keeps the files and the mail flowing; remove keeps
# the conffiles and the spool; purge deletes the conffiles and keeps mail.
# Then the migration from a stand-in of upstream's package, and back.
#
# The package installs into the real system paths: the test refuses a
# machine that already has any of them, and removes what it installed and
# wrote however it ends (END block, also on SIGINT/SIGTERM through
# MMTest::Util).
use strict;
use warnings;
use Test::More;

use MMTest::Util qw(have_root repo_root free_port slurp spew wait_until skip_or_fail stop_pid);
use MMTest::Sink;
use MMTest::Postfix;
use MMTest::SMTP;
use File::Temp ();

my $PKG = 'mailmunge-rs';
my $UPSTREAM = 'mailmunge-base';    # a stand-in of upstream's package, built below
my $top = repo_root();
my $DEFAULT = '/etc/default/mailmunge';
my $FILTER = '/etc/mailmunge/mailmunge-filter.pl';
my $SPOOL = '/var/spool/mailmunge';
my $QDIR = '/var/spool/mm-quarantine';
my @PIDFILES = ('/var/run/mailmunge-multiplexor.pid', '/var/run/mailmunge.pid');
my @DAEMONS = ('/usr/bin/mailmunge', '/usr/bin/mailmunge-multiplexor');

skip_or_fail('needs root (installs a Debian package)') unless have_root();
for my $tool (qw(dpkg dpkg-deb dpkg-shlibdeps)) {
	skip_or_fail("$tool is not installed (dpkg-dev)") unless grep { -x "$_/$tool" } split(/:/, $ENV{PATH});
}
skip_or_fail('cargo-deb is not installed (cargo install cargo-deb --version 3.8.0 --locked)')
	unless system('cargo deb --version >/dev/null 2>&1') == 0;
skip_or_fail('postfix is not installed (run .ci/install-deps)') unless -x '/usr/sbin/postfix';
skip_or_fail('no mailmunge user (run .ci/install-deps)') unless getpwnam('mailmunge');

# dpkg's two-letter state ("ii", "rc"), or '' for a package that is not
# installed at all (dpkg may still list it as "un" after a purge).
sub package_status {
	my $name = shift // $PKG;
	my $s = `dpkg-query -W -f='\${db:Status-Abbrev}' $name 2>/dev/null` =~ s/\s+\z//r;
	return $s =~ /^.n/ ? '' : $s;
}
# Everything the package installs or creates at a fixed path.
my @taken = grep { -e $_ } (@DAEMONS, '/usr/share/perl5/Mailmunge', $DEFAULT, '/etc/mailmunge',
	'/etc/init.d/mailmunge', '/lib/systemd/system/mailmunge.service', $SPOOL, $QDIR, @PIDFILES);
skip_or_fail("this machine already has @taken; the test installs there and could not leave it as found")
	if @taken;
for my $p ($PKG, $UPSTREAM) {
	skip_or_fail("package $p is already known to dpkg (" . package_status($p) . ')') if package_status($p) ne '';
}

# Files whose names the package's scripts derive from ours (kept, moved
# aside, dpkg-new): whatever is there afterwards and not now goes.
my @GLOBS = ('/etc/default/mailmunge*', '/etc/init.d/mailmunge*', '/etc/systemd/system/mailmunge*');
my %before = map { $_ => 1 } map { glob } @GLOBS;

my ($sink, $pf);
my $touched = 0;
END { cleanup() if $touched }

# A systemd host starts units; elsewhere the package's init script. Both
# get the environment an init system gives, not the test's (PERL5LIB!).
my $systemd = -d '/run/systemd/system';
diag('PID 1 is ' . `ps -p 1 -o comm=` . ($systemd ? 'systemd units are used' : 'using /etc/init.d/mailmunge'));
sub service {
	my ($action) = @_;
	return $systemd ? `systemctl $action mailmunge.service 2>&1`
		: `env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin /etc/init.d/mailmunge $action 2>&1`;
}

# The daemons the package runs (by executable, never by name), and with
# daemon_pids() their workers too.
sub daemons {
	return grep {
		my $exe = readlink("/proc/$_/exe") // '';
		grep { $exe eq $_ || $exe eq "$_ (deleted)" } @DAEMONS;
	} map { m{^/proc/(\d+)$} ? $1 : () } glob('/proc/[0-9]*');
}
sub daemon_pids {
	my %ppid;
	for my $stat (glob('/proc/[0-9]*/stat')) {
		my $text = eval { slurp($stat) } // next;
		$ppid{$1} = $2 if $text =~ /^(\d+) .*\)\s+\S+\s+(\d+)/s;
	}
	my %all = map { $_ => 1 } daemons();
	my $grew = 1;
	while ($grew) {
		$grew = 0;
		for my $p (keys %ppid) { if (!$all{$p} && $all{ $ppid{$p} }) { $all{$p} = 1; $grew = 1 } }
	}
	return sort { $a <=> $b } keys %all;
}

sub cleanup {
	local ($?, $@, $!);
	$pf->stop if $pf;
	$sink->stop if $sink;
	service('stop') if -x '/etc/init.d/mailmunge' || $systemd;
	stop_pid($_, 5) for daemon_pids();
	eval { dpkg("--purge $_") } for grep { package_status($_) ne '' } ($PKG, $UPSTREAM);
	unlink(grep { !$before{$_} } map { glob } @GLOBS);
	system('rm', '-rf', '/etc/mailmunge', $SPOOL, $QDIR);
	unlink(@PIDFILES);
}

# Runs dpkg (stdin closed: a question would fail, not hang); waits while
# another dpkg or apt holds the lock. Returns the output; $? as dpkg's.
sub dpkg {
	my ($args) = @_;
	my $out;
	wait_until(300, 'the dpkg lock', sub {
		$out = `dpkg $args 2>&1 </dev/null`;
		return $? == 0 || $out !~ /\block\b/;
	});
	return $out;
}

sub contents { my $c = eval { slurp($_[0]) }; return $c // "($_[0] missing)" }

sub mode_owner {
	my @st = stat($_[0]) or return 'missing';
	return sprintf('%04o %s:%s', $st[2] & 07777, scalar(getpwuid($st[4])), scalar(getgrgid($st[5])));
}

# --- build -----------------------------------------------------------------
my $out = `'$top/script/build-deb' 2>&1`;
is($?, 0, 'script/build-deb builds the package') or diag($out);
my ($deb) = $out =~ m{^(\S+\.deb)\s*\z}m;
unless (ok($deb && -f $deb, "package file: " . ($deb // 'none'))) {
	done_testing();
	exit 1;
}

my $contents = `dpkg-deb -c '$deb'`;
for my $f (qw(./usr/bin/mailmunge ./usr/bin/mailmunge-multiplexor ./usr/bin/mm-mx-ctrl ./usr/bin/mm-try
	./usr/bin/mailmunge-start ./usr/bin/mailmunge-util ./usr/share/perl5/Mailmunge/Filter.pm
	./usr/share/perl5/Test/Mailmunge/Utils.pm ./usr/share/man/man8/mailmunge.8.gz
	./lib/systemd/system/mailmunge.service ./lib/systemd/system/mailmunge-multiplexor.service
	./etc/init.d/mailmunge ./etc/default/mailmunge ./etc/mailmunge/mailmunge-filter.pl)) {
	like($contents, qr/ \Q$f\E$/m, "package ships $f");
}
unlike($contents, qr{ \./var/}m, 'package ships no spool directory (dpkg would delete it on remove)');
my $control = `dpkg-deb -f '$deb'`;
like($control, qr/^Depends:.*\blibmime-tools-perl\b/m, 'Depends on MIME-tools');
like($control, qr/^Conflicts:.*\bmailmunge-base\b/m, "Conflicts with upstream's mailmunge-base");

# --- an admin's upstream layout ----------------------------------------------
$touched = 1;
my $port = free_port();
my $admin_default = <<"EOF";
# The admin's settings from upstream's installation (t/75 marker).
SOCKET=inet:$port\@127.0.0.1
MX_MINIMUM=1
MX_MAXIMUM=2
EOF
my $admin_filter = <<'EOF';
#!/usr/bin/perl
# The admin's filter from upstream's installation (t/75 marker).
use strict;
use warnings;
package AdminFilter;
use base qw(Mailmunge::Filter);
sub filter_message {
	my ($self, $ctx) = @_;
	$ctx->action_change_header('X-Admin-Filter', "kept $INC{'Mailmunge/Filter.pm'}");
	return;
}
package main;
AdminFilter->new->run();
exit(0);
EOF
mkdir('/etc/mailmunge', 0755) or die "mkdir /etc/mailmunge: $!";
spew($DEFAULT, $admin_default, 0644);
spew($FILTER, $admin_filter, 0755);
# Upstream's init script would start upstream's launch commands: the
# package moves it aside.
my $upstream_init = "#!/bin/sh\n# upstream's init script (t/75 marker)\nexit 0\n";
spew('/etc/init.d/mailmunge', $upstream_init, 0755);

sub admin_files_kept {
	my ($when) = @_;
	is(contents($DEFAULT), $admin_default, "$when: the admin's $DEFAULT is untouched");
	is(contents($FILTER), $admin_filter, "$when: the admin's filter is untouched");
}

# --- install -----------------------------------------------------------------
$out = dpkg("-i '$deb'");
is($?, 0, 'dpkg -i installs over the upstream layout without asking') or diag($out);
is(package_status(), 'ii', 'package installed');
admin_files_kept('after install');
is(contents('/etc/init.d/mailmunge.pre-mailmunge-rs'), $upstream_init, "upstream's init script moved aside");
like(contents('/etc/init.d/mailmunge'), qr{"\$PROGDIR/mailmunge-start" multiplexor}, "the package's init script in place");
is_deeply([grep { !$before{$_} && !m{^/etc/(default|init\.d)/mailmunge(\.pre-mailmunge-rs)?$} } map { glob } @GLOBS], [],
	'no .mailmunge-rs-keep or .dpkg-* files left behind');
my $conffiles = `dpkg-query -W -f='\${Conffiles}' $PKG`;
like($conffiles, qr{^ \Q$_\E [0-9a-f]{32}$}m, "$_ is a conffile") for ($DEFAULT, $FILTER, '/etc/init.d/mailmunge');
is(mode_owner($SPOOL), '0750 mailmunge:mailmunge', "postinst created $SPOOL");
is(mode_owner($QDIR), '0750 mailmunge:mailmunge', "postinst created $QDIR");
is(mode_owner('/usr/bin/mailmunge'), '0755 root:root', '/usr/bin/mailmunge 0755');
like(contents('/lib/systemd/system/mailmunge.service'), qr{^ExecStart=/usr/bin/mailmunge-start --foreground milter$}m,
	'unit runs the installed mailmunge-start');
my $paths = `env -i /usr/bin/perl -MMailmunge::Constants -e 'print join "|", map { Mailmunge::Constants->get("Path:\$_") } qw(SPOOLDIR QUARANTINEDIR CONFDIR SENDMAIL)'`;
is($paths, "$SPOOL|$QDIR|/etc/mailmunge|/usr/sbin/sendmail", "installed Constants.pm carries the package's paths");

# --- run: the MTA, the installed daemons, the admin's filter -----------------
$out = service('start');
is($?, 0, 'services start') or diag($out);
like($out, qr/\AStarting mailmunge-multiplexor: OK\nStarting mailmunge: OK\n\z/, 'init script reports both daemons')
	unless $systemd;
is(scalar(daemons()), 2, 'both daemons running');

$sink = MMTest::Sink->new;
$pf = MMTest::Postfix->new(relay_port => $sink->port, milter => "inet:127.0.0.1:$port");
$pf->start;
sub send_and_check {
	my ($id) = @_;
	my $r = MMTest::SMTP->send_mail(port => $pf->port, from => 'sender@example.com', to => ['rcpt@example.org'],
		data => MMTest::SMTP->build_message(id => $id));
	ok($r->{ok}, "$id: Postfix accepts the message through the milter") or diag($r->{failure});
	my $got = eval { $sink->wait_for_id($id, 60) };
	ok($got, "$id: delivered") or diag($@ . "--- maillog ---\n" . $pf->log);
	is($got && $got->header('X-Admin-Filter'), 'kept /usr/share/perl5/Mailmunge/Filter.pm',
		"$id: the admin's filter ran on the installed Perl modules");
	like($got && $got->header('X-Scanned-By') // '', qr/^mailmunge /, "$id: the installed milter added X-Scanned-By");
}
send_and_check('deb-1');

# A reinstall (what an upgrade does) while the daemons run: the admin's
# files stay, and mail still flows. (postinst restarts the daemons through
# invoke-rc.d, which a policy-rc.d, as in containers, may forbid.)
$out = dpkg("-i '$deb'");
is($?, 0, 'reinstall while running') or diag($out);
admin_files_kept('after reinstall');
ok(eval { wait_until(30, 'two daemons', sub { daemons() == 2 }) }, 'both daemons running after the reinstall')
	or diag($@);
send_and_check('deb-2');
$pf->stop;
$sink->stop;

$out = service('stop');
is($?, 0, 'services stop') or diag($out);
is_deeply([daemon_pids()], [], 'no daemon or worker left');

# --- remove, purge -------------------------------------------------------------
spew("$QDIR/qdir-t75", "a quarantined message\n");
$out = dpkg("-r $PKG");
is($?, 0, 'dpkg -r') or diag($out);
is(package_status(), 'rc', 'removed, configuration kept');
ok(!-e '/usr/bin/mailmunge' && !-e '/usr/share/perl5/Mailmunge/Filter.pm', 'programs and modules removed');
admin_files_kept('after remove');
ok(-e '/etc/init.d/mailmunge', 'init script (a conffile) kept');
ok(-d $SPOOL, 'spool kept on remove');
ok(-e "$QDIR/qdir-t75", 'quarantine kept on remove');

$out = dpkg("-P $PKG");
is($?, 0, 'dpkg -P') or diag($out);
is(package_status(), '', 'purged');
ok(!-e $_, "$_ deleted on purge") for ($DEFAULT, $FILTER, '/etc/init.d/mailmunge', '/etc/mailmunge');
ok(!-e $SPOOL, 'empty spool deleted on purge');
ok(-e "$QDIR/qdir-t75", 'quarantined mail kept on purge');
ok(getpwnam('mailmunge'), 'user kept on purge');
is(contents('/etc/init.d/mailmunge.pre-mailmunge-rs'), $upstream_init, "upstream's init script still aside after purge");

# --- from upstream's package and back ------------------------------------------
# A stand-in of upstream's mailmunge-base: a program, the init script (a
# conffile) and a unit in /etc/systemd/system, as upstream's package has.
my $fake = File::Temp::tempdir(CLEANUP => 1);
my $upstream_unit = "[Service]\nExecStart=/usr/bin/mailmunge\n";
mkdir("$fake/$_") or die "$fake/$_: $!" for qw(DEBIAN usr usr/bin etc etc/init.d etc/systemd etc/systemd/system);
spew("$fake/$_->[0]", $_->[1], $_->[2]) for
	['DEBIAN/control', "Package: $UPSTREAM\nVersion: 3.09-1\nArchitecture: all\nMaintainer: t75 <t75\@mailmunge-rs.invalid>\nDescription: stand-in of upstream's package (t/75)\n", 0644],
	['usr/bin/mailmunge', "#!/bin/sh\nexit 1\n", 0755],
	['etc/init.d/mailmunge', $upstream_init, 0755],
	['etc/systemd/system/mailmunge.service', $upstream_unit, 0644];
my $fake_deb = "$fake.deb";
$out = `dpkg-deb --root-owner-group --build '$fake' '$fake_deb' 2>&1`;
is($?, 0, "stand-in $UPSTREAM built") or diag($out);
END { unlink($fake_deb) if $fake_deb }
unlink('/etc/init.d/mailmunge.pre-mailmunge-rs');
$out = dpkg("-i '$fake_deb'");
is($?, 0, "stand-in $UPSTREAM installed") or diag($out);
mkdir('/etc/mailmunge', 0755);
spew($DEFAULT, $admin_default, 0644);
spew($FILTER, $admin_filter, 0755);

$out = dpkg("-i '$deb'");
is($?, 0, "dpkg -i replaces $UPSTREAM without asking") or diag($out);
is(package_status(), 'ii', "$PKG installed");
like(package_status($UPSTREAM), qr/^(?:rc)?\z/, "$UPSTREAM removed");
admin_files_kept("over $UPSTREAM");
is(contents('/etc/init.d/mailmunge.pre-mailmunge-rs'), $upstream_init, "${UPSTREAM}'s init script moved aside");
like(contents('/etc/init.d/mailmunge'), qr{"\$PROGDIR/mailmunge-start" multiplexor}, "the package's init script in place");
is(contents('/etc/systemd/system/mailmunge.service.pre-mailmunge-rs'), $upstream_unit,
	"${UPSTREAM}'s unit, which would override ours, moved aside");
ok(!-e '/etc/systemd/system/mailmunge.service', '... and not left in /etc/systemd/system');

# Roll-back: remove ours (conffiles kept), install upstream's again.
$out = dpkg("-r $PKG");
is($?, 0, "dpkg -r $PKG for the roll-back") or diag($out);
$out = dpkg("-i '$fake_deb'");
is($?, 0, "$UPSTREAM installs again over the removed $PKG") or diag($out);
is(contents('/etc/init.d/mailmunge'), $upstream_init, "${UPSTREAM}'s init script is back");
admin_files_kept("after the roll-back to $UPSTREAM");

done_testing();
