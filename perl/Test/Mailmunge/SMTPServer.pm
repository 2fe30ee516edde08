use strict;
use warnings;

package Test::Mailmunge::SMTPServer;

use IO::Socket::INET;
use POSIX qw(:sys_wait_h);

# A scripted SMTP server for unit tests.  It runs in a forked process and
# serves each connection in a further child, so a test can talk to it
# synchronously from the parent.

my %DEFAULT_REPLY = (
	ehlo => "250-localhost.example.com\r\n250-SIZE 100000\r\n250 8BITMIME",
	helo => '250 localhost.example.com',
	mail => '250 2.1.0 Ok',
	rcpt => '250 2.1.0 Ok',
);

sub new
{
	my ($class, %callbacks) = @_;
	my $self = bless { %callbacks }, $class;
	# Only the process that created the server may stop it: forked
	# copies of this object (in other test servers, or in children the
	# test forks) must not kill it when they exit.
	$self->{owner} = $$;
	$self->_listen();
	my $pid = fork();
	die("Test::Mailmunge::SMTPServer: fork failed: $!\n") unless defined($pid);
	if ($pid) {
		$self->{pid} = $pid;
		$self->{listener}->close();
		delete $self->{listener};
		return $self;
	}
	# Server process: never return into the test script.
	$self->{pid} = $$;
	$self->{is_server} = 1;
	eval { $self->_accept_loop(); };
	POSIX::_exit(0);
}

# Ports 9000-9009 first (what existing tests expect), then any free port.
sub _listen
{
	my ($self) = @_;
	foreach my $port (9000 .. 9009, 0) {
		my $sock = IO::Socket::INET->new(
			Listen    => 5,
			LocalAddr => '127.0.0.1',
			LocalPort => $port,
			Proto     => 'tcp',
			ReuseAddr => 1);
		next unless $sock;
		$self->{listener} = $sock;
		$self->{port} = $sock->sockport();
		return;
	}
	die("Test::Mailmunge::SMTPServer: could not create a listening socket: $!\n");
}

sub _accept_loop
{
	my ($self) = @_;
	my %kids;
	local $SIG{CHLD} = sub {
		while ((my $k = waitpid(-1, WNOHANG)) > 0) { delete $kids{$k}; }
	};
	local $SIG{TERM} = sub {
		kill('TERM', keys(%kids)) if %kids;
		POSIX::_exit(0);
	};
	while (1) {
		my $conn = $self->{listener}->accept();
		if (!$conn) {
			next if $!{EINTR};
			die("accept: $!");
		}
		my $kid = fork();
		if (!defined($kid)) {
			$conn->close();
			next;
		}
		if ($kid) {
			$kids{$kid} = 1;
			$conn->close();
			next;
		}
		$SIG{TERM} = 'DEFAULT';
		$SIG{CHLD} = 'DEFAULT';
		$self->{listener}->close();
		$self->{sock} = $conn;
		eval { $self->_session($conn); };
		POSIX::_exit(0);
	}
}

sub _send
{
	my ($sock, $text) = @_;
	$sock->printflush("$text\r\n");
}

sub _read_line
{
	my ($sock) = @_;
	my $line = $sock->getline();
	return undef unless defined($line);
	$line =~ s/\s+\z//;
	return $line;
}

sub _session
{
	my ($self, $sock) = @_;
	if ($self->{connect}) {
		$self->{connect}->($self);
	} else {
		_send($sock, '220 localhost.example.com ESMTP');
	}
	while (defined(my $line = _read_line($sock))) {
		my $verb;
		if    ($line =~ /^EHLO\b/i)       { $verb = 'ehlo'; }
		elsif ($line =~ /^HELO\b/i)       { $verb = 'helo'; }
		elsif ($line =~ /^MAIL FROM:/i)   { $verb = 'mail'; }
		elsif ($line =~ /^RCPT TO:/i)     { $verb = 'rcpt'; }
		if (defined($verb)) {
			my $reply = $self->{$verb} ? $self->{$verb}->($line, $self) : $DEFAULT_REPLY{$verb};
			$reply =~ s/(\A|\n)(250 [^\n]*)\z/${1}250-STARTTLS\r\n$2/ if $verb eq 'ehlo' && $self->{tls} && !$self->{in_tls} && !$self->{$verb};
			_send($sock, $reply);
		} elsif ($line =~ /^STARTTLS\b/i && $self->{tls} && !$self->{in_tls}) {
			_send($sock, '220 2.0.0 Ready to start TLS');
			require IO::Socket::SSL;
			if (!IO::Socket::SSL->start_SSL($sock, SSL_server => 1, %{$self->{tls}})) {
				last;
			}
			$self->{in_tls} = 1;
		} elsif ($line =~ /^DATA\b/i) {
			if ($self->{data}) {
				$self->{data}->($sock, $line);
				next;
			}
			_send($sock, '354 End data with <CR><LF>.<CR><LF>');
			while (defined(my $l = _read_line($sock))) {
				last if $l eq '.';
			}
			_send($sock, '200 2.1.5 Message accepted');
		} elsif ($line =~ /^RSET\b/i) {
			_send($sock, '200 2.0.0 Reset');
		} elsif ($line =~ /^QUIT\b/i) {
			_send($sock, '221 2.0.0 Bye');
			last;
		} else {
			_send($sock, "502 5.5.2 Error: $line: command not recognized");
		}
	}
	$sock->close();
}

sub stop_server
{
	my ($self) = @_;
	return if $self->{is_server};
	return unless defined($self->{owner}) && $self->{owner} == $$;
	if ($self->{pid}) {
		kill('TERM', $self->{pid});
		waitpid($self->{pid}, 0);
		delete $self->{pid};
	}
}

sub DESTROY
{
	my ($self) = @_;
	$self->stop_server();
}

1;

__END__

=head1 NAME

Test::Mailmunge::SMTPServer - a scripted SMTP server for unit tests

=head1 SYNOPSIS

    use Test::Mailmunge::SMTPServer;
    my $server = Test::Mailmunge::SMTPServer->new(
        rcpt => sub {
            my ($line) = @_;
            return $line =~ /nobody/ ? '550 5.1.1 No such user' : '250 2.1.5 Ok';
        });
    my $port = $server->{port};     # talk to 127.0.0.1:$port
    ...
    $server->stop_server();

=head1 DESCRIPTION

Starts a small SMTP server on the loopback interface in a forked
process.  Every connection is served in its own child process, so
callbacks may keep state only for the duration of one SMTP session.

The server answers:

    connect  220 localhost.example.com ESMTP
    EHLO     250-localhost.example.com / 250-SIZE 100000 / 250 8BITMIME
    HELO     250 localhost.example.com
    MAIL     250 2.1.0 Ok
    RCPT     250 2.1.0 Ok
    DATA     354 ..., reads up to the lone dot, then 200 2.1.5 Message accepted
    RSET     200 2.0.0 Reset
    QUIT     221 2.0.0 Bye, and the connection is closed
    other    502 5.5.2 Error: LINE: command not recognized

=head1 METHODS

=head2 Test::Mailmunge::SMTPServer->new(%callbacks)

Binds a listening socket on 127.0.0.1 (the first free port of
9000 to 9009, otherwise any free port; the port is in C<< $server->{port} >>),
forks the server and returns in the parent.  Callbacks replace the
default replies:

=over 4

=item connect => sub { my ($server) = @_; ... }

Called when a client connects; it must send the greeting itself,
e.g. C<< $server->{sock}->printflush("554 go away\r\n") >>.

=item ehlo, helo, mail, rcpt => sub { my ($line, $server) = @_; return $reply }

Called with the command line the client sent (trailing white space
removed); the returned string is sent followed by CRLF.  A multi-line
reply is a string with embedded CRLFs between its lines.

=item data => sub { my ($sock, $line) = @_; ... }

Called for DATA; it must read the message and write every reply itself.

=item tls => { SSL_cert_file => $cert, SSL_key_file => $key }

Offers STARTTLS (added to the default EHLO reply) and upgrades the
connection with L<IO::Socket::SSL> using these server options when the
client asks.  Without it, STARTTLS is an unknown command (502).

=back

=head2 stop_server()

Terminates the server process and waits for it.  Called
automatically when the object is destroyed.  Does nothing in a process
other than the one that created the server.

=head2 DESTROY

Stops the server (see C<stop_server>).

=cut
