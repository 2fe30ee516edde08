package MMTest::Teardown;
use strict;
use warnings;

# Compiled before this module's END block, so that block runs before
# File::Temp's (END blocks run last-defined first).
use File::Temp ();
use Scalar::Util ();

=head1 NAME

MMTest::Teardown - stop what a test started before its directories are removed

=head1 SYNOPSIS

    use MMTest::Teardown;
    my $self = bless { ... }, $class;
    MMTest::Teardown->register($self, 'stop');   # $self->stop at exit, if still alive

=head1 DESCRIPTION

A test that dies leaves its objects to global destruction, which comes
after File::Temp's END block has removed their private directories: a
Postfix with no configuration left cannot be stopped, a mounted spool
stays mounted, daemons outlive their files.  This module's END block
calls the registered method of every object still alive, in the order
they were registered, and runs before File::Temp's clean-up because this
module compiles File::Temp first.

The registry holds weak references: an object that is freed (and stops
itself in C<DESTROY>) drops out by itself.  Only the process that
registered an object stops it, so a forked child's exit leaves its
parent's daemons alone.

=head1 METHODS

=head2 MMTest::Teardown->register($object, $method)

Calls C<< $object->$method >> at exit unless the object was freed first.
Objects are stopped in registration order, so an owner registered
before the parts it creates is stopped before them.

=cut

my @LIVE;    # { obj => weak ref, method => name, pid => registering process }

sub register {
    my ($class, $obj, $method) = @_;
    @LIVE = grep { defined $_->{obj} } @LIVE;
    push @LIVE, { obj => $obj, method => $method, pid => $$ };
    Scalar::Util::weaken($LIVE[-1]{obj});
    return;
}

END {
    local ($., $@, $!, $^E, $?);
    for my $e (@LIVE) {
        next unless defined $e->{obj} && $e->{pid} == $$;
        my $method = $e->{method};
        eval { $e->{obj}->$method; 1 } or warn "MMTest::Teardown: $method: $@";
    }
}

1;
