#!/usr/bin/perl
# Benchmark filter, "typical" case (bench_compare): walks every part of the
# parsed message, looks at its type and suggested file name as a
# bad-attachment check would, and adds one header with what it counted.
# Its MIMEDefang twin is mimedefang-typical-filter; both do the same work.
use strict;
use warnings;

package Bench::TypicalFilter;
use base qw(Mailmunge::Filter);

# File names a site would refuse (never present in the benchmark's mail).
my $BAD_NAME = qr/\.(?:exe|com|scr|pif|bat|cmd|vbs|js|lnk)\s*$/i;

sub filter_message
{
	my ($self, $ctx) = @_;
	my $entity = $ctx->mime_entity or return;
	my ($leaves, $named, $bad) = (0, 0, 0);
	foreach my $part ($entity->parts_DFS) {
		next if $part->parts;
		$leaves++;
		my $type = lc($part->effective_type);
		my $name = $part->head->recommended_filename;
		next unless defined $name;
		$named++;
		$bad++ if $name =~ $BAD_NAME || $type eq 'application/x-msdownload';
	}
	$ctx->action_add_header('X-Bench-Parts', "$leaves parts, $named named, $bad bad");
	return;
}

package main;
Bench::TypicalFilter->new()->run();
1;
