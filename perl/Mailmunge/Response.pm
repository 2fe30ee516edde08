package Mailmunge::Response;
use strict;
use warnings;

use Carp;
use base qw(Mailmunge::Base);

=head1 NAME

Mailmunge::Response - the verdict a filter callback hands back

=head1 SYNOPSIS

    return Mailmunge::Response->REJECT(message => 'No thanks',
                                       code => 550, dsn => '5.7.1');
    return Mailmunge::Response->CONTINUE();

=head1 DESCRIPTION

A Response is a plain hash with the fields C<status>, C<message>, C<code>,
C<dsn> and C<delay>.  C<filter_relay>, C<filter_helo>, C<filter_sender> and
C<filter_recipient> must return one; C<filter_message> and C<filter_wrapup>
may return one to reject, tempfail or discard the message.

=cut

my %VALID_STATUS = map { $_ => 1 }
	qw(ACCEPT_AND_NO_MORE_FILTERING DISCARD CONTINUE REJECT TEMPFAIL);

__PACKAGE__->make_accessors(qw(code delay dsn message status));

=head1 CONSTRUCTORS

=head2 new(key => value, ...)

Builds a Response by calling the accessor named by each key, in the order
given (so an unknown key dies as an unknown method).  Afterwards C<delay>
becomes 0 unless it is a whole number, C<message> becomes the empty string
if it was never set and C<status> becomes C<CONTINUE> if it was never set.
C<code> and C<dsn> stay unset until C<fix_code_dsn> fills them in.

=cut

sub new
{
	my $class = shift;
	my $self = $class->SUPER::new(@_);
	$self->{delay} = 0 unless defined($self->{delay}) && $self->{delay} =~ /^\d+$/;
	$self->{message} = '' unless defined($self->{message});
	$self->{status} = 'CONTINUE' unless defined($self->{status});
	return $self;
}

=head2 CONTINUE(...)

A Response that lets the SMTP transaction go on; message defaults to C<ok>.
Extra key/value pairs are passed to C<new> after the defaults, so they win.

=cut

sub CONTINUE
{
	my $class = shift;
	return $class->new(status => 'CONTINUE', message => 'ok', @_);
}

=head2 ACCEPT_AND_NO_MORE_FILTERING(...)

Accept, and ask the milter not to call the filter again for the rest of
this message.  Message defaults to C<ok>.

=cut

sub ACCEPT_AND_NO_MORE_FILTERING
{
	my $class = shift;
	return $class->new(status => 'ACCEPT_AND_NO_MORE_FILTERING', message => 'ok', @_);
}

=head2 DISCARD(...)

Accept the message but silently throw it away.

=cut

sub DISCARD
{
	my $class = shift;
	return $class->new(status => 'DISCARD', @_);
}

=head2 TEMPFAIL(...)

Refuse with a temporary (4xx) failure.

=cut

sub TEMPFAIL
{
	my $class = shift;
	return $class->new(status => 'TEMPFAIL', @_);
}

=head2 REJECT(...)

Refuse with a permanent (5xx) failure.

=cut

sub REJECT
{
	my $class = shift;
	return $class->new(status => 'REJECT', @_);
}

=head1 ACCESSORS

=head2 status([$status])

Gets or sets the status.  Only C<ACCEPT_AND_NO_MORE_FILTERING>, C<DISCARD>,
C<CONTINUE>, C<REJECT> and C<TEMPFAIL> are accepted; anything else croaks.

=cut

sub status
{
	my ($self, $status) = @_;
	if (defined($status)) {
		croak("Illegal status $status") unless $VALID_STATUS{$status};
		$self->{status} = $status;
	}
	return $self->{status};
}

=head2 code([$code])

The three-digit SMTP reply code.

=head2 dsn([$dsn])

The enhanced status code, such as C<5.7.1>.

=head2 message([$text])

The text sent with the SMTP reply.

=head2 delay([$seconds])

Seconds the milter waits before giving the MTA this answer (a tarpit).
Honoured for HELO, MAIL FROM and RCPT TO verdicts.

=head1 METHODS

=head2 fix_code_dsn()

Makes C<code> and C<dsn> agree with the status: a 2xx code and 2.x.x DSN
for CONTINUE, ACCEPT_AND_NO_MORE_FILTERING and DISCARD (defaults 250 and
2.1.0), 4xx and 4.x.x for TEMPFAIL (451, 4.3.0), 5xx and 5.x.x for REJECT
(554, 5.7.1).  Values that already fit are kept.  Returns nothing useful.

=cut

sub fix_code_dsn
{
	my ($self) = @_;
	my $s = $self->{status} // 'CONTINUE';
	my ($class, $code, $dsn);
	if ($s eq 'TEMPFAIL') {
		($class, $code, $dsn) = (4, '451', '4.3.0');
	} elsif ($s eq 'REJECT') {
		($class, $code, $dsn) = (5, '554', '5.7.1');
	} else {
		($class, $code, $dsn) = (2, '250', '2.1.0');
	}
	$self->{code} = $code unless defined($self->{code}) && $self->{code} =~ /^${class}\d\d$/;
	$self->{dsn} = $dsn unless defined($self->{dsn}) && $self->{dsn} =~ /^${class}\.\d{1,3}\.\d{1,3}$/;
	return;
}

=head2 is_tempfail()

=head2 is_reject()

=head2 is_discard()

Return 1 when the status is TEMPFAIL, REJECT or DISCARD respectively, else 0.

=head2 is_success()

Returns 1 for CONTINUE and ACCEPT_AND_NO_MORE_FILTERING, else 0.

=head2 is_success_or_discard()

Returns 1 for CONTINUE, ACCEPT_AND_NO_MORE_FILTERING and DISCARD, else 0.

=cut

sub _status_is
{
	my ($self, @which) = @_;
	my $s = $self->{status} // '';
	return (grep { $_ eq $s } @which) ? 1 : 0;
}

sub is_tempfail { return $_[0]->_status_is('TEMPFAIL'); }
sub is_reject   { return $_[0]->_status_is('REJECT'); }
sub is_discard  { return $_[0]->_status_is('DISCARD'); }
sub is_success  { return $_[0]->_status_is('CONTINUE', 'ACCEPT_AND_NO_MORE_FILTERING'); }
sub is_success_or_discard
{
	return $_[0]->_status_is('CONTINUE', 'ACCEPT_AND_NO_MORE_FILTERING', 'DISCARD');
}

1;
