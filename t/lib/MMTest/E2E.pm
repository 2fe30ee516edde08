package MMTest::E2E;
use strict;
use warnings;

use Test::More;

use MMTest::Util qw(have_root skip_or_fail);
use MMTest::Teardown;
use MMTest::Sink;
use MMTest::Stack;
use MMTest::Postfix;
use MMTest::Sendmail;
use MMTest::SMTP;

=head1 NAME

MMTest::E2E - one running end-to-end setup (sink, our daemons, one MTA) and the helpers the cases share

=head1 SYNOPSIS

    use MMTest::E2E;
    my $e2e = MMTest::E2E->setup(mta => 'postfix', milter_args => ['-r', '-H', '-s', '-t']);
    # (skips the whole test file with a reason when something is missing)

    my $r = $e2e->send(id => 'case-1', subject => 'addhdr', to => ['a@example.org']);
    my $m = $e2e->delivered('case-1');      # MMTest::Sink::Message, or undef + diag
    $e2e->teardown;                         # also on destruction

=head1 DESCRIPTION

Starts, in this order, an L<MMTest::Sink>, an L<MMTest::Stack> running
F<t/data/e2e/mmtest-filter.pl> (or C<filter>), and a private
L<MMTest::Postfix> or L<MMTest::Sendmail> whose milter is our milter and
whose relay is the sink.  One setup serves every case of a test file.

=head1 METHODS

=head2 MMTest::E2E->setup(%opts)

Options: C<mta> (C<postfix> or C<sendmail>, required), C<filter>,
C<milter_args>, C<mx_args>, C<milter_socket>, C<copy_filter>, C<spool_size>, C<env> (passed to L<MMTest::Stack>), C<mta_opts>
(more options for the MTA class, e.g. C<main_cf> or C<hostname>), C<sink>
(an L<MMTest::Sink> another setup owns, so that several MTAs relay to one
sink; it is then left running at teardown).  Calls
C<plan skip_all> when the test cannot run here (not root, MTA or daemons
missing; with C<CI=true> that is a failure instead, see
L<MMTest::Util/skip_or_fail>).  Dies with diagnostics if something fails
to start.

=cut

sub setup {
    my ($class, %o) = @_;
    my $kind = $o{mta} or die "MMTest::E2E: mta required\n";
    skip_or_fail('end-to-end tests need root (the MTAs start as root)') unless have_root();
    if ($kind eq 'postfix') {
        skip_or_fail('postfix is not installed (run .ci/install-deps)') unless -x '/usr/sbin/postfix';
    } else {
        if (my $why = MMTest::Sendmail->unavailable) { skip_or_fail($why) }
    }
    if (my $why = MMTest::Stack->unavailable) { skip_or_fail($why) }

    my $self = bless { kind => $kind, owner => $$, own_sink => !$o{sink} }, $class;
    # Torn down at exit before File::Temp removes the MTA's directories.
    MMTest::Teardown->register($self, 'teardown');
    $self->{sink}  = $o{sink} // MMTest::Sink->new;
    $self->{stack} = MMTest::Stack->new(
        filter      => $o{filter} // 't/data/e2e/mmtest-filter.pl',
        mta         => $kind,
        milter_args => $o{milter_args} // [],
        mx_args     => $o{mx_args} // [],
        milter_socket => $o{milter_socket},
        copy_filter => $o{copy_filter},
        spool_size  => $o{spool_size},
        env         => $o{env} // {},
    );
    $self->{stack}->start;
    if ($kind eq 'postfix') {
        $self->{mta} = MMTest::Postfix->new(relay_port => $self->{sink}->port,
            milter => $self->{stack}->milter_spec_postfix, %{ $o{mta_opts} // {} });
    } else {
        $self->{mta} = MMTest::Sendmail->new(relay_port => $self->{sink}->port,
            milter => $self->{stack}->milter_spec_sendmail, %{ $o{mta_opts} // {} });
    }
    $self->{mta}->start;
    return $self;
}

=head2 kind / sink / stack / mta

C<postfix> or C<sendmail>, and the running pieces.

=cut

sub kind  { $_[0]{kind} }
sub sink  { $_[0]{sink} }
sub stack { $_[0]{stack} }
sub mta   { $_[0]{mta} }

=head2 send(%args)

Builds a message with L<MMTest::SMTP/build_message> (C<id>, C<subject>,
C<headers>, C<body>) and sends it with L<MMTest::SMTP/send_mail> to the
MTA (C<from> default C<sender@example.com>, C<to> default
C<['rcpt@example.org']>, C<helo>, C<local_addr>, C<host>, C<before_data>).  Returns the result
hash of C<send_mail>; a connection failure is returned as a failure
instead of dying.

=cut

sub send {
    my ($self, %a) = @_;
    my $data = $a{data} // MMTest::SMTP->build_message(
        map { exists $a{$_} ? ($_ => $a{$_}) : () } qw(id subject headers body));
    my %send = (
        port => $self->{mta}->port,
        from => $a{from} // 'sender@example.com',
        to   => $a{to} // ['rcpt@example.org'],
        data => $data,
        map { exists $a{$_} ? ($_ => $a{$_}) : () } qw(helo local_addr host before_data),
    );
    my $r = eval { MMTest::SMTP->send_mail(%send) };
    return $r if $r;
    return { ok => 0, failed_at => 'connect', failure => "connect: $@", rcpt => [] };
}

=head2 delivered($id [, $timeout])

Waits (default 60 s) for the message with this id at the sink.  Returns
it, or undef after printing the daemons' and the MTA's logs with C<diag>.

=cut

sub delivered {
    my ($self, $id, $timeout) = @_;
    my $m = eval { $self->{sink}->wait_for_id($id, $timeout // 60) };
    return $m if $m;
    diag($@ . $self->diagnostics);
    return undef;
}

=head2 not_delivered($id)

Waits until the MTA's queue has drained and returns true if no message
with this id reached the sink.

=cut

sub not_delivered {
    my ($self, $id) = @_;
    eval { $self->{mta}->wait_queue_empty(30) };
    diag($@) if $@;
    return !$self->{sink}->find_id($id);
}

=head2 diagnostics

The daemons' stderr and, for Postfix, its log: for C<diag> after a
failed case.

=cut

sub diagnostics {
    my ($self) = @_;
    my $d = $self->{stack}->diagnostics;
    $d .= "--- maillog ---\n" . $self->{mta}->log if $self->{mta}->can('log');
    return $d;
}

=head2 reply_line($reply)

The first line of a reply from L<MMTest::SMTP> (e.g.
C<554 5.7.1 MMTest rejects your sender>), or the empty string.

=cut

sub reply_line {
    my ($self, $r) = @_;
    return '' unless $r && $r->{lines} && @{ $r->{lines} };
    return $r->{lines}[0];
}

=head2 rejection($result)

For a failed C<send>: the reply that refused the message (the failing
step's reply; for recipients, the last refused one).

=cut

sub rejection {
    my ($self, $res) = @_;
    return undef if $res->{ok};
    my $step = $res->{failed_at} // '';
    return $res->{rcpt}[-1] if $step eq 'rcpt';
    return $res->{$step};
}

=head2 teardown

Stops the MTA, the daemons and the sink (unless it came from the
C<sink> option).  Idempotent; also on destruction.

=cut

sub teardown {
    my ($self) = @_;
    return unless $$ == $self->{owner};
    for my $k (qw(mta stack sink)) {
        my $o = delete $self->{$k} or next;
        $o->stop unless $k eq 'sink' && !$self->{own_sink};
    }
}

sub DESTROY { local ($., $@, $!, $^E, $?); $_[0]->teardown }

1;
