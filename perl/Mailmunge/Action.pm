use strict;
use warnings;

package Mailmunge::Action;

# Base class of the plug-ins that do something to a message
# (Mailmunge::Action::*).  A plug-in keeps a reference to the filter that
# created it so it can log through the filter's own log method.

sub new
{
	my ($class, $filter) = @_;
	return bless { filter => $filter }, $class;
}

sub filter
{
	my ($self) = @_;
	return $self->{filter};
}

1;

__END__

=head1 NAME

Mailmunge::Action - common base class of Mailmunge action plug-ins

=head1 SYNOPSIS

    package My::Action;
    use base qw(Mailmunge::Action);

    sub do_something {
        my ($self, $ctx) = @_;
        $self->filter->log($ctx, 'info', 'doing something');
    }

    # in the filter:
    my $action = My::Action->new($filter);

=head1 DESCRIPTION

Plug-ins that modify or resend a message derive from this class.  It
provides only a constructor and an accessor for the filter object the
plug-in works for; the plug-ins add their own methods.

=head1 METHODS

=head2 Class->new($filter)

Creates the plug-in object (a blessed hash) and remembers C<$filter>
(normally a L<Mailmunge::Filter> subclass instance) under the key
C<filter>.

=head2 filter()

Returns the filter object given to C<new>.

=head1 SEE ALSO

L<Mailmunge::Test>, L<Mailmunge::Filter>

=cut
