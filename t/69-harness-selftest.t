#!/usr/bin/perl
# The end-to-end harness checked on its own (no MTA, no daemons, no root):
# MMTest::SMTP talks to MMTest::Sink, and MMTest::Sink::Message parses what
# the sink stored.  If these lie, every end-to-end test lies.
use strict;
use warnings;
use Test::More;

use MMTest::Sink;
use MMTest::SMTP;
use MMTest::Util qw(wait_until free_port port_open);

my $sink = MMTest::Sink->new;
ok(port_open($sink->port), 'sink listens');

subtest 'one transaction, envelope and data kept' => sub {
    my $body = "first\n.dot line\n..two dots\n\nlast\n";
    my $msg = MMTest::SMTP->build_message(id => 'self-1', subject => 'Self test', body => $body,
        headers => [ [ 'X-Folded', "one\n\ttwo\n  three" ], [ 'X-Twice', 'a' ], [ 'X-Twice', 'b' ] ]);
    my $r = MMTest::SMTP->send_mail(port => $sink->port, local_addr => '127.0.0.1', helo => 'selftest.invalid',
        from => 'Sender@Example.COM', to => [ '<b@example.org> NOTIFY=NEVER', 'a@example.org' ], data => $msg);
    ok($r->{ok}, 'accepted') or diag($r->{failure});
    is($r->{greeting}{code}, 220, 'greeting code');
    like($r->{greeting}{text}, qr/^sink\.mmtest\.invalid ESMTP/, 'greeting text without the code');
    is_deeply($r->{helo}{lines}, [ '250-sink.mmtest.invalid', '250-8BITMIME', '250 ENHANCEDSTATUSCODES' ],
        'multi-line EHLO reply kept line by line');
    is($r->{helo}{text}, "sink.mmtest.invalid\n8BITMIME\nENHANCEDSTATUSCODES", 'reply text joined without codes');

    my $m = $sink->wait_for_id('self-1', 10);
    is($m->helo, 'selftest.invalid', 'HELO');
    is($m->mail_from, '<Sender@Example.COM>', 'MAIL argument verbatim');
    is($m->sender_address, 'sender@example.com', 'sender_address is bare and lower case');
    is_deeply([ $m->rcpts ], [ '<b@example.org> NOTIFY=NEVER', '<a@example.org>' ], 'RCPT arguments verbatim, in order');
    is_deeply([ $m->rcpt_addresses ], [ 'a@example.org', 'b@example.org' ], 'rcpt_addresses bare and sorted');
    is($m->body, $body, 'body with LF ends, dot-stuffing undone');
    like($m->raw, qr/\r\n\.dot line\r\n\.\.two dots\r\n/, 'raw keeps CRLF');
    is($m->header('x-folded'), "one\ttwo  three", 'folded header unfolded, case-insensitive name');
    is_deeply([ $m->header('X-Twice') ], [ 'a', 'b' ], 'all values in list context');
    is(scalar($m->header('X-Twice')), 'a', 'first value in scalar context');
    is_deeply([ $m->header('X-Absent') ], [], 'absent header: empty list');
    is(($m->header_names)[0], 'From', 'header order kept');
};

subtest 'several messages on one connection, found by id' => sub {
    my $c = MMTest::SMTP->new(port => $sink->port, local_addr => '127.0.0.1');
    is($c->cmd('HELO x.invalid')->{code}, 250, 'HELO');
    for my $n (2, 3) {
        is($c->cmd("MAIL FROM:<s$n\@example.com>")->{code}, 250, "MAIL $n");
        is($c->cmd("RCPT TO:<r$n\@example.org>")->{code}, 250, "RCPT $n");
        is($c->data(MMTest::SMTP->build_message(id => "self-$n"))->{code}, 250, "DATA $n");
    }
    is($c->cmd('RCPT TO:<x@example.org>')->{code}, 503, 'RCPT without MAIL refused by the sink');
    $c->quit;
    my $m3 = $sink->wait_for_id('self-3', 10);
    is($m3->sender_address, 's3@example.com', 'third message has its own envelope');
    is(scalar(my @x = $sink->find_id('self-2')), 1, 'second stored once');
    ok(!$sink->find_id('self-none'), 'unknown id not found');
};

subtest 'send_mail reports the failing step' => sub {
    my $port = free_port();
    my $r = eval { MMTest::SMTP->send_mail(port => $port, local_addr => '127.0.0.1', from => 'a@b', to => ['c@d']) };
    ok(!$r, 'connection refused dies') and like($@, qr/cannot connect/, 'with a clear message');
    $r = MMTest::SMTP->send_mail(port => $sink->port, local_addr => '127.0.0.1', from => 'a@example.com', to => []);
    ok(!$r->{ok}, 'no recipients: not ok');
    is($r->{failed_at}, 'rcpt', 'failed at rcpt');
};

subtest 'bounded waits' => sub {
    ok(!eval { wait_until(1, 'something that never happens', sub { 0 }) }, 'wait_until gives up');
    like($@, qr/timed out after 1s waiting for something that never happens/, 'and says what it waited for');
    ok(!eval { $sink->wait_for_id('self-missing', 1) }, 'wait_for_id gives up too');
};

my $pid = $sink->pid;
$sink->stop;
ok(!kill(0, $pid), 'sink stopped');
done_testing;
