# Mailmunge::Action::Boilerplate in process (protocol/perl-api.md §9.1): where
# the text goes in text/plain and text/html parts, one part or all, what is left
# alone, character sets, and failures.
use strict;
use warnings;

use Test::More;
use MIME::Parser;
use Mailmunge::Context;
use Mailmunge::Action::Boilerplate;
use Test::Mailmunge::Tmpdir;

package LogFilter;
sub new { return bless { logs => [] }, shift }
sub log { my ($self, $ctx, $level, $msg) = @_; push(@{$self->{logs}}, "$level: $msg"); }
package main;

my $tmp = Test::Mailmunge::Tmpdir->new();
my $n = 0;

sub parse
{
	my ($msg, $core) = @_;
	my $p = MIME::Parser->new;
	if ($core) {
		$p->output_to_core(1);
	} else {
		my $d = "$tmp->{dir}/w" . ++$n;
		mkdir($d);
		$p->output_dir($d);
	}
	return $p->parse_data($msg);
}

sub body { my ($e) = @_; return $e->bodyhandle->as_string; }

sub mp
{
	my (@parts) = @_;
	my $m = "MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"B\"\n\n";
	$m .= "--B\n$_\n" foreach @parts;
	return "$m--B--\n";
}

my $f = LogFilter->new();
my $bp = Mailmunge::Action::Boilerplate->new($f);
my $ctx = Mailmunge::Context->new();

# text/plain, start and end; first part only vs all
my $msg = mp("Content-Type: text/plain\n\none\n", "Content-Type: text/plain\n\ntwo\n");
my $e = parse($msg);
is($bp->add_text_boilerplate($ctx, $e, 'TOP', 1), 1, 'changed: 1');
is(body($e->parts(0)), "TOP\none\n", 'at start, newline added');
is(body($e->parts(1)), "two\n", 'second part untouched (one part only)');
is($ctx->new_mime_entity, $e, 'new_mime_entity set to the top-level entity');
is($bp->add_text_boilerplate($ctx, $e, "END\n", 0, 1), 1, 'all parts');
is(body($e->parts(0)), "TOP\none\nEND\n", 'first part at end');
is(body($e->parts(1)), "two\nEND\n", 'second part at end');

# A part whose last line lacks its newline: as upstream, nothing is put
# between that line and the boilerplate (protocol/perl-ext.md, Plug-ins).
foreach my $c (
	# [type, original body, boilerplate, at_start, expected body]
	['text/plain', 'no newline', 'FOOT', 0, "no newlineFOOT\n"],
	['text/plain', 'no newline', "FOOT\n", 1, "FOOT\nno newline"],
	['text/plain', "two\nlines", "\n-- \nsig", 0, "two\nlines\n-- \nsig\n"],
	['text/html', 'bare text', '<b>B</b>', 0, "bare text<b>B</b>\n"],
	['text/html', '<p>para</p>', '<b>B</b>', 0, "<p>para</p><b>B</b>\n"],
	['text/html', '<p>para</p>', '<b>B</b>', 1, "<b>B</b>\n<p>para</p>"],
	['text/html', "<body>\n<p>x</p>\n</body>", '<b>B</b>', 0, "<body>\n<p>x</p>\n<b>B</b>\n</body>"],
    ) {
	my ($type, $orig, $text, $start, $want) = @$c;
	my $name = "$type without final newline, " . ($start ? 'start' : 'end') . ": [$orig]";
	my $add = $type eq 'text/html' ? 'add_html_boilerplate' : 'add_text_boilerplate';
	$e = parse("Content-Type: $type\n\n$orig");
	is(body($e), $orig, "$name: parsed without newline");
	is($bp->$add($ctx, $e, $text, $start), 1, "$name: changed");
	is(body($e), $want, "$name: exact bytes");
}

# The same inside a multipart message, checked on the body the filter
# writes out (NEWBODY is print_body of the entity): all text/plain parts,
# then all text/html parts, at the end.
$e = parse(mp("Content-Type: text/plain\n\nfirst", "Content-Type: text/html\n\n<p>second</p>",
	      "Content-Type: text/plain\n\nthird\n"));
is($bp->add_text_boilerplate($ctx, $e, 'TXT', 0, 1), 1, 'multipart: text parts changed');
is($bp->add_html_boilerplate($ctx, $e, '<i>H</i>', 0, 1), 1, 'multipart: html part changed');
is($e->stringify_body,
   "--B\nContent-Type: text/plain\n\nfirstTXT\n\n"
   . "--B\nContent-Type: text/html\n\n<p>second</p><i>H</i>\n\n"
   . "--B\nContent-Type: text/plain\n\nthird\nTXT\n\n--B--\n",
   'multipart: exact body bytes, boilerplate glued to the unterminated lines');
$e = parse(mp("Content-Type: text/plain\n\nfirst", "Content-Type: text/html\n\n<p>second</p>"));
$bp->add_text_boilerplate($ctx, $e, 'TXT', 1);
$bp->add_html_boilerplate($ctx, $e, '<i>H</i>', 1);
is($e->stringify_body,
   "--B\nContent-Type: text/plain\n\nTXT\nfirst\n"
   . "--B\nContent-Type: text/html\n\n<i>H</i>\n<p>second</p>\n--B--\n",
   'multipart at start: exact body bytes');

# Attachments and other types are left alone; nothing to do returns 0.
$ctx = Mailmunge::Context->new();
$e = parse(mp("Content-Type: text/plain\nContent-Disposition: attachment; filename=\"a.txt\"\n\nfile\n",
	      "Content-Type: text/csv\n\na,b\n"));
is($bp->add_text_boilerplate($ctx, $e, 'X', 1, 1), 0, 'attachment and text/csv: 0');
is(body($e->parts(0)), "file\n", 'attachment unchanged');
is($ctx->new_mime_entity, undef, 'no new body requested');

# HTML
my %html = (
	'<html><body class="x"><p>hi</p></body></html>' => [
		'<html><body class="x"><b>B</b>' . "\n" . '<p>hi</p></body></html>',
		'<html><body class="x"><p>hi</p><b>B</b>' . "\n" . '</body></html>'],
	'<div>no body tag</div>' => [
		"<b>B</b>\n<div>no body tag</div>",
		"<div>no body tag</div><b>B</b>\n"],
	'<p>para</p></html>' => [
		"<b>B</b>\n<p>para</p></html>",
		"<p>para</p><b>B</b>\n</html>"],
);
foreach my $h (sort keys %html) {
	foreach my $start (1, 0) {
		$e = parse("Content-Type: text/html\n\n$h");
		is($bp->add_html_boilerplate($ctx, $e, '<b>B</b>', $start), 1, "html [$h] " . ($start ? 'start' : 'end'));
		is(body($e), $html{$h}[$start ? 0 : 1], '... body');
	}
}
$e = parse("Content-Type: text/html\n\njust text, no tags");
is($bp->add_html_boilerplate($ctx, $e, '<b>B</b>', 1), 0, 'html start without body/p/div/a: not changed');
is(body($e), 'just text, no tags', '... body unchanged');

# Character sets: a Perl character string is converted to the part's charset.
$e = parse(mp("Content-Type: text/plain; charset=iso-8859-1\n\nx\n", "Content-Type: text/html; charset=us-ascii\n\n<body>y</body>\n"));
$bp->add_text_boilerplate($ctx, $e, "caf\x{e9} \x{20ac}", 0);
is(body($e->parts(0)), "x\ncaf\xe9 ?\n", 'text: Latin-1 bytes, unknown character replaced');
my $chars = "<i>caf\x{e9}</i>";
utf8::upgrade($chars);    # a character string, not Latin-1 bytes
$bp->add_html_boilerplate($ctx, $e, $chars, 0);
is(body($e->parts(1)), "<body>y<i>caf&#233;</i>\n</body>\n", 'html: character reference in an ASCII part');

# A body that is not in a file cannot be edited: logged, not fatal.
$e = parse("Content-Type: text/plain\n\nin core\n", 1);
is($bp->add_text_boilerplate($ctx, $e, 'X'), 0, 'in-core body: 0');
is_deeply($f->{logs}, ['warning: Could not add boilerplate to MIME part: body is not in a file'], 'reason logged');

done_testing();
