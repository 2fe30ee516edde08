#!/usr/bin/perl
# Big input through the real stack: a 50 MB message (filtered and delivered
# intact, compared by digest, and the filter saw every byte), and a message
# to 1,000 recipients (each RCPT checked by a worker with -t: the exact
# reply for each, and exactly the accepted ones delivered).
use strict;
use warnings;
use Test::More;
use Digest::MD5 ();
use File::Spec;

use MMTest::E2E;
use MMTest::Cases;
use MMTest::Util qw(wait_until);

# Postfix slows every reply by a second once a session has made 10 errors
# (a refused RCPT counts) and drops it at 20: raised for the 20 refusals
# among the 1,000 recipients (protocol/e2e.md §5).
my $e2e = MMTest::E2E->setup(mta => 'postfix', milter_args => ['-t'],
    mta_opts => { main_cf => { smtpd_soft_error_limit => 100, smtpd_hard_error_limit => 100 } });
my $sink = $e2e->sink;

# The sink file of the message with this id, found by reading only the
# head of each file (the test's own files are tens of MB).
my %head_seen;
sub sink_file_for {
    my ($id, $secs) = @_;
    my $found;
    eval {
        wait_until($secs, "message $id at the sink", sub {
            opendir(my $dh, $sink->dir) or return 0;
            for my $f (sort grep { /\.msg\z/ } readdir $dh) {
                next if $head_seen{$f}++;
                my $path = File::Spec->catfile($sink->dir, $f);
                open(my $fh, '<:raw', $path) or next;
                read($fh, my $head, 65536);
                return $found = $path if $head =~ /^X-MMTest-Id: \Q$id\E\r?$/m;
            }
            0;
        });
    };
    diag($@ . $e2e->diagnostics) unless $found;
    return $found;
}

# Headers (name => [values]) and the MD5 of the body of a sink file,
# streaming the body (see protocol/e2e.md §6 for the layout).
sub sink_file_digest {
    my ($path) = @_;
    open(my $fh, '<:raw', $path) or die "open $path: $!";
    while (defined(my $l = <$fh>)) { last if $l eq "\n" }    # the envelope
    my %h;
    my $last;
    while (defined(my $l = <$fh>)) {
        last if $l eq "\r\n";
        $l =~ s/\r\n\z//;
        if ($l =~ /^[ \t]/ && $last) { $h{$last}[-1] .= $l; next }
        my ($n, $v) = $l =~ /^([^:]+):[ \t]*(.*)$/ or next;
        push @{ $h{ $last = lc $n } }, $v;
    }
    my $md5 = Digest::MD5->new->addfile($fh)->hexdigest;
    return (\%h, $md5);
}

subtest 'a 50 MB message' => sub {
    my $id = "big-50mb-$$";
    # 1,000,000 numbered lines of 50 bytes: a lost, doubled or moved chunk
    # changes the digest.
    my $body = join '', map { sprintf("%08d %s\n", $_, substr('abcdefghijklmnopqrstuvwxyz' x 3, $_ % 26, 40)) } 1 .. 1_000_000;
    is(length $body, 50_000_000, 'the body is 50,000,000 bytes');
    my $want_lf = Digest::MD5::md5_hex($body);
    my $want_crlf = Digest::MD5::md5_hex($body =~ s/\n/\r\n/gr);
    my $res = $e2e->send(id => $id, subject => 'bodymd5', body => $body);
    undef $body;
    ok($res->{ok}, 'accepted') or diag($res->{failure} . $e2e->diagnostics);
    my $path = sink_file_for($id, 120) or return;
    my ($h, $md5) = sink_file_digest($path);
    is_deeply($h->{'x-mmtest-filtered'}, ['yes'], 'filtered by a worker');
    is_deeply($h->{'x-mmtest-body-md5'}, [$want_lf], 'the filter saw the whole body');
    is($md5, $want_crlf, 'delivered intact (same digest)');
    unlink $path;
};

subtest '1,000 recipients, each checked' => sub {
    my $id = "big-1000rcpt-$$";
    my (@to, @want, %refused);
    for my $i (1 .. 1000) {
        # The filter refuses these local parts at RCPT (-t).
        my $lp = { 50 => 'reject-rcpt', 75 => 'tempfail-rcpt' }->{ $i % 100 };
        if ($lp) {
            push @to, "$lp\@r$i.example.org";
            $refused{$#to} = $lp eq 'reject-rcpt'
                ? '554 5.7.1 MMTest rejects your recipient' : '451 4.3.0 MMTest tempfails your recipient';
        } else {
            push @to, "user$i\@d" . ($i % 7) . '.example.org';
            push @want, $to[-1];
        }
    }
    is(scalar @want, 980, '980 acceptable, 10 rejected and 10 tempfailed by the filter');
    my $res = $e2e->send(id => $id, subject => 'rcptcount', to => \@to);
    ok($res->{ok}, 'the message is accepted') or diag($res->{failure});
    is(scalar @{ $res->{rcpt} }, 1000, 'every RCPT answered');
    my @wrong = grep {
        my $line = $e2e->reply_line($res->{rcpt}[$_]);
        $refused{$_} ? $line ne $refused{$_} : $line !~ /^250 2\.1\.5 Ok\b/;
    } 0 .. $#to;
    is_deeply(\@wrong, [], 'each RCPT got its exact reply') or diag(join "\n",
        map { "$to[$_]: " . $e2e->reply_line($res->{rcpt}[$_]) } @wrong[0 .. ($#wrong < 9 ? $#wrong : 9)]);
    # Postfix hands the recipients to the sink in several transactions.
    my @got;
    my $ok = eval {
        wait_until(120, '980 recipients at the sink', sub {
            @got = map { $_->rcpt_addresses } $sink->find_id($id);
            @got >= 980;
        });
    };
    ok($ok, 'all deliveries arrived') or diag($@ . $e2e->diagnostics);
    is_deeply([ sort @got ], [ sort @want ], 'delivered to exactly the accepted 980, each once');
    my %count = map { ($_->header('X-MMTest-Rcpt-Count') // 'none') => 1 } $sink->find_id($id);
    is_deeply([ keys %count ], ['980'], 'the filter saw the 980 accepted recipients');
};

MMTest::Cases::spool_is_clean($e2e);
$e2e->teardown;
done_testing;
