use strict;
use warnings;

# Helpers for end-to-end ("regression") tests that send mail through a real
# MTA with the milter in place.  Like Test::Mailmunge::Utils, the functions
# live in package main so test scripts call them unqualified.
package main;

use File::Basename qw(basename dirname);
use File::Find ();
use File::Path qw(remove_tree);
use IO::File;
use IO::Socket::INET;
use JSON ();
use MIME::Parser;

sub slurp_as_mime_entity
{
	my ($file) = @_;
	my $p = MIME::Parser->new();
	$p->extract_nested_messages(1);
	$p->extract_uuencode(1);
	$p->output_to_core(1);
	$p->tmp_to_core(1);
	return $p->parse_open($file);
}

sub slurp_body_only
{
	my ($file) = @_;
	my $fh = IO::File->new($file, 'r') or return '';
	while (defined(my $l = <$fh>)) {
		last if $l =~ /^\r?\n\z/;
	}
	local $/;
	my $body = <$fh>;
	$fh->close();
	return defined($body) ? $body : '';
}

sub server_running_postfix
{
	return -d '/etc/postfix' ? 1 : 0;
}

# The first address of an interface that is up, other than loopback.
sub get_smtp_server_ip
{
	my $json = `ip --json addr 2>/dev/null`;
	my $ifs = eval { JSON->new->decode($json) };
	return undef unless ref($ifs) eq 'ARRAY';
	foreach my $if (@$ifs) {
		next unless ($if->{operstate} || '') eq 'UP';
		foreach my $a (@{$if->{addr_info} || []}) {
			my $ip = $a->{local} or next;
			next if $ip =~ /^127\./ || $ip eq '::1';
			return $ip;
		}
	}
	return undef;
}

# One reply (multi-line replies folded into their last line); undef when
# it is a success, else the result hash for this stage.
sub _smtp_reply
{
	my ($stage, $sock) = @_;
	while (1) {
		my $line = $sock->getline();
		if (!defined($line)) {
			$sock->close();
			return { stage => $stage, code => 421, dsn => '4.2.1', txt => 'No response from SMTP server' };
		}
		$line =~ s/\s+\z//;
		print STDERR "RECV: $line\n" if $ENV{MM_TEST_ECHO_SMTP_SESSION};
		next if $line =~ /^\d{3}-/;
		my ($code, $dsn, $txt);
		if ($line =~ /^(\d{3}) (\d+\.\d+\.\d+) ?(.*)\z/) {
			($code, $dsn, $txt) = ($1, $2, $3);
		} elsif ($line =~ /^(\d{3})(?: (.*))?\z/) {
			($code, $dsn, $txt) = ($1, '', defined($2) ? $2 : '');
		} else {
			$sock->close();
			return { stage => $stage, code => 421, dsn => '4.2.1', txt => "Unknown response from SMTP server: $line" };
		}
		return undef if $code >= 200 && $code < 400;
		$sock->print("QUIT\r\n");
		$sock->close();
		return { stage => $stage, code => $code, dsn => $dsn, txt => $txt };
	}
}

sub _smtp_cmd
{
	my ($sock, $stage, $cmd) = @_;
	print STDERR "SEND: $cmd\n" if $ENV{MM_TEST_ECHO_SMTP_SESSION};
	$sock->print("$cmd\r\n");
	$sock->flush();
	return _smtp_reply($stage, $sock);
}

sub smtp_send
{
	my ($ip, $helo, $sender, $recips, $msg, $port) = @_;
	$port ||= $ENV{MM_TEST_SMTP_PORT} || 25;
	my $sock = IO::Socket::INET->new(PeerAddr => $ip, PeerPort => $port, Proto => 'tcp', Timeout => 5);
	return { stage => 'connect', code => 421, dsn => '4.2.1', txt => 'Could not create socket' } unless $sock;
	$sock->timeout(60);

	# A stale drop file from an earlier run must not pass for this one.
	my $drop = 'maildrop.msg';
	if ($msg =~ /^X-Mailmunge-Drop:\s*(.*?)\s*$/m) {
		$drop = basename($1);
	}
	unlink(maildrop_msg_path($drop)) if $drop ne '' && $drop !~ /%DEST%/;

	my $err = _smtp_reply('connect', $sock)
	    || _smtp_cmd($sock, 'helo', "EHLO $helo")
	    || _smtp_cmd($sock, 'mail', "MAIL From:<$sender>");
	return $err if $err;
	foreach my $r (@{$recips || []}) {
		$err = _smtp_cmd($sock, 'rcpt', "RCPT To:<$r>");
		return $err if $err;
	}
	$err = _smtp_cmd($sock, 'data', 'DATA');
	return $err if $err;
	foreach my $line (split(/\r?\n/, $msg)) {
		# Dot-stuffing.
		$line = ".$line" if $line =~ /^\./;
		print STDERR "SEND: $line\n" if $ENV{MM_TEST_ECHO_SMTP_SESSION};
		$sock->print("$line\r\n");
	}
	$sock->print(".\r\n");
	$sock->flush();
	$err = _smtp_reply('datasend', $sock) || _smtp_cmd($sock, 'quit', 'QUIT');
	return $err if $err;
	$sock->close();
	return { stage => 'quit', code => 200, dsn => '2.0.0', txt => 'OK' };
}

sub maildrop_msg_dir { return $ENV{MM_TEST_MAILDROP_DIR} || '/tmp/mailmunge-drop'; }

# The maildrop default is a fixed name in /tmp: anyone could have made it
# first, e.g. as a link to a directory whose files root would then
# delete.  Only a real directory owned by us or root is emptied.
sub _safe_to_empty
{
	my ($dir) = @_;
	my @st = lstat($dir) or return 0;
	return 0 unless -d _;
	return $st[4] == $> || $st[4] == 0;
}

sub _empty_dir
{
	my ($dir, $pattern) = @_;
	if (!_safe_to_empty($dir)) {
		warn("Not emptying $dir: not a directory owned by root or by us\n") if -e $dir || -l $dir;
		return;
	}
	opendir(my $dh, $dir) or return;
	my @names = grep { $_ ne '.' && $_ ne '..' && (!$pattern || /$pattern/) } readdir($dh);
	closedir($dh);
	foreach my $n (@names) {
		my $p = "$dir/$n";
		if (-d $p && !-l $p) { remove_tree($p); } else { unlink($p); }
	}
}

sub clean_maildrop_dir { _empty_dir(maildrop_msg_dir()); return; }

sub maildrop_msg_path
{
	my ($file) = @_;
	$file = 'maildrop.msg' unless defined($file);
	return maildrop_msg_dir() . "/$file";
}

sub quarantine_dir { return $ENV{MM_TEST_QUARANTINE_DIR} || '/var/spool/mm-quarantine'; }

# Removes the dated quarantine subdirectories.
sub clean_quarantine_dir { _empty_dir(quarantine_dir(), qr/^\d/); return; }

sub first_quarantined_msg
{
	my @found;
	File::Find::find({ no_chdir => 1, wanted => sub {
		push(@found, $File::Find::name) if basename($File::Find::name) eq 'ENTIRE_MESSAGE';
	} }, quarantine_dir()) if -d quarantine_dir();
	return undef unless @found;
	return dirname((sort @found)[0]);
}

sub make_msg
{
	my ($subject, $source, $output_file) = @_;
	$source = 'generic-msg' unless $source;
	my $fh = IO::File->new("t/msgs/$source", 'r') or return undef;
	local $/;
	my $msg = <$fh>;
	$fh->close();
	$msg =~ s/__SUBJECT__/$subject/ if defined($subject);
	$msg =~ s/: maildrop\.msg/: $output_file/ if defined($output_file);
	return $msg;
}

sub wait_for_files
{
	my (@files) = @_;
	for (my $i = 0; $i < 400; $i++) {
		flush_mta_queues() if $i % 50 == 0;
		return 1 unless grep { !-r $_ } @files;
		select(undef, undef, undef, 0.01);
	}
	return 0;
}

sub flush_mta_queues
{
	if (server_running_postfix()) {
		system('/usr/sbin/postqueue -f </dev/null >/dev/null 2>&1');
	} else {
		system('/usr/sbin/sendmail -q -Ac </dev/null >/dev/null 2>&1');
		system('/usr/sbin/sendmail -q </dev/null >/dev/null 2>&1');
	}
	return;
}

# Postfix queue entries (postqueue -j), one hash per message.
sub _postfix_queue
{
	my @items;
	my $fh;
	open($fh, '-|', 'postqueue -j 2>/dev/null') or return ();
	while (defined(my $l = <$fh>)) {
		my $item = eval { JSON->new->decode($l) };
		push(@items, $item) if ref($item) eq 'HASH';
	}
	close($fh);
	return @items;
}

sub clean_mta_queues
{
	if (!server_running_postfix()) {
		unlink(glob('/var/spool/mqueue/*'));
		return;
	}
	foreach my $item (_postfix_queue()) {
		next unless defined($item->{queue_id}) && $item->{queue_id} =~ /^\w+$/;
		system('postsuper', '-d', $item->{queue_id});
	}
	return;
}

sub get_mta_hold_queue
{
	my $start = time();
	if (!server_running_postfix()) {
		my @held;
		while (time() - $start <= 2) {
			@held = glob('/var/spool/mqueue/h*');
			last if @held;
			select(undef, undef, undef, 0.1);
		}
		return \@held;
	}
	my @held;
	while (time() - $start <= 2) {
		@held = grep { ($_->{queue_name} || '') eq 'hold' } _postfix_queue();
		last if @held;
		select(undef, undef, undef, 0.1);
	}
	return \@held;
}

1;

__END__

=head1 NAME

Test::Mailmunge::RegressionUtils - helpers for end-to-end mail tests

=head1 SYNOPSIS

    use Test::More;
    use Test::Mailmunge::RegressionUtils;

    my $ip = get_smtp_server_ip();
    my $r = smtp_send($ip, 'client.example', 'alice@example.org', ['bob@example.com'],
                      make_msg('addhdr'));
    is($r->{code}, 200, 'message accepted');
    ok(wait_for_files(maildrop_msg_path()), 'delivered');

=head1 DESCRIPTION

Functions (defined in package main) for tests that drive a complete mail
system: an MTA with the Mailmunge milter in front of a local delivery
agent that drops messages into a directory.  They assume that layout;
C<MM_TEST_MAILDROP_DIR>, C<MM_TEST_QUARANTINE_DIR> and
C<MM_TEST_SMTP_PORT> in the environment override the default drop
directory, quarantine directory and SMTP port.  Set
C<MM_TEST_ECHO_SMTP_SESSION> to see the SMTP dialogue on standard error.

=head1 FUNCTIONS

=head2 slurp_as_mime_entity($file)

Parses the message in C<$file> (in memory, nested messages and uuencoded
parts extracted) and returns the L<MIME::Entity>.

=head2 slurp_body_only($file)

Returns the message body in C<$file>: everything after the first empty
line ('' if the file cannot be read).

=head2 server_running_postfix()

1 if C</etc/postfix> exists (the MTA is taken to be Postfix), else 0
(Sendmail).

=head2 get_smtp_server_ip()

The first non-loopback address of an interface that is up, from
C<ip --json addr>; undef if there is none.

=head2 smtp_send($ip, $helo, $sender, \@recipients, $message [, $port])

Delivers C<$message> (a string) over SMTP to C<$ip> (port C<$port>,
C<$MM_TEST_SMTP_PORT> or 25), with dot-stuffing.  Before sending, the
drop file the message is addressed to (its C<X-Mailmunge-Drop> header,
default C<maildrop.msg>) is removed.  Returns a hash reference
C<< {stage, code, dsn, txt} >>: the stage (C<connect>, C<helo>, C<mail>,
C<rcpt>, C<data>, C<datasend>, C<quit>) and reply of the first command
that failed, or C<< {stage => 'quit', code => 200, dsn => '2.0.0', txt => 'OK'} >>
when everything succeeded.  A dropped connection counts as 421 4.2.1.

=head2 maildrop_msg_dir()

The directory delivered test messages are dropped into
(C</tmp/mailmunge-drop> unless overridden).

=head2 clean_maildrop_dir()

Removes everything in C<maildrop_msg_dir()>.  The directory itself must
be a real directory (not a symbolic link) owned by root or by the
running user; otherwise nothing is removed and a warning is printed, as
the default name in F</tmp> can be created by anyone.

=head2 maildrop_msg_path([$file])

C<maildrop_msg_dir()/$file>, C<$file> defaulting to C<maildrop.msg>.

=head2 quarantine_dir()

The quarantine directory (C</var/spool/mm-quarantine> unless overridden).

=head2 clean_quarantine_dir()

Removes the dated subdirectories of C<quarantine_dir()>.

=head2 first_quarantined_msg()

The quarantine directory (the one holding C<ENTIRE_MESSAGE>) that sorts
first, or undef if nothing is quarantined.

=head2 make_msg($subject [, $source [, $drop_file]])

Reads C<t/msgs/$source> (default C<generic-msg>), replaces the first
C<__SUBJECT__> with C<$subject> and, if C<$drop_file> is given, the first
C<: maildrop.msg> with C<: $drop_file>; returns the text (undef if the file
is missing).

=head2 wait_for_files(@files)

Waits up to about four seconds, flushing the MTA queues now and then,
until all C<@files> are readable.  Returns 1 if they all appeared, else 0.

=head2 flush_mta_queues()

Asks the MTA to run its queue (C<postqueue -f>, or C<sendmail -q> for both
Sendmail queues).  Needs root.

=head2 clean_mta_queues()

Deletes every queued message (Postfix: C<postsuper -d> per queue ID;
Sendmail: the files in C</var/spool/mqueue>).  Needs root.

=head2 get_mta_hold_queue()

Waits up to two seconds for a message to appear in the MTA's hold
queue and returns an array reference with one entry per held message.

=cut
