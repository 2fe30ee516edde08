#!/usr/bin/perl
# Mailmunge::Context: accessors, message actions and the RESULTS lines
# they write, COMMANDS reading, quarantine layout (protocol/perl-api.md §5,
# protocol/worker-protocol.md §6.3 and §7).
use strict;
use warnings;
use Test::More;
use File::Temp qw(tempdir);
use Cwd qw(getcwd);
use Mailmunge::Filter;
use Mailmunge::Context;
use Mailmunge::Constants;
use Mailmunge::Response;
use MMTest::File qw(slurp spew);

my $top = getcwd();

# Construction and accessors
my $ctx = Mailmunge::Context->new(qid => 'Q1', sender => '<A@Example.COM>', recipients => ['<B@x.org>', 'c@Y.org'], hostip => undef);
is($ctx->{qid}, 'Q1', 'stored under the accessor name');
ok(!exists($ctx->{hostip}), 'undef values are dropped');
is($ctx->canonical_sender, 'a@example.com', 'canonical_sender');
is_deeply($ctx->canonical_recipients, ['b@x.org', 'c@y.org'], 'canonical_recipients');
is($ctx->sendmail_macro('daemon_port'), undef, 'unset macro');
is($ctx->sendmail_macro('daemon_port', 25), 25, 'set macro');
is($ctx->mta_macro('daemon_port'), 25, 'mta_macro alias');
is($ctx->{sendmail_macros}->{daemon_port}, 25, 'macros live in {sendmail_macros}');
is($ctx->privdata('k', 'v'), 'v', 'privdata set');
is($ctx->privdata('k'), 'v', 'privdata get');
is($ctx->message_rejected, 0, 'not rejected');
is(Mailmunge::Context->new()->canonical_recipients->[0], undef, 'no recipients: empty list');

# Outside message context every action refuses.
is($ctx->action_bounce('x'), 0, 'bounce refused outside message context');
is($ctx->action_add_header('X', 'y'), 0, 'add_header refused');
is($ctx->action_quarantine_entire_message('r'), undef, 'quarantine refused');
is($ctx->in_message_context(bless({}, 'Mailmunge::Filter')), 0, 'a reference argument only checks');
is($ctx->in_message_context(), 0, 'still not in message context');
is($ctx->in_message_context(bless({}, 'Mailmunge::Filter'), 1), 1, 'old two-argument form sets');
is($ctx->in_message_context(), 1, 'now in message context');
$ctx->in_message_context(0);

# Actions and RESULTS lines
my $dir = tempdir(CLEANUP => 1);
chdir($dir) or die;
spew('HEADERS', "Received: a\nX-Delete-Us-All: 1\nx-delete-us-all: 2\nX-Delete-Us-All-Not: 3\nSubject: s\n");
$ctx = Mailmunge::Context->new(qid => 'Q1', sender => '<s@x>', recipients => ['<r@x>']);
is($ctx->in_message_context(1), 1, 'set message context');
is($ctx->action_change_header('Subject', '[New subject] chgsub'), 1, 'change header');
$ctx->action_change_header('X-Idx', 'v', 3);
is($ctx->action_delete_header('X-Delete-Me'), 1, 'delete header');
is($ctx->action_delete_all_headers('X-Delete-Us-All'), 1, 'delete all');
is($ctx->change_sender('<changed@x>'), 1, 'change_sender');
is($ctx->add_recipient('<add@x>'), 1, 'add_recipient');
is($ctx->delete_recipient('<del@x>'), 1, 'delete_recipient');
is($ctx->action_add_header('X-Added', 'I am new!'), 1, 'add header');
is($ctx->action_insert_header('X-Ins', 'top', 0), 1, 'insert at 0');
is($ctx->action_insert_header('X-Ins2', 'default'), 1, 'insert default position');
is($ctx->action_insert_header('X-Ins3', 'minus one', -1), 1, 'insert -1');
is($ctx->action_insert_header('X-Ins4', 'two', 2), 1, 'insert 2');
ok($ctx->action_sm_quarantine("Quote's \"here\" 100%"), 'sm quarantine');
is($ctx->action_from_response('not a response'), 0, 'action_from_response ignores non-Response');
is($ctx->action_from_response(Mailmunge::Response->CONTINUE()), 0, 'CONTINUE does nothing');
is($ctx->action_from_response(Mailmunge::Response->REJECT(message => 'No way', code => 550, dsn => '5.1.1')), 1, 'REJECT -> bounce');
is($ctx->action_bounce(), 1, 'bounce with defaults');
is($ctx->action_bounce('x', 450, '4.1.1'), 1, 'bounce with wrong-class code');
is($ctx->action_tempfail(), 1, 'tempfail defaults');
is($ctx->action_tempfail('later', 421, '4.7.0'), 1, 'tempfail with code');
is($ctx->action_discard('ignored'), 1, 'discard');
is($ctx->message_rejected, 1, 'rejected now');
ok($ctx->bounced && $ctx->tempfailed && $ctx->discarded, 'flags set');
$ctx->_signal_changed();
$ctx->_signal_complete();
is(slurp('RESULTS'), join('', map { "$_\n" }
	'ISubject 1 [New%20subject]%20chgsub',
	'IX-Idx 3 v',
	'JX-Delete-Me 1',
	'JX-Delete-Us-All 2',
	'JX-Delete-Us-All 1',
	'f<changed@x>',
	'R<add@x>',
	'S<del@x>',
	'HX-Added I%20am%20new!',
	'NX-Ins 0 top',
	'HX-Ins2 default',
	'HX-Ins3 minus%20one',
	'NX-Ins4 2 two',
	'QQuote%27s%20%22here%22%20100%25',
	'B554 5.7.1 No%20way',
	'B554 5.7.1 Forbidden%20for%20policy%20reasons',
	'B554 5.7.1 x',
	'T451 4.3.0 Try%20again%20later',
	'T421 4.7.0 later',
	'D',
	'C',
	'F'), 'RESULTS lines, in call order');

# Resent mail: bounce becomes discard, tempfail refused.
unlink('RESULTS');
$ctx = Mailmunge::Context->new(was_resent => 1);
$ctx->in_message_context(1);
is($ctx->action_tempfail('x'), 0, 'tempfail refused for resent mail');
is($ctx->action_bounce('x'), 1, 'bounce of resent mail...');
ok($ctx->discarded && !$ctx->bounced, '...is a discard');
$ctx->_close_results_fh();
is(slurp('RESULTS'), "D\n", 'only a D line');

# Over-long lines are cut at 8190 bytes without a broken escape.
unlink('RESULTS');
$ctx = Mailmunge::Context->new();
$ctx->in_message_context(1);
$ctx->action_add_header('X-Long', 'a' x 9000);
$ctx->action_add_header('X-Long', ('a' x 8181) . ' b');
$ctx->_close_results_fh();
my @lines = split(/\n/, slurp('RESULTS'));
is(length($lines[0]), 8190, 'truncated to 8190 bytes');
is(substr($lines[1], -3), 'aaa', 'partial %XX escape dropped');
ok(length($lines[1]) < 8190, 'shorter than the limit then');

# delete_all_headers without HEADERS
unlink('HEADERS');
is($ctx->action_delete_all_headers('X'), undef, 'no HEADERS file: undef');

# new_mime_entity
$ctx = Mailmunge::Context->new();
is($ctx->new_mime_entity('E1'), 'E1', 'set replacement');
is($ctx->mime_entity, 'E1', 'also the mime_entity');
$ctx->in_filter_wrapup(1);
is($ctx->new_mime_entity('E2'), undef, 'ignored in wrapup');
is($ctx->{new_mime_entity}, 'E1', 'replacement unchanged');
$ctx->in_filter_wrapup(0);
is($ctx->new_mime_entity(), 'E1', 'getter');

# Quarantine layout
my $q = tempdir(CLEANUP => 1);
Mailmunge::Constants->_set('Path:QUARANTINEDIR', $q);
spew('HEADERS', "Subject: unfolded\n");
spew('PRISTINE_HEADERS', "Subject:\n unfolded\n");
spew('INPUTMSG', "Subject:\n unfolded\n\nbody\n");
$ctx = Mailmunge::Context->new(sender => '<continue@example.com>', qid => 'QID9', recipients => ['<a@x>', '<b@y>']);
$ctx->in_message_context(1);
my $qd = $ctx->action_quarantine_entire_message('Go to your room NOW, young message!');
like($qd, qr{^\Q$q\E/\d{4}-\d\d-\d\d-\d\d/qdir-\d{4}-\d\d-\d\d-\d\d\.\d\d\.\d\d-0001$}, 'quarantine dir name');
is($ctx->message_quarantined, $qd, 'message_quarantined');
is($ctx->action_quarantine_entire_message('again'), $qd, 'second call returns the same dir');
is(slurp("$qd/MSG.0"), "Go to your room NOW, young message!\n", 'MSG.0');
is(slurp("$qd/SENDER"), "<continue\@example.com>\n", 'SENDER');
is(slurp("$qd/MTA-QID"), "QID9\n", 'MTA-QID');
is(slurp("$qd/RECIPIENTS"), "<a\@x>\n<b\@y>\n", 'RECIPIENTS');
is(slurp("$qd/HEADERS"), "Subject: unfolded\n", 'HEADERS');
is(slurp("$qd/PRISTINE_HEADERS"), "Subject:\n unfolded\n", 'PRISTINE_HEADERS from the pristine file');
is(slurp("$qd/ENTIRE_MESSAGE"), "Subject:\n unfolded\n\nbody\n", 'ENTIRE_MESSAGE');
is((stat($qd))[2] & 0777, 0750 & ~umask(), 'directory mode 0750 less umask');
my $ctx2 = Mailmunge::Context->new();
$ctx2->in_message_context(1);
my $qd2 = $ctx2->action_quarantine_entire_message('');
ok($qd2 && $qd2 ne $qd, 'second message gets its own directory');
ok(!-e "$qd2/MSG.0" && !-e "$qd2/SENDER" && !-e "$qd2/RECIPIENTS" && !-e "$qd2/MTA-QID", 'optional files absent');
Mailmunge::Constants->_set('Path:QUARANTINEDIR', "$q/does/not/exist");
my $ctx3 = Mailmunge::Context->new();
$ctx3->in_message_context(1);
is($ctx3->action_quarantine_entire_message('r'), undef, 'quarantine fails cleanly');

# Older spellings on the filter object still reach the Context.
unlink('RESULTS');
my $old = Mailmunge::Context->new();
$old->in_message_context(1);
Mailmunge::Filter->_write_result_line($old, 'H', 'X-Old', 'a b');
Mailmunge::Filter->_signal_changed($old);
Mailmunge::Filter->_signal_complete($old);
is(slurp('RESULTS'), "HX-Old a%20b\nC\nF\n", 'filter-level RESULTS helpers');

# copy_or_link
is(Mailmunge::Context->copy_or_link('INPUTMSG', 'COPY'), 1, 'copy_or_link');
is(slurp('COPY'), slurp('INPUTMSG'), 'same content');
is(Mailmunge::Context->copy_or_link('NOPE', 'COPY2'), 0, 'missing source');

# COMMANDS reader
spew('COMMANDS', join('', map { "$_\n" }
	'iMMID', 'S<s%40x>', 'sSIZE=100', 'sBODY=8BITMIME', '=_ a%20b', '=daemon_port', '= ignored',
	'Hname', 'I1.2.3.4', 'Eh%20elo', 'Q', 'QQID1', 'X<id@x>',
	'R<r1@x> smtp x.org r1@x', 'rNOTIFY=NEVER', 'rORCPT=rfc822;r1@x', 'R<r2@x>',
	'!', '?', 'Ufirst', 'Usecond', 'Z unknown', '', 'F', 'Safter-F'));
open(my $fh, '<', 'COMMANDS') or die;
$ctx = Mailmunge::Context->new()->_read_command_filehandle('Mailmunge::Filter', $fh, 1);
close($fh);
ok($ctx, 'read COMMANDS');
is($ctx->mailmunge_id, 'MMID', 'i');
is($ctx->sender, '<s@x>', 'S decoded');
is_deeply($ctx->esmtp_args, ['SIZE=100', 'BODY=8BITMIME'], 's lines');
is($ctx->sendmail_macro('_'), 'a b', '= macro decoded');
is($ctx->sendmail_macro('daemon_port'), '', 'macro without value');
is($ctx->hostname . '|' . $ctx->connecting_name, 'name|name', 'H');
is($ctx->hostip . '|' . $ctx->connecting_ip, '1.2.3.4|1.2.3.4', 'I');
is($ctx->helo, 'h elo', 'E');
is($ctx->qid, 'QID1', 'Q (an empty Q line is ignored)');
is($ctx->message_id, '<id@x>', 'X');
is_deeply($ctx->recipients, ['<r1@x>', '<r2@x>'], 'R lines');
is_deeply($ctx->get_recipient_mailer('<r1@x>'), ['smtp', 'x.org', 'r1@x'], 'mailer triple');
is_deeply($ctx->get_recipient_mailer('<r2@x>'), ['?', '?', '?'], 'missing mailer pieces are ?');
is_deeply($ctx->recipient_esmtp_args, {'<r1@x>' => ['NOTIFY=NEVER', 'ORCPT=rfc822;r1@x']}, 'r lines');
ok($ctx->suspicious_chars_in_headers && $ctx->suspicious_chars_in_body, '! and ?');
is($ctx->subject, 'first', 'first subject');
is($ctx->subject_count, 2, 'subject count');

spew('COMMANDS', "Sx\nQy\n");
open($fh, '<', 'COMMANDS') or die;
is(Mailmunge::Context->new()->_read_command_filehandle('Mailmunge::Filter', $fh, 1), undef, 'missing F with need_f');
close($fh);
open($fh, '<', 'COMMANDS') or die;
$ctx = Mailmunge::Context->new()->_read_command_filehandle('Mailmunge::Filter', $fh, 0);
close($fh);
is($ctx->sender, 'x', 'partial COMMANDS fine without need_f');
is($ctx->recipients, undef, 'no R lines: recipients undef');
is($ctx->esmtp_args, undef, 'no s lines: esmtp_args undef');

# The reader skips the decoder for lines without '%' only when nothing
# could tell: escaped R pieces are still decoded, a filter's own decoder
# and a Context subclass's own recipient store are still called.
spew('COMMANDS', join('', map { "$_\n" } 'R<r%20three@x> mail%20er h%25 a', 'R<plain@x> m', 'F'));
open($fh, '<', 'COMMANDS') or die;
$ctx = Mailmunge::Context->new()->_read_command_filehandle('Mailmunge::Filter', $fh, 1);
close($fh);
is_deeply($ctx->recipients, ['<r three@x>', '<plain@x>'], 'R pieces decoded, plain ones kept');
is_deeply($ctx->get_recipient_mailer('<r three@x>'), ['mail er', 'h%', 'a'], 'escaped mailer triple');
is_deeply($ctx->get_recipient_mailer('<plain@x>'), ['m', '?', '?'], 'plain triple, missing pieces ?');
{
	package T::CountingFilter;
	our @ISA = ('Mailmunge::Filter');
	our @SEEN;
	sub _percent_decode { my ($self, @a) = @_; push(@SEEN, $a[0]); return $self->SUPER::_percent_decode(@a); }
	package T::OwnStoreContext;
	our @ISA = ('Mailmunge::Context');
	sub _push_recipient { my ($self, $r) = @_; push(@{$self->{recipients}}, "seen:$r"); return; }
}
open($fh, '<', 'COMMANDS') or die;
$ctx = T::OwnStoreContext->new()->_read_command_filehandle('T::CountingFilter', $fh, 1);
close($fh);
is_deeply(\@T::CountingFilter::SEEN,
	['R<r%20three@x> mail%20er h%25 a', '<r%20three@x>', 'mail%20er', 'h%25', 'a', 'R<plain@x> m', '<plain@x>', 'm', 'F'],
	"a filter's own decoder sees every line and piece");
is_deeply($ctx->recipients, ['seen:<r three@x>', 'seen:<plain@x>'], "a Context subclass's own _push_recipient is used");
is_deeply($ctx->get_recipient_mailer('<plain@x>'), ['m', '?', '?'], 'and the triple still stored');

# Filter::read_commands_file
my $f = bless {}, 'Mailmunge::Filter';
$ctx = $f->read_commands_file(undef, 0);
isa_ok($ctx, 'Mailmunge::Context');
ok(defined($ctx->mta_is_postfix), 'mta_is_postfix preset');
unlink('COMMANDS');
is($f->read_commands_file(undef, 1), undef, 'missing COMMANDS: undef');

chdir($top);
done_testing();
