# Plug-in base classes (protocol/perl-api.md §8) and the test helpers
# Test::Mailmunge::Tmpdir and Test::Mailmunge::SMTPServer
# (protocol/perl-api.md §11.3, §11.4).
use strict;
use warnings;

use Test::More;
use IO::Socket::INET;
use Mailmunge::Action;
use Mailmunge::Test;
use Test::Mailmunge::Tmpdir;
use Test::Mailmunge::SMTPServer;

# --- Action / Test -------------------------------------------------------
my $f = bless {}, 'Some::Filter';
my $a = Mailmunge::Action->new($f);
is_deeply({ %$a }, { filter => $f }, 'Action is a hash holding only the filter');
is($a->filter, $f, 'filter accessor');
my $t = Mailmunge::Test->new($f);
isa_ok($t, 'Mailmunge::Action');
is(ref($t), 'Mailmunge::Test', 'Test->new blesses into the subclass');
is($t->filter, $f, 'Test inherits the accessor');
{
	package My::Plugin;
	our @ISA = ('Mailmunge::Test');
}
is(ref(My::Plugin->new($f)), 'My::Plugin', 'user plug-ins inherit the constructor');

# --- Tmpdir --------------------------------------------------------------
my $path;
{
	my $tmp = Test::Mailmunge::Tmpdir->new();
	$path = $tmp->{dir};
	ok(File::Spec->file_name_is_absolute($path), 'dir is absolute');
	like($path, qr{/t/tmp/[^/]+\z}, 'dir is inside t/tmp');
	is($tmp->dir, $path, 'dir accessor');
	ok(-d $path, 'dir exists');
	open(my $fh, '>', "$path/x") or die; print $fh "x"; close($fh);
	mkdir("$path/sub");
}
ok(!-e $path, 'dir removed when the object goes away');
{
	my $tmp = Test::Mailmunge::Tmpdir->new();
	$path = $tmp->{dir};
	$tmp->{cleanup} = 0;
}
ok(-d $path, 'cleanup => 0 keeps the dir');
rmdir($path);

# --- SMTPServer ----------------------------------------------------------
sub talk
{
	my ($port, @cmds) = @_;
	my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port, Timeout => 5)
	    or return ("connect failed: $!");
	my @out;
	my $read = sub {
		my @lines;
		while (defined(my $l = $s->getline())) {
			push(@lines, $l);
			last if $l =~ /^\d\d\d(?: |\r?\n)/;
		}
		return join('', @lines);
	};
	push(@out, $read->());
	foreach my $c (@cmds) {
		$s->print("$c\r\n");
		if ($c eq 'DATA') {
			push(@out, $read->());
			$s->print("Subject: x\r\n\r\nbody\r\n.\r\n");
		}
		push(@out, $read->());
	}
	$s->close();
	return @out;
}

my $srv = Test::Mailmunge::SMTPServer->new();
ok($srv->{port} > 0, "server listens on port $srv->{port}");
my @r = talk($srv->{port}, 'EHLO me', 'HELO me', 'MAIL FROM:<a@b>', 'RCPT TO:<c@d>', 'DATA', 'RSET', 'NOOP', 'QUIT');
is_deeply(\@r, [
	"220 localhost.example.com ESMTP\r\n",
	"250-localhost.example.com\r\n250-SIZE 100000\r\n250 8BITMIME\r\n",
	"250 localhost.example.com\r\n",
	"250 2.1.0 Ok\r\n",
	"250 2.1.0 Ok\r\n",
	"354 End data with <CR><LF>.<CR><LF>\r\n",
	"200 2.1.5 Message accepted\r\n",
	"200 2.0.0 Reset\r\n",
	"502 5.5.2 Error: NOOP: command not recognized\r\n",
	"221 2.0.0 Bye\r\n",
], 'default dialogue');

my $second = Test::Mailmunge::SMTPServer->new(
	connect => sub { my ($self) = @_; $self->{sock}->printflush("220 custom.example ESMTP hi\r\n"); },
	rcpt => sub { my ($line) = @_; return $line =~ /bad/ ? '550 5.1.1 No such user' : '250 2.1.5 Fine'; });
isnt($second->{port}, $srv->{port}, 'a second server gets another port');
@r = talk($second->{port}, 'RCPT TO:<bad@x>', 'RCPT TO:<good@x>', 'QUIT');
is_deeply(\@r, ["220 custom.example ESMTP hi\r\n", "550 5.1.1 No such user\r\n",
		"250 2.1.5 Fine\r\n", "221 2.0.0 Bye\r\n"], 'callbacks shape the replies');

my $port = $srv->{port};
$srv->stop_server();
ok(!IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port, Timeout => 2),
   'stop_server closes the port');
undef $second;

done_testing();
