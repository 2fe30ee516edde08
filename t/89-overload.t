#!/usr/bin/perl
# More SMTP sessions than workers, without -q (protocol/milter.md §17,
# protocol/multiplexor.md §27): a session that cannot have a worker is
# refused at the DATA command, before its body is sent, never after the
# final dot; the connect-time check gives way to that reservation
# (protocol/milter.md §17.4), so every session reaches DATA; the sessions that got
# a worker are delivered filtered; nothing is lost; no working directory
# is left.
#
# Deterministic: every session stops just before DATA until all of them
# are there, then all send DATA at once.  The filter blocks each scan
# until the test releases it, so the two workers stay taken while the
# other sessions are answered.
use strict;
use warnings;
use Test::More;
use File::Spec;
use Time::HiRes ();

use MMTest::Fault;
use MMTest::Util qw(spew wait_until);

my $SESSIONS = 12;
my $WORKERS  = 2;

my $f = MMTest::Fault->setup(mx_args => [ '-x', $WORKERS, '-m', 1 ]);
my $dir = $f->dir;
my $go = File::Spec->catfile($dir, 'go-data');

my @sessions;
for my $i (1 .. $SESSIONS) {
    my $id = $f->id("over$i");
    my $at = File::Spec->catfile($dir, "at-data-$id");
    push @sessions, $f->start_session(
        id          => $id,
        subject     => 'block',
        before_data => sub {
            spew($at, '');
            my $deadline = Time::HiRes::time() + 60;
            Time::HiRes::sleep(0.02) until -e $go || Time::HiRes::time() > $deadline;
        },
    );
}

my $at_data = sub { scalar grep { -e File::Spec->catfile($dir, "at-data-$_->{id}") } @sessions };
my $ended   = sub { scalar grep { -e $_->{file} } @sessions };
# Before protocol/milter.md §17.4 the connect-time `free` check refused some
# sessions at MAIL, so they ended without reaching DATA.
ok(eval { wait_until(60, 'every session at DATA or ended', sub { $at_data->() + $ended->() >= $SESSIONS }) },
    'every session reached DATA or was refused before it') or diag($@);
my $waiting = $at_data->();
is($waiting, $SESSIONS, "every session reached DATA ($waiting of $SESSIONS): none refused at connect");
spew($go, '');

my @blocked;
ok(eval {
    wait_until(60, "$WORKERS scans blocked and every other session answered", sub {
        @blocked = grep { -e File::Spec->catfile($dir, "ready-scan-$_->{id}.pid") } @sessions;
        return @blocked == $WORKERS && $ended->() == $SESSIONS - $WORKERS;
    });
}, "$WORKERS sessions hold the workers, the others are answered meanwhile") or diag($@);

my $status = $f->stack->ctrl_within(10, 'status');
is(scalar(() = $status->{out} =~ /^Worker \d+: busy$/mg), $WORKERS, 'mm-mx-ctrl status: both workers busy')
    or diag($status->{out});
like($f->stack->milter_log, qr/mfdata: No free workers: tempfailing the message before it is sent/,
    'the milter logs the refusals at DATA');

$f->release("scan-$_->{id}") for @blocked;
my %res = map { $_->{id} => $f->finish_session($_) } @sessions;

my (%stage, @after_body);
for my $s (@sessions) {
    my $r = $res{ $s->{id} };
    if ($r->{ok}) { $stage{accepted}++; next }
    my $at = $r->{failed_at} // '?';
    if ($at eq 'data' && ($r->{data}{body_sent} // 1)) {
        push @after_body, "$s->{id}: $r->{failure}";
        $stage{'after the body'}++;
        next;
    }
    $stage{$at}++;
    like($f->reply_text($r), qr/^4\d\d /, "$s->{id}: refused at \U$at\E with a temporary failure");
    like($f->reply_text($r), qr/^451 4\.3\.2 No free filter worker; please try again later$/,
        "$s->{id}: the milter's reply at DATA") if $at eq 'data';
}
note('sessions by outcome: ' . join(', ', map { "$_ $stage{$_}" } sort keys %stage));
is_deeply(\@after_body, [], 'no session refused after its body was sent');
is($stage{accepted} // 0, $WORKERS, 'as many sessions accepted as there are workers');
is(($stage{data} // 0) + ($stage{accepted} // 0), $waiting, 'every other session that reached DATA was refused there');
ok(!grep({ !/^(accepted|data)\z/ } keys %stage), 'refusals only at DATA');
unlike($f->stack->milter_log, qr/mfconnect: No free workers/, 'no connection refused by the connect check');

$f->recovers(30);
$f->nothing_lost;
$f->spool_is_clean;
$f->teardown;
done_testing;
