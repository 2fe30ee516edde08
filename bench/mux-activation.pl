#!/usr/bin/perl
# Activation cost of mailmunge-multiplexor workers: exec mode versus -E
# (filter preloaded once in a zygote, workers forked from it).
#
# Each request is served by a freshly started worker (-r 1 retires a worker
# after one request), so the time per request is dominated by starting a
# worker and loading (exec) or not loading (-E) the filter.
#
# Usage (from the repository root, after cargo build --bins):
#   perl bench/mux-activation.pl [requests]
# Runs as root with -U mailmunge, or as any other user.
use strict;
use warnings;
use File::Temp qw(tempdir);
use IO::Socket::UNIX;
use Time::HiRes qw(time sleep);
use Cwd qw(abs_path);

my $n = shift // 50;
my $root = abs_path('.');
my $bin = "$root/target/debug/mailmunge-multiplexor";
-x $bin or die "build first: $bin missing\n";

my $tmp = tempdir(CLEANUP => 1);
chmod 0755, $tmp;
my $spool = "$tmp/spool";
mkdir $spool, 0777;
chmod 0777, $spool;
my $filter = "$spool/filter.pl";
open(my $f, '>', $filter) or die;
print $f "#!/usr/bin/perl\nuse lib '$root/perl';\nuse Mailmunge::Filter;\nMailmunge::Filter->new()->run();\nexit(0);\n";
close $f;
chmod 0755, $filter;

sub req {
    my ($sock, $line) = @_;
    my $s = IO::Socket::UNIX->new(Peer => $sock) or die "connect: $!";
    print $s "$line\n";
    local $/;
    my $r = <$s>;
    return $r;
}

sub run_mode {
    my ($label, @extra) = @_;
    my $sock = "$spool/mx-$label.sock";
    my @user = $> == 0 ? ('-U', 'mailmunge') : ();
    my $pid = fork();
    if (!$pid) {
        exec($bin, @user, '-D', '-z', $spool, '-s', $sock, '-f', $filter, '-x', '4', '-m', '1', '-r', '1', @extra) or die;
    }
    for (1 .. 400) { last if -S $sock && req($sock, 'free') =~ /^\d/; sleep 0.05; }
    my ($ok, $t0) = (0, time);
    for (1 .. $n) {
        my $r = req($sock, 'ping');
        $ok++ if $r eq "PONG\n";
        # Let the retired worker be reaped so that a slot is free.
        sleep 0.01 while req($sock, 'free') =~ /^0/;
    }
    my $dt = time - $t0;
    kill 'TERM', $pid;
    waitpid($pid, 0);
    printf "%-5s %4d requests, %4d answered, %.1f ms per request\n", $label, $n, $ok, 1000 * $dt / $n;
}

run_mode('exec');
run_mode('E', '-E');
