# Test::Mailmunge::Utils (protocol/perl-api.md §11.2) and the SMTP client of
# Test::Mailmunge::RegressionUtils; start_multiplexor / mm_mx_ctrl /
# stop_multiplexor against our own mailmunge-multiplexor and mm-mx-ctrl.
use strict;
use warnings;

use Test::More;
use File::Spec;
use lib 't/data/ext/lib';
use MMTest::File qw(slurp spew);
use ExtUtil;
use Test::Mailmunge::Tmpdir;
use Test::Mailmunge::Utils;
use Test::Mailmunge::RegressionUtils;
use Test::Mailmunge::SMTPServer;

my $tmp = Test::Mailmunge::Tmpdir->new();
my $d = $tmp->{dir};

# --- make_test_context
my $ctx = make_test_context();
is_deeply([map { $ctx->$_ } qw(sender hostip hostname connecting_ip connecting_name helo first_recip cwd qid)],
	  ['test@example.com', '192.168.1.1', 'server.example.com', '192.168.1.1', 'server.example.com',
	   'server.example.com', 'good@example.com', '.', 'queue-id-here'], 'make_test_context fields');
is_deeply($ctx->recipients, ['good@example.com'], 'make_test_context recipients');

# --- parse_and_copy_msg and write_commands_file
mkdir("$d/m1");
$ctx = parse_and_copy_msg("$d/m1", 't/data/ext/msgs/exe.eml', 'my subject');
ok($ctx->mime_entity, 'parsed');
is($ctx->subject, 'my subject', 'subject substituted and read back');
is($ctx->sender, '<grace@example.org>', 'sender from Return-Path');
(my $want = slurp('t/data/ext/msgs/exe.eml')) =~ s/__SUBJECT__/my subject/;
is(slurp("$d/m1/INPUTMSG"), $want, 'INPUTMSG');
like(slurp("$d/m1/PRISTINE_HEADERS"), qr/^X-Delete-Us-All:\n\ttwo, folded\n/m, 'PRISTINE_HEADERS keeps folding');
like(slurp("$d/m1/HEADERS"), qr/^X-Delete-Us-All: two, folded\n/m, 'HEADERS unfolded');
unlike(slurp("$d/m1/HEADERS"), qr/^\s/m, 'no continuation lines in HEADERS');

$ctx->recipients(['<heidi@example.com>', '<ivan@example.com>']);
$ctx->qid('Q7');
$ctx->connecting_ip('192.0.2.5');
$ctx->connecting_name('client example');
$ctx->helo('helo.example');
$ctx->sendmail_macro('daemon_port', '25');
$ctx->sendmail_macro('auth_authen', 'x y');
write_commands_file("$d/m1", $ctx);
is(slurp("$d/m1/COMMANDS"),
   "S<grace\@example.org>\nI192.0.2.5\nHclient%20example\nQQ7\nEhelo.example\nUmy%20subject\n"
   . "=auth_authen x%20y\n=daemon_port 25\nR<heidi\@example.com> ? ? ?\nR<ivan\@example.com> ? ? ?\nF\n",
   'COMMANDS file');

spew("$d/m1/RESULTS", "HX-A b\nC\nF\n");
ok(results_has_lines("$d/m1", 'HX-A b', 'F'), 'results_has_lines: present');
ok(!results_has_lines("$d/m1", 'HX-A b', 'D'), 'results_has_lines: one missing');
ok(!results_has_lines("$d/none", 'F'), 'results_has_lines: no RESULTS');

# --- smtp_send (RegressionUtils) against the test SMTP server
my $srv = Test::Mailmunge::SMTPServer->new(rcpt => sub { $_[0] =~ /nobody/ ? '550 5.1.1 No such user' : '250 2.1.5 Ok' });
local $ENV{MM_TEST_MAILDROP_DIR} = "$d/drop";
is_deeply(smtp_send('127.0.0.1', 'me.example', 'a@example.org', ['b@example.com'], "Subject: x\n\n.hidden dot\nbody\n", $srv->{port}),
	  { stage => 'quit', code => 200, dsn => '2.0.0', txt => 'OK' }, 'smtp_send: success');
is_deeply(smtp_send('127.0.0.1', 'me.example', 'a@example.org', ['b@example.com', 'nobody@example.com'], "Subject: x\n\nbody\n", $srv->{port}),
	  { stage => 'rcpt', code => 550, dsn => '5.1.1', txt => 'No such user' }, 'smtp_send: rejected recipient');
$srv->stop_server();
is(maildrop_msg_path(), "$d/drop/maildrop.msg", 'maildrop path follows MM_TEST_MAILDROP_DIR');

# --- No directory anyone can write (protocol/SECURITY.md §8)
my $mode = sub { (stat($_[0]))[2] & 07777 };
ok(!($mode->($d) & 0002), 'Tmpdir: not world-writable');
ok(!($mode->("$d/m1") & 0002), 'parse_and_copy_msg: not world-writable');
SKIP: {
	skip('as root only: the directories go to the worker user', 4) unless $> == 0;
	my $uid = (getpwnam(test_worker_user()))[2];
	skip('no user ' . test_worker_user(), 4) unless defined($uid);
	is((stat($d))[4], $uid, 'Tmpdir: owned by the worker user');
	is($mode->($d), 0750, 'Tmpdir: mode 0750');
	is((stat("$d/m1"))[4], $uid, 'parse_and_copy_msg: owned by the worker user');
	is($mode->("$d/m1"), 0750, 'parse_and_copy_msg: mode 0750');
}

# --- clean_maildrop_dir empties only a real directory of ours or root's
{
	my $victim = "$d/victim";
	mkdir($victim);
	spew("$victim/keep", "x");
	symlink($victim, "$d/link") or die "symlink: $!";
	local $ENV{MM_TEST_MAILDROP_DIR} = "$d/link";
	my @warned;
	local $SIG{__WARN__} = sub { push(@warned, @_) };
	clean_maildrop_dir();
	ok(-e "$victim/keep", 'a symbolic link as the maildrop directory is not followed');
	like("@warned", qr/Not emptying/, '... and says so');
	$ENV{MM_TEST_MAILDROP_DIR} = $victim;
	clean_maildrop_dir();
	ok(!-e "$victim/keep", 'our own maildrop directory is emptied');
	SKIP: {
		skip('as root only: needs a directory owned by another user', 1) unless $> == 0;
		my $other = (getpwnam('nobody'))[2];
		spew("$victim/keep", "x");
		chown($other, -1, $victim);
		clean_maildrop_dir();
		ok(-e "$victim/keep", "another user's directory is not emptied");
	}
}

# --- The multiplexor helpers with our binaries
SKIP: {
	my $mx = mailmunge_program_path('mailmunge-multiplexor');
	my $ctl = mailmunge_program_path('mm-mx-ctrl');
	skip('mailmunge-multiplexor / mm-mx-ctrl not built (cargo build --bins)', 8) unless $mx && $ctl;
	my $filter = File::Spec->rel2abs('t/data/ext/filters/test-filter.pl');
	ok(start_multiplexor($d, $filter), "start_multiplexor ($mx)") or diag(`tail -20 /var/log/syslog 2>/dev/null`);
	is(mm_mx_ctrl($d, 'relayok', '10.0.0.1', 'h.example', '4444', '127.0.0.1', '25', 'NOQUEUE'), 'ok 1 ok 250 2.1.0 0', 'relayok CONTINUE (decoded by mm-mx-ctrl)');
	is(mm_mx_ctrl($d, 'relayok', '10.0.0.3', 'h.example', '4444', '127.0.0.1', '25', 'NOQUEUE'), 'ok 0 GO AWAY 554 5.7.1 0', 'relayok REJECT');
	like(mm_mx_ctrl($d, 'scan', 'NOQUEUE', "$d/mm-missing"), qr/^error: Could not chdir/, 'scan of a missing directory');

	my $m = "$d/mm-foobar";
	mkdir($m, 0755);
	$ctx = parse_and_copy_msg($m, 't/data/ext/msgs/exe.eml', 'addhdr chgsub');
	$ctx->recipients(['<heidi@example.com>']);
	write_commands_file($m, $ctx);
	is(mm_mx_ctrl($d, 'scan', 'qIa12345', $m), 'ok', 'scan through the multiplexor');
	ok(results_has_lines($m, 'HX-Added I%20am%20new!', 'ISubject 1 [New%20subject]%20addhdr%20chgsub', 'C', 'F'), 'RESULTS lines');
	is(slurp("$m/NEWBODY"), slurp('t/data/ext/expected/exe.NEWBODY'), 'NEWBODY as from a direct worker');
	ok(stop_multiplexor($d), 'stop_multiplexor waits for the exit');
}

done_testing();
