//! Logging for the milter: ident `mailmunge`, LOG_PID and the `-S`
//! facility (protocol/milter.md §8), through `crate::sys::logging` (syslog or
//! journald; protocol/logging.md). Setting `MAILMUNGE_LOG_STDERR` also copies
//! every line to stderr (tests and `-D` debugging read them there).
//!
//! `mm_log!(Warning, "text")` logs a plain line; per-message lines name
//! their queue id with `mm_log!(Warning, qid = q, "text")`: the line reads
//! `q: text` as upstream's, and the id also travels as the `queue_id`
//! field (journald's QUEUE_ID).

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

/// Installs the log subscriber (ident `mailmunge`, LOG_PID).
pub fn init(facility: libc::c_int) {
    crate::sys::daemon::open_syslog("mailmunge", facility);
}

/// Logs one line.
pub fn log(level: Level, msg: &str) {
    crate::sys::logging::emit(level.priority(), None, msg);
}

/// Logs one per-message line: `<qid>: <msg>`, with `qid` as a field
/// (`NOQUEUE` only as text).
pub fn log_qid(level: Level, qid: &str, msg: &str) {
    crate::sys::logging::emit(level.priority(), Some(qid), msg);
}

#[macro_export]
#[doc(hidden)]
macro_rules! mm_log {
    ($lvl:ident, qid = $qid:expr, $($arg:tt)*) => {
        $crate::milter::log::log_qid(
            $crate::milter::log::Level::$lvl,
            &$qid,
            &format!($($arg)*),
        )
    };
    ($lvl:ident, $($arg:tt)*) => {
        $crate::milter::log::log($crate::milter::log::Level::$lvl, &format!($($arg)*))
    };
}
