//! Process plumbing of the daemons: daemonising, privileges, PID and lock
//! files ([`daemon`]), readiness to systemd ([`sdnotify`]), log output
//! ([`logging`]) and blocking file work kept off the runtime
//! ([`blocking`]).

pub mod blocking;
pub mod daemon;
pub mod logging;
pub mod sdnotify;
