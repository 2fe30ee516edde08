#!/usr/bin/perl
# Mailmunge::Constants (defaults, environment override, _set,
# get_program_path) and Mailmunge::Base::make_accessors.
use strict;
use warnings;
use Test::More;
use File::Temp qw(tempdir);

# Defaults, in a child without any override in the environment.
{
	local %ENV = %ENV;
	delete @ENV{qw(MAILMUNGE_SPOOLDIR MAILMUNGE_QUARANTINEDIR MAILMUNGE_CONFDIR MAILMUNGE_SENDMAIL)};
	my $out = `$^X -Iperl -MMailmunge::Constants -e 'print join("|", map { Mailmunge::Constants->get("Path:\$_") // "undef" } qw(SPOOLDIR QUARANTINEDIR CONFDIR SENDMAIL BOGUS))'`;
	is($out, '/var/spool/mailmunge|/var/spool/mm-quarantine|/etc/mailmunge|/usr/sbin/sendmail|undef', 'built-in defaults');

	$ENV{MAILMUNGE_SPOOLDIR} = '/srv/spool';
	$ENV{MAILMUNGE_QUARANTINEDIR} = '/srv/q';
	$ENV{MAILMUNGE_CONFDIR} = '';
	$out = `$^X -Iperl -MMailmunge::Constants -e 'print join("|", map { Mailmunge::Constants->get("Path:\$_") } qw(SPOOLDIR QUARANTINEDIR CONFDIR))'`;
	is($out, '/srv/spool|/srv/q|/etc/mailmunge', 'environment overrides; empty value ignored');
}

# The install-time substitution marker lines exist, one per key.
open(my $fh, '<', 'perl/Mailmunge/Constants.pm') or die;
my $src = do { local $/; <$fh> };
close($fh);
for my $k (qw(CONFDIR SPOOLDIR QUARANTINEDIR SENDMAIL)) {
	like($src, qr/^\s*'Path:$k'\s*=>\s*'[^']*',\s*# \@$k\@$/m, "substitution marker for $k");
}

use Mailmunge::Constants;
is(Mailmunge::Constants->_set('Path:SPOOLDIR', '/tmp/x'), '/tmp/x', '_set returns the value');
is(Mailmunge::Constants->get('Path:SPOOLDIR'), '/tmp/x', '_set stores');

# get_program_path: configured sendmail when executable, else $PATH.
my $dir = tempdir(CLEANUP => 1);
for my $p ("$dir/sendmail", "$dir/frob") {
	open(my $o, '>', $p) or die; print $o "#!/bin/sh\n"; close($o); chmod(0755, $p);
}
{
	local $ENV{PATH} = "/nonexistent:$dir";
	Mailmunge::Constants->_set('Path:SENDMAIL', '/nonexistent/sendmail');
	is(Mailmunge::Constants->get_program_path('sendmail'), "$dir/sendmail", 'sendmail found on PATH');
	Mailmunge::Constants->_set('Path:SENDMAIL', "$dir/frob");
	is(Mailmunge::Constants->get_program_path('sendmail'), "$dir/frob", 'configured sendmail wins');
	is(Mailmunge::Constants->get_program_path('frob'), "$dir/frob", 'other programs from PATH');
	is(Mailmunge::Constants->get_program_path('no-such-program-here'), undef, 'missing program');
}

# Base::make_accessors
package Thing;
use base qw(Mailmunge::Base);
sub special { return 'mine'; }
__PACKAGE__->make_accessors(qw(colour special));
package main;
my $t = bless {}, 'Thing';
is($t->colour('red'), 'red', 'setter returns the value');
is($t->{colour}, 'red', 'stored under the same key');
is($t->colour(undef), 'red', 'undef does not clear');
is($t->colour(0), 0, 'false but defined values are stored');
is($t->special('x'), 'mine', 'existing method not replaced');

done_testing();
