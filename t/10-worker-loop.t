#!/usr/bin/perl
# A filter run as a real worker process: command parsing, every verdict
# command, map/tick/ping, unknown commands, misbehaving callbacks, exit
# status (protocol/worker-protocol.md §2, §4, §5).
use strict;
use warnings;
use Test::More;
use File::Temp qw(tempdir);
use lib 't/data/core/lib';
use CoreWorker;

my $spool = tempdir(CLEANUP => 1);
my $w = CoreWorker->new(filter => 't/data/core/filters/verdicts.pl',
			env => { MAILMUNGE_SPOOLDIR => $spool });

is($w->cmd('ping'), 'PONG', 'ping');
is($w->cmd('PiNg'), 'PONG', 'command word is case-insensitive');
is($w->cmd('%70ing'), 'PONG', 'command word is percent-decoded');

# relayok IP NAME PORT MYIP MYPORT QID
is($w->cmd('relayok 10.0.0.1 ok.example 1234 192.0.2.1 25 NOQUEUE'), 'ok 1 ok 250 2.1.0 0', 'relay CONTINUE');
is($w->cmd('relayok 10.0.0.2 tempfail.example 1234 192.0.2.1 25 NOQUEUE'), 'ok -1 Whoops 451 4.3.0 0', 'relay TEMPFAIL');
is($w->cmd('relayok 10.0.0.3 reject.example 1234 192.0.2.1 25 NOQUEUE'), 'ok 0 GO%20AWAY 554 5.7.1 0', 'relay REJECT');
is($w->cmd('relayok 10.0.0.4 accept.example 1234 192.0.2.1 25 NOQUEUE'), 'ok 2 I%20love%20you 250 2.1.0 0', 'relay ACCEPT');
is($w->cmd('relayok 10.0.0.5 discard.example 1234 192.0.2.1 25 NOQUEUE'), 'ok 3 ? 250 2.1.0 0', 'relay DISCARD, blank message is ?');
is($w->cmd('relayok 10.0.0.6 notresp.example 1234 192.0.2.1 25 NOQUEUE'), 'ok -1 Internal%20software%20error 451 4.3.0 0', 'non-Response tempfails');
is($w->cmd('relayok 10.0.0.7 die.example 1234 192.0.2.1 25 NOQUEUE'), 'ok -1 Internal%20software%20error 451 4.3.0 0', 'dying callback tempfails');
is($w->cmd('ping'), 'PONG', 'worker survived the exception');
is($w->cmd('relayok 10.0.0.8 noisy.example 1234 192.0.2.1 25 NOQUEUE'), 'ok 1 ok 250 2.1.0 0', 'stray output does not reach the reply pipe');
is($w->cmd('ping'), 'PONG', 'replies still in step');

# helook IP NAME HELO PORT MYIP MYPORT QID
is($w->cmd('helook 10.0.0.1 x.example reject 1 2 3 NOQUEUE'), 'ok 0 GO%20AWAY 554 5.7.1 0', 'helo REJECT');
is($w->cmd('helook 10.0.0.1 x.example delay 1 2 3 NOQUEUE'), 'ok 0 slow 550 5.7.1 3', 'delay and code carried');
is($w->cmd('helook 10.0.0.1 x.example fine 1 2 3 NOQUEUE'), 'ok 1 ok 250 2.1.0 0', 'helo CONTINUE');

# senderok/recipok read COMMANDS from the message directory; the context's
# sender, ip, name, helo and qid come from there, not from the arguments.
my $msg = tempdir(CLEANUP => 1);
open(my $fh, '>', "$msg/COMMANDS") or die;
print $fh "immid1\nS<dump\@example.com>\n=daemon_port 25\nHhost.example\nI10.1.2.3\nEhelo.example\nQqid%201\n";
print $fh "R<earlier\@example.com> smtp example.com earlier\@example.com\n";
close($fh);
is($w->cmd("senderok <other\@example.com> 1.1.1.1 n h $msg NOQUEUE SIZE=10 BODY=8BITMIME"),
   'ok 0 ' . join('|', '<dump@example.com>', '10.1.2.3', 'host.example', 'helo.example', 'qid%201', $msg,
	  'SIZE=10,BODY=8BITMIME', '25', 'mmid1') . ' 554 5.7.1 0',
   'senderok context from COMMANDS plus arguments');
is($w->cmd("recipok <dump\@example.com> <s> 1.1.1.1 n <first\@example.com> h $msg Q mailer host addr NOTIFY=NEVER"),
   'ok 0 ' . join('|', '<dump@example.com>', '<first@example.com>', 'mailer', 'host', 'addr',
		  'NOTIFY=NEVER', 'smtp,example.com,earlier@example.com') . ' 554 5.7.1 0',
   'recipok context');
is($w->cmd("recipok <tempfail\@x> <s> 10.1.1.1 n <f> h $msg Q ? ? ?"), 'ok -1 Whoops 451 4.3.0 0', 'recipient TEMPFAIL');
# Postfix mail from loopback cannot be refused per recipient.
is($w->cmd("recipok <reject\@x> <s> 127.0.0.1 n <f> h $msg Q ? ? ?"), 'ok 1 GO%20AWAY 250 2.1.0 0', 'Postfix loopback rule');
is($w->cmd("recipok <discard\@x> <s> ::1 n <f> h $msg Q ? ? ?"), 'ok 3 ? 250 2.1.0 0', 'loopback DISCARD kept');
is($w->cmd("senderok <s> 1.1.1.1 n h /nonexistent/dir NOQUEUE"),
   'ok -1 Could%20not%20chdir(/nonexistent/dir):%20No%20such%20file%20or%20directory 451 4.3.0 0', 'senderok bad dir');
is($w->cmd("recipok <r> <s> 1.1.1.1 n <f> h /nonexistent/dir Q ? ? ?"),
   'ok -1 Could%20not%20chdir(/nonexistent/dir):%20No%20such%20file%20or%20directory 451 4.3.0 0', 'recipok bad dir');
my $empty = tempdir(CLEANUP => 1);
is($w->cmd("senderok <s> 1.1.1.1 n h $empty NOQUEUE"), 'ok -1 Could%20not%20read%20COMMANDS%20file 451 4.3.0 0', 'missing COMMANDS');

# map / tick
is($w->cmd('map good some%20key'), 'OK value%20of%20some%20key', 'map OK');
is($w->cmd('map none k'), 'NOTFOUND ?', 'map empty value is ?');
is($w->cmd('map bad k'), 'TEMP Internal%20software%20error', 'dying map');
is($w->cmd('tick 7'), 'tock 7', 'tick ok');
is($w->cmd('tick 2'), 'error: tick 2: Filter does not implement tick method', 'tick false');

# Unknown and garbled commands
is($w->cmd('frobnicate a b'), 'ok 0 Unknown%20command 554 5.7.1 0', 'unknown command');
is($w->cmd(''), 'ok 0 Unknown%20command 554 5.7.1 0', 'empty line');
is($w->cmd(' ping'), 'ok 0 Unknown%20command 554 5.7.1 0', 'leading space: empty command word');
is($w->cmd('ping%zz'), 'ok 0 Unknown%20command 554 5.7.1 0', 'bad escape kept literally');
is($w->cmd('_handle_ping'), 'ok 0 Unknown%20command 554 5.7.1 0', 'no handler named __handle_ping');
is($w->cmd("x\x01\xff\x00y"), 'ok 0 Unknown%20command 554 5.7.1 0', 'binary garbage');
is($w->cmd('hello a%20b c'), 'hi a b,c', 'subclass command through _handle_');
is($w->cmd('scan'), 'error: Could not chdir(): No such file or directory', 'scan without arguments');
is($w->cmd('relayok'), 'ok 1 ok 250 2.1.0 0', 'relayok without arguments still answers');
is($w->cmd('ping'), 'PONG', 'still alive');

is($w->finish(), 3, 'cleanup() return value is the exit status');
like($w->stderr_text, qr/stray print\nstray printf\nstray child output\n/, 'stray output went to stderr');

# A class overriding _reply_to_mx keeps STDOUT as the reply channel.
my $own = CoreWorker->new(filter => 't/data/core/filters/ownreply.pl', env => { MAILMUNGE_SPOOLDIR => $spool });
is($own->cmd('ping'), 'PONG', 'own _reply_to_mx printing to STDOUT');
is($own->cmd('relayok 1.2.3.4 n 1 2 3 Q'), 'ok 1 ok 250 2.1.0 0', 'verdict through own _reply_to_mx');
is($own->finish(), 0, 'exit');

# Command line checks (outside a test harness).
{
	local $ENV{HARNESS_ACTIVE};
	delete $ENV{HARNESS_ACTIVE};
	my $out = `$^X -Iperl t/data/core/filters/verdicts.pl 2>&1; echo "rc=\$?"`;
	like($out, qr/Usage: .* -server\|-serveru\|-embserver\|-embserveru\nrc=1$/s, 'no mode: usage, exit 1');
	$out = `$^X -Iperl t/data/core/filters/verdicts.pl -server -serveru 2>&1 </dev/null; echo "rc=\$?"`;
	like($out, qr/Only one of -server, -serveru, -embserver or -embserveru should be supplied\nrc=1$/s, 'two modes: exit 1');
	$out = `$^X -Iperl t/data/core/filters/verdicts.pl -embserver 2>&1; echo "rc=\$?"`;
	is($out, "rc=0\n", 'embedded mode: registers and returns');
}

done_testing();
