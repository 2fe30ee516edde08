#!/usr/bin/perl
# End-to-end harness check without any milter: a private Postfix instance
# relays a message from our SMTP client to the capturing sink, unchanged.
use strict;
use warnings;
use Test::More;

use MMTest::Util qw(have_root);
use MMTest::Sink;
use MMTest::Postfix;
use MMTest::SMTP;

plan skip_all => 'end-to-end tests need root (the Postfix master starts as root)' unless have_root();
plan skip_all => 'postfix is not installed (run .ci/install-deps)' unless -x '/usr/sbin/postfix';

my $sink = MMTest::Sink->new;
my $pf   = MMTest::Postfix->new(relay_port => $sink->port);
$pf->start;

my $body = "Line one\n.leading dot survives\n\nLast line\n";
my $msg  = MMTest::SMTP->build_message(id => 'pf-relay-1', body => $body);
my $r = MMTest::SMTP->send_mail(
    port => $pf->port, helo => 'client.mmtest.invalid',
    from => 'sender@example.com', to => [ 'rcpt1@example.org', 'rcpt2@example.net' ],
    data => $msg,
);
ok($r->{ok}, 'Postfix accepted the message') or diag $r->{failure};
like($r->{data}{text}, qr/queued as [0-9A-F]+/, 'final reply names a queue id');

my $got = eval { $sink->wait_for_id('pf-relay-1', 30) };
ok($got, 'message arrived at the sink') or diag $@ . $pf->log;
SKIP: {
    skip 'no message', 6 unless $got;
    is($got->sender_address, 'sender@example.com', 'envelope sender kept');
    is_deeply([ $got->rcpt_addresses ], [ 'rcpt1@example.org', 'rcpt2@example.net' ], 'both recipients relayed');
    is($got->helo, $pf->hostname, 'delivered by our private instance');
    is($got->body, $body, 'body unchanged, dot-stuffing undone');
    is($got->header('Subject'), 'MMTest message pf-relay-1', 'subject kept');
    like($got->header('Received'), qr/from client\.mmtest\.invalid \(unknown \[127\.0\.0\.2\]\)/,
        'Received header shows our client address');
}

$pf->wait_queue_empty(10);
is(scalar($pf->queue), 0, 'queue is empty afterwards');

my $master = $pf->_master_pid;
$pf->stop;
ok(!kill(0, $master), 'Postfix master is gone after stop') if $master;
$sink->stop;

done_testing;
