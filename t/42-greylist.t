# Mailmunge::Test::Greylist against a private SQLite file
# (protocol/perl-api.md §10.2).
use strict;
use warnings;

use Test::More;
use DBI;
use Test::Mailmunge::Tmpdir;
use Mailmunge::Test::Greylist;

my $tmp = Test::Mailmunge::Tmpdir->new();
my $db = "$tmp->{dir}/greylist.sqlite";
my $dbh = DBI->connect("dbi:SQLite:dbname=$db", '', '', { RaiseError => 1, PrintError => 0 })
    or BAIL_OUT("cannot create $db");
$dbh->do(q{CREATE TABLE greylist(hash TEXT PRIMARY KEY NOT NULL, last_seen INTEGER)});
$dbh->do(q{CREATE TABLE ips_known_to_retry(ip TEXT PRIMARY KEY NOT NULL, last_seen INTEGER)});

my $gl = Mailmunge::Test::Greylist->new(bless {}, 'Some::Filter');
isa_ok($gl, 'Mailmunge::Test');
my @who = ('<sender@example.com>', '<recipient@example.org>');

my $r = $gl->evaluate($dbh, 0, 86400, '1.2.3.4', @who);
ok($r->is_tempfail, 'first attempt is greylisted');
is($r->message, 'Greylisting in effect; please try again in 0 second(s)', 'tempfail text');
ok($gl->evaluate($dbh, 0, 86400, '1.2.3.4', @who)->is_success, 'retry with min 0 passes');

ok($gl->evaluate($dbh, 2, 86400, '1.2.1.5', @who)->is_tempfail, 'min 2: first attempt');
$r = $gl->evaluate($dbh, 2, 86400, '1.2.1.5', @who);
ok($r->is_tempfail, 'min 2: immediate retry still greylisted');
is($r->message, 'Greylisting in effect; please try again in 2 second(s)', 'text names the delay');

# Age the entry instead of sleeping.
$dbh->do(q{UPDATE greylist SET last_seen = last_seen - 2});
ok($gl->evaluate($dbh, 2, 86400, '1.2.1.5', @who)->is_success, 'min 2: retry after 2s passes');

ok($gl->evaluate($dbh, 2, 86400, '1.2.3.8', @who)->is_tempfail, 'an IP that never retries');

is($dbh->selectrow_array(q{SELECT COUNT(*) FROM greylist}), 3, 'three greylist rows');
is($dbh->selectrow_array(q{SELECT COUNT(*) FROM ips_known_to_retry}), 2, 'two known-retry rows');

$dbh->do(q{DELETE FROM greylist});
ok($gl->evaluate($dbh, 2, 86400, '1.2.1.5', @who)->is_success, 'known IP passes without a greylist row');
ok($gl->evaluate($dbh, 2, 86400, '1.2.3.4', 'other', 'tuple')->is_success, 'known IP passes for any tuple');

# A different tuple from an unknown IP gets its own row.
ok($gl->evaluate($dbh, 0, 86400, '5.6.7.8', 'a')->is_tempfail, 'new tuple');
ok($gl->evaluate($dbh, 0, 86400, '5.6.7.9', 'a')->is_tempfail, 'same extra, other IP is a new tuple');

# Too late: a retry after max_delay starts over.  max below 14400 is raised.
$dbh->do(q{UPDATE greylist SET last_seen = last_seen - 10000});
ok($gl->evaluate($dbh, 0, 60, '5.6.7.8', 'a')->is_success, 'max_delay 60 is raised to 14400');
$dbh->do(q{UPDATE greylist SET last_seen = last_seen - 20000});
ok($gl->evaluate($dbh, 0, 60, '5.6.7.9', 'a')->is_tempfail, 'retry after max_delay is greylisted again');
is($dbh->selectrow_array(q{SELECT COUNT(*) FROM greylist}), 1,
   'the expired row was removed (the passed one stays)');
ok($gl->evaluate($dbh, 0, 86400, '5.6.7.9', 'a')->is_tempfail, 'next attempt starts a new cycle');
ok($gl->evaluate($dbh, 0, 86400, '5.6.7.9', 'a')->is_success, 'whose retry passes');

# Stale known-retry rows (older than 31 days) are refreshed, not duplicated.
$dbh->do(q{UPDATE ips_known_to_retry SET last_seen = last_seen - 40*86400 WHERE ip = '1.2.3.4'});
ok($gl->evaluate($dbh, 0, 86400, '1.2.3.4', @who)->is_tempfail, 'stale known IP is greylisted again');
ok($gl->evaluate($dbh, 0, 86400, '1.2.3.4', @who)->is_success, 'and its retry refreshes the stale row');
my $age = time() - $dbh->selectrow_array(q{SELECT last_seen FROM ips_known_to_retry WHERE ip = '1.2.3.4'});
cmp_ok($age, '<', 5, 'known-retry row refreshed');

# prune: old greylist rows (beyond max_delay) and stale known IPs go.
$dbh->do(q{DELETE FROM greylist});
$dbh->do(q{DELETE FROM ips_known_to_retry});
my $now = time();
$dbh->do(q{INSERT INTO greylist VALUES('fresh', ?), ('old', ?)}, undef, $now - 100, $now - 20000);
$dbh->do(q{INSERT INTO ips_known_to_retry VALUES('9.9.9.1', ?), ('9.9.9.2', ?)}, undef, $now - 86400, $now - 32 * 86400);
is($gl->prune($dbh), 2, 'prune deletes two rows');
is_deeply($dbh->selectcol_arrayref(q{SELECT hash FROM greylist}), ['fresh'], 'fresh greylist row kept');
is_deeply($dbh->selectcol_arrayref(q{SELECT ip FROM ips_known_to_retry}), ['9.9.9.1'], 'recent known IP kept');
is($gl->prune($dbh, 50), 0, 'max_delay below 14400 is raised: nothing more to delete');

$dbh->disconnect();
done_testing();
