use strict;
use warnings;

package Mailmunge::Filter::Compat;
use base qw(Mailmunge::Filter);

use Encode ();
use MIME::Entity;
use MIME::Words ();

# MIMEDefang-style filtering on top of Mailmunge::Filter: filter_message
# walks the MIME tree, asks filter()/filter_multipart() about each part and
# rebuilds the message from the parts they keep.  The traversal and the
# resulting bytes follow upstream Mailmunge 3.09 exactly, quirks included
# (see protocol/perl-api.md §7): the top-level entity is never offered to
# filter()/filter_multipart().

my $STATE_KEY = 'compat_filter';

sub _state
{
	my ($self, $ctx) = @_;
	return $ctx->privdata($STATE_KEY);
}

# The Compat actions only make sense while filter_message is walking the
# message; elsewhere there is no state to record them in.
sub _walking
{
	my ($self, $ctx, $what) = @_;
	my $state = ref($ctx) ? $self->_state($ctx) : undef;
	return 1 if ref($state) eq 'HASH' && !$state->{done};
	my $log_ctx = ref($ctx) ? $ctx : 'NOQUEUE';
	$self->log($log_ctx, 'warning', "$what called outside of filter_message; ignored");
	return 0;
}

sub filter_message
{
	my ($self, $ctx) = @_;
	# Taken before filter_begin: a body replaced there (new_mime_entity)
	# is not what the rebuild walks.
	my $entity = $ctx->mime_entity;
	# The top-level header as the MTA has it, to compare with the result.
	my $orig_head = $entity ? $entity->head->dup : undef;
	$ctx->privdata($STATE_KEY, { changed => 0, added_parts => [], warnings => [] });

	$self->push_tag($ctx, 'In filter_begin');
	my $ret = $self->filter_begin($ctx);
	$self->pop_tag($ctx);
	$ctx->action_from_response($ret);

	my ($rebuilt, $walk_root);
	if (!$ctx->message_rejected && $entity) {
		# A copy of the top-level entity without its parts keeps the
		# top-level header (and a single-part message's body).
		my @parts = $entity->parts;
		$entity->parts([]);
		$rebuilt = $entity->dup;
		$entity->parts(\@parts);

		$self->push_tag($ctx, 'In rebuild loop');
		# Upstream quirk kept: the walk starts at the children, so
		# filter()/filter_multipart() never see the top-level entity
		# (protocol/perl-api.md §7.1).
		foreach my $part (@parts) {
			$self->_rebuild_entity($ctx, $rebuilt, $part);
		}
		$walk_root = $self->_walk_single_part($ctx, $entity) if !@parts && $self->filter_single_part_messages;
		$self->pop_tag($ctx);
		$ctx->mime_entity($rebuilt);
	}

	if (!$ctx->message_rejected) {
		$self->push_tag($ctx, 'In filter_end');
		$ret = $self->filter_end($ctx);
		$self->pop_tag($ctx);
		# (Upstream also re-applied filter_begin's verdict here, writing
		# a duplicate disposition line; one is enough.)
		$ctx->action_from_response($ret);
	}

	if (!$ctx->message_rejected && $rebuilt && $self->_state($ctx)->{changed}) {
		if ($walk_root) {
			# A walked single-part message is rebuilt from its wrapper;
			# if its only part was dropped, an empty text stands in.
			$rebuilt = $walk_root;
			$rebuilt->add_part(MIME::Entity->build(Top => 0, Type => 'text/plain', Encoding => '7bit',
							       'X-Mailer' => undef, Data => ['']))
			    unless $rebuilt->parts;
		}
		$self->_do_add_parts($ctx, $rebuilt);
		# A multipart with a single part is just that part.
		while ($rebuilt->is_multipart) {
			my @parts = $rebuilt->parts;
			last unless scalar(@parts) == 1;
			$rebuilt = $parts[0];
		}
		$self->_reconcile_content_headers($ctx, $orig_head, $rebuilt->head);
		$ctx->new_mime_entity($rebuilt);
	}
	# Part actions from now on (e.g. in filter_wrapup) have nothing to act on.
	$self->_state($ctx)->{done} = 1;
	return;
}

# The framework only rewrites Content-Type (the M line) at the MTA.  When
# the rebuild changes the top level (a single-part message made multipart,
# or a multipart collapsed to its one remaining part), the other Content-*
# headers must follow, or e.g. a base64 part would be delivered under the
# original "Content-Transfer-Encoding: 7bit".  (Upstream left them stale.)
sub _reconcile_content_headers
{
	my ($self, $ctx, $old, $new) = @_;
	return unless $old && $new;
	my (%o, %n);
	foreach my $t (grep { /^content-/i && !/^content-type$/i } $old->tags) {
		$o{lc($t)} = [$t, $old->get($t, 0)];
	}
	foreach my $t (grep { /^content-/i && !/^content-type$/i } $new->tags) {
		$n{lc($t)} = [$t, $new->get($t, 0)];
	}
	foreach my $k (sort keys %n) {
		my ($name, $val) = @{$n{$k}};
		$val = '' unless defined($val);
		$val =~ s/\s+\z//;
		if ($o{$k}) {
			my $ov = defined($o{$k}[1]) ? $o{$k}[1] : '';
			$ov =~ s/\s+\z//;
			next if $ov eq $val;
		}
		$ctx->action_change_header($name, $val);
	}
	foreach my $k (sort keys %o) {
		next if $n{$k};
		$ctx->action_delete_header($o{$k}[0]);
	}
}

# Opt-in (filter_single_part_messages): offers the body of a single-part
# message to filter() as the only part of a multipart/mixed wrapper.
# Returns the wrapper, which becomes the base of the rebuilt message if
# anything changed.
sub _walk_single_part
{
	my ($self, $ctx, $entity) = @_;
	return undef unless defined($entity->bodyhandle);
	my $wrapper = $entity->dup;
	$wrapper->make_multipart('mixed', Force => 1);
	my ($only) = $wrapper->parts;
	return undef unless $only;
	$wrapper->parts([]);
	$self->_rebuild_entity($ctx, $wrapper, $only);
	return $wrapper;
}

sub filter_single_part_messages { return 0; }

sub _do_add_parts
{
	my ($self, $ctx, $rebuilt) = @_;
	my $state = $self->_state($ctx);
	$rebuilt->make_multipart;
	foreach my $add (@{$state->{added_parts}}) {
		my ($entity, $offset) = @$add;
		$rebuilt->add_part($entity, $offset);
	}
	my @warnings = @{$state->{warnings}};
	return unless @warnings;
	my $wpart = MIME::Entity->build(
		Top         => 0,
		Type        => 'text/plain',
		Encoding    => '-suggest',
		Disposition => 'inline',
		Charset     => 'utf-8',
		Filename    => 'warnings.txt',
		'X-Mailer'  => undef,
		Data        => [ map { _utf8("$_\n") } @warnings ]);
	$rebuilt->add_part($wpart);
}

sub _utf8
{
	my ($s) = @_;
	return Encode::encode('UTF-8', $s, Encode::FB_PERLQQ);
}

sub _rebuild_entity
{
	my ($self, $ctx, $out, $in) = @_;
	return if $ctx->message_rejected;

	my @parts = $in->parts;
	my $type = lc($in->mime_type || 'text/plain');
	my $fname = $self->take_stab_at_filename($in);
	$fname = '' unless defined($fname);
	my $extension = ($fname =~ /(\.[^.]*)\z/) ? $1 : '';

	$in->head->mime_attr('Content-Type', $type) unless $in->head->mime_attr('content-type');

	my $state = $self->_state($ctx);
	$state->{action} = 'accept';
	delete $state->{replacement_entity};

	my $is_multipart = !defined($in->bodyhandle);
	my ($tag, $method) = $is_multipart
	    ? ('In filter_multipart routine', 'filter_multipart')
	    : ('In filter routine', 'filter');
	$self->push_tag($ctx, $tag);
	my $ret = $self->$method($ctx, $in, $fname, $extension, $type);
	$self->pop_tag($ctx);
	$ctx->action_from_response($ret);
	return if $ctx->message_rejected;

	my $action = $state->{action} || 'accept';
	if ($action eq 'drop') {
		$state->{changed} = 1;
		return;
	}
	if ($action eq 'replace' && $state->{replacement_entity}) {
		$state->{changed} = 1;
		$out->add_part($state->{replacement_entity});
		return;
	}
	if ($is_multipart) {
		my $sub = $in->dup;
		$sub->parts([]);
		$out->add_part($sub);
		foreach my $p (@parts) {
			$self->_rebuild_entity($ctx, $sub, $p);
		}
		return;
	}
	# Kept: the original part object, body file shared.
	$out->add_part($in);
	return;
}

sub filter_begin     { return; }
sub filter_multipart { return; }
sub filter           { return; }
sub filter_end       { return; }

sub action_accept
{
	my ($self, $ctx, $warning) = @_;
	return $self->action_accept_with_warning($ctx, $warning) if defined($warning);
	return;
}

sub action_accept_with_warning
{
	my ($self, $ctx, $warning) = @_;
	return unless $self->_walking($ctx, 'action_accept_with_warning');
	my $state = $self->_state($ctx);
	$state->{changed} = 1;
	push(@{$state->{warnings}}, $warning) if defined($warning);
	return 1;
}

sub action_drop
{
	my ($self, $ctx, $warning) = @_;
	return unless $self->_walking($ctx, 'action_drop');
	my $state = $self->_state($ctx);
	push(@{$state->{warnings}}, $warning) if defined($warning);
	$state->{action} = 'drop';
	return 1;
}

sub action_drop_with_warning
{
	my ($self, $ctx, $warning) = @_;
	return $self->action_drop($ctx, $warning);
}

sub action_replace_with_warning
{
	my ($self, $ctx, $warning) = @_;
	return unless $self->_walking($ctx, 'action_replace_with_warning');
	$warning = '' unless defined($warning);
	my $state = $self->_state($ctx);
	$state->{action} = 'replace';
	$state->{replacement_entity} = MIME::Entity->build(
		Top         => 0,
		Type        => 'text/plain',
		Encoding    => '-suggest',
		Charset     => 'utf-8',
		Disposition => 'inline',
		'X-Mailer'  => undef,
		Data        => [ _utf8("$warning\n") ]);
	return 1;
}

sub action_add_entity
{
	my ($self, $ctx, $entity, $offset) = @_;
	return unless $self->_walking($ctx, 'action_add_entity');
	return if $ctx->in_filter_wrapup;
	return unless $entity;
	$offset = -1 unless defined($offset);
	my $state = $self->_state($ctx);
	$state->{changed} = 1;
	push(@{$state->{added_parts}}, [$entity, $offset]);
	return 1;
}

sub action_add_part
{
	my ($self, $ctx, $type, $encoding, $data, $fname, $disposition, $offset) = @_;
	my $entity = MIME::Entity->build(
		Type       => $type,
		Top        => 0,
		'X-Mailer' => undef,
		Encoding   => $encoding,
		Data       => [ defined($data) ? $data : '' ]);
	my $head = $entity->head;
	$head->mime_attr('Content-Disposition' => $disposition) if defined($disposition);
	if (defined($fname)) {
		$head->mime_attr('Content-Disposition.filename' => $fname);
		$head->mime_attr('Content-Type.name' => $fname);
	}
	return $self->action_add_entity($ctx, $entity, $offset);
}

sub take_stab_at_filename
{
	my ($self, $entity) = @_;
	my $guess = eval { $entity->head->recommended_filename };
	return '' unless defined($guess);
	# Bytes, as upstream: encoded words are decoded but not converted.
	my $decoded = eval { scalar(MIME::Words::decode_mimewords($guess)) };
	return defined($decoded) ? $decoded : $guess;
}

1;

__END__

=head1 NAME

Mailmunge::Filter::Compat - part-by-part filtering in the style of MIMEDefang

=head1 SYNOPSIS

    package MyFilter;
    use strict;
    use warnings;
    use base qw(Mailmunge::Filter::Compat);

    sub filter
    {
        my ($self, $ctx, $part, $fname, $ext, $type) = @_;
        return $self->action_drop_with_warning($ctx, "Removed $fname: executables are not allowed")
            if lc($ext) eq '.exe';
        return $self->action_accept($ctx);
    }

    sub filter_end
    {
        my ($self, $ctx) = @_;
        $self->action_add_part($ctx, 'text/plain', '-suggest', "Scanned.\n",
                               'scanned.txt', 'inline');
        return;
    }

    package main;
    MyFilter->new()->run();
    1;

=head1 DESCRIPTION

This subclass of L<Mailmunge::Filter> supplies C<filter_message> and
splits its work into callbacks a MIMEDefang user knows.  Do not override
C<filter_message> in a subclass; override these instead (the defaults do
nothing):

=over 4

=item 1. C<filter_begin($ctx)>, once;

=item 2. C<filter_multipart(...)> for every multipart part and C<filter(...)>
for every other part, depth first in message order;

=item 3. C<filter_end($ctx)>, once, the last chance to change the body;

=item 4. C<filter_wrapup($ctx)> (from L<Mailmunge::Filter>), after the new
body was written: headers only, e.g. for DKIM signing.

=back

Every C<$ctx> field described for C<filter_message> in
L<Mailmunge::Filter> is available in all of them.  Any of them may return
a L<Mailmunge::Response>: TEMPFAIL, REJECT and DISCARD are applied with
C<< $ctx->action_from_response >>.  As soon as the message is bounced,
discarded or tempfailed, the remaining callbacks are skipped.

The part walk starts at the top-level entity's B<children>: the top-level
entity itself is never passed to C<filter> or C<filter_multipart>.  A
message that is not multipart therefore gets no C<filter> call at all,
and the outermost multipart gets no C<filter_multipart> call.  This is
upstream Mailmunge's behaviour, kept for compatibility; inspect
C<< $ctx->mime_entity >> in C<filter_begin> if you need the whole message,
or make C<filter_single_part_messages> return true (MIMEDefang did walk
single-part messages).

If any part was dropped, replaced or accepted with a warning, or a part
was added, the message is rebuilt: added parts are placed in the
top-level multipart (a single-part message is made multipart first),
all warnings go into a final inline C<warnings.txt> part (UTF-8 text),
and a multipart left with only one part is replaced by that part.  The
result becomes the new body (see C<new_mime_entity> in
L<Mailmunge::Context>).  When that changes the top-level C<Content-*>
headers other than C<Content-Type> (which the framework updates itself),
the changes are requested with C<action_change_header> /
C<action_delete_header>, so the MTA delivers the new body under matching
headers.

=head1 METHODS

=head2 filter_message($ctx)

Implements the walk described above.  Do not override it.

=head2 filter_begin($ctx)

Called once before the parts are examined.  The default does nothing.

=head2 filter_multipart($ctx, $part, $fname, $ext, $type)

Called for each C<multipart/*> part below the top level.  C<$part> is the
L<MIME::Entity>; C<$fname> is the part's suggested file name (from the
C<Content-Disposition> C<filename> or the C<Content-Type> C<name>
parameter, with RFC 2047 encoded words decoded to bytes; '' if none);
C<$ext> is its extension including the dot ('' if none); C<$type> is
the lower-case MIME type.  Dropping or replacing a multipart part
removes all its children with it.  The default does nothing (the part
is kept and its children are walked).

=head2 filter($ctx, $part, $fname, $ext, $type)

Called for each non-multipart part below the top level, with the same
arguments as C<filter_multipart>.  The default does nothing (the part is
kept).

=head2 filter_single_part_messages()

Returns false in this class, which keeps upstream Mailmunge's walk:
a message that is not multipart never reaches C<filter>.  Override it to
return true and such a message's body is passed to C<filter> as a part
(its C<Content-*> headers become the part's); dropping it leaves an
empty text part plus the warnings part, replacing it makes the
replacement the new body.

=head2 filter_end($ctx)

Called once after all parts were examined; parts may still be added
here.  The default does nothing.

=head2 action_accept($ctx [, $warning])

Keeps the current part (which is also what happens when no action is
called).  With a C<$warning>, behaves like C<action_accept_with_warning>.

=head2 action_accept_with_warning($ctx, $warning)

Keeps the current part and adds C<$warning> to the warnings part.

=head2 action_drop($ctx [, $warning])

Removes the current part (with all its children); a defined C<$warning>
goes into the warnings part.

=head2 action_drop_with_warning($ctx, $warning)

Removes the current part and adds C<$warning> to the warnings part.

=head2 action_replace_with_warning($ctx, $warning)

Replaces the current part by an inline C<text/plain; charset="utf-8">
part whose text is C<$warning>.  The warning is not repeated in the
warnings part.

=head2 action_add_entity($ctx, $entity [, $offset])

Queues the L<MIME::Entity> C<$entity> to be added to the top-level
multipart at index C<$offset> (default -1: at the end) when the message
is rebuilt.  Ignored in C<filter_wrapup>.

=head2 action_add_part($ctx, $type, $encoding, $data, $fname, $disposition [, $offset])

Builds a part of MIME type C<$type> holding C<$data> with transfer
encoding C<$encoding> (C<-suggest> lets MIME-tools choose), sets its
C<Content-Disposition> to C<$disposition> and its file name to C<$fname>
when those are defined, and queues it with C<action_add_entity>.

=head2 take_stab_at_filename($entity)

Returns the file name suggested by C<$entity>'s headers, with RFC 2047
encoded words decoded (to bytes, no character set conversion), or ''
if there is none.

=head1 CALLING ACTIONS OUTSIDE THE WALK

The part actions record their effect in state that exists only while
C<filter_message> runs.  Called at any other time they log a warning and
do nothing.

=cut
