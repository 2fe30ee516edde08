#!/usr/bin/env perl
# Test filter: overrides _reply_to_mx and prints replies itself, as a
# copy of upstream's code would; STDOUT must then stay the reply pipe.
package OwnReply;
use base qw(Mailmunge::Filter);
sub _reply_to_mx { my ($self, $msg) = @_; STDOUT->printflush("$msg\n"); }
package main;
OwnReply->new()->run();
1;
