#!/usr/bin/perl
# What a newcomer does, as root: a fresh clone below a private (0700)
# directory, README's first command in the background, README's mm-try
# with a small message (a real verdict), Ctrl-C, and nothing left running.
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use File::Temp qw(tempdir);
use POSIX qw(WNOHANG);
use Time::HiRes qw(sleep time);
use MMTest::Util qw(free_port repo_root have_root skip_or_fail start_terminal_command read_until);

my $top = repo_root();
skip_or_fail('needs root (the daemons drop to the mailmunge user)') unless have_root();
skip_or_fail('needs git') unless system('git --version >/dev/null 2>&1') == 0;
skip_or_fail('not a git checkout') unless -e "$top/.git";

# A private home, like /root, holding the clone.
my $home = tempdir('mm-newcomer-XXXXXX', TMPDIR => 1, CLEANUP => 1);
chmod(0700, $home);
my $clone = "$home/mailmunge-rs";
is(system('git', 'clone', '--quiet', $top, $clone), 0, 'fresh clone');

my $port = free_port();
my ($pid, $rd) = start_terminal_command($clone, { PORT => $port }, './script/local-stack');
# The clone builds from scratch: allow for it.
my $banner = read_until($rd, qr/Press Ctrl-C to stop\.\n/, 900);
like($banner, qr/^local-stack: ready, running as user mailmunge; a test message got: 250 /m,
	'README\'s first command says ready after a message went through') or diag($banner);
like($banner, qr/running from a copy in (\/tmp\/mailmunge-local\.\w+)/, 'the workers run from a copy outside the private home');
my ($stage) = $banner =~ /running from a copy in (\S+);?/;
$stage =~ s/;\z// if defined $stage;

# README's mm-try line, from the clone.
my $out = `cd '$clone' && target/debug/mm-try --env-file local/generated.env examples/hello.eml 2>&1`;
is($? >> 8, 0, 'README\'s mm-try: the message is accepted') or diag($out);
like($out, qr/^SMTP reply: 250 /m, 'with a real verdict');
like($out, qr/^\+X-Scanned-By: mailmunge /m, 'and the example filter\'s header');

# Ctrl-C.
kill('INT', $pid);
my $status;
my $deadline = time() + 60;
while (time() < $deadline) {
	if (waitpid($pid, WNOHANG) == $pid) { $status = $?; last; }
	sleep(0.1);
}
if (!defined $status) { kill('KILL', $pid); waitpid($pid, 0); }
my $rest = do { local $/; <$rd> } // '';
is($status, 0, 'Ctrl-C stops it with status 0') or diag($rest);
like($rest, qr/local-stack: stopped\.\n\z/, 'it says it stopped');

my @left = grep { /\Q$clone\E|mailmunge-local\./ } `ps -eo args=`;
is_deeply(\@left, [], 'no daemon or worker is left');
ok(!defined($stage) || !-e $stage, 'the copy under /tmp is removed');

done_testing();
