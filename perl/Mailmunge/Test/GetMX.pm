use strict;
use warnings;

package Mailmunge::Test::GetMX;
use base qw(Mailmunge::Test);

use Net::DNS;

# Exchange names that some domains publish to say "no mail here".
my %NULL_EXCHANGE = map { $_ => 1 } ('', '.', '0', '0 ', '0 .', '0.');

sub resolver
{
	my ($self, $res) = @_;
	$self->{resolver} = $res if defined($res);
	if (!$self->{resolver}) {
		my $r = Net::DNS::Resolver->new();
		$r->defnames(0);
		$self->{resolver} = $r;
	}
	return $self->{resolver};
}

# Splits a dotted quad into four octets, or returns an empty list if the
# string is not one.
sub _octets
{
	my ($ip) = @_;
	return () unless defined($ip) && $ip =~ /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/;
	my @o = ($1, $2, $3, $4);
	foreach (@o) { return () if $_ > 255; }
	return @o;
}

sub ip4_is_loopback
{
	my ($self, $ip) = @_;
	my @o = _octets($ip);
	return 0 unless @o;
	return $o[0] == 127 ? 1 : 0;
}

sub ip4_is_private
{
	my ($self, $ip) = @_;
	my @o = _octets($ip);
	return 0 unless @o;
	return 1 if $o[0] == 10;
	return 1 if $o[0] == 172 && $o[1] >= 16 && $o[1] <= 31;
	return 1 if $o[0] == 192 && $o[1] == 168;
	# Carrier-grade NAT space (RFC 6598) is as unreachable from the
	# Internet as RFC 1918 space.
	return 1 if $o[0] == 100 && $o[1] >= 64 && $o[1] <= 127;
	return 0;
}

sub ip4_is_reserved
{
	my ($self, $ip) = @_;
	my @o = _octets($ip);
	return 0 unless @o;
	return 1 if $o[0] == 0;                         # "this network", incl. 0.0.0.0
	return 1 if $o[0] == 169 && $o[1] == 254;       # link-local
	return 1 if $o[0] >= 224;                       # multicast, class E, broadcast
	# Documentation ranges (RFC 5737) never carry real mail.
	return 1 if $o[0] == 192 && $o[1] == 0   && $o[2] == 2;
	return 1 if $o[0] == 198 && $o[1] == 51  && $o[2] == 100;
	return 1 if $o[0] == 203 && $o[1] == 0   && $o[2] == 113;
	return 0;
}

# Runs one query; returns the answer records or an empty list when the
# name does not resolve (any failure counts as "nothing").
sub _answers
{
	my ($self, $name, $type) = @_;
	my $pkt = $self->resolver->send($name, $type);
	return () unless $pkt;
	return () unless $pkt->header->rcode eq 'NOERROR';
	return $pkt->answer;
}

# Addresses of $name: A records, plus AAAA records when $v6.
sub _addresses
{
	my ($self, $name, $v6) = @_;
	my @ips = map { $_->address } grep { $_->type eq 'A' } $self->_answers($name, 'A');
	push(@ips, map { _short6($_->address) } grep { $_->type eq 'AAAA' } $self->_answers($name, 'AAAA')) if $v6;
	return @ips;
}

sub _mx_addresses
{
	my ($self, $domain, $v6) = @_;
	my @ips;
	my @mx = grep { $_->type eq 'MX' } $self->_answers($domain, 'MX');
	if (!@mx) {
		# No MX: mail goes to the domain's own address records.
		return $self->_addresses($domain, $v6);
	}
	foreach my $rr (sort { $a->preference <=> $b->preference } @mx) {
		my $exchange = $rr->exchange;
		$exchange = '' unless defined($exchange);
		if ($NULL_EXCHANGE{$exchange}) {
			push(@ips, '0.0.0.0');
			next;
		}
		(my $bare = $exchange) =~ s/\.\z//;
		if (_octets($bare)) {
			# An address where a name belongs: take it literally.
			push(@ips, $bare);
			next;
		}
		push(@ips, $self->_addresses($exchange, $v6));
	}
	return @ips;
}

# IPv6 text as sixteen bytes, or undef.
sub _bytes6
{
	my ($ip) = @_;
	return undef unless defined($ip) && $ip =~ /:/;
	require Socket;
	my $b = eval { Socket::inet_pton(Socket::AF_INET6(), $ip) };
	return (defined($b) && length($b) == 16) ? $b : undef;
}

sub _short6
{
	my ($ip) = @_;
	my $b = _bytes6($ip);
	return $ip unless defined($b);
	require Socket;
	return Socket::inet_ntop(Socket::AF_INET6(), $b);
}

sub ip6_class
{
	my ($self, $ip) = @_;
	my $b = _bytes6($ip);
	return undef unless defined($b);
	my @w = unpack('n8', $b);
	# IPv4-mapped (::ffff:a.b.c.d): classify the IPv4 address.
	if (!$w[0] && !$w[1] && !$w[2] && !$w[3] && !$w[4] && $w[5] == 0xffff) {
		my $v4 = join('.', unpack('C4', substr($b, 12, 4)));
		return $self->ip4_is_loopback($v4) ? 'loopback'
		     : $self->ip4_is_private($v4)  ? 'private'
		     : $self->ip4_is_reserved($v4) ? 'bogus' : 'routable';
	}
	my $zero = !grep { $_ } @w[0 .. 6];
	return 'loopback' if $zero && $w[7] == 1;                       # ::1
	return 'bogus'    if $zero && $w[7] == 0;                       # ::
	return 'private'  if ($w[0] & 0xfe00) == 0xfc00;                # fc00::/7 unique local
	return 'bogus'    if ($w[0] & 0xffc0) == 0xfe80;                # fe80::/10 link-local
	return 'bogus'    if ($w[0] & 0xff00) == 0xff00;                # multicast
	return 'bogus'    if $w[0] == 0x2001 && $w[1] == 0x0db8;        # documentation
	return 'routable' if ($w[0] & 0xe000) == 0x2000;                # 2000::/3 global unicast
	return 'bogus';
}

sub get_mx_hosts
{
	my ($self, $domain, $opts) = @_;
	$domain = '' unless defined($domain);
	$opts = {} unless ref($opts) eq 'HASH';
	if ($domain =~ /\@/) {
		my $f = $self->filter;
		$domain = ($f && ref($f) && $f->can('domain_of'))
			? $f->domain_of($domain)
			: do { require Mailmunge::Filter; Mailmunge::Filter->domain_of($domain) };
	}
	my $ans = { bogus => [], private => [], loopback => [], routable => [] };
	return $ans if $domain eq '';
	foreach my $ip ($self->_mx_addresses($domain, $opts->{ipv6})) {
		my $class = $ip =~ /:/ ? ($self->ip6_class($ip) || 'bogus')
			  : $self->ip4_is_loopback($ip) ? 'loopback'
			  : $self->ip4_is_private($ip)  ? 'private'
			  : $self->ip4_is_reserved($ip) ? 'bogus'
			  :                               'routable';
		push(@{$ans->{$class}}, $ip);
	}
	return $ans;
}

1;

__END__

=head1 NAME

Mailmunge::Test::GetMX - look up and classify a domain's mail exchangers

=head1 SYNOPSIS

    use Mailmunge::Test::GetMX;

    sub filter_sender {
        my ($self, $ctx) = @_;
        my $mx = Mailmunge::Test::GetMX->new($self)->get_mx_hosts($ctx->sender);
        if (!@{$mx->{routable}} && (@{$mx->{bogus}} || @{$mx->{loopback}})) {
            return Mailmunge::Response->REJECT(message => 'Your domain cannot receive replies');
        }
        return Mailmunge::Response->CONTINUE();
    }

=head1 DESCRIPTION

Finds the IPv4 addresses a domain's mail would be delivered to (its MX
hosts, or the domain's own A records when it has no MX) and sorts them
into classes, so a filter can spot sender domains whose mail exchangers
point at unusable addresses.

An MX whose exchange is empty, C<.> or C<0> counts as C<0.0.0.0>; an
exchange that is itself a dotted quad is taken literally.

=head1 METHODS

=head2 Mailmunge::Test::GetMX->new($filter)

Inherited from L<Mailmunge::Test>.

=head2 resolver([$resolver])

Returns the L<Net::DNS::Resolver> used for the lookups, creating one with
the system settings (and no default-domain appending) on first use.
Pass a resolver to use it instead, e.g. one pointing at a local test
name server.

=head2 get_mx_hosts($domain_or_address [, { ipv6 => 1 }])

Looks up the domain (the part after the last C<@> when given an e-mail
address) and returns a hash reference with four array references of
IPv4 address strings (and, with the C<ipv6> option, also the IPv6
addresses of the mail exchangers, classified by C<ip6_class>):

=over 4

=item loopback - addresses in 127.0.0.0/8

=item private - RFC 1918 addresses and the RFC 6598 shared space 100.64.0.0/10

=item bogus - reserved addresses (see C<ip4_is_reserved>)

=item routable - everything else

=back

Lookup failures simply produce empty lists.

=head2 ip6_class($ip)

Classifies an IPv6 address: C<loopback> (::1), C<private> (fc00::/7),
C<bogus> (::, link-local, multicast, 2001:db8::/32 and anything outside
2000::/3), C<routable> (other global unicast).  IPv4-mapped addresses
are classified as their IPv4 address.  Returns undef if C<$ip> is not
an IPv6 address.

=head2 ip4_is_loopback($ip)

True (1) if C<$ip> is a dotted-quad address in 127.0.0.0/8, else 0.

=head2 ip4_is_private($ip)

True (1) if C<$ip> is in 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16 or
100.64.0.0/10, else 0.

=head2 ip4_is_reserved($ip)

True (1) if C<$ip> is in 0.0.0.0/8, 169.254.0.0/16, 224.0.0.0 and above
(multicast, class E and the broadcast address) or one of the
documentation networks 192.0.2.0/24, 198.51.100.0/24 and
203.0.113.0/24, else 0.

=cut
