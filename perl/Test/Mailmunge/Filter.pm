use strict;
use warnings;

package Test::Mailmunge::Filter;
use base qw(Mailmunge::Filter::Compat);

use Cwd qw(getcwd);
use File::Spec;
use IO::File;
use JSON ();
use MIME::Entity;
use Mailmunge::Constants;
use Mailmunge::Response;
use Mailmunge::Action::Boilerplate;
use Mailmunge::Action::DKIMSigner;
use Mailmunge::Test::Rspamd;

# The filter every multiplexor test drives.  Each SMTP stage answers
# according to a marker in the client address, HELO name, sender or
# recipient, and the message stage acts on words in the Subject, so one
# filter covers every verdict and every modification.

# A throw-away 1024-bit RSA key for DKIM tests.  Never use it for real mail.
my $TEST_DKIM_KEY = <<'PEM';
-----BEGIN RSA PRIVATE KEY-----
MIICXgIBAAKBgQDKUVdj+sPM/nohKJy2QZgJ7z/XA0Vmj3hfgKxjrNDadFzZ5zUn
biOAUXtp9mb8qKyy9yiB23GlNxRktNTcQ+NcESZ+JTsFQFgc0hIUj2WboUHQbcFg
qmIkci1+5RhcQ9BvTd0RJT+BS6sqK0New8fSN/VvML2PxqA1aceeWl+J3wIDAQAB
AoGBAKuS08PL86Sy4qugH1ZIxkEWjlMvSPmzDegf3RIiinPYXq3Eb8Vil+TINRsl
hS0bdmnHRKjrirMLxNWqrSGmyPXWuZ+PsT9Wv/PKZjT8wTksjFablBBXrmLziOPF
7pofh2H2nCmZJmWpXSZstbgsAHyKZcSyZZQKmbmwE20CCygBAkEA6wjPbhLXP8UY
dOJNP/RWqXgEoR0B2uR89XWf2g8vqvZQC1iQen4DBV3eDn44aAUNRVIl2RTc3W/4
9FhUGeNuAQJBANxda8EqvsOVQymZDy4aLUZmHSmgsezDm//1BC7oHsvmSN8pn12Q
8NlMbFG0BSie1GlA8xinqkJ+Slxot3mgt98CQQCyckf7TLa8pgpBhCgerIa3uHXb
VUi5Rs1RF/M7/le0t7piQuW++rmUc4ZK/q4Y2+0NeqddwCdIwOEFs6J23WQBAkBN
PgHTR+RuMhfEsP39LvfHwWtfeBBl6Xr5ES1SM9L3rdTFRJWz+mYyBPPC/9L/Fg1m
h3munrazcAkosxv86jUJAkEA3gQGMijkBUiuCBpBLzsTum84Q8KZUTtL3knMANev
jb2AckvA3embtWYqldPJufs2soVGHWxRemW+BJOjLAanJw==
-----END RSA PRIVATE KEY-----
PEM

sub log_identifier { return 'mailmunge-test-filter-dont-panic'; }

sub initialize
{
	my ($self) = @_;
	my $cwd = getcwd();
	Mailmunge::Constants->_set('Path:SPOOLDIR', $cwd);
	Mailmunge::Constants->_set('Path:QUARANTINEDIR', "$cwd/quarantine");
	return;
}

sub log
{
	my ($self, $ctx, $level, $msg) = @_;
	my $qid = ref($ctx) ? $ctx->qid : $ctx;
	push(@{$self->{TEST_LOGS}}, [$qid, $level, $msg]);
	return;
}

# Verdict for a marker found in $value (checked in this order).
sub _verdict_by_marker
{
	my ($value, $exact) = @_;
	$value = '' unless defined($value);
	foreach my $status (qw(continue tempfail reject accept_and_no_more_filtering)) {
		my $hit = $exact ? ($value eq $status) : ($value =~ /\Q$status\E/i);
		next unless $hit;
		my $ctor = uc($status);
		return Mailmunge::Response->$ctor();
	}
	return Mailmunge::Response->TEMPFAIL(message => 'Case not covered');
}

sub filter_relay
{
	my ($self, $ctx) = @_;
	my $ip = $ctx->hostip;
	$ip = '' unless defined($ip);
	return Mailmunge::Response->CONTINUE() if $ip eq '10.0.0.1';
	return Mailmunge::Response->TEMPFAIL(message => 'Whoops') if $ip eq '10.0.0.2';
	return Mailmunge::Response->REJECT(message => 'GO AWAY') if $ip eq '10.0.0.3';
	return Mailmunge::Response->ACCEPT_AND_NO_MORE_FILTERING(message => 'I love you') if $ip eq '10.0.0.4';
	return Mailmunge::Response->TEMPFAIL(message => 'Case not covered');
}

sub filter_helo
{
	my ($self, $ctx) = @_;
	return _verdict_by_marker($ctx->helo, 1);
}

sub filter_sender
{
	my ($self, $ctx) = @_;
	return _verdict_by_marker($ctx->sender, 0);
}

sub filter_recipient
{
	my ($self, $ctx) = @_;
	return _verdict_by_marker(($ctx->recipients || [])->[0], 0);
}

sub filter_begin
{
	my ($self, $ctx) = @_;
	my $subj = $ctx->subject;
	$subj = '' unless defined($subj);
	$ctx->action_tempfail("I'm busy at the moment...") if $subj eq 'begin-tempfail';
	return Mailmunge::Response->REJECT(message => 'I am not in the mood') if $subj eq 'begin-reject';
	$ctx->action_discard() if $subj eq 'begin-discard';
	$ctx->action_change_header('X-Foo', 'Foo has been CHANGED') if $subj eq 'begin-chghdr';
	$ctx->action_delete_header('X-Foo') if $subj eq 'begin-delhdr';
	$ctx->action_add_header('X-Foo', 'New-Foo') if $subj eq 'begin-addhdr';
	return;
}

sub filter
{
	my ($self, $ctx, $part, $fname, $ext, $type) = @_;
	$fname = lc(defined($fname) ? $fname : '');
	return $self->action_drop_with_warning($ctx, 'Attachments of type EXE are not accepted')
	    if $fname eq 'drop_with_warning.exe';
	return $self->action_replace_with_warning($ctx, "Replaced $fname")
	    if $fname eq 'replace_with_warning.exe';
	return $self->action_drop($ctx) if $fname eq 'drop.exe';
	return $self->action_accept_with_warning($ctx, 'I reluctantly accepted warn.txt')
	    if $fname eq 'warn.txt';
	return;
}

sub _copy_inputmsg
{
	my ($self) = @_;
	my $in = $self->inputmsg_fh() or return;
	my $out = IO::File->new('COPIED_EMAIL', 'w');
	if ($out) {
		binmode($in);
		binmode($out);
		while (defined(my $l = <$in>)) { $out->print($l); }
		$out->close();
	}
	close($in);
}

sub _rspamd
{
	my ($self, $ctx) = @_;
	my $ans = Mailmunge::Test::Rspamd->new($self)->rspamd_check(
		$ctx, '127.0.0.1', $ENV{RSPAMD_PORT} || 11333, 20);
	# JSON cannot serialise objects: copy each into a plain hash.
	my %plain = map { $_ => (ref($ans->{$_}) ? { %{$ans->{$_}} } : $ans->{$_}) } keys(%$ans);
	my $out = IO::File->new('RSPAMD_RESULTS', 'w') or return;
	$out->print(JSON->new->canonical(1)->encode(\%plain), "\n");
	$out->close();
}

sub _boilerplate
{
	my ($self, $ctx, $where, $scope, $at_start, $all) = @_;
	my $bp = Mailmunge::Action::Boilerplate->new($self);
	$bp->add_text_boilerplate($ctx, $ctx->mime_entity,
		"Some plaintext boilerplate at $where - $scope", $at_start, $all);
	$bp->add_html_boilerplate($ctx, $ctx->mime_entity,
		"<p>Some <b>HTML</b> boilerplate at $where - $scope</p>", $at_start, $all);
}

sub filter_end
{
	my ($self, $ctx) = @_;
	my $subj = $ctx->subject;
	$subj = '' unless defined($subj);

	$self->_copy_inputmsg() if $subj =~ /\bcopy-this-email\b/;
	$self->_rspamd($ctx) if $subj =~ /\brspamd\b/i;
	if ($subj =~ /\baddentity\b/i) {
		$self->action_add_entity($ctx, MIME::Entity->build(
			Type => 'text/plain', Top => 0, 'X-Mailer' => undef, Encoding => '-suggest',
			Data => ["A new entity, woop woop!\n"]));
	}
	if ($subj =~ /\baddpart\b/i) {
		$self->action_add_part($ctx, 'text/html', '-suggest',
			"<html><head><title>Foo</title></head><body><p>Wookie</p></body></html>\n");
	}
	$ctx->action_change_header('Subject', "[New subject] $subj") if $subj =~ /\bchgsub\b/i;
	$ctx->action_delete_header('X-Delete-Me') if $subj =~ /\bdelhdr\b/i;
	$ctx->action_change_header('X-Change-Me', 'You are changed!') if $subj =~ /\bchghdr\b/i;
	$ctx->action_delete_all_headers('X-Delete-Us-All') if $subj =~ /\bdelallhdrs\b/i;
	$ctx->change_sender('<changed_sender@example.org>') if $subj =~ /\bchgsender\b/i;
	$ctx->add_recipient('<foobarbaz_added@example.org>') if $subj =~ /\baddrcpt\b/i;
	$ctx->delete_recipient(($ctx->recipients || [])->[0]) if $subj =~ /\bdelrcpt\b/i;
	$ctx->action_add_header('X-Added', 'I am new!') if $subj =~ /\baddhdr\b/i;
	$ctx->action_sm_quarantine('You are evil and bad so I am quarantining you') if $subj =~ /\bsmquarantine\b/i;
	$ctx->action_quarantine_entire_message('Go to your room NOW, young message!') if $subj =~ /\bquarantine\b/i;
	return Mailmunge::Response->REJECT(message => "I'm a-bouncin' ya!") if $subj =~ /\bbounce\b/i;
	$ctx->action_discard() if $subj =~ /\bdiscard\b/i;
	$ctx->action_tempfail("I'm a-tempfailin' ya!") if $subj =~ /\btempfail\b/i;
	$self->_boilerplate($ctx, 'start', 'one part only', 1, 0) if $subj =~ /\bboilerplate_one_start\b/;
	$self->_boilerplate($ctx, 'end', 'one part only', 0, 0) if $subj =~ /\bboilerplate_one_end\b/;
	$self->_boilerplate($ctx, 'start', 'all parts', 1, 1) if $subj =~ /\bboilerplate_all_start\b/;
	$self->_boilerplate($ctx, 'end', 'all parts', 0, 1) if $subj =~ /\bboilerplate_all_end\b/;
	return;
}

# The DKIM key: upstream's test tree ships one at t/data/dkim/private-key.pem
# (relative to $TESTDIR); otherwise the built-in test key.
sub dkim_test_key_pem
{
	foreach my $base (grep { defined && length } ($ENV{TESTDIR}, getcwd())) {
		my $path = File::Spec->catfile($base, 't', 'data', 'dkim', 'private-key.pem');
		my $fh = IO::File->new($path, 'r') or next;
		local $/;
		my $block = _private_key_block(scalar(<$fh>));
		return $block if defined($block);
	}
	return $TEST_DKIM_KEY;
}

# The first private-key block of a PEM file, from its BEGIN line to its
# END line: a note before or after the key is no part of the key.  Undef
# if the text holds no such block.
sub _private_key_block
{
	my ($text) = @_;
	return undef unless defined($text);
	return $1 if $text =~ /^(-----BEGIN ([A-Z0-9 ]*PRIVATE KEY)-----\r?\n.*?^-----END \2-----\r?\n?)/ms;
	return undef;
}

sub filter_wrapup
{
	my ($self, $ctx) = @_;
	my $subj = $ctx->subject;
	return 0 unless defined($subj) && $subj =~ /\bdkim_sign\b/;
	require Mail::DKIM::Signer;
	require Mail::DKIM::PrivateKey;
	# Mail::DKIM wants the base64 text between the BEGIN and END lines.
	my ($base64) = dkim_test_key_pem() =~ /^-----BEGIN [^\n]*\n(.*?)^-----END /ms;
	$base64 =~ s/\s+//g;
	my $key = Mail::DKIM::PrivateKey->load(Data => $base64);
	my $signer = Mail::DKIM::Signer->new(
		Algorithm => 'rsa-sha256',
		Method    => 'relaxed',
		Domain    => 'test.mailmunge.org',
		Selector  => 'testing',
		Key       => $key);
	Mailmunge::Action::DKIMSigner->new($self)->add_dkim_signature($ctx, $signer);
	return 0;
}

1;

__END__

=head1 NAME

Test::Mailmunge::Filter - a scripted filter for Mailmunge unit tests

=head1 SYNOPSIS

    # t/filters/test-filter.pl
    #!/usr/bin/env perl
    use lib $ENV{TESTDIR} . '/lib';
    use Test::Mailmunge::Filter;
    my $filter = Test::Mailmunge::Filter->new();
    $filter->run();
    1;

=head1 DESCRIPTION

A L<Mailmunge::Filter::Compat> subclass whose behaviour is chosen by the
test through the SMTP data, so one filter file can exercise every
verdict and every message action.  Log calls are recorded in
C<< $filter->{TEST_LOGS} >> as C<[qid, level, message]> instead of going to
syslog.

=over 4

=item Connect: client address 10.0.0.1 continue, 10.0.0.2 tempfail
C<Whoops>, 10.0.0.3 reject C<GO AWAY>, 10.0.0.4 accept C<I love you>.

=item HELO: exactly C<continue>, C<tempfail>, C<reject> or
C<accept_and_no_more_filtering>.

=item MAIL FROM / RCPT TO: the first of those words contained in the
sender / recipient (case-insensitive).

=item Anything else: tempfail C<Case not covered>.

=item filter_begin: subject exactly C<begin-tempfail>, C<begin-reject>,
C<begin-discard>, C<begin-chghdr>, C<begin-delhdr> or C<begin-addhdr>.

=item filter: attachments named C<drop_with_warning.exe>,
C<replace_with_warning.exe>, C<drop.exe> and C<warn.txt>.

=item filter_end: words in the subject: C<copy-this-email>, C<rspamd>,
C<addentity>, C<addpart>, C<chgsub>, C<delhdr>, C<chghdr>,
C<delallhdrs>, C<chgsender>, C<addrcpt>, C<delrcpt>, C<addhdr>,
C<smquarantine>, C<quarantine>, C<bounce>, C<discard>, C<tempfail>,
C<boilerplate_one_start>, C<boilerplate_one_end>,
C<boilerplate_all_start>, C<boilerplate_all_end>.

=item filter_wrapup: subject word C<dkim_sign> signs for domain
C<test.mailmunge.org>, selector C<testing>.

=back

=head1 METHODS

=head2 log_identifier()

Returns C<mailmunge-test-filter-dont-panic>.

=head2 initialize()

Points C<Path:SPOOLDIR> at the current directory and
C<Path:QUARANTINEDIR> at its C<quarantine> subdirectory.

=head2 log($ctx_or_qid, $level, $message)

Appends C<[qid, level, message]> to C<< $self->{TEST_LOGS} >>.

=head2 filter_relay($ctx), filter_helo($ctx), filter_sender($ctx), filter_recipient($ctx)

Verdicts as listed above.

=head2 filter_begin($ctx), filter($ctx, $part, $fname, $ext, $type), filter_end($ctx)

Message actions as listed above.

=head2 filter_wrapup($ctx)

DKIM-signs when asked to; returns 0.

=head2 dkim_test_key_pem()

The PEM text of the RSA key used for signing, from its C<-----BEGIN>
line to its C<-----END> line: the first private-key block of
C<t/data/dkim/private-key.pem> below C<$TESTDIR> or the current directory
if such a file holds one (text around the block, such as a note before
the key, is left out), else a built-in key made for these tests.

=cut
