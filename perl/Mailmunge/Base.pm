package Mailmunge::Base;
use strict;
use warnings;

=head1 NAME

Mailmunge::Base - helper base class that generates simple accessors

=head1 SYNOPSIS

    package My::Thing;
    use base qw(Mailmunge::Base);
    __PACKAGE__->make_accessors(qw(colour size));

    my $t = bless {}, 'My::Thing';
    $t->colour('red');      # sets and returns 'red'
    $t->colour(undef);      # undef is ignored: still 'red'

=head1 CLASS METHODS

=head2 new(field => value, ...)

Creates an object and sets each field through the method of that name, in
the order given, so an unknown field dies as an unknown method.  With the
accessors below, undefined values leave a field unset.

=cut

sub new
{
	my ($class, @pairs) = @_;
	my $self = bless {}, $class;
	while (@pairs) {
		my $key = shift @pairs;
		my $val = shift @pairs;
		$self->$key($val);
	}
	return $self;
}

=head2 make_accessors(@names)

For every name in C<@names> that the class does not already define as a
method of its own, installs a getter/setter called C<name> that stores its
value in the object's hash under the key C<name>.  Calling it with a
defined argument stores that argument; an undefined argument leaves the
value alone.  Either way the current value is returned.

Methods the class wrote itself are left untouched, so a class can give one
field special behaviour (validation, say) and still list it here.

=cut

sub make_accessors
{
	my ($class, @names) = @_;
	no strict 'refs';
	foreach my $name (@names) {
		# Only look in the class's own symbol table: an inherited
		# method of the same name must not stop the accessor.
		next if defined(&{"${class}::${name}"});
		*{"${class}::${name}"} = sub {
			my $self = shift;
			$self->{$name} = $_[0] if defined($_[0]);
			return $self->{$name};
		};
	}
	return;
}

1;
