#!/usr/bin/perl
# The cheaper scan path (protocol/perl-core.md "Scan cost") must give what
# the plain one gives: scratch copies in memory or in files, one parser per
# worker or one per scan, our filer or MIME::Parser::FileInto itself - the
# same Work/ files (names, bytes), the same entity and the same RESULTS.
use strict;
use warnings;
use Test::More;
use File::Temp qw(tempdir);
use File::Path qw(make_path remove_tree);
use Cwd qw(getcwd);
use MMTest::File qw(slurp spew);

BEGIN { $ENV{HARNESS_ACTIVE} //= 1; $ENV{MAILMUNGE_MTA} = 'postfix'; }
use Mailmunge::Filter;

# A filter that records the parsed entity in a file outside Work/.
{
	package T::Recorder;
	our @ISA = ('Mailmunge::Filter');
	sub filter_message
	{
		my ($self, $ctx) = @_;
		my $e = $ctx->mime_entity;
		my @lines;
		foreach my $p ($e->parts_DFS) {
			my $bh = $p->bodyhandle;
			my $path = $bh ? ($bh->path // '(in core)') : '(none)';
			$path =~ s{.*/}{};
			push(@lines, join(' | ', $p->mime_type, $p->effective_type, $p->head->mime_encoding,
					  $p->head->recommended_filename // '(undef)', $path, scalar($p->parts)));
			push(@lines, $p->head->as_string);
		}
		open(my $fh, '>', '../ENTITY') or die("ENTITY: $!");
		print $fh join("\n", @lines), "\n";
		close($fh);
		my @all = $e->parts_DFS;
		$ctx->action_add_header('X-Parts', scalar(@all));
		return;
	}
	# The stock parser of MIME-tools, as a subclass would build it: used
	# as the reference for our filer and our parser reuse.
	package T::StockParser;
	our @ISA = ('T::Recorder');
	sub _create_mime_parser
	{
		my ($self, $dir) = @_;
		my $p = MIME::Parser->new();
		$p->extract_nested_messages(1);
		$p->extract_uuencode(1);
		$p->output_to_core(0);
		$p->tmp_to_core(0);
		my $filer = MIME::Parser::FileInto->new($dir);
		$filer->ignore_filename(1);
		$p->filer($filer);
		return $p;
	}
}

my $top = getcwd();
my $tmp = tempdir(CLEANUP => 1);
my $commands = join('', map { "$_\n" } 'S<a@example.com>', 'I192.0.2.1', 'Hclient', 'R<b@example.com> ? ? ?', 'F');

my %MSG = (
	multipart => join("\n",
		'From: a@example.com', 'MIME-Version: 1.0', 'Content-Type: multipart/mixed; boundary="XX"', '',
		'preamble', '--XX', 'Content-Type: text/plain', '', 'text part', 'begin 644 inner.txt', '#86)C', '`', 'end',
		'--XX', 'Content-Type: message/rfc822', '', 'From: c@example.com',
		'Content-Type: text/html; name="page one.htm"', '', '<p>x</p>',
		'--XX', 'Content-Type: application/pdf; name="report.pdf"', 'Content-Transfer-Encoding: base64', '',
		'aGVsbG8gd29ybGQ=', '--XX--', 'epilogue', ''),
	plain => join("\n", 'From: a@example.com', 'Subject: plain', '', 'one line', ''),
);

# Scans $msg in a fresh directory with $filter; returns what a filter and
# the milter could see, Work/ names with the pid and counter masked.
sub scan_with
{
	my ($filter, $msg) = @_;
	my $dir = "$tmp/d";
	chdir($tmp);
	remove_tree($dir, "$tmp/ENTITY");
	make_path($dir);
	spew("$dir/INPUTMSG", $MSG{$msg});
	spew("$dir/COMMANDS", $commands);
	my $reply = '';
	open(my $out, '>', \$reply) or die;
	$filter->{reply_fh} = $out;
	$filter->_do_command_line("scan QID $dir");
	close($out);
	chdir($top);
	my @work;
	opendir(my $dh, "$dir/Work") or die("Work: $!");
	foreach my $f (sort grep { !/^\./ } readdir($dh)) {
		(my $name = $f) =~ s/-\d+-\d+(\.|$)/-N$1/;
		push(@work, "$name " . slurp("$dir/Work/$f"));
	}
	closedir($dh);
	@work = sort @work;
	(my $entity = slurp("$tmp/ENTITY")) =~ s/-\d+-\d+(\.|$)/-N$1/mg;
	# MIME-tools makes up a boundary (time, pid, counter) for uuencoded
	# parts it extracts.
	$entity =~ s/boundary="----------=_[^"]*"/boundary="(made up)"/g;
	return { reply => $reply, results => slurp("$dir/RESULTS"), work => \@work, entity => $entity };
}

my $ours = T::Recorder->new();
my $stock = T::StockParser->new();
foreach my $msg (sort keys %MSG) {
	my $want = scan_with($stock, $msg);
	is($want->{reply}, "ok\n", "$msg: stock parser scans");
	is_deeply(scan_with($ours, $msg), $want, "$msg: in-memory scratch copies, our filer: same result");
	is_deeply(scan_with($ours, $msg), $want, "$msg: again with the reused parser");
	{
		local $Mailmunge::Filter::TMP_IN_CORE_MAX = 10;
		is_deeply(scan_with($ours, $msg), $want, "$msg: over the in-memory limit: same result");
	}
}

# The reused parser keeps nothing of the previous message.
my $multi = scan_with($ours, 'multipart');
my $plain = scan_with($ours, 'plain');
is(scalar(@{$plain->{work}}), 1, 'after a multipart message, a plain one has one Work file');
is($plain->{results}, "HX-Parts 1\nF\n", 'and one part') or diag($plain->{entity});
like($multi->{results}, qr/^HX-Parts [2-9]$/m, 'the multipart one had several');
is(scalar(keys %{$ours->{_mime_parsers}}), 2, 'one parser per setting (in memory or not) in this worker');
ok(!$stock->{_mime_parsers}, 'a filter with its own _create_mime_parser gets no reused parser');

# The file names keep the extension the recommended name suggests.
my @names = map { (split(' ', $_))[0] } @{$multi->{work}};
ok((grep { /\.pdf$/ } @names) && (grep { /\.htm$/ } @names), 'extensions from the recommended names: ' . join(' ', @names));

done_testing();
