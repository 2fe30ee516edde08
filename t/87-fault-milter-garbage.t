#!/usr/bin/perl
# Garbage straight on the milter's socket (protocol/SECURITY.md §9): random
# bytes, a packet of length 0, a length of 0xFFFFFFFF, an unknown command,
# a body chunk before MAIL, and 10,000 one-byte body chunks.  After each
# case the milter is still running, said what it did in one clear log line,
# and a normal message goes through Postfix, the milter and a real worker.
use strict;
use warnings;
use Test::More;

use MMTest::E2E;
use MMTest::Cases;
use MMTest::Hostile qw(log_mark log_since wait_log random_bytes);
use MMTest::Util qw(wait_until);

# -s: a sender the filter rejects gives a reply that no other step sends.
my $e2e = MMTest::E2E->setup(mta => 'postfix', milter_args => ['-s']);
my $stack = $e2e->stack;
my $seq = 0;

# The milter survived and serves the next message, filtered, through Postfix.
sub still_serving {
    my ($label) = @_;
    ok($stack->running('milter'), "$label: the milter is still running");
    ok($stack->running('mx'), "$label: the multiplexor is still running");
    my $id = sprintf('garbage-%s-%d-%d', $label =~ s/\W+/-/gr, $$, ++$seq);
    my $res = $e2e->send(id => $id, subject => 'plain');
    ok($res->{ok}, "$label: a normal message is accepted afterwards") or diag($res->{failure});
    my $m = $e2e->delivered($id);
    is($m && $m->header('X-MMTest-Filtered'), 'yes', "$label: and delivered filtered");
}

sub milter { my $m = MMTest::Hostile::Milter->connect($stack->milter_port); return $m }

# Negotiation, connect and HELO as Postfix sends them; each must be answered.
sub greeted {
    my $m = milter();
    my $o = $m->negotiate;
    is($o && $o->[0], 'O', 'negotiation answered') or return $m;
    is(($m->connect_inet('client.example', '192.0.2.7', 4000) // [''])->[0], 'c', 'connect: continue');
    is(($m->helo('client.example') // [''])->[0], 'c', 'HELO: continue');
    return $m;
}

# Every line the adapter writes when it ends a connection.
my $REFUSAL = qr/(?:milter packet of \d+ bytes is over the limit of \d+ \(--max-packet\)|milter packet of length 0 \(it has no command byte\)|unknown milter command 0x[0-9a-f]{2}); connection closed/;

subtest 'random bytes instead of milter packets' => sub {
    for my $seed (1 .. 3) {
        my $mark = log_mark($stack, 'milter');
        my $m = milter();
        $m->raw(random_bytes(4096, $seed));
        ok($m->closed_within(10), "seed $seed: the milter closed the connection");
        ok(eval { wait_log($stack, 'milter', $mark, $REFUSAL, 10) }, "seed $seed: and logged why") or diag($@);
    }
    # Random packets behind a plausible length: the command bytes of these
    # seeds (0x27, 0x9b) are none of the protocol's.
    for my $seed (4, 5) {
        my $mark = log_mark($stack, 'milter');
        my $m = milter();
        is(($m->negotiate // [''])->[0], 'O', "seed $seed: negotiation answered");
        $m->raw(join '', map { pack('N', 64) . random_bytes(64, $seed + 100 * $_) } 0 .. 9);
        ok($m->closed_within(10), "seed $seed: the milter closed the connection");
        like(eval { wait_log($stack, 'milter', $mark, $REFUSAL, 10) } // $@,
            qr/unknown milter command 0x(?:27|9b); connection closed/, "seed $seed: and logged why");
    }
    still_serving('random bytes');
};

subtest 'a packet of length 0' => sub {
    my $mark = log_mark($stack, 'milter');
    my $m = greeted();
    # Read as framed, a QUIT would follow; read as indymilter alone would
    # read it, the QUIT's length bytes would become the command.
    $m->raw("\0\0\0\0" . $m->packet('Q'));
    ok($m->closed_within(10), 'the milter closed the connection');
    like(eval { wait_log($stack, 'milter', $mark, qr/connection closed/, 10) } // $@,
        qr/mailmunge\[\d+\]: milter packet of length 0 \(it has no command byte\); connection closed$/m,
        'logged why');
    still_serving('length 0');
};

subtest 'a length of 0xFFFFFFFF' => sub {
    my $mark = log_mark($stack, 'milter');
    my $m = milter();
    is(($m->negotiate // [''])->[0], 'O', 'negotiation answered');
    $m->raw("\xff\xff\xff\xff" . 'B' . ('x' x 1000));
    ok($m->closed_within(10), 'the milter closed the connection');
    like(eval { wait_log($stack, 'milter', $mark, qr/connection closed/, 10) } // $@,
        qr/: milter packet of 4294967295 bytes is over the limit of 262144 \(--max-packet\); connection closed$/m,
        'logged why');
    still_serving('0xFFFFFFFF');
};

subtest 'an unknown command' => sub {
    my $mark = log_mark($stack, 'milter');
    my $m = greeted();
    $m->send('Z', "what is this\0");
    ok($m->closed_within(10), 'the milter closed the connection');
    like(eval { wait_log($stack, 'milter', $mark, qr/connection closed/, 10) } // $@,
        qr/: unknown milter command 0x5a; connection closed$/m, 'logged why');
    still_serving('unknown command');
};

subtest 'a body chunk before MAIL' => sub {
    my $mark = log_mark($stack, 'milter');
    my $m = greeted();
    # Skipped without a reply (as libmilter does): the next packet read is
    # the answer to MAIL, the filter's rejection of this sender.
    $m->send('B', "a body nobody asked for\r\n");
    $m->send('E', '');
    my $r = $m->mail('<reject-sender@example.com>');
    is_deeply($r, [ 'y', "554 5.7.1 MMTest rejects your sender\0" ],
        'the next reply answers MAIL: the stray chunk and end of message got none');
    like(eval { wait_log($stack, 'milter', $mark, qr/outside a mail transaction/, 10) } // $@,
        qr/: milter command 'B' \(body chunk\) outside a mail transaction \(no MAIL before it\); ignored/,
        'logged once');
    # The session goes on: a whole message, filtered by a worker.
    is(($m->mail('<sender@example.com>') // [''])->[0], 'c', 'MAIL: continue');
    is(($m->rcpt('<rcpt@example.org>') // [''])->[0], 'c', 'RCPT: continue');
    is(($m->header('Subject', 'plain') // [''])->[0], 'c', 'header: continue');
    is(($m->eoh // [''])->[0], 'c', 'end of headers: continue');
    is(($m->body("hello\r\n") // [''])->[0], 'c', 'body: continue');
    my ($mods, $final) = $m->eom;
    is($final && $final->[0], 'c', 'end of message: continue');
    ok((grep { $_->[0] eq 'h' && $_->[1] eq "X-MMTest-Filtered\0yes\0" } @$mods),
        'the filter ran: it added X-MMTest-Filtered');
    $m->quit;
    my $text = log_since($stack, 'milter', $mark);
    my $lines = () = $text =~ /outside a mail transaction/g;
    is($lines, 1, 'one line for the connection');
    still_serving('body before MAIL');
};

subtest '10,000 one-byte body chunks' => sub {
    my $mark = log_mark($stack, 'milter');
    my $m = greeted();
    is(($m->mail('<sender@example.com>') // [''])->[0], 'c', 'MAIL: continue');
    is(($m->rcpt('<rcpt@example.org>') // [''])->[0], 'c', 'RCPT: continue');
    is(($m->header('Subject', 'bodymd5') // [''])->[0], 'c', 'header: continue');
    is(($m->eoh // [''])->[0], 'c', 'end of headers: continue');
    my $body = join '', map { sprintf("line %03d\r\n", $_) } 0 .. 999;
    is(length $body, 10_000, 'a body of 10,000 bytes');
    # In batches, so neither side's socket buffer fills while the other
    # waits; every chunk is answered.
    my $answered = 0;
    for (my $off = 0; $off < length $body; $off += 500) {
        $m->raw(join '', map { $m->packet('B', $_) } split //, substr($body, $off, 500));
        for (1 .. 500) {
            my $r = $m->read_packet(30);
            $answered++ if $r && $r->[0] eq 'c';
        }
    }
    is($answered, 10_000, 'each chunk answered with continue');
    my ($mods, $final) = $m->eom(120);
    is($final && $final->[0], 'c', 'end of message: continue');
    (my $lf = $body) =~ s/\r\n/\n/g;
    require Digest::MD5;
    my ($md5) = map { $_->[1] =~ /\AX-MMTest-Body-MD5\0([0-9a-f]{32})\0\z/ ? $1 : () } @$mods;
    is($md5, Digest::MD5::md5_hex($lf), 'the filter saw the body whole and in order');
    $m->quit;
    unlike(log_since($stack, 'milter', $mark), qr/connection closed|outside a mail transaction/,
        'nothing to complain about');
    still_serving('10,000 packets');
};

MMTest::Cases::spool_is_clean($e2e);
$e2e->teardown;
done_testing;
