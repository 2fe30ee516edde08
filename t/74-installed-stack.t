#!/usr/bin/perl
# The migration path end to end: script/install into a private prefix, then
# the installed /etc/init.d/mailmunge starts the real daemons (detached,
# readiness pipe), the installed example filter and Perl modules filter a
# message played by the installed mm-try, and stop brings everything down.
use strict;
use warnings;
use Test::More;
use FindBin;
use File::Temp qw(tempdir);
use IO::Socket::INET;

my $top = "$FindBin::Bin/..";
for my $b (qw(mailmunge mailmunge-multiplexor mm-mx-ctrl mailmunge-start mm-try)) {
	-x "$top/target/debug/$b" or plan skip_all => "target/debug/$b not built";
}
plan skip_all => 'needs root and the mailmunge user (a real install chowns the spool)'
	unless $> == 0 && getpwnam('mailmunge');

my $root = tempdir(CLEANUP => 1);
chmod(0755, $root);
my $spool = "$root/spool";
my $out = `'$top/script/install' PREFIX='$root/usr' SYSCONFDIR='$root/etc' SPOOLDIR='$spool' QDIR='$root/q' PERLLIBDIR='$root/perl' PROFILE=debug BUILD=no 2>&1`;
is($?, 0, 'install into a private prefix') or diag($out);

# The admin's part of a migration: the filter and /etc/default/mailmunge.
system('cp', "$root/etc/mailmunge/mailmunge-filter.pl.example", "$root/etc/mailmunge/mailmunge-filter.pl") == 0 or die;
my $probe = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0, Listen => 1, ReuseAddr => 1) or die;
my $port = $probe->sockport;
close($probe);
open(my $fh, '>', "$root/etc/default/mailmunge") or die;
print $fh <<"EOF";
# The installed modules live in a private directory in this test.
PERL5LIB=$root/perl
FILTER=$root/etc/mailmunge/mailmunge-filter.pl
SOCKET=inet:$port\@127.0.0.1
MX_PIDFILE=$root/mx.pid
MM_PIDFILE=$root/mm.pid
MX_MINIMUM=1
MX_MAXIMUM=2
MX_HELO_CHECK=yes
EOF
close($fh);
$ENV{MAILMUNGE_CONFIG_FILES} = "$root/etc/default/mailmunge";
my $init = "$root/etc/init.d/mailmunge";

$out = `'$init' start 2>&1`;
is($out, "Starting mailmunge-multiplexor: OK\nStarting mailmunge: OK\n", 'init script starts both daemons') or diag($out);
$out = `'$init' status 2>&1`;
like($out, qr/\Amailmunge-multiplexor: Running: PID \d+\n            mailmunge: Running: PID \d+\n\z/, 'status: both running');

my $try = "'$root/usr/bin/mm-try' --env-file '$root/etc/default/mailmunge'";
$out = `$try '$FindBin::Bin/data/deploy/exe.eml' 2>&1`;
is($? >> 8, 2, 'installed stack rejects the program attachment') or diag($out);
like($out, qr/^SMTP reply: 554 5\.7\.1 We do not accept program attachments/m, '... with the filter\'s text');
$out = `$try '$FindBin::Bin/data/deploy/nested.eml' 2>&1`;
is($? >> 8, 0, 'installed stack accepts a plain message') or diag($out);
like($out, qr/^\+X-Example-Parts: 5$/m, '... and the filter\'s header shows in the diff');

# install created the spool for the daemons' user.
is((stat($spool))[4], (getpwnam('mailmunge'))[2], 'spool owned by mailmunge');

$out = `'$init' reload 2>&1`;
is($out, "Told mailmunge-multiplexor to force reread of filter rules.\n", 'reload through mm-mx-ctrl');

my ($mx, $mm) = map { open(my $p, '<', $_) or die "$_: $!"; my $x = <$p>; chomp $x; $x } "$root/mx.pid", "$root/mm.pid";
$out = `'$init' stop 2>&1`;
is($out, "Stopping mailmunge-multiplexor: OK\nStopping mailmunge: OK\n", 'stop');
ok(!kill(0, $mx) && !kill(0, $mm), 'both daemons gone');
ok(!-e "$spool/mailmunge-multiplexor.sock", 'multiplexor socket removed');
if (kill(0, $mx) || kill(0, $mm)) { kill('KILL', $mx, $mm); }

done_testing();
