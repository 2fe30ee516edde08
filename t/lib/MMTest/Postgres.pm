package MMTest::Postgres;
use strict;
use warnings;

use File::Spec;
use POSIX ();
use Time::HiRes ();

use MMTest::Teardown;
use MMTest::Util qw(wait_until private_dir slurp_if_exists pid_alive);

=encoding utf8

=head1 NAME

MMTest::Postgres - a private PostgreSQL server for one test file

=head1 SYNOPSIS

    if (my $why = MMTest::Postgres->unavailable) { ... skip ... }
    my $pg = MMTest::Postgres->new(socket_group => 'mailmunge')->start;
    $pg->create_database('greylist', owner => 'mailmunge');
    my $dsn = $pg->dsn('greylist');     # dbi:Pg:host=/tmp/...;dbname=greylist
    my $dbh = $pg->connect('greylist'); # as the superuser, RaiseError on
    ...
    $pg->stop;                          # also on destruction and at exit

=head1 DESCRIPTION

Creates a fresh cluster with C<initdb> in a private temporary directory
and runs C<postgres> in the foreground as a child of the test, in its own
process group, as the C<postgres> user when the test runs as root (else
as the current user).  No TCP port is used: the server listens only on a
UNIX socket in its own directory, so it can never collide with another
server, and C<trust> authentication is confined to the users who can
enter that directory (the server's user, root and C<socket_group>).
Nothing system-wide is read or written; the Debian cluster is not needed.
See protocol/e2e.md §8.

=head1 METHODS

=head2 MMTest::Postgres->unavailable

Class method: a reason string when DBD::Pg, the server binaries or (as
root) the C<postgres> user are missing, else the empty string.

=cut

sub unavailable {
    return 'DBD::Pg is not installed (libdbd-pg-perl; .ci/install-deps installs it)'
        unless eval { require DBD::Pg; 1 };
    return 'the PostgreSQL server is not installed (postgresql; .ci/install-deps installs it)'
        unless _bindir();
    return "no user 'postgres' to run the server as" if $> == 0 && !getpwnam('postgres');
    return '';
}

# The newest installed server's bin directory (Debian: /usr/lib/postgresql/N/bin).
sub _bindir {
    my @dirs = sort { $b->[0] <=> $a->[0] }
        map { m{/(\d+)/bin\z} ? [ $1, $_ ] : () } glob('/usr/lib/postgresql/*/bin');
    for (@dirs) { return $_->[1] if -x "$_->[1]/initdb" && -x "$_->[1]/postgres" }
    return undef;
}

=head2 MMTest::Postgres->new(%opts)

Options: C<user> (who runs the server; default C<postgres> as root, else
the current user), C<socket_group> (a group whose members may connect;
default none).

=cut

sub new {
    my ($class, %o) = @_;
    my $dir = private_dir('pg');
    my $self = bless {
        dir          => $dir,
        bindir       => _bindir() // die("MMTest::Postgres: no PostgreSQL server installed\n"),
        user         => $o{user} // ($> == 0 ? 'postgres' : undef),
        socket_group => $o{socket_group},
        owner        => $$,
    }, $class;
    return $self;
}

=head2 dir / data_dir / socket_dir / pid / log

The private directory, the cluster's data directory (every server
process works there), the directory holding the socket, the postmaster's
pid while it runs, and the server's output so far.

=cut

sub dir        { $_[0]{dir} }
sub data_dir   { File::Spec->catdir($_[0]{dir}, 'data') }
sub socket_dir { File::Spec->catdir($_[0]{dir}, 'run') }
sub pid        { $_[0]{pid} }

sub log {
    my $f = File::Spec->catfile($_[0]{dir}, 'postgres.log');
    return slurp_if_exists($f) // '';
}

# uid and gid of the server's user (undef: the current user).
sub _ids {
    my ($self) = @_;
    return () unless defined $self->{user};
    my (undef, undef, $uid, $gid) = getpwnam($self->{user})
        or die "MMTest::Postgres: unknown user $self->{user}\n";
    return ($uid, $gid);
}

# Forks a child in its own process group that runs @cmd as the server's
# user with output appended to postgres.log; returns its pid.
sub _spawn {
    my ($self, @cmd) = @_;
    my ($uid, $gid) = $self->_ids;
    my $log = File::Spec->catfile($self->{dir}, 'postgres.log');
    my $pid = fork() // die "fork: $!";
    if ($pid == 0) {
        POSIX::setpgid(0, 0);
        open STDIN, '<', '/dev/null';
        open STDOUT, '>>', $log;
        open STDERR, '>>', $log;
        if (defined $uid) {
            $) = "$gid $gid";    # also drops root's supplementary groups
            POSIX::setgid($gid);
            POSIX::setuid($uid) or do { print STDERR "setuid $uid: $!\n"; POSIX::_exit(127) };
        }
        chdir $self->{dir};
        { no warnings 'exec'; exec { $cmd[0] } @cmd; }
        print STDERR "exec $cmd[0]: $!\n";
        POSIX::_exit(127);
    }
    return $pid;
}

sub _prepare_dirs {
    my ($self) = @_;
    my ($uid, $gid) = $self->_ids;
    my $sgid = $gid;
    if (defined $self->{socket_group}) {
        $sgid = getgrnam($self->{socket_group})
            // die "MMTest::Postgres: unknown group $self->{socket_group}\n";
    }
    for ([ $self->data_dir, 0700, $gid ], [ $self->socket_dir, 0750, $sgid ]) {
        my ($d, $mode, $g) = @$_;
        mkdir $d or die "mkdir $d: $!";
        chown $uid, $g, $d or die "chown $d: $!" if defined $uid;
        chmod $mode, $d or die "chmod $d: $!";
    }
    if (!defined $uid && defined $self->{socket_group}) {
        chown -1, $sgid, $self->socket_dir or die "chown: $!";
    }
}

=head2 start

Runs C<initdb> (trust authentication, superuser C<postgres>), starts the
server on the socket directory only and waits (bounded) until it accepts
connections.  Dies with the server's output on failure.  Returns the
object.

=cut

sub start {
    my ($self) = @_;
    $self->_prepare_dirs;
    my $initdb = $self->_spawn("$self->{bindir}/initdb", '-D', $self->data_dir, '-U', 'postgres',
        '-A', 'trust', '-E', 'UTF8', '--locale=C', '--no-sync', '--no-instructions');
    waitpid($initdb, 0);
    die "MMTest::Postgres: initdb failed ($?)\n" . $self->log if $?;
    # fsync off: a test cluster never needs to survive a crash.
    $self->{pid} = $self->_spawn("$self->{bindir}/postgres", '-D', $self->data_dir,
        '-k', $self->socket_dir, '-c', 'listen_addresses=', '-c', 'fsync=off');
    # Stopped at exit before File::Temp removes the cluster's directory.
    MMTest::Teardown->register($self, 'stop');
    eval {
        wait_until(60, 'PostgreSQL to accept connections', sub {
            die "postgres exited early\n" unless pid_alive($self->{pid});
            my $dbh = eval { $self->connect('postgres') } or return 0;
            $dbh->disconnect;
            1;
        });
    };
    if ($@) { my $e = $@; $self->stop; die "MMTest::Postgres: $e--- postgres.log ---\n" . $self->log }
    return $self;
}

=head2 dsn($database)

The DBI data source for $database on this server.

=cut

sub dsn {
    my ($self, $db) = @_;
    return 'dbi:Pg:host=' . $self->socket_dir . ";dbname=$db";
}

=head2 connect($database [, $user])

A DBI handle (C<RaiseError>, C<AutoCommit>) to $database as $user
(default the superuser C<postgres>).

=cut

sub connect {
    my ($self, $db, $user) = @_;
    require DBI;
    return DBI->connect($self->dsn($db), $user // 'postgres', '',
        { RaiseError => 1, PrintError => 0, AutoCommit => 1 });
}

=head2 create_database($name, owner => $role)

Creates the login role $role (if it does not exist) and the database
$name owned by it.

=cut

sub create_database {
    my ($self, $name, %o) = @_;
    my $dbh = $self->connect('postgres');
    my $role = $o{owner} // 'postgres';
    my $q = $dbh->quote_identifier($role);
    $dbh->do("CREATE ROLE $q LOGIN")
        unless $dbh->selectrow_array('SELECT 1 FROM pg_roles WHERE rolname = ?', undef, $role);
    $dbh->do('CREATE DATABASE ' . $dbh->quote_identifier($name) . " OWNER $q");
    $dbh->disconnect;
    return $self;
}

# Server processes still running: the postmaster and its children (each
# backend is a session leader of its own, so the process group does not
# hold them).
sub _processes {
    my ($self) = @_;
    my $pm = $self->{pid} or return ();
    my @kids;
    for my $stat (glob('/proc/[0-9]*/stat')) {
        open my $fh, '<', $stat or next;
        my $line = <$fh> // next;
        my ($pid, $ppid) = $line =~ /^(\d+) \(.*\) \S+ (\d+) /s or next;
        push @kids, $pid if $ppid == $pm;
    }
    return ($pm, @kids);
}

=head2 stop

Fast shutdown (SIGINT), waiting up to 15 s; then SIGKILL for the
postmaster and every child it still has.  Idempotent; also on
destruction and at exit, so the cluster is gone before its directory is
removed.

=cut

sub stop {
    my ($self) = @_;
    my $pid = $self->{pid} or return;
    return unless $$ == $self->{owner};
    kill 'INT', $pid;
    my $deadline = Time::HiRes::time() + 15;
    while (pid_alive($pid) && Time::HiRes::time() < $deadline) { Time::HiRes::sleep(0.05) }
    if (pid_alive($pid)) {
        kill 'KILL', $self->_processes;
        waitpid($pid, 0);
    }
    delete $self->{pid};
    return;
}

sub DESTROY { local ($., $@, $!, $^E, $?); $_[0]->stop }

1;
