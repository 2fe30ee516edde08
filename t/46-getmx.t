# Mailmunge::Test::GetMX against a private name server on 127.0.0.1
# (protocol/perl-api.md §10.1).  No Internet DNS is used.
use strict;
use warnings;

use Test::More;
use Test::Deep;
use Net::DNS;
use Net::DNS::Nameserver;
use POSIX ();
use Mailmunge::Test::GetMX;

my %zone = (
	'bogus-all.test' => { MX => ['10 mx-a.bogus-all.test', '20 mx-b.bogus-all.test',
				     '30 mx-c.bogus-all.test', '40 0.', '50 192.168.44.33.'] },
	'mx-a.bogus-all.test' => { A => ['42.42.42.42', '127.0.0.1'] },
	'mx-b.bogus-all.test' => { A => ['255.255.255.255', '172.16.4.5'] },
	'mx-c.bogus-all.test' => { A => ['10.2.3.4'], AAAA => ['2001:DB8::25', '2a00:1450:4001::1b', 'fd00::5', '::1'] },
	'a-only.test' => { A => ['198.51.100.7', '100.64.1.1'] },
	'null-mx.test' => { MX => ['0 .'] },
	'dangling.test' => { MX => ['10 nowhere.dangling.test'] },
);

sub reply
{
	my ($qname, $qclass, $qtype) = @_;
	$qname = lc($qname);
	$qname =~ s/\.\z//;
	my $z = $zone{$qname};
	return ('NXDOMAIN', [], [], [], { aa => 1 }) unless $z;
	my @ans = map { Net::DNS::RR->new("$qname 60 IN $qtype $_") } @{$z->{$qtype} || []};
	return ('NOERROR', \@ans, [], [], { aa => 1 });
}

my ($ns, $port);
for my $try (1 .. 50) {
	$port = 20000 + int(rand(30000));
	$ns = eval { Net::DNS::Nameserver->new(LocalAddr => '127.0.0.1', LocalPort => $port,
					       ReplyHandler => \&reply, Verbose => 0) };
	last if $ns;
}
BAIL_OUT('could not start a local name server') unless $ns;
my $pid = fork();
die "fork: $!" unless defined $pid;
if (!$pid) {
	eval { $ns->main_loop(); };
	POSIX::_exit(0);
}

my $res = Net::DNS::Resolver->new(nameservers => ['127.0.0.1'], port => $port, recurse => 0,
				  udp_timeout => 3, tcp_timeout => 3, retry => 2, defnames => 0, searchlist => []);

package FakeFilter;
sub new { bless {}, shift }
sub domain_of { my ($self, $a) = @_; $a = lc $a; $a =~ s/^<//; $a =~ s/>$//; $a =~ s/.*\@//; return $a }
package main;

my $gm = Mailmunge::Test::GetMX->new(FakeFilter->new);
isa_ok($gm, 'Mailmunge::Test');
$gm->resolver($res);
is($gm->resolver, $res, 'resolver can be replaced');

my $ans = $gm->get_mx_hosts('bogus-all.test');
is_deeply($ans->{routable}, ['42.42.42.42'], 'routable');
is_deeply($ans->{loopback}, ['127.0.0.1'], 'loopback');
cmp_bag($ans->{bogus}, ['255.255.255.255', '0.0.0.0'], 'bogus (broadcast, null MX)');
cmp_bag($ans->{private}, ['172.16.4.5', '192.168.44.33', '10.2.3.4'], 'private, incl. literal IP exchange');

cmp_deeply($gm->get_mx_hosts('<Someone@Bogus-All.TEST>'), $ans, 'an address is reduced to its domain');

$ans = $gm->get_mx_hosts('a-only.test');
is_deeply($ans, { routable => [], loopback => [], bogus => ['198.51.100.7'], private => ['100.64.1.1'] },
	  'no MX: A records; documentation range is bogus, CGNAT private');

is_deeply($gm->get_mx_hosts('null-mx.test'), { routable => [], loopback => [], bogus => ['0.0.0.0'], private => [] },
	  'null MX "0 ." is 0.0.0.0');
is_deeply($gm->get_mx_hosts('dangling.test'), { routable => [], loopback => [], bogus => [], private => [] },
	  'MX without address gives nothing');
is_deeply($gm->get_mx_hosts('nonexistent.test'), { routable => [], loopback => [], bogus => [], private => [] },
	  'NXDOMAIN gives empty lists');

# IPv6, on request only
$ans = $gm->get_mx_hosts('bogus-all.test', { ipv6 => 1 });
is_deeply($ans->{routable}, ['42.42.42.42', '2a00:1450:4001::1b'], 'ipv6: routable v6 address added');
is_deeply($ans->{loopback}, ['127.0.0.1', '::1'], 'ipv6: ::1 is loopback');
cmp_bag($ans->{bogus}, ['255.255.255.255', '0.0.0.0', '2001:db8::25'], 'ipv6: documentation prefix is bogus');
cmp_bag($ans->{private}, ['172.16.4.5', '192.168.44.33', '10.2.3.4', 'fd00::5'], 'ipv6: unique local is private');
is($gm->ip6_class('fe80::1'), 'bogus', 'link-local');
is($gm->ip6_class('ff02::1'), 'bogus', 'multicast');
is($gm->ip6_class('::ffff:10.1.2.3'), 'private', 'IPv4-mapped classified as IPv4');
is($gm->ip6_class('::'), 'bogus', 'unspecified');
is($gm->ip6_class('10.1.2.3'), undef, 'not IPv6');

is($gm->ip4_is_loopback('127.1.2.3'), 1, 'loopback');
is($gm->ip4_is_loopback('128.0.0.1'), 0, 'not loopback');
is($gm->ip4_is_loopback('::1'), 0, 'IPv6 is not handled');
ok($gm->ip4_is_private('172.31.255.255'), '172.31/16 private');
ok(!$gm->ip4_is_private('172.32.0.1'), '172.32 not private');
ok(!$gm->ip4_is_private('8.8.8.8'), 'public');
ok(!$gm->ip4_is_private('10.0.0.256'), 'not an address');
ok($gm->ip4_is_reserved('169.254.1.1'), 'link-local');
ok($gm->ip4_is_reserved('224.0.0.1'), 'multicast');
ok($gm->ip4_is_reserved('0.0.0.0'), '0.0.0.0');
ok(!$gm->ip4_is_reserved('42.42.42.42'), 'routable is not reserved');

kill('TERM', $pid);
waitpid($pid, 0);
done_testing();
