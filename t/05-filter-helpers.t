#!/usr/bin/perl
# Mailmunge::Filter helpers callable on the class or an object
# (protocol/perl-api.md §6.2–§6.4).
use strict;
use warnings;
use Test::More;
use Mailmunge;
use Mailmunge::Filter;
use Mailmunge::Context;
use Mailmunge::Constants;

my $F = 'Mailmunge::Filter';

# new() without arguments works under a test harness and sets nothing up.
{
	local $ENV{HARNESS_ACTIVE} = 1;
	local @ARGV = ();
	my $f = $F->new();
	is_deeply({%$f}, {do_status_tags => 0, enter_main_loop => 0, status_tags => []}, 'new() object');
	local @ARGV = ('-x', '-server', 'extra');
	is($F->new()->{enter_main_loop}, 1, '-server found among other arguments');
	local @ARGV = ('-embserver');
	my $e = $F->new();
	ok(!$e->{enter_main_loop} && !$e->{do_status_tags}, '-embserver');
	is(scalar(@ARGV), 1, '@ARGV left alone');
}

my %canon = ('<foo@example.com>' => 'foo@example.com', '<FOO@ExAMpLE.ORg>' => 'foo@example.org',
	     'FOO@ExAMpLE.ORg>' => 'foo@example.org', '<FOO@ExAMpLE.ORg' => 'foo@example.org',
	     'FOO@ExAMpLE.ORg' => 'foo@example.org', '<<blat>>' => '<blat>', '<>' => '');
is($F->canonical_email($_), $canon{$_}, "canonical_email($_)") for sort keys %canon;
my %dom = ('<foo@example.com>' => 'example.com', 'FOO@ExAMpLE.ORg>' => 'example.org',
	   'F@barOO@ExAMpLE.ORg' => 'example.org', '<<blat>>' => '<blat>', '<<x@blat>>' => 'blat>');
is($F->domain_of($_), $dom{$_}, "domain_of($_)") for sort keys %dom;

my @decode = (
	['foo bar baz', 'foo bar baz'],
	['=?utf-8?Q?Mailmunge=E2=84=A2?=', "Mailmunge\x{2122}"],
	['=?UTF-8?B?8J2ZjfCdmLzwnZmI8J2Zi/CdmLzwnZmJ8J2Zj/CdmYfwnZmUIHwgVmlydHVhbCBDb21lZA==?= =?UTF-8?B?eSBNYWNoaW5lIHNlbnQgeW91IGEgbmV3IG1lc3NhZ2U=?=',
	 "\x{1D64D}\x{1D63C}\x{1D648}\x{1D64B}\x{1D63C}\x{1D649}\x{1D64F}\x{1D647}\x{1D654} | Virtual Comedy Machine sent you a new message"],
	['=?ISO-8859-1?Q?donn=E9es?=  =?ISO-8859-1?Q?_de_la_paie?=', "donn\x{e9}es de la paie"],
	['=?ISO-8859-1?Q?pou?=  =?UTF-8?Q?r_donn=C3=A9es?=', "pour donn\x{e9}es"],
	['=?UTF-8?Q?caf=E9?=', "caf\x{e9}"],                 # bad UTF-8: windows-1252 fallback
	['=?x-unknown-cs?Q?abc?=', 'abc'],                   # unknown charset
	['=?UTF-8?Q?0?=', '0'],                              # a false-looking result is kept
	['', ''],
);
is($F->decode_mime_string($_->[0]), $_->[1], "decode_mime_string($_->[0])") for @decode;

is($F->mailmunge_version, $Mailmunge::VERSION, 'version');
is($Mailmunge::VERSION, '3.09', 'upstream version number');
is(join(',', $F->log_identifier, $F->log_options, $F->log_facility), 'mailmunge-filter,pid,ndelay,mail', 'syslog settings');
is(join(',', $F->inputmsg, $F->headers_file, $F->pristine_headers_file, $F->_commands_file, $F->_newbody),
   'INPUTMSG,HEADERS,PRISTINE_HEADERS,COMMANDS,NEWBODY', 'file names');
is($F->product_name, 'Mailmunge', 'product_name');
Mailmunge::Constants->_set('Path:SPOOLDIR', '/x/spool');
is($F->spooldir, '/x/spool', 'spooldir');

# Dates: fixed time zones through TZ.
{
	local $ENV{TZ} = 'America/Toronto';
	require POSIX; POSIX::tzset();
	is($F->rfc2822_date(1609534161), 'Fri, 01 Jan 2021 15:49:21 -0500', 'rfc2822_date, day zero-padded');
	is($F->rfc2822_date(1625000000), 'Tue, 29 Jun 2021 16:53:20 -0400', 'summer time');
	is(Mailmunge::Filter::header_timezone(1609534161), '-0500', 'header_timezone as a function');
	is($F->header_timezone(1625000000), '-0400', 'as a method, no stale cache');
	$ENV{TZ} = 'Asia/Kolkata'; POSIX::tzset();
	is($F->header_timezone(1609534161), '+0530', 'half-hour zone');
	$ENV{TZ} = 'UTC'; POSIX::tzset();
	like($F->rfc2822_date(), qr/^[A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d \+0000$/, 'now, UTC');
}

# Received header
my $ctx = Mailmunge::Context->new(helo => 'helo.example', connecting_name => 'client.example',
				  connecting_ip => '192.0.2.7', sender => '<s@x>', qid => 'QID1',
				  recipients => ['<r@x>']);
$ctx->sendmail_macro('if_name', 'mx.example');
my $h = $F->synthesize_received_header($ctx);
like($h, qr/^Received: from helo\.example \(client\.example \[192\.0\.2\.7\]\)\n\tby mx\.example \(envelope-sender <s\@x>\) \(Mailmunge\) with ESMTP id QID1\n\tfor <r\@x>; \w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d [-+]\d{4}\n\z/, 'one recipient');
$ctx->connecting_name('[192.0.2.7]');
$ctx->recipients(['<a@x>', '<b@x>']);
$ctx->sendmail_macro('auth_authen', 'user');
$h = $F->synthesize_received_header($ctx);
like($h, qr/^Received: from helo\.example \(\[192\.0\.2\.7\]\)\n\tby mx\.example \(envelope-sender <s\@x>\) \(Mailmunge\) with ESMTPA id QID1; \w{3}, /, 'bracketed name, two recipients, authenticated');
like($F->synthesize_received_header(Mailmunge::Context->new()), qr/^Received: from  \( \[\]\)\n\tby \S+ /, 'empty context does not die');

# privdata on the filter
my $f = bless {}, $F;
is($f->privdata('db', 'handle'), 'handle', 'privdata set');
is($f->privdata('db'), 'handle', 'privdata get');
is($f->privdata('db', undef), 'handle', 'undef does not clear');

# ip_to_hostname on loopback (resolved from /etc/hosts, no network)
like($F->ip_to_hostname('127.0.0.1', 0), qr/^(localhost\S*|\[127\.0\.0\.1\])$/, 'loopback name');
is($F->ip_to_hostname('not an address at all', 1), '[not an address at all]', 'garbage in, brackets out');

# MTA detection override
{
	my $out = `MAILMUNGE_MTA=sendmail $^X -Iperl -MMailmunge::Filter -e 'print Mailmunge::Filter->mta_is_postfix, Mailmunge::Filter->mta_is_sendmail'`;
	is($out, '01', 'MAILMUNGE_MTA=sendmail');
	$out = `MAILMUNGE_MTA=none $^X -Iperl -MMailmunge::Filter -e 'print Mailmunge::Filter->mta_is_postfix, Mailmunge::Filter->mta_is_sendmail'`;
	is($out, '00', 'MAILMUNGE_MTA=none');
}

# Legacy $filter->action_xxx($ctx, ...) wrappers delegate to the Context.
{
	package RecCtx;
	our @calls;
	sub AUTOLOAD { our $AUTOLOAD; my $m = $AUTOLOAD =~ s/.*:://r; return if $m eq 'DESTROY'; shift; push @calls, [$m, @_]; return "r-$m"; }
}
my @legacy = qw(action_from_response action_bounce action_discard action_tempfail action_change_header
		action_delete_header action_delete_all_headers change_sender add_recipient delete_recipient
		action_add_header action_insert_header action_sm_quarantine action_quarantine_entire_message);
my $rc = bless {}, 'RecCtx';
foreach my $m (@legacy) {
	@RecCtx::calls = ();
	is($f->$m($rc, 'a', 'b'), "r-$m", "$m returns the Context's result");
	is_deeply(\@RecCtx::calls, [[$m, 'a', 'b']], "$m passes the arguments");
}

# Base callbacks
is($F->filter_relay()->status, 'CONTINUE', 'filter_relay default');
is($F->filter_recipient()->message, 'ok', 'filter_recipient default');
is_deeply([$F->filter_map('m', 'k')], ['PERM', 'Filter does not implement map method'], 'filter_map default');
is($F->tick(1), 0, 'tick default');
is($F->cleanup(), 0, 'cleanup default');
my $u = $F->unknown_command('x');
is($u->status . '|' . $u->message, 'REJECT|Unknown command', 'unknown_command default');

done_testing();
