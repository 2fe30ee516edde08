package MMTest::Cases;
use strict;
use warnings;

use Test::More;

use MMTest::Util qw(slurp slurp_if_exists);
use POSIX ();
use MMTest::SMTP;

=head1 NAME

MMTest::Cases - the end-to-end cases, written once and run on both MTAs

=head1 SYNOPSIS

    my $e2e = MMTest::E2E->setup(mta => 'postfix', milter_args => ['-r', '-H', '-s', '-t']);
    MMTest::Cases::verdicts($e2e);
    MMTest::Cases::modifications($e2e);
    MMTest::Cases::multiplexor_down($e2e);

=head1 DESCRIPTION

Each function runs a group of subtests against a running
L<MMTest::E2E> setup whose filter is F<t/data/e2e/mmtest-filter.pl> (see
the comment at its top for the words that select each behaviour).  The
milter must run with C<-r -H -s -t> for the SMTP-stage checks.

Where the two MTAs present the same milter verdict differently, the
expectation names the MTA; everything else is common.

=head1 FUNCTIONS

=head2 verdicts($e2e)

Relay, HELO, sender and recipient rejections and tempfails with the
filter's codes and texts; end-of-message bounce, tempfail, discard; a
filter that dies.

=cut

# What each MTA answers when the milter returns a verdict without a reply
# text (connect stage, filter or multiplexor failure).  Pinned from the MTAs.
my %CONNECT_REJECT = (
    postfix  => qr/^554 \S+ ESMTP not accepting connections$/,
    sendmail => qr/^554 \S+ ESMTP not accepting messages$/,
);
my %DEFAULT_TEMPFAIL = (
    postfix  => '451 4.7.1 Service unavailable - try again later',
    sendmail => '451 4.3.2 Please try again later',
);

my $seq = 0;
sub _id { my ($e2e, $label) = @_; return sprintf('%s-%s-%d-%d', $e2e->kind, $label, $$, ++$seq) }

# Asserts that a send was refused at one of @stages with a reply matching $re.
sub _refused {
    my ($e2e, $res, $stages, $re, $name) = @_;
    my $reply = $e2e->rejection($res);
    my $line = join(' | ', @{ ($reply // {})->{lines} // [] });
    ok(!$res->{ok}, "$name: refused") or return diag('accepted although it should not');
    ok((grep { $_ eq ($res->{failed_at} // '') } @$stages), "$name: refused at " . join('/', @$stages))
        or diag("refused at $res->{failed_at}: $line");
    like($line, $re, "$name: reply") or diag($e2e->diagnostics);
}

sub verdicts {
    my ($e2e) = @_;
    my $pf = $e2e->kind eq 'postfix';

    subtest 'relay check: reject (client 127.0.0.3)' => sub {
        my $id = _id($e2e, 'relay-reject');
        my $res = $e2e->send(id => $id, local_addr => '127.0.0.3');
        # No text can be set at connect: the MTA uses its own and refuses
        # the greeting itself.
        _refused($e2e, $res, ['greeting'], $CONNECT_REJECT{ $e2e->kind }, 'relay reject');
        ok($e2e->not_delivered($id), 'not delivered');
    };

    subtest 'relay check: tempfail (client 127.0.0.4)' => sub {
        my $id = _id($e2e, 'relay-tempfail');
        my $res = $e2e->send(id => $id, local_addr => '127.0.0.4');
        # Both MTAs greet, then refuse the transaction with their own text.
        _refused($e2e, $res, ['mail'], qr/^\Q$DEFAULT_TEMPFAIL{ $e2e->kind }\E$/, 'relay tempfail');
        ok($e2e->not_delivered($id), 'not delivered');
    };

    subtest 'HELO check: reject' => sub {
        my $id = _id($e2e, 'helo-reject');
        my $res = $e2e->send(id => $id, helo => 'helo-reject.mmtest.invalid');
        _refused($e2e, $res, [qw(helo mail)], qr/^554 5\.7\.1 MMTest rejects your HELO$/, 'helo reject');
        ok($e2e->not_delivered($id), 'not delivered');
    };

    subtest 'HELO check: tempfail' => sub {
        my $id = _id($e2e, 'helo-tempfail');
        my $res = $e2e->send(id => $id, helo => 'helo-tempfail.mmtest.invalid');
        _refused($e2e, $res, [qw(helo mail)], qr/^451 4\.3\.0 MMTest tempfails your HELO$/, 'helo tempfail');
        ok($e2e->not_delivered($id), 'not delivered');
    };

    subtest 'sender check: reject, tempfail, custom code' => sub {
        my $id = _id($e2e, 'sender-reject');
        my $res = $e2e->send(id => $id, from => 'reject-sender@example.com');
        _refused($e2e, $res, ['mail'], qr/^554 5\.7\.1 MMTest rejects your sender$/, 'sender reject');

        $res = $e2e->send(id => $id, from => 'tempfail-sender@example.com');
        _refused($e2e, $res, ['mail'], qr/^451 4\.3\.0 MMTest tempfails your sender$/, 'sender tempfail');

        $res = $e2e->send(id => $id, from => 'reject550-sender@example.com');
        # Sendmail puts the address in front of a 550 text (its own habit for
        # 550 replies to MAIL/RCPT); the milter sends the same bytes to both.
        _refused($e2e, $res, ['mail'], $pf ? qr/^550 5\.7\.0 MMTest says 550 to your sender$/
            : qr/^550 5\.7\.0 <reject550-sender\@example\.com>\.\.\. MMTest says 550 to your sender$/, 'sender 550');
        ok($e2e->not_delivered($id), 'nothing delivered');
    };

    subtest 'recipient check: one refused, one accepted' => sub {
        my $id = _id($e2e, 'rcpt-reject');
        my $res = $e2e->send(id => $id, to => [ 'reject-rcpt@example.org', 'tempfail-rcpt@example.org', 'good@example.org' ]);
        ok($res->{ok}, 'message accepted for the good recipient') or diag($res->{failure});
        is($e2e->reply_line($res->{rcpt}[0]), '554 5.7.1 MMTest rejects your recipient', 'reject reply');
        is($e2e->reply_line($res->{rcpt}[1]), '451 4.3.0 MMTest tempfails your recipient', 'tempfail reply');
        like($e2e->reply_line($res->{rcpt}[2]), qr/^250 /, 'good recipient accepted');
        my $m = $e2e->delivered($id);
        is_deeply([ $m ? $m->rcpt_addresses : () ], ['good@example.org'], 'delivered to the good recipient only');
    };

    subtest 'end of message: bounce with default and custom code' => sub {
        my $id = _id($e2e, 'bounce');
        my $res = $e2e->send(id => $id, subject => 'bounce');
        _refused($e2e, $res, ['data'], qr/^554 5\.7\.1 MMTest bounces this message$/, 'bounce');
        $res = $e2e->send(id => $id, subject => 'bounce550');
        _refused($e2e, $res, ['data'], qr/^550 5\.7\.0 MMTest bounces with 550$/, 'bounce 550');
        ok($e2e->not_delivered($id), 'not delivered');
    };

    subtest 'end of message: tempfail' => sub {
        my $id = _id($e2e, 'tempfail');
        my $res = $e2e->send(id => $id, subject => 'tempfail');
        _refused($e2e, $res, ['data'], qr/^451 4\.3\.0 MMTest tempfails this message$/, 'tempfail');
        ok($e2e->not_delivered($id), 'not delivered');
    };

    subtest 'end of message: discard' => sub {
        my $id = _id($e2e, 'discard');
        my $res = $e2e->send(id => $id, subject => 'discard');
        ok($res->{ok}, 'the client sees the message accepted') or diag($res->{failure});
        ok($e2e->not_delivered($id), 'but it is never delivered');
    };

    subtest 'worker process exits in the middle of a scan: tempfail, nothing delivered' => sub {
        my $id = _id($e2e, 'crash');
        my $res = $e2e->send(id => $id, subject => 'crash');
        _refused($e2e, $res, ['data'], qr/^\Q$DEFAULT_TEMPFAIL{ $e2e->kind }\E$/, 'crashing worker');
        ok($e2e->not_delivered($id), 'not delivered');
        my $id2 = _id($e2e, 'after-crash');
        my $res2 = $e2e->send(id => $id2, subject => 'plain');
        ok($res2->{ok}, 'next message accepted (a new worker took over)') or diag($res2->{failure});
        ok($e2e->delivered($id2), 'next message delivered');
    };

    subtest 'filter dies in filter_message: tempfail, nothing delivered' => sub {
        my $id = _id($e2e, 'die');
        my $res = $e2e->send(id => $id, subject => 'die');
        _refused($e2e, $res, ['data'], qr/^\Q$DEFAULT_TEMPFAIL{ $e2e->kind }\E$/, 'crashing filter');
        ok($e2e->not_delivered($id), 'not delivered');
        # The worker survives (or is replaced): the next message goes through.
        my $id2 = _id($e2e, 'after-die');
        my $res2 = $e2e->send(id => $id2, subject => 'plain');
        ok($res2->{ok}, 'next message accepted') or diag($res2->{failure});
        ok($e2e->delivered($id2), 'next message delivered');
    };
}

=head2 modifications($e2e)

Header add/insert/change/delete, recipient add/delete, sender change,
body replacement (small and multi-MB), both quarantines, X-Scanned-By and
what the filter saw of the envelope.

=cut

sub modifications {
    my ($e2e) = @_;
    my $pf = $e2e->kind eq 'postfix';

    subtest 'filter sees the envelope' => sub {
        my $id = _id($e2e, 'envelope');
        my $res = $e2e->send(id => $id, subject => 'envelope', helo => 'client.mmtest.invalid',
            from => 'Sender@Example.COM', to => [ 'one@example.org', 'two@example.net' ]);
        ok($res->{ok}, 'accepted') or diag($res->{failure});
        my $m = $e2e->delivered($id) or return;
        is($m->header('X-MMTest-Sender'), '<Sender@Example.COM>', 'sender as the MTA passed it (brackets, case kept)');
        is($m->header('X-MMTest-Recipients'), '<one@example.org> <two@example.net>', 'recipients in order');
        is($m->header('X-MMTest-Helo'), 'client.mmtest.invalid', 'HELO argument');
        is($m->header('X-MMTest-Hostip'), '127.0.0.2', 'client address');
        my @sb = $m->header('X-Scanned-By');
        is(scalar(@sb), 1, 'one X-Scanned-By header');
        like($sb[0] // '', qr/\Amailmunge 3\.09(?: on \S+)?\z/, 'X-Scanned-By text');
    };

    subtest 'headers: add, insert, change, delete' => sub {
        my $id = _id($e2e, 'headers');
        my $res = $e2e->send(id => $id, subject => 'addhdr inshdr chghdr delhdr', headers => [
            [ 'X-MMTest-Change-Me', 'original value' ],
            [ 'X-MMTest-Delete-Me', 'doomed' ],
            [ 'X-MMTest-Keep-Me',   'kept' ],
        ]);
        ok($res->{ok}, 'accepted') or diag($res->{failure});
        my $m = $e2e->delivered($id) or return;
        is_deeply([ $m->header('X-MMTest-Added') ], ['added by the filter'], 'added header present once');
        is_deeply([ $m->header('X-MMTest-Inserted') ], ['inserted at the top'], 'inserted header present once');
        my @names = map { lc } $m->header_names;
        my ($ins) = grep { $names[$_] eq 'x-mmtest-inserted' } 0 .. $#names;
        my ($from) = grep { $names[$_] eq 'from' } 0 .. $#names;
        ok(defined $ins && defined $from && $ins < $from, 'inserted header comes before the original headers')
            or diag(join ', ', @names);
        is_deeply([ $m->header('X-MMTest-Change-Me') ], ['changed by the filter'], 'changed header has the new value');
        is_deeply([ $m->header('X-MMTest-Delete-Me') ], [], 'deleted header is gone');
        is($m->header('X-MMTest-Keep-Me'), 'kept', 'other headers untouched');
        is($m->header('X-MMTest-Filtered'), 'yes', 'filter header');
    };

    subtest 'recipients: add and delete' => sub {
        my $id = _id($e2e, 'rcpts');
        my $res = $e2e->send(id => $id, subject => 'addrcpt delrcpt',
            to => [ 'first@example.org', 'second@example.org' ]);
        ok($res->{ok}, 'accepted') or diag($res->{failure});
        my $m = $e2e->delivered($id) or return;
        is_deeply([ $m->rcpt_addresses ], [ 'added-rcpt@example.net', 'second@example.org' ],
            'first recipient deleted, new one added');
        eval { $e2e->mta->wait_queue_empty(30) };
        is(scalar(my @copies = $e2e->sink->find_id($id)), 1, 'delivered in one transaction');
    };

    subtest 'sender change' => sub {
        my $id = _id($e2e, 'chgsender');
        my $res = $e2e->send(id => $id, subject => 'chgsender');
        ok($res->{ok}, 'accepted') or diag($res->{failure});
        my $m = $e2e->delivered($id) or return;
        is($m->sender_address, 'changed-sender@example.org', 'envelope sender changed');
    };

    subtest 'body replacement' => sub {
        my $id = _id($e2e, 'newbody');
        my $res = $e2e->send(id => $id, subject => 'newbody', body => "Original body\nsecond line\n");
        ok($res->{ok}, 'accepted') or diag($res->{failure});
        my $m = $e2e->delivered($id) or return;
        is($m->body, "The filter replaced this body.\n", 'body replaced');
        is($m->header('X-MMTest-Id'), $id, 'headers kept');
        like($m->header('Content-Type') // '', qr{^text/plain}i, 'content type of the new body');
    };

    subtest 'multi-MB body travels through NEWBODY intact' => sub {
        my $id = _id($e2e, 'bigbody');
        # ~3 MB of numbered lines, so a lost, doubled or reordered chunk shows.
        my $body = join '', map { sprintf("line %07d: the quick brown fox jumps over the lazy dog\n", $_) } 1 .. 48_000;
        my $res = $e2e->send(id => $id, subject => 'appendbody', body => $body);
        ok($res->{ok}, 'accepted') or diag($res->{failure});
        my $m = $e2e->delivered($id, 120) or return;
        my $got = $m->body;
        is(length($got), length($body) + length("-- footer added by MMTest\n"), 'length as expected');
        ok($got eq $body . "-- footer added by MMTest\n", 'body is the original plus the footer, byte for byte');
    };

    subtest 'quarantine of the entire message (Mailmunge side)' => sub {
        my %before = map { $_ => 1 } $e2e->stack->quarantine_entries;
        my $id = _id($e2e, 'quarantine');
        my $res = $e2e->send(id => $id, subject => 'quarantine', to => ['q@example.org']);
        ok($res->{ok}, 'accepted') or diag($res->{failure});
        ok($e2e->delivered($id), 'still delivered (quarantine does not change the disposition)');
        my @new = grep { !$before{$_} } $e2e->stack->quarantine_entries;
        is(scalar(@new), 1, 'one new quarantine directory') or return;
        my $q = $new[0];
        like($q, qr{/\d{4}-\d\d-\d\d-\d\d/qdir-\d{4}-\d\d-\d\d-\d\d\.\d\d\.\d\d-\d{4}\z}, 'directory naming');
        my $read = sub { slurp_if_exists("$q/$_[0]") };
        is($read->('MSG.0'), "MMTest quarantines this message\n", 'MSG.0 holds the reason');
        is($read->('SENDER'), "<sender\@example.com>\n", 'SENDER with brackets');
        is($read->('RECIPIENTS'), "<q\@example.org>\n", 'RECIPIENTS with brackets');
        like($read->('ENTIRE_MESSAGE') // '', qr/^X-MMTest-Id: \Q$id\E$/m, 'ENTIRE_MESSAGE is the message');
        ok(-e "$q/HEADERS", 'HEADERS present');
    };

    subtest 'quarantine in the MTA (hold queue / Sendmail quarantine)' => sub {
        my %before = map { $_ => 1 } $e2e->mta->held;
        my $id = _id($e2e, 'smquarantine');
        my $res = $e2e->send(id => $id, subject => 'smquarantine');
        ok($res->{ok}, 'accepted') or diag($res->{failure});
        ok($e2e->not_delivered($id), 'not delivered');
        my @new = grep { !$before{$_} } $e2e->mta->held;
        is(scalar(@new), 1, 'exactly one message held by the MTA') or diag($e2e->diagnostics);
        if (!$pf && @new) {
            is($e2e->mta->quarantine_reason($new[0]), 'MMTest holds this message', 'Sendmail stored the reason');
        }
        $e2e->mta->delete_all;
    };
}

=head2 mta_rejects_recipient_opts($kind)

The MTA options that make the MTA itself refuse
C<mta-rejects@local.mmtest.invalid> with a C<550 5.1.1> reply (for the
C<extras> case about rejected recipients).  Postfix only: a
C<check_recipient_access> entry.  For Sendmail no cheap equivalent was
found: a refusal by the C<check_rcpt> ruleset is never shown to milters
(its "QuickAbort" exception skips the milter call), and an unknown user in
a local domain is only found at delivery ("will queue") in this setup.

=cut

sub mta_rejects_recipient_opts {
    my ($kind) = @_;
    return {} unless $kind eq 'postfix';
    return { main_cf => { smtpd_recipient_restrictions =>
        'check_recipient_access inline:{ { mta-rejects@local.mmtest.invalid = 550 5.1.1 The MTA refuses this recipient } }, permit' } };
}

=head2 extras($e2e)

Verdicts that end filtering early (accept / discard at MAIL), the
Postfix loopback relaxation for recipient checks, a recipient the MTA
itself refused (still shown to the filter, with mailer C<error>), many
recipients, an 8-bit body passed through untouched, duplicate
Content-Type headers, and the milter's C<-X> / C<-x> options.  Needs the
milter with C<-s -t> and the MTA set up with
C<mta_rejects_recipient_opts>.

=cut

sub extras {
    my ($e2e) = @_;
    my $pf = $e2e->kind eq 'postfix';

    subtest 'sender verdict ACCEPT_AND_NO_MORE_FILTERING: delivered unfiltered' => sub {
        my $id = _id($e2e, 'accept-sender');
        my $res = $e2e->send(id => $id, from => 'accept-sender@example.com', subject => 'addhdr');
        ok($res->{ok}, 'accepted') or diag($res->{failure});
        my $m = $e2e->delivered($id) or return;
        is_deeply([ $m->header('X-MMTest-Filtered') ], [], 'filter_message did not run');
        is_deeply([ $m->header('X-Scanned-By') ], [], 'no X-Scanned-By');
    };

    subtest 'sender verdict DISCARD: accepted, never delivered' => sub {
        my $id = _id($e2e, 'discard-sender');
        my $res = $e2e->send(id => $id, from => 'discard-sender@example.com');
        ok($res->{ok}, 'the client sees the message accepted') or diag($res->{failure});
        ok($e2e->not_delivered($id), 'but it is never delivered');
    };

    subtest 'recipient check from 127.0.0.1' => sub {
        my $id = _id($e2e, 'loopback-rcpt');
        my $res = $e2e->send(id => $id, local_addr => '127.0.0.1', to => [ 'reject-rcpt@example.org', 'ok@example.org' ]);
        ok($res->{ok}, 'accepted') or diag($res->{failure});
        if ($pf) {
            # Postfix mail from loopback: refusals of single recipients become "continue".
            like($e2e->reply_line($res->{rcpt}[0]), qr/^250 /, 'Postfix: refusal turned into continue');
            my $m = $e2e->delivered($id);
            is_deeply([ $m ? $m->rcpt_addresses : () ], [ 'ok@example.org', 'reject-rcpt@example.org' ], 'both delivered');
        } else {
            is($e2e->reply_line($res->{rcpt}[0]), '554 5.7.1 MMTest rejects your recipient', 'Sendmail: refused as usual');
            my $m = $e2e->delivered($id);
            is_deeply([ $m ? $m->rcpt_addresses : () ], ['ok@example.org'], 'only the good one delivered');
        }
    };

    subtest 'recipient refused by the MTA is still shown to the filter' => sub {
        plan skip_all => 'only set up for Postfix (see mta_rejects_recipient_opts)' unless $pf;
        my $id = _id($e2e, 'mta-rejects');
        my $res = $e2e->send(id => $id, subject => 'envelope', to => [ 'mta-rejects@local.mmtest.invalid', 'ok@example.org' ]);
        ok($res->{ok}, 'accepted for the good recipient') or diag($res->{failure});
        like($e2e->reply_line($res->{rcpt}[0]), qr/^550 5\.1\.1 .*The MTA refuses this recipient$/, 'MTA refused the first');
        my $m = $e2e->delivered($id) or return;
        is_deeply([ $m->rcpt_addresses ], ['ok@example.org'], 'delivered to the good one only');
        is($m->header('X-MMTest-Recipients'), '<mta-rejects@local.mmtest.invalid> <ok@example.org>',
            'the filter saw both recipients (SMFIP_RCPT_REJ)');
        like($m->header('X-MMTest-Mailers') // '', qr/^<mta-rejects\@local\.mmtest\.invalid>=error <ok\@example\.org>=\S+$/,
            'the refused one with mailer "error"');

        # -N: the milter does not ask for refused recipients any more.
        my @orig = @{ $e2e->stack->{milter_args} };
        $e2e->stack->restart_milter(@orig, '-N');
        my $id2 = _id($e2e, 'mta-rejects-N');
        $res = $e2e->send(id => $id2, subject => 'envelope', to => [ 'mta-rejects@local.mmtest.invalid', 'ok@example.org' ]);
        ok($res->{ok}, 'accepted with -N') or diag($res->{failure});
        my $m2 = $e2e->delivered($id2);
        is($m2 && $m2->header('X-MMTest-Recipients'), '<ok@example.org>', 'with -N the filter sees only the accepted recipient');
        $e2e->stack->restart_milter(@orig);
    };

    subtest 'greylisting (Mailmunge::Test::Greylist) at RCPT' => sub {
        my $id = _id($e2e, 'greylist');
        my $res = $e2e->send(id => $id, from => 'greylist-sender@example.com', to => ["gl-$id\@example.org"]);
        is($res->{failed_at}, 'rcpt', 'first attempt refused at RCPT');
        is($e2e->reply_line($res->{rcpt}[0]), '451 4.3.0 Greylisting in effect; please try again in 0 second(s)',
            'with the greylisting text');
        sleep 1;
        $res = $e2e->send(id => $id, from => 'greylist-sender@example.com', to => ["gl-$id\@example.org"]);
        ok($res->{ok}, 'the retry is accepted') or diag($res->{failure});
        ok($e2e->delivered($id), 'and delivered');
    };

    subtest 'many recipients' => sub {
        my $id = _id($e2e, 'many-rcpts');
        my @to = map { sprintf('user%02d@example.org', $_) } 1 .. 30;
        my $res = $e2e->send(id => $id, subject => 'envelope', to => \@to);
        ok($res->{ok}, 'accepted') or diag($res->{failure});
        my $m = $e2e->delivered($id) or return;
        is_deeply([ $m->rcpt_addresses ], [ sort @to ], 'all delivered');
        is($m->header('X-MMTest-Recipients'), join(' ', map { "<$_>" } @to), 'filter saw all, in order');
    };

    subtest '8-bit body passes untouched' => sub {
        my $id = _id($e2e, '8bit');
        my $body = "Gr\xfc\xdfe aus K\xf6ln \xe2\x82\xac\n" . ('x' x 900) . "\n"
            . "trailing blanks   \n\ttab first\n.\n..\n" . join('', map { chr } 0x80 .. 0xff) . "\nlast\n";
        my $res = $e2e->send(id => $id, body => $body, headers => [ [ 'Content-Type', 'text/plain; charset=iso-8859-1' ],
            [ 'Content-Transfer-Encoding', '8bit' ], [ 'MIME-Version', '1.0' ] ]);
        ok($res->{ok}, 'accepted') or diag($res->{failure});
        my $m = $e2e->delivered($id) or return;
        ok($m->body eq $body, 'body byte for byte') or diag(explain([ $m->body ]));
    };

    subtest 'duplicate Content-Type headers: all but the first are deleted' => sub {
        my $id = _id($e2e, 'two-ctypes');
        my $res = $e2e->send(id => $id, headers => [ [ 'MIME-Version', '1.0' ],
            [ 'Content-Type', 'text/plain; charset=us-ascii' ], [ 'Content-Type', 'text/html' ] ]);
        ok($res->{ok}, 'accepted') or diag($res->{failure});
        my $m = $e2e->delivered($id) or return;
        is_deeply([ $m->header('Content-Type') ], ['text/plain; charset=us-ascii'], 'only the first remains');
    };

    subtest 'milter -X suppresses X-Scanned-By, -x sets its text' => sub {
        my @orig = @{ $e2e->stack->{milter_args} };
        $e2e->stack->restart_milter(@orig, '-X');
        my $id = _id($e2e, 'no-scanned-by');
        my $res = $e2e->send(id => $id);
        ok($res->{ok}, 'accepted with -X') or diag($res->{failure});
        my $m = $e2e->delivered($id);
        ok($m && !defined($m->header('X-Scanned-By')), 'no X-Scanned-By with -X');
        is($m && $m->header('X-MMTest-Filtered'), 'yes', 'still filtered');

        $e2e->stack->restart_milter(@orig, '-x', 'MMTest Scanner 1.0');
        $id = _id($e2e, 'custom-scanned-by');
        $res = $e2e->send(id => $id);
        ok($res->{ok}, 'accepted with -x') or diag($res->{failure});
        $m = $e2e->delivered($id);
        like($m ? $m->header('X-Scanned-By') // '' : '', qr/\AMMTest Scanner 1\.0(?: on \S+)?\z/, 'custom text, not split at blanks');
        $e2e->stack->restart_milter(@orig);
    };
}

=head2 concurrent($e2e, $n)

Sends $n messages at once, each from its own client process, each with
its own body and words; checks every one arrives with its own body and
only its own modifications (no mixing of working directories between
concurrent SMTP sessions).  The stack should have at least $n workers
(C<-x>), since the milter tempfails a connection when no worker is free.

=cut

sub concurrent {
    my ($e2e, $n) = @_;
    subtest "$n messages at once" => sub {
        my $tag = _id($e2e, 'par');
        my $report = MMTest::Util::private_dir('par');
        my %want;
        my %kids;
        for my $i (1 .. $n) {
            my $id = "$tag-$i";
            my $body = join '', map { "message $i line $_\n" } 1 .. (200 * $i);
            my $subject = $i % 2 ? "addhdr envelope" : "envelope";
            $want{$id} = { body => $body, added => ($i % 2 ? 1 : 0), rcpt => "par$i\@example.org" };
            my $pid = fork() // die "fork: $!";
            if ($pid == 0) {
                my $r = eval { $e2e->send(id => $id, subject => $subject, body => $body, to => [ $want{$id}{rcpt} ]) };
                if (!($r && $r->{ok})) {
                    # Tell the parent why (Test::More must not run here).
                    MMTest::Util::spew("$report/$id", ($r ? $r->{failure} : $@) // 'unknown');
                    POSIX::_exit(1);
                }
                POSIX::_exit(0);
            }
            $kids{$pid} = $id;
        }
        my %failed;
        for my $pid (keys %kids) {
            waitpid($pid, 0);
            $failed{ $kids{$pid} } = 1 if $? != 0;
        }
        is_deeply([ sort keys %failed ], [], 'every client got its message accepted')
            or diag(join("\n", map { "$_: " . (-e "$report/$_" ? slurp("$report/$_") : '?') } sort keys %failed));
        for my $id (sort keys %want) {
            my $m = $e2e->delivered($id) or do { fail("$id delivered"); next };
            my $w = $want{$id};
            ok($m->body eq $w->{body}, "$id: its own body");
            is($m->header('X-MMTest-Recipients'), "<$w->{rcpt}>", "$id: the filter saw its own recipient");
            is(scalar(my @a = $m->header('X-MMTest-Added')), $w->{added}, "$id: only its own modifications");
        }
    };
}

=head2 postfix_local_submission($e2e)

Postfix only: mail submitted with Postfix's own C<sendmail> command (pickup
and cleanup, C<non_smtpd_milters>) is filtered too.  Postfix presents it
as a connection from C<localhost> / 127.0.0.1 and passes the addresses
without angle brackets; a recipient the filter would refuse is let
through, because Postfix cannot refuse one recipient of a local
submission (the worker turns the refusal into "continue").

=cut

sub postfix_local_submission {
    my ($e2e) = @_;
    subtest 'Postfix: local submission through non_smtpd_milters' => sub {
        my $id = _id($e2e, 'local-submission');
        my $msg = MMTest::SMTP->build_message(id => $id, subject => 'envelope addhdr');
        my $cd = $e2e->mta->config_dir;
        open(my $p, '|-', '/usr/sbin/sendmail', '-C', $cd, '-f', 'local-sender@example.com',
            'reject-rcpt@example.org', 'ok@example.org') or die "sendmail: $!";
        print {$p} $msg;
        ok(close($p), 'sendmail command succeeded');
        my $m = $e2e->delivered($id) or return;
        is($m->header('X-MMTest-Filtered'), 'yes', 'filtered');
        is($m->header('X-MMTest-Added'), 'added by the filter', 'modified');
        is($m->header('X-MMTest-Hostip'), '127.0.0.1', 'seen as coming from 127.0.0.1');
        is($m->header('X-MMTest-Helo'), 'localhost', 'with HELO localhost');
        is($m->header('X-MMTest-Sender'), 'local-sender@example.com', 'sender without brackets');
        is($m->header('X-MMTest-Recipients'), 'reject-rcpt@example.org ok@example.org', 'recipients without brackets');
        is_deeply([ $m->rcpt_addresses ], [ 'ok@example.org', 'reject-rcpt@example.org' ], 'both recipients delivered');
        like($m->header('X-Scanned-By') // '', qr/\Amailmunge 3\.09(?: on \S+)?\z/, 'X-Scanned-By');
    };
}

=head2 compat($e2e)

For a setup running F<t/data/e2e/compat-filter.pl>
(L<Mailmunge::Filter::Compat>, the MIMEDefang-style callbacks): parts
dropped and accepted with warnings, a part added, text boilerplate, a
tempfail from filter_begin, and the queue id the filter saw.

=cut

sub _multipart {
    my ($id, $subject) = @_;
    my $b = "mmtest-boundary-$id";
    my $pdf = join '', map { chr(($_ * 7) % 256) } 0 .. 2999;
    require MIME::Base64;
    my $body = "This is a multi-part message in MIME format.\n\n"
        . "--$b\nContent-Type: text/plain; charset=us-ascii\n\nThe main text of $id.\n\n"
        . "--$b\nContent-Type: application/octet-stream; name=\"drop.exe\"\n"
        . "Content-Disposition: attachment; filename=\"drop.exe\"\nContent-Transfer-Encoding: base64\n\n"
        . MIME::Base64::encode_base64("MZ pretend executable\n") . "\n"
        . "--$b\nContent-Type: text/plain; name=\"warn.txt\"\n"
        . "Content-Disposition: attachment; filename=\"warn.txt\"\n\nText that earns a warning.\n\n"
        . "--$b\nContent-Type: application/pdf; name=\"keep.pdf\"\n"
        . "Content-Disposition: attachment; filename=\"keep.pdf\"\nContent-Transfer-Encoding: base64\n\n"
        . MIME::Base64::encode_base64($pdf) . "\n"
        . "--$b--\n";
    my $msg = MMTest::SMTP->build_message(id => $id, subject => $subject, body => $body, headers => [
        [ 'MIME-Version', '1.0' ], [ 'Content-Type', "multipart/mixed; boundary=\"$b\"" ] ]);
    return ($msg, $pdf);
}

sub _parse_mime {
    my ($m) = @_;
    require MIME::Parser;
    my $p = MIME::Parser->new;
    $p->output_to_core(1);
    $p->tmp_to_core(1);
    return $p->parse_data($m->text);
}

sub _leaf_parts {
    my ($e) = @_;
    my @p = $e->parts;
    return @p ? map { _leaf_parts($_) } @p : ($e);
}

sub _queue_id_from_reply {
    my ($e2e, $reply) = @_;
    my $t = join ' ', @{ $reply->{lines} || [] };
    return $1 if $e2e->kind eq 'postfix' && $t =~ /queued as (\S+)/;
    return $1 if $e2e->kind eq 'sendmail' && $t =~ /^250 2\.0\.0 (\S+) Message accepted/;
    return undef;
}

sub compat {
    my ($e2e) = @_;

    subtest 'Compat: drop and warn per part, keep the rest' => sub {
        my $id = _id($e2e, 'compat-parts');
        my ($msg, $pdf) = _multipart($id, 'parts');
        my $res = $e2e->send(id => $id, data => $msg);
        ok($res->{ok}, 'accepted') or diag($res->{failure});
        my $m = $e2e->delivered($id) or return;
        my $top = _parse_mime($m);
        my @leaves = _leaf_parts($top);
        my %by_name = map { (($_->head->recommended_filename // '') => $_) } @leaves;
        ok(!$by_name{'drop.exe'}, 'drop.exe is gone');
        ok($by_name{'warn.txt'}, 'warn.txt kept');
        ok($by_name{'keep.pdf'} && $by_name{'keep.pdf'}->bodyhandle->as_string eq $pdf, 'keep.pdf kept byte for byte');
        my $all_text = join "\n", map { $_->bodyhandle ? $_->bodyhandle->as_string : '' }
            grep { ($_->effective_type // '') =~ m{^text/} } @leaves;
        like($all_text, qr/Dropped drop\.exe/, 'warning about the dropped part is in the message');
        like($all_text, qr/Accepted warn\.txt with a warning/, 'warning about warn.txt is in the message');
        like($all_text, qr/The main text of \Q$id\E\./, 'main text kept');
        my $qid = _queue_id_from_reply($e2e, $res->{data});
        is($m->header('X-Last-QID'), $qid, 'filter_end saw the MTA queue id') if defined $qid;
    };

    subtest 'Compat: add a part in filter_end' => sub {
        my $id = _id($e2e, 'compat-addpart');
        my $res = $e2e->send(id => $id, subject => 'addpart', body => "Plain body of $id\n");
        ok($res->{ok}, 'accepted') or diag($res->{failure});
        my $m = $e2e->delivered($id) or return;
        my @leaves = _leaf_parts(_parse_mime($m));
        my ($html) = grep { ($_->effective_type // '') eq 'text/html' } @leaves;
        ok($html, 'a text/html part was added');
        like($html ? $html->bodyhandle->as_string : '', qr/Part added by the compat filter/, 'with its content');
        my ($plain) = grep { ($_->effective_type // '') eq 'text/plain' } @leaves;
        like($plain ? $plain->bodyhandle->as_string : '', qr/Plain body of \Q$id\E/, 'original text still there');
    };

    subtest 'Compat: text boilerplate' => sub {
        my $id = _id($e2e, 'compat-boilerplate');
        my $res = $e2e->send(id => $id, subject => 'boilerplate', body => "Body of $id\n");
        ok($res->{ok}, 'accepted') or diag($res->{failure});
        my $m = $e2e->delivered($id) or return;
        like($m->body, qr/\ABody of \Q$id\E\n.*-- boilerplate from the compat filter\n?\z/s, 'boilerplate appended');
    };

    subtest 'Compat: tempfail from filter_begin' => sub {
        my $id = _id($e2e, 'compat-tempfail');
        my $res = $e2e->send(id => $id, subject => 'begin-tempfail');
        _refused($e2e, $res, ['data'], qr/^451 4\.3\.0 Compat filter_begin tempfails$/, 'filter_begin tempfail');
        ok($e2e->not_delivered($id), 'not delivered');
    };
}

=head2 edges($e2e)

Reply texts the milter must sanitise (multi-line, C<%>, 8-bit and control
bytes), the null sender, a recipient-stage discard, a long added header,
changing the second of several same-named headers, and an empty
replacement body (upstream keeps the original body then).  Needs the
milter with C<-s -t>.

=cut

sub edges {
    my ($e2e) = @_;
    my $pf = $e2e->kind eq 'postfix';

    subtest 'multi-line reply text' => sub {
        my $res = $e2e->send(id => _id($e2e, 'multiline'), from => 'multiline-sender@example.com');
        is($res->{failed_at}, 'mail', 'refused at MAIL');
        is_deeply($res->{mail}{lines}, [ '554-5.7.1 MMTest first line', '554 5.7.1 MMTest second line' ],
            'one reply line per text line, code and DSN on each');
    };

    subtest 'percent signs in the reply text' => sub {
        my $res = $e2e->send(id => _id($e2e, 'percent'), from => 'percent-sender@example.com');
        is($res->{failed_at}, 'mail', 'refused at MAIL');
        # The milter doubles each % (libmilter's rule); the MTA undoes it.
        is($e2e->reply_line($res->{mail}), '554 5.7.1 100% sure, 50%% maybe', 'text arrives as the filter wrote it');
    };

    subtest '8-bit and control bytes in the reply text' => sub {
        my $res = $e2e->send(id => _id($e2e, 'eightbit'), from => 'eightbit-sender@example.com');
        is($res->{failed_at}, 'mail', 'refused at MAIL');
        is($e2e->reply_line($res->{mail}), '554 5.7.1 caf   closed today', 'each such byte became a space');
    };

    subtest 'null sender' => sub {
        my $id = _id($e2e, 'null-sender');
        my $res = $e2e->send(id => $id, from => '<>', subject => 'envelope');
        ok($res->{ok}, 'accepted') or diag($res->{failure});
        my $m = $e2e->delivered($id) or return;
        is($m->header('X-MMTest-Sender'), '<>', 'filter saw <>');
        is($m->mail_from, '<>', 'relayed with the null sender');
    };

    subtest 'DISCARD from the recipient check discards the message' => sub {
        my $id = _id($e2e, 'discard-rcpt');
        my $res = $e2e->send(id => $id, to => [ 'ok@example.org', 'discard-rcpt@example.org' ]);
        ok($res->{ok}, 'the client sees the message accepted') or diag($res->{failure});
        ok($e2e->not_delivered($id), 'but nobody gets it');
    };

    subtest 'long header added by the filter' => sub {
        my $id = _id($e2e, 'longhdr');
        my $res = $e2e->send(id => $id, subject => 'longhdr');
        ok($res->{ok}, 'accepted') or diag($res->{failure});
        my $m = $e2e->delivered($id) or return;
        # ~700 bytes: long, but below both MTAs' line limits (beyond them
        # Postfix and Sendmail split lines themselves, and Sendmail cuts
        # header values of ~2300 bytes even without any milter).
        is($m->header('X-MMTest-Long'), join(' ', map { "word$_" } 1 .. 100), 'whole value arrives unchanged');
    };

    subtest 'change the second of three same-named headers' => sub {
        my $id = _id($e2e, 'chgsecond');
        my $res = $e2e->send(id => $id, subject => 'chgsecond', headers => [
            [ 'X-MMTest-Multi', 'one' ], [ 'X-MMTest-Multi', 'two' ], [ 'X-MMTest-Multi', 'three' ] ]);
        ok($res->{ok}, 'accepted') or diag($res->{failure});
        my $m = $e2e->delivered($id) or return;
        is_deeply([ $m->header('X-MMTest-Multi') ], [ 'one', 'second one changed', 'three' ], 'only the second changed');
    };

    subtest 'many headers and a 14 KB folded header pass through' => sub {
        my $id = _id($e2e, 'bighdrs');
        my $big = join("\n\t", map { sprintf('part%03d-%s', $_, 'x' x 60) } 1 .. 200);
        my @many = map { [ sprintf('X-MMTest-Many-%03d', $_), "value $_" ] } 1 .. 300;
        my $res = $e2e->send(id => $id, subject => 'addhdr', headers => [ [ 'X-MMTest-Big', $big ], @many ]);
        ok($res->{ok}, 'accepted') or diag($res->{failure});
        my $m = $e2e->delivered($id) or return;
        (my $want = $big) =~ s/\n\t/\t/g;
        is($m->header('X-MMTest-Big'), $want, 'big folded header intact');
        is_deeply([ grep { /^X-MMTest-Many-/ } $m->header_names ], [ map { $_->[0] } @many ], 'all 300 headers, in order');
        is($m->header('X-MMTest-Many-300'), 'value 300', 'last one intact');
        is($m->header('X-MMTest-Added'), 'added by the filter', 'filter still worked');
    };

    subtest 'empty replacement body keeps the original (upstream quirk)' => sub {
        my $id = _id($e2e, 'emptybody');
        my $body = "Original body stays\n";
        my $res = $e2e->send(id => $id, subject => 'emptybody', body => $body);
        ok($res->{ok}, 'accepted') or diag($res->{failure});
        my $m = $e2e->delivered($id) or return;
        is($m->body, $body, 'body unchanged');
    };
}

=head2 spool_is_clean($e2e)

After all messages are done, the spool directory holds no working
directories (C<mm-*>) any more: nothing leaks, whatever the verdicts were.

=cut

sub spool_is_clean {
    my ($e2e) = @_;
    subtest 'no working directories left in the spool' => sub {
        my $spool = $e2e->stack->spool;
        my @left;
        my $ok = eval {
            MMTest::Util::wait_until(10, 'the spool to be clean', sub {
                opendir(my $dh, $spool) or return 0;
                @left = grep { /^mm-/ } readdir $dh;
                return !@left;
            });
        };
        ok($ok, 'spool clean') or diag("left in $spool: @left");
    };
}

=head2 slow_filter($e2e)

A filter that takes longer than the multiplexor's busy timeout (the setup
must run the multiplexor with C<-b 10>): the message is tempfailed, never
accepted unfiltered, and the next message goes through.

=cut

sub slow_filter {
    my ($e2e) = @_;
    subtest 'filter slower than the busy timeout' => sub {
        my $id = _id($e2e, 'slow');
        my $res = $e2e->send(id => $id, subject => 'sleep20');
        _refused($e2e, $res, ['data'], qr/^\Q$DEFAULT_TEMPFAIL{ $e2e->kind }\E$/, 'slow filter');
        ok($e2e->not_delivered($id), 'not delivered');
        my $id2 = _id($e2e, 'after-slow');
        my $res2 = $e2e->send(id => $id2, subject => 'plain');
        ok($res2->{ok}, 'next message accepted') or diag($res2->{failure});
        ok($e2e->delivered($id2), 'next message delivered');
    };
}

=head2 milter_macros($e2e)

Without C<-y> the filter has no C<daemon_port> macro (neither MTA sends
C<{daemon_port}> by default); with C<-y> the milter asks for its macro
list during negotiation and the filter sees the MTA's SMTP port there.

=cut

sub milter_macros {
    my ($e2e) = @_;
    subtest 'milter -y: macro list requested, daemon_port reaches the filter' => sub {
        my @orig = @{ $e2e->stack->{milter_args} };
        my $id = _id($e2e, 'no-y');
        my $res = $e2e->send(id => $id, subject => 'envelope');
        ok($res->{ok}, 'accepted') or diag($res->{failure});
        my $m = $e2e->delivered($id);
        is($m && $m->header('X-MMTest-Port'), 'none', 'without -y: no daemon_port macro');

        $e2e->stack->restart_milter(@orig, '-y');
        $id = _id($e2e, 'with-y');
        $res = $e2e->send(id => $id, subject => 'envelope');
        ok($res->{ok}, 'accepted with -y') or diag($res->{failure});
        $m = $e2e->delivered($id);
        is($m && $m->header('X-MMTest-Port'), $e2e->mta->port, 'with -y: daemon_port is the MTA port');
        $e2e->stack->restart_milter(@orig);
    };
}

=head2 reread($e2e)

The operator's workflow for a changed filter: edit the file, run
C<mm-mx-ctrl reread>; the next message is handled by the new code and no
message is lost on the way.  Needs C<copy_filter>.

=cut

sub reread {
    my ($e2e) = @_;
    subtest 'changed filter picked up with mm-mx-ctrl reread' => sub {
        my $id = _id($e2e, 'before-reread');
        my $res = $e2e->send(id => $id);
        ok($res->{ok}, 'accepted') or diag($res->{failure});
        my $m = $e2e->delivered($id);
        is($m && $m->header('X-MMTest-Filtered'), 'yes', 'old filter');

        $e2e->stack->edit_filter(sub {
            my $t = shift;
            $t =~ s/action_add_header\('X-MMTest-Filtered', 'yes'\)/action_add_header('X-MMTest-Filtered', 'yes, version 2')/
                or die "filter text not found\n";
            return $t;
        });
        my $out = $e2e->stack->ctrl('reread');
        is($?, 0, 'mm-mx-ctrl reread succeeded') or diag($out);
        is($out, "Forced reread of filter rules\n", 'multiplexor confirmed');

        $id = _id($e2e, 'after-reread');
        $res = $e2e->send(id => $id);
        ok($res->{ok}, 'accepted after reread') or diag($res->{failure});
        $m = $e2e->delivered($id);
        is($m && $m->header('X-MMTest-Filtered'), 'yes, version 2', 'new filter in use');
    };
}

=head2 ipv6($e2e)

A client on ::1 (the MTA must listen there too): the filter sees the
IPv6 address in the relay check and in the message context.  Needs the
milter with C<-r>.

=cut

sub ipv6 {
    my ($e2e) = @_;
    subtest 'client on ::1' => sub {
        my $id = _id($e2e, 'ipv6');
        my $res = $e2e->send(id => $id, host => '::1', local_addr => '::1', subject => 'envelope');
        ok($res->{ok}, 'accepted over IPv6') or diag($res->{failure});
        my $m = $e2e->delivered($id) or return;
        is($m->header('X-MMTest-Hostip'), '::1', 'filter saw ::1');
        # Postfix writes [::1]; Sendmail its address literal, uncompressed.
        like($m->header('Received') // '', qr/\[(?:IPv6:)?(?:::1|0:0:0:0:0:0:0:1)\]/, 'MTA saw ::1 too');
    };
}

=head2 dkim_key()

Creates a throw-away 1024-bit RSA key for the C<dkim> case and returns
C<($private_key_file, $public_key_base64)>.  The file is readable by the
worker user.

=cut

sub dkim_key {
    require Crypt::OpenSSL::RSA;
    my $rsa = Crypt::OpenSSL::RSA->generate_key(1024);
    my $dir = MMTest::Util::private_dir('dkim');
    my $file = "$dir/mmtest.key";
    MMTest::Util::spew($file, $rsa->get_private_key_string, 0644);
    my $pub = $rsa->get_public_key_x509_string;
    $pub =~ s/-----[^-]+-----//g;
    $pub =~ s/\s+//g;
    return ($file, $pub);
}

# A stand-in for Net::DNS::Resolver that knows one TXT record.
package MMTest::Cases::FakeResolver {
    sub new { my ($c, %txt) = @_; bless {%txt}, $c }
    sub send {
        my ($self, $name, $type) = @_;
        require Net::DNS;
        my $p = Net::DNS::Packet->new($name, $type // 'TXT');
        $p->header->qr(1);
        if (defined(my $t = $self->{ lc $name })) {
            $p->push(answer => Net::DNS::RR->new(name => $name, type => 'TXT', ttl => 300, txtdata => $t));
        } else {
            $p->header->rcode('NXDOMAIN');
        }
        return $p;
    }
    sub errorstring { 'NOERROR' }
}

=head2 dkim($e2e, $public_key)

The filter signs the message (after adding a header, so the signer must
take the pending changes into account); the delivered message verifies
against the public key.  The setup must pass C<MMTEST_DKIM_KEY> (see
C<dkim_key>) in C<env>.

=cut

sub dkim {
    my ($e2e, $pub) = @_;
    subtest 'DKIM signature made in the filter verifies after delivery' => sub {
        my $id = _id($e2e, 'dkim');
        my $res = $e2e->send(id => $id, subject => 'addhdr dkim',
            body => "Signed body line one\n\nline three with trailing blanks  \n");
        ok($res->{ok}, 'accepted') or diag($res->{failure});
        my $m = $e2e->delivered($id) or return;
        my $sig = $m->header('DKIM-Signature') // '';
        like($sig, qr/\bd=example\.com\b/, 'signature for example.com');
        like($sig, qr/\bh=[^;]*x-mmtest-added/i, 'the added header is signed');
        require Mail::DKIM::Verifier;
        require Mail::DKIM::DNS;
        my $old = Mail::DKIM::DNS::resolver();
        Mail::DKIM::DNS::resolver(MMTest::Cases::FakeResolver->new(
            'mmtest._domainkey.example.com' => "v=DKIM1; k=rsa; p=$pub"));
        my $v = Mail::DKIM::Verifier->new;
        $v->PRINT($m->raw);
        $v->CLOSE;
        Mail::DKIM::DNS::resolver($old);
        is($v->result, 'pass', 'DKIM verification passes') or diag($v->result_detail);
    };
}

=head2 reserved_for_loopback($e2e)

Milter C<-R 2> with a multiplexor of 2 workers (the default of
L<MMTest::Stack>): a message from anywhere but 127.0.0.1 must leave 2
workers free and is therefore always tempfailed, while 127.0.0.1 is
always let in. With our multiplexor the refusal comes at DATA, from the
worker reservation (protocol/milter.md §17.4), before the body is sent.

=cut

sub reserved_for_loopback {
    my ($e2e) = @_;
    subtest 'milter -R: workers reserved for loopback' => sub {
        my @orig = @{ $e2e->stack->{milter_args} };
        $e2e->stack->restart_milter(@orig, '-R', '2');
        my $id = _id($e2e, 'reserved-remote');
        my $res = $e2e->send(id => $id);
        is($res->{failed_at}, 'data', 'non-loopback client refused at DATA');
        ok(!($res->{data}{body_sent} // 0), 'before its body was sent');
        is(join(' | ', @{ ($e2e->rejection($res) // {})->{lines} // [] }), '451 4.3.2 No free filter worker; please try again later',
            'with the reservation\'s temporary failure');
        like($e2e->stack->milter_log, qr/mfdata: No free workers: tempfailing the message before it is sent/, 'logged by the milter');
        my $id2 = _id($e2e, 'reserved-local');
        my $res2 = $e2e->send(id => $id2, local_addr => '127.0.0.1');
        ok($res2->{ok}, '127.0.0.1 accepted') or diag($res2->{failure});
        ok($e2e->delivered($id2), 'and delivered');
        $e2e->stack->restart_milter(@orig);
        ok($e2e->not_delivered($id), 'the refused one never arrives');
    };
}

=head2 one_connection_many_messages($e2e)

Several transactions on one SMTP connection: a normal message, one the
filter bounces, an aborted one (RSET after RCPT), and another normal one.
Each delivered message has only its own recipients, sender and
modifications (per-message state is reset between transactions).

=cut

sub one_connection_many_messages {
    my ($e2e) = @_;
    subtest 'several transactions on one connection' => sub {
        my $tag = _id($e2e, 'conn');
        my $c = MMTest::SMTP->new(port => $e2e->mta->port);
        is($c->cmd('EHLO many.mmtest.invalid')->{code}, 250, 'EHLO');
        my $txn = sub {
            my ($from, $to, %msg) = @_;
            my %r = (mail => $c->cmd("MAIL FROM:<$from>"));
            $r{rcpt} = [ map { $c->cmd("RCPT TO:<$_>") } @$to ];
            $r{data} = $c->data(MMTest::SMTP->build_message(%msg));
            return \%r;
        };
        my $r1 = $txn->('first@example.com', [ 'a1@example.org', 'a2@example.org' ], id => "$tag-1", subject => 'addhdr envelope');
        is($r1->{data}{code}, 250, 'first message accepted');
        my $r2 = $txn->('second@example.com', ['b1@example.org'], id => "$tag-2", subject => 'bounce');
        is($e2e->reply_line($r2->{data}), '554 5.7.1 MMTest bounces this message', 'second message bounced');
        is($c->cmd('MAIL FROM:<aborted@example.com>')->{code}, 250, 'third transaction started');
        is($c->cmd('RCPT TO:<c1@example.org>')->{code}, 250, 'third transaction recipient');
        is($c->cmd('RSET')->{code}, 250, 'third transaction aborted with RSET');
        my $r4 = $txn->('fourth@example.com', ['d1@example.org'], id => "$tag-4", subject => 'envelope');
        is($r4->{data}{code}, 250, 'fourth message accepted');
        $c->quit;

        my $m1 = $e2e->delivered("$tag-1");
        is_deeply([ $m1 ? $m1->rcpt_addresses : () ], [ 'a1@example.org', 'a2@example.org' ], 'first: its recipients');
        is($m1 && $m1->header('X-MMTest-Added'), 'added by the filter', 'first: its modification');
        my $m4 = $e2e->delivered("$tag-4") or return;
        is_deeply([ $m4->rcpt_addresses ], ['d1@example.org'], 'fourth: only its own recipient');
        is($m4->header('X-MMTest-Recipients'), '<d1@example.org>', 'fourth: filter saw only its own recipient');
        is($m4->header('X-MMTest-Sender'), '<fourth@example.com>', 'fourth: filter saw its own sender');
        is_deeply([ $m4->header('X-MMTest-Added') ], [], 'fourth: no modification carried over');
        ok($e2e->not_delivered("$tag-2"), 'bounced one not delivered');
    };
}

=head2 multiplexor_down($e2e)

With the multiplexor stopped, a new message is tempfailed (never
accepted unfiltered); once it is back, mail flows again.  The same with
the milter stopped (the MTA's own fail-safe).

=cut

sub multiplexor_down {
    my ($e2e) = @_;
    subtest 'multiplexor down: tempfail, then recovery' => sub {
        $e2e->stack->stop_multiplexor;
        my $id = _id($e2e, 'mx-down');
        my $res = $e2e->send(id => $id, subject => 'plain');
        my $reply = $e2e->rejection($res);
        ok(!$res->{ok}, 'message refused while the multiplexor is down')
            or diag('accepted while the multiplexor was down');
        # The milter's connect-time free-worker check fails: tempfail, which
        # the MTA reports at MAIL with its own text.
        is($res->{failed_at}, 'mail', 'refused at MAIL');
        is(join(' | ', @{ ($reply // {})->{lines} // [] }), $DEFAULT_TEMPFAIL{ $e2e->kind }, 'with a temporary failure');
        ok($e2e->not_delivered($id), 'nothing delivered unfiltered');

        $e2e->stack->start_multiplexor;
        my $id2 = _id($e2e, 'mx-back');
        my $res2 = $e2e->send(id => $id2, subject => 'plain');
        ok($res2->{ok}, 'accepted again once the multiplexor is back') or diag($res2->{failure});
        my $m = $e2e->delivered($id2);
        is($m && $m->header('X-MMTest-Filtered'), 'yes', 'and filtered');
    };

    subtest 'milter down: the MTA tempfails (milter_default_action / F=T)' => sub {
        $e2e->stack->stop_milter;
        my $id = _id($e2e, 'milter-down');
        my $res = $e2e->send(id => $id, subject => 'plain');
        ok(!$res->{ok}, 'message refused while the milter is down');
        like(join(' | ', @{ ($e2e->rejection($res) // {})->{lines} // [] }), qr/^4\d\d /, 'with a temporary failure');
        ok($e2e->not_delivered($id), 'nothing delivered unfiltered');
        $e2e->stack->start_milter;
        my $id2 = _id($e2e, 'milter-back');
        my $res2 = $e2e->send(id => $id2, subject => 'plain');
        ok($res2->{ok}, 'accepted again once the milter is back') or diag($res2->{failure});
        ok($e2e->delivered($id2), 'delivered');
    };
}

1;
