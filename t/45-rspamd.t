# Mailmunge::Test::Rspamd (protocol/perl-api.md §10.3): request format and every
# error path against a scripted HTTP server, then the real rspamd started
# on a loopback port with a private configuration (skipped only when the
# rspamd program is not installed).
use strict;
use warnings;

use Test::More;
use IO::Socket::INET;
use JSON ();
use POSIX ();
use lib 't/data/ext/lib';
use MMTest::File qw(slurp slurp_if_exists spew);
use ExtUtil;
use Mailmunge::Context;
use Mailmunge::Test::Rspamd;
use Test::Mailmunge::Tmpdir;

my $tmp = Test::Mailmunge::Tmpdir->new();
my $dir = "$tmp->{dir}/msg";
mkdir($dir);
spew("$dir/INPUTMSG", "From: a\@example.org\nTo: a\@example.org\nSubject: hi\nPrecedence: bulk\nMessage-ID: <x\@example.org>\n\nhello\n");
my $size = -s "$dir/INPUTMSG";

sub ctx
{
	return Mailmunge::Context->new(sender => '<a@example.org>', recipients => ['<a@example.org>', '<b@example.com>'],
				       hostip => '192.0.2.1', hostname => 'client.example.org', helo => 'h.example',
				       qid => 'Q1', cwd => $dir);
}

# A one-shot HTTP server: records the request in $tmp/request, answers $reply
# (or nothing at all when $reply is undef).
sub fake_server
{
	my ($reply) = @_;
	my $l = IO::Socket::INET->new(Listen => 5, LocalAddr => '127.0.0.1', LocalPort => 0, ReuseAddr => 1) or die;
	my $port = $l->sockport;
	my $pid = fork();
	die unless defined $pid;
	if (!$pid) {
		my $c = $l->accept();
		my $req = '';
		while ($req !~ /\r\n\r\n/) { last unless sysread($c, $req, 4096, length($req)); }
		my ($len) = $req =~ /^Content-Length: (\d+)/mi;
		my ($h) = $req =~ /^(.*?\r\n\r\n)/s;
		while (length($req) < length($h) + ($len // 0)) { last unless sysread($c, $req, 4096, length($req)); }
		open(my $o, '>', "$tmp->{dir}/request"); print $o $req; close($o);
		if (defined($reply)) { print $c $reply; $c->flush; sleep(30) if $reply =~ /keep-open/; close($c); } else { sleep(30); }
		POSIX::_exit(0);
	}
	close($l);
	return ($port, $pid);
}

sub with_reply
{
	my ($reply, $timeout) = @_;
	my ($port, $pid) = fake_server($reply);
	my $ans = Mailmunge::Test::Rspamd->new(undef)->rspamd_check(ctx(), '127.0.0.1', $port, $timeout // 10);
	kill('KILL', $pid);
	waitpid($pid, 0);
	return $ans;
}

sub json_reply { my ($h) = @_; my $b = JSON->new->encode($h); return "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: " . length($b) . "\r\n\r\n$b"; }

# --- The request
my $ans = with_reply(json_reply({ action => 'no action', score => 0.5 }));
my $req = slurp("$tmp->{dir}/request");
my ($head, $body) = split(/\r\n\r\n/, $req, 2);
is($head, "POST /checkv2 HTTP/1.0\r\nContent-Length: $size\r\nFrom: <a\@example.org>\r\nIP: 192.0.2.1\r\nHelo: h.example\r\n"
   . "Hostname: client.example.org\r\nQueue-Id: Q1\r\nRcpt: <a\@example.org>\r\nRcpt: <b\@example.com>",
   'request header: envelope, one From, one Rcpt per recipient');
is($body, slurp("$dir/INPUTMSG"), 'request body is INPUTMSG');
ok($ans->{response}->is_success, 'no action: CONTINUE');
is($ans->{results}{score}, 0.5, 'results returned');

# --- A server that keeps the connection open after a complete reply
{
	my $b = JSON->new->encode({ action => 'no action', note => 'keep-open' });
	# (Waiting for EOF would hit the 20 s deadline first and time out.)
	$ans = with_reply("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: " . length($b) . "\r\n\r\n$b", 20);
	ok($ans->{results} && $ans->{response}->is_success, 'reply complete per Content-Length');
}

# --- Action mapping
my %map = ('reject' => ['REJECT', 'Message rejected due to unacceptable content'],
	   'greylist' => ['TEMPFAIL', 'Please try again later'],
	   'soft reject' => ['TEMPFAIL', 'Please try again later'],
	   'add header' => ['CONTINUE', 'ok'],
	   'rewrite subject' => ['CONTINUE', 'ok']);
foreach my $a (sort keys %map) {
	$ans = with_reply(json_reply({ action => $a }));
	is_deeply([$ans->{response}->status, $ans->{response}->message], $map{$a}, "action '$a'");
}
$ans = with_reply(json_reply({ is_skipped => JSON::true }));
is($ans->{response}->status, 'CONTINUE', 'skipped message: CONTINUE');
$ans = with_reply(json_reply({ score => 1 }));
is($ans->{response}->message, 'rspamd results did not contain an "action" key', 'no action key: TEMPFAIL');
ok($ans->{results}, 'results still returned');

# --- Errors
sub err_is { my ($ans, $re, $label) = @_; ok($ans->{response}->is_tempfail && !exists($ans->{results}), "$label: TEMPFAIL without results"); like($ans->{response}->message, $re, "$label: message"); }
err_is(with_reply("HTTP/1.0 500 Internal Error\r\n\r\n"), qr/^Unsuccessful response from rspamd: HTTP\/1\.0 500/, 'HTTP 500');
err_is(with_reply("garbage\r\n\r\n"), qr/^Could not interpret rspamd response: garbage/, 'not HTTP');
err_is(with_reply("HTTP/1.0 200 OK\r\nContent-Type: text/html\r\n\r\n<html>"), qr/^Unexpected Content-Type from rspamd: text\/html/, 'wrong type');
err_is(with_reply("HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{broken"), qr/^Could not parse JSON from rspamd/, 'bad JSON');
err_is(with_reply("HTTP/1.0 200 OK\r\n\r\n[1,2]"), qr/^Could not parse JSON from rspamd/, 'JSON that is not an object');
err_is(with_reply(undef, 1), qr/^Calling rspamd timed out$/, 'no answer');
my $closed = IO::Socket::INET->new(Listen => 1, LocalAddr => '127.0.0.1', LocalPort => 0);
my $dead = $closed->sockport; close($closed);
err_is(Mailmunge::Test::Rspamd->new(undef)->rspamd_check(ctx(), '127.0.0.1', $dead, 5), qr/^Unable to connect to rspamd$/, 'nothing listening');

# --- The real rspamd
SKIP: {
	my $rspamd = (grep { -x $_ } map { "$_/rspamd" } split(/:/, $ENV{PATH}), '/usr/bin', '/usr/sbin')[0];
	skip('rspamd is not installed (Debian package rspamd)', 6) unless $rspamd;
	my $rdir = "$tmp->{dir}/rspamd";
	mkdir($rdir);
	chmod(0777, $rdir);
	my $l = IO::Socket::INET->new(Listen => 1, LocalAddr => '127.0.0.1', LocalPort => 0);
	my $port = $l->sockport; close($l);
	open(my $c, '>', "$rdir/rspamd.conf") or die;
	print $c <<"CONF";
.include "\$CONFDIR/common.conf"
options {
    pidfile = "\$RUNDIR/rspamd.pid";
    .include "\$CONFDIR/options.inc"
    # No network: a resolver that answers nothing, quickly.
    dns { nameserver = ["127.0.0.1:1"]; timeout = 0.1s; retransmits = 1; }
}
logging { type = "file"; filename = "\$LOGDIR/rspamd.log"; level = "error"; }
worker "normal" { bind_socket = "127.0.0.1:$port"; count = 1; task_timeout = 15s; }
CONF
	close($c);
	my @user = $> == 0 ? ('-u', 'mailmunge', '-g', 'mailmunge') : ();
	my $pid = fork();
	die unless defined $pid;
	if (!$pid) {
		chdir($rdir);
		open(STDOUT, '>', "$rdir/stdout"); open(STDERR, '>&', \*STDOUT);
		no warnings 'exec';
		exec($rspamd, '-f', @user, '-c', "$rdir/rspamd.conf", '--var=CONFDIR=/etc/rspamd',
		     "--var=LOCAL_CONFDIR=$rdir", "--var=RUNDIR=$rdir", "--var=DBDIR=$rdir", "--var=LOGDIR=$rdir");
		POSIX::_exit(127);
	}
	# Loading the rules takes a while on a slow machine.
	my $up = 0;
	for (1 .. 360) {
		last if waitpid($pid, POSIX::WNOHANG()) == $pid;
		if (IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port, Timeout => 1)) { $up = 1; last; }
		select(undef, undef, undef, 0.5);
	}
	ok($up, "rspamd listens on 127.0.0.1:$port") or diag(slurp_if_exists("$rdir/stdout") // '', slurp_if_exists("$rdir/rspamd.log") // '');
	if ($up) {
		$ans = Mailmunge::Test::Rspamd->new(undef)->rspamd_check(ctx(), '127.0.0.1', $port, 60);
		ok($ans->{results}, 'rspamd answered') or diag($ans->{response}->message);
		my $sym = $ans->{results}{symbols} || {};
		ok($sym->{PRECEDENCE_BULK}, 'PRECEDENCE_BULK');
		ok($sym->{TO_EQ_FROM}, 'TO_EQ_FROM');
		my $act = $ans->{results}{action} // '(none)';
		my $want = $act eq 'reject' ? 'REJECT' : ($act =~ /^(?:greylist|soft reject)$/ ? 'TEMPFAIL' : 'CONTINUE');
		is($ans->{response}->status, $want, "verdict follows rspamd's action ($act)");

		# The scripted test filter's "rspamd" subject, through a worker.
		my $mdir = "$tmp->{dir}/m1";
		ExtUtil::prepare_msg_dir($mdir, 't/data/ext/msgs/plain.eml', subject => 'rspamd', recipients => ['<frank@example.com>']);
		local $ENV{RSPAMD_PORT} = $port;
		ExtUtil::run_worker('t/data/ext/filters/test-filter.pl', ["scan Q2 $mdir"], cwd => $tmp->{dir}, timeout => 90);
		my $j = eval { JSON->new->decode(slurp_if_exists("$mdir/RSPAMD_RESULTS") // '') };
		ok($j && $j->{response}{status} && $j->{results}{symbols}{RCPT_COUNT_ONE},
		   'Test::Mailmunge::Filter wrote RSPAMD_RESULTS with status and symbols');
	} else {
		fail('rspamd answered') for 1 .. 5;
	}
	kill('TERM', $pid);
	for (1 .. 100) { last if waitpid($pid, POSIX::WNOHANG()) == $pid; select(undef, undef, undef, 0.1); }
	if (kill(0, $pid)) { kill('KILL', $pid); waitpid($pid, 0); }
}

done_testing();
