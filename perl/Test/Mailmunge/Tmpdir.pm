use strict;
use warnings;

package Test::Mailmunge::Tmpdir;

use File::Temp qw(tempdir);
use File::Path qw(make_path remove_tree);
use File::Spec;

# A scratch directory under t/tmp that disappears with the object.  When the
# tests run as root, the multiplexor's workers run as an unprivileged user
# and must be able to write into it, so it is handed to that user.

sub new
{
	my ($class) = @_;
	my $base = File::Spec->rel2abs(File::Spec->catdir('t', 'tmp'));
	make_path($base, { mode => 0755 }) unless -d $base;
	die("Test::Mailmunge::Tmpdir: cannot create $base: $!\n") unless -d $base;
	my $dir = tempdir('mmtest-XXXXXXXX', DIR => $base);
	if ($> == 0) {
		chmod(0755, $base);
		# The workers run as an unprivileged user: they own the
		# directory; nobody else can write to it.
		my ($uid, $gid) = (getpwnam($ENV{MAILMUNGE_TEST_USER} || 'mailmunge'))[2, 3];
		if (defined($uid)) {
			chown($uid, $gid, $dir);
			chmod(0750, $dir);
		}
	}
	return bless { dir => $dir, cleanup => 1, pid => $$ }, $class;
}

sub dir
{
	my ($self) = @_;
	return $self->{dir};
}

sub DESTROY
{
	my ($self) = @_;
	# A forked child (e.g. a test SMTP server) must not delete its
	# parent's directory when it exits.
	return unless $self->{cleanup} && defined($self->{pid}) && $self->{pid} == $$;
	remove_tree($self->{dir}) if defined($self->{dir}) && -d $self->{dir};
}

1;

__END__

=head1 NAME

Test::Mailmunge::Tmpdir - a temporary directory for Mailmunge unit tests

=head1 SYNOPSIS

    use Test::Mailmunge::Tmpdir;
    my $tmp = Test::Mailmunge::Tmpdir->new();
    my $dir = $tmp->{dir};
    # ... use $dir ...
    # the directory is removed when $tmp goes out of scope;
    # set $tmp->{cleanup} = 0 to keep it for a post-mortem.

=head1 DESCRIPTION

Creates C<t/tmp> below the current directory if needed and a fresh,
uniquely named directory inside it (File::Temp picks an unpredictable
name).  When the test runs as root the new directory is given to the
user the workers run as (C<$MAILMUNGE_TEST_USER>, or C<mailmunge>), mode
0750, so that they can create files in it and nobody else can.

=head1 METHODS

=head2 Test::Mailmunge::Tmpdir->new()

Creates the directory and returns an object whose C<dir> key holds its
absolute path and whose C<cleanup> key is 1.

=head2 dir()

Returns the absolute path of the directory (the same as C<< $obj->{dir} >>).

=head2 DESTROY

Removes the directory tree, unless C<< $obj->{cleanup} >> was set to a
false value, or the object is being destroyed in a forked child process.

=cut
