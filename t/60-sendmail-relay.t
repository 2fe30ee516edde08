#!/usr/bin/perl
# End-to-end harness check without any milter: a private Sendmail instance
# relays a message from our SMTP client to the capturing sink, unchanged.
use strict;
use warnings;
use Test::More;

use MMTest::Sink;
use MMTest::Sendmail;
use MMTest::SMTP;

if (my $why = MMTest::Sendmail->unavailable) { plan skip_all => $why }

my $sink = MMTest::Sink->new;
my $sm   = MMTest::Sendmail->new(relay_port => $sink->port);
$sm->start;

my $body = "Line one\n.leading dot survives\n\nLast line\n";
my $msg  = MMTest::SMTP->build_message(id => 'sm-relay-1', body => $body);
my $r = MMTest::SMTP->send_mail(
    port => $sm->port, helo => 'client.mmtest.invalid',
    from => 'sender@example.com', to => [ 'rcpt1@example.org', 'rcpt2@example.net' ],
    data => $msg,
);
ok($r->{ok}, 'Sendmail accepted the message') or diag $r->{failure};
like($r->{data}{text}, qr/Message accepted for delivery/, 'final reply is Sendmail\'s');

my $got = eval { $sink->wait_for_id('sm-relay-1', 30) };
ok($got, 'message arrived at the sink') or diag $@ . 'queue: ' . join(' ', $sm->queue_files);
SKIP: {
    skip 'no message', 6 unless $got;
    is($got->sender_address, 'sender@example.com', 'envelope sender kept');
    is_deeply([ $got->rcpt_addresses ], [ 'rcpt1@example.org', 'rcpt2@example.net' ], 'both recipients relayed');
    is($got->helo, $sm->hostname, 'delivered by our private instance');
    is($got->body, $body, 'body unchanged, dot-stuffing undone');
    is($got->header('Subject'), 'MMTest message sm-relay-1', 'subject kept');
    like($got->header('Received'), qr/from client\.mmtest\.invalid \(\[127\.0\.0\.2\]\)/,
        'Received header shows our client address');
}

$sm->wait_queue_empty(10);
is(scalar($sm->queue_files('qf')), 0, 'queue is empty afterwards');

my $pid = $sm->_daemon_pid;
$sm->stop;
ok(!kill(0, $pid), 'Sendmail daemon is gone after stop') if $pid;
$sink->stop;

done_testing;
