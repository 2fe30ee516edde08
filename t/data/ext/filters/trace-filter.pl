#!/usr/bin/env perl
# A Mailmunge::Filter::Compat filter that records every callback in the
# file TRACE (in the message directory) and acts on file-name prefixes:
#   drop-*     action_drop_with_warning      replace-*  action_replace_with_warning
#   warn-*     action_accept_with_warning    silent-*   action_drop (no warning)
#   reject-*   returns a REJECT Response     a multipart part with
#   "X-Drop: yes" is dropped with its children.
# Subject words: "add-first" adds a part at offset 0, "add-last" appends one,
# "end-tempfail" returns TEMPFAIL from filter_end, "outside" calls a part
# action from filter_begin (must be harmless), "walk-single" turns on
# filter_single_part_messages.
use strict;
use warnings;
use File::Basename qw(dirname);
use lib dirname(__FILE__) . '/../../../../perl';

package TraceFilter;
use base qw(Mailmunge::Filter::Compat);
use Mailmunge::Response;

sub _trace
{
	my ($self, @words) = @_;
	open(my $fh, '>>', 'TRACE') or return;
	print $fh join(' ', map { defined($_) ? $_ : '(undef)' } @words), "\n";
	close($fh);
}

sub log
{
	my ($self, $ctx, $level, $msg) = @_;
	$self->_trace('log', $level, $msg);
}

my $WALK_SINGLE = 0;
sub filter_single_part_messages { return $WALK_SINGLE; }

sub filter_begin
{
	my ($self, $ctx) = @_;
	my $subj = $ctx->subject // '';
	$WALK_SINGLE = ($subj =~ /\bwalk-single\b/) ? 1 : 0;
	$self->_trace('filter_begin', $subj);
	if ($subj =~ /\boutside\b/) {
		my $r = $self->action_drop($ctx, 'early');
		$self->_trace('outside-result', $r // 'undef');
	}
	return Mailmunge::Response->REJECT(message => 'Not today') if $subj =~ /\bbegin-reject\b/;
	return;
}

sub filter_multipart
{
	my ($self, $ctx, $part, $fname, $ext, $type) = @_;
	$self->_trace('filter_multipart', "[$fname]", "[$ext]", $type);
	my $x = $part->head->get('X-Drop') // '';
	return $self->action_drop_with_warning($ctx, "Dropped a $type part") if $x =~ /yes/;
	return;
}

sub filter
{
	my ($self, $ctx, $part, $fname, $ext, $type) = @_;
	$self->_trace('filter', "[$fname]", "[$ext]", $type);
	return $self->action_drop_with_warning($ctx, "Dropped $fname") if $fname =~ /^drop-/;
	return $self->action_replace_with_warning($ctx, "Replaced $fname") if $fname =~ /^replace-/;
	return $self->action_accept_with_warning($ctx, "Kept $fname with a warning") if $fname =~ /^warn-/;
	return $self->action_drop($ctx) if $fname =~ /^silent-/;
	return Mailmunge::Response->REJECT(message => "No $fname here") if $fname =~ /^reject-/;
	return $self->action_accept($ctx);
}

sub filter_end
{
	my ($self, $ctx) = @_;
	my $subj = $ctx->subject // '';
	$self->_trace('filter_end');
	$self->action_add_part($ctx, 'text/plain', '-suggest', "First!\n", 'first.txt', 'attachment', 0)
	    if $subj =~ /\badd-first\b/;
	$self->action_add_part($ctx, 'text/plain', '-suggest', "Last.\n", 'last.txt', 'inline')
	    if $subj =~ /\badd-last\b/;
	return Mailmunge::Response->TEMPFAIL(message => 'Later, please') if $subj =~ /\bend-tempfail\b/;
	return;
}

sub filter_wrapup
{
	my ($self, $ctx) = @_;
	$self->_trace('filter_wrapup');
	my $r = $self->action_add_part($ctx, 'text/plain', '7bit', "too late\n");
	$self->_trace('wrapup-add-part', $r // 'undef');
	$r = $self->action_drop($ctx, 'too late');
	$self->_trace('wrapup-drop', $r // 'undef');
	return;
}

package main;
TraceFilter->new()->run();
1;
