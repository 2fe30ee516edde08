#!/usr/bin/perl
# Bad input and misbehaving filters never kill the worker and always get
# exactly one well-formed reply (protocol/worker-protocol.md §10,
# protocol/perl-api.md §13).
use strict;
use warnings;
use Test::More;
use File::Temp qw(tempdir);
use File::Path qw(make_path);
use lib 't/data/core/lib';
use CoreWorker;
use MMTest::File qw(slurp spew);

my $tmp = tempdir(CLEANUP => 1);
make_path("$tmp/spool");
my $w = CoreWorker->new(filter => 't/data/core/filters/scan.pl',
			env => { MAILMUNGE_SPOOLDIR => "$tmp/spool" });
my $n = 0;
sub msgdir
{
	my (%files) = @_;
	my $d = "$tmp/spool/mm-" . ++$n;
	make_path($d);
	spew("$d/$_", $files{$_}) for keys %files;
	return $d;
}
my $msg = "Subject: s\n\nbody\n";

# Working directory problems
is($w->cmd("scan Q $tmp/spool/does-not-exist"), "error: Could not chdir($tmp/spool/does-not-exist): No such file or directory", 'missing directory');
my $d = msgdir(INPUTMSG => $msg);
is($w->cmd("scan Q $d"), 'error: Could not read COMMANDS file', 'missing COMMANDS');
ok(!-e "$d/RESULTS", 'no RESULTS written');
$d = msgdir(INPUTMSG => $msg, COMMANDS => "S<a\@b>\nR<c\@d> smtp");
is($w->cmd("scan Q $d"), 'error: Could not read COMMANDS file', 'truncated COMMANDS (no F)');
$d = msgdir(COMMANDS => "F\n");
is($w->cmd("scan Q $d"), 'error: Could not open INPUTMSG: No such file or directory', 'missing INPUTMSG');
is(slurp("$d/RESULTS"), "F\n", 'RESULTS closed with F');
$d = msgdir(COMMANDS => "F\n", INPUTMSG => $msg);
mkdir("$d/Work");
is($w->cmd("scan Q $d"), 'error: Could not mkdir(./Work): File exists', 'rescan of the same directory');

# Exceptions inside the filter
$d = msgdir(COMMANDS => "F\n", INPUTMSG => "Subject: s\nX-Test: bounce die\n\nbody\n");
my $r = $w->cmd("scan Q $d");
is($r, 'error: scan failed: filter_message blew up', 'die in filter_message');
is(slurp("$d/RESULTS"), "B554 5.7.1 Bounced\n", 'RESULTS left without F');
$d = msgdir(COMMANDS => "F\n", INPUTMSG => "Subject: s\nX-Test: die-wrapup\n\nbody\n");
is($w->cmd("scan Q $d"), 'error: scan failed: filter_wrapup blew up', 'die in filter_wrapup');
$d = msgdir(COMMANDS => "F\n", INPUTMSG => $msg);
mkdir("$d/RESULTS");
like($w->cmd("scan Q $d"), qr/^error: scan failed: Could not open RESULTS file: Is a directory$/, 'RESULTS not writable');
is($w->cmd('ping'), 'PONG', 'worker alive after the exceptions');

# Broken MIME still parses into something the filter can handle.
foreach my $bad ("Content-Type: multipart/mixed; boundary=\"x\"\n\n--x\nContent-Type: text/plain\n\nunterminated",
		 "\x00\xff\x01garbage without any header\n",
		 "Content-Type: multipart/mixed\n\nno boundary at all\n",
		 "Content-Transfer-Encoding: base64\n\n!!!not base64!!!\n",
		 '') {
	$d = msgdir(COMMANDS => "F\n", INPUTMSG => $bad);
	is($w->cmd("scan Q $d"), 'ok', 'broken MIME: ' . length($bad) . ' bytes');
	like(slurp("$d/RESULTS"), qr/F\n\z/, 'complete RESULTS');
}

# Percent escapes in the directory argument are decoded.
$d = msgdir(COMMANDS => "F\n", INPUTMSG => $msg);
rename($d, "$d x") or die;
is($w->cmd("scan Q $d%20x"), 'ok', 'encoded space in the path');

# Verdict commands with bad directories or COMMANDS
is($w->cmd("recipok <r> <s> 1.2.3.4 n <f> h $tmp/spool/none Q"), "ok -1 Could%20not%20chdir($tmp/spool/none):%20No%20such%20file%20or%20directory 451 4.3.0 0", 'recipok missing dir');
$d = msgdir();
is($w->cmd("recipok <r> <s> 1.2.3.4 n <f> h $d Q"), 'ok -1 Could%20not%20read%20COMMANDS%20file 451 4.3.0 0', 'recipok without COMMANDS');

# Garbled lines
is($w->cmd('%%%%'), 'ok 0 Unknown%20command 554 5.7.1 0', 'percent garbage');
is($w->cmd('scan%00 x'), 'ok 0 Unknown%20command 554 5.7.1 0', 'NUL in command word');
is($w->cmd("\t\t"), 'ok 0 Unknown%20command 554 5.7.1 0', 'only whitespace');
is($w->cmd('a' x 100000), 'ok 0 Unknown%20command 554 5.7.1 0', 'very long line');
is($w->cmd('ping'), 'PONG', 'still alive');
is($w->finish(), 0, 'clean exit');

# A filter whose initialize() dies exits (non-zero) instead of serving.
my $bad = CoreWorker->new(filter => 't/data/core/filters/initdie.pl', env => { MAILMUNGE_SPOOLDIR => "$tmp/spool" });
is($bad->cmd('ping', 5), undef, 'no reply from a worker that failed to initialise');
isnt($bad->finish(), 0, 'non-zero exit');
like($bad->stderr_text, qr/cannot reach the database/, 'reason on stderr');

done_testing();
