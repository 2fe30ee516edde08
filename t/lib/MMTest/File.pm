package MMTest::File;
use strict;
use warnings;

use Exporter 'import';

our @EXPORT_OK = qw(slurp slurp_if_exists spew);

=head1 NAME

MMTest::File - read and write whole files in tests

=head1 SYNOPSIS

    use MMTest::File qw(slurp slurp_if_exists spew);

    spew("$dir/INPUTMSG", $message);
    is(slurp("$dir/RESULTS"), "F\n");
    is(slurp_if_exists("$dir/NEWBODY"), undef, 'body not replaced');

=head1 DESCRIPTION

The one place the tests read and write whole files.  Loading it has no
side effects (unlike MMTest::Util, which also re-exports these), so unit
tests and test libraries can use it.  Files are read and written as bytes.

=head1 FUNCTIONS

=head2 slurp($path)

Returns the whole file as bytes (C<''> when it is empty); dies with the
path and the reason when it cannot be opened.

=cut

sub slurp {
    my ($path) = @_;
    open my $fh, '<:raw', $path or die "open $path: $!";
    local $/;
    my $data = <$fh>;
    close $fh;
    return $data // '';
}

=head2 slurp_if_exists($path)

Like slurp, but returns undef when there is no such file (for files whose
absence is an expected outcome).

=cut

sub slurp_if_exists {
    my ($path) = @_;
    return undef unless -e $path;
    return slurp($path);
}

=head2 spew($path, $bytes [, $mode])

Writes $bytes to $path (created or truncated), chmods it to $mode when one
is given, and returns $path; dies on any error.

=cut

sub spew {
    my ($path, $bytes, $mode) = @_;
    open my $fh, '>:raw', $path or die "create $path: $!";
    print {$fh} $bytes or die "write $path: $!";
    close $fh or die "close $path: $!";
    chmod $mode, $path or die "chmod $path: $!" if defined $mode;
    return $path;
}

1;
