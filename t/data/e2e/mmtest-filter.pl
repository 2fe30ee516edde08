#!/usr/bin/perl
# Filter used by the end-to-end tests (t/5*.t, t/6*.t).  What it does is
# chosen by the message itself, so one running stack serves every case:
#
#   connecting client address   127.0.0.3 reject, 127.0.0.4 tempfail (relay check, -r)
#   HELO name                   helo-reject.*, helo-tempfail.*        (-H)
#   envelope sender local part  reject-sender, tempfail-sender, reject550-sender,
#                               accept-sender (accept, no more filtering), discard-sender,
#                               multiline-sender, percent-sender, eightbit-sender (reply texts) (-s)
#   sender greylist-sender      recipients greylisted (Mailmunge::Test::Greylist, SQLite in the spool) (-t)
#   recipient local part        reject-rcpt, tempfail-rcpt, discard-rcpt (-t)
#   Subject words (filter_message), any combination:
#     addhdr inshdr chghdr delhdr addrcpt delrcpt chgsender newbody appendbody
#     bounce bounce550 tempfail discard quarantine smquarantine die envelope
#     longhdr chgsecond emptybody crash sleep20
#     dkim (sign with the key in $MMTEST_DKIM_KEY, domain example.com, selector mmtest;
#           done last, so it covers the other changes)
#     bodymd5 (X-MMTest-Body-MD5: MD5 of the body the filter saw, LF line ends)
#     rcptcount (X-MMTest-Rcpt-Count: how many recipients the filter saw)
#
# Every message that reaches filter_message also gets "X-MMTest-Filtered: yes".
use strict;
use warnings;

package MMTestFilter;
use base qw(Mailmunge::Filter);

use Mailmunge::Response;
use Mailmunge::Constants;
use MIME::Entity;
use POSIX ();

sub filter_relay {
    my ($self, $ctx) = @_;
    my $ip = $ctx->hostip // '';
    return Mailmunge::Response->REJECT(message => "MMTest rejects relay from $ip") if $ip eq '127.0.0.3';
    return Mailmunge::Response->TEMPFAIL(message => "MMTest tempfails relay from $ip") if $ip eq '127.0.0.4';
    return Mailmunge::Response->CONTINUE();
}

sub filter_helo {
    my ($self, $ctx) = @_;
    my $helo = $ctx->helo // '';
    return Mailmunge::Response->REJECT(message => 'MMTest rejects your HELO') if $helo =~ /^helo-reject\./;
    return Mailmunge::Response->TEMPFAIL(message => 'MMTest tempfails your HELO') if $helo =~ /^helo-tempfail\./;
    return Mailmunge::Response->CONTINUE();
}

sub _local_part {
    my ($self, $addr) = @_;
    my $a = $self->canonical_email($addr // '');
    $a =~ s/\@.*//;
    return $a;
}

sub filter_sender {
    my ($self, $ctx) = @_;
    my $lp = $self->_local_part($ctx->sender);
    return Mailmunge::Response->REJECT(message => 'MMTest rejects your sender') if $lp eq 'reject-sender';
    return Mailmunge::Response->TEMPFAIL(message => 'MMTest tempfails your sender') if $lp eq 'tempfail-sender';
    return Mailmunge::Response->REJECT(code => 550, dsn => '5.7.0', message => 'MMTest says 550 to your sender')
        if $lp eq 'reject550-sender';
    return Mailmunge::Response->ACCEPT_AND_NO_MORE_FILTERING() if $lp eq 'accept-sender';
    return Mailmunge::Response->DISCARD() if $lp eq 'discard-sender';
    return Mailmunge::Response->REJECT(message => "MMTest first line\nMMTest second line") if $lp eq 'multiline-sender';
    return Mailmunge::Response->REJECT(message => '100% sure, 50%% maybe') if $lp eq 'percent-sender';
    return Mailmunge::Response->REJECT(message => "caf\xc3\xa9 closed\ttoday") if $lp eq 'eightbit-sender';
    return Mailmunge::Response->CONTINUE();
}

sub _greylist_db {
    require DBI;
    my $file = Mailmunge::Constants->get('Path:SPOOLDIR') . '/mmtest-greylist.sqlite';
    my $dbh = DBI->connect("dbi:SQLite:dbname=$file", '', '', { RaiseError => 1, PrintError => 0 });
    $dbh->sqlite_busy_timeout(10_000);
    $dbh->do('CREATE TABLE IF NOT EXISTS greylist(hash TEXT PRIMARY KEY NOT NULL, last_seen INTEGER)');
    $dbh->do('CREATE TABLE IF NOT EXISTS ips_known_to_retry(ip TEXT PRIMARY KEY NOT NULL, last_seen INTEGER)');
    return $dbh;
}

sub filter_recipient {
    my ($self, $ctx) = @_;
    if ($self->_local_part($ctx->sender) eq 'greylist-sender') {
        require Mailmunge::Test::Greylist;
        return Mailmunge::Test::Greylist->new($self)->evaluate(_greylist_db(), 0, 0, $ctx->hostip,
            $ctx->sender, $ctx->recipients->[0]);
    }
    my $lp = $self->_local_part($ctx->recipients->[0]);
    return Mailmunge::Response->REJECT(message => 'MMTest rejects your recipient') if $lp eq 'reject-rcpt';
    return Mailmunge::Response->TEMPFAIL(message => 'MMTest tempfails your recipient') if $lp eq 'tempfail-rcpt';
    return Mailmunge::Response->DISCARD() if $lp eq 'discard-rcpt';
    return Mailmunge::Response->CONTINUE();
}

sub _body_text {
    my ($self, $ctx) = @_;
    my $entity = $ctx->mime_entity or return '';
    my $io = $entity->bodyhandle ? $entity->bodyhandle->open('r') : undef;
    return '' unless $io;
    local $/;
    my $text = $io->getline // '';
    $io->close;
    return $text;
}

# MD5 (hex) of the decoded body, read line by line so a body of many MB
# is never held in memory at once.
sub _body_md5 {
    my ($self, $ctx) = @_;
    require Digest::MD5;
    my $md5 = Digest::MD5->new;
    my $entity = $ctx->mime_entity;
    my $io = $entity && $entity->bodyhandle ? $entity->bodyhandle->open('r') : undef;
    if ($io) {
        while (defined(my $line = $io->getline)) { $md5->add($line) }
        $io->close;
    }
    return $md5->hexdigest;
}

sub filter_message {
    my ($self, $ctx) = @_;
    my %w = map { lc($_) => 1 } split ' ', ($ctx->subject // '');

    die "MMTest filter dies on purpose\n" if $w{die};
    # The worker process vanishes in the middle of a scan.
    POSIX::_exit(3) if $w{crash};
    # Longer than the multiplexor's busy timeout in the slow-filter test.
    sleep 20 if $w{sleep20};

    $ctx->action_add_header('X-MMTest-Filtered', 'yes');
    if ($w{envelope}) {
        $ctx->action_add_header('X-MMTest-Sender', $ctx->sender // '');
        $ctx->action_add_header('X-MMTest-Recipients', join(' ', @{ $ctx->recipients || [] }));
        $ctx->action_add_header('X-MMTest-Helo', $ctx->helo // '');
        $ctx->action_add_header('X-MMTest-Hostip', $ctx->hostip // '');
        $ctx->action_add_header('X-MMTest-Port', $ctx->sendmail_macro('daemon_port') // 'none');
        $ctx->action_add_header('X-MMTest-Mailers', join(' ', map {
            my $m = $ctx->get_recipient_mailer($_);
            "$_=" . (ref $m ? ($m->[0] // '') : '');
        } @{ $ctx->recipients || [] }));
    }
    $ctx->action_add_header('X-MMTest-Body-MD5', $self->_body_md5($ctx)) if $w{bodymd5};
    $ctx->action_add_header('X-MMTest-Rcpt-Count', scalar @{ $ctx->recipients || [] }) if $w{rcptcount};
    $ctx->action_add_header('X-MMTest-Added', 'added by the filter') if $w{addhdr};
    $ctx->action_insert_header('X-MMTest-Inserted', 'inserted at the top', 0) if $w{inshdr};
    $ctx->action_change_header('X-MMTest-Change-Me', 'changed by the filter') if $w{chghdr};
    $ctx->action_delete_header('X-MMTest-Delete-Me') if $w{delhdr};
    $ctx->add_recipient('<added-rcpt@example.net>') if $w{addrcpt};
    $ctx->delete_recipient($ctx->recipients->[0]) if $w{delrcpt};
    $ctx->change_sender('<changed-sender@example.org>') if $w{chgsender};
    $ctx->action_add_header('X-MMTest-Long', join(' ', map { "word$_" } 1 .. 100)) if $w{longhdr};
    $ctx->action_change_header('X-MMTest-Multi', 'second one changed', 2) if $w{chgsecond};
    if ($w{emptybody}) {
        my $e = MIME::Entity->build(Type => 'text/plain', Charset => 'us-ascii', Encoding => '7bit',
            'X-Mailer' => undef, Data => ['']);
        $ctx->new_mime_entity($e);
    }

    if ($w{newbody}) {
        my $e = MIME::Entity->build(
            Type => 'text/plain', Charset => 'us-ascii', Encoding => '7bit',
            'X-Mailer' => undef, Data => ["The filter replaced this body.\n"],
        );
        $ctx->new_mime_entity($e);
    }
    if ($w{appendbody}) {
        # Rebuild the message with the original (possibly multi-MB) text plus a
        # footer, so the whole body travels back through NEWBODY.
        my $e = MIME::Entity->build(
            Type => 'text/plain', Charset => 'us-ascii', Encoding => '7bit',
            'X-Mailer' => undef, Data => [ $self->_body_text($ctx) . "-- footer added by MMTest\n" ],
        );
        $ctx->new_mime_entity($e);
    }

    if ($w{dkim}) {
        require Mail::DKIM::Signer;
        require Mailmunge::Action::DKIMSigner;
        my $signer = Mail::DKIM::Signer->new(
            Algorithm => 'rsa-sha256', Method => 'relaxed', Domain => 'example.com',
            Selector => 'mmtest', KeyFile => $ENV{MMTEST_DKIM_KEY},
            Headers => 'from:to:subject:date:message-id:x-mmtest-added:x-mmtest-filtered',
        );
        Mailmunge::Action::DKIMSigner->new($self)->add_dkim_signature($ctx, $signer)
            or die "DKIM signing failed\n";
    }

    $ctx->action_quarantine_entire_message('MMTest quarantines this message') if $w{quarantine};
    $ctx->action_sm_quarantine('MMTest holds this message') if $w{smquarantine};

    return Mailmunge::Response->DISCARD() if $w{discard};
    $ctx->action_bounce('MMTest bounces this message') if $w{bounce};
    $ctx->action_bounce('MMTest bounces with 550', 550, '5.7.0') if $w{bounce550};
    $ctx->action_tempfail('MMTest tempfails this message') if $w{tempfail};
    return;
}

package main;

my $filter = MMTestFilter->new();
$filter->run();
exit(0);
