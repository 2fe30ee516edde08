package Mailmunge::Action::Boilerplate;
# Placeholder for t/11-golden-replay.t when the real module is absent: the
# capture filter loads it, the golden cases never call it.
use strict;
use warnings;
sub new { my ($class, $filter) = @_; return bless { filter => $filter }, $class; }
1;
