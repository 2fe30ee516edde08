#!/usr/bin/perl
# A minimal worker speaking the multiplexor's line protocol
# (protocol/worker-protocol.md §2), with extra commands that misbehave on request.
# Used by tests/mux_*.rs; depends on nothing but core Perl.
#
# Start-up behaviour is steered by files in the current directory (the
# spool dir): "worker-exit-at-start" holds an exit code to die with at once;
# "worker-fail-load" makes loading fail in -embserver mode;
# "worker-load-mime" makes it load MIME::Decoder, as a filter using
# MIME-tools does.
#
# With -embserver/-embserveru it follows the embedded contract
# (protocol/worker-protocol.md §1.2): loading only registers
# $main::MAILMUNGE_FILTER and defines main::_mailmunge_do_main_loop,
# which runs the loop.
use strict;
use warnings;
use Cwd qw(getcwd);
use IO::Handle;

STDOUT->autoflush(1);
STDERR->autoflush(1);

my $mode = $ARGV[0] // '';
my $status;
my $loaded_in = $$;

sub open_status {
    if ($mode eq '-serveru' || $mode eq '-embserveru') {
        if (open($status, '>&=', 3)) {
            $status->autoflush(1);
        } else {
            undef $status;
        }
    }
}

sub out { print STDOUT "$_[0]\n"; }

sub run_loop {
my $served = 0;
while (defined(my $line = <STDIN>)) {
    chomp $line;
    $served++;
    my ($cmd, @args) = split(/ /, $line, -1);
    $cmd //= '';
    if    ($cmd eq 'ping')     { out('PONG'); }
    elsif ($cmd eq 'echo')     { out(join(' ', @args)); }
    elsif ($cmd eq 'sleep')    { select(undef, undef, undef, $args[0]); out("slept $args[0]"); }
    elsif ($cmd eq 'die')      { exit 3; }
    elsif ($cmd eq 'hang')     { sleep 1000 while 1; }
    elsif ($cmd eq 'big')      { out('x' x $args[0]); }
    elsif ($cmd eq 'partial')  { print 'part'; select(undef, undef, undef, $args[0] // 2); out('ial'); }
    elsif ($cmd eq 'late')     { out('first'); select(undef, undef, undef, 0.3); print "unasked\n"; }
    elsif ($cmd eq 'closein')  { close(STDIN); out('closed'); sleep 60; exit 0; }
    elsif ($cmd eq 'spew')     { my $chunk = ('e' x 1023) . "\n"; print STDERR $chunk for 1 .. $args[0]; out('spewed'); }
    elsif ($cmd eq 'twolines') { print "one\ntwo\n"; }
    elsif ($cmd eq 'halfexit') { print 'half'; exit 0; }
    elsif ($cmd eq 'closeout') {
        # As Mailmunge::Filter keeps its reply channel: a duplicate of
        # fd 1, with STDOUT pointed at stderr; then that channel is closed
        # while the process lives on.
        open(my $reply, '>&', \*STDOUT) or die "dup: $!";
        open(STDOUT, '>&', \*STDERR) or die "dup: $!";
        close($reply);
        sleep 60;
        exit 0;
    }
    elsif ($cmd eq 'pid')      { out($$); }
    elsif ($cmd eq 'loadpid')  { out($loaded_in); }
    elsif ($cmd eq 'inc')      { out($INC{$args[0]} ? 'loaded' : 'not loaded'); }
    elsif ($cmd eq 'taint')    { out(${^TAINT} ? 'tainted' : 'untainted'); }
    elsif ($cmd eq 'count')    { out($served); }
    elsif ($cmd eq 'argv')     { out(join(' ', @ARGV)); }
    elsif ($cmd eq 'cwd')      { out(getcwd()); }
    elsif ($cmd eq 'umask')    { out(sprintf('%04o', umask)); }
    elsif ($cmd eq 'sigpipe')  { out($SIG{PIPE} // 'DEFAULT'); }
    elsif ($cmd eq 'env')      { out($ENV{$args[0]} // ''); }
    elsif ($cmd eq 'fds') {
        opendir(my $d, '/proc/self/fd') or die;
        my @fds = sort { $a <=> $b }
            grep { /^\d+$/ && (readlink("/proc/self/fd/$_") // '') !~ m{^/proc/\d+/fd$} } readdir($d);
        out(join(',', @fds));
    }
    elsif ($cmd eq 'tag') {
        print $status "$args[0]\n" if $status;
        select(undef, undef, undef, $args[1]) if $args[1];
        out($status ? 'tagged' : 'notags');
    }
    elsif ($cmd eq 'limits') {
        open(my $l, '<', '/proc/self/limits') or die;
        my %soft;
        while (<$l>) { $soft{$1} = $2 if /^(Max address space|Max resident set|Max data size|Max open files)\s+(\S+)/; }
        out(join(' ', map { $soft{$_} // '?' } ('Max address space', 'Max data size', 'Max resident set', 'Max open files')));
    }
    elsif ($cmd eq 'stderr')  { print STDERR join(' ', @args), "\n"; out('ok'); }
    elsif ($cmd eq 'tick')    { out("tock $args[0]"); }
    elsif ($cmd eq 'map')     { out("OK value%20for%20$args[1]%2Fin%20$args[0]"); }
    elsif ($cmd eq 'scan')    { out('ok'); }
    elsif ($cmd eq 'recipok') {
        select(undef, undef, undef, $args[1]) if defined $args[1] && $args[1] =~ /^\d+(\.\d+)?$/;
        out('ok 1 ok 250 2.1.0 0');
    }
    else { out('ok 0 Unknown%20command 554 5.7.1 0'); }
}
}

require MIME::Decoder if -e 'worker-load-mime';

if ($mode eq '-embserver' || $mode eq '-embserveru') {
    die "load failure requested\n" if -e 'worker-fail-load';
    no warnings 'once';
    $main::MAILMUNGE_FILTER = 1;
    *main::_mailmunge_do_main_loop = sub { open_status(); run_loop(); exit 0; };
    1;
} else {
    if (-e 'worker-exit-at-start') {
        open(my $f, '<', 'worker-exit-at-start') or die;
        my $code = <$f> // 0;
        chomp $code;
        print STDERR "test worker: told to exit at start with $code\n";
        print STDERR "second line of the reason\n";
        exit($code + 0);
    }
    open_status();
    run_loop();
    exit 0;
}
