# Mailmunge::Filter::Compat (protocol/perl-api.md §7): the part walk and its
# quirks, the part actions, added parts and the warnings part, verdicts from the
# callbacks.  Each scan runs the filter as a real worker ("FILTER -server").
use strict;
use warnings;

use Test::More;
use lib 't/data/ext/lib';
use MMTest::File qw(slurp spew);
use ExtUtil;
use MIME::Parser;
use Test::Mailmunge::Tmpdir;

my $tmp = Test::Mailmunge::Tmpdir->new();
my $TRACE_FILTER = 't/data/ext/filters/trace-filter.pl';
my $n = 0;

# Scans $msg with $subject; returns (reply, dir).
sub scan
{
	my ($msg, $subject, %o) = @_;
	my $dir = "$tmp->{dir}/m" . ++$n;
	ExtUtil::prepare_msg_dir($dir, $msg, subject => $subject, %o);
	my ($reply, $err) = ExtUtil::run_worker($o{filter} || $TRACE_FILTER, ["scan QID$n $dir"]);
	diag($err) if $err ne '' && $ENV{TEST_VERBOSE};
	return (join("\n", @$reply), $dir);
}

sub lines { return [split(/\n/, slurp($_[0]))] }

# --- The walk: every part below the top, depth first, with decoded names
my ($reply, $dir) = scan('t/data/ext/msgs/attachments.eml', 'plain-walk');
is($reply, 'ok', 'scan ok');
is(slurp("$dir/TRACE"), slurp('t/data/ext/expected/attachments-plain-walk.TRACE'),
   'callbacks in order, with file names (RFC 2047 and RFC 2231 decoded), extensions and types');
is(slurp("$dir/RESULTS"), "Mmultipart/mixed;%20boundary=%22outer-1%22\nC\nF\n", 'RESULTS: new Content-Type, C, F');
is(slurp("$dir/NEWBODY"), slurp('t/data/ext/expected/attachments-plain-walk.NEWBODY'), 'NEWBODY bytes');
my $nb = slurp("$dir/NEWBODY");
unlike($nb, qr/filename="(?:drop-virus\.exe|silent-tracker\.gif)"|doomed/, 'dropped parts and the dropped multipart are gone');
like($nb, qr/Content-Type: text\/plain; charset="utf-8"\nContent-Disposition: inline\nContent-Transfer-Encoding: 7bit\n\nReplaced replace-macro\.doc\n/,
     'replaced part is an inline UTF-8 text part');
like($nb, qr/name="warnings\.txt"\nContent-Disposition: inline; filename="warnings\.txt"\n.*\n\nDropped drop-virus\.exe\nKept warn-notes\.txt with a warning\nDropped a multipart\/related part\n\n--outer-1--/s,
     'warnings part last, in call order, replacement text not repeated');
like(slurp("$dir/TRACE"), qr/^filter_wrapup\nlog warning action_add_entity called outside of filter_message; ignored\nwrapup-add-part undef\nlog warning action_drop called outside of filter_message; ignored\nwrapup-drop undef\n\z/m,
     'part actions in filter_wrapup are refused with a warning');

# --- Added parts: offset 0 and appended, before the warnings part
($reply, $dir) = scan('t/data/ext/msgs/attachments.eml', 'add-first add-last');
is($reply, 'ok', 'scan ok');
is(slurp("$dir/NEWBODY"), slurp('t/data/ext/expected/attachments-add-first_add-last.NEWBODY'), 'NEWBODY with added parts');
my $p = MIME::Parser->new; $p->output_to_core(1);
my $e = $p->parse_data("Content-Type: multipart/mixed; boundary=\"outer-1\"\n\n" . slurp("$dir/NEWBODY"));
is_deeply([map { $_->head->recommended_filename // '' } $e->parts], ['first.txt', '', '', '', 'warn-notes.txt', "r\x{e9}sum\x{e9}.pdf", "na\x{ef}ve plan.txt", 'last.txt', 'warnings.txt'],
	  'part order: offset-0 part first, appended part before the warnings');

# --- A forwarded message (message/rfc822) is walked like a multipart
($reply, $dir) = scan('t/data/ext/msgs/forwarded.eml', 'fw');
is($reply, 'ok', 'scan ok');
like(slurp("$dir/TRACE"), qr/^filter_multipart \[forwarded\.eml\] \[\.eml\] message\/rfc822\nfilter_multipart \[\] \[\] multipart\/mixed\nfilter \[\] \[\] text\/plain\nfilter \[drop-inner\.exe\]/m,
     'message/rfc822 part, then the parts of the forwarded message');
$nb = slurp("$dir/NEWBODY");
unlike($nb, qr/drop-(?:inner|outer)\.exe"/, 'attachments inside and outside the forwarded message dropped');
like($nb, qr/Content-Type: message\/rfc822\n.*\n\nFrom: someone\@example\.net\n.*\n--in\nContent-Type: text\/plain\n\ninner text\n--in--\n/s,
     'forwarded message kept with its header and remaining part');
like($nb, qr/\n\nDropped drop-inner\.exe\nDropped drop-outer\.exe\n\n--fw--\n\z/, 'warnings for both');

# --- Quirk: a single-part message never reaches filter()
($reply, $dir) = scan('t/data/ext/msgs/single.eml', 'single');
is($reply, 'ok', 'scan ok');
is(slurp("$dir/TRACE"), "filter_begin single\nfilter_end\nfilter_wrapup\nlog warning action_add_entity called outside of filter_message; ignored\nwrapup-add-part undef\nlog warning action_drop called outside of filter_message; ignored\nwrapup-drop undef\n",
   'no filter() call for the top-level entity (upstream behaviour)');
is(slurp("$dir/RESULTS"), "F\n", 'nothing changed');
ok(!-e "$dir/NEWBODY", 'no NEWBODY');

# --- Opt-in: filter_single_part_messages walks a single-part body
($reply, $dir) = scan('t/data/ext/msgs/single.eml', 'walk-single');
is(slurp("$dir/TRACE"), "filter_begin walk-single\nfilter [drop-me.exe] [.exe] application/octet-stream\nfilter_end\nfilter_wrapup\nlog warning action_add_entity called outside of filter_message; ignored\nwrapup-add-part undef\nlog warning action_drop called outside of filter_message; ignored\nwrapup-drop undef\n",
   'filter() sees the body of a single-part message');
my $r = lines("$dir/RESULTS");
is_deeply([@$r[0, 1]], ['JContent-Disposition 1', 'JContent-Transfer-Encoding 1'], 'attachment headers of the old top level removed');
like($r->[2], qr/^Mmultipart\/mixed;/, 'now multipart');
like(slurp("$dir/NEWBODY"), qr/Content-Type: text\/plain\nContent-Disposition: inline\nContent-Transfer-Encoding: 7bit\n\n\n--.*\n\nDropped drop-me\.exe\n/s,
     'an empty text part, then the warnings');
(my $single = slurp('t/data/ext/msgs/single.eml')) =~ s/drop-me/replace-me/g;
spew("$tmp->{dir}/single-replace.eml", $single);
($reply, $dir) = scan("$tmp->{dir}/single-replace.eml", 'walk-single');
is(slurp("$dir/RESULTS"), "IContent-Disposition 1 inline\nIContent-Transfer-Encoding 1 7bit\nMtext/plain;%20charset=%22utf-8%22\nIMIME-Version 1 1.0\nC\nF\n",
   'replaced single part becomes the whole body, headers follow');
is(slurp("$dir/NEWBODY"), "Replaced replace-me.exe\n", 'NEWBODY');
($reply, $dir) = scan('t/data/ext/msgs/plain.eml', 'walk-single');
is(slurp("$dir/RESULTS"), "F\n", 'walked but accepted: nothing changes');
like(slurp("$dir/TRACE"), qr/^filter \[\] \[\] text\/plain$/m, 'filter() was called');

# --- A single-part message with an added part becomes multipart/mixed
($reply, $dir) = scan('t/data/ext/msgs/plain.eml', 'add-last');
is($reply, 'ok', 'scan ok');
$r = lines("$dir/RESULTS");
like($r->[0], qr/^Mmultipart\/mixed;%20boundary=%22[^%]+%22$/, 'M line: multipart/mixed with a boundary');
is_deeply([@$r[1 .. $#$r]], ['IMIME-Version 1 1.0', 'C', 'F'], 'MIME-Version added, C, F');
$e = $p->parse_data("Content-Type: " . do { (my $m = $r->[0]) =~ s/^M//; $m =~ s/%20/ /g; $m =~ s/%22/"/g; $m } . "\n\n" . slurp("$dir/NEWBODY"));
is(scalar($e->parts), 2, 'two parts');
is($e->parts(0)->bodyhandle->as_string, "Just text.\n", 'original text first');
is($e->parts(1)->bodyhandle->as_string, "Last.\n", 'added part second');

# --- Top-level Content-* headers follow the rebuilt top level
($reply, $dir) = scan('t/data/ext/msgs/qp.eml', 'add-last');
$r = lines("$dir/RESULTS");
is($r->[0], 'JContent-Transfer-Encoding 1', 'QP single part made multipart: its Content-Transfer-Encoding is removed');
like($r->[1], qr/^Mmultipart\/mixed;/, 'then the M line');
($reply, $dir) = scan('t/data/ext/msgs/collapse.eml', 'collapse');
is(slurp("$dir/RESULTS"), "IContent-Disposition 1 attachment;%20filename=%22keep.pdf%22\nIContent-Transfer-Encoding 1 base64\n"
   . "Mapplication/pdf;%20name=%22keep.pdf%22\nIMIME-Version 1 1.0\nC\nF\n",
   'multipart collapsed to its base64 part: disposition and encoding follow it');
is(slurp("$dir/NEWBODY"), "JVBERi0xLjQK\n", 'NEWBODY is the encoded part body');

# --- Verdicts from callbacks
($reply, $dir) = scan('t/data/ext/msgs/attachments.eml', 'begin-reject');
is($reply, 'ok', 'scan ok');
is(slurp("$dir/RESULTS"), "B554 5.7.1 Not%20today\nF\n", 'filter_begin REJECT: one B line (upstream wrote it twice), no body change');
is(slurp("$dir/TRACE"), "filter_begin begin-reject\n", 'nothing else is called after a reject');

($reply, $dir) = scan('t/data/ext/msgs/attachments.eml', 'end-tempfail');
is(slurp("$dir/RESULTS"), "T451 4.3.0 Later,%20please\nF\n", 'filter_end TEMPFAIL; the rebuilt body is not written');
ok(!-e "$dir/NEWBODY", 'no NEWBODY after tempfail');
unlike(slurp("$dir/TRACE"), qr/filter_wrapup/, 'no filter_wrapup after tempfail');

# --- Part actions outside the walk are refused, not fatal
($reply, $dir) = scan('t/data/ext/msgs/plain.eml', 'outside');
is($reply, 'ok', 'scan ok');
like(slurp("$dir/TRACE"), qr/^outside-result 1$/m, 'inside filter_message the state exists (filter_begin may queue)');

# --- In-process: actions with no walk in progress, take_stab_at_filename
{
	package OutsideFilter;
	our @ISA = ('Mailmunge::Filter::Compat');
	sub log { my ($self, $ctx, $level, $msg) = @_; push(@{$self->{logs}}, "$level: $msg"); }
}
require Mailmunge::Filter::Compat;
require Mailmunge::Context;
my $f = OutsideFilter->new();
my $ctx = Mailmunge::Context->new(qid => 'Q1');
is($f->action_drop($ctx, 'x'), undef, 'action_drop outside filter_message does nothing');
is($f->action_add_part($ctx, 'text/plain', '7bit', "x\n"), undef, 'action_add_part outside filter_message does nothing');
is_deeply($f->{logs}, ['warning: action_drop called outside of filter_message; ignored',
		       'warning: action_add_entity called outside of filter_message; ignored'], 'and logs why');
is($f->action_accept($ctx), undef, 'plain action_accept is a no-op anywhere');

use MIME::Entity;
my $ent = MIME::Entity->build(Type => 'application/pdf', Data => ['x'], Filename => 'report.pdf');
is($f->take_stab_at_filename($ent), 'report.pdf', 'filename from the headers');
$ent = MIME::Entity->build(Type => 'text/plain', Data => ['x']);
is($f->take_stab_at_filename($ent), '', "'' when there is none");
$ent->head->replace('Content-Disposition', 'attachment; filename="=?ISO-8859-1?Q?caf=E9.txt?="');
is($f->take_stab_at_filename($ent), "caf\x{e9}.txt", 'RFC 2047 encoded word decoded');

done_testing();
