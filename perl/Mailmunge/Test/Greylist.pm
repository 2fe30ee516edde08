use strict;
use warnings;

package Mailmunge::Test::Greylist;
use base qw(Mailmunge::Test);

use Digest::SHA qw(sha1_hex);
use Mailmunge::Response;

# An IP that retried successfully once is trusted for this long.
my $KNOWN_RETRY_LIFETIME = 31 * 86400;

# The shortest maximum delay we accept: real MTAs retry on schedules of
# hours, so anything shorter would greylist them forever.
my $MIN_MAX_DELAY = 14400;

sub evaluate
{
	my ($self, $dbh, $min_delay, $max_delay, $ip, @extra) = @_;
	$min_delay = 0 unless defined($min_delay) && $min_delay =~ /^\d+$/;
	$max_delay = $MIN_MAX_DELAY unless defined($max_delay) && $max_delay =~ /^\d+$/;
	$max_delay = $MIN_MAX_DELAY if $max_delay < $MIN_MAX_DELAY;
	$ip = '' unless defined($ip);

	my $now = time();
	my $key = sha1_hex(join('<>', $ip, map { defined($_) ? $_ : '' } @extra));

	my $known = $dbh->selectrow_arrayref(
		'SELECT last_seen FROM ips_known_to_retry WHERE ip = ? AND last_seen >= ?',
		undef, $ip, $now - $KNOWN_RETRY_LIFETIME);
	return Mailmunge::Response->CONTINUE() if $known;

	my $row = $dbh->selectrow_arrayref(
		'SELECT last_seen FROM greylist WHERE hash = ?', undef, $key);
	if ($row) {
		my $age = $now - ($row->[0] || 0);
		if ($age > $max_delay) {
			# Too late: forget it; the next attempt starts over.
			$dbh->do('DELETE FROM greylist WHERE hash = ?', undef, $key);
			return $self->_tempfail($min_delay);
		}
		return $self->_tempfail($min_delay) if $age < $min_delay;

		# The sender retried within the window.  Refresh a stale
		# entry rather than tripping over its primary key.
		my $n = $dbh->do('UPDATE ips_known_to_retry SET last_seen = ? WHERE ip = ?',
				 undef, $now, $ip);
		if (!$n || $n == 0) {
			$dbh->do('INSERT INTO ips_known_to_retry(ip, last_seen) VALUES(?, ?)',
				 undef, $ip, $now);
		}
		return Mailmunge::Response->CONTINUE();
	}

	$dbh->do('INSERT INTO greylist(last_seen, hash) VALUES(?, ?)', undef, $now, $key);
	return $self->_tempfail($min_delay);
}

sub prune
{
	my ($self, $dbh, $max_delay) = @_;
	$max_delay = $MIN_MAX_DELAY unless defined($max_delay) && $max_delay =~ /^\d+$/ && $max_delay > $MIN_MAX_DELAY;
	my $now = time();
	my $a = $dbh->do('DELETE FROM greylist WHERE last_seen < ?', undef, $now - $max_delay);
	my $b = $dbh->do('DELETE FROM ips_known_to_retry WHERE last_seen < ?', undef, $now - $KNOWN_RETRY_LIFETIME);
	return ($a || 0) + ($b || 0);
}

sub _tempfail
{
	my ($self, $min_delay) = @_;
	return Mailmunge::Response->TEMPFAIL(
		message => "Greylisting in effect; please try again in $min_delay second(s)");
}

1;

__END__

=head1 NAME

Mailmunge::Test::Greylist - greylisting backed by an SQL database

=head1 SYNOPSIS

    use DBI;
    use Mailmunge::Test::Greylist;

    sub filter_recipient {
        my ($self, $ctx) = @_;
        my $dbh = DBI->connect('dbi:SQLite:dbname=/var/spool/mailmunge/greylist.sqlite');
        my $gl = Mailmunge::Test::Greylist->new($self);
        return $gl->evaluate($dbh, 300, 86400, $ctx->hostip,
                             $ctx->sender, $ctx->recipients->[0]);
    }

=head1 DESCRIPTION

Greylisting temporarily refuses the first attempt of a (client IP,
further keys) combination and accepts a retry that arrives after a
minimum delay but before a maximum delay.  An IP address that retried
correctly once is accepted without greylisting for 31 days afterwards.

The caller owns the database connection and must create the two tables:

    CREATE TABLE greylist(hash TEXT PRIMARY KEY NOT NULL, last_seen INTEGER);
    CREATE TABLE ips_known_to_retry(ip TEXT PRIMARY KEY NOT NULL, last_seen INTEGER);

Any DBI driver works; only portable SQL is used.

=head1 METHODS

=head2 Mailmunge::Test::Greylist->new($filter)

Inherited from L<Mailmunge::Test>.

=head2 evaluate($dbh, $min_delay, $max_delay, $ip, @extra)

Decides about one attempt.  C<$min_delay> and C<$max_delay> are in
seconds; a C<$max_delay> below 14400 is raised to 14400.  The attempt is
identified by the SHA-1 of C<$ip> and C<@extra> (typically the sender
and the recipient) joined with C<< <> >>.

Returns a L<Mailmunge::Response>: CONTINUE if C<$ip> is known to retry,
or if this is a retry that came at least C<$min_delay> and at most
C<$max_delay> seconds after the first attempt (the IP is then recorded
as known to retry); otherwise TEMPFAIL with the message
C<Greylisting in effect; please try again in MIN second(s)>.  An
attempt that comes after the maximum delay starts the cycle again.

=head2 prune($dbh [, $max_delay])

Deletes the rows that can no longer matter: greylist entries older than
C<$max_delay> (at least 14400 seconds, the default) and known-retry
entries older than 31 days.  Returns the number of rows deleted.  Run it
now and then (e.g. from the filter's C<tick>), or the tables grow forever.

=cut
