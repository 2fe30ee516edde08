use strict;
use warnings;

package Mailmunge::Action::Stream;
use base qw(Mailmunge::Action);

use IO::File;
use IO::Select;
use POSIX ();
use Time::HiRes ();
use Mailmunge::Constants;

# Seconds one sendmail run may take before it is killed.
my $DEFAULT_TIMEOUT = 300;

sub stream_by_domain
{
	my ($self, $ctx) = @_;
	my $f = $self->_filter_class;
	return $self->_stream_grouped($ctx, sub { $f->domain_of($_[0]) });
}

sub stream_by_recipient
{
	my ($self, $ctx) = @_;
	my $f = $self->_filter_class;
	return $self->_stream_grouped($ctx, sub { $f->canonical_email($_[0]) });
}

sub _filter_class
{
	my ($self) = @_;
	my $f = $self->filter;
	return $f if ref($f) && $f->can('canonical_email');
	require Mailmunge::Filter;
	return 'Mailmunge::Filter';
}

# Groups the recipients by $key (first spelling of each address wins,
# duplicates dropped), in order of first appearance.
sub _stream_grouped
{
	my ($self, $ctx, $key) = @_;
	my $f = $self->_filter_class;
	my (%seen, %groups, @order);
	foreach my $r (@{$ctx->recipients || []}) {
		next if $seen{$f->canonical_email($r)}++;
		my $k = $key->($r);
		push(@order, $k) unless $groups{$k};
		push(@{$groups{$k}}, $r);
	}
	return 0 if scalar(@order) <= 1;
	return $self->stream_recipients($ctx, [ map { $groups{$_} } @order ]);
}

sub stream_recipients
{
	my ($self, $ctx, $groups) = @_;
	return undef unless $ctx && $ctx->in_message_context();
	my $f = $self->_filter_class;
	$groups = [] unless ref($groups) eq 'ARRAY';
	return 0 if scalar(@$groups) <= 1;

	# Every original recipient must be in exactly one group.
	my %left = map { ($f->canonical_email($_) => 1) } @{$ctx->recipients || []};
	foreach my $g (@$groups) {
		foreach my $r (@{$g || []}) {
			my $c = $f->canonical_email($r);
			if (!delete $left{$c}) {
				$self->_log($ctx, 'warning', "stream_recipients: $r not found in recipient list, or specified twice");
				return undef;
			}
		}
	}
	if (%left) {
		$self->_log($ctx, 'warning', 'stream_recipients: Leftover recipients ' . join(', ', sort keys %left));
		return undef;
	}

	foreach my $g (@$groups) {
		next unless @{$g || []};
		$self->_log($ctx, 'info', 'stream_recipients: remailing to [' . join(', ', @$g) . ']');
		return undef unless $self->_resend($ctx, $g);
	}
	return 1;
}

sub _log
{
	my ($self, $ctx, $level, $msg) = @_;
	my $f = $self->filter;
	if (ref($f) && $f->can('log')) {
		$f->log($ctx, $level, $msg);
	} else {
		$ctx->log($level, $msg);
	}
}

# The copy starts with our Received header and the marker that tells the
# receiving scan who the original client was; old markers are removed so a
# message streamed twice does not carry stale ones.
sub _message_text
{
	my ($self, $ctx) = @_;
	my $f = $self->filter;
	my $received = (ref($f) && $f->can('synthesize_received_header'))
	    ? $f->synthesize_received_header($ctx) : '';
	my $hostip = $ctx->hostip // '';
	my $qid = $ctx->qid // 'NOQUEUE';
	my $file = (ref($f) && $f->can('inputmsg')) ? $f->inputmsg : 'INPUTMSG';
	my $dir = $ctx->cwd;
	$file = "$dir/$file" if defined($dir) && $dir ne '' && $file !~ m{^/};
	my $in = IO::File->new($file, 'r') or return (undef, "cannot open $file: $!");
	binmode($in);
	my $text = $received . "X-Mailmunge-Remailed: $hostip $qid\n";
	my ($in_header, $skipping) = (1, 0);
	while (defined(my $l = <$in>)) {
		if ($in_header) {
			if ($l =~ /^\r?\n\z/) {
				$in_header = 0;
			} elsif ($l =~ /^[ \t]/) {
				next if $skipping;
			} else {
				$skipping = ($l =~ /^X-Mailmunge-Remailed\s*:/i) ? 1 : 0;
				next if $skipping;
			}
		}
		$text .= $l;
	}
	$in->close();
	return ($text);
}

sub _resend
{
	my ($self, $ctx, $rcpts) = @_;
	my $sendmail = Mailmunge::Constants->get_program_path('sendmail');
	if (!$sendmail) {
		$self->_log($ctx, 'err', 'stream_recipients: cannot find the sendmail program');
		return 0;
	}
	my ($text, $err) = $self->_message_text($ctx);
	if (!defined($text)) {
		$self->_log($ctx, 'err', "stream_recipients: $err");
		return 0;
	}
	my $sender = $ctx->sender // '';
	$sender = '<>' if $sender eq '';
	my @cmd = ($sendmail, "-f$sender", '-i');
	my $f = $self->filter;
	push(@cmd, '-Ac', '-odd') if ref($f) && $f->can('mta_is_sendmail') && $f->mta_is_sendmail;
	push(@cmd, '--', @$rcpts);

	pipe(my $rd, my $wr) or do { $self->_log($ctx, 'err', "stream_recipients: pipe: $!"); return 0; };
	my $pid = fork();
	if (!defined($pid)) {
		$self->_log($ctx, 'err', "stream_recipients: fork: $!");
		return 0;
	}
	if (!$pid) {
		# Child: stdin from the pipe, and stdout to stderr so nothing
		# can reach the multiplexor's reply pipe.
		close($wr);
		POSIX::dup2(fileno($rd), 0);
		POSIX::dup2(2, 1);
		{ no warnings 'exec'; exec { $cmd[0] } @cmd; }
		print STDERR "stream_recipients: exec $cmd[0]: $!\n";
		POSIX::_exit(127);
	}
	close($rd);
	my $timeout = $self->{timeout} || $DEFAULT_TIMEOUT;
	my $deadline = Time::HiRes::time() + $timeout;
	my $ok = 1;
	{
		local $SIG{PIPE} = 'IGNORE';
		my $sel = IO::Select->new($wr);
		while (length($text)) {
			my $left = $deadline - Time::HiRes::time();
			if ($left <= 0 || !$sel->can_write($left)) { $ok = 0; last; }
			my $n = syswrite($wr, $text);
			if (!defined($n)) { $ok = 0; last; }
			substr($text, 0, $n, '');
		}
		close($wr);
	}
	my $status = _wait_for($pid, $deadline);
	if (!defined($status)) {
		kill('KILL', $pid);
		waitpid($pid, 0);
		$self->_log($ctx, 'err', "stream_recipients: $cmd[0] did not finish within $timeout seconds");
		return 0;
	}
	if ($status != 0 || !$ok) {
		my $why = $status & 127 ? 'was killed by signal ' . ($status & 127) : 'exited with status ' . ($status >> 8);
		$why = 'did not read the whole message' if $status == 0;
		$self->_log($ctx, 'err', "stream_recipients: $cmd[0] $why");
		return 0;
	}
	return 1;
}

# Waits for $pid until $deadline; returns its wait status or undef.
sub _wait_for
{
	my ($pid, $deadline) = @_;
	while (1) {
		my $r = waitpid($pid, POSIX::WNOHANG());
		return $? if $r == $pid;
		return -1 if $r < 0;
		return undef if Time::HiRes::time() >= $deadline;
		Time::HiRes::sleep(0.05);
	}
}

1;

__END__

=head1 NAME

Mailmunge::Action::Stream - re-send a message separately to groups of recipients

=head1 SYNOPSIS

    use Mailmunge::Action::Stream;

    sub filter_message {
        my ($self, $ctx) = @_;
        # Different domains get different treatment below, so split the
        # message up: each copy comes back through the filter on its own.
        my $r = Mailmunge::Action::Stream->new($self)->stream_by_domain($ctx);
        if ($r) {
            $ctx->action_discard();
            return;
        }
        return Mailmunge::Response->TEMPFAIL(message => 'Could not split message') unless defined($r);
        # $r == 0: only one domain, filter normally
        ...
    }

=head1 DESCRIPTION

When per-recipient policies differ (for example, one recipient wants
attachments stripped and another does not), a filter can split a message
into copies that each go to a group of recipients.  Each copy is handed
to the local C<sendmail> program and comes back through the milter and
filter as a new message; the original is then normally discarded.

Each copy starts with a C<Received> header written by the filter and an
C<X-Mailmunge-Remailed: CLIENT-IP QUEUE-ID> header, which tells the scan
of the copy who the original client was (it is only believed for
messages that arrive over the loopback interface, and always removed).

=head1 METHODS

=head2 Mailmunge::Action::Stream->new($filter)

Inherited from L<Mailmunge::Action>.  Set C<< $obj->{timeout} >> to
change how long one C<sendmail> run may take (default 300 seconds).

=head2 stream_by_domain($ctx)

Groups the recipients by domain (duplicates removed) and calls
C<stream_recipients>.  Returns 0 if all recipients share one domain
(nothing is sent), otherwise C<stream_recipients>'s result.

=head2 stream_by_recipient($ctx)

The same, with one group per distinct recipient.

=head2 stream_recipients($ctx, \@groups)

Re-sends the message once per group; C<@groups> holds array references
of recipient addresses and must name every recipient of the message
exactly once (compared case-insensitively, without angle brackets),
otherwise a warning is logged and undef returned.  Returns 0 if there
are fewer than two groups, 1 if every copy was handed to C<sendmail>,
undef on any failure (logged at level C<err>).  Only valid in
C<filter_message> and the callbacks it makes.

C<sendmail> is run as C<sendmail -fSENDER -i [-Ac -odd] -- RECIPIENTS...>
(the Sendmail-only options when the MTA is Sendmail), with its standard
output sent to standard error, and is killed if it takes too long.

=cut
