#!/usr/bin/perl
# The thinnest full path: SMTP -> Postfix -> our milter -> our multiplexor ->
# a Perl worker running t/data/e2e/mmtest-filter.pl -> delivered message.
use strict;
use warnings;
use Test::More;

use MMTest::Util qw(have_root);
use MMTest::Sink;
use MMTest::Stack;
use MMTest::Postfix;
use MMTest::SMTP;

plan skip_all => 'end-to-end tests need root (the Postfix master starts as root)' unless have_root();
plan skip_all => 'postfix is not installed (run .ci/install-deps)' unless -x '/usr/sbin/postfix';
if (my $why = MMTest::Stack->unavailable) { plan skip_all => $why }

my $sink  = MMTest::Sink->new;
my $stack = MMTest::Stack->new(filter => 't/data/e2e/mmtest-filter.pl', mta => 'postfix');
$stack->start;
my $pf = MMTest::Postfix->new(relay_port => $sink->port, milter => $stack->milter_spec_postfix);
$pf->start;

my $body = "First line of the body.\n.A line starting with a dot\n\n\tIndented line\nLast line\n";
my $r = MMTest::SMTP->send_mail(
    port => $pf->port, from => 'sender@example.com', to => ['rcpt@example.org'],
    data => MMTest::SMTP->build_message(id => 'smoke-1', subject => 'plain smoke test', body => $body),
);
ok($r->{ok}, 'message accepted through the milter') or diag $r->{failure};

my $got = eval { $sink->wait_for_id('smoke-1', 60) };
ok($got, 'filtered message delivered') or diag $@ . $stack->diagnostics . "--- maillog ---\n" . $pf->log;
SKIP: {
    skip 'nothing delivered', 6 unless $got;
    is($got->header('X-MMTest-Filtered'), 'yes', 'header added by filter_message');
    my @sb = $got->header('X-Scanned-By');
    is(scalar(@sb), 1, 'exactly one X-Scanned-By header');
    like($sb[0] // '', qr/\Amailmunge 3\.09(?: on \S+)?\z/, 'X-Scanned-By carries the default text');
    is($got->body, $body, 'body delivered byte for byte');
    is($got->header('Subject'), 'plain smoke test', 'subject untouched');
    is_deeply([ $got->rcpt_addresses ], ['rcpt@example.org'], 'recipient untouched');
}

$pf->stop;
$stack->stop;
ok(!$stack->running('mx') && !$stack->running('milter'), 'daemons stopped');
done_testing;
