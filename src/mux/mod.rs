//! `mailmunge-multiplexor`: a pool of filter worker processes behind a
//! control socket (protocol/multiplexor.md). The binary only parses options
//! and calls [`run`].
//!
//! Shape: one [`pool::Pool`] (all slot state, counters and history) behind a
//! `std::sync::Mutex` that is never held across an `.await` and that calls
//! out to no other module; a launcher task that starts every worker
//! ([`worker::launcher`]); one tokio task per worker process owning its
//! pipes, so a slow or misbehaving worker can only ever delay its own
//! request; one task per client connection ([`control`]); timers for idle
//! reaping, the minimum filler, ticks and the status log
//! (protocol/multiplexor.md §21).

pub mod child;
pub mod control;
pub mod history;
pub mod job;
pub mod metrics;
pub mod metrics_http;
pub mod options;
pub mod pool;
pub mod reload;
pub mod report;
pub mod server;
pub mod startfail;
pub mod statsfile;
pub mod ticks;
pub mod worker;
pub mod zygote;

pub use options::Options;

/// The class of a forwarded command (protocol/multiplexor.md §6.1), used for
/// statistics, `workers` and `-y`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Scan,
    RelayOk,
    SenderOk,
    RecipOk,
    Other,
}

impl Class {
    /// Classifies a request line by its prefix.
    pub fn of(line: &[u8]) -> Class {
        if line.starts_with(b"relayok ") {
            Class::RelayOk
        } else if line.starts_with(b"senderok ") {
            Class::SenderOk
        } else if line.starts_with(b"recipok ") {
            Class::RecipOk
        } else if line.starts_with(b"scan ") {
            Class::Scan
        } else {
            Class::Other
        }
    }

    /// Index in the history tables (scan, relayok, senderok, recipok).
    pub fn tracked_index(self) -> Option<usize> {
        match self {
            Class::Scan => Some(0),
            Class::RelayOk => Some(1),
            Class::SenderOk => Some(2),
            Class::RecipOk => Some(3),
            Class::Other => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Class::Scan => "scan",
            Class::RelayOk => "relayok",
            Class::SenderOk => "senderok",
            Class::RecipOk => "recipok",
            Class::Other => "other",
        }
    }

    pub const TRACKED: [Class; 4] = [Class::Scan, Class::RelayOk, Class::SenderOk, Class::RecipOk];
}

/// Worker slot states (protocol/multiplexor.md §7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Stopped,
    Idle,
    Busy,
    Killed,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Stopped => "Stopped",
            State::Idle => "Idle",
            State::Busy => "Busy",
            State::Killed => "Killed",
        }
    }
    pub fn letter(self) -> char {
        match self {
            State::Stopped => 'S',
            State::Idle => 'I',
            State::Busy => 'B',
            State::Killed => 'K',
        }
    }
}

/// Runs the multiplexor with argv; returns the process exit status.
pub fn run<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    server::main(args)
}
