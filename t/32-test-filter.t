# Test::Mailmunge::Filter (protocol/perl-api.md §11.1) run as a worker:
# SMTP-stage verdicts, the Compat actions on a message with executables, every
# message modification, the four boilerplate variants, quarantine, copying
# INPUTMSG and DKIM signing, checked byte for byte against fixtures in
# t/data/ext/expected (set MM_REGEN_FIXTURES=1 to rewrite them, then review).
use strict;
use warnings;

use Test::More;
use lib 't/data/ext/lib';
use MMTest::File qw(slurp spew);
use ExtUtil;
use Test::Mailmunge::Tmpdir;
use Mail::DKIM::Verifier;
use File::Path qw(make_path);

my $tmp = Test::Mailmunge::Tmpdir->new();
my $spool = "$tmp->{dir}/spool";
mkdir($spool);
mkdir("$spool/quarantine");
my $FILTER = 't/data/ext/filters/test-filter.pl';
my $EXP = 't/data/ext/expected';
my $n = 0;

my $testdir;    # TESTDIR for the workers; the repository when undef
sub worker
{
	my ($r) = ExtUtil::run_worker($FILTER, [@_], cwd => $spool, ($testdir ? (testdir => $testdir) : ()));
	return $r;
}

sub scan
{
	my ($msg, $subject, %o) = @_;
	my $dir = "$spool/m" . ++$n;
	ExtUtil::prepare_msg_dir($dir, $msg, subject => $subject, recipients => ['<heidi@example.com>'], %o);
	my $r = worker("scan qX$n $dir");
	return (join("\n", @$r), $dir);
}

sub fixture
{
	my ($got, $name, $label) = @_;
	spew("$EXP/$name", $got) if $ENV{MM_REGEN_FIXTURES};
	is($got, slurp("$EXP/$name"), $label);
}


# --- SMTP-stage verdicts (replies as the worker writes them)
is_deeply(worker(map { "relayok 10.0.0.$_ host$_.example 4444 127.0.0.1 25 NOQUEUE" } 1 .. 5), [
	'ok 1 ok 250 2.1.0 0',
	'ok -1 Whoops 451 4.3.0 0',
	'ok 0 GO%20AWAY 554 5.7.1 0',
	'ok 2 I%20love%20you 250 2.1.0 0',
	'ok -1 Case%20not%20covered 451 4.3.0 0',
], 'filter_relay by client address');
is_deeply(worker(map { "helook 192.0.2.1 h.example $_ 4444 127.0.0.1 25 NOQUEUE" }
		 qw(continue tempfail reject accept_and_no_more_filtering Continue)), [
	'ok 1 ok 250 2.1.0 0', 'ok -1 ? 451 4.3.0 0', 'ok 0 ? 554 5.7.1 0', 'ok 2 ok 250 2.1.0 0',
	'ok -1 Case%20not%20covered 451 4.3.0 0',
], 'filter_helo by exact HELO');

# --- Executables: drop with warning, replace, silent drop, accept with warning
my ($reply, $dir) = scan('t/data/ext/msgs/exe.eml', 'attachments');
is($reply, 'ok', 'scan ok');
is(slurp("$dir/RESULTS"), "Mmultipart/mixed;%20boundary=%22exe-boundary%22\nC\nF\n", 'RESULTS');
fixture(slurp("$dir/NEWBODY"), 'exe.NEWBODY', 'NEWBODY');

# --- Every modification at once
($reply, $dir) = scan('t/data/ext/msgs/exe.eml',
		      'addpart addentity chgsub delhdr chghdr delallhdrs chgsender addrcpt delrcpt addhdr smquarantine quarantine');
is($reply, 'ok', 'scan ok');
fixture(slurp("$dir/RESULTS"), 'everything.RESULTS', 'RESULTS: header, envelope, quarantine lines in call order');
fixture(slurp("$dir/NEWBODY"), 'everything.NEWBODY', 'NEWBODY with the added entity and part');
my @q = glob("$spool/quarantine/*/qdir-*");
is(scalar(@q), 1, 'one quarantine directory');
is(slurp("$q[0]/MSG.0"), "Go to your room NOW, young message!\n", 'quarantine reason');
is(slurp("$q[0]/ENTIRE_MESSAGE"), slurp("$dir/INPUTMSG"), 'quarantined message');
is(slurp("$q[0]/RECIPIENTS"), "<heidi\@example.com>\n", 'quarantined recipients');

# --- filter_begin and filter_end dispositions
# (The filter_end words also match inside "begin-chghdr" etc., as upstream's.)
my %disp = (
	'begin-tempfail' => "T451 4.3.0 I%27m%20busy%20at%20the%20moment...\nF\n",
	'begin-reject'   => "B554 5.7.1 I%20am%20not%20in%20the%20mood\nF\n",
	'begin-discard'  => "D\nF\n",
	'begin-chghdr'   => "IX-Foo 1 Foo%20has%20been%20CHANGED\nIX-Change-Me 1 You%20are%20changed!\nMmultipart/mixed;%20boundary=%22exe-boundary%22\nC\nF\n",
	'begin-delhdr'   => "JX-Foo 1\nJX-Delete-Me 1\nMmultipart/mixed;%20boundary=%22exe-boundary%22\nC\nF\n",
	'begin-addhdr'   => "HX-Foo New-Foo\nHX-Added I%20am%20new!\nMmultipart/mixed;%20boundary=%22exe-boundary%22\nC\nF\n",
	'bounce'         => "B554 5.7.1 I%27m%20a-bouncin%27%20ya!\nF\n",
	'discard'        => "D\nF\n",
	'tempfail'       => "T451 4.3.0 I%27m%20a-tempfailin%27%20ya!\nF\n",
);
foreach my $s (sort keys %disp) {
	($reply, $dir) = scan('t/data/ext/msgs/exe.eml', $s);
	is(slurp("$dir/RESULTS"), $disp{$s}, "$s: RESULTS");
}

# --- copy-this-email reads INPUTMSG through inputmsg_fh
($reply, $dir) = scan('t/data/ext/msgs/plain.eml', 'copy-this-email');
is($reply, 'ok', 'scan ok');
is(slurp("$dir/COPIED_EMAIL"), slurp("$dir/INPUTMSG"), 'COPIED_EMAIL equals INPUTMSG');

# --- Boilerplate
foreach my $v (qw(one_start one_end all_start all_end)) {
	($reply, $dir) = scan('t/data/ext/msgs/boilerplate.eml', "boilerplate_$v");
	is(slurp("$dir/RESULTS"), "Mmultipart/mixed;%20boundary=%22top%22\nC\nF\n", "boilerplate_$v: RESULTS");
	fixture(slurp("$dir/NEWBODY"), "boilerplate_$v.NEWBODY", "boilerplate_$v: NEWBODY");
}

# --- DKIM: deterministic signature, and it verifies as the MTA will deliver it
my $pub = slurp('t/data/ext/dkim/public-key.pem');
$pub =~ s/-----[^-]+-----//g;
$pub =~ s/\s+//g;
my ($res, $dns_pid) = ExtUtil::start_dns({ 'testing._domainkey.test.mailmunge.org TXT' => ["\"v=DKIM1; k=rsa; p=$pub\""] });
Mail::DKIM::DNS::resolver($res);

sub verify
{
	my ($dir) = @_;
	my ($sig) = slurp("$dir/RESULTS") =~ /^HDKIM-Signature (.*)$/m;
	return 'no signature' unless defined($sig);
	$sig =~ s/%([0-9A-F]{2})/chr(hex($1))/ge;
	my ($head, $body);
	if (-e "$dir/NEWBODY") {
		my ($ct) = slurp("$dir/RESULTS") =~ /^M(.*)$/m;
		$ct =~ s/%([0-9A-F]{2})/chr(hex($1))/ge;
		$head = slurp("$dir/PRISTINE_HEADERS");
		$head =~ s/^Content-Type:.*\n(?:[ \t].*\n)*/Content-Type: $ct\n/mi;
		$body = slurp("$dir/NEWBODY");
	} else {
		($head, $body) = split(/\n\n/, slurp("$dir/INPUTMSG"), 2);
		$head .= "\n";
	}
	# Subject changes requested in the scan, as the MTA will apply them.
	if (my ($subj) = slurp("$dir/RESULTS") =~ /^ISubject 1 (.*)$/m) {
		$subj =~ s/%([0-9A-F]{2})/chr(hex($1))/ge;
		$head =~ s/^Subject:.*\n(?:[ \t].*\n)*/Subject: $subj\n/mi;
	}
	my $msg = "DKIM-Signature: $sig\n$head\n$body";
	$msg =~ s/\r?\n/\r\n/g;
	my $v = Mail::DKIM::Verifier->new();
	$v->PRINT($msg);
	$v->CLOSE();
	return $v->result eq 'pass' ? 'pass' : $v->result . ' (' . ($v->result_detail // '') . ')';
}

($reply, $dir) = scan('t/data/ext/msgs/exe.eml', 'dkim_sign');
is($reply, 'ok', 'dkim_sign: scan ok');
fixture(slurp("$dir/RESULTS"), 'dkim.RESULTS', 'dkim_sign: RESULTS');
is(verify($dir), 'pass', 'signature over the rebuilt (attachments dropped) message verifies');

($reply, $dir) = scan('t/data/ext/msgs/boilerplate.eml', 'dkim_sign boilerplate_one_start');
is($reply, 'ok', 'dkim_sign + boilerplate: scan ok');
fixture(slurp("$dir/RESULTS"), 'dkim-modified.RESULTS', 'dkim_sign + boilerplate: RESULTS (M, C, then the signature)');
is(verify($dir), 'pass', 'signature over the new body verifies');

($reply, $dir) = scan('t/data/ext/msgs/attachments.eml', 'dkim_sign');
is(verify($dir), 'pass', 'unchanged multipart message verifies');

($reply, $dir) = scan('t/data/ext/msgs/attachments.eml', 'chgsub dkim_sign');
like(slurp("$dir/RESULTS"), qr/^ISubject 1 \[New%20subject\]%20chgsub%20dkim_sign\nHDKIM-Signature /m, 'subject changed, then signed');
is(verify($dir), 'pass', 'the signature covers the changed subject');

# A key file with a note before the key and text after it (as people keep
# them): only the block between the BEGIN and END lines is the key, so the
# signature is the one made with the bare key.
my $key = slurp('t/data/ext/dkim/private-key.pem');
$testdir = "$tmp->{dir}/noted-key";
make_path("$testdir/t/data/dkim");
spew("$testdir/t/data/dkim/private-key.pem",
     "Test key for test.mailmunge.org, selector testing; never for real mail.\n\n$key\nSee the README.\n");
{
	local $ENV{TESTDIR} = $testdir;
	require Test::Mailmunge::Filter;
	is(Test::Mailmunge::Filter::dkim_test_key_pem(), $key, 'dkim_test_key_pem: only the key block of a noted file');
}
($reply, $dir) = scan('t/data/ext/msgs/exe.eml', 'dkim_sign');
is($reply, 'ok', 'noted key file: scan ok');
is(slurp("$dir/RESULTS"), slurp("$EXP/dkim.RESULTS"), 'noted key file: same RESULTS as the bare key');
is(verify($dir), 'pass', 'noted key file: signature verifies');
$testdir = undef;

kill('TERM', $dns_pid);
waitpid($dns_pid, 0);
done_testing();
