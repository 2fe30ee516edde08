#!/usr/bin/perl
# Filter used by the fault suite (t/80-*.t .. t/84-*.t, protocol/e2e.md §9).
# Each misbehaviour is chosen by the message, so one running stack serves
# every case:
#
#   client address 127.0.0.5       filter_relay blocks (-r)
#   sender local part block-sender* filter_sender blocks (-s)
#   recipient local part block-rcpt* filter_recipient blocks (-t)
#   Subject words (filter_message):
#     block       block
#     garbage     a line of garbage on the reply channel, then files created
#                 in the working directory for 0.3 s, then the normal reply
#     earlyok     "ok" on the reply channel before RESULTS is finished, then
#                 the normal reply
#     halfline    half a reply line (no newline), then block
#     bigline     a 1 MB line on the reply channel, then the normal reply
#     closeout    close the reply channel, then block
#     stdoutjunk  print junk on STDOUT (which the worker points at stderr):
#                 harmless, the message is filtered normally
#
# "Block" means: write this process's pid to READY-KEY.pid in the directory
# named by MMTEST_FAULT_DIR (so the test can kill exactly this worker), then
# wait until RELEASE-KEY appears there (at most 120 s).  KEY is "relay", the
# sender's or recipient's local part, or "scan-" and the X-MMTest-Id header.
#
# A worker that finds the file die-at-start in that directory kills itself
# with SIGKILL in initialize(), before it answers anything.
#
# Every message that reaches the end of filter_message gets
# "X-MMTest-Filtered: yes".
use strict;
use warnings;

package FaultFilter;
use base qw(Mailmunge::Filter);

use IO::Handle;
use Mailmunge::Response;
use Time::HiRes ();

sub _dir { return $ENV{MMTEST_FAULT_DIR} // die "MMTEST_FAULT_DIR is not set\n" }

sub initialize {
    my ($self) = @_;
    kill('KILL', $$) if -e _dir() . '/die-at-start';
    return;
}

# Tells the test which process to kill, then waits for it (or a release).
sub _block {
    my ($self, $key) = @_;
    my $dir = _dir();
    my $tmp = "$dir/.ready-$key.$$";
    open(my $fh, '>', $tmp) or die "cannot write $tmp: $!\n";
    print {$fh} "$$\n";
    close($fh) or die "cannot write $tmp: $!\n";
    rename($tmp, "$dir/ready-$key.pid") or die "cannot rename $tmp: $!\n";
    my $deadline = time() + 120;
    while (time() < $deadline) {
        return if -e "$dir/release-$key";
        select(undef, undef, undef, 0.05);
    }
    return;
}

# The pipe the multiplexor reads replies from.  Mailmunge::Filter keeps it
# in a private handle (STDOUT is pointed at stderr so that stray prints
# cannot desynchronise the protocol); a test that means to break the
# protocol has to write there.
sub _reply_channel {
    my ($self) = @_;
    return $self->{reply_fh} || \*STDOUT;
}

sub _local_part {
    my ($self, $addr) = @_;
    my $a = $self->canonical_email($addr // '');
    $a =~ s/\@.*//;
    return $a;
}

sub filter_relay {
    my ($self, $ctx) = @_;
    $self->_block('relay') if ($ctx->hostip // '') eq '127.0.0.5';
    return Mailmunge::Response->CONTINUE();
}

sub filter_sender {
    my ($self, $ctx) = @_;
    my $lp = $self->_local_part($ctx->sender);
    $self->_block($lp) if $lp =~ /^block-sender[\w-]*\z/;
    return Mailmunge::Response->CONTINUE();
}

sub filter_recipient {
    my ($self, $ctx) = @_;
    my $lp = $self->_local_part($ctx->recipients->[0]);
    $self->_block($lp) if $lp =~ /^block-rcpt[\w-]*\z/;
    return Mailmunge::Response->CONTINUE();
}

sub filter_message {
    my ($self, $ctx) = @_;
    my %w = map { lc($_) => 1 } split ' ', ($ctx->subject // '');
    my $id = $ctx->mime_entity->head->get('X-MMTest-Id') // 'none';
    $id =~ s/\s+//g;
    my $reply = $self->_reply_channel;

    $self->_block("scan-$id") if $w{block};
    if ($w{garbage}) {
        $reply->printflush("\x00\xffthis is not a reply line \x01\x02\n");
        # Broken workers do not stop at that: go on creating files in the
        # working directory for a while, as the milter is removing it.
        my $end = Time::HiRes::time() + 0.3;
        for (my $n = 0; Time::HiRes::time() < $end; $n++) {
            open(my $junk, '>', "junk-$n") or last;
            close($junk);
        }
    }
    if ($w{earlyok}) {
        # Claims success before any result is written; the real reply
        # follows once filter_message has finished.
        $reply->printflush("ok\n");
        select(undef, undef, undef, 0.5);
    }
    if ($w{halfline}) {
        $reply->printflush('ok 1 half a rep');
        $self->_block("scan-$id");
    }
    if ($w{bigline}) {
        $reply->printflush(('x' x (1024 * 1024)) . "\n");
    }
    if ($w{closeout}) {
        close($reply);
        $self->_block("scan-$id");
    }
    if ($w{stdoutjunk}) {
        print STDOUT "junk printed on STDOUT by the filter\n";
        STDOUT->flush;
    }
    $ctx->action_add_header('X-MMTest-Filtered', 'yes');
    return;
}

package main;

my $filter = FaultFilter->new();
$filter->run();
exit(0);
