#!/usr/bin/perl
# sysvinit/mailmunge with stand-in daemons: configuration files in upstream
# order, command lines (deployment.md §4, §5.2), pid files, status texts,
# stop, reload.
use strict;
use warnings;
use Test::More;
use FindBin;
use File::Temp qw(tempdir);
use File::Copy qw(copy);

my $top = "$FindBin::Bin/..";
my $start_bin = "$top/target/debug/mailmunge-start";
-x $start_bin or plan skip_all => 'target/debug/mailmunge-start not built';

my $tmp = tempdir(CLEANUP => 1);
chmod(0755, $tmp);
my $bin = "$tmp/usr/bin";
mkdir("$tmp/usr"); mkdir($bin); mkdir("$tmp/run"); mkdir("$tmp/log");

sub write_file {
	my ($path, $text, $mode) = @_;
	open(my $fh, '>', $path) or die "$path: $!";
	print $fh $text;
	close($fh);
	chmod($mode, $path) if defined($mode);
}
sub slurp { open(my $fh, '<', $_[0]) or return undef; local $/; return <$fh>; }

# A copy, not a link: mailmunge-start runs the daemons from its own directory.
copy($start_bin, "$bin/mailmunge-start") or die;
chmod(0755, "$bin/mailmunge-start");

# Stand-in daemons: record argv, leave a process behind as "the daemon"
# and write its pid where -p/-P says, then return like a daemon whose child
# reported ready. The multiplexor's answers "ping" on its -s socket, as
# mailmunge-start checks that a worker answers before it reports OK.
my $fake = <<'EOF';
#!/bin/sh
name=$(basename "$0")
printf '%s\n' "$@" > "$TEST_LOG_DIR/$name.argv"
# The pid-file option: -P for mailmunge, -p for the multiplexor.
flag=-p
[ "$name" = mailmunge ] && flag=-P
pidfile=
sock=
while [ $# -gt 0 ]; do
    [ "$1" = "$flag" ] && { pidfile=$2; shift; }
    [ "$name" = mailmunge-multiplexor ] && [ "$1" = -s ] && { sock=$2; shift; }
    shift
done
if [ -n "$sock" ]; then
    # Listens before it returns, like the real one; the child answers.
    pid=$(perl -MIO::Socket::UNIX -e '
        my $s = IO::Socket::UNIX->new(Local => $ARGV[0], Listen => 5) or die "$ARGV[0]: $!\n";
        defined(my $p = fork()) or die "fork: $!\n";
        if ($p) { print "$p\n"; exit 0 }
        open(STDIN, "<", "/dev/null"); open(STDOUT, ">", "/dev/null"); open(STDERR, ">", "/dev/null");
        alarm(300);
        while (my $c = $s->accept) {
            my $l = <$c>;
            print $c "PONG\n" if ($l // "") eq "ping\n";
            close($c);
        }' "$sock") || exit 1
else
    sleep 300 >/dev/null 2>&1 &
    pid=$!
fi
[ -n "$pidfile" ] && echo $pid > "$pidfile"
exit 0
EOF
write_file("$bin/$_", $fake, 0755) for qw(mailmunge mailmunge-multiplexor);
write_file("$bin/mm-mx-ctrl", "#!/bin/sh\nprintf '%s\\n' \"\$@\" > \"\$TEST_LOG_DIR/mm-mx-ctrl.argv\"\n", 0755);

# The script as script/install would install it with PREFIX=$tmp/usr.
my $script = slurp("$top/sysvinit/mailmunge");
$script =~ s/\@prefix\@/$tmp\/usr/g;
$script =~ s/\@SPOOLDIR\@/\/var\/spool\/mailmunge/g;
$script =~ s/\@(MMUSER|MMGROUP)\@/mailmunge/g;
$script =~ s/\@CONFDIR\@/\/etc\/mailmunge/g;
unlike($script, qr/@[A-Z]+@|\@prefix\@/, 'all placeholders substituted');
write_file("$tmp/mailmunge.init", $script, 0755);

my $spool = "$tmp/spool";
# /etc/sysconfig is read first, /etc/default second (wins).
write_file("$tmp/sysconfig", "MX_RELAY_CHECK=yes\nSCANNED_BY=overridden\nMX_MAXIMUM=3\n");
write_file("$tmp/default", <<"EOF");
# as in upstream's regression containers, plus a few more
TEST_LOG_DIR=$tmp/log
SPOOLDIR=$spool
MX_PIDFILE=$tmp/run/mx.pid
MM_PIDFILE=$tmp/run/mm.pid
SOCKET=inet:8872\@127.0.0.1
SCANNED_BY="My Scanner"
MX_MAXIMUM=10
MX_EMBED_PERL=yes
EOF
$ENV{MAILMUNGE_CONFIG_FILES} = "$tmp/sysconfig $tmp/default";

sub init {
	my $out = `sh '$tmp/mailmunge.init' @_ 2>&1`;
	return ($out, $? >> 8);
}
sub argv_of { my $t = slurp("$tmp/log/$_[0].argv"); return defined($t) ? [split(/\n/, $t)] : undef; }
sub pid_of { my $p = slurp($_[0]); chomp($p) if defined $p; return $p; }

my ($out, $rc) = init('start');
is($out, "Starting mailmunge-multiplexor: OK\nStarting mailmunge: OK\n", 'start output');
is($rc, 0, 'start exits 0');
is_deeply(argv_of('mailmunge-multiplexor'),
	[qw(-E -G -U mailmunge -b 600 -l -m 2), '-p', "$tmp/run/mx.pid", qw(-x 10 -z), $spool,
	 '-s', "$spool/mailmunge-multiplexor.sock", '-o', "$spool/mailmunge-multiplexor.lock"],
	'multiplexor command line: sysv defaults, both files, no -D');
is_deeply(argv_of('mailmunge'),
	['-G', '-P', "$tmp/run/mm.pid", qw(-U mailmunge -r -x), 'My Scanner', '-z', $spool,
	 '-p', 'inet:8872@127.0.0.1', '-m', "$spool/mailmunge-multiplexor.sock", '-o', "$spool/mailmunge.lock"],
	'milter command line: SCANNED_BY is one argument, no -y by default');
my @st = stat($spool);
is(sprintf('%04o', $st[2] & 07777), '0750', 'spool directory created 0750');
SKIP: {
	skip 'chown needs root and the mailmunge user', 1 unless $> == 0 && getpwnam('mailmunge');
	is_deeply([@st[4, 5]], [(getpwnam('mailmunge'))[2], (getgrnam('mailmunge'))[2]], 'spool owned by MX_USER:MX_GROUP (upstream chgrp typo fixed)');
}

my ($mx, $mm) = (pid_of("$tmp/run/mx.pid"), pid_of("$tmp/run/mm.pid"));
ok($mx && kill(0, $mx) && $mm && kill(0, $mm), 'both stand-ins running');
($out, $rc) = init('status');
is($out, "mailmunge-multiplexor: Running: PID $mx\n            mailmunge: Running: PID $mm\n", 'status while running');
is($rc, 0, 'status exits 0 while running');

($out, $rc) = init('reload');
is($out, "Told mailmunge-multiplexor to force reread of filter rules.\n", 'reload output');
is_deeply(argv_of('mm-mx-ctrl'), ['-s', "$spool/mailmunge-multiplexor.sock", 'reread'], 'reload runs mm-mx-ctrl -s MX_SOCKET reread');

($out, $rc) = init('stop');
is($out, "Stopping mailmunge-multiplexor: OK\nStopping mailmunge: OK\n", 'stop output');
is($rc, 0, 'stop exits 0');
ok(!kill(0, $mx) && !kill(0, $mm), 'both stopped');
ok(!-e "$tmp/run/mx.pid" && !-e "$tmp/run/mm.pid", 'pid files removed');

($out, $rc) = init('status');
is($out, "mailmunge-multiplexor: Not running\n            mailmunge: Not running\n", 'status when stopped');
is($rc, 3, 'status exits 3 (LSB: not running)');
($out, $rc) = init('stop');
is($out, "mailmunge-multiplexor does not appear to be running\nmailmunge does not appear to be running\n", 'stop when stopped');
is($rc, 0, '... exits 0');

($out, $rc) = init('bogus');
like($out, qr/^Usage: .* \{start\|stop\|restart\|reread\|reload\|status\}$/, 'usage for an unknown action');
is($rc, 1, '... exits 1');

# A failing daemon is reported.
write_file("$bin/mailmunge", "#!/bin/sh\necho 'Error from child: something broke' >&2\nexit 1\n", 0755);
($out, $rc) = init('start');
like($out, qr/^Starting mailmunge-multiplexor: OK\nStarting mailmunge: Error from child: something broke\nFAILED\n\z/, 'failed start reported');
is($rc, 1, '... exits 1');
init('stop');

# Programs not installed (package removed, script left behind): silent exit 0.
SKIP: {
	skip 'mailmunge is installed on this machine', 2
		if grep { -x "$_/mailmunge" } '/usr/local/bin', '/usr/bin';
	(my $gone = $script) =~ s/\Q$tmp\E\/usr/$tmp\/nowhere/g;
	write_file("$tmp/gone.init", $gone, 0755);
	$out = `sh '$tmp/gone.init' start 2>&1`;
	is($out, '', 'no programs: no output');
	is($? >> 8, 0, 'no programs: exit 0');
}

done_testing();
