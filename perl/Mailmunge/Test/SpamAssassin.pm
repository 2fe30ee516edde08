use strict;
use warnings;

package Mailmunge::Test::SpamAssassin;
use base qw(Mailmunge::Test);

use IO::File;
use Mailmunge::Constants;

# One Mail::SpamAssassin object per process and configuration: creating
# one compiles every rule, which takes seconds.
my %TESTERS;

sub _default_config
{
	my $confdir = Mailmunge::Constants->get('Path:CONFDIR') || '/etc/mailmunge';
	foreach my $c ("$confdir/sa-mailmunge.cf", "$confdir/spamassassin/sa-mailmunge.cf",
		       "$confdir/spamassassin/local.cf", "$confdir/spamassassin.cf",
		       '/etc/mail/sa-mailmunge.cf', '/etc/mail/spamassassin/sa-mailmunge.cf',
		       '/etc/mail/spamassassin/local.cf', '/etc/mail/spamassassin.cf') {
		return $c if -r $c;
	}
	return undef;
}

sub _tester
{
	my ($self, $local_only, $config) = @_;
	$config = _default_config() unless defined($config);
	my $key = join("\0", $local_only ? 1 : 0, defined($config) ? $config : '');
	return $TESTERS{$key} if $TESTERS{$key};
	require Mail::SpamAssassin;
	my %args = (local_tests_only => ($local_only ? 1 : 0),
		    dont_copy_prefs  => 1,
		    user_dir         => Mailmunge::Constants->get('Path:QUARANTINEDIR'));
	$args{userprefs_filename} = $config if defined($config);
	my $sa = Mail::SpamAssassin->new(\%args);
	$sa->compile_now(0, 1) if $sa->can('compile_now');
	return $TESTERS{$key} = $sa;
}

sub spam_assassin_status
{
	my ($self, $ctx, $local_only, $config) = @_;
	return undef unless $ctx;
	my $filter = $self->filter;
	my $file = (ref($filter) && $filter->can('inputmsg')) ? $filter->inputmsg : 'INPUTMSG';
	my $dir = $ctx->cwd;
	$file = "$dir/$file" if defined($dir) && $dir ne '' && $file !~ m{^/};
	my $in = IO::File->new($file, 'r') or return undef;
	binmode($in);

	# What SpamAssassin would see after delivery: the envelope sender and
	# our Received header in front of the message.
	my @lines = ('Return-Path: ' . ($ctx->sender // '<>') . "\n");
	if (ref($filter) && $filter->can('synthesize_received_header') && $ctx->recipients) {
		my $rcvd = eval { $filter->synthesize_received_header($ctx) };
		push(@lines, map { "$_\n" } split(/\n/, $rcvd)) if defined($rcvd);
	}
	push(@lines, <$in>);
	$in->close();

	my $sa = $self->_tester($local_only, $config) or return undef;
	my $mail = $sa->parse(\@lines);
	return undef unless $mail;
	my $can_tag = ref($filter) && $filter->can('push_tag');
	$filter->push_tag($ctx, 'Running SpamAssassin') if $can_tag;
	my $status = eval { $sa->check($mail) };
	$filter->pop_tag($ctx) if $can_tag;
	$mail->finish();
	return $status;
}

sub spam_assassin_check
{
	my ($self, $ctx, @args) = @_;
	my $status = $self->spam_assassin_status($ctx, @args) or return ();
	my @ans = ($status->get_score(), $status->get_required_score(),
		   $status->get_names_of_tests_hit(), $status->get_report());
	$status->finish();
	return @ans;
}

1;

__END__

=head1 NAME

Mailmunge::Test::SpamAssassin - score a message with SpamAssassin in the filter process

=head1 SYNOPSIS

    use Mailmunge::Test::SpamAssassin;

    sub filter_message {
        my ($self, $ctx) = @_;
        my $status = Mailmunge::Test::SpamAssassin->new($self)->spam_assassin_status($ctx);
        return unless $status;
        my $score = $status->get_score();
        my $is_spam = $status->is_spam();
        $status->finish();
        $ctx->action_add_header('X-Spam-Score', sprintf('%.1f', $score));
        return Mailmunge::Response->REJECT(message => 'Looks like spam') if $score >= 15;
        return;
    }

=head1 DESCRIPTION

Runs L<Mail::SpamAssassin> on the message being scanned, inside the
worker process.  The message is presented with a C<Return-Path> header
holding the envelope sender and a C<Received> header describing the SMTP
client, as SpamAssassin would see it after delivery.

The SpamAssassin object is created on first use and kept for the life of
the worker (one per combination of arguments), so the rules are compiled
only once per worker.

=head1 METHODS

=head2 Mailmunge::Test::SpamAssassin->new($filter)

Inherited from L<Mailmunge::Test>.

=head2 spam_assassin_status($ctx [, $local_tests_only [, $config]])

Checks the message and returns the L<Mail::SpamAssassin::PerMsgStatus>
(call C<get_score>, C<get_required_score>, C<is_spam>,
C<get_names_of_tests_hit>, C<get_report>... on it, then C<finish>), or
undef if the message cannot be read or checked.

With a true C<$local_tests_only>, tests that need the network (DNS
blocklists, Razor, Pyzor) are skipped.  C<$config> is the preferences
file to use; by default the first readable one of
C<CONFDIR/sa-mailmunge.cf>, C<CONFDIR/spamassassin/sa-mailmunge.cf>,
C<CONFDIR/spamassassin/local.cf>, C<CONFDIR/spamassassin.cf> and the
same names under C</etc/mail>.  SpamAssassin's per-user state (Bayes,
auto-welcomelist) lives under the C<Path:QUARANTINEDIR> directory.

=head2 spam_assassin_check($ctx [, $local_tests_only [, $config]])

The MIMEDefang-style shortcut: runs C<spam_assassin_status> and returns
the list C<($score, $required_score, $tests_hit, $report)>, where
C<$tests_hit> is the comma-separated rule names, having already called
C<finish>; an empty list if the check could not be made.

=cut
