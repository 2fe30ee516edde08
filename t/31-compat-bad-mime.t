# Broken MIME through Mailmunge::Filter::Compat: the scan must answer "ok",
# RESULTS must end with F, and any new body must be well-formed MIME.
# (Unterminated multipart, bad base64, raw 8-bit and RFC 2231 continued
# file names, empty Content-Type, unknown encoding, deep nesting.)
use strict;
use warnings;

use Test::More;
use lib 't/data/ext/lib';
use MMTest::File qw(slurp spew);
use ExtUtil;
use MIME::Parser;
use Test::Mailmunge::Tmpdir;

my $tmp = Test::Mailmunge::Tmpdir->new();
my $FILTER = 't/data/ext/filters/trace-filter.pl';
my $n = 0;

sub scan
{
	my ($msg, $subject) = @_;
	my $dir = "$tmp->{dir}/m" . ++$n;
	# Parsing the broken input here too makes MIME-tools complain; expected.
	local $SIG{__WARN__} = sub { warn(@_) unless $_[0] =~ /^no decoder for /; };
	ExtUtil::prepare_msg_dir($dir, $msg, subject => $subject);
	my ($reply, $err) = ExtUtil::run_worker($FILTER, ["scan QID$n $dir"], timeout => 120);
	return (join("\n", @$reply), $dir, $err);
}

# The replacement body, re-parsed under the Content-Type from the M line.
sub reparse
{
	my ($dir) = @_;
	my $res = slurp("$dir/RESULTS");
	my ($m) = $res =~ /^M(.*)$/m;
	return undef unless defined($m);
	$m =~ s/%([0-9A-F]{2})/chr(hex($1))/ge;
	my $p = MIME::Parser->new;
	$p->output_to_core(1);
	$p->decode_bodies(1);
	local $SIG{__WARN__} = sub { };
	my $e = eval { $p->parse_data("MIME-Version: 1.0\nContent-Type: $m\n\n" . slurp("$dir/NEWBODY")) };
	return $e ? ($e, $p) : undef;
}

# --- Unterminated multipart: the dropped part goes, the rest stays readable
my ($reply, $dir, $err) = scan('t/data/ext/msgs/unterminated.eml', 'unterminated');
is($reply, 'ok', 'unterminated multipart: scan ok');
like(slurp("$dir/RESULTS"), qr/\nC\nF\n\z/, 'body replaced, F last');
my ($e, $p) = reparse($dir);
ok($e, 'new body parses');
is_deeply([map { $_->mime_type } $e->parts], ['text/plain', 'text/plain'], 'text part and warnings part');
like($e->parts(1)->bodyhandle->as_string, qr/^Dropped drop-unterminated\.exe$/m, 'warning for the dropped part');
like(slurp("$dir/NEWBODY"), qr/\n--never-closed--\n\z/, 'the rebuilt multipart is properly closed');

# --- Bad base64, raw 8-bit names, RFC 2231 continuations, empty type
($reply, $dir, $err) = scan('t/data/ext/msgs/broken.eml', 'broken');
is($reply, 'ok', 'broken parts: scan ok');
my $trace = slurp("$dir/TRACE");
like($trace, qr/^filter \[warn-broken\.bin\] \[\.bin\] application\/octet-stream$/m, 'part with bad base64 is offered');
# MIME-tools reports undecodable 8-bit bytes in a header as \xHH text.
like($trace, qr/^filter \[drop-\\xE9t\\xE9\.txt\] \[\.txt\] text\/plain$/m, 'raw 8-bit file name as MIME-tools reports it');
like($trace, qr/^filter \[\xe2\x82\xac-euro\.txt\] \[\.txt\] text\/plain$/m, 'RFC 2231 continued, encoded file name joined and decoded');
like($trace, qr/^filter \[\] \[\] text\/plain$/m, 'empty Content-Type treated as text/plain');
like($trace, qr/^filter_end$/m, 'walk completed');
($e) = reparse($dir);
ok($e, 'new body parses');
my @names = map { $_->head->recommended_filename // '' } $e->parts;
ok(!grep({ /^drop-/ } @names), 'dropped part is gone');
is($names[-1], 'warnings.txt', 'warnings part last');
like(slurp("$dir/RESULTS"), qr/\nF\n\z/, 'RESULTS ends with F');

# --- Deep nesting: 60 levels of multipart with an attachment at the bottom
my $depth = 60;
my $msg = "Return-Path: <deep\@example.org>\nFrom: deep\@example.org\nTo: x\@example.com\nSubject: __SUBJECT__\nMIME-Version: 1.0\n";
$msg .= "Content-Type: multipart/mixed; boundary=\"b0\"\n\n";
for my $i (1 .. $depth) {
	$msg .= "--b" . ($i - 1) . "\nContent-Type: multipart/mixed; boundary=\"b$i\"\n\n";
}
$msg .= "--b$depth\nContent-Type: text/plain\n\nbottom text\n--b$depth\nContent-Type: application/octet-stream; name=\"drop-deep.exe\"\n\nMZ\n--b$depth--\n";
for my $i (reverse 0 .. $depth - 1) {
	$msg .= "--b$i--\n";
}
spew("$tmp->{dir}/deep.eml", $msg);
($reply, $dir, $err) = scan("$tmp->{dir}/deep.eml", 'deep');
is($reply, 'ok', 'deep nesting: scan ok');
$trace = slurp("$dir/TRACE");
my $mp = () = $trace =~ /^filter_multipart /mg;
cmp_ok($mp, '>=', 1, "nested multiparts walked ($mp filter_multipart calls)");
like(slurp("$dir/RESULTS"), qr/\nF\n\z/, 'RESULTS ends with F');
if (-e "$dir/NEWBODY") {
	($e) = reparse($dir);
	ok($e, 'new body parses');
	unlike(slurp("$dir/NEWBODY"), qr/drop-deep\.exe"?\n\nMZ/, 'deep attachment dropped');
}

# --- Not MIME at all: garbage headers and binary junk
spew("$tmp->{dir}/junk.eml", "Subject: __SUBJECT__\nContent-Type: multipart/mixed\n\n\x00\x01\x02--\n--\n\xff" x 50);
($reply, $dir, $err) = scan("$tmp->{dir}/junk.eml", 'junk');
is($reply, 'ok', 'multipart without boundary and binary junk: scan ok');
like(slurp("$dir/RESULTS"), qr/F\n\z/, 'RESULTS ends with F');

done_testing();
