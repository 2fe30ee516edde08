//! `/etc/default/mailmunge` (src/config/envfile.rs) and what the start helper
//! makes of it (src/config/startargs.rs): the assignments, each daemon's command
//! line, and that command line read back by the daemon's option parser.

use std::ffi::OsString;

use mailmunge::config::envfile;
use mailmunge::config::startargs::{argv, extra_env, shell_line, Daemon, Vars};

pub fn run(data: &[u8]) {
    let base = |n: &str| match n {
        "HOME" => Some(OsString::from("/root")),
        "SPOOLDIR" => Some(OsString::from("/var/spool/mailmunge")),
        _ => None,
    };
    let Ok(assignments) = envfile::parse(data, &base) else {
        return;
    };
    let lines = 1 + data.iter().filter(|&&b| b == b'\n').count();
    let mut vars = Vars::new();
    let mut last = 0;
    for a in &assignments {
        let name = a.name.as_bytes();
        assert!(!name.is_empty() && !name[0].is_ascii_digit(), "{a:?}");
        assert!(name.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'_'), "{a:?}");
        assert!(a.line >= last && a.line <= lines, "{a:?}");
        last = a.line;
        vars.set(&a.name, a.value.clone());
    }
    let vars = vars.with_launcher_defaults();
    let _ = extra_env(&vars);
    for daemon in [Daemon::Milter, Daemon::Multiplexor] {
        for foreground in [false, true] {
            let args = argv(daemon, &vars, foreground);
            let _ = shell_line(&args);
            let mut full = vec![OsString::from(daemon.program())];
            full.extend(args);
            match daemon {
                Daemon::Milter => {
                    let s = full.iter().map(|a| a.to_string_lossy().into_owned());
                    let _ = mailmunge::milter::options::Options::parse_args(s);
                }
                Daemon::Multiplexor => {
                    let _ = mailmunge::mux::Options::parse(full);
                }
            }
        }
    }
}
