#!/usr/bin/env perl
# Test filter for t/10-worker-loop.t: verdicts chosen by the host name,
# HELO, sender or recipient; some callbacks misbehave on purpose.
use strict;
use warnings;

package VerdictFilter;
use base qw(Mailmunge::Filter);
use Mailmunge::Response;

sub pick
{
	my ($what) = @_;
	$what //= '';
	return Mailmunge::Response->REJECT(message => 'GO AWAY') if $what =~ /reject/;
	return Mailmunge::Response->TEMPFAIL(message => 'Whoops') if $what =~ /tempfail/;
	return Mailmunge::Response->ACCEPT_AND_NO_MORE_FILTERING(message => 'I love you') if $what =~ /accept/;
	return Mailmunge::Response->DISCARD() if $what =~ /discard/;
	return Mailmunge::Response->REJECT(message => 'slow', code => 550, dsn => '5.7.1', delay => 3) if $what =~ /delay/;
	return 0 if $what =~ /notresp/;
	die("callback exploded\n") if $what =~ /die/;
	if ($what =~ /noisy/) {
		# Output that must not reach the reply pipe.
		print "stray print\n";
		printf STDOUT "stray printf\n";
		system('echo', 'stray child output');
	}
	return Mailmunge::Response->CONTINUE();
}

sub filter_relay     { my ($s, $c) = @_; return pick($c->hostname); }
sub filter_helo      { my ($s, $c) = @_; return pick($c->helo); }
sub filter_sender
{
	my ($s, $c) = @_;
	return Mailmunge::Response->REJECT(message => join('|', map { $_ // 'undef' }
		$c->sender, $c->hostip, $c->hostname, $c->helo, $c->qid, $c->cwd,
		join(',', @{$c->esmtp_args}), $c->sendmail_macro('daemon_port'), $c->mailmunge_id))
	    if $c->sender =~ /dump/;
	return pick($c->sender);
}
sub filter_recipient
{
	my ($s, $c) = @_;
	return Mailmunge::Response->REJECT(message => join('|', map { $_ // 'undef' }
		join(',', @{$c->recipients}), $c->first_recip, $c->rcpt_mailer, $c->rcpt_host,
		$c->rcpt_addr, join(',', @{$c->esmtp_args}),
		join(',', @{$c->get_recipient_mailer('<earlier@example.com>') || []})))
	    if $c->recipients->[0] =~ /dump/;
	return pick($c->recipients->[0]);
}
sub filter_map
{
	my ($s, $map, $key) = @_;
	return ('OK', "value of $key") if $map eq 'good';
	return ('NOTFOUND', '') if $map eq 'none';
	die("map exploded\n");
}
sub tick { my ($s, $n) = @_; return $n == 7; }
sub cleanup { return 3; }

# A command added by a subclass through the _handle_ convention.
sub _handle_hello { my ($s, @a) = @_; $s->_reply_to_mx('hi ' . join(',', @a)); }

package main;
VerdictFilter->new()->run();
1;
