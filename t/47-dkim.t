# Mailmunge::Action::DKIMSigner in process (protocol/perl-api.md §9.2): what is
# signed with and without a replaced body, checked with Mail::DKIM's own
# verifier against the test key served by a local name server.
use strict;
use warnings;

use Test::More;
use Cwd qw(getcwd abs_path);
use lib 't/data/ext/lib';
use MMTest::File qw(slurp spew);
use ExtUtil;
use MIME::Entity;
use Mail::DKIM::Signer;
use Mail::DKIM::Verifier;
use Mail::DKIM::PrivateKey;
use Mailmunge::Context;
use Mailmunge::Action::DKIMSigner;
use Test::Mailmunge::Tmpdir;

my $tmp = Test::Mailmunge::Tmpdir->new();
my $keyfile = abs_path('t/data/ext/dkim/private-key.pem');
my $pub = slurp('t/data/ext/dkim/public-key.pem');
$pub =~ s/-----[^-]+-----//g;
$pub =~ s/\s+//g;
my ($res, $dns_pid) = ExtUtil::start_dns({ 'sel._domainkey.example.org TXT' => ["\"v=DKIM1; k=rsa; p=$pub\""] });
Mail::DKIM::DNS::resolver($res);
my $home = getcwd();
my $n = 0;

sub signer
{
	my ($method) = @_;
	return Mail::DKIM::Signer->new(Algorithm => 'rsa-sha256', Method => $method || 'relaxed',
				       Domain => 'example.org', Selector => 'sel', KeyFile => $keyfile);
}

# A message directory with the given files; returns a Context in it.
sub msgdir
{
	my (%files) = @_;
	my $d = "$tmp->{dir}/d" . ++$n;
	mkdir($d);
	spew("$d/$_", $files{$_}) for keys %files;
	chdir($d) or die;
	my $ctx = Mailmunge::Context->new(cwd => $d, qid => 'QD');
	$ctx->in_message_context(1);
	return $ctx;
}

sub signature
{
	my ($ctx) = @_;
	$ctx->_close_results_fh() if $ctx->can('_close_results_fh');
	my ($v) = slurp($ctx->cwd . '/RESULTS') =~ /^HDKIM-Signature (.*)$/m;
	return undef unless defined($v);
	$v =~ s/%([0-9A-F]{2})/chr(hex($1))/ge;
	return $v;
}

sub verify
{
	my ($sig, $msg) = @_;
	$msg = "DKIM-Signature: $sig\n$msg";
	$msg =~ s/\r?\n/\r\n/g;
	my $v = Mail::DKIM::Verifier->new();
	$v->PRINT($msg);
	$v->CLOSE();
	return $v->result;
}

my $head = "From: Alice <alice\@example.org>\nTo: bob\@example.com\nSubject: a folded\n  subject line\nMIME-Version: 1.0\nContent-Type: text/plain\n";
my $unfolded = "From: Alice <alice\@example.org>\nTo: bob\@example.com\nSubject: a folded  subject line\nMIME-Version: 1.0\nContent-Type: text/plain\n";
my $body = "Hello Bob.\n";

# --- Unchanged message: INPUTMSG is signed
my $ctx = msgdir(INPUTMSG => "$head\n$body", HEADERS => $unfolded, PRISTINE_HEADERS => $head);
is(Mailmunge::Action::DKIMSigner->new(undef)->add_dkim_signature($ctx, signer('simple')), 1, 'returns the add_header result');
my $sig = signature($ctx);
like($sig, qr/^v=1; a=rsa-sha256; c=simple; d=example.org;/, 'signature header value without the field name');
is(verify($sig, "$head\n$body"), 'pass', 'verifies against the original message');

# --- Replaced body, same Content-Type: PRISTINE_HEADERS + NEWBODY
my $new = MIME::Entity->build(Type => 'text/plain', Data => ["New body.\n"], 'X-Mailer' => undef);
$ctx = msgdir(INPUTMSG => "$head\n$body", HEADERS => $unfolded, PRISTINE_HEADERS => $head, NEWBODY => "New body.\n");
$ctx->new_mime_entity($new);
Mailmunge::Action::DKIMSigner->new(undef)->add_dkim_signature($ctx, signer('simple'));
$sig = signature($ctx);
is(verify($sig, "$head\nNew body.\n"), 'pass', 'simple canonicalisation: verifies with the pristine (folded) header and the new body');
is(verify($sig, "$unfolded\nNew body.\n"), 'fail', 'not against the unfolded header');

# --- Replaced body with a new Content-Type: the signed header carries it
$new = MIME::Entity->build(Type => 'multipart/mixed', Boundary => 'nb', 'X-Mailer' => undef);
$new->attach(Type => 'text/plain', Data => ["part\n"]);
my $nb = "--nb\nContent-Type: text/plain\n\npart\n--nb--\n";
$ctx = msgdir(INPUTMSG => "$head\n$body", HEADERS => $unfolded, PRISTINE_HEADERS => $head, NEWBODY => $nb);
$ctx->new_mime_entity($new);
Mailmunge::Action::DKIMSigner->new(undef)->add_dkim_signature($ctx, signer('relaxed'));
$sig = signature($ctx);
(my $delivered = $head) =~ s/^Content-Type: .*$/Content-Type: multipart\/mixed; boundary="nb"/m;
is(verify($sig, "$delivered\n$nb"), 'pass', 'verifies with the Content-Type the MTA will set');
is(verify($sig, "$head\n$nb"), 'fail', 'and not with the old one');

# --- Without PRISTINE_HEADERS, HEADERS is used
$ctx = msgdir(INPUTMSG => "$head\n$body", HEADERS => $unfolded, NEWBODY => "New body.\n");
$ctx->new_mime_entity(MIME::Entity->build(Type => 'text/plain', Data => ["New body.\n"]));
Mailmunge::Action::DKIMSigner->new(undef)->add_dkim_signature($ctx, signer('relaxed'));
is(verify(signature($ctx), "$head\nNew body.\n"), 'pass', 'HEADERS fallback (relaxed)');

# --- Header changes requested earlier in the scan are signed as delivered
$ctx = msgdir(INPUTMSG => "$head\n$body", HEADERS => $unfolded, PRISTINE_HEADERS => $head);
$ctx->action_change_header('Subject', 'a new subject');
$ctx->action_insert_header('X-First', 'top', 0);
$ctx->action_delete_header('To');
Mailmunge::Action::DKIMSigner->new(undef)->add_dkim_signature($ctx, signer('simple'));
$sig = signature($ctx);
like($sig, qr/h=x-first:from:subject:mime-version:content-type;|h=[^;]*subject/, 'signature lists the signed headers');
(my $changed = $head) =~ s/^Subject: a folded\n  subject line\n/Subject: a new subject\n/m;
$changed =~ s/^To: .*\n//m;
is(verify($sig, "X-First: top\n$changed\n$body"), 'pass', 'verifies with the changes the MTA will apply');
is(verify($sig, "$head\n$body"), 'fail', 'not against the message as received');

# --- Missing input: undef, nothing written
$ctx = msgdir(HEADERS => $unfolded);
is(Mailmunge::Action::DKIMSigner->new(undef)->add_dkim_signature($ctx, signer()), undef, 'no INPUTMSG: undef');
ok(!-e $ctx->cwd . '/RESULTS', 'nothing written');

chdir($home);
kill('TERM', $dns_pid);
waitpid($dns_pid, 0);
done_testing();
