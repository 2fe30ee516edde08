//! Configuration that reaches the daemons from outside their command line:
//! `/etc/default/mailmunge` read as assignments ([`envfile`]) and turned into
//! each daemon's arguments ([`startargs`]) by `mailmunge-start`, whose own
//! command line is [`startopts`] (protocol/deployment.md §8).

pub mod envfile;
pub mod startargs;
pub mod startopts;
