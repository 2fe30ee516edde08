#!/usr/bin/perl
# Every citation of a protocol/ document resolves: the document exists and
# has a heading with the cited section number; nothing points outside the
# repository.  The rules are in protocol/README.md ("Citing a section").
# Reads the tracked files only (git ls-files; without git, the tree minus
# target/ and .git/); needs no build.
use strict;
use warnings;
use FindBin;
use File::Find;
use File::Temp qw(tempdir);
use Test::More;

chdir "$FindBin::Bin/.." or die "chdir: $!";

# Paths that lead out of the repository.
my $OUTSIDE = qr{\.\.[/]shared\b|\bshared[/](?:spec|golden)\b};
my $NUM     = qr{\d+(?:\.\d+)*};

# This file is left out: its examples break the rules on purpose.
my @files = grep { -f $_ && !-l $_ && !-B $_ && $_ ne 't/07-citations.t' } tracked_files();
ok(scalar(grep { m{^protocol/.+\.md$} } @files), 'protocol documents found')
	or BAIL_OUT('run from a checkout');

my %docs = map { $_ => 1 } grep { m{^protocol/[^/]+\.md$} } @files;
my %names = map { m{^protocol/(.+)\.md$}; ($1 => 1) } keys %docs;
my @errors;
my @heading_errors;
my %sections;    # document => { number => line of its heading }
sections_of($_) for sort keys %docs;

# The rules themselves, on lines whose verdict is known.
for my $case (
	[ 'src/a.rs', 1, '// (protocol/milter.md §4.7, §2.6 and §3.1 step 6)' ],
	[ 'src/a.rs', 1, '// `protocol/milter.md` §4.4–§4.7' ],
	[ 'src/a.rs', 0, '// protocol/milter.md §99' ],
	[ 'src/a.rs', 0, '// protocol/nosuch.md §1' ],
	[ 'src/a.rs', 0, '// milter.md §4.7' ],
	[ 'src/a.rs', 0, '// see milter.md' ],
	[ 'src/a.rs', 1, '// see README.md and protocol/milter.md' ],
	[ 'src/a.rs', 0, '// bare §4.7' ],
	[ 'src/a.rs', 0, '// multiplexor §6' ],
	[ 't/a.t', 0, '# protocol/milter.md section 4' ],
	[ 't/a.t', 0, '# see ' . '..' . '/sha' . 'red/sp' . 'ec/milter.md' ],
	[ 'protocol/milter.md', 1, 'see `multiplexor.md` §6.1; nothing else' ],
	[ 'protocol/milter.md', 1, 'own section §4.7' ],
	[ 'protocol/milter.md', 0, 'own section §99' ],
	[ 'protocol/milter.md', 0, 'a sentence ending in `multiplexor.md`', '§6.1 on the next line' ],
) {
	my ($file, $good, @lines) = @$case;
	@errors = ();
	check_lines($file, [ map { "$_\n" } @lines ]);
	is(scalar(@errors) == 0, !!$good, ($good ? 'accepted: ' : 'refused: ') . "$file: @lines")
		or diag(join("\n", @errors));
}
{
	my $dir = tempdir(CLEANUP => 1);
	open(my $fh, '>', "$dir/twice.md") or die "$dir/twice.md: $!";
	print $fh "# T\n## 1. One\n```\n## 2. In a code block\n```\n### 1 Again\n";
	close($fh);
	my $before = @heading_errors;
	my $found = sections_of("$dir/twice.md");
	is_deeply([ sort keys %$found ], [1], 'headings: numbers outside code blocks');
	is(@heading_errors - $before, 1, 'headings: a number used twice is refused');
	splice(@heading_errors, $before);
}
@errors = @heading_errors;

for my $file (@files) {
	open(my $fh, '<', $file) or die "$file: $!";
	my @lines = <$fh>;
	close($fh);
	check_lines($file, \@lines);
}

is(scalar(@errors), 0, 'citations resolve and nothing points outside the repository')
	or diag(join("\n", @errors));
done_testing();

sub tracked_files {
	my @list = `git ls-files -z 2>/dev/null`;
	return split(/\0/, join('', @list)) if $? == 0 && @list;
	my @found;
	find({ no_chdir => 1, wanted => sub {
		if (m{^\./(?:target|\.git)$}) { $File::Find::prune = 1; return; }
		push @found, substr($_, 2) if -f $_;
	} }, '.');
	return @found;
}

# Section numbers of a document: headings `## N. Title`, `### N.M Title`
# (any level, an optional `§` before the number), outside fenced code
# blocks.  A number with two headings is itself an error.
sub sections_of {
	my ($doc) = @_;
	return $sections{$doc} if $sections{$doc};
	my %seen;
	my $fence = 0;
	open(my $fh, '<', $doc) or die "$doc: $!";
	while (my $line = <$fh>) {
		if ($line =~ /^\s*(?:```|~~~)/) { $fence = !$fence; next; }
		next if $fence;
		next unless $line =~ /^#{1,6}\s+(?:§)?($NUM)\.?(?:\s|$)/;
		push @heading_errors, "$doc:$.: section $1 already has a heading at line $seen{$1}"
			if $seen{$1};
		$seen{$1} //= $.;
	}
	close($fh);
	return $sections{$doc} = \%seen;
}

sub check_lines {
	my ($file, $lines) = @_;
	for my $i (0 .. $#$lines) {
		next unless $lines->[$i] =~ /§|\.md|shared/;
		check_line($file, $i + 1, $lines->[$i]);
		# A document at the end of one line and its § at the start of the
		# next would be read as a § of the wrong document.
		push @errors, "$file:" . ($i + 1) . ": keep the document and its § on one line"
			if $i > 0 && $lines->[$i] =~ /^\W*§/ && $lines->[$i - 1] =~ /\.md`?\s*$/;
	}
}

# One line: walk the document mentions and § references left to right.  A
# § belongs to the last document mentioned before it on the same line or,
# in a protocol/ document, to that document itself.
sub check_line {
	my ($file, $no, $line) = @_;
	my $where = "$file:$no";
	push @errors, "$where: points outside the repository: $1"
		if $line =~ /((?:$OUTSIDE)\S*)/;
	my $in_protocol = $file =~ m{^protocol/[^/]+\.md$};
	my $target = $in_protocol ? { doc => $file } : undef;
	my $doc = qr{(?:[\w.-]+/)*[\w-]+\.md\b};
	while ($line =~ /\G.*?(?:($doc)`?\s+(sections?\s+\d)|($doc)|(?<![\w\/.-])([a-z][\w-]*)(?=\s+§)|§\s*($NUM))/gc) {
		my ($worded, $word, $mention, $bare, $sect) = ($1, $2, $3, $4, $5);
		if (defined $worded) {
			push @errors, "$where: write `$worded §N` instead of `$word`";
			$target = resolve($file, $worded, $in_protocol);
		} elsif (defined $mention) {
			$target = resolve($file, $mention, $in_protocol);
			push @errors, "$where: $target->{broken}" if $target->{broken};
		} elsif (defined $bare) {
			push @errors, "$where: `$bare §…`: name the document, protocol/$bare.md §…"
				if $names{$bare};
		} elsif (defined $target && $target->{placeholder}) {
			next;
		} elsif (!defined $target) {
			push @errors, "$where: §$sect names no document: write protocol/FILE.md §$sect";
		} elsif ($target->{error}) {
			push @errors, "$where: §$sect: $target->{error}";
		} elsif (!sections_of($target->{doc})->{$sect}) {
			push @errors, "$where: $target->{doc} has no heading for section $sect";
		}
	}
}

# What a document mention refers to: { doc => path }, or { error => why }
# when a § must not follow it, plus { broken => why } for a mention of a
# protocol/ document that does not exist; `FILE.md` is the placeholder the
# documentation uses in examples.
sub resolve {
	my ($file, $mention, $in_protocol) = @_;
	return { placeholder => 1 } if $mention =~ m{(?:^|/)FILE\.md$};
	if ($mention =~ m{(?:^|/)protocol/([^/]+\.md)$}) {
		return { doc => "protocol/$1" } if $docs{"protocol/$1"};
		return { error => "no such document", broken => "no such document protocol/$1" };
	}
	if ($mention !~ m{/}) {
		my $p = "protocol/$mention";
		return { doc => $p } if $in_protocol && $docs{$p};
		return { error => "cite `$mention` as $p", broken => "write $p for $mention" }
			if $docs{$p} && $mention ne 'README.md';
		return { error => "$mention is not a protocol/ document" } if $in_protocol;
	}
	(my $dir = $file) =~ s{[^/]*$}{};
	for my $path ($mention, "$dir$mention") {
		return { doc => $path } if -f $path;
	}
	return { error => "no such document $mention" };
}
