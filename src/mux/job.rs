//! What flows between clients, the pool and the worker tasks: a job (one
//! command line for one worker), how it ended, and the fixed replies the
//! multiplexor writes itself (protocol/multiplexor.md §6.4).

use tokio::sync::{mpsc, oneshot};

use super::Class;
use crate::sys::process::ProcessHandle;

/// Multiplexor-generated replies on the forwarding path (protocol/multiplexor.md §6.4).
pub mod replies {
    pub const TOO_LONG: &[u8] = b"error: Command too long\n";
    pub const NO_FREE: &[u8] = b"error: No free workers\n";
    pub const QUEUE_TIMEOUT: &[u8] = b"error: Queued request timed out\n";
    pub const ACTIVATE_FAILED: &[u8] = b"error: Unable to activate worker\n";
    pub const WRITE_FAILED: &[u8] = b"error: Error talking to worker process\n";
    // Upstream quirk kept: the busy timeouts and a silent worker answer
    // `ERR …`, every other failure `error: …` (protocol/multiplexor.md §6.4).
    pub const TIMEOUT_OVERLOADED: &[u8] =
        b"ERR Filter timed out - system may be overloaded (consider increasing busy timeout)\n";
    pub const TIMEOUT: &[u8] = b"ERR Filter timed out - check filter rules or system load\n";
    pub const NO_RESPONSE: &[u8] = b"ERR No response from worker\n";
    pub const RECIPOK_LIMIT: &[u8] =
        b"ok -1 Per-domain%20recipok%20limit%20hit;%20please%20try%20again%20later\n";
    pub const SHUTTING_DOWN: &[u8] = b"error: Multiplexor is shutting down\n";
}

/// What became of a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The worker's reply bytes, relayed verbatim (normally one line with
    /// its `\n`; a partial or truncated line otherwise).
    Reply(Vec<u8>),
    /// The worker closed stdout without a byte.
    NoResponse,
    /// No reply within `-b`; `overloaded` when more than 3 workers were busy.
    Timeout { overloaded: bool },
    /// The command could not be written within `-c`.
    WriteFailed,
    /// No worker could be had.
    NoFree,
    /// Activating a worker failed.
    ActivateFailed,
    /// Refused by the per-domain recipok limit.
    RecipokLimit,
    /// Waited in the queue longer than `-Q`.
    QueueTimeout,
    /// The multiplexor is stopping.
    ShuttingDown,
}

impl Outcome {
    /// The bytes a control-socket client receives.
    pub fn client_bytes(&self) -> Vec<u8> {
        use replies::*;
        match self {
            Outcome::Reply(b) => b.clone(),
            Outcome::NoResponse => NO_RESPONSE.to_vec(),
            Outcome::Timeout { overloaded: true } => TIMEOUT_OVERLOADED.to_vec(),
            Outcome::Timeout { overloaded: false } => TIMEOUT.to_vec(),
            Outcome::WriteFailed => WRITE_FAILED.to_vec(),
            Outcome::NoFree => NO_FREE.to_vec(),
            Outcome::ActivateFailed => ACTIVATE_FAILED.to_vec(),
            Outcome::RecipokLimit => RECIPOK_LIMIT.to_vec(),
            Outcome::QueueTimeout => QUEUE_TIMEOUT.to_vec(),
            Outcome::ShuttingDown => SHUTTING_DOWN.to_vec(),
        }
    }
}

/// Who asked for a job; decides notifications and statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    Client,
    Map,
    Tick(u32),
}

/// One command for one worker.
#[derive(Debug)]
pub struct Job {
    /// The command line including its `\n`.
    pub line: Vec<u8>,
    pub class: Class,
    pub kind: JobKind,
    pub reply: oneshot::Sender<Outcome>,
}

impl Job {
    pub fn new(line: Vec<u8>, kind: JobKind) -> (Job, oneshot::Receiver<Outcome>) {
        let (tx, rx) = oneshot::channel();
        let class = if kind == JobKind::Client {
            Class::of(&line)
        } else {
            Class::Other
        };
        (
            Job {
                line,
                class,
                kind,
                reply: tx,
            },
            rx,
        )
    }
}

/// How a worker's reply went, as seen by its task.
#[derive(Debug)]
pub enum Completion {
    /// A reply (possibly partial); `violation` when the worker broke the
    /// one-line protocol (overlong line, extra output) and must be retired.
    Reply {
        bytes: Vec<u8>,
        violation: Option<&'static str>,
    },
    /// End of file before a complete line; the bytes received, if any, are
    /// relayed (the process is on its way out).
    Eof(Vec<u8>),
    Timeout,
    WriteFailed,
}

/// Messages to a worker's task.
#[derive(Debug)]
pub enum ToWorker {
    Job(Job),
    /// Close stdin and escalate to SIGTERM/SIGKILL if it does not exit.
    Retire {
        busy: bool,
    },
}

/// A worker the pool wants started in slot `slot`, identity `wid`; its
/// task takes requests from `rx`.
#[derive(Debug)]
pub struct LaunchWorker {
    pub slot: usize,
    pub wid: u64,
    pub reason: String,
    pub rx: mpsc::UnboundedReceiver<ToWorker>,
}

/// How the pool has processes started without knowing how
/// (`worker::Starter`; protocol/multiplexor.md §21).
pub trait Launcher: Send {
    /// Starts a worker. `Ok(Some(handle))` when it runs already (fork + exec);
    /// `Ok(None)` when the `-E` preloading process was asked to fork it,
    /// which ends in `Pool::worker_started` or `Pool::start_failed`.
    fn launch(&mut self, w: LaunchWorker) -> std::io::Result<Option<ProcessHandle>>;
    /// `-E`: load the filter into a new preloading process (a reread).
    fn reload(&mut self);
}

/// The launcher of a pool whose daemon has not installed one (unit tests).
pub struct NoLauncher;

impl Launcher for NoLauncher {
    fn launch(&mut self, _: LaunchWorker) -> std::io::Result<Option<ProcessHandle>> {
        Err(std::io::Error::other("no launcher installed"))
    }
    fn reload(&mut self) {}
}
