use strict;
use warnings;

package Mailmunge::Action::DKIMSigner;
use base qw(Mailmunge::Action);

use IO::File;

sub add_dkim_signature
{
	my ($self, $ctx, $signer) = @_;
	return undef unless $ctx && $signer;
	my $dir = $ctx->cwd;
	$dir = '.' unless defined($dir) && $dir ne '';
	my $filter = $self->filter;
	my ($inputmsg, $headers, $pristine, $newbody) = ('INPUTMSG', 'HEADERS', 'PRISTINE_HEADERS', 'NEWBODY');
	if (ref($filter) && $filter->can('inputmsg')) {
		$inputmsg = $filter->inputmsg;
		$headers  = $filter->headers_file;
		$pristine = $filter->pristine_headers_file if $filter->can('pristine_headers_file');
		$newbody  = $filter->_newbody if $filter->can('_newbody');
	}

	if (-e "$dir/$newbody") {
		# The body was replaced: sign the header as the MTA will pass it
		# on (as received, with the Content-Type the new body needs)
		# followed by the new body.
		my $hfile = -r "$dir/$pristine" ? $pristine : $headers;
		my $lines = _read_lines("$dir/$hfile") or return undef;
		my $body = IO::File->new("$dir/$newbody", 'r') or return undef;
		binmode($body);
		$lines = _with_new_content_type($ctx, $lines);
		_feed($signer, $_) foreach @$lines;
		_feed($signer, "\n");
		_feed($signer, $_) while defined($_ = <$body>);
		$body->close();
	} else {
		my $msg = IO::File->new("$dir/$inputmsg", 'r') or return undef;
		binmode($msg);
		while (defined(my $l = <$msg>)) {
			_feed($signer, $l);
		}
		$msg->close();
	}
	$signer->CLOSE();
	my $sig = $signer->signature or return undef;
	my $value = $sig->as_string;
	$value =~ s/^DKIM-Signature:\s*//i;
	return $ctx->action_add_header('DKIM-Signature', $value);
}

# Mail::DKIM wants canonical CRLF line ends.
sub _feed
{
	my ($signer, $line) = @_;
	$line =~ s/\r?\n\z//;
	$signer->PRINT("$line\r\n");
}

sub _read_lines
{
	my ($path) = @_;
	my $fh = IO::File->new($path, 'r') or return undef;
	binmode($fh);
	my @lines = <$fh>;
	$fh->close();
	# A header file may end with the separating blank line; we add our own.
	pop(@lines) while @lines && $lines[-1] =~ /^\r?\n\z/;
	return \@lines;
}

# The framework rewrites the top-level Content-Type when it replaces the
# body (the "M" line); sign that value, not the old one, or every signature
# on a rebuilt message would fail.
sub _with_new_content_type
{
	my ($ctx, $lines) = @_;
	my $entity = $ctx->can('new_mime_entity') ? $ctx->new_mime_entity : undef;
	return $lines unless $entity && $entity->head;
	my $ct = $entity->head->get('Content-Type');
	return $lines unless defined($ct);
	my $norm = sub { my ($v) = @_; $v =~ s/\s+/ /g; $v =~ s/^ //; $v =~ s/ \z//; return $v; };
	$ct = $norm->($ct);

	# Group the lines into fields (first line plus continuations).
	my @fields;
	foreach my $l (@$lines) {
		if (@fields && $l =~ /^[ \t]/) {
			push(@{$fields[-1]}, $l);
		} else {
			push(@fields, [$l]);
		}
	}
	foreach my $f (@fields) {
		next unless $f->[0] =~ /^Content-Type\s*:/i;
		(my $old = join('', @$f)) =~ s/^Content-Type\s*:\s*//i;
		# An unchanged header keeps its original folding.
		$f = ["Content-Type: $ct\n"] unless $norm->($old) eq $ct;
		last;
	}
	return [ map { @$_ } @fields ];
}

1;

__END__

=head1 NAME

Mailmunge::Action::DKIMSigner - DKIM-sign a message as it leaves the filter

=head1 SYNOPSIS

    use Mail::DKIM::Signer;
    use Mail::DKIM::PrivateKey;
    use Mailmunge::Action::DKIMSigner;

    sub filter_wrapup {
        my ($self, $ctx) = @_;
        my $signer = Mail::DKIM::Signer->new(
            Algorithm => 'rsa-sha256',
            Method    => 'relaxed',
            Domain    => 'example.com',
            Selector  => 'mail2024',
            KeyFile   => '/etc/mailmunge/dkim/mail2024.key');
        Mailmunge::Action::DKIMSigner->new($self)->add_dkim_signature($ctx, $signer);
        return;
    }

=head1 DESCRIPTION

Feeds the message, as it will leave the filter, to a configured
L<Mail::DKIM::Signer> and adds the resulting C<DKIM-Signature> header.
Call it from C<filter_wrapup>, after any body replacement was written.

If the body was replaced, the signed text is the header as received
(C<PRISTINE_HEADERS>, or C<HEADERS> if that is missing) with its
C<Content-Type> updated to the new body's, followed by the new body;
otherwise it is the original message.  Header changes requested in the
same scan are applied by the MTA later and are therefore not covered;
sign in C<filter_wrapup> and avoid changing signed headers.

=head1 METHODS

=head2 Mailmunge::Action::DKIMSigner->new($filter)

Inherited from L<Mailmunge::Action>.

=head2 add_dkim_signature($ctx, $signer)

Signs as described above and calls
C<< $ctx->action_add_header('DKIM-Signature', VALUE) >>, whose result it
returns.  Returns undef (and adds nothing) if a message file cannot be
read or the signer produced no signature.

=cut
