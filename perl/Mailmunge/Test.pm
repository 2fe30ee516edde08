use strict;
use warnings;

package Mailmunge::Test;

# Base class of the plug-ins that examine a message or an SMTP stage and
# give a verdict (Mailmunge::Test::*).  It shares everything with
# Mailmunge::Action; the separate name only tells the two families apart.
use base qw(Mailmunge::Action);

1;

__END__

=head1 NAME

Mailmunge::Test - common base class of Mailmunge test plug-ins

=head1 SYNOPSIS

    package My::Test;
    use base qw(Mailmunge::Test);

    sub looks_bad {
        my ($self, $ctx) = @_;
        return Mailmunge::Response->CONTINUE();
    }

=head1 DESCRIPTION

Plug-ins that inspect a message (or a sender, recipient or client) and
return a verdict derive from this class.  It is a subclass of
L<Mailmunge::Action> and adds nothing: C<new($filter)> and C<filter()>
are inherited from there.

=head1 METHODS

=head2 Class->new($filter)

Inherited from L<Mailmunge::Action>: stores C<$filter> under the key
C<filter> and returns the new object.

=head2 filter()

Inherited from L<Mailmunge::Action>: returns the stored filter.

=cut
