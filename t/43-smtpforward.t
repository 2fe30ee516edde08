# Mailmunge::Test::SMTPForward against Test::Mailmunge::SMTPServer
# (protocol/perl-api.md §10.4): verdicts, exact log entries, loop detection.
use strict;
use warnings;

use Test::More;
use Test::Deep;
use IO::Socket::INET;
use Mailmunge::Context;
use Mailmunge::Filter;
use Mailmunge::Test::SMTPForward;
use Test::Mailmunge::SMTPServer;

package LogFilter;
our @ISA = ('Mailmunge::Filter');
sub new { return bless { TEST_LOGS => [] }, shift }
sub log
{
	my ($self, $ctx, $level, $msg) = @_;
	push(@{$self->{TEST_LOGS}}, [ref($ctx) ? $ctx->qid : $ctx, $level, $msg]);
}
sub get_host_name { return 'gateway.example.net' }

package main;

sub ctx
{
	return Mailmunge::Context->new(sender => 'test@example.com', qid => 'queue-id-here',
				       connecting_ip => '192.168.1.1', connecting_name => 'server.example.com');
}

# A port with nothing listening.
my $closed = IO::Socket::INET->new(Listen => 1, LocalAddr => '127.0.0.1', LocalPort => 0);
my $dead_port = $closed->sockport;
$closed->close();

my $filter = LogFilter->new();
my $fw = Mailmunge::Test::SMTPForward->new($filter);
my $r = $fw->check_against_smtp_server(ctx(), 'good@example.com', '127.0.0.1', $dead_port);
ok($r->is_tempfail, 'no server: tempfail');
like($r->message, qr/^Could not connect to SMTP server 127\.0\.0\.1: /, 'no server: message');

my @seen;
my $srv = Test::Mailmunge::SMTPServer->new(rcpt => sub {
	my ($line) = @_;
	return '451 4.7.1 Try again' if $line =~ /tempfail/;
	return '551 5.7.1 No such user' if $line =~ /reject/;
	return '452 4.2.2 Mailbox Full' if $line =~ /full/;
	return '250 2.1.0 Ok';
});
my $port = $srv->{port};

$r = $fw->check_against_smtp_server(ctx(), 'good@example.com', '127.0.0.1', $port);
ok($r->is_success, 'good recipient accepted');
is($r->code, '250', 'code mirrored');
is($r->dsn, '2.1.0', 'dsn mirrored');
is($r->message, 'Ok', 'text mirrored');

$r = $fw->check_against_smtp_server(ctx(), 'reject@example.com', '127.0.0.1', $port);
ok($r->is_reject, 'bad recipient rejected');
is_deeply([$r->code, $r->dsn, $r->message], ['551', '5.7.1', 'No such user'], 'reject details');

$r = $fw->check_against_smtp_server(ctx(), '<tempfail@example.com>', '127.0.0.1', $port);
ok($r->is_tempfail, 'tempfail recipient tempfailed');

cmp_deeply($filter->{TEST_LOGS}, [
	['queue-id-here', 'debug', 'check_against_smtp_server: 127.0.0.1: <reject@example.com>: 551 5.7.1 No such user'],
	['queue-id-here', 'debug', 'check_against_smtp_server: 127.0.0.1: <tempfail@example.com>: 451 4.7.1 Try again'],
], 'exactly the expected log entries');

@{$filter->{TEST_LOGS}} = ();
$r = $fw->check_against_smtp_server(ctx(), 'full@example.com', '127.0.0.1', $port);
ok($r->is_reject, 'Mailbox Full tempfail becomes a reject');
is($r->code, 554, 'converted code');
is($r->dsn, '5.7.1', 'converted dsn');
is($filter->{TEST_LOGS}[-1][2], 'check_against_smtp_server: 127.0.0.1: <full@example.com>: Converting tempfail to reject: Mailbox Full',
   'conversion logged');

# What the server saw: a transcript server that records commands.
my $tdir = "/tmp/mm-smtpfwd-$$";
mkdir($tdir);
my $rec = sub { my ($line) = @_; open(my $fh, '>>', "$tdir/log"); print $fh "$line\n"; close($fh); };
my $srv2 = Test::Mailmunge::SMTPServer->new(
	ehlo => sub { $rec->($_[0]); return "250-mx.example\r\n250-PIPELINING\r\n250 8BITMIME" },
	helo => sub { $rec->($_[0]); return '250 mx.example' },
	mail => sub { $rec->($_[0]); return '250 2.1.0 Ok' },
	rcpt => sub { $rec->($_[0]); return '250 2.1.5 Ok' });
my $c = ctx();
$r = $fw->check_against_smtp_server($c, 'x@example.com', '127.0.0.1', $srv2->{port});
ok($r->is_success, 'ESMTP session');
open(my $fh, '<', "$tdir/log");
my @lines = <$fh>;
close($fh);
is_deeply(\@lines, ["EHLO server.example.com\n", "EHLO server.example.com\n", "MAIL From:<test\@example.com>\n", "RCPT To:<x\@example.com>\n"],
	  'EHLO, RSET, EHLO again, MAIL, RCPT');
unlink("$tdir/log");

# No ESMTP in the greeting: HELO; no host name: bracketed IP.
my $srv3 = Test::Mailmunge::SMTPServer->new(
	connect => sub { $_[0]->{sock}->printflush("220 old.example SMTP ready\r\n") },
	helo => sub { $rec->($_[0]); return '250 old.example' },
	rcpt => sub { return '250 ok' });
$c = Mailmunge::Context->new(sender => '<>', connecting_ip => '10.1.2.3');
$r = $fw->check_against_smtp_server($c, 'x@example.com', '127.0.0.1', $srv3->{port});
ok($r->is_success, 'plain SMTP session');
open($fh, '<', "$tdir/log"); @lines = <$fh>; close($fh);
is_deeply(\@lines, ["HELO [10.1.2.3]\n"], 'HELO with bracketed IP');
unlink("$tdir/log");

# Greeting refused.
my $srv4 = Test::Mailmunge::SMTPServer->new(
	connect => sub { $_[0]->{sock}->printflush("554 5.7.1 Go away\r\n") });
$r = $fw->check_against_smtp_server(ctx(), 'x@example.com', '127.0.0.1', $srv4->{port});
ok($r->is_reject, '554 greeting rejects');
is($r->message, 'Go away', 'greeting text');

# Loop detection: greeting starts with our own host name.  It is skipped for
# 127.0.0.1, so connect to the same server as "localhost".
my $srv5 = Test::Mailmunge::SMTPServer->new(
	connect => sub { $_[0]->{sock}->printflush("220 gateway.example.net ESMTP\r\n") });
$r = $fw->check_against_smtp_server(ctx(), 'x@example.com', 'localhost', $srv5->{port});
ok($r->is_reject, 'loop detected');
is_deeply([$r->code, $r->dsn, $r->message], [554, '5.4.6', 'Verification server loop: Trying to verify <x@example.com> against myself'],
	  'loop reply');
$r = $fw->check_against_smtp_server(ctx(), 'x@example.com', '127.0.0.1', $srv5->{port});
ok($r->is_success, 'no loop check for 127.0.0.1');

# A server that closes the connection after the greeting.
my $srv6 = Test::Mailmunge::SMTPServer->new(
	ehlo => sub { exit(0) });
@{$filter->{TEST_LOGS}} = ();
$r = $fw->check_against_smtp_server(ctx(), 'x@example.com', '127.0.0.1', $srv6->{port});
ok($r->is_tempfail, 'connection dropped: tempfail');
is_deeply([$r->code, $r->dsn, $r->message], [451, '4.3.0', '_get_smtp_return_code: Empty response from SMTP server'],
	  'empty response details');

# STARTTLS: a real upgrade, then the rest of the session over TLS.
my $tls = Test::Mailmunge::SMTPServer->new(
	tls => { SSL_cert_file => 't/data/ext/tls/cert.pem', SSL_key_file => 't/data/ext/tls/key.pem' },
	rcpt => sub { return '250 2.1.5 Fine over TLS' });
@{$filter->{TEST_LOGS}} = ();
$r = $fw->check_against_smtp_server(ctx(), 'x@example.com', '127.0.0.1', $tls->{port});
ok($r->is_success, 'STARTTLS session succeeded');
is($r->message, 'Fine over TLS', 'RCPT reply read over TLS');
is_deeply($filter->{TEST_LOGS}, [['queue-id-here', 'debug', 'check_against_smtp_server: 127.0.0.1: <x@example.com>: STARTTLS succeeded']],
	  'upgrade logged');

# STARTTLS offered but refused: fall back to plain text.
my $liar = Test::Mailmunge::SMTPServer->new(
	ehlo => sub { return "250-liar.example\r\n250-STARTTLS\r\n250 8BITMIME" },
	rcpt => sub { return '250 2.1.5 Plain' });
@{$filter->{TEST_LOGS}} = ();
$r = $fw->check_against_smtp_server(ctx(), 'x@example.com', '127.0.0.1', $liar->{port});
ok($r->is_success, 'refused STARTTLS: still succeeds in plain text');
is($r->message, 'Plain', 'RCPT reply');
is_deeply($filter->{TEST_LOGS}, [['queue-id-here', 'debug', 'check_against_smtp_server: 127.0.0.1: <x@example.com>: 502 5.5.2 Error: STARTTLS: command not recognized']],
	  'the refusal is logged like any 5xx reply');

rmdir($tdir);
done_testing();
