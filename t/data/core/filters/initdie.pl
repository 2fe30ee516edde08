#!/usr/bin/env perl
# Test filter: initialize() fails, so the worker must exit without serving.
package InitDie;
use base qw(Mailmunge::Filter);
sub initialize { die("cannot reach the database\n"); }
package main;
InitDie->new()->run();
1;
