#!/usr/bin/perl
# Status tags on fd 3 (-serveru) and the embedded-mode contract
# (-embserver[u] + main::_mailmunge_do_main_loop),
# protocol/worker-protocol.md §1.2–§1.4 and §8.
use strict;
use warnings;
use Test::More;
use File::Temp qw(tempdir);
use File::Path qw(make_path);
use lib 't/data/core/lib';
use CoreWorker;
use MMTest::File qw(slurp spew);

my $tmp = tempdir(CLEANUP => 1);
make_path("$tmp/spool/mm-1");
spew("$tmp/spool/mm-1/COMMANDS", "QQFROMCMDS\nF\n");
spew("$tmp/spool/mm-1/INPUTMSG", "Subject: s\n\nbody\n");

# -serveru: tags on fd 3
my $w = CoreWorker->new(filter => 't/data/core/filters/tags.pl', mode => '-serveru',
			status_file => "$tmp/status", env => { MAILMUNGE_SPOOLDIR => "$tmp/spool" });
is($w->cmd("scan QARG $tmp/spool/mm-1"), 'ok', 'scan with tags');
like($w->cmd('relayok 1.2.3.4 n 1 2 3 NOQUEUE'), qr/^ok 0 prefork=1%20init=1%20pid=\d+ 554 5\.7\.1 0$/, 'init hooks ran once each');
is($w->finish(), 0, 'exit');
is_deeply([ $w->status_lines ], [
	'1:%20>%20Reading%20COMMANDS%20QARG',
	'0:%20no_tag%20QARG',
	'1:%20>%20Parsing%20Message%20QARG',
	'0:%20no_tag%20QARG',
	'1:%20>%20In%20filter_message%20QARG',
	'2:%20>%20Outer%20step%20QFROMCMDS',
	'3:%20>%20Inner%20QFROMCMDS',
	'2:%20Outer%20step%20QFROMCMDS',
	'1:%20In%20filter_message%20QFROMCMDS',
	'0:%20no_tag%20QARG',
	'1:%20>%20Writing%20new%20body%20QFROMCMDS',
	'0:%20no_tag%20QFROMCMDS',
	'1:%20>%20In%20filter_wrapup%20QARG',
	'0:%20no_tag%20QARG',
	'',
], 'status tag lines (pop restores the previous tag)');

# -server: no tags even if fd 3 is open
$w = CoreWorker->new(filter => 't/data/core/filters/tags.pl', mode => '-server',
		     status_file => "$tmp/status2", env => { MAILMUNGE_SPOOLDIR => "$tmp/spool" });
is($w->cmd('ping'), 'PONG', 'ping');
$w->finish();
is(slurp("$tmp/status2"), '', 'no tags without -serveru');

# -serveru with fd 3 closed: tags silently off, worker fine
{
	local $ENV{MAILMUNGE_SPOOLDIR} = "$tmp/spool";
	my $out = `printf 'ping\\n' | $^X -Iperl t/data/core/filters/tags.pl -serveru 3>&- 2>&1`;
	is($out, "PONG\n", 'no fd 3: no tags, no errors');
}

# Embedded mode: load once with -embserver, run the loop in forked children.
my $driver = "$tmp/driver.pl";
spew($driver, <<'PERL');
use strict;
use warnings;
no warnings 'once';
my ($filter, $mode) = @ARGV;
@ARGV = ($mode);
my $rc = do $filter;
die("load failed: $@") if $@;
die("run() should return 0 in embedded mode") unless defined($main::MAILMUNGE_FILTER);
# Status tags: fd 3 was closed while the filter loaded; open it now, as a
# forking parent would before calling the loop.
open(my $status, '>', $ENV{STATUS_FILE}) or die;
my $pid = fork();
die unless defined($pid);
if ($pid == 0) {
	main::_mailmunge_do_main_loop();
	exit(99);
}
waitpid($pid, 0);
print STDERR "child-exit=", $? >> 8, "\n";
exit(0);
PERL
{
	local $ENV{MAILMUNGE_SPOOLDIR} = "$tmp/spool";
	local $ENV{STATUS_FILE} = "$tmp/status3";
	my $out = `printf 'ping\\nrelayok 1.2.3.4 n 1 2 3 NOQUEUE\\nscan Q3 $tmp/spool/mm-none\\n' | $^X -Iperl $driver ./t/data/core/filters/tags.pl -embserveru 3>&- 2>&1`;
	like($out, qr/^PONG\nok 0 prefork=1%20init=1%20pid=\d+ 554 5\.7\.1 0\nerror: Could not chdir\(\S+\): No such file or directory\nchild-exit=0\n$/,
	     'embedded: loop in a forked child, initialize in the child');
	is(slurp("$tmp/status3"), '', 'no tags for commands that push none');
	$out = `printf 'scan QE $tmp/spool/mm-1\\n' | $^X -Iperl $driver ./t/data/core/filters/tags.pl -embserveru 3>&- 2>&1`;
	like($out, qr/^error: Could not mkdir\(\.\/Work\): File exists\nchild-exit=0\n$/, 'embedded scan');
	like(slurp("$tmp/status3"), qr/^1:%20>%20Reading%20COMMANDS%20QE\n0:%20no_tag%20QE\n$/, 'tags reach the fd opened after loading');
}
my $out = `$^X -Iperl -MMailmunge::Filter -e 'main::_mailmunge_do_main_loop()' 2>&1; echo "rc=\$?"`;
like($out, qr/\A(?:[^\n]*\n){3}rc=42\n\z/, 'no registered filter: three lines, exit 42');
$out = `$^X -Iperl -e '\@ARGV=("-embserver"); do "./t/data/core/filters/tags.pl"; print \$@ ? "died: \$@" : "ok\\n"; do "./t/data/core/filters/tags.pl"; print \$@ ? "died: \$@" : "ok\\n";' 2>/dev/null`;
like($out, qr/^ok\ndied: Filter already registered/, 'second registration dies');

done_testing();
