#!/usr/bin/env perl
# Test filter for t/12-scan-cases.t and t/13-robustness.t: what
# filter_message / filter_wrapup do is chosen by X-Test: header words.
use strict;
use warnings;

package ScanFilter;
use base qw(Mailmunge::Filter);
use Mailmunge::Response;
use MIME::Entity;

# Deterministic MIME boundaries, so NEWBODY can be compared.
my $boundary_n = 0;
{
	no warnings 'redefine';
	*MIME::Entity::make_boundary = sub { return sprintf('=_core-test-%03d', ++$boundary_n); };
}

sub words
{
	my ($ctx) = @_;
	my @w;
	foreach my $v ($ctx->mime_entity->head->get_all('X-Test')) {
		push @w, split(' ', $v);
	}
	return map { $_ => 1 } @w;
}

sub filter_message
{
	my ($self, $ctx) = @_;
	$boundary_n = 0;
	my %w = words($ctx);
	# filter_wrapup may see a replacement entity, so remember the words.
	$self->{words} = \%w;
	if ($w{dump}) {
		$ctx->action_add_header('X-Ctx', join(';', map { "$_=" . ($ctx->$_() // 'undef') }
			qw(hostip connecting_ip was_resent qid subject sender in_filter_wrapup)));
	}
	$ctx->action_bounce('Bounced') if $w{bounce};
	$ctx->action_tempfail('Later') if $w{tempfail};
	die("filter_message blew up\n") if $w{die};
	if ($w{'replace-nomime'}) {
		$ctx->new_mime_entity(MIME::Entity->build(Top => 0, Type => 'text/plain', Encoding => '7bit',
							  'X-Mailer' => undef, Data => ["replaced body\n"]));
	}
	if ($w{'replace-multi'}) {
		my $e = MIME::Entity->build(Type => 'multipart/mixed', 'X-Mailer' => undef);
		$e->attach(Type => 'text/plain', Encoding => '7bit', Data => ["part one\n"]);
		$e->attach(Type => 'text/html', Encoding => 'quoted-printable', Data => ["<p>caf\xc3\xa9</p>\n"]);
		$ctx->new_mime_entity($e);
	}
	if ($w{'replace-keep-old'}) {
		# As Compat filters do: the replacement is pending while
		# mime_entity holds another entity, so the Content-* headers
		# of the two are reconciled.
		my $orig = $ctx->mime_entity;
		$ctx->new_mime_entity(MIME::Entity->build(Type => 'text/plain', Encoding => '7bit', Disposition => 'attachment',
							  'X-Mailer' => undef, Data => ["new\n"]));
		$ctx->mime_entity($orig);
	}
	if ($w{'quarantine'}) {
		$ctx->action_add_header('X-Quarantined', $ctx->action_quarantine_entire_message('naughty') ? 'yes' : 'no');
	}
	return Mailmunge::Response->REJECT(message => 'No', code => 550, dsn => '5.1.1') if $w{'return-reject'};
	return Mailmunge::Response->TEMPFAIL(message => 'Wait') if $w{'return-tempfail'};
	return Mailmunge::Response->DISCARD() if $w{'return-discard'};
	return Mailmunge::Response->CONTINUE() if $w{'return-continue'};
	return;
}

sub filter_wrapup
{
	my ($self, $ctx) = @_;
	my %w = %{$self->{words} || {}};
	die("filter_wrapup blew up\n") if $w{'die-wrapup'};
	$ctx->action_add_header('X-Wrapup', 'ran in_filter_wrapup=' . $ctx->in_filter_wrapup);
	if ($w{'wrapup-replace'}) {
		my $r = $ctx->new_mime_entity(MIME::Entity->build(Type => 'text/plain', Data => ["nope\n"]));
		$ctx->action_add_header('X-Wrapup-Replace', defined($r) ? 'accepted' : 'ignored');
	}
	return Mailmunge::Response->TEMPFAIL(message => 'wrapup says later') if $w{'wrapup-tempfail'};
	return;
}

package main;
ScanFilter->new()->run();
1;
