# Mailmunge::Test::SpamAssassin with the real Mail::SpamAssassin, local
# tests only (no network).
use strict;
use warnings;

use Test::More;
BEGIN {
	eval { require Mail::SpamAssassin; 1 }
	    or plan(skip_all => 'Mail::SpamAssassin is not installed (Debian package spamassassin)');
}
use Mailmunge::Constants;
use Mailmunge::Context;
use Mailmunge::Filter;
use Mailmunge::Test::SpamAssassin;
use Test::Mailmunge::Tmpdir;
use MMTest::File qw(spew);

package TagFilter;
our @ISA = ('Mailmunge::Filter');
sub new { return bless { tags => [] }, shift }
sub push_tag { my ($self, $ctx, $tag) = @_; push(@{$self->{tags}}, "push $tag"); }
sub pop_tag { my ($self) = @_; push(@{$self->{tags}}, 'pop'); }
sub get_host_name { return 'mx.example.net' }
package main;

my $tmp = Test::Mailmunge::Tmpdir->new();
Mailmunge::Constants->_set('Path:QUARANTINEDIR', $tmp->{dir});
Mailmunge::Constants->_set('Path:CONFDIR', "$tmp->{dir}/no-such-confdir");
my $cf = "$tmp->{dir}/sa.cf";
spew($cf, "required_score 5\nuse_bayes 0\n");

sub msgdir
{
	my ($name, $body) = @_;
	my $d = "$tmp->{dir}/$name";
	mkdir($d);
	spew("$d/INPUTMSG", "From: sender\@example.org\nTo: rcpt\@example.com\nSubject: test $name\n"
	    . "Message-ID: <$name\@example.org>\nDate: Thu, 01 Jan 2026 00:00:00 +0000\n\n$body");
	return Mailmunge::Context->new(sender => '<sender@example.org>', recipients => ['<rcpt@example.com>'],
				       connecting_ip => '192.0.2.3', connecting_name => 'client.example.org',
				       hostip => '192.0.2.3', helo => 'client.example.org', qid => 'QSA', cwd => $d);
}

my $filter = TagFilter->new();
my $sa = Mailmunge::Test::SpamAssassin->new($filter);

my $gtube = 'XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X';
my $st = $sa->spam_assassin_status(msgdir('spam', "This is spam.\n$gtube\n"), 1, $cf);
ok($st, 'got a status for GTUBE');
ok($st->is_spam, 'GTUBE is spam');
cmp_ok($st->get_score, '>=', 100, 'GTUBE score');
like($st->get_names_of_tests_hit, qr/\bGTUBE\b/, 'GTUBE rule hit');
is($st->get_required_score, 5, 'our config file was used');
$st->finish();
is_deeply($filter->{tags}, ['push Running SpamAssassin', 'pop'], 'status tag around the check');

$st = $sa->spam_assassin_status(msgdir('ham', "Hello Bob,\n\nLunch on Friday?\n\nAlice\n"), 1, $cf);
ok($st, 'got a status for a normal message');
ok(!$st->is_spam, 'normal message is not spam');
$st->finish();

my ($score, $req, $tests, $report) = $sa->spam_assassin_check(msgdir('spam2', "$gtube\n"), 1, $cf);
cmp_ok($score, '>=', 100, 'spam_assassin_check: score');
is($req, 5, 'spam_assassin_check: required score');
like($tests, qr/\bGTUBE\b/, 'spam_assassin_check: tests');
like($report, qr/GTUBE/, 'spam_assassin_check: report');

my $ctx = msgdir('gone', "x\n");
unlink($ctx->cwd . '/INPUTMSG');
is($sa->spam_assassin_status($ctx, 1, $cf), undef, 'missing INPUTMSG: undef');
is_deeply([$sa->spam_assassin_check($ctx, 1, $cf)], [], 'spam_assassin_check: empty list');

done_testing();
