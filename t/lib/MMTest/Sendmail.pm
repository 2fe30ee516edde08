package MMTest::Sendmail;
use strict;
use warnings;

use File::Spec;
use POSIX ();
use Time::HiRes ();

use MMTest::Util qw(free_port wait_until private_dir port_open slurp spew stop_pid);

=head1 NAME

MMTest::Sendmail - a private Sendmail instance for end-to-end tests

=head1 SYNOPSIS

    plan skip_all => MMTest::Sendmail->unavailable if MMTest::Sendmail->unavailable;
    my $sm = MMTest::Sendmail->new(
        relay_port => $sink->port,
        milter     => 'inet:8872@127.0.0.1',   # optional, Sendmail syntax
    );
    $sm->start;
    ... send to 127.0.0.1:$sm->port ...
    $sm->wait_queue_empty(30);
    $sm->stop;

=head1 DESCRIPTION

Sendmail conflicts with Postfix as the system MTA, so C<.ci/install-deps>
unpacks its Debian packages under F</opt/mm-sendmail> instead of
installing them.  This class generates a private F<sendmail.cf> from the
cf macros there with C<m4> and runs the binary with C<-C> on it:

=over

=item * one daemon on 127.0.0.1:PORT (no MSA port), queue, pid and
statistics files under a private temporary directory;

=item * every message goes to the smart host C<[127.0.0.1]> on
C<relay_port> over ESMTP; no DNS (own service switch: hosts from files
only, C<nocanonify>, unresolvable sender domains accepted), relaying
allowed for anyone (it only listens on loopback);

=item * with C<milter>, an C<INPUT_MAIL_FILTER> named C<mailmunge> with
C<F=T> (tempfail when the filter is unavailable), as upstream's
regression tests configure it.

=back

Sendmail sleeps a minute at start-up when the machine's host name is not
fully qualified; so when C<unshare> can give it a private UTS namespace,
the daemon runs there under the name C<mta-sm.mmtest.invalid>.

Sendmail only logs to syslog; when something fails, look at the queue
(C<< $sm->queue_files >>) and the sink.

=head1 METHODS

=head2 MMTest::Sendmail->unavailable

Returns a reason string if the tests cannot run Sendmail here (not
root, not unpacked, m4 missing), else the empty string.

=cut

our $ROOT = $ENV{MMTEST_SENDMAIL_ROOT} // '/opt/mm-sendmail';

=head2 MMTest::Sendmail->binary / MMTest::Sendmail->cf_dir

The Sendmail binary and the cf macro directory under the private tree
(F</opt/mm-sendmail>, or C<MMTEST_SENDMAIL_ROOT>).

=cut

sub binary { "$ROOT/usr/libexec/sendmail/sendmail" }
sub cf_dir { "$ROOT/usr/share/sendmail/cf" }

sub unavailable {
    return 'end-to-end tests need root' if $> != 0;
    return "Sendmail is not unpacked under $ROOT (run .ci/install-deps)" unless -x binary();
    return 'cf macros missing under ' . cf_dir() unless -e cf_dir() . '/m4/cf.m4';
    return 'm4 is not installed' unless grep { -x "$_/m4" } split /:/, $ENV{PATH} // '/usr/bin';
    return '';
}

=head2 MMTest::Sendmail->new(%opts)

Options: C<relay_port> (required), C<port> (default: a free port),
C<milter> (the C<S=> part of INPUT_MAIL_FILTER, e.g.
C<inet:PORT@127.0.0.1> or C<unix:/path>), C<milter_timeouts> (default
C<S:60s;R:60s;E:5m>), C<hostname> (default C<mta-sm.mmtest.invalid>),
C<mc> (extra lines appended to the .mc before the mailers), C<ipv6>
(also listen on [::1]:PORT).

=cut

sub new {
    my ($class, %o) = @_;
    defined $o{relay_port} or die "MMTest::Sendmail: relay_port required\n";
    return bless {
        dir             => private_dir('sendmail'),
        relay_port      => $o{relay_port},
        port            => $o{port} // free_port(),
        milter          => $o{milter},
        milter_timeouts => $o{milter_timeouts} // 'S:60s;R:60s;E:5m',
        hostname        => $o{hostname} // 'mta-sm.mmtest.invalid',
        mc              => $o{mc} // '',
        ipv6            => $o{ipv6} // 0,
        owner           => $$,
    }, $class;
}

=head2 port / dir / queue_dir / cf_file / hostname

Accessors.

=cut

sub port      { $_[0]{port} }
sub dir       { $_[0]{dir} }
sub queue_dir { File::Spec->catdir($_[0]{dir}, 'queue') }
sub cf_file   { File::Spec->catfile($_[0]{dir}, 'sendmail.cf') }
sub hostname  { $_[0]{hostname} }

sub _mc {
    my ($self) = @_;
    my $d  = $self->{dir};
    my $cf = cf_dir();
    my $q  = "`";    # m4 open quote
    my $def = sub { my ($k, $v) = @_; "define(${q}$k', ${q}$v')dnl\n" };
    my $mc = "divert(0)dnl\n"
        . "include(${q}$cf/m4/cf.m4')dnl\n"
        . "OSTYPE(${q}linux')dnl\n"
        . $def->(confDOMAIN_NAME => $self->{hostname})
        . $def->(QUEUE_DIR => $self->queue_dir)
        . $def->(confPID_FILE => "$d/sendmail.pid")
        . $def->(STATUS_FILE => "$d/statistics")
        . $def->(ALIAS_FILE => "$d/aliases")
        . $def->(HELP_FILE => "$ROOT/etc/mail/helpfile")
        . $def->(confSERVICE_SWITCH_FILE => "$d/service.switch")
        . $def->(confDONT_PROBE_INTERFACES => 'true')
        # Our files live under /tmp (world-writable, sticky): without this
        # Sendmail refuses e.g. a milter UNIX socket there as unsafe.
        . $def->(confDONT_BLAME_SENDMAIL => 'TrustStickyBit')
        . $def->(confTO_QUEUERETURN => '1h')
        . $def->(confTO_QUEUEWARN => '1h')
        . $def->(confMAX_MESSAGE_SIZE => '52428800')
        . $def->(confLOG_LEVEL => '9')
        . $def->(SMART_HOST => 'esmtp:[127.0.0.1]')
        . $def->(ESMTP_MAILER_ARGS => "TCP \$h $self->{relay_port}")
        . "FEATURE(${q}no_default_msa')dnl\n"
        . "FEATURE(${q}nocanonify')dnl\n"
        . "FEATURE(${q}promiscuous_relay')dnl\n"
        . "FEATURE(${q}accept_unresolvable_domains')dnl\n"
        . "DAEMON_OPTIONS(${q}Port=$self->{port}, Addr=127.0.0.1, Name=MTA')dnl\n"
        . ($self->{ipv6} ? "DAEMON_OPTIONS(${q}Port=$self->{port}, Addr=::1, Family=inet6, Name=MTA6')dnl\n" : '');
    if (defined $self->{milter}) {
        $mc .= "INPUT_MAIL_FILTER(${q}mailmunge', ${q}S=$self->{milter}, F=T, T=$self->{milter_timeouts}')dnl\n";
    }
    $mc .= $self->{mc};
    $mc .= "MAILER(${q}smtp')dnl\n";
    return $mc;
}

=head2 start

Generates the configuration, starts the daemon and waits (bounded) until
it accepts connections.  Dies with details on failure.

=cut

sub start {
    my ($self) = @_;
    my $d = $self->{dir};
    mkdir $self->queue_dir, 0700 or die "mkdir queue: $!";
    spew("$d/service.switch", "hosts files\naliases files\n");
    spew("$d/aliases", '');
    spew("$d/statistics", '');
    spew("$d/sendmail.mc", $self->_mc);
    my $out = `m4 '$d/sendmail.mc' 2>&1 >'$d/sendmail.cf'`;
    die "MMTest::Sendmail: m4 failed: $out\n" if $? != 0;
    # m4 also warns about promiscuous_relay on stderr; that is expected.

    my @cmd = (binary(), '-C', $self->cf_file, '-bd', '-q1h');
    my $uts = system('unshare --uts true >/dev/null 2>&1') == 0;
    my $shell = $uts
        ? "unshare --uts sh -c 'hostname $self->{hostname} && exec \"\$@\"' sendmail " . join(' ', map { "'$_'" } @cmd)
        : join(' ', map { "'$_'" } @cmd);
    $out = `$shell 2>&1`;
    die "MMTest::Sendmail: start failed (rc " . ($? >> 8) . "): $out\n" if $? != 0;
    $self->{started} = 1;
    eval { wait_until(20, "Sendmail on port $self->{port}", sub { port_open($self->{port}) }) };
    if ($@) { my $e = $@; $self->stop; die $e }
    $self->{pid} = $self->_daemon_pid;
    return $self;
}

sub _daemon_pid {
    my ($self) = @_;
    my $f = "$self->{dir}/sendmail.pid";
    return undef unless -e $f;
    my ($pid) = slurp($f) =~ /^(\d+)/;
    return $pid;
}

=head2 stop

Stops the daemon and its children (SIGTERM to its process group, then
SIGKILL if needed).  Idempotent; also called on destruction.

=cut

sub stop {
    my ($self) = @_;
    return unless delete $self->{started};
    return unless $$ == $self->{owner};
    my $pid = $self->{pid} // $self->_daemon_pid or return;
    # sendmail -bd calls setsid(), so its pid is also its process group:
    # this reaches delivery children and queue runners too.
    kill 'TERM', -$pid;
    my $deadline = Time::HiRes::time() + 10;
    while (kill(0, $pid) && Time::HiRes::time() < $deadline) { Time::HiRes::sleep(0.05) }
    kill 'KILL', -$pid;
    return;
}

sub DESTROY { local ($., $@, $!, $^E, $?); $_[0]->stop }

=head2 queue_files([$prefix])

Names of the files in the queue directory, optionally only those that
start with $prefix (C<qf> queued, C<hf> quarantined, C<df> data).

=cut

sub queue_files {
    my ($self, $prefix) = @_;
    opendir my $dh, $self->queue_dir or return ();
    my @f = sort grep { !/^\./ } readdir $dh;
    closedir $dh;
    @f = grep { index($_, $prefix) == 0 } @f if defined $prefix;
    return @f;
}

=head2 queued / quarantined

Queue ids of messages waiting for delivery / quarantined (held).

=cut

sub queued      { map { substr($_, 2) } $_[0]->queue_files('qf') }
sub quarantined { map { substr($_, 2) } $_[0]->queue_files('hf') }

=head2 held

Same as C<quarantined>; the name both MTA classes share.

=cut

sub held { $_[0]->quarantined }

=head2 quarantine_reason($qid)

The reason Sendmail stored with a quarantined message (the C<q> line of
its C<hf> file), or undef.

=cut

sub quarantine_reason {
    my ($self, $qid) = @_;
    my $f = File::Spec->catfile($self->queue_dir, "hf$qid");
    return undef unless -e $f;
    my ($r) = slurp($f) =~ /^q(.*)$/m;
    return $r;
}

=head2 wait_queue_empty([$timeout])

Waits (default 30 s) until no message waits for delivery (quarantined
ones do not count).  Dies with the queue listing on timeout.

=cut

sub wait_queue_empty {
    my ($self, $timeout) = @_;
    eval { wait_until($timeout // 30, 'the Sendmail queue to drain', sub { !$self->queued }) };
    die $@ . 'queue: ' . join(' ', $self->queue_files) . "\n" if $@;
    return 1;
}

=head2 delete_all

Removes every file from the queue directory.

=cut

sub delete_all {
    my ($self) = @_;
    unlink map { File::Spec->catfile($self->queue_dir, $_) } $self->queue_files;
}

1;
