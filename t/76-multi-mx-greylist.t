#!/usr/bin/perl
# Several MX hosts (protocol/e2e.md §8): two complete stacks, each a private
# Postfix, our milter and multiplexor with its own spool, greylist through
# one shared, private PostgreSQL.  A sender greylisted by host A is
# accepted by host B once the delay has passed; the retry B records lets
# the same client through A at once.
use strict;
use warnings;
use Test::More;

use MMTest::E2E;
use MMTest::Cases;
use MMTest::Postgres;
use MMTest::Util qw(have_root skip_or_fail wait_until slurp procs_in pid_alive repo_root);

my $DELAY = 2;    # seconds; the filter's minimum greylisting delay

skip_or_fail('end-to-end tests need root (the MTAs start as root)') unless have_root();
if (my $why = MMTest::Postgres->unavailable) { skip_or_fail($why) }

my $pg = MMTest::Postgres->new(socket_group => 'mailmunge')->start;
$pg->create_database('greylist', owner => 'mailmunge');
my $db = $pg->connect('greylist', 'mailmunge');
$db->do(slurp(repo_root() . '/examples/greylist-postgresql.sql'));    # the schema README shows

# Both hosts run the same filter file; only the environment names the host.
my %host;
for my $name (qw(a b)) {
    $host{$name} = MMTest::E2E->setup(
        mta         => 'postfix',
        filter      => 't/data/e2e/mx-greylist-filter.pl',
        milter_args => ['-t'],
        env         => { MMTEST_GREYLIST_DSN => $pg->dsn('greylist'), MMTEST_GREYLIST_DELAY => $DELAY,
                         MMTEST_MX_NAME => "mx-$name" },
        mta_opts    => { hostname => "mx-$name.mmtest.invalid" },
        ($name eq 'b' ? (sink => $host{a}->sink) : ()),
    );
}
my ($A, $B) = @host{qw(a b)};
isnt($A->mta->port, $B->mta->port, 'two Postfix instances');
isnt($A->stack->spool, $B->stack->spool, 'each stack has its own spool');

my $GREYLISTED = "451 4.3.0 Greylisting in effect; please try again in $DELAY second(s)";
sub rows { $db->selectall_arrayref("SELECT * FROM $_[0]", { Slice => {} }) }

subtest 'greylisted by host A, accepted by host B after the delay' => sub {
    my $id = 'mx-greylist-1';
    my %msg = (id => $id, from => 'sender@example.com', to => ["rcpt-$id\@example.org"]);
    my $res = $A->send(%msg);
    is($res->{failed_at}, 'rcpt', 'host A refuses the first attempt at RCPT');
    is($A->reply_line($res->{rcpt}[0]), $GREYLISTED, 'with the greylisting reply');
    my $gl = rows('greylist');
    is(scalar @$gl, 1, 'host A wrote one greylist row to the shared database') or return;
    my $first_seen = $gl->[0]{last_seen};

    $res = $B->send(%msg);
    my $now = time;
    SKIP: {
        # The worker on B compared at most $now; only then is the refusal certain.
        skip "retry came $DELAY s or more after the first attempt (slow machine)", 2
            if $now - $first_seen >= $DELAY;
        is($res->{failed_at}, 'rcpt', 'host B refuses a retry before the delay') or diag($B->diagnostics);
        is($B->reply_line($res->{rcpt}[0]), $GREYLISTED, 'with the same reply');
    }
    is(scalar @{ rows('greylist') }, 1, "host B found host A's row (no second row)");
    is_deeply(rows('ips_known_to_retry'), [], 'no client known to retry yet');

    wait_until($DELAY + 30, 'the greylisting delay to pass', sub { time - $first_seen >= $DELAY });
    $res = $B->send(%msg);
    ok($res->{ok}, 'host B accepts the retry after the delay') or diag($res->{failure} . $B->diagnostics);
    my $m = $B->delivered($id) or return;
    is($m->helo, 'mx-b.mmtest.invalid', 'relayed to the sink by Postfix B');
    is($m->header('X-MMTest-Filtered-By'), 'mx-b', "and filtered by host B's stack");
    is(scalar(() = $A->sink->find_id($id)), 1, 'delivered once');
    is_deeply([ map { $_->{ip} } @{ rows('ips_known_to_retry') } ], ['127.0.0.2'],
        'host B recorded the client as known to retry');
};

subtest 'the client host B recorded passes host A without a delay' => sub {
    my $id = 'mx-greylist-2';
    my $res = $A->send(id => $id, from => 'other@example.com', to => ["rcpt-$id\@example.org"]);
    ok($res->{ok}, 'host A accepts a new sender/recipient at once') or diag($res->{failure} . $A->diagnostics);
    my $m = $A->delivered($id) or return;
    is($m->helo, 'mx-a.mmtest.invalid', 'relayed by Postfix A');
    is($m->header('X-MMTest-Filtered-By'), 'mx-a', "filtered by host A's stack");
    is(scalar @{ rows('greylist') }, 1, 'no greylist row for a known client');
};

MMTest::Cases::spool_is_clean($_) for $A, $B;

subtest 'database down: both hosts tempfail, nothing is accepted unchecked' => sub {
    $db->disconnect;
    $pg->stop;
    is_deeply([ procs_in($pg->data_dir) ], [], 'no PostgreSQL process left');
    for my $e2e ($A, $B) {
        my $id = 'mx-greylist-nodb-' . $e2e->mta->hostname;
        my $res = $e2e->send(id => $id, from => 'sender@example.com', to => ["rcpt-$id\@example.org"]);
        is($res->{failed_at}, 'rcpt', $e2e->mta->hostname . ' refuses at RCPT');
        like($e2e->reply_line($res->{rcpt}[0]), qr/^451 /, 'with a temporary failure');
        ok($e2e->not_delivered($id), 'not delivered');
    }
};

# No process outlives the test: our daemons' process groups and every
# process working in a Postfix queue, a spool or the cluster are gone.
my @groups = map { values %{ $_->stack->{pids} } } $A, $B;
my @dirs = (map { ($_->mta->dir, $_->stack->dir) } $A, $B);
ok(scalar(procs_in($A->mta->dir)) && scalar(procs_in($B->stack->dir)),
    'the check below sees running Postfix and stack processes');
$_->teardown for $B, $A;
$pg->stop;
is_deeply([ grep { kill 0, -$_ } @groups ], [], "no daemon process group left (@groups)");
is_deeply([ procs_in(@dirs, $pg->dir) ], [], 'no Postfix, worker or PostgreSQL process left');

done_testing;
