#!/usr/bin/perl
# script/mailmunge-util: the four views of a message and its usage errors.
use strict;
use warnings;
use Test::More;
use FindBin;
use File::Temp qw(tempfile);

my $top  = "$FindBin::Bin/..";
my $util = "$top/script/mailmunge-util";
my $msg  = "$FindBin::Bin/data/deploy/nested.eml";

# Runs the script with $file on stdin; returns (stdout, stderr, exit status).
sub run_util {
	my ($file, @args) = @_;
	my (undef, $err) = tempfile(UNLINK => 1);
	my $pid = open(my $out, '-|') // die "fork: $!";
	if (!$pid) {
		open(STDIN, '<', $file) or die "$file: $!";
		open(STDERR, '>', $err) or die;
		exec($^X, $util, @args) or die "exec: $!";
	}
	local $/;
	my $stdout = <$out> // '';
	close($out);
	my $status = $? >> 8;
	open(my $e, '<', $err) or die;
	my $stderr = <$e> // '';
	return ($stdout, $stderr, $status);
}

my ($out, $err, $rc) = run_util($msg, '--structure');
is($rc, 0, '--structure exits 0');
is($out, <<'EOT', '--structure shows the tree, decoded file names, dispositions');
non-leaf: type=multipart/mixed; fname=; disp=inline
    non-leaf: type=multipart/alternative; fname=; disp=inline
        leaf: type=text/plain; fname=; disp=inline
        leaf: type=text/html; fname=; disp=inline
    leaf: type=application/pdf; fname=report.pdf; disp=attachment
    leaf: type=text/plain; fname=notes-é.txt; disp=attachment
    non-leaf: type=message/rfc822; fname=; disp=inline
        leaf: type=text/plain; fname=; disp=inline
EOT

($out, $err, $rc) = run_util($msg, '--prettyprint');
is($rc, 0, '--prettyprint exits 0');
is($out, <<'EOT', '--prettyprint: header, banners, text parts only');
From: Alice <alice@example.org>
To: bob@example.com
Subject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe?= and a report
Message-ID: <nested-1@example.org>
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="outer"


[Part: multipart/mixed]


  [Part: multipart/alternative]


    [Part: text/plain]

Hello Bob,
the report is attached.

    [Part: text/html]

<p>Hello Bob,<br>the report is attached.</p>

  [Part: application/pdf; filename=report.pdf]


  [Part: text/plain; filename=notes-é.txt]

café notes

  [Part: message/rfc822]


    [Part: text/plain]

Forwarded body line.
EOT

# A long text part is cut off after about 8 KB.
my ($fh, $big) = tempfile(UNLINK => 1);
print $fh "From: a\@example.org\nSubject: big\n\n", ("0123456789abcdef" x 4 . "\n") x 400;
close($fh);
($out, $err, $rc) = run_util($big, '--prettyprint');
is($rc, 0, 'big message exits 0');
my $body = (split(/\[Part: text\/plain\]\n\n/, $out, 2))[1];
ok(length($body) > 8000 && length($body) < 8192 + 100, 'text output stops near 8 KB (' . length($body) . ')');

($out, $err, $rc) = run_util($msg, '--dump');
is($rc, 0, '--dump exits 0');
like($out, qr/^Subject: =\?UTF-8\?Q\?Gr=C3=BC=C3=9Fe\?= and a report$/m, '--dump keeps the header');
like($out, qr/^JVBERi0xLjQKJcfsj6IKMSAwIG9iago8PC9UeXBlL0NhdGFsb2c\+PgplbmRv\nYmoK$/m, '--dump re-encodes the PDF part');
like($out, qr/^Forwarded body line\.$/m, '--dump includes the nested message');

($out, $err, $rc) = run_util($msg, '--data-dump');
is($rc, 0, '--data-dump exits 0');
like($out, qr/^\$VAR1 = bless\( \{/, '--data-dump is Data::Dumper output');
like($out, qr/'MIME::Entity' \);\s*\z/, '... of a MIME::Entity');

for my $bad ([], ['--dump', '--structure'], ['--bogus'], ['--dump', 'extra']) {
	($out, $err, $rc) = run_util($msg, @$bad);
	is($rc, 2, "usage error for (@$bad) exits 2");
	like($err, qr/Usage:/, '... and prints the usage');
}

($out, $err, $rc) = run_util($msg, '--help');
is($rc, 0, '--help exits 0');
like($out, qr/--prettyprint/, '--help lists the options');

done_testing();
