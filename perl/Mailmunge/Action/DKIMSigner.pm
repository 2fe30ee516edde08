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

	# The header fields and the body, as the MTA received them.
	my ($fields, $body);
	if (-e "$dir/$newbody") {
		# The body was replaced: the header as received (HEADERS is
		# unfolded; use it only without PRISTINE_HEADERS), then NEWBODY.
		my $hfile = -r "$dir/$pristine" ? $pristine : $headers;
		my $lines = _read_lines("$dir/$hfile") or return undef;
		$fields = _fields($lines);
		$body = IO::File->new("$dir/$newbody", 'r') or return undef;
	} else {
		$body = IO::File->new("$dir/$inputmsg", 'r') or return undef;
		binmode($body);
		my @lines;
		while (defined(my $l = <$body>)) {
			last if $l =~ /^\r?\n\z/;
			push(@lines, $l);
		}
		$fields = _fields(\@lines);
	}
	binmode($body);

	# Then the header changes already requested in this scan, which the
	# MTA applies before the message leaves: sign what will be delivered.
	$ctx->_flush_results();
	my $edited = _apply_results($fields, "$dir/RESULTS");
	_set_content_type($ctx, $fields) if -e "$dir/$newbody" && !$edited->{'content-type'};

	_feed($signer, $_) foreach map { @$_ } @$fields;
	_feed($signer, "\n");
	_feed($signer, $_) while defined($_ = <$body>);
	$body->close();
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

# Header lines grouped into fields: [first line, continuation lines...].
sub _fields
{
	my ($lines) = @_;
	my @fields;
	foreach my $l (@$lines) {
		if (@fields && $l =~ /^[ \t]/) {
			push(@{$fields[-1]}, $l);
		} else {
			push(@fields, [$l]);
		}
	}
	return \@fields;
}

sub _name_of
{
	my ($field) = @_;
	return $field->[0] =~ /^([^:\s]+)\s*:/ ? lc($1) : '';
}

sub _new_field
{
	my ($name, $value) = @_;
	$value = '' unless defined($value);
	$value =~ s/\r?\n\z//;
	return [ map { "$_\n" } split(/\n/, "$name: $value", -1) ];
}

# Indexes (into @$fields) of the fields called $name.
sub _occurrences
{
	my ($fields, $name) = @_;
	$name = lc($name);
	return grep { _name_of($fields->[$_]) eq $name } 0 .. $#$fields;
}

# Applies the header lines of RESULTS (H, N, I, J and M, as the milter
# will) to @$fields; returns the set of lower-case names it touched.
sub _apply_results
{
	my ($fields, $path) = @_;
	my %touched;
	require Mailmunge::Filter;
	my $fh = IO::File->new($path, 'r') or return \%touched;
	while (defined(my $line = <$fh>)) {
		chomp($line);
		my $op = substr($line, 0, 1, '');
		next unless $op =~ /^[HNIJM]\z/;
		my @a = map { Mailmunge::Filter->_percent_decode($_) } split(/ /, $line, -1);
		if ($op eq 'H' && @a >= 1) {
			push(@$fields, _new_field($a[0], $a[1]));
			$touched{lc($a[0])} = 1;
		} elsif ($op eq 'N' && @a >= 2) {
			my $pos = ($a[1] =~ /^\d+\z/) ? $a[1] : 0;
			$pos = scalar(@$fields) if $pos > @$fields;
			splice(@$fields, $pos, 0, _new_field($a[0], $a[2]));
			$touched{lc($a[0])} = 1;
		} elsif ($op eq 'I' && @a >= 2) {
			my $idx = ($a[1] =~ /^\d+\z/ && $a[1] > 0) ? $a[1] : 1;
			my @occ = _occurrences($fields, $a[0]);
			if (@occ >= $idx) {
				if (defined($a[2]) && $a[2] ne '') {
					$fields->[$occ[$idx - 1]] = _new_field($a[0], $a[2]);
				} else {
					splice(@$fields, $occ[$idx - 1], 1);
				}
			} elsif (defined($a[2]) && $a[2] ne '') {
				push(@$fields, _new_field($a[0], $a[2]));
			}
			$touched{lc($a[0])} = 1;
		} elsif ($op eq 'J' && @a >= 2) {
			my @occ = _occurrences($fields, $a[0]);
			my $idx = $a[1] =~ /^\d+\z/ ? $a[1] : 0;
			splice(@$fields, $occ[$idx - 1], 1) if $idx >= 1 && @occ >= $idx;
			$touched{lc($a[0])} = 1;
		} elsif ($op eq 'M' && @a >= 1) {
			# Content-Type of a replaced body, all arguments joined.
			my $ct = join(' ', @a);
			_replace_content_type($fields, $ct);
			$touched{'content-type'} = 1;
		}
	}
	$fh->close();
	return \%touched;
}

sub _norm
{
	my ($v) = @_;
	$v =~ s/\s+/ /g;
	$v =~ s/^ //;
	$v =~ s/ \z//;
	return $v;
}

# Sets the first Content-Type field to $ct unless it already says that
# (compared ignoring white space, so an unchanged header keeps its folding).
sub _replace_content_type
{
	my ($fields, $ct) = @_;
	$ct = _norm($ct);
	my ($i) = _occurrences($fields, 'Content-Type');
	if (!defined($i)) {
		push(@$fields, _new_field('Content-Type', $ct));
		return;
	}
	(my $old = join('', @{$fields->[$i]})) =~ s/^Content-Type\s*:\s*//i;
	$fields->[$i] = _new_field('Content-Type', $ct) unless _norm($old) eq $ct;
}

# Without the framework's M line (e.g. when called outside a scan), take
# the Content-Type from the replacement entity.
sub _set_content_type
{
	my ($ctx, $fields) = @_;
	my $entity = $ctx->can('new_mime_entity') ? $ctx->new_mime_entity : undef;
	return unless $entity && $entity->head;
	my $ct = $entity->head->get('Content-Type');
	_replace_content_type($fields, $ct) if defined($ct);
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

The signed text is the message as the MTA will deliver it: the header
as received (from C<INPUTMSG>, or C<PRISTINE_HEADERS> - C<HEADERS> if
that is missing - when the body was replaced) with the header changes
already requested in this scan applied in order (added, inserted,
changed and deleted headers, and the new C<Content-Type> of a replaced
body), followed by the body (C<NEWBODY> if it was replaced).  Request
all header changes before signing; changes made after the signature
was computed are not covered.

=head1 METHODS

=head2 Mailmunge::Action::DKIMSigner->new($filter)

Inherited from L<Mailmunge::Action>.

=head2 add_dkim_signature($ctx, $signer)

Signs as described above and calls
C<< $ctx->action_add_header('DKIM-Signature', VALUE) >>, whose result it
returns.  Returns undef (and adds nothing) if a message file cannot be
read or the signer produced no signature.

=cut
