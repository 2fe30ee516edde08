package CoreWorker;
# Test helper: run a filter file as a real worker process (as the
# multiplexor does: "FILTER -server"), write command lines to its stdin and
# read its reply lines from stdout, with bounded waits.
use strict;
use warnings;
use IPC::Open3 qw(open3);
use IO::Select;
use IO::Handle;
use POSIX ();
use Symbol qw(gensym);
use File::Spec;
use Cwd qw(abs_path);

my $REPO = abs_path(File::Spec->catdir(__FILE__, File::Spec->updir, File::Spec->updir,
				       File::Spec->updir, File::Spec->updir, File::Spec->updir));

sub repo { return $REPO; }

# Percent-encode one command argument the way the milter does.
sub encode
{
	my ($class, $s) = @_;
	$s = '' unless defined($s);
	$s =~ s/([^\x21-\x7E]|[%\\'"])/sprintf('%%%02X', ord($1))/ge;
	return $s;
}

# new(filter => PATH, mode => '-server', env => {...}, status_file => PATH)
sub new
{
	my ($class, %o) = @_;
	my $mode = $o{mode} // '-server';
	local %ENV = (%ENV, MAILMUNGE_MTA => 'postfix', %{$o{env} || {}});
	my ($in, $out, $err) = (IO::Handle->new, IO::Handle->new, gensym);
	my @cmd = ($^X, '-I', "$REPO/perl", $o{filter}, $mode);
	if ($o{status_file}) {
		# Status tags go to fd 3, as with the multiplexor's -Z.
		$ENV{CORE_WORKER_STATUS} = $o{status_file};
		@cmd = ('/bin/sh', '-c', 'exec "$@" 3>"$CORE_WORKER_STATUS"', 'sh', @cmd);
	}
	my $pid = open3($in, $out, $err, @cmd);
	$in->autoflush(1);
	return bless { pid => $pid, in => $in, out => $out, err => $err, status => $o{status_file} }, $class;
}

# Send one line, return the reply line (without newline) or undef on
# EOF/timeout.
sub cmd
{
	my ($self, $line, $timeout) = @_;
	my $fh = $self->{in};
	# A worker that already exited must fail the test, not kill it.
	local $SIG{PIPE} = 'IGNORE';
	print $fh "$line\n";
	return $self->read_line($timeout);
}

sub read_line
{
	my ($self, $timeout) = @_;
	my $sel = IO::Select->new($self->{out});
	return undef unless $sel->can_read($timeout // 20);
	my $l = readline($self->{out});
	return undef unless defined($l);
	chomp($l);
	return $l;
}

# Close stdin and wait for the exit status (bounded).
sub finish
{
	my ($self) = @_;
	local $SIG{PIPE} = 'IGNORE';
	close($self->{in});
	for (1 .. 200) {
		my $r = waitpid($self->{pid}, POSIX::WNOHANG());
		return $? >> 8 if $r == $self->{pid};
		select(undef, undef, undef, 0.05);
	}
	kill('KILL', $self->{pid});
	waitpid($self->{pid}, 0);
	return undef;
}

sub stderr_text
{
	my ($self) = @_;
	my $fh = $self->{err};
	local $/;
	my $t = <$fh>;
	return $t // '';
}

sub status_lines
{
	my ($self) = @_;
	my $file = $self->{status} or return ();
	open(my $fh, '<', $file) or return ();
	local $/;
	my $t = <$fh>;
	return split(/\n/, $t // '', -1);
}

sub DESTROY
{
	my ($self) = @_;
	if ($self->{pid} && kill(0, $self->{pid})) {
		kill('KILL', $self->{pid});
		waitpid($self->{pid}, 0);
	}
}

1;
