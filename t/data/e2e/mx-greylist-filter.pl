#!/usr/bin/perl
# Test filter for several MX hosts sharing one greylisting database
# (t/76-multi-mx-greylist.t, protocol/e2e.md §8).  The same file runs on
# every host; what differs per host comes from the environment:
#   MMTEST_GREYLIST_DSN    DBI data source of the shared database (in
#                          production a literal such as
#                          dbi:Pg:host=db.example.net;dbname=greylist)
#   MMTEST_GREYLIST_DELAY  minimum greylisting delay in seconds (default 2)
#   MMTEST_MX_NAME         this host's name, put into X-MMTest-Filtered-By
# Every recipient is greylisted on (client IP, sender, recipient).
use strict;
use warnings;

package MMTestMXFilter;
use base qw(Mailmunge::Filter);

use DBI;
use Mailmunge::Response;
use Mailmunge::Test::Greylist;

my $MAX_DELAY = 86400;
my ($dbh, $dbh_pid);

# One connection per worker, opened on first use and reopened when it
# broke.  No password: the database authenticates the worker's user.
sub _greylist_dbh {
    return $dbh if $dbh && $dbh_pid == $$ && $dbh->ping;
    my $dsn = $ENV{MMTEST_GREYLIST_DSN} or die "MMTEST_GREYLIST_DSN is not set\n";
    # AutoInactiveDestroy: a handle inherited over fork is left to its owner.
    $dbh = DBI->connect($dsn, '', '', { RaiseError => 1, PrintError => 0, AutoCommit => 1,
        AutoInactiveDestroy => 1 });
    $dbh_pid = $$;
    return $dbh;
}

# A database error dies, and a dying filter is a temporary failure: the
# sending MTA retries, nothing is accepted unchecked.
sub filter_recipient {
    my ($self, $ctx) = @_;
    my $delay = $ENV{MMTEST_GREYLIST_DELAY} // 2;
    return Mailmunge::Test::Greylist->new($self)->evaluate(_greylist_dbh(), $delay, $MAX_DELAY,
        $ctx->hostip, $ctx->sender, $ctx->recipients->[0]);
}

sub filter_message {
    my ($self, $ctx) = @_;
    $ctx->action_add_header('X-MMTest-Filtered-By', $ENV{MMTEST_MX_NAME} // 'unknown');
    return;
}

package main;

my $filter = MMTestMXFilter->new();
$filter->run();
exit(0);
