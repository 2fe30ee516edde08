#!/usr/bin/perl
# MIMEDefang-style filter (Mailmunge::Filter::Compat) for the end-to-end
# tests: per-part decisions in filter(), message-level ones in
# filter_begin/filter_end.  Subject words choose what happens:
#   begin-tempfail  filter_begin tempfails
#   addpart         filter_end adds a text/html part
#   boilerplate     filter_end appends text boilerplate
# Parts by file name: drop.exe is dropped with a warning, warn.txt is
# accepted with a warning, anything else is accepted.  Every message gets
# X-Last-QID (the queue id the filter saw at filter_end).
use strict;
use warnings;

package MMTestCompat;
use base qw(Mailmunge::Filter::Compat);

use Mailmunge::Action::Boilerplate;

sub _words {
    my ($ctx) = @_;
    return map { lc($_) => 1 } split ' ', ($ctx->subject // '');
}

sub filter_begin {
    my ($self, $ctx) = @_;
    my %w = _words($ctx);
    $self->action_tempfail($ctx, 'Compat filter_begin tempfails') if $w{'begin-tempfail'};
    return;
}

sub filter {
    my ($self, $ctx, $entity, $fname, $ext, $type) = @_;
    $fname = lc($fname // '');
    return $self->action_drop_with_warning($ctx, "Dropped $fname") if $fname eq 'drop.exe';
    return $self->action_accept_with_warning($ctx, "Accepted $fname with a warning") if $fname eq 'warn.txt';
    return $self->action_accept($ctx);
}

sub filter_end {
    my ($self, $ctx) = @_;
    my %w = _words($ctx);
    $self->action_change_header($ctx, 'X-Last-QID', $ctx->qid // '');
    if ($w{addpart}) {
        $self->action_add_part($ctx, 'text/html', '-suggest',
            "<html><body><p>Part added by the compat filter</p></body></html>\n", 'added.html', 'inline');
    }
    if ($w{boilerplate}) {
        Mailmunge::Action::Boilerplate->new($self)
            ->add_text_boilerplate($ctx, $ctx->mime_entity, "-- boilerplate from the compat filter\n", 0, 0);
    }
    return;
}

package main;

my $filter = MMTestCompat->new();
$filter->run();
exit(0);
