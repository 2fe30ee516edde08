# Every extension module loads, has well-formed POD, and names each of its
# public subs in a POD heading or item.
use strict;
use warnings;
use Test::More;
use Pod::Checker;

my %modules = (
	'Mailmunge::Filter::Compat'          => 'perl/Mailmunge/Filter/Compat.pm',
	'Mailmunge::Action'                  => 'perl/Mailmunge/Action.pm',
	'Mailmunge::Test'                    => 'perl/Mailmunge/Test.pm',
	'Mailmunge::Action::Boilerplate'     => 'perl/Mailmunge/Action/Boilerplate.pm',
	'Mailmunge::Action::DKIMSigner'      => 'perl/Mailmunge/Action/DKIMSigner.pm',
	'Mailmunge::Action::Stream'          => 'perl/Mailmunge/Action/Stream.pm',
	'Mailmunge::Test::GetMX'             => 'perl/Mailmunge/Test/GetMX.pm',
	'Mailmunge::Test::Greylist'          => 'perl/Mailmunge/Test/Greylist.pm',
	'Mailmunge::Test::Rspamd'            => 'perl/Mailmunge/Test/Rspamd.pm',
	'Mailmunge::Test::SMTPForward'       => 'perl/Mailmunge/Test/SMTPForward.pm',
	'Mailmunge::Test::SpamAssassin'      => 'perl/Mailmunge/Test/SpamAssassin.pm',
	'Test::Mailmunge::Filter'            => 'perl/Test/Mailmunge/Filter.pm',
	'Test::Mailmunge::SMTPServer'        => 'perl/Test/Mailmunge/SMTPServer.pm',
	'Test::Mailmunge::Tmpdir'            => 'perl/Test/Mailmunge/Tmpdir.pm',
	'Test::Mailmunge::Utils'             => 'perl/Test/Mailmunge/Utils.pm',
	'Test::Mailmunge::RegressionUtils'   => 'perl/Test/Mailmunge/RegressionUtils.pm',
);
# Subs the two main-package helper modules define.
my %main_subs = (
	'Test::Mailmunge::Utils' => [qw(make_test_context mailmunge_program_path start_multiplexor stop_multiplexor
				       mm_mx_ctrl results_has_lines write_commands_file set_context_fields_from_msg
				       parse_and_copy_msg dns_available)],
	'Test::Mailmunge::RegressionUtils' => [qw(slurp_as_mime_entity slurp_body_only server_running_postfix
						 get_smtp_server_ip smtp_send maildrop_msg_dir clean_maildrop_dir
						 maildrop_msg_path quarantine_dir clean_quarantine_dir first_quarantined_msg
						 make_msg wait_for_files flush_mta_queues clean_mta_queues get_mta_hold_queue)],
);

foreach my $pkg (sort keys %modules) {
	my $file = $modules{$pkg};
	(my $req = $file) =~ s{^perl/}{};
	ok(eval { require $req; 1 }, "$pkg loads") or diag($@);
	my $checker = Pod::Checker->new(-warnings => 1);
	open(my $null, '>', '/dev/null') or die;
	$checker->parse_from_file($file, $null);
	is($checker->num_errors, 0, "$file: POD has no errors");

	open(my $fh, '<', $file) or die;
	my $pod = join('', grep { /^=(head\d|item)\s/ } <$fh>);
	close($fh);
	my %doc = map { $_ => 1 } ($pod =~ /(\w+)/g);
	my @subs;
	if ($main_subs{$pkg}) {
		@subs = @{$main_subs{$pkg}};
		ok(defined(&{"main::$_"}), "main::$_ defined") foreach @subs;
	} else {
		no strict 'refs';
		@subs = grep { !/^_/ && !/^[A-Z][A-Za-z0-9]*_/ && !/^[A-Z0-9_]+\z/ && defined(&{"${pkg}::$_"}) && !/^(BEGIN|END|DESTROY|ISA|import)$/ }
		    keys %{"${pkg}::"};
		# Only subs defined in this file, not imported helpers.
		require B;
		@subs = grep { my $n = $_; (eval { B::svref_2object(\&{"${pkg}::$n"})->GV->STASH->NAME } // '') eq $pkg } @subs;
	}
	my @missing = grep { !$doc{$_} } sort @subs;
	is_deeply(\@missing, [], "$pkg: every public sub documented");
}
done_testing();
