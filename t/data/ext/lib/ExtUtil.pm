package ExtUtil;
# Helpers for the t/3x and t/4x tests: run a filter file as a worker
# ("FILTER -server", exactly as the multiplexor starts it) on a prepared
# message directory, without a multiplexor.
use strict;
use warnings;
use Cwd qw(abs_path);
use File::Basename qw(dirname);
use File::Copy qw(copy);
use IO::Select;
use IPC::Open3 qw(open3);
use Symbol qw(gensym);
use POSIX ();

our $REPO = abs_path(dirname(__FILE__) . '/../../../..');

# run_worker($filter, \@lines, %opt) -> (\@reply_lines, $stderr)
# Sends the command lines, closes stdin and collects everything the
# worker prints, waiting at most $opt{timeout} (default 60) seconds.
sub run_worker
{
	my ($filter, $lines, %opt) = @_;
	local $ENV{HARNESS_ACTIVE};
	delete $ENV{HARNESS_ACTIVE};
	local $ENV{MAILMUNGE_MTA} = $opt{mta} || 'none';
	local $ENV{TESTDIR} = $opt{testdir} || $REPO;
	# A worker changes to the spool directory before initialize(), which
	# Test::Mailmunge::Filter uses to place its quarantine: with cwd, that
	# is the test's own directory, not a system spool that happens to exist.
	my %spool = $opt{cwd} ? (MAILMUNGE_SPOOLDIR => abs_path($opt{cwd})) : ();
	local @ENV{keys %spool} = values %spool;
	my $err = gensym;
	$filter = abs_path($filter);
	my $here;
	if ($opt{cwd}) {
		$here = Cwd::getcwd();
		chdir($opt{cwd}) or die("chdir $opt{cwd}: $!");
	}
	my $pid = open3(my $in, my $out, $err, $^X, '-I', "$REPO/perl", $filter, '-server');
	chdir($here) if defined($here);
	print $in map { "$_\n" } @$lines;
	close($in);
	my ($o, $e) = ('', '');
	my $sel = IO::Select->new($out, $err);
	my $deadline = time() + ($opt{timeout} || 60);
	while ($sel->count && time() < $deadline) {
		foreach my $fh ($sel->can_read(1)) {
			my $n = sysread($fh, my $buf, 65536);
			if (!$n) { $sel->remove($fh); next; }
			if ($fh == $out) { $o .= $buf } else { $e .= $buf }
		}
	}
	kill('KILL', $pid) if $sel->count;
	waitpid($pid, 0);
	return ([split(/\n/, $o)], $e);
}

# prepare_msg_dir($dir, $msgfile, %ctx) writes INPUTMSG, HEADERS,
# PRISTINE_HEADERS and COMMANDS (via Test::Mailmunge::Utils) and returns
# the Context used.
sub prepare_msg_dir
{
	my ($dir, $msg, %o) = @_;
	require Test::Mailmunge::Utils;
	mkdir($dir, 0755) unless -d $dir;
	my $ctx = main::parse_and_copy_msg($dir, $msg, $o{subject});
	$ctx->recipients($o{recipients} || ['<bar@example.com>']);
	$ctx->sender($o{sender}) if $o{sender};
	$ctx->qid($o{qid}) if $o{qid};
	$ctx->connecting_ip($o{ip} || '192.0.2.10');
	$ctx->connecting_name($o{name} || 'client.example.net');
	$ctx->helo($o{helo} || 'client.example.net');
	main::write_commands_file($dir, $ctx);
	return $ctx;
}

# start_dns(\%records) serves "name TYPE" => [rdata...] on 127.0.0.1 and
# returns (resolver, pid).  Unknown names get NXDOMAIN.
sub start_dns
{
	my ($records) = @_;
	require Net::DNS;
	require Net::DNS::Nameserver;
	my $handler = sub {
		my ($qname, $qclass, $qtype) = @_;
		(my $name = lc($qname)) =~ s/\.\z//;
		my @known = grep { /^\Q$name\E / } keys(%$records);
		return ('NXDOMAIN', [], [], [], { aa => 1 }) unless @known;
		my @ans = map { Net::DNS::RR->new("$name 60 IN $qtype $_") } @{$records->{"$name $qtype"} || []};
		return ('NOERROR', \@ans, [], [], { aa => 1 });
	};
	my ($ns, $port);
	for (1 .. 50) {
		$port = 20000 + int(rand(30000));
		$ns = eval { Net::DNS::Nameserver->new(LocalAddr => '127.0.0.1', LocalPort => $port,
						       ReplyHandler => $handler, Verbose => 0) };
		last if $ns;
	}
	die("cannot start a local name server\n") unless $ns;
	my $pid = fork();
	die("fork: $!") unless defined($pid);
	if (!$pid) {
		eval { $ns->main_loop(); };
		POSIX::_exit(0);
	}
	my $res = Net::DNS::Resolver->new(nameservers => ['127.0.0.1'], port => $port, recurse => 0,
					  udp_timeout => 3, tcp_timeout => 3, retry => 2, defnames => 0,
					  searchlist => []);
	return ($res, $pid);
}

1;
