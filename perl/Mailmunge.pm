package Mailmunge;
use strict;
use warnings;

# The version of the upstream release whose Perl API these modules
# reproduce.  Filters and plugins compare against it, so it stays the
# upstream number.
our $VERSION = '3.09';

1;

__END__

=head1 NAME

Mailmunge - Perl side of the Mailmunge mail filtering framework

=head1 SYNOPSIS

    use Mailmunge;
    print "Running under Mailmunge $Mailmunge::VERSION\n";

=head1 DESCRIPTION

This module only carries C<$Mailmunge::VERSION>.  The interesting classes are
L<Mailmunge::Filter> (the base class of every filter), L<Mailmunge::Context>
(everything known about the message or SMTP stage being filtered) and
L<Mailmunge::Response> (the verdict a callback returns).

A filter is a Perl script, normally F</etc/mailmunge/mailmunge-filter.pl>,
that defines a subclass of L<Mailmunge::Filter>, creates one object of it
and calls C<run> on it.  The multiplexor starts the script as a worker
process and sends it one command per line; the filter object turns each
command into a call to one of its C<filter_*> methods.

=head1 SEE ALSO

L<Mailmunge::Filter>, L<Mailmunge::Context>, L<Mailmunge::Response>,
L<Mailmunge::Constants>

=cut
