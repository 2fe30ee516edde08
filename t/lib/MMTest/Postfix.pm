package MMTest::Postfix;
use strict;
use warnings;

use File::Spec;
use JSON::PP ();
use Time::HiRes ();

use MMTest::Util qw(free_port wait_until private_dir port_open slurp slurp_if_exists spew pid_alive stop_pid);

=head1 NAME

MMTest::Postfix - a private Postfix instance for end-to-end tests

=head1 SYNOPSIS

    my $pf = MMTest::Postfix->new(
        relay_port => $sink->port,              # where all mail goes
        milter     => $stack->milter_spec_postfix,  # optional
    );
    $pf->start;
    ... send to 127.0.0.1:$pf->port ...
    $pf->wait_queue_empty(30);
    $pf->stop;                                  # also on destruction

=head1 DESCRIPTION

Builds a complete Postfix configuration under a private temporary
directory (its own C<config_directory>, C<queue_directory>,
C<data_directory> and log file) and runs it with C<postfix -c DIR
start|stop>.  The system's /etc/postfix is only read (for Postfix's own
file lists), never written.  The instance:

=over

=item * listens with smtpd on 127.0.0.1:PORT only (no chroot, no DNS
peer-name lookup, so every client is C<unknown[addr]>);

=item * relays everything to C<[127.0.0.1]:relay_port>, delivers nothing
locally (no C<mydestination>, local transport is an error);

=item * trusts 127.0.0.0/8 as C<mynetworks> so relaying is allowed;

=item * with C<milter>, sets C<smtpd_milters> and C<non_smtpd_milters> to
it, with C<milter_default_action = tempfail> as recommended for
production;

=item * logs to C<DIR/maillog> (C<< $pf->log >>), which the tests print on
failure.

=back

Requires root (the Postfix master must start as root).

=head1 METHODS

=head2 MMTest::Postfix->new(%opts)

Options: C<relay_port> (required), C<port> (default: a free port),
C<milter> (a Postfix milter specification such as
C<inet:127.0.0.1:PORT>), C<main_cf> (hash of extra main.cf settings,
applied last), C<hostname> (default C<mta.mmtest.invalid>), C<ipv6>
(also listen on [::1]:PORT and trust ::1).

=cut

sub new {
    my ($class, %o) = @_;
    defined $o{relay_port} or die "MMTest::Postfix: relay_port required\n";
    my $dir = private_dir('postfix');
    my $self = bless {
        dir        => $dir,
        relay_port => $o{relay_port},
        port       => $o{port} // free_port(),
        milter     => $o{milter},
        main_cf    => $o{main_cf} // {},
        hostname   => $o{hostname} // 'mta.mmtest.invalid',
        ipv6       => $o{ipv6} // 0,
        owner      => $$,
    }, $class;
    return $self;
}

=head2 port / dir / config_dir / queue_dir / hostname

Accessors: the smtpd port, the instance's base directory, its
configuration and queue directories, its C<myhostname>.

=cut

sub port       { $_[0]{port} }
sub dir        { $_[0]{dir} }
sub config_dir { File::Spec->catdir($_[0]{dir}, 'etc') }
sub queue_dir  { File::Spec->catdir($_[0]{dir}, 'queue') }
sub hostname   { $_[0]{hostname} }

=head2 log

The instance's log file contents (empty string if none yet).

=cut

sub log {
    my ($self) = @_;
    my $f = File::Spec->catfile($self->{dir}, 'maillog');
    return slurp_if_exists($f) // '';
}

sub _main_cf {
    my ($self) = @_;
    my $d = $self->{dir};
    my @s = (
        [ compatibility_level  => '3.6' ],
        [ config_directory     => $self->config_dir ],
        [ queue_directory      => $self->queue_dir ],
        [ data_directory       => "$d/data" ],
        [ meta_directory       => '/etc/postfix' ],
        [ maillog_file         => "$d/maillog" ],
        [ maillog_file_prefixes => $d ],
        [ myhostname           => $self->{hostname} ],
        [ mydomain             => 'mmtest.invalid' ],
        [ myorigin             => '$myhostname' ],
        [ mydestination        => '' ],
        [ inet_interfaces      => $self->{ipv6} ? '127.0.0.1, [::1]' : '127.0.0.1' ],
        [ inet_protocols       => $self->{ipv6} ? 'all' : 'ipv4' ],
        [ mynetworks           => $self->{ipv6} ? '127.0.0.0/8 [::1]/128' : '127.0.0.0/8' ],
        [ relayhost            => "[127.0.0.1]:$self->{relay_port}" ],
        [ smtpd_relay_restrictions => 'permit_mynetworks, reject_unauth_destination' ],
        [ smtpd_peername_lookup => 'no' ],
        [ local_transport      => 'error:local delivery is disabled' ],
        [ alias_maps           => '' ],
        [ alias_database       => '' ],
        [ local_recipient_maps => '' ],
        [ append_dot_mydomain  => 'no' ],
        [ biff                 => 'no' ],
        [ message_size_limit   => '52428800' ],
        [ smtp_connection_cache_on_demand => 'no' ],
        [ smtp_dns_support_level => 'disabled' ],
        [ queue_run_delay      => '1s' ],
        [ minimal_backoff_time => '2s' ],
        [ maximal_backoff_time => '4s' ],
        [ delay_warning_time   => '0' ],
        [ smtputf8_enable      => 'no' ],
    );
    if (defined $self->{milter}) {
        push @s, [ smtpd_milters => $self->{milter} ], [ non_smtpd_milters => $self->{milter} ],
            [ milter_default_action => 'tempfail' ], [ milter_protocol => '6' ],
            [ milter_content_timeout => '300s' ];
    }
    push @s, map { [ $_ => $self->{main_cf}{$_} ] } sort keys %{ $self->{main_cf} };
    return join '', map { "$_->[0] = $_->[1]\n" } @s;
}

sub _master_cf {
    my ($self) = @_;
    # service type private unpriv chroot wakeup maxproc command
    my @svc = (
        "127.0.0.1:$self->{port} inet n - n - - smtpd",
        ($self->{ipv6} ? ("[::1]:$self->{port} inet n - n - - smtpd") : ()),
        'pickup unix n - n 60 1 pickup',
        'cleanup unix n - n - 0 cleanup',
        'qmgr unix n - n 300 1 qmgr',
        'rewrite unix - - n - - trivial-rewrite',
        'bounce unix - - n - 0 bounce',
        'defer unix - - n - 0 bounce',
        'trace unix - - n - 0 bounce',
        'verify unix - - n - 1 verify',
        'flush unix n - n 1000? 0 flush',
        'proxymap unix - - n - - proxymap',
        'smtp unix - - n - - smtp',
        'relay unix - - n - - smtp',
        'showq unix n - n - - showq',
        'error unix - - n - - error',
        'retry unix - - n - - error',
        'discard unix - - n - - discard',
        'anvil unix - - n - 1 anvil',
        'scache unix - - n - 1 scache',
        'postlog unix-dgram n - n - 1 postlogd',
    );
    return join '', map { "$_\n" } @svc;
}

# Runs a Postfix command with our config directory; returns (rc, output).
sub _run {
    my ($self, @cmd) = @_;
    my $cmd = join ' ', map { "'$_'" } @cmd;
    my $out = `$cmd 2>&1`;
    return ($? >> 8, $out);
}

=head2 start

Writes the configuration, starts the instance and waits (bounded) until
smtpd accepts connections.  Dies with the log on failure.

=cut

sub start {
    my ($self) = @_;
    my $d = $self->{dir};
    mkdir $self->config_dir;
    mkdir $self->queue_dir;
    mkdir "$d/data";
    my (undef, undef, $uid) = getpwnam('postfix') or die "MMTest::Postfix: no user 'postfix'\n";
    chown $uid, -1, "$d/data" or die "chown $d/data: $!";
    spew(File::Spec->catfile($self->config_dir, 'main.cf'), $self->_main_cf);
    spew(File::Spec->catfile($self->config_dir, 'master.cf'), $self->_master_cf);

    # A signal that ends the test while 'postfix start' runs would leave
    # the master behind (stop() only stops a started instance): it is held
    # until the instance counts as started, then raised again.
    my ($rc, $out, $pending);
    {
        local @SIG{qw(INT TERM HUP)} = (sub { $pending //= $_[0] }) x 3;
        ($rc, $out) = $self->_run('postfix', '-c', $self->config_dir, 'start');
        $self->{started} = 1;
    }
    kill($pending, $$) if $pending;
    if ($rc != 0) {
        $self->stop;
        die "MMTest::Postfix: 'postfix start' failed (rc $rc): $out\n--- maillog ---\n" . $self->log;
    }
    eval { wait_until(20, "Postfix smtpd on port $self->{port}", sub { port_open($self->{port}) }) };
    if ($@) { my $e = $@; $self->stop; die "$e--- maillog ---\n" . $self->log }
    return $self;
}

sub _master_pid {
    my ($self) = @_;
    my $f = File::Spec->catfile($self->queue_dir, 'pid', 'master.pid');
    return undef unless -e $f;
    my ($pid) = slurp($f) =~ /(\d+)/;
    return $pid;
}

=head2 stop

Stops the instance (C<postfix stop>, then signals if the master lingers)
and waits until the master process is gone.  Idempotent; also called on
destruction.

=cut

sub stop {
    my ($self) = @_;
    return unless delete $self->{started};
    return unless $$ == $self->{owner};
    my $pid = $self->_master_pid;
    $self->_run('postfix', '-c', $self->config_dir, 'stop');
    if ($pid) {
        my $deadline = Time::HiRes::time() + 10;
        while (kill(0, $pid) && Time::HiRes::time() < $deadline) { Time::HiRes::sleep(0.05) }
        stop_pid($pid, 2) if kill(0, $pid);
    }
    return;
}

sub DESTROY { local ($., $@, $!, $^E, $?); $_[0]->stop }

=head2 queue

The queue's contents as a list of hashes from C<postqueue -j>
(C<queue_name>, C<queue_id>, C<sender>, C<recipients>, ...).

=cut

sub queue {
    my ($self) = @_;
    my ($rc, $out) = $self->_run('postqueue', '-c', $self->config_dir, '-j');
    die "MMTest::Postfix: postqueue -j failed: $out\n" if $rc != 0;
    my $json = JSON::PP->new;
    return map { $json->decode($_) } grep { /^\{/ } split /\n/, $out;
}

=head2 hold_queue

The entries of L</queue> that are in the hold queue (where Postfix puts
quarantined messages).

=cut

sub hold_queue { grep { $_->{queue_name} eq 'hold' } $_[0]->queue }

=head2 held

Queue ids of the messages on hold (the same question as
L<MMTest::Sendmail/held>, so tests can ask either MTA).

=cut

sub held { map { $_->{queue_id} } $_[0]->hold_queue }

=head2 wait_queue_empty([$timeout])

Waits (default 30 s) until no message is waiting for delivery (messages
on hold do not count).  Dies with the queue and the log on timeout.

=cut

sub wait_queue_empty {
    my ($self, $timeout) = @_;
    eval {
        wait_until($timeout // 30, 'the Postfix queue to drain', sub {
            !grep { $_->{queue_name} ne 'hold' } $self->queue;
        });
    };
    die $@ . "--- postqueue ---\n" . `postqueue -c '@{[ $self->config_dir ]}' -p 2>&1` . "--- maillog ---\n" . $self->log if $@;
    return 1;
}

=head2 flush

Asks Postfix to retry deferred mail now (C<postqueue -f>).

=cut

sub flush {
    my ($self) = @_;
    $self->_run('postqueue', '-c', $self->config_dir, '-f');
}

=head2 delete_all

Removes every queued message (C<postsuper -d ALL>), e.g. after a
quarantine case.

=cut

sub delete_all {
    my ($self) = @_;
    $self->_run('postsuper', '-c', $self->config_dir, '-d', 'ALL');
}

1;
