//! Log output of the daemons, through `tracing` (protocol/logging.md).
//!
//! Code logs with [`emit`] (wrapped by `daemon::log` and the milter's
//! `mm_log!`), which fires one `tracing` event per line carrying:
//! - `message`: the line exactly as syslog shows it — per-message lines
//!   keep upstream's `<qid>: ` prefix because operators grep for it;
//! - `queue_id`: the MTA queue id, for per-message lines with a real one;
//! - `syslog_priority`: only for priorities `tracing` has no level for
//!   (EMERG, ALERT, CRIT, NOTICE), so syslog still gets the exact one.
//!
//! [`init`] installs the subscriber: syslog *or* journald (never both, so
//! no line is stored twice), plus a copy on stderr when
//! `MAILMUNGE_LOG_STDERR` is set, in glibc's LOG_PERROR format
//! `ident[pid]: text` that the tests read.

use std::ffi::{CStr, CString};
use std::sync::Mutex;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

/// Target of the events fired by [`emit`].
pub const TARGET: &str = "mailmunge";

/// The queue id milter lines use before the MTA has assigned one; such
/// lines keep the text prefix but carry no `queue_id` field.
pub const NOQUEUE: &str = "NOQUEUE";

/// Where lines go besides the optional stderr copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Syslog,
    Journald,
}

/// The tracing level for a syslog priority, and whether the priority
/// must travel in a `syslog_priority` field to stay exact.
fn level_of(priority: libc::c_int) -> (Level, bool) {
    match priority & libc::LOG_PRIMASK {
        libc::LOG_ERR => (Level::ERROR, false),
        libc::LOG_WARNING => (Level::WARN, false),
        libc::LOG_INFO => (Level::INFO, false),
        libc::LOG_DEBUG => (Level::DEBUG, false),
        libc::LOG_NOTICE => (Level::INFO, true),
        _ => (Level::ERROR, true), // EMERG, ALERT, CRIT
    }
}

/// The syslog priority of a level (for events without `syslog_priority`).
fn priority_of(level: &Level) -> libc::c_int {
    match *level {
        Level::ERROR => libc::LOG_ERR,
        Level::WARN => libc::LOG_WARNING,
        Level::INFO => libc::LOG_INFO,
        _ => libc::LOG_DEBUG,
    }
}

/// The text of a line: `<qid>: <msg>` for per-message lines.
pub fn render(qid: Option<&str>, msg: &str) -> String {
    match qid {
        Some(q) => format!("{q}: {msg}"),
        None => msg.to_string(),
    }
}

/// Logs one line with a syslog priority, prefixed with `qid` when given
/// (see the module comment for the event's fields). Before [`init`] (no
/// subscriber yet) it goes straight to syslog, as upstream logs the few
/// start-up errors that happen before openlog.
pub fn emit(priority: libc::c_int, qid: Option<&str>, msg: &str) {
    let text = render(qid, &msg.replace('\0', ""));
    let subscribed =
        tracing::dispatcher::get_default(|d| !d.is::<tracing::subscriber::NoSubscriber>());
    if !subscribed {
        raw_syslog(priority, &text);
        return;
    }
    let queue_id = qid.filter(|q| *q != NOQUEUE && !q.is_empty());
    let (level, exact) = level_of(priority);
    let syslog_priority = exact.then_some((priority & libc::LOG_PRIMASK) as i64);
    macro_rules! fire {
        ($lvl:expr) => {
            tracing::event!(
                target: TARGET,
                $lvl,
                queue_id,
                syslog_priority,
                message = text.as_str()
            )
        };
    }
    match level {
        Level::ERROR => fire!(Level::ERROR),
        Level::WARN => fire!(Level::WARN),
        Level::INFO => fire!(Level::INFO),
        _ => fire!(Level::DEBUG),
    }
}

fn raw_syslog(priority: libc::c_int, text: &str) {
    let c = CString::new(text).unwrap_or_default();
    let fmt: &CStr = c"%s";
    // SAFETY: a constant "%s" format with the one NUL-terminated string it
    // asks for; both outlive the call. Neither std nor nix wraps syslog(3).
    unsafe { libc::syslog(priority, fmt.as_ptr(), c.as_ptr()) };
}

// ---------------------------------------------------------------- fields

/// What the layers take from an event.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Line {
    pub priority: libc::c_int,
    pub text: String,
    pub queue_id: Option<String>,
}

#[derive(Default)]
struct LineVisitor {
    message: String,
    queue_id: Option<String>,
    priority: Option<i64>,
    /// Fields of events from other crates, appended as ` name=value`.
    extra: String,
}

impl Visit for LineVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message = value.to_string(),
            "queue_id" => self.queue_id = Some(value.to_string()),
            n => self.extra.push_str(&format!(" {n}={value}")),
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        match field.name() {
            "syslog_priority" => self.priority = Some(value),
            _ => self.record_debug(field, &value),
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => self.message = format!("{value:?}"),
            "queue_id" => self.queue_id = Some(format!("{value:?}")),
            n => self.extra.push_str(&format!(" {n}={value:?}")),
        }
    }
}

/// Extracts the syslog line of an event.
pub fn line_of(event: &Event<'_>) -> Line {
    let mut v = LineVisitor::default();
    event.record(&mut v);
    let priority = v
        .priority
        .map(|p| p as libc::c_int)
        .unwrap_or_else(|| priority_of(event.metadata().level()));
    Line {
        priority,
        text: v.message + &v.extra,
        queue_id: v.queue_id,
    }
}

/// Our events at every level; other crates' (indymilter) only from WARN
/// up, as libmilter logs its own errors under the daemon's ident.
fn wanted(meta: &tracing::Metadata<'_>) -> bool {
    meta.target() == TARGET
        || meta.target().starts_with("mailmunge::")
        || *meta.level() <= Level::WARN
}

// ---------------------------------------------------------------- layers

/// The outermost layer: turns [`wanted`] into each call site's cached
/// interest, so an unwanted event (indymilter's `trace!` per milter
/// command) stops at its call site instead of being dispatched to every
/// layer and dropped there (protocol/milter.md §18.5).
pub struct WantedOnly;

impl<S: Subscriber> Layer<S> for WantedOnly {
    fn register_callsite(
        &self,
        meta: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        if wanted(meta) {
            tracing::subscriber::Interest::always()
        } else {
            tracing::subscriber::Interest::never()
        }
    }

    fn enabled(&self, meta: &tracing::Metadata<'_>, _ctx: Context<'_, S>) -> bool {
        wanted(meta)
    }
}

/// Sends each event's line to syslog (or, in tests, to any function).
pub struct SyslogLayer<F> {
    sink: F,
}

impl<F: Fn(libc::c_int, &str) + Send + Sync + 'static> SyslogLayer<F> {
    pub fn new(sink: F) -> Self {
        SyslogLayer { sink }
    }
}

/// The real syslog sink.
pub fn syslog_sink(priority: libc::c_int, text: &str) {
    raw_syslog(priority, text)
}

impl<S: Subscriber, F: Fn(libc::c_int, &str) + Send + Sync + 'static> Layer<S> for SyslogLayer<F> {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        if wanted(event.metadata()) {
            let l = line_of(event);
            (self.sink)(l.priority, &l.text);
        }
    }
}

/// Copies each line to a writer as `ident[pid]: text\n`, the layout of
/// glibc's LOG_PERROR; one write per line so threads do not interleave.
pub struct StderrLayer<F> {
    ident: String,
    sink: F,
}

impl<F: Fn(&[u8]) + Send + Sync + 'static> StderrLayer<F> {
    pub fn new(ident: &str, sink: F) -> Self {
        StderrLayer {
            ident: ident.to_string(),
            sink,
        }
    }
}

/// Formats a line as glibc's LOG_PERROR copy does (a newline is added
/// unless the text ends with one).
pub fn perror_line(ident: &str, pid: u32, text: &str) -> Vec<u8> {
    let mut out = format!("{ident}[{pid}]: {text}").into_bytes();
    if !text.ends_with('\n') {
        out.push(b'\n');
    }
    out
}

/// The real stderr sink: write(2) on descriptor 2 directly, as glibc
/// does, so no lock of std's stderr handle is involved.
pub fn stderr_sink(mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // The handle only lends its descriptor; nothing locks.
        match nix::unistd::write(std::io::stderr(), bytes) {
            Ok(n) if n > 0 => bytes = &bytes[n..],
            Err(nix::errno::Errno::EINTR) => continue,
            _ => return,
        }
    }
}

impl<S: Subscriber, F: Fn(&[u8]) + Send + Sync + 'static> Layer<S> for StderrLayer<F> {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        if wanted(event.metadata()) {
            let l = line_of(event);
            (self.sink)(&perror_line(&self.ident, std::process::id(), &l.text));
        }
    }
}

/// The journald layer: MESSAGE is the syslog text, PRIORITY follows the
/// level (the exact priority also travels as SYSLOG_PRIORITY when tracing
/// has no level for it), SYSLOG_IDENTIFIER and SYSLOG_FACILITY as syslog
/// would set them, QUEUE_ID on per-message lines. Fails when the journal
/// socket cannot be reached.
pub fn journald_layer(
    ident: &str,
    facility: libc::c_int,
) -> std::io::Result<tracing_journald::Layer> {
    use tracing_journald::{Priority, PriorityMappings};
    Ok(tracing_journald::layer()?
        .with_field_prefix(None)
        .with_syslog_identifier(ident.to_string())
        .with_priority_mappings(PriorityMappings {
            error: Priority::Error,
            warn: Priority::Warning,
            info: Priority::Informational,
            debug: Priority::Debug,
            trace: Priority::Debug,
        })
        .with_custom_fields([("SYSLOG_FACILITY", (facility >> 3).to_string())]))
}

// ---------------------------------------------------------------- set-up

/// True when our stderr is the journal stream systemd connected us to
/// (`JOURNAL_STREAM=<dev>:<ino>` naming stderr's file, systemd.exec(5)).
pub fn stderr_is_journal() -> bool {
    match std::env::var("JOURNAL_STREAM") {
        Ok(v) => names_fd(&v, 2),
        Err(_) => false,
    }
}

/// True when `value` (`<dev>:<ino>`) names the file open on `fd`.
fn names_fd(value: &str, fd: i32) -> bool {
    let Some((dev, ino)) = value.split_once(':') else {
        return false;
    };
    let Ok(st) = nix::sys::stat::fstat(fd) else {
        return false;
    };
    dev.parse::<u64>().ok() == Some(st.st_dev) && ino.parse::<u64>().ok() == Some(st.st_ino)
}

/// The backend asked for: `MAILMUNGE_LOG=journald|syslog`, else journald
/// when our stderr is the journal stream (run by systemd), else syslog.
pub fn wanted_backend() -> Backend {
    match std::env::var("MAILMUNGE_LOG").as_deref() {
        Ok("journald") => Backend::Journald,
        Ok("syslog") => Backend::Syslog,
        _ if stderr_is_journal() => Backend::Journald,
        _ => Backend::Syslog,
    }
}

/// openlog() keeps the ident pointer, so it must live forever.
static IDENT: Mutex<Option<CString>> = Mutex::new(None);

fn open_syslog(ident: &str, options: libc::c_int, facility: libc::c_int) {
    let c = CString::new(ident.replace('\0', "")).unwrap_or_default();
    let mut g = IDENT.lock().unwrap_or_else(|e| e.into_inner());
    // SAFETY: openlog(3) keeps the ident pointer: the CString goes into a
    // static (under the lock) and is replaced only by the next openlog.
    unsafe { libc::openlog(c.as_ptr(), options, facility) };
    *g = Some(c);
}

/// Installs the process's log subscriber: syslog (openlog with `ident`,
/// `options` and `facility`) or journald per [`wanted_backend`] — journald
/// falls back to syslog when its socket is unreachable — plus the stderr
/// copy when `MAILMUNGE_LOG_STDERR` is set (left out when stderr already
/// is the journal, which would store every line twice). Returns the
/// backend in use. A second call only reopens syslog.
pub fn init(ident: &str, facility: libc::c_int, options: libc::c_int) -> Backend {
    static INSTALLED: std::sync::OnceLock<Backend> = std::sync::OnceLock::new();
    if let Some(&b) = INSTALLED.get() {
        if b == Backend::Syslog {
            open_syslog(ident, options, facility);
        }
        return b;
    }
    let mut unreachable = None;
    let journal = match wanted_backend() {
        Backend::Journald => journald_layer(ident, facility)
            .map_err(|e| unreachable = Some(e))
            .ok(),
        Backend::Syslog => None,
    };
    let backend = if journal.is_some() {
        Backend::Journald
    } else {
        open_syslog(ident, options, facility);
        Backend::Syslog
    };
    let copy = std::env::var_os("MAILMUNGE_LOG_STDERR").is_some()
        && !(backend == Backend::Journald && stderr_is_journal());
    let subscriber = tracing_subscriber::registry()
        .with(journal.map(|j| j.with_filter(tracing_subscriber::filter::filter_fn(wanted))))
        .with((backend == Backend::Syslog).then(|| SyslogLayer::new(syslog_sink)))
        .with(copy.then(|| StderrLayer::new(ident, stderr_sink)))
        .with(WantedOnly);
    let _ = tracing::subscriber::set_global_default(subscriber);
    let _ = INSTALLED.set(backend);
    if let Some(e) = unreachable {
        emit(
            libc::LOG_WARNING,
            None,
            &format!("Cannot reach journald ({e}); logging to syslog"),
        );
    }
    backend
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    type Captured = Arc<Mutex<Vec<(libc::c_int, String)>>>;

    fn with_capture(f: impl FnOnce()) -> (Vec<(libc::c_int, String)>, String) {
        let lines: Captured = Arc::default();
        let err: Arc<Mutex<Vec<u8>>> = Arc::default();
        let (l2, e2) = (lines.clone(), err.clone());
        let sub = tracing_subscriber::registry()
            .with(SyslogLayer::new(move |p, t: &str| {
                l2.lock().unwrap().push((p, t.to_string()))
            }))
            .with(StderrLayer::new("ident", move |b: &[u8]| {
                e2.lock().unwrap().extend_from_slice(b)
            }));
        tracing::subscriber::with_default(sub, f);
        let lines = lines.lock().unwrap().clone();
        let err = String::from_utf8(err.lock().unwrap().clone()).unwrap();
        (lines, err)
    }

    #[test]
    fn exact_text_and_priority() {
        let (lines, err) = with_capture(|| {
            emit(
                libc::LOG_INFO,
                None,
                "mailmunge-multiplexor is responding - entering main loop",
            );
            emit(
                libc::LOG_WARNING,
                Some("QID1"),
                "Filter did not create RESULTS file",
            );
            emit(
                libc::LOG_ERR,
                Some("NOQUEUE"),
                "MXCommand: connect: refused",
            );
            emit(
                libc::LOG_DEBUG,
                Some("Q2"),
                "Bouncing because filter instructed us to",
            );
        });
        assert_eq!(
            lines,
            vec![
                (
                    libc::LOG_INFO,
                    "mailmunge-multiplexor is responding - entering main loop".into()
                ),
                (
                    libc::LOG_WARNING,
                    "QID1: Filter did not create RESULTS file".into()
                ),
                (libc::LOG_ERR, "NOQUEUE: MXCommand: connect: refused".into()),
                (
                    libc::LOG_DEBUG,
                    "Q2: Bouncing because filter instructed us to".into()
                ),
            ]
        );
        let pid = std::process::id();
        assert_eq!(
            err,
            format!(
                "ident[{pid}]: mailmunge-multiplexor is responding - entering main loop\n\
                 ident[{pid}]: QID1: Filter did not create RESULTS file\n\
                 ident[{pid}]: NOQUEUE: MXCommand: connect: refused\n\
                 ident[{pid}]: Q2: Bouncing because filter instructed us to\n"
            )
        );
    }

    #[test]
    fn priorities_without_a_level_stay_exact() {
        let (lines, _) = with_capture(|| {
            emit(libc::LOG_NOTICE, None, "n");
            emit(libc::LOG_CRIT, None, "c");
            emit(libc::LOG_ALERT, None, "a");
            emit(libc::LOG_EMERG, None, "e");
        });
        let prios: Vec<_> = lines.iter().map(|(p, _)| *p).collect();
        assert_eq!(
            prios,
            vec![
                libc::LOG_NOTICE,
                libc::LOG_CRIT,
                libc::LOG_ALERT,
                libc::LOG_EMERG
            ]
        );
    }

    /// A layer keeping each event's extracted fields.
    struct Fields(Arc<Mutex<Vec<(Level, Line)>>>);
    impl<S: Subscriber> Layer<S> for Fields {
        fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
            self.0
                .lock()
                .unwrap()
                .push((*event.metadata().level(), line_of(event)));
        }
    }

    #[test]
    fn unwanted_events_stop_before_the_layers() {
        let got: Arc<Mutex<Vec<(Level, Line)>>> = Arc::default();
        let sub = tracing_subscriber::registry()
            .with(Fields(got.clone()))
            .with(WantedOnly);
        tracing::subscriber::with_default(sub, || {
            tracing::trace!(target: "indymilter::connection", "message read");
            tracing::info!(target: "indymilter::session", "got next command");
            tracing::warn!(target: "indymilter::session", "odd reply");
            emit(libc::LOG_DEBUG, None, "ours");
        });
        let seen: Vec<String> = got
            .lock()
            .unwrap()
            .iter()
            .map(|(_, l)| l.text.clone())
            .collect();
        assert_eq!(seen, vec!["odd reply".to_string(), "ours".to_string()]);
    }

    #[test]
    fn queue_id_is_a_field_only_when_known() {
        let got: Arc<Mutex<Vec<(Level, Line)>>> = Arc::default();
        let sub = tracing_subscriber::registry().with(Fields(got.clone()));
        tracing::subscriber::with_default(sub, || {
            emit(
                libc::LOG_WARNING,
                Some("4XyZ1"),
                "Filter failed.  Message kept in /x",
            );
            emit(
                libc::LOG_WARNING,
                Some("NOQUEUE"),
                "rcptto: no message in progress",
            );
            emit(libc::LOG_NOTICE, None, "plain");
        });
        let got = std::mem::take(&mut *got.lock().unwrap());
        assert_eq!(
            got,
            vec![
                (
                    Level::WARN,
                    Line {
                        priority: libc::LOG_WARNING,
                        text: "4XyZ1: Filter failed.  Message kept in /x".into(),
                        queue_id: Some("4XyZ1".into()),
                    }
                ),
                (
                    Level::WARN,
                    Line {
                        priority: libc::LOG_WARNING,
                        text: "NOQUEUE: rcptto: no message in progress".into(),
                        queue_id: None,
                    }
                ),
                (
                    Level::INFO,
                    Line {
                        priority: libc::LOG_NOTICE,
                        text: "plain".into(),
                        queue_id: None,
                    }
                ),
            ]
        );
    }

    #[test]
    fn other_crates_only_from_warn_up_with_their_fields() {
        let (lines, _) = with_capture(|| {
            tracing::trace!(target: "indymilter::session", "got next command");
            tracing::warn!(target: "indymilter::session", state = 3, "odd reply");
            tracing::error!(target: "indymilter", "milter exited with error");
        });
        assert_eq!(
            lines,
            vec![
                (libc::LOG_WARNING, "odd reply state=3".into()),
                (libc::LOG_ERR, "milter exited with error".into()),
            ]
        );
    }

    #[test]
    fn perror_layout_matches_glibc() {
        assert_eq!(perror_line("mm", 7, "x"), b"mm[7]: x\n");
        assert_eq!(perror_line("mm", 7, "x\n"), b"mm[7]: x\n");
        assert_eq!(perror_line("mm", 7, ""), b"mm[7]: \n");
    }

    #[test]
    fn journal_stream_must_name_the_descriptor() {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::MetadataExt;
        let f = tempfile::tempfile().unwrap();
        let m = f.metadata().unwrap();
        let fd = f.as_raw_fd();
        assert!(names_fd(&format!("{}:{}", m.dev(), m.ino()), fd));
        assert!(!names_fd(&format!("{}:{}", m.dev(), m.ino() + 1), fd));
        assert!(!names_fd(&format!("{}:{}", m.dev() + 1, m.ino()), fd));
        assert!(!names_fd("garbage", fd));
        assert!(!names_fd(&format!("{}:{}", m.dev(), m.ino()), -1));
    }
}
