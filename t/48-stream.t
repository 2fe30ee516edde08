# Mailmunge::Action::Stream (protocol/perl-api.md §9.3) with a stand-in sendmail
# that records its arguments and input.
use strict;
use warnings;

BEGIN { $ENV{MAILMUNGE_MTA} = 'postfix'; }
use Test::More;
use Cwd qw(abs_path);
use lib 't/data/ext/lib';
use MMTest::File qw(slurp spew);
use ExtUtil;
use Mailmunge::Constants;
use Mailmunge::Context;
use Mailmunge::Filter;
use Mailmunge::Action::Stream;
use Test::Mailmunge::Tmpdir;

package LogFilter;
our @ISA = ('Mailmunge::Filter');
sub new { return bless { logs => [] }, shift }
sub log { my ($self, $ctx, $level, $msg) = @_; push(@{$self->{logs}}, "$level: $msg"); }
sub get_host_name { return 'mx.example.net' }
sub rfc2822_date { return 'Thu, 01 Jan 2026 00:00:00 +0000' }
package SendmailFilter;
our @ISA = ('LogFilter');
sub mta_is_sendmail { return 1 }
package main;

my $tmp = Test::Mailmunge::Tmpdir->new();
my $out = "$tmp->{dir}/out";
mkdir($out);
$ENV{FAKE_SENDMAIL_DIR} = $out;
Mailmunge::Constants->_set('Path:SENDMAIL', abs_path('t/data/ext/bin/fake-sendmail'));

my $dir = "$tmp->{dir}/msg";
mkdir($dir);
spew("$dir/INPUTMSG", "From: a\@example.org\nX-Mailmunge-Remailed: 10.9.9.9 OLDQID\n\tcontinued\nSubject: hi\n\nX-Mailmunge-Remailed: body line stays\n");

sub ctx
{
	my (@rcpts) = @_;
	my $c = Mailmunge::Context->new(sender => '<a@example.org>', recipients => \@rcpts, hostip => '192.0.2.7',
					connecting_ip => '192.0.2.7', connecting_name => 'client.example.org',
					helo => 'client.example.org', qid => 'Q123', cwd => $dir);
	$c->in_message_context(1);
	return $c;
}

sub run_captured
{
	my ($code) = @_;
	open(my $save, '>&', \*STDERR) or die;
	open(STDERR, '>', "$tmp->{dir}/stderr") or die;
	my $r = $code->();
	open(STDERR, '>&', $save) or die;
	return $r;
}

sub outputs { my @f = sort { ($a =~ /(\d+)/)[0] <=> ($b =~ /(\d+)/)[0] } glob("$out/*.args"); return scalar(@f); }
sub clear { unlink(glob("$out/*")); }

my $filter = LogFilter->new();
my $s = Mailmunge::Action::Stream->new($filter);

# One domain: nothing to do.
is($s->stream_by_domain(ctx('<x@example.com>', '<Y@EXAMPLE.com>')), 0, 'one domain: 0');
is(outputs(), 0, 'no sendmail run');

# Two domains (and a duplicate): two copies.
my $r = run_captured(sub { $s->stream_by_domain(ctx('<x@example.com>', '<y@other.example>', '<X@Example.com>', '<z@example.com>')) });
is($r, 1, 'two domains: 1');
is(outputs(), 2, 'two sendmail runs');
is(slurp("$out/1.args"), "-f<a\@example.org>\n-i\n--\n<x\@example.com>\n<z\@example.com>\n", 'first group: example.com, duplicate dropped');
is(slurp("$out/2.args"), "-f<a\@example.org>\n-i\n--\n<y\@other.example>\n", 'second group');
is(slurp("$out/1.msg"),
   "Received: from client.example.org (client.example.org [192.0.2.7])\n"
   . "\tby mx.example.net (envelope-sender <a\@example.org>) (Mailmunge) with ESMTP id Q123; Thu, 01 Jan 2026 00:00:00 +0000\n"
   . "X-Mailmunge-Remailed: 192.0.2.7 Q123\n"
   . "From: a\@example.org\nSubject: hi\n\nX-Mailmunge-Remailed: body line stays\n",
   'copy: Received, marker, message without old markers in the header');
like(slurp("$tmp->{dir}/stderr"), qr/this went to stdout/, "sendmail's stdout went to stderr");
is_deeply($filter->{logs}, ['info: stream_recipients: remailing to [<x@example.com>, <z@example.com>]',
			    'info: stream_recipients: remailing to [<y@other.example>]'], 'logged');
clear();

# By recipient; the Sendmail options; the null sender.
my $sf = SendmailFilter->new();
my $c = ctx('<p@example.com>', '<q@example.com>');
$c->sender('');
is(run_captured(sub { Mailmunge::Action::Stream->new($sf)->stream_by_recipient($c) }), 1, 'by recipient');
is(slurp("$out/2.args"), "-f<>\n-i\n-Ac\n-odd\n--\n<q\@example.com>\n", 'Sendmail options and -f<>');
clear();

# Bad groups.
$filter->{logs} = [];
is($s->stream_recipients(ctx('<a@x.example>', '<b@y.example>'), [['<a@x.example>'], ['<a@x.example>']]), undef, 'recipient twice: undef');
is($filter->{logs}[-1], 'warning: stream_recipients: <a@x.example> not found in recipient list, or specified twice', 'warning');
is($s->stream_recipients(ctx('<a@x.example>', '<b@y.example>', '<c@z.example>'), [['<a@x.example>'], ['<B@y.example>']]), undef, 'leftover: undef');
is($filter->{logs}[-1], 'warning: stream_recipients: Leftover recipients c@z.example', 'warning');
is(outputs(), 0, 'nothing sent for bad groups');

# sendmail fails / hangs.
{
	local $ENV{FAKE_SENDMAIL_EXIT} = 75;
	is(run_captured(sub { $s->stream_by_recipient(ctx('<a@x.example>', '<b@y.example>')) }), undef, 'sendmail failure: undef');
	like($filter->{logs}[-1], qr/^err: stream_recipients: \S+fake-sendmail exited with status 75$/, 'failure logged');
}
clear();
{
	local $ENV{FAKE_SENDMAIL_SLEEP} = 30;
	local $s->{timeout} = 1;
	is(run_captured(sub { $s->stream_by_recipient(ctx('<a@x.example>', '<b@y.example>')) }), undef, 'hanging sendmail: undef');
	like($filter->{logs}[-1], qr/did not finish within 1 seconds$/, 'timeout logged');
}
clear();

# Outside message context.
my $outside = ctx('<a@x.example>', '<b@y.example>');
$outside->in_message_context(0);
is(run_captured(sub { $s->stream_by_recipient($outside) }), undef, 'outside message context: undef');
is(outputs(), 0, 'nothing sent');

done_testing();
