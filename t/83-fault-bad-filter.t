#!/usr/bin/perl
# Fault suite (protocol/e2e.md §9): a filter with a syntax error.
#  - At start-up the multiplexor refuses to start, exit status 1, with
#    perl's message naming the file and line (protocol/deployment.md §8);
#    meanwhile the MTA tempfails every message.
#  - On reread the check refuses the new file: the running workers keep
#    serving with the rules loaded before, and the error is in the reply
#    and the log (protocol/safe-reread.md).
#  - A worker that has to start while the file is broken (after a crash)
#    dies; messages are tempfailed and mm-mx-ctrl lasterror shows perl's
#    message until the file is fixed.
use strict;
use warnings;
use Test::More;

use MMTest::Fault;
use MMTest::Util qw(wait_until slurp);

my $TEMPFAIL = MMTest::Fault::TEMPFAIL;

my $f = MMTest::Fault->setup(copy_filter => 1, mx_args => [qw(-x 3)]);
my $stack = $f->stack;
my $good = slurp($stack->filter);

# Puts a syntax error into the filter copy; returns the line it is on.
sub break_filter {
    $stack->edit_filter(sub {
        my $t = shift;
        $t =~ s/^(sub filter_message \{\n)/$1    my \$broken = ;\n/m or die "filter_message not found\n";
        return $t;
    });
    my @lines = split /\n/, slurp($stack->filter);
    my ($n) = grep { $lines[$_] =~ /my \$broken = ;/ } 0 .. $#lines;
    return $n + 1;
}

sub mend_filter { $stack->edit_filter(sub { $good }) }

my $file = $stack->filter;

subtest 'syntax error at start-up: the multiplexor refuses to start' => sub {
    $stack->stop_multiplexor;
    my $line = break_filter();
    my ($status, $stderr) = $stack->multiplexor_refuses_to_start(30);
    is($status, 1 << 8, 'exit status 1') or diag($stderr);
    like($stderr, qr/^The filter \Q$file\E does not compile, so no worker could start; perl -c said: syntax error at \Q$file\E line $line, near "= ;".*MULTIPLEXOR IS TERMINATING\.$/m,
        'stderr names the file, the line and perl\'s message');
    ok(!-e $stack->mx_socket, 'no control socket left behind');
    my $res = $f->send(id => $f->id('nomux'), subject => 'plain');
    $f->tempfailed($res, 'mail', $TEMPFAIL, 'message while the filter is broken');
    mend_filter();
    ok(eval { $stack->start_multiplexor; 1 }, 'starts once the filter is fixed') or diag($@);
    $f->recovers(30);
    $f->spool_is_clean;
};

# The pids of the running workers, from mm-mx-ctrl workers.
sub worker_pids {
    my @pids = map { /^\d+ [IB] (\d+)/ ? $1 : () } split /\n/, $stack->ctrl('workers');
    return join ' ', sort @pids;
}

subtest 'syntax error on reread: refused, the workers keep serving' => sub {
    my $before = worker_pids();
    ok(length $before, "workers running: $before");
    my $mark = length $stack->mx_log;
    my $line = break_filter();
    my $out = $stack->ctrl('reread');
    like($out, qr/^error: Filter rules not reread: syntax error at \Q$file\E line $line, near "= ;"/,
        'mm-mx-ctrl reread reports perl\'s error');
    like(substr($stack->mx_log, $mark), qr/Filter rules not reread, workers keep the rules loaded before: syntax error at \Q$file\E line $line/,
        'and the log');
    my $res = $f->send(id => $f->id('kept'), subject => 'plain');
    ok($res->{ok}, 'a message is accepted') or diag($res->{failure});
    is(worker_pids(), $before, 'by the same workers, with the rules loaded before');
    $f->spool_is_clean;
};

subtest 'a worker starting while the file is broken: tempfail, lasterror explains' => sub {
    # The file is still broken.  A crash makes the multiplexor start a new
    # worker, which loads the file as it is now.
    my @pids = split ' ', worker_pids();
    kill 'KILL', @pids;
    wait_until(10, 'the workers to be reaped', sub { worker_pids() !~ /\b(?:@{[ join '|', @pids ]})\b/ });
    my $res = $f->send(id => $f->id('broken'), subject => 'plain');
    $f->tempfailed($res, 'data', $TEMPFAIL, 'message for a worker that cannot load the filter');
    my $why = eval {
        wait_until(10, 'lasterror to show the error', sub {
            my $t = $stack->ctrl('lasterror');
            $t =~ /syntax error/ ? $t : 0;
        });
    };
    like($why // '', qr/died before answering a request.*\(exit status 255\); no worker has answered since\.\nIts stderr:\n  syntax error at \Q$file\E line \d+, near "= ;"/s,
        'mm-mx-ctrl lasterror shows perl\'s message') or diag($stack->ctrl('lasterror'));
    mend_filter();
    $f->recovers(30);
    $f->spool_is_clean;
};

$f->nothing_lost;
$f->teardown;
done_testing;
