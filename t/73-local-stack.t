#!/usr/bin/perl
# script/local-stack (README's first command): both daemons come up on
# loopback with the example filter, answer, and stop cleanly on Ctrl-C.
use strict;
use warnings;
use Test::More;
use FindBin;
use File::Temp qw(tempdir);
use IO::Socket::INET;
use POSIX qw(WNOHANG);
use Time::HiRes qw(sleep time);
use lib "$FindBin::Bin/lib";
use MMTest::Util qw(start_terminal_command read_until);

my $top = "$FindBin::Bin/..";
-x "$top/target/debug/$_" or plan skip_all => "target/debug/$_ not built"
	for qw(mailmunge mailmunge-multiplexor mm-mx-ctrl mailmunge-start);

# A free loopback port.
my $probe = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0, Listen => 1, ReuseAddr => 1) or die;
my $port = $probe->sockport;
close($probe);

my $dir = tempdir(CLEANUP => 1);
chmod(0755, $dir);
my $local = "$dir/local";

my ($pid, $rd) = start_terminal_command($top, {}, "$top/script/local-stack", '--port', $port, '--dir', $local);
# The banner (bounded wait; the build is already done by run-tests).
my $banner = read_until($rd, qr/Press Ctrl-C to stop\.\n/, 120);
like($banner, qr/Press Ctrl-C to stop\.\n/, 'local-stack reports it is running') or do {
	kill('TERM', $pid); waitpid($pid, 0); diag($banner); done_testing(); exit;
};
like($banner, qr/^local-stack: ready\b.*; a test message got: 250 /m, 'ready only after a message went through');
like($banner, qr/^  logs:\s+\Q$local\E\/log\/multiplexor\.log$/m, 'names the log files');
like($banner, qr/^  milter:\s+inet:$port\@127\.0\.0\.1 /m, 'prints where the milter listens');
like($banner, qr/^  Postfix:\s+smtpd_milters = inet:127\.0\.0\.1:$port$/m, 'prints the Postfix setting');
my ($mm_pid) = $banner =~ /\(mailmunge pid (\d+)\)/;
my ($mx_pid) = $banner =~ /multiplexor:.*\(pid (\d+)\)/;
ok($mm_pid && kill(0, $mm_pid), 'mailmunge runs');
ok($mx_pid && kill(0, $mx_pid), 'mailmunge-multiplexor runs');

my $sock = "$local/spool/mailmunge-multiplexor.sock";
my $free = `'$top/target/debug/mm-mx-ctrl' -s '$sock' free`;
like($free, qr/^\d+\n\z/, 'multiplexor answers free');
# The example filter's HELO rule, through a real worker.
my $helo = `'$top/target/debug/mm-mx-ctrl' -s '$sock' helook 192.0.2.1 client.example localhost 4567 127.0.0.1 25 NOQUEUE`;
is($helo, "ok 0 Go away. localhost is not your name. 554 5.7.1 0\n", 'example filter rejects a remote "localhost" HELO');
my $c = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port, Timeout => 5);
ok($c, 'milter port accepts connections');
close($c) if $c;
if ($> == 0) {
	my @own = map { (stat("$local/$_"))[4] } qw(spool quarantine);
	is_deeply(\@own, [((getpwnam('mailmunge'))[2]) x 2], 'as root: spool and quarantine owned by mailmunge');
}

# A message through the whole stack with mm-try: MTA -> milter ->
# multiplexor -> Perl worker running the example filter, and back.
SKIP: {
	skip 'mm-try not built', 8 unless -x "$top/target/debug/mm-try";
	my $try = "'$top/target/debug/mm-try' -m inet:127.0.0.1:$port";
	my $out = `$try '$FindBin::Bin/data/deploy/nested.eml'`;
	is($? >> 8, 0, 'mm-try: plain message accepted (exit 0)') or diag($out);
	like($out, qr/^eom\s+continue$/m, 'mm-try: end of message continues');
	like($out, qr/^\+X-Example-Parts: 5$/m, 'mm-try: diff shows the header the example filter added');
	like($out, qr/^\+X-Scanned-By: /m, 'mm-try: diff shows X-Scanned-By');
	$out = `$try '$FindBin::Bin/data/deploy/exe.eml'`;
	is($? >> 8, 2, 'mm-try: program attachment rejected (exit 2)');
	like($out, qr/^SMTP reply: 554 5\.7\.1 We do not accept program attachments; please send an archive instead$/m, 'mm-try: the filter\'s reply text');
	$out = `$try --json --helo localhost '$FindBin::Bin/data/deploy/nested.eml'`;
	require JSON;
	my $j = eval { JSON::decode_json($out) } || {};
	is($j->{final_verdict}{verdict}, 'reject', 'mm-try --json: HELO localhost rejected');
	is_deeply([map { $_->{stage} } @{ $j->{stages} || [] }], ['connect', 'helo'], 'mm-try --json: stops after HELO');
}

# Ctrl-C.
kill('INT', $pid);
my $status;
my $deadline = time() + 40;
while (time() < $deadline) {
	my $w = waitpid($pid, WNOHANG);
	if ($w == $pid) { $status = $?; last; }
	sleep(0.1);
}
my $rest = do { local $/; <$rd> } // '';
is($status, 0, 'local-stack exits 0 after Ctrl-C') or diag($banner . $rest);
like($rest, qr/local-stack: stopped\.\n\z/, 'says it stopped');
ok(!kill(0, $mm_pid), 'mailmunge stopped');
ok(!kill(0, $mx_pid), 'mailmunge-multiplexor stopped');
ok(!-e $sock, 'multiplexor socket removed');
if (!defined($status)) { kill('KILL', $pid, $mm_pid, $mx_pid); waitpid($pid, 0); }

# A filter whose workers die at start-up: no "ready", the Perl error on
# the terminal, a non-zero exit, nothing left running.
{
	my $bad = "$dir/dies.pl";
	open(my $f, '>', $bad) or die;
	print $f "#!/usr/bin/perl\ndie \"the database is down\\n\";\n";
	close($f);
	chmod(0755, $bad);
	my $out = `'$top/script/local-stack' --port $port --filter '$bad' --dir '$dir/bad' 2>&1 </dev/null`;
	my $rc = $? >> 8;
	is($rc, 1, 'a filter that cannot start: local-stack exits 1');
	unlike($out, qr/ready/, 'and never says ready');
	like($out, qr/^mm-try: why the temporary failure: the filter's workers fail: Worker \d+ \(pid \d+\) died before answering a request/m, 'mm-try explains the tempfail');
	like($out, qr/^  the database is down$/m, "the worker's Perl error is on the terminal");
	my @left = grep { /\Q$dir\E\/bad/ } `ps -eo args`;
	is_deeply(\@left, [], 'no daemon of it is left');
}

done_testing();
