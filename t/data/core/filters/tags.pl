#!/usr/bin/env perl
# Test filter for t/14-tags-embedded.t: nested status tags, counters for
# the init hooks.
use strict;
use warnings;

package TagFilter;
use base qw(Mailmunge::Filter);
use Mailmunge::Response;
use MIME::Entity;

my ($prefork, $init) = (0, 0);
sub prefork_initialize { $prefork++; return; }
sub initialize { $init++; return; }
sub filter_relay
{
	my ($self, $ctx) = @_;
	return Mailmunge::Response->REJECT(message => "prefork=$prefork init=$init pid=$$");
}
sub filter_message
{
	my ($self, $ctx) = @_;
	$self->push_tag($ctx, "Outer\tstep");
	$self->push_tag($ctx, 'Inner');
	$self->pop_tag($ctx);
	$self->pop_tag($ctx);
	$ctx->new_mime_entity(MIME::Entity->build(Type => 'text/plain', Data => ["x\n"]));
	return;
}

package main;
TagFilter->new()->run();
1;
