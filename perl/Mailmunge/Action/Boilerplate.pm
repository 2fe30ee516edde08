use strict;
use warnings;

package Mailmunge::Action::Boilerplate;
use base qw(Mailmunge::Action);

use Encode ();
use HTML::Parser;
use IO::File;

sub add_text_boilerplate
{
	my ($self, $ctx, $top, $text, $at_start, $all) = @_;
	return $self->_add($ctx, $top, 'text/plain', $text, $at_start, $all);
}

sub add_html_boilerplate
{
	my ($self, $ctx, $top, $html, $at_start, $all) = @_;
	return $self->_add($ctx, $top, 'text/html', $html, $at_start, $all);
}

sub _add
{
	my ($self, $ctx, $top, $type, $text, $at_start, $all) = @_;
	return 0 unless $top && defined($text);
	return 0 unless $self->_walk($ctx, $top, $type, $text, $at_start, $all);
	# The parts were edited in place; have the framework write the body.
	$ctx->new_mime_entity($top);
	return 1;
}

# Depth first, in message order; stops after the first edited part unless
# $all.  Returns true if some part was edited.
sub _walk
{
	my ($self, $ctx, $entity, $type, $text, $at_start, $all) = @_;
	my @parts = $entity->parts;
	if (@parts) {
		my $changed = 0;
		foreach my $p (@parts) {
			next unless $self->_walk($ctx, $p, $type, $text, $at_start, $all);
			$changed = 1;
			last unless $all;
		}
		return $changed;
	}
	return 0 unless lc($entity->mime_type || '') eq $type;
	# A text file sent as an attachment is a document, not the message text.
	my $disp = $entity->head->mime_attr('content-disposition');
	return 0 if defined($disp) && lc($disp) eq 'attachment';
	my $ok = eval { $self->_edit_part($ctx, $entity, $type, $text, $at_start) };
	if (!defined($ok)) {
		my $err = $@ || 'unknown error';
		$err =~ s/\s+\z//;
		$self->_fail($ctx, $err);
		return 0;
	}
	return $ok;
}

sub _fail
{
	my ($self, $ctx, $reason) = @_;
	my $f = $self->filter;
	$f->log($ctx, 'warning', "Could not add boilerplate to MIME part: $reason") if $f && $f->can('log');
	return 0;
}

# Boilerplate given as a character string is converted to the part's
# character set (upstream inserted it as whatever bytes Perl had).
sub _bytes_for_part
{
	my ($part, $type, $text) = @_;
	return $text unless utf8::is_utf8($text);
	my $cs = $part->head->mime_attr('content-type.charset') || 'us-ascii';
	my $enc = Encode::find_encoding($cs) || Encode::find_encoding('UTF-8');
	my $check = $type eq 'text/html' ? Encode::FB_HTMLCREF : Encode::FB_DEFAULT;
	return $enc->encode($text, $check);
}

sub _edit_part
{
	my ($self, $ctx, $part, $type, $text, $at_start) = @_;
	my $body = $part->bodyhandle or return $self->_fail($ctx, 'part has no body');
	my $path = $body->path or return $self->_fail($ctx, 'body is not in a file');
	$text = _bytes_for_part($part, $type, $text);
	$text .= "\n" unless $text =~ /\n\z/;

	my $in = IO::File->new($path, 'r') or return $self->_fail($ctx, "cannot read $path: $!");
	my $tmp = "$path.tmp";
	my $out = IO::File->new($tmp, 'w');
	if (!$out) {
		my $err = $!;
		$in->close();
		return $self->_fail($ctx, "cannot write $tmp: $err");
	}
	binmode($in);
	binmode($out);

	my $added = $type eq 'text/html'
	    ? _copy_html($in, $out, $text, $at_start)
	    : _copy_text($in, $out, $text, $at_start);
	$in->close();
	if (!$out->close()) {
		my $err = $!;
		unlink($tmp);
		return $self->_fail($ctx, "cannot write $tmp: $err");
	}
	if (!$added) {
		# No place for it (HTML without body, p, div or a tags).
		unlink($tmp);
		return 0;
	}
	if (!rename($tmp, $path)) {
		my $err = $!;
		unlink($tmp);
		return $self->_fail($ctx, "cannot rename $tmp: $err");
	}
	return 1;
}

# The boilerplate goes before the first byte or after the last one: a
# last line without a newline runs straight into it, as upstream does.
sub _copy_text
{
	my ($in, $out, $text, $at_start) = @_;
	$out->print($text) if $at_start;
	while (defined(my $l = <$in>)) {
		$out->print($l);
	}
	$out->print($text) unless $at_start;
	return 1;
}

# Copies the HTML through HTML::Parser, inserting $text: at the start,
# just inside <body> (or, for HTML without a body tag, before the first
# <p>, <div> or <a>); at the end, before </body> or </html>, else at the
# very end.
sub _copy_html
{
	my ($in, $out, $text, $at_start) = @_;
	my $added = 0;
	my $echo = sub { $out->print($_[0]); };
	my %h = (default_h => [$echo, 'text']);
	if ($at_start) {
		$h{start_h} = [sub {
			my ($tag, $raw) = @_;
			if (!$added && $tag =~ /^(?:body|p|div|a)\z/) {
				$added = 1;
				if ($tag eq 'body') {
					$out->print($raw, $text);
				} else {
					$out->print($text, $raw);
				}
				return;
			}
			$out->print($raw);
		}, 'tagname,text'];
	} else {
		$h{end_h} = [sub {
			my ($tag, $raw) = @_;
			if (!$added && ($tag eq 'body' || $tag eq 'html')) {
				$added = 1;
				$out->print($text);
			}
			$out->print($raw);
		}, 'tagname,text'];
	}
	my $p = HTML::Parser->new(api_version => 3, %h);
	$p->unbroken_text(1);
	$p->parse_file($in);
	if (!$at_start && !$added) {
		$out->print($text);
		$added = 1;
	}
	return $added;
}

1;

__END__

=head1 NAME

Mailmunge::Action::Boilerplate - add a disclaimer or footer to a message's text

=head1 SYNOPSIS

    package MyFilter;
    use base qw(Mailmunge::Filter);
    use Mailmunge::Action::Boilerplate;

    sub filter_message {
        my ($self, $ctx) = @_;
        my $bp = Mailmunge::Action::Boilerplate->new($self);
        $bp->add_text_boilerplate($ctx, $ctx->mime_entity,
                                  "\n-- \nSent through Example Corp's gateway\n");
        $bp->add_html_boilerplate($ctx, $ctx->mime_entity,
                                  "<p><small>Sent through Example Corp's gateway</small></p>");
        return;
    }

=head1 DESCRIPTION

Inserts boilerplate into the C<text/plain> or C<text/html> parts of a
message, at their start or end, and asks the framework to write out the
changed body.  Call it from C<filter_message> (or, with
L<Mailmunge::Filter::Compat>, from C<filter_end>) with the top-level
entity.

Parts marked C<Content-Disposition: attachment> are documents, not the
message text, and are left alone.  The boilerplate is written into the
decoded part body, so it is re-encoded with the part.  Pass it as bytes
in the part's character set, or as a Perl character string (one with
Perl's UTF-8 flag on, e.g. from C<Encode::decode> or a C<use utf8>
source), which is then converted to the part's charset (characters the charset lacks
become C<?>, or character references in HTML).  A trailing newline is
added to the boilerplate if missing.  Nothing else is added: boilerplate
put at the end of a part whose last line lacks a newline continues that
line, so start C<$text> with a newline to have it on a line of its own.

=head1 METHODS

=head2 Mailmunge::Action::Boilerplate->new($filter)

Inherited from L<Mailmunge::Action>.  Problems are logged through
C<< $filter->log >> at level C<warning> as
C<Could not add boilerplate to MIME part: REASON>.

=head2 add_text_boilerplate($ctx, $entity, $text [, $at_start [, $all]])

Adds C<$text> before (C<$at_start> true) or after (default) the contents
of the first C<text/plain> part found in C<$entity> (depth first, in
message order), or of every such part when C<$all> is true.  Returns 1
and calls C<< $ctx->new_mime_entity($entity) >> if a part was changed,
else 0.

=head2 add_html_boilerplate($ctx, $entity, $html [, $at_start [, $all]])

The same for C<text/html> parts.  At the start, C<$html> goes right
after the C<< <body> >> tag, or before the first C<< <p> >>,
C<< <div> >> or C<< <a> >> tag when that comes first; a part with none of
these is left unchanged.  At the end, it goes before C<< </body> >> or
C<< </html> >>, or at the very end if neither is present.

=cut
