#!/usr/bin/perl
# The spool under faults, with real Postfix, milter and workers: the spool
# read-only, owned by root, full (a 2 MB tmpfs and a 3 MB message), and the
# MTA going away in the middle of a message (on SMTP to Postfix, and on the
# milter protocol to our milter, during the body and during the scan).
# Each time: a temporary failure (never accepted unfiltered), nothing
# delivered, no working directory left, and a normal message goes through
# again within a bounded time.
use strict;
use warnings;
use Test::More;

use MMTest::E2E;
use MMTest::Cases;
use MMTest::Hostile qw(log_mark wait_log);
use MMTest::SMTP;
use MMTest::Util qw(wait_until);

my $e2e = MMTest::E2E->setup(mta => 'postfix', spool_size => '2m');
my $stack = $e2e->stack;
my $spool = $stack->spool;
ok($stack->spool_mounted, 'the spool is a 2 MB tmpfs');
my (undef, undef, $uid, $gid) = getpwnam('mailmunge') or die "no user mailmunge\n";
my $seq = 0;
my $TEMPFAIL = '451 4.7.1 Service unavailable - try again later';

sub next_id { my ($label) = @_; return sprintf('spool-%s-%d-%d', $label, $$, ++$seq) }

sub working_dirs {
    opendir(my $dh, $spool) or return ();
    return grep { /^mm-/ } readdir $dh;
}

sub spool_clean {
    my ($label) = @_;
    my @left;
    my $ok = eval { wait_until(15, 'no working directory in the spool', sub { @left = working_dirs(); !@left }) };
    ok($ok, "$label: no working directory left") or diag("left: @left");
}

# Sends normal messages until one is accepted (bounded) and checks it was
# filtered: the spool works again.
sub passes_again {
    my ($label) = @_;
    my ($id, $res);
    my $ok = eval {
        wait_until(30, 'a normal message to be accepted', sub {
            $id = next_id("$label-again");
            $res = $e2e->send(id => $id, subject => 'plain');
            $res->{ok};
        });
    };
    ok($ok, "$label: a normal message is accepted again") or return diag($res->{failure});
    my $m = $e2e->delivered($id);
    is($m && $m->header('X-MMTest-Filtered'), 'yes', "$label: and delivered filtered");
}

sub refused_with_tempfail {
    my ($label, $res, $step, $id) = @_;
    ok(!$res->{ok}, "$label: refused") or return diag('accepted although the spool cannot take it');
    is($res->{failed_at}, $step, "$label: at " . uc $step);
    is($e2e->reply_line($e2e->rejection($res)), $TEMPFAIL, "$label: with a temporary failure");
    ok($e2e->not_delivered($id), "$label: nothing delivered");
}

subtest 'spool read-only' => sub {
    my $mark = log_mark($stack, 'milter');
    chmod 0555, $spool or die "chmod: $!";
    my $id = next_id('ro');
    my $res = $e2e->send(id => $id, subject => 'plain');
    chmod 0750, $spool or die "chmod: $!";
    refused_with_tempfail('read-only', $res, 'mail', $id);
    like(eval { wait_log($stack, 'milter', $mark, qr/Could not create directory/, 10) } // $@,
        qr/: Could not create directory \Q$spool\E\/mm-\S+: Permission denied/, 'the milter says why');
    spool_clean('read-only');
    passes_again('read-only');
};

subtest 'spool owned by root, mode 0755' => sub {
    my $mark = log_mark($stack, 'milter');
    chown 0, 0, $spool or die "chown: $!";
    chmod 0755, $spool or die "chmod: $!";
    my $id = next_id('root');
    my $res = $e2e->send(id => $id, subject => 'plain');
    chown $uid, $gid, $spool or die "chown: $!";
    chmod 0750, $spool or die "chmod: $!";
    refused_with_tempfail('owned by root', $res, 'mail', $id);
    like(eval { wait_log($stack, 'milter', $mark, qr/Could not create directory/, 10) } // $@,
        qr/Permission denied/, 'the milter says why');
    spool_clean('owned by root');
    passes_again('owned by root');
};

subtest 'spool full: a 3 MB message on a 2 MB spool' => sub {
    my $mark = log_mark($stack, 'milter');
    my $id = next_id('full');
    my $body = join '', map { sprintf("%07d %s\n", $_, 'f' x 70) } 1 .. 40_000;
    cmp_ok(length $body, '>', 3_000_000, 'the body is over 3 MB');
    my $res = $e2e->send(id => $id, subject => 'plain', body => $body);
    refused_with_tempfail('full', $res, 'data', $id);
    like(eval { wait_log($stack, 'milter', $mark, qr/No space left on device/, 10) } // $@,
        qr/No space left on device/, 'the milter says why');
    spool_clean('full');
    passes_again('full');
};

subtest 'the client goes away in the middle of DATA (SMTP to Postfix)' => sub {
    my $id = next_id('drop-smtp');
    my $c = MMTest::SMTP->new(port => $e2e->mta->port);
    is($c->cmd('EHLO client.mmtest.invalid')->{code}, 250, 'EHLO');
    is($c->cmd('MAIL FROM:<sender@example.com>')->{code}, 250, 'MAIL');
    is($c->cmd('RCPT TO:<rcpt@example.org>')->{code}, 250, 'RCPT');
    is(scalar(working_dirs()), 1, 'the milter made the working directory at MAIL');
    is($c->cmd('DATA')->{code}, 354, 'DATA');
    my $msg = MMTest::SMTP->build_message(id => $id, body => join('', map { "half a body, line $_\r\n" } 1 .. 2000));
    $msg =~ s/\r?\n/\r\n/g;
    $c->_write(substr($msg, 0, length($msg) / 2));
    close $c->{sock};
    spool_clean('SMTP drop');
    ok($e2e->not_delivered($id), 'nothing delivered');
    passes_again('SMTP drop');
};

# A session on the milter protocol up to the body, as Postfix would send it.
sub milter_until_body {
    my ($id) = @_;
    my $m = MMTest::Hostile::Milter->connect($stack->milter_port);
    $m->negotiate;
    $m->macros('C', [ j => 'mta.mmtest.invalid' ]);
    $m->connect_inet('client.mmtest.invalid', '192.0.2.9', 4242);
    $m->helo('client.mmtest.invalid');
    $m->mail('<sender@example.com>');
    $m->rcpt('<rcpt@example.org>');
    $m->header('X-MMTest-Id', $id);
    $m->header('Subject', 'plain');
    $m->eoh;
    my $r = $m->body("the first part of the body\r\n" x 100);
    is($r && $r->[0], 'c', 'body chunk answered');
    return $m;
}

subtest 'the MTA goes away during the body (milter protocol)' => sub {
    my $m = milter_until_body(next_id('drop-body'));
    is(scalar(working_dirs()), 1, 'the message has its working directory');
    $m->close;
    spool_clean('milter drop in the body');
    ok($stack->running('milter'), 'the milter is still running');
    passes_again('milter drop in the body');
};

subtest 'the MTA goes away while the filter scans (milter protocol)' => sub {
    my $m = milter_until_body(next_id('drop-eom'));
    $m->send('E', '');
    $m->close;
    spool_clean('milter drop during the scan');
    my $status = '';
    ok(eval { wait_until(30, 'no busy worker', sub { $status = $stack->ctrl('status'); $status !~ /: busy$/m }) },
        'no worker stays busy') or diag($status);
    passes_again('milter drop during the scan');
};

MMTest::Cases::spool_is_clean($e2e);
$e2e->teardown;
ok(!$stack->spool_mounted, 'the tmpfs is unmounted at teardown');
my $mounts = do { local (@ARGV, $/) = ('/proc/mounts'); <> };
unlike($mounts, qr/ \Q$spool\E /, 'and gone from /proc/mounts');
done_testing;
