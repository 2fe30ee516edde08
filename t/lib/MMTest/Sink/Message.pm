package MMTest::Sink::Message;
use strict;
use warnings;

use MMTest::Util qw(slurp);

=head1 NAME

MMTest::Sink::Message - one message captured by L<MMTest::Sink>

=head1 SYNOPSIS

    my $m = MMTest::Sink::Message->from_file($path);
    $m->mail_from;              # '<a@example.com>' as the MTA sent it
    [ $m->rcpts ];              # ('<b@example.org>', ...)
    $m->header('Subject');      # first value, unfolded
    [ $m->header('Received') ]; # all values in list context
    $m->body;                   # body with LF line ends

=head1 FILE LAYOUT

A message file starts with an envelope block, one item per line and
LF-terminated: C<HELO name>, C<MAIL argument>, one C<RCPT argument> per
recipient (arguments exactly as the MTA sent them after C<MAIL FROM:> /
C<RCPT TO:>, so including angle brackets and ESMTP parameters), then an
empty line, then the DATA bytes exactly as received after dot-unstuffing
(normally CRLF line ends).

=head1 METHODS

=head2 MMTest::Sink::Message->from_file($path)

Reads and parses one message file.

=cut

sub from_file {
    my ($class, $path) = @_;
    my $raw = slurp($path);
    my ($env, $data) = split /\n\n/, $raw, 2;
    my $self = bless { file => $path, data => $data // '', rcpts => [] }, $class;
    for my $line (split /\n/, $env) {
        my ($k, $v) = split / /, $line, 2;
        $v //= '';
        if    ($k eq 'HELO') { $self->{helo} = $v }
        elsif ($k eq 'MAIL') { $self->{mail_from} = $v }
        elsif ($k eq 'RCPT') { push @{ $self->{rcpts} }, $v }
    }
    return $self;
}

=head2 file / helo / mail_from / rcpts

The file the message was read from, the HELO name the delivering MTA
used, the MAIL FROM argument, and the list of RCPT TO arguments.

=cut

sub file      { $_[0]{file} }
sub helo      { $_[0]{helo} }
sub mail_from { $_[0]{mail_from} }
sub rcpts     { @{ $_[0]{rcpts} } }

=head2 rcpt_addresses / sender_address

The recipients / the sender without angle brackets and ESMTP parameters,
lower-cased, recipients sorted: convenient for comparisons.

=cut

sub _bare {
    my ($arg) = @_;
    my ($addr) = $arg =~ /^\s*<([^>]*)>/;
    $addr = (split ' ', $arg)[0] // '' unless defined $addr;
    return lc $addr;
}

sub rcpt_addresses { return sort map { _bare($_) } $_[0]->rcpts }
sub sender_address { return _bare($_[0]{mail_from} // '') }

=head2 raw

The DATA bytes as received (CRLF line ends).

=cut

sub raw { $_[0]{data} }

=head2 text

The DATA with CRLF turned into LF.

=cut

sub text {
    my ($self) = @_;
    (my $t = $self->{data}) =~ s/\r\n/\n/g;
    return $t;
}

=head2 header_block / body

The header section (LF line ends, without the separating empty line) and
the body (LF line ends).

=cut

sub _split {
    my ($self) = @_;
    my $t = $self->text;
    my ($h, $b) = $t =~ /\A(.*?)\n\n(.*)\z/s ? ($1, $2) : ($t, '');
    return ($h, $b);
}

sub header_block { ($_[0]->_split)[0] }
sub body         { ($_[0]->_split)[1] }

=head2 headers

All headers in order as a list of C<[Name, value]> pairs; values are
unfolded (the line break of a continuation line is removed) and the one
space after the colon is stripped.

=cut

sub headers {
    my ($self) = @_;
    my @out;
    for my $line (split /\n/, $self->header_block) {
        if ($line =~ /^[ \t]/ && @out) {
            $out[-1][1] .= $line;
        } elsif ($line =~ /^([^:\s]+):[ ]?(.*)$/) {
            push @out, [ $1, $2 ];
        }
    }
    return @out;
}

=head2 header($name)

In list context all values of the named header (case-insensitive), in
order; in scalar context the first one or undef.

=cut

sub header {
    my ($self, $name) = @_;
    my @v = map { $_->[1] } grep { lc $_->[0] eq lc $name } $self->headers;
    return wantarray ? @v : $v[0];
}

=head2 header_names

The header names in order (for checking positions of added headers).

=cut

sub header_names { map { $_->[0] } $_[0]->headers }

1;
