//! Logging for the milter: syslog with ident `mailmunge`, LOG_PID and the
//! `-S` facility (milter.md §8). Setting `MAILMUNGE_LOG_STDERR` also copies
//! every line to stderr (tests and `-D` debugging read them there).

use std::ffi::CString;
use std::sync::OnceLock;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Error,
    Warning,
    Info,
    Debug,
}

impl Level {
    fn priority(self) -> libc::c_int {
        match self {
            Level::Error => libc::LOG_ERR,
            Level::Warning => libc::LOG_WARNING,
            Level::Info => libc::LOG_INFO,
            Level::Debug => libc::LOG_DEBUG,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Level::Error => "err",
            Level::Warning => "warning",
            Level::Info => "info",
            Level::Debug => "debug",
        }
    }
}

static STDERR_COPY: OnceLock<bool> = OnceLock::new();
static IDENT: OnceLock<CString> = OnceLock::new();

/// Maps a facility name (`mail`, `LOG_MAIL`, any case) to its value.
pub fn facility_by_name(name: &str) -> Option<libc::c_int> {
    let lower = name.to_ascii_lowercase();
    let n = lower.strip_prefix("log_").unwrap_or(&lower);
    Some(match n {
        "auth" | "security" => libc::LOG_AUTH,
        "authpriv" => libc::LOG_AUTHPRIV,
        "cron" => libc::LOG_CRON,
        "daemon" => libc::LOG_DAEMON,
        "ftp" => libc::LOG_FTP,
        "kern" => libc::LOG_KERN,
        "lpr" => libc::LOG_LPR,
        "mail" => libc::LOG_MAIL,
        "news" => libc::LOG_NEWS,
        "syslog" => libc::LOG_SYSLOG,
        "user" => libc::LOG_USER,
        "uucp" => libc::LOG_UUCP,
        "local0" => libc::LOG_LOCAL0,
        "local1" => libc::LOG_LOCAL1,
        "local2" => libc::LOG_LOCAL2,
        "local3" => libc::LOG_LOCAL3,
        "local4" => libc::LOG_LOCAL4,
        "local5" => libc::LOG_LOCAL5,
        "local6" => libc::LOG_LOCAL6,
        "local7" => libc::LOG_LOCAL7,
        _ => return None,
    })
}

/// Opens the syslog connection.
pub fn init(facility: libc::c_int) {
    let ident = IDENT.get_or_init(|| CString::new("mailmunge").expect("no NUL"));
    // SAFETY: the ident lives for the whole process (static OnceLock).
    unsafe { libc::openlog(ident.as_ptr(), libc::LOG_PID, facility) };
    STDERR_COPY.get_or_init(|| std::env::var_os("MAILMUNGE_LOG_STDERR").is_some());
}

/// Logs one line.
pub fn log(level: Level, msg: &str) {
    let c = CString::new(msg.replace('\0', " ")).expect("NULs replaced");
    // SAFETY: "%s" with a valid C string.
    unsafe { libc::syslog(level.priority(), c"%s".as_ptr(), c.as_ptr()) };
    if *STDERR_COPY.get_or_init(|| std::env::var_os("MAILMUNGE_LOG_STDERR").is_some()) {
        eprintln!("mailmunge[{}]: {}: {}", std::process::id(), level.name(), msg);
    }
}

#[macro_export]
#[doc(hidden)]
macro_rules! mm_log {
    ($lvl:ident, $($arg:tt)*) => {
        $crate::milter::log::log($crate::milter::log::Level::$lvl, &format!($($arg)*))
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facilities() {
        assert_eq!(facility_by_name("mail"), Some(libc::LOG_MAIL));
        assert_eq!(facility_by_name("LOG_LOCAL3"), Some(libc::LOG_LOCAL3));
        assert_eq!(facility_by_name("Security"), Some(libc::LOG_AUTH));
        assert_eq!(facility_by_name("bogus"), None);
    }
}
