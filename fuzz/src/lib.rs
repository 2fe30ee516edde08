//! Fuzz targets for mailmunge's parsers of outside input
//! (protocol/SECURITY.md §10). Each module has `pub fn run(data: &[u8])`; the
//! binaries in `fuzz_targets/` hand libFuzzer's inputs to it. A target
//! panics (and libFuzzer saves the input) when our code panics or when one
//! of the properties it checks does not hold.

pub mod commands;
pub mod control;
pub mod ctrl;
pub mod envfile;
pub mod milter_reply;
pub mod milter_session;
pub mod mtastream;
pub mod notify;
pub mod percent;
pub mod results;
pub mod socketmap;

use std::cell::RefCell;
use std::future::Future;

thread_local! {
    static RUNTIME: RefCell<Option<tokio::runtime::Runtime>> = const { RefCell::new(None) };
}

/// Runs `f` to completion on this thread's runtime (one per fuzzing
/// process, so servers started by a target live across inputs).
pub fn block_on<F: Future>(f: F) -> F::Output {
    quiet_logs();
    RUNTIME.with(|rt| {
        let mut rt = rt.borrow_mut();
        let rt = rt.get_or_insert_with(|| {
            // libFuzzer's main, not Rust's, starts the process: ignore
            // SIGPIPE as the daemons do, so a peer that hung up is an error.
            // SAFETY: setting a signal disposition to SIG_IGN at start-up.
            unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime")
        });
        rt.block_on(f)
    })
}

/// Log lines go nowhere: without a subscriber mailmunge would send every
/// one of them to syslog.
pub fn quiet_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = tracing::subscriber::set_global_default(Silent);
    });
}

struct Silent;

impl tracing::Subscriber for Silent {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        false
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, _: &tracing::Event<'_>) {}
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// Takes structured pieces off the front of an input.
pub struct Cursor<'a>(pub &'a [u8]);

impl<'a> Cursor<'a> {
    /// The next byte, 0 once the input is used up.
    pub fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    /// A 16-bit big-endian number.
    pub fn u16(&mut self) -> u16 {
        u16::from(self.byte()) << 8 | u16::from(self.byte())
    }

    /// The next `n` bytes (fewer at the end).
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let (a, b) = self.0.split_at(n.min(self.0.len()));
        self.0 = b;
        a
    }

    /// Bytes up to the next `sep` (which is consumed), or all the rest.
    pub fn until(&mut self, sep: u8) -> &'a [u8] {
        match self.0.iter().position(|&b| b == sep) {
            Some(i) => {
                let a = &self.0[..i];
                self.0 = &self.0[i + 1..];
                a
            }
            None => self.take(self.0.len()),
        }
    }

    pub fn rest(&mut self) -> &'a [u8] {
        self.take(self.0.len())
    }
}

/// A fresh scratch directory for targets that need files or sockets, under
/// `$TMPDIR` (`run-all` points that at a directory it removes afterwards).
pub fn scratch_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("mm-fuzz-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch directory");
    dir
}
