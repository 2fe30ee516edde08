#!/usr/bin/perl
# Postfix speaking older milter protocol versions (milter_protocol 2, 3, 4
# and the default 6): the milter answers with the version offered and the
# usual verdicts and modifications still work.
use strict;
use warnings;
use Test::More;

use MMTest::E2E;

my $e2e = MMTest::E2E->setup(mta => 'postfix', milter_args => [qw(-s -t)]);
my $sink = $e2e->sink;
$e2e->mta->stop;

for my $v (2, 3, 4, 6) {
    subtest "milter_protocol = $v" => sub {
        my $pf = MMTest::Postfix->new(relay_port => $sink->port, milter => $e2e->stack->milter_spec_postfix,
            main_cf => { milter_protocol => $v });
        $pf->start;
        local $e2e->{mta} = $pf;
        my $id = "proto-$v-$$";
        my $res = $e2e->send(id => $id, subject => 'addhdr chghdr newbody',
            headers => [ [ 'X-MMTest-Change-Me', 'old' ] ]);
        ok($res->{ok}, 'accepted') or diag($res->{failure});
        my $m = $e2e->delivered($id);
        is($m && $m->header('X-MMTest-Added'), 'added by the filter', 'header added');
        is($m && $m->header('X-MMTest-Change-Me'), 'changed by the filter', 'header changed');
        is($m && $m->body, "The filter replaced this body.\n", 'body replaced');
        like($m ? $m->header('X-Scanned-By') // '' : '', qr/^mailmunge 3\.09/, 'X-Scanned-By');
        $res = $e2e->send(id => "$id-r", from => 'reject-sender@example.com');
        is($e2e->reply_line($res->{mail}), '554 5.7.1 MMTest rejects your sender', 'sender verdict with its text');
        $pf->stop;
    };
}

$e2e->teardown;
done_testing;
