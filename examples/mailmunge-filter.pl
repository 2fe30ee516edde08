#!/usr/bin/perl
#
# Example Mailmunge filter (mailmunge-rs).
#
# script/install installs it as /etc/mailmunge/mailmunge-filter.pl.example:
# copy it to /etc/mailmunge/mailmunge-filter.pl and adapt it. The Debian
# package mailmunge-rs installs it as that filter itself (a conffile: your
# changes are kept on upgrades). After editing, check it
# with "perl -c" and make the workers load it with
#     mm-mx-ctrl reread        (or: systemctl reload mailmunge)
#
# A filter is a subclass of Mailmunge::Filter that overrides the callbacks
# it needs. filter_relay, filter_helo, filter_sender and filter_recipient
# only run when the matching check is switched on in /etc/default/mailmunge
# (MX_RELAY_CHECK, MX_HELO_CHECK, MX_SENDER_CHECK, MX_RECIPIENT_CHECK); each
# returns a Mailmunge::Response. filter_message runs for every message.
#
# This example rejects executable attachments and a few forged HELO names,
# and records in a header how many parts the message had. Nothing else.

use strict;
use warnings;

package Example::Filter;
use base qw(Mailmunge::Filter);

use Mailmunge::Response;

# Attachment names we refuse: programs and scripts Windows would run.
my $DANGEROUS_NAME = qr/\.(?:exe|com|scr|pif|bat|cmd|cpl|vbs|vbe|js|jse|wsf|wsh|hta|msi|lnk)\s*$/i;

sub filter_helo
{
	my ($self, $ctx) = @_;
	my $helo = lc($ctx->helo // '');
	my $ip   = $ctx->hostip // '';
	my $loopback = ($ip eq '127.0.0.1' || $ip eq '::1');

	# Remote clients do not get to call themselves "localhost", nor use
	# our own host name.
	if (!$loopback && ($helo eq 'localhost' || $helo eq 'localhost.localdomain'
			   || $helo eq lc($self->get_host_name()))) {
		return Mailmunge::Response->REJECT(
			message => "Go away. $helo is not your name.");
	}
	return Mailmunge::Response->CONTINUE();
}

sub filter_message
{
	my ($self, $ctx) = @_;
	my $entity = $ctx->mime_entity;
	return unless $entity;

	my @leaves = leaf_parts($entity);
	foreach my $part (@leaves) {
		my $name = $part->head->recommended_filename();
		next unless defined($name);
		$name = $self->decode_mime_string($name);
		if ($name =~ $DANGEROUS_NAME) {
			$self->log($ctx, 'info', "Rejecting attachment named $name");
			return Mailmunge::Response->REJECT(
				message => 'We do not accept program attachments; please send an archive instead');
		}
	}
	$ctx->action_change_header('X-Example-Parts', scalar(@leaves));
	return;
}

# The parts of a MIME tree that carry content, depth first.
sub leaf_parts
{
	my ($entity) = @_;
	my @parts = $entity->parts;
	return ($entity) unless @parts;
	return map { leaf_parts($_) } @parts;
}

package main;

my $filter = Example::Filter->new();
$filter->run();

exit(0);
