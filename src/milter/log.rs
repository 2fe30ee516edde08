//! Logging for the milter: syslog with ident `mailmunge`, LOG_PID and the
//! `-S` facility (milter.md §8), through `crate::daemon`. Setting
//! `MAILMUNGE_LOG_STDERR` also copies every line to stderr (tests and `-D`
//! debugging read them there).

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
}

/// Opens the syslog connection (ident `mailmunge`, LOG_PID).
pub fn init(facility: libc::c_int) {
    crate::daemon::open_syslog("mailmunge", facility);
}

/// Logs one line.
pub fn log(level: Level, msg: &str) {
    crate::daemon::log(level.priority(), msg);
}

#[macro_export]
#[doc(hidden)]
macro_rules! mm_log {
    ($lvl:ident, $($arg:tt)*) => {
        $crate::milter::log::log($crate::milter::log::Level::$lvl, &format!($($arg)*))
    };
}
