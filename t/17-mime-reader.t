#!/usr/bin/perl
# Our parsers' block reader (protocol/perl-core.md "Scan cost") against
# MIME-tools' own reader: the same chunks, end-of-stream states and input
# positions for random input, and the same entity tree and Work/ files for
# the bench messages, every file under t/data, hand-made edge cases and
# random nested messages - each at several block sizes, down to a few bytes
# so that boundaries and line ends fall on block edges.
use strict;
use warnings;
use Test::More;
use File::Temp qw(tempdir);
use File::Find;
use MMTest::File qw(slurp spew);

BEGIN { $ENV{HARNESS_ACTIVE} //= 1; $ENV{MAILMUNGE_MTA} = 'postfix'; }
use Mailmunge::Filter;
use MIME::Parser;

# Counts the chunks our block path reads, so the test knows it ran.
my $fast = 0;
{
	no warnings 'redefine';
	my $orig = \&Mailmunge::Filter::_Reader::_scan_to_boundary;
	*Mailmunge::Filter::_Reader::_scan_to_boundary = sub { $fast++; goto &$orig };
}

my $tmp = tempdir(CLEANUP => 1);

# ---- Chunk level --------------------------------------------------------
# Random bytes made of boundary-ish pieces, read in four chunks by two
# nested readers (boundaries C outside, B inside) after skipping 0-2 lines.
my @PIECE = ('--B', '--B--', "--B \t\r", '--', '-', "\n", "\n", "\n", "\r\n", "\r", 'x', '--Bx', '--C',
	     '--C--', ' ', "\t", 'yy', "\n--B\n", "\n--C--\r\n", "\n--B--  \n");

sub chunk_trace
{
	my ($class, $data, $skip, $keep_newline, $in_file) = @_;
	my $outer = $class->new()->add_boundary('C');
	my $inner = $outer->spawn()->add_boundary('B');
	my $in;
	if ($in_file) {
		open($in, '+>', undef) or die("tmp: $!");
		print $in $data;
		seek($in, 0, 0) or die("seek: $!");
	} else {
		open($in, '<', \$data) or die("scalar: $!");
	}
	local $/ = "\n";
	my $trace = '';
	$trace .= 'skip[' . (readline($in) // 'undef') . ']' for 1 .. $skip;
	foreach my $k (1 .. 4) {
		my $rdr = $k % 2 ? $inner : $outer;
		my $got = '';
		open(my $oh, '>', \$got) or die;
		$rdr->read_chunk($in, $oh, $keep_newline);
		close($oh);
		$trace .= "chunk[$got] eos[" . $rdr->eos() . '] at[' . tell($in) . ']';
	}
	my $rest = do { local $/; readline($in) };
	return $trace . 'rest[' . ($rest // 'undef') . ']';
}

srand(1711);
my ($cases, $same) = (0, 0);
my $first_diff;
foreach my $i (1 .. 1500) {
	my $data = join('', map { $PIECE[rand @PIECE] } 1 .. int(rand(40)));
	my ($skip, $kn) = (int(rand(3)), int(rand(2)));
	foreach my $block (1, 2, 3, 7, 64, 65536) {
		local $Mailmunge::Filter::_Reader::BLOCK = $block;
		my $want = chunk_trace('MIME::Parser::Reader', $data, $skip, $kn, $i % 2);
		my $got = chunk_trace('Mailmunge::Filter::_Reader', $data, $skip, $kn, $i % 2);
		$cases++;
		if ($want eq $got) {
			$same++;
		} else {
			$first_diff //= "block $block skip $skip keep_newline $kn data [$data]\nstock: $want\nours:  $got";
		}
	}
}
is($same, $cases, "chunk level: $cases random inputs, the same chunks, states and positions")
	or diag($first_diff);
ok($fast > 3 * $cases, "the block path did the reading ($fast chunks)");

# ---- Entity level -------------------------------------------------------
# What a parse leaves: the entity tree (headers, preamble, epilogue, types,
# body bytes and file names), the parser's messages and the Work/ files.
my $n_dir = 0;
sub parse_dump
{
	my ($ours, $msg, $in_core, $via) = @_;
	my $dir = "$tmp/p" . $n_dir++;
	mkdir($dir) or die("$dir: $!");
	mkdir("$dir/Work") or die("$dir/Work: $!");
	my $parser;
	if ($ours) {
		$parser = Mailmunge::Filter->_create_mime_parser("$dir/Work", $in_core);
	} else {
		$parser = MIME::Parser->new();
		$parser->extract_nested_messages(1);
		$parser->extract_uuencode(1);
		$parser->output_to_core(0);
		$parser->tmp_to_core($in_core);
		my $filer = MIME::Parser::FileInto->new("$dir/Work");
		$filer->ignore_filename(1);
		$parser->filer($filer);
	}
	my $entity;
	my @warned;
	local $SIG{__WARN__} = sub { push(@warned, @_) };
	if ($via eq 'file') {
		spew("$dir/INPUTMSG", $msg);
		open(my $fh, '<', "$dir/INPUTMSG") or die("INPUTMSG: $!");
		$entity = eval { $parser->parse($fh) };
	} elsif ($via eq 'data') {
		$entity = eval { $parser->parse_data($msg) };
	} else {
		# A pipe cannot seek back: the stock loop does the reading.
		pipe(my $r, my $w) or die("pipe: $!");
		print $w $msg;
		close($w);
		$entity = eval { $parser->parse($r) };
	}
	my @out = ('died: ' . ($@ // ''));
	push(@out, map { "msg: $_" } $parser->results->msgs);
	push(@out, map { "warned: $_" } @warned);
	foreach my $part ($entity ? $entity->parts_DFS : ()) {
		my $body = $part->bodyhandle;
		push(@out, join(' | ', $part->mime_type, $part->effective_type, scalar($part->parts)),
		     'head: ' . $part->head->as_string,
		     'preamble: ' . ($part->preamble ? join('', @{$part->preamble}) : '(undef)'),
		     'epilogue: ' . ($part->epilogue ? join('', @{$part->epilogue}) : '(undef)'),
		     'body: ' . ($body ? (($body->path // '(core)') . ' ' . ($body->as_string // '')) : '(none)'));
	}
	opendir(my $dh, "$dir/Work") or die("Work: $!");
	# Sorted once the counter is masked: 9 and 10 sort differently.
	my @work;
	foreach my $f (grep { !/^\./ } readdir($dh)) {
		(my $name = $f) =~ s/-\d+-\d+(\.|$)/-N$1/;
		push(@work, "work: $name " . slurp("$dir/Work/$f"));
	}
	closedir($dh);
	push(@out, sort @work);
	my $dump = join("\n", @out);
	$dump =~ s{\Q$dir\E/}{DIR/}g;
	$dump =~ s/-\d+-\d+(\.|\s|$)/-N$1/g;
	# MIME-tools makes up a boundary (time, pid, counter) for uuencoded
	# parts it extracts.
	$dump =~ s/boundary="----------=_[^"]*"/boundary="(made up)"/g;
	# and names a part without a file name after an array's address.
	$dump =~ s/ARRAY\(0x[0-9a-f]+\)/ARRAY(address)/g;
	return $dump;
}

# Compares stock and ours for $msg at the given block sizes; one test.
sub same_entity
{
	my ($name, $msg, @blocks) = @_;
	my $before = $fast;
	foreach my $in_core (0, 1) {
		my $want = parse_dump(0, $msg, $in_core, 'file');
		foreach my $block (@blocks) {
			local $Mailmunge::Filter::_Reader::BLOCK = $block;
			my $got = parse_dump(1, $msg, $in_core, 'file');
			if ($got ne $want) {
				fail("$name: same parse (block $block, in core $in_core)");
				diag("stock:\n$want\nours:\n$got");
				return 0;
			}
		}
	}
	pass("$name: same parse at blocks @blocks" . ($fast > $before ? '' : ' (stock path only)'));
	return 1;
}

# The bench messages (bench/milter_client.rs, sizes of examples/bench_compare.rs)
# as the milter stores them.
sub bench_base64
{
	my ($n) = @_;
	my @alpha = ('A' .. 'Z', 'a' .. 'z', '0' .. '9', '+', '/');
	my $x = 0x9e3779b9;
	my $out = '';
	foreach (1 .. $n) {
		my $line = '';
		foreach (1 .. 76) {
			$x ^= ($x << 13) & 0xffffffff;
			$x ^= $x >> 17;
			$x ^= ($x << 5) & 0xffffffff;
			$line .= $alpha[$x % 64];
		}
		$out .= "$line\n";
	}
	return $out;
}

sub bench_message
{
	my ($bytes, $attach) = @_;
	my $b = '=-bench-boundary-4711';
	my $ct = $attach ? "multipart/mixed; boundary=\"$b\"" : 'text/plain; charset=us-ascii';
	my $head = "From: Sender <sender\@example.com>\nTo: Recipient <rcpt\@example.net>\n"
		. "Subject: benchmark message\nDate: Thu, 26 Nov 2026 12:00:00 +0000\n"
		. "Message-ID: <bench\@example.com>\nMIME-Version: 1.0\nContent-Type: $ct\n\n";
	if (!$attach) {
		my $line = "Line of a plain benchmark body, long enough to look like mail.\n";
		return $head . ($line x (int(($bytes - 300) / (length($line) + 1)) + 1));
	}
	my $body = "This is a multi-part message in MIME format.\n\n--$b\n"
		. "Content-Type: text/plain; charset=us-ascii\n\n"
		. ("Please find the report attached; the figures are in the appendix.\n" x 20)
		. "\n--$b\nContent-Type: application/pdf; name=\"report.pdf\"\n"
		. "Content-Transfer-Encoding: base64\n"
		. "Content-Disposition: attachment; filename=\"report.pdf\"\n\n";
	my $crlf_len = length($body) + ($body =~ tr/\n//);
	$body .= bench_base64(int(($bytes - ($crlf_len + 400)) / 78) + 1);
	return $head . $body . "\n--$b--\n";
}

same_entity('bench plain 2 KB', bench_message(2048, 0), 7, 64, 65536);
same_entity('bench attachment 70 KB', bench_message(70 * 1024, 1), 7, 4096, 65536);
same_entity('bench attachment 1.5 MB', bench_message(1536 * 1024, 1), 4096, 65536);

# Every file under t/data, whatever it is.
my @files;
find({ no_chdir => 1, wanted => sub { push(@files, $_) if -f $_ && -s _ < 2_000_000 } }, 't/data');
my $data_ok = 0;
foreach my $f (sort @files) {
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	my $msg = slurp($f);
	my $want = parse_dump(0, $msg, 1, 'file');
	my $bad;
	foreach my $block (7, 65536) {
		local $Mailmunge::Filter::_Reader::BLOCK = $block;
		my $got = parse_dump(1, $msg, 1, 'file');
		$bad = "$f (block $block)\nstock:\n$want\nours:\n$got" if $got ne $want;
	}
	$bad ? diag($bad) : $data_ok++;
}
is($data_ok, scalar(@files), scalar(@files) . ' files under t/data: same parse at blocks 7 and 65536');

# Hand-made edge cases, each with LF and CRLF line ends.
my %EDGE = (
	'trailing blanks on boundaries' => [
		'Content-Type: multipart/mixed; boundary="b1"', '', 'pre', "--b1 \t ", '', 'one', "--b1\t",
		'Content-Type: text/plain', '', 'two', '--b1-- ', 'epi', ''],
	'close with epilogue' => ['Content-Type: multipart/mixed; boundary=b1', '', '--b1', '', 'a', '--b1--',
		'epilogue 1', 'epilogue 2', ''],
	'missing close' => ['Content-Type: multipart/mixed; boundary=b1', '', '--b1', '', 'a', '--b1', '', 'b', 'last'],
	'missing close, no final newline' => ['Content-Type: multipart/mixed; boundary=b1', '', '--b1', '', 'a', 'end'],
	'close at end without newline' => ['Content-Type: multipart/mixed; boundary=b1', '', '--b1', '', 'a', '--b1--'],
	'nested multipart and rfc822' => [
		'Content-Type: multipart/mixed; boundary=out', '', 'preamble', '--out',
		'Content-Type: multipart/alternative; boundary=in', '', '--in', 'Content-Type: text/plain', '', 'plain',
		'--in', 'Content-Type: text/html', '', '<p>html</p>', '--in--', 'inner epilogue', '--out',
		'Content-Type: message/rfc822', '', 'From: x@example.com', 'Subject: inner', '', 'inner body',
		'--out', 'Content-Type: application/octet-stream', 'Content-Transfer-Encoding: base64', '',
		'aGVsbG8=', '--out--', ''],
	'outer boundary ends an inner part' => [
		'Content-Type: multipart/mixed; boundary=out', '', '--out',
		'Content-Type: multipart/mixed; boundary=in', '', '--in', '', 'inner, never closed', '--out', '',
		'second', '--out--', ''],
	'boundary-like lines' => ['Content-Type: multipart/mixed; boundary=b1', '', '--b1', '', '--b1x', '-- b1',
		'---b1', '--b1-', '--', '-', '--b1---', 'x--b1', '--b1', '', 'ok', '--b1--', ''],
	'empty parts and empty preamble' => ['Content-Type: multipart/mixed; boundary=b1', '', '--b1', '--b1', '',
		'--b1', '', '', '--b1--'],
	'blank line before boundary in preamble' => ['Content-Type: multipart/mixed; boundary=b1', '', '', '',
		'--b1', '', 'x', '', '', '--b1--', '', ''],
	'part without newline before boundary' => ['Content-Type: multipart/mixed; boundary=b1', '', '--b1', '', 'x--b1', '--b1--'],
	'a line exactly --' => ['Content-Type: multipart/mixed; boundary=b1', '', '--', '--b1', '', '--', '--b1--', '--'],
	'empty boundary' => ['Content-Type: multipart/mixed; boundary=""', '', 'pre', '--', '', 'a', '----', 'epi'],
	'long lines' => ['Content-Type: multipart/mixed; boundary=b1', '', 'p' x 5000, '--b1', '', 'x' x 100_000,
		'--' . ('y' x 70_000), '--b1', '', '-' x 9000, '--b1--', 'z' x 3000],
	'uuencode in a part' => ['Content-Type: multipart/mixed; boundary=b1', '', '--b1', 'Content-Type: text/plain', '',
		'see', 'begin 644 inner.txt', '#86)C', '`', 'end', '--b1--', ''],
	'no blank line after part header' => ['Content-Type: multipart/mixed; boundary=b1', '', '--b1',
		'Content-Type: text/plain', '--b1', '', 'y', '--b1--'],
	'digest' => ['Content-Type: multipart/digest; boundary=d', '', '--d', '', 'Subject: one', '', 'b1', '--d', '',
		'Subject: two', '', 'b2', '--d--'],
	'not multipart' => ['Content-Type: text/plain', '', '--b1', 'body', '--b1--'],
	'uuencode at top level' => ['Content-Type: text/plain', '', 'hello', 'begin 600 a.gif', '#86)C', '`', 'end', 'bye'],
	'binhex at top level' => ['', 'x', '(this FILE must be converted with BinHex 4.0)', ':!!!:', ''],
	'uuencode decoys' => ['', 'begin 64 x', 'Begin 644 x', ' begin 644 x', 'xbegin 644 x', 'begin  644',
		'(This file must be converted', 'x(This file must be converted with', ''],
	'uuencode as the last line' => ['', 'x', 'begin 644'],
	'empty body' => [''],
	'part names in many spellings' => ['Content-Type: multipart/mixed; boundary=b1', '', '--b1',
		'Content-Type: image/gif; NAME="a.GIF"', '', 'x', '--b1',
		'Content-Type: text/plain; charset=us-ascii', 'Content-Disposition: attachment; FileName=b.pdf', '', 'x', '--b1',
		"Content-Type: application/octet-stream;\n name*0*=utf-8''c%2E;\n name*1=zip", '', 'x', '--b1',
		'Content-Type: text/html; charset=nameless', '', 'x', '--b1',
		'Content-Type: text/plain; name==?UTF-8?B?ZC5kb2M=?=', '', 'x', '--b1',
		'Content-Type: text/plain', 'Content-Disposition: inline', '', 'x', '--b1',
		'Content-Type: application/pdf; name=" "', '', 'x', '--b1',
		'Content-Type: image/png', '', 'x', '--b1--', ''],
	'uuencode in a quoted-printable body' => ['Content-Transfer-Encoding: quoted-printable', '', 'begin 644 a',
		'#86)C', '`', 'end'],
);
foreach my $name (sort keys %EDGE) {
	my $lines = $EDGE{$name};
	my $lf = join("\n", 'From: a@example.com', 'MIME-Version: 1.0', @$lines);
	(my $crlf = $lf) =~ s/\n/\r\n/g;
	same_entity("$name (LF)", $lf, 1, 7, 64, 65536);
	same_entity("$name (CRLF)", $crlf, 1, 7, 64, 65536);
}

# Random nested messages: boundaries with decorations, line ends mixed,
# decoys, parts missing their close, outer boundaries inside inner parts.
sub pick { return $_[rand @_] }

sub rand_lines
{
	my ($eol, @bounds) = @_;
	my $text = '';
	foreach (1 .. int(rand(5))) {
		my $line = pick('text', '', 'x' x int(rand(300)), '--', '-', '--zz', ' --', "a\r");
		$line = pick("--$bounds[rand @bounds]", "--$bounds[rand @bounds]x", "--$bounds[rand @bounds]--",
			"--$bounds[rand @bounds] ") if @bounds && rand() < 0.15;
		$text .= $line . (rand() < 0.9 ? $eol : pick("\n", "\r\n", "\r"));
	}
	return $text;
}

sub rand_entity
{
	my ($depth, $eol, @bounds) = @_;
	my $kind = $depth < 3 ? int(rand(5)) : int(rand(2));
	my $deco = sub { pick('', '', '', ' ', "\t", " \t ", "\r") };
	if ($kind == 0) {
		return "Content-Type: text/plain$eol$eol" . rand_lines($eol, @bounds);
	}
	if ($kind == 1) {
		return "Content-Type: application/pdf; name=\"r$depth.pdf\"${eol}Content-Transfer-Encoding: base64"
			. "$eol$eol" . join('', map { "QUJDRA==$eol" } 0 .. int(rand(4)));
	}
	if ($kind == 2) {
		return "Content-Type: message/rfc822$eol$eol" . "Subject: nested$eol" . rand_entity($depth + 1, $eol, @bounds);
	}
	my $b = pick("b$depth", "=_x$depth", "a b$depth", "b$depth.$depth");
	my $text = "Content-Type: multipart/mixed; boundary=\"$b\"$eol$eol";
	$text .= rand_lines($eol, $b, @bounds) if rand() < 0.7;
	foreach (0 .. int(rand(4))) {
		$text .= "--$b" . $deco->() . $eol . rand_entity($depth + 1, $eol, $b, @bounds);
		$text .= pick('', $eol, "$eol$eol");
	}
	my $close = rand();
	if ($close < 0.7) {
		$text .= "--$b--" . $deco->() . $eol . rand_lines($eol, @bounds);
	} elsif ($close < 0.85) {
		$text .= "--$b--";
	}
	return $text;
}

srand(4711);
my $rand_ok = 0;
my $n_rand = 150;
foreach my $i (1 .. $n_rand) {
	my $eol = pick("\n", "\r\n");
	my $msg = "From: a\@example.com${eol}MIME-Version: 1.0$eol" . rand_entity(0, $eol);
	my $want = parse_dump(0, $msg, $i % 2, 'file');
	my $bad;
	foreach my $block (1, 7, 64, 65536) {
		local $Mailmunge::Filter::_Reader::BLOCK = $block;
		my $got = parse_dump(1, $msg, $i % 2, 'file');
		$bad //= "random message $i (block $block)\n$msg\nstock:\n$want\nours:\n$got" if $got ne $want;
	}
	$bad ? diag($bad) : $rand_ok++;
}
is($rand_ok, $n_rand, "$n_rand random nested messages: same parse at blocks 1, 7, 64 and 65536");

# Other inputs: parse_data (an in-memory handle) takes the block path; a
# pipe (cannot seek back) the stock loop, with the same result.
my $nested = join("\n", 'From: a@example.com', 'MIME-Version: 1.0', @{$EDGE{'nested multipart and rfc822'}});
is(parse_dump(1, $nested, 1, 'data'), parse_dump(0, $nested, 1, 'data'), 'parse_data: same parse');
my $before = $fast;
is(parse_dump(1, $nested, 1, 'pipe'), parse_dump(0, $nested, 1, 'file'), 'from a pipe: same parse');
is($fast, $before, 'and the pipe was read by the stock loop');
# A single-part body is hunted for uuencode on the parser's input itself;
# from a pipe, that is the in-memory copy MIME::Parser makes of it.
my $plain_uu = join("\n", 'From: a@example.com', '', 'text', 'begin 644 a.txt', '#86)C', '`', 'end', '');
is(parse_dump(1, $plain_uu, 1, 'pipe'), parse_dump(0, $plain_uu, 1, 'pipe'), 'single part from a pipe: same parse');

# The uuencode hunt on its own: our block search must leave the handle as
# the stock line loop does (answer, position, end of file, line counter
# $.), for bodies with and without candidates, at tiny block sizes, from
# a file and from memory, and after lines already read.
my @HUNT = ('plain', 'begin 644 a', 'begin 64', 'BEGIN 644', '(this file must be converted with x', '',
	"\r", 'begin 7', 'egin 644', 'x' x 300);
sub hunt_state
{
	my ($ours, $body, $via, $skip) = @_;
	my $parser = $ours ? Mailmunge::Filter::_Parser->new() : MIME::Parser->new();
	$parser->output_to_core(1);
	my $fh;
	if ($via eq 'file') {
		spew("$tmp/hunt", $body);
		open($fh, '<', "$tmp/hunt") or die("hunt: $!");
	} else {
		open($fh, '<', \$body) or die("in-memory: $!");
	}
	my $skipped = 0;
	$skipped++ while $skipped < $skip && defined(readline($fh));
	my $ent = MIME::Entity->build(Type => 'text/plain', Data => '');
	my $found = $ours ? $parser->hunt_for_uuencode($fh, $ent) : MIME::Parser::hunt_for_uuencode($parser, $fh, $ent);
	my $lines = $.;
	return join(' ', ($found ? 1 : 0), 'lines', $lines, 'at', tell($fh), 'eof', (eof($fh) ? 1 : 0),
		'rest', length(join('', <$fh>)));
}
my ($hunt_cases, $hunt_same) = (0, 0);
foreach my $i (1 .. 120) {
	my $body = join('', map { pick(@HUNT) . pick("\n", "\n", "\r\n", '') } 1 .. int(rand(12)));
	foreach my $via ('file', 'memory') {
		my $skip = int(rand(3));
		my $want = hunt_state(0, $body, $via, $skip);
		foreach my $block (1, 2, 5, 65536) {
			local $Mailmunge::Filter::_Reader::BLOCK = $block;
			$hunt_cases++;
			my $got = hunt_state(1, $body, $via, $skip);
			$hunt_same++ if $got eq $want;
			diag("hunt differs for " . join('|', split(/\n/, $body)) . ": stock $want, ours $got")
				if $got ne $want && $hunt_same + 5 > $hunt_cases;
		}
	}
}
is($hunt_same, $hunt_cases, "uuencode hunt: same answer, position, eof and \$. ($hunt_cases cases)");

# Our filer skips the recommended-name lookup for a part whose headers
# mention no name; that must never hide a name MIME-tools would find.
my @PNAME = ('name', 'NaMe', 'filename', 'FILENAME', 'name*0*', 'name*1', 'filename*', 'file', 'charset',
	'nam', 'xname', 'name*');
my @PVALUE = ('"x.gif"', "utf-8''a%2Ejpg", 'x.gif', '=?UTF-8?B?eS5wbmc=?=', '" "', '""', 'y', '"na;me.txt"');
my ($named, $unnamed, $hidden) = (0, 0, 0);
foreach my $i (1 .. 3000) {
	# Random charsets make MIME-tools' word decoder complain.
	local $SIG{__WARN__} = sub { };
	my $head = MIME::Head->new();
	foreach my $tag ('Content-Type', 'Content-Disposition') {
		next if rand() < 0.2;
		my $text = join('', pick('text/plain', 'image/gif', 'inline', 'attachment', 'name', ''),
			map { pick(';', '; ', ";\n ", ' ') . pick(@PNAME) . pick('=', ' = ', '') . pick(@PVALUE) } 1 .. int(rand(4)));
		$head->replace($tag, $text) if $text =~ /\S/;
	}
	my $rec = $head->recommended_filename;
	$named++ if defined($rec);
	next unless Mailmunge::Filter::_FileInto::_names_nothing($head);
	$unnamed++;
	if (defined($rec)) {
		$hidden++;
		diag('name hidden: ' . $head->as_string) if $hidden < 4;
	}
}
ok($named > 100 && $unnamed > 100, "random heads: $named with a recommended name, $unnamed seen as naming nothing");
is($hidden, 0, 'no head seen as naming nothing has a recommended name');
my $view = Mailmunge::Filter::_UnnamedHead->new(MIME::Head->new([ "Content-Type: Image/GIF\n" ]));
is_deeply([ $view->recommended_filename, $view->mime_type, $view->mime_encoding ], [ undef, 'image/gif', '7bit' ],
	'the unnamed view answers for the head');

# A stock MIME::Parser (a filter's own _create_mime_parser) keeps the
# stock reader.
$before = $fast;
parse_dump(0, bench_message(70000, 1), 1, 'file');
is($fast, $before, 'a stock MIME::Parser does not use the block reader');

done_testing();
