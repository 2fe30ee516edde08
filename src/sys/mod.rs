//! Process plumbing of the daemons: daemonising, privileges, PID and lock
//! files ([`daemon`]), readiness to systemd ([`sdnotify`]), log output
//! ([`logging`]), blocking file work kept off the runtime ([`blocking`])
//! and handles that signal one process only ([`process`]).

pub mod blocking;
pub mod daemon;
pub mod logging;
pub mod process;
pub mod sdnotify;
