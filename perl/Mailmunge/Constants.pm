package Mailmunge::Constants;
use strict;
use warnings;

=head1 NAME

Mailmunge::Constants - installation paths known to the Perl modules

=head1 SYNOPSIS

    use Mailmunge::Constants;
    my $spool = Mailmunge::Constants->get('Path:SPOOLDIR');
    my $sm    = Mailmunge::Constants->get_program_path('sendmail');

=head1 DESCRIPTION

Keys and their built-in defaults:

    Path:CONFDIR        /etc/mailmunge
    Path:SPOOLDIR       /var/spool/mailmunge
    Path:QUARANTINEDIR  /var/spool/mm-quarantine
    Path:SENDMAIL       /usr/sbin/sendmail

=head2 Changing the paths

There are two ways, and the first one that applies wins:

=over

=item 1. Environment

C<MAILMUNGE_CONFDIR>, C<MAILMUNGE_SPOOLDIR>, C<MAILMUNGE_QUARANTINEDIR> and
C<MAILMUNGE_SENDMAIL>, when set to a non-empty value at the time this module
is loaded, replace the corresponding default.  Workers inherit the
multiplexor's environment, so setting them for the daemon is enough.

=item 2. Install-time substitution

Each default below sits on a line of its own ending in a marker comment
such as C<# @SPOOLDIR@>.  An installer rewrites the quoted value on the
line carrying the marker, for example

    sed -i "s|'[^']*',\(\s*# @SPOOLDIR@\)|'/srv/mm-spool',\1|" Constants.pm

=back

The spool directory must match the C<-z> directory given to the daemons:
workers change into it before every command.

=cut

my %DEFAULTS = (
	'Path:CONFDIR'       => '/etc/mailmunge',            # @CONFDIR@
	'Path:SPOOLDIR'      => '/var/spool/mailmunge',      # @SPOOLDIR@
	'Path:QUARANTINEDIR' => '/var/spool/mm-quarantine',  # @QUARANTINEDIR@
	'Path:SENDMAIL'      => '/usr/sbin/sendmail',        # @SENDMAIL@
);

my %ENV_NAME = (
	'Path:CONFDIR'       => 'MAILMUNGE_CONFDIR',
	'Path:SPOOLDIR'      => 'MAILMUNGE_SPOOLDIR',
	'Path:QUARANTINEDIR' => 'MAILMUNGE_QUARANTINEDIR',
	'Path:SENDMAIL'      => 'MAILMUNGE_SENDMAIL',
);

my %VALUES;
foreach my $key (keys %DEFAULTS) {
	my $env = $ENV{$ENV_NAME{$key}};
	$VALUES{$key} = (defined($env) && $env ne '') ? $env : $DEFAULTS{$key};
}

# Cache of program name => absolute path, filled by get_program_path.
my %PROGRAM_PATH;

=head1 CLASS METHODS

=head2 get($name)

Returns the value stored under C<$name>, or undef for an unknown name.

=cut

sub get
{
	my ($class, $name) = @_;
	return undef unless defined($name);
	return $VALUES{$name};
}

=head2 get_program_path($program)

Returns an absolute path to an executable called C<$program>, or undef when
none is found.  For C<sendmail> the configured C<Path:SENDMAIL> is tried
first; otherwise (or if that is not executable) every directory of
C<$PATH> is searched in order.  Answers are remembered for the life of the
process.

=cut

sub get_program_path
{
	my ($class, $program) = @_;
	return undef unless defined($program) && $program ne '';
	return $PROGRAM_PATH{$program} if exists($PROGRAM_PATH{$program});

	my $configured = $VALUES{'Path:' . uc($program)};
	if (defined($configured) && -f $configured && -x _) {
		return $PROGRAM_PATH{$program} = $configured;
	}
	foreach my $dir (split(/:/, $ENV{PATH} // '')) {
		next if $dir eq '';
		my $candidate = "$dir/$program";
		if (-f $candidate && -x _) {
			return $PROGRAM_PATH{$program} = $candidate;
		}
	}
	return undef;
}

# Private, for tests: override one value for the rest of the process.
# Test::Mailmunge::Filter points the spool and quarantine dirs at its
# temporary directory this way.
sub _set
{
	my ($class, $name, $value) = @_;
	$VALUES{$name} = $value;
	delete $PROGRAM_PATH{lc($1)} if $name =~ /^Path:(.*)$/;
	return $value;
}

1;
