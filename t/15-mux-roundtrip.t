#!/usr/bin/perl
# Our worker modules under our multiplexor: verdicts and a scan through
# the control socket with mm-mx-ctrl (as upstream's perl/t/20-filter-
# roundtrip.t does), with status tags (-Z) enabled.
use strict;
use warnings;
use Test::More;
use File::Temp qw(tempdir);
use POSIX qw(WNOHANG);
use Cwd qw(abs_path);
use MMTest::File qw(slurp slurp_if_exists spew);

my $mux = abs_path('target/debug/mailmunge-multiplexor');
my $ctl = abs_path('target/debug/mm-mx-ctrl');
plan skip_all => 'multiplexor binaries not built (cargo build --bins)' unless $mux && -x $mux && $ctl && -x $ctl;

my $tmp = tempdir(CLEANUP => 1);
chmod(0755, $tmp);
my $spool = "$tmp/spool";
mkdir($spool) or die;
chmod(0777, $spool);
my $sock = "$spool/mx.sock";
# Workers may run as another user (-U mailmunge when root) who cannot
# necessarily read the checkout: give them world-readable copies.
system('cp', '-r', 'perl', "$tmp/perl") == 0 or die('cannot copy perl/');
system('cp', 't/data/core/filters/verdicts.pl', "$tmp/verdicts.pl") == 0 or die('cannot copy the filter');
system('chmod', '-R', 'a+rX', "$tmp/perl", "$tmp/verdicts.pl") == 0 or die('chmod');
chmod(0755, "$tmp/verdicts.pl");
my $filter = "$tmp/verdicts.pl";

my @user = ($> == 0) ? ('-U', 'mailmunge') : ();
local $ENV{PERL5LIB} = join(':', "$tmp/perl", grep { defined && $_ ne '' } $ENV{PERL5LIB});
local $ENV{MAILMUNGE_SPOOLDIR} = $spool;
local $ENV{MAILMUNGE_MTA} = 'postfix';
my $pid = fork();
die("fork: $!") unless defined($pid);
if ($pid == 0) {
	open(STDIN, '<', '/dev/null');
	open(STDOUT, '>', "$tmp/mux.out");
	open(STDERR, '>&', \*STDOUT);
	exec($mux, '-D', '-Z', '-m', '1', '-x', '2', '-z', $spool, '-s', $sock, '-f', $filter, @user) or exit(127);
}
for (1 .. 100) {
	last if -S $sock;
	select(undef, undef, undef, 0.1);
}
ok(-S $sock, 'multiplexor listening') or diag(slurp_if_exists("$tmp/mux.out") // '');

sub ctrl
{
	my @args = @_;
	open(my $fh, '-|', $ctl, '-s', $sock, @args) or return '';
	my $l = <$fh>;
	close($fh);
	$l = '' unless defined($l);
	chomp($l);
	return $l;
}

is(ctrl('relayok', '10.0.0.1', 'ok.example', '1', '2', '3', 'NOQUEUE'), 'ok 1 ok 250 2.1.0 0', 'relay CONTINUE');
is(ctrl('relayok', '10.0.0.2', 'tempfail.example', '1', '2', '3', 'NOQUEUE'), 'ok -1 Whoops 451 4.3.0 0', 'relay TEMPFAIL');
is(ctrl('relayok', '10.0.0.3', 'reject.example', '1', '2', '3', 'NOQUEUE'), 'ok 0 GO AWAY 554 5.7.1 0', 'relay REJECT');
is(ctrl('relayok', '10.0.0.4', 'accept.example', '1', '2', '3', 'NOQUEUE'), 'ok 2 I love you 250 2.1.0 0', 'relay ACCEPT');
is(ctrl('relayok', '10.0.0.6', 'notresp.example', '1', '2', '3', 'NOQUEUE'), 'ok -1 Internal software error 451 4.3.0 0', 'non-Response');
is(ctrl('relayok', '10.0.0.7', 'die.example', '1', '2', '3', 'NOQUEUE'), 'ok -1 Internal software error 451 4.3.0 0', 'dying callback');
like(ctrl('scan', 'NOQUEUE', "$spool/mm-foo"), qr/^error: Could not chdir/, 'scan of a missing directory');

my $dir = "$spool/mm-msg";
mkdir($dir) or die;
chmod(0777, $dir);
spew("$dir/COMMANDS", "S<a\@example.com>\nQQ1\nR<b\@example.com> smtp example.com b\@example.com\nF\n");
spew("$dir/INPUTMSG", "Subject: hello\nX-Mailmunge-Remailed: 10.1.1.1 X\n\nbody\n");
spew("$dir/HEADERS", "Subject: hello\nX-Mailmunge-Remailed: 10.1.1.1 X\n");
chmod(0666, "$dir/$_") for qw(COMMANDS INPUTMSG HEADERS);
is(ctrl('scan', 'Q1', $dir), 'ok', 'scan');
is(slurp("$dir/RESULTS"), "JX-Mailmunge-Remailed 1\nF\n", 'RESULTS');

kill('TERM', $pid);
my $gone = 0;
for (1 .. 100) {
	if (waitpid($pid, WNOHANG) == $pid) { $gone = 1; last; }
	select(undef, undef, undef, 0.1);
}
if (!$gone) { kill('KILL', $pid); waitpid($pid, 0); }
ok($gone, 'multiplexor stopped on SIGTERM');

done_testing();
