#!/usr/bin/perl
# Garbage on the multiplexor's control socket (protocol/multiplexor.md §4):
# a 1 MB line, NUL bytes, bytes that are not UTF-8 (read as upstream's C
# code reads them, protocol/multiplexor.md §4.4), and 200 idle connections
# held open.  After each case `mm-mx-ctrl status` answers promptly and a
# message is still scanned by a real worker on its way through Postfix.
use strict;
use warnings;
use Test::More;
use IO::Select;
use Time::HiRes ();

use MMTest::E2E;
use MMTest::Cases;
use MMTest::Hostile qw(control_request hold_connections);
use MMTest::Util qw(wait_until);

# -c 4: an idle control connection is dropped after 4 s (the read limit).
my $e2e = MMTest::E2E->setup(mta => 'postfix', mx_args => ['-c', '4']);
my $stack = $e2e->stack;
my $sock = $stack->mx_socket;
my $seq = 0;

# What a real worker answers to a command it does not know.
my $UNKNOWN = control_request($sock, "no_such_command\n");
like($UNKNOWN, qr/\Aok 0 Unknown%20command 554 5\.7\.1 0\n\z/, 'reference: the unknown-command answer');

sub status_promptly {
    my ($label) = @_;
    my $t0 = Time::HiRes::time();
    my $out = $stack->ctrl('status');
    my $rc = $?;
    my $took = Time::HiRes::time() - $t0;
    is($rc, 0, "$label: mm-mx-ctrl status succeeds") or diag($out);
    like($out, qr/^Max workers: 2\b/m, "$label: and reports the pool");
    cmp_ok($took, '<', 5, "$label: within 5 s");
}

sub scans_work {
    my ($label) = @_;
    ok($stack->running('mx'), "$label: the multiplexor is still running");
    my $id = sprintf('ctrl-%s-%d-%d', $label =~ s/\W+/-/gr, $$, ++$seq);
    my $res = $e2e->send(id => $id, subject => 'plain');
    ok($res->{ok}, "$label: a message is accepted") or diag($res->{failure});
    my $m = $e2e->delivered($id);
    is($m && $m->header('X-MMTest-Filtered'), 'yes', "$label: and scanned by a worker");
}

subtest 'a line of 1 MB' => sub {
    is(control_request($sock, ('x' x (1 << 20)) . "\n"), "error: Command too long\n",
        'answered: too long');
    is(control_request($sock, 'scan ' . ('y' x (1 << 20)) . "\n"), "error: Command too long\n",
        'a scan request of 1 MB too');
    is(control_request($sock, 'z' x (1 << 20), shutdown_write => 1), '',
        'without a newline: closed, nothing dispatched');
    status_promptly('1 MB');
    scans_work('1 MB');
};

subtest 'NUL bytes' => sub {
    is(control_request($sock, "ping\0junk\n"), "PONG\n", 'a forwarded line ends at the NUL');
    is(control_request($sock, "status\0\n"), $UNKNOWN,
        'status followed by a NUL is not status (upstream checks the length): a worker answers');
    is(control_request($sock, "\0\n"), $UNKNOWN, 'a lone NUL: an empty command for a worker');
    is(control_request($sock, "tick \0\n"), "error: External agents may not invoke 'tick'\n",
        'tick with a NUL is refused');
    is(control_request($sock, "workerinfo \0 1\n"), "error: Invalid worker number\n",
        'a number after a NUL is not read');
    status_promptly('NUL');
    scans_work('NUL');
};

subtest 'bytes that are not UTF-8' => sub {
    is(control_request($sock, "tick \xff\n"), "error: External agents may not invoke 'tick'\n",
        'an external tick never reaches a worker');
    like(control_request($sock, "workerinfo 0\xff\xfe\n"), qr/\AWorker 0\nState \w+\nPID /,
        'workerinfo reads the number before the bad bytes');
    like(control_request($sock, "load1 30\xc3\n"), qr/ 30 \d+ \d+ \d+ \d+\n\z/,
        'load1 too');
    is(control_request($sock, "\xff\xfe\xfd\n"), $UNKNOWN, 'anything else is an unknown command for a worker');
    is(control_request($sock, "free\xff\n"), $UNKNOWN, 'free followed by junk is not free');
    status_promptly('non-UTF-8');
    scans_work('non-UTF-8');
};

subtest '200 idle connections held open' => sub {
    my @held = hold_connections($sock, 150);
    push @held, hold_connections($sock, 50, 'stat');    # a line that never ends
    is(scalar @held, 200, '200 connections open');
    status_promptly('200 idle');
    scans_work('200 idle');
    # Each is dropped when the read limit (-c 4) runs out, without an answer.
    my %answer;
    my $closed = eval {
        wait_until(30, 'the idle connections to be closed', sub {
            my $sel = IO::Select->new(@held);
            for my $s ($sel->can_read(0.2)) {
                my $n = sysread($s, my $buf, 4096);
                $answer{length $buf}++ if $n;
                @held = grep { $_ != $s } @held unless $n;
                close $s unless $n;
            }
            !@held;
        });
    };
    ok($closed, 'the multiplexor closed every idle connection') or diag($@ . scalar(@held) . ' still open');
    is_deeply(\%answer, {}, 'none of them got an answer');
    status_promptly('after the idle ones');
};

MMTest::Cases::spool_is_clean($e2e);
$e2e->teardown;
done_testing;
