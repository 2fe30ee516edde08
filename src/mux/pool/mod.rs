//! Worker slots, their states and every decision about them: choosing a
//! worker, activation, completion bookkeeping, retirement, reaping, the
//! request queue, idle reaping and generations
//! (protocol/multiplexor.md §7, §10, §11).
//!
//! All of it is synchronous and runs under the [`Mux`] mutex, and none of
//! it waits: processes are started by the launcher task and pipes are read
//! by the worker tasks (`super::worker`), which report through
//! [`Pool::worker_started`], [`Pool::complete`] and [`Pool::reaped`]
//! (protocol/multiplexor.md §21).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, Notify};

use super::history::History;
use super::job::{Completion, Job, JobKind, LaunchWorker, Launcher, NoLauncher, Outcome, ToWorker};
use super::options::Options;
use super::startfail::{self, StartFailure, StartFailures, StderrTail};
use super::statsfile::{sanitize_reason, StatsFile};
use super::{Class, State};
use crate::sys::daemon::{self, LOG_DEBUG, LOG_ERR, LOG_INFO, LOG_WARNING};
use crate::sys::process::ProcessHandle;

mod reserve;
pub use reserve::{Reservation, Reserve};

/// Consecutive exit-42/43 workers before the multiplexor gives up.
pub const MAX_SYNTAX_ERROR_EXITS: u32 = 10;
/// Maximum status tag length.
pub const MAX_STATUS_LEN: usize = 63;

/// One worker slot.
#[derive(Debug)]
pub struct Slot {
    pub state: State,
    /// The worker process, once started (its pid: [`Slot::pid`]).
    pub process: Option<ProcessHandle>,
    /// Identity of the current process (unique per activation).
    pub wid: u64,
    pub tx: Option<mpsc::UnboundedSender<ToWorker>>,
    pub activated: Option<Instant>,
    pub activation_seq: u64,
    pub first_request: Option<Instant>,
    pub last_change: Instant,
    pub idle_since: Instant,
    pub num_requests: u64,
    pub num_scans: u64,
    /// Last tracked command class of this process (survives into Stopped).
    pub last_class: Option<Class>,
    /// Class of the command being executed.
    pub cur_class: Option<Class>,
    pub tag: String,
    pub generation: u64,
    pub qid: String,
    pub recip_domain: String,
    /// Position in its state's LIFO list (higher = nearer the head).
    pub list_seq: u64,
    /// Set when we asked the process to go; an exit then is not a surprise.
    pub expected_exit: bool,
    /// Retire as soon as the current command completes (shutdown).
    pub retire_after: bool,
    pub oom: bool,
    /// The process has written at least one reply line.
    pub replied: bool,
    /// Held for one client's next scan (protocol/multiplexor.md §27): the
    /// reservation's id. The slot is Busy meanwhile, with no command.
    pub reservation: Option<u64>,
}

impl Slot {
    /// The worker's pid, once started.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(ProcessHandle::pid)
    }
}

/// A request waiting for a worker (protocol/multiplexor.md §10).
#[derive(Debug)]
pub struct Queued {
    pub id: u64,
    pub job: Job,
}

/// Why a worker could not be activated.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("the slot is not stopped or the multiplexor is stopping")]
    Unavailable,
    #[error("not enough time elapsed since the last activation (-W)")]
    TooSoon,
    #[error("cannot start {0}")]
    Spawn(String),
}

/// Everything shared by the multiplexor's tasks.
pub struct Mux {
    pub opts: Arc<Options>,
    pub pool: Mutex<Pool>,
    /// Wakes the minimum filler.
    pub fill: Notify,
    /// Wakes reservation requests waiting for a worker to come free
    /// (protocol/multiplexor.md §27.2).
    pub freed: Notify,
    /// Wakes the shutdown sequence (SIGTERM or too many failures).
    pub shutdown: Notify,
}

impl Mux {
    pub fn new(opts: Options) -> Arc<Mux> {
        let opts = Arc::new(opts);
        Arc::new_cyclic(|me| Mux {
            opts: opts.clone(),
            pool: Mutex::new(Pool::new(opts.clone(), me.clone())),
            fill: Notify::new(),
            freed: Notify::new(),
            shutdown: Notify::new(),
        })
    }

    /// Locks the pool (a panic elsewhere must not wedge the daemon).
    pub fn lock(&self) -> MutexGuard<'_, Pool> {
        self.pool.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Seconds since the epoch.
pub fn epoch_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

pub struct Pool {
    pub opts: Arc<Options>,
    me: Weak<Mux>,
    pub slots: Vec<Slot>,
    pub activations: u64,
    pub msgs: u64,
    pub generation: u64,
    pub started: Instant,
    seq: u64,
    next_wid: u64,
    last_activation: Option<Instant>,
    pub queue: VecDeque<Queued>,
    next_queue_id: u64,
    pub history: History,
    pub histo: Vec<u64>,
    failures: u32,
    pub shutting_down: bool,
    /// Notifier listeners (`-O`, protocol/multiplexor.md §14), when configured.
    pub notify: Option<crate::wire::notify::Notifier>,
    pub stats: StatsFile,
    /// Starts worker processes; installed by the daemon at start-up.
    pub launcher: Box<dyn Launcher>,
    /// Event counters for `--metrics`.
    pub metrics: super::metrics::Metrics,
    /// Workers that died before answering (`lasterror`).
    pub start_failures: StartFailures,
    next_reservation: u64,
}

impl Pool {
    fn new(opts: Arc<Options>, me: Weak<Mux>) -> Pool {
        let now = Instant::now();
        let n = opts.max_workers;
        let slots = (0..n)
            .map(|i| Slot {
                state: State::Stopped,
                process: None,
                wid: 0,
                tx: None,
                activated: None,
                activation_seq: 0,
                first_request: None,
                last_change: now,
                idle_since: now,
                num_requests: 0,
                num_scans: 0,
                last_class: None,
                cur_class: None,
                tag: String::new(),
                generation: 0,
                qid: String::new(),
                recip_domain: String::new(),
                // Initially the Stopped list is 0, 1, 2, …: slot 0 at the head.
                list_seq: (n - i) as u64,
                expected_exit: false,
                retire_after: false,
                oom: false,
                replied: false,
                reservation: None,
            })
            .collect();
        Pool {
            stats: StatsFile::open(opts.stats_file.clone(), opts.stats_flush, opts.stats_syslog),
            launcher: Box::new(NoLauncher),
            opts,
            me,
            slots,
            activations: 0,
            msgs: 0,
            generation: 0,
            started: now,
            seq: n as u64 + 1,
            next_wid: 1,
            last_activation: None,
            queue: VecDeque::new(),
            next_queue_id: 1,
            history: History::default(),
            histo: vec![0; n],
            failures: 0,
            shutting_down: false,
            notify: None,
            metrics: Default::default(),
            start_failures: StartFailures::default(),
            next_reservation: 1,
        }
    }

    // ------------------------------------------------------------ counts

    pub fn count(&self, st: State) -> usize {
        self.slots.iter().filter(|s| s.state == st).count()
    }
    /// Idle + Stopped.
    pub fn free(&self) -> usize {
        self.count(State::Idle) + self.count(State::Stopped)
    }
    /// Idle + Busy + Killed.
    pub fn running(&self) -> usize {
        self.slots.len() - self.count(State::Stopped)
    }
    /// The gauges of a metrics scrape (protocol/metrics.md).
    pub fn gauges(&self) -> super::metrics::Gauges {
        super::metrics::Gauges {
            idle: self.count(State::Idle),
            busy: self.count(State::Busy),
            stopped: self.count(State::Stopped),
            killed: self.count(State::Killed),
            workers_max: self.slots.len(),
            queue_length: self.queue.len(),
            queue_capacity: self.opts.queue_size,
            msgs: self.msgs,
            generation: self.generation,
            uptime: self.uptime(),
            oldest_busy: self
                .slots
                .iter()
                .filter(|s| s.state == State::Busy)
                .map(|s| s.last_change.elapsed().as_secs_f64())
                .fold(0.0, f64::max),
            pids: self
                .slots
                .iter()
                .enumerate()
                .filter_map(|(i, s)| s.pid().map(|pid| (i, pid)))
                .collect(),
        }
    }

    pub fn uptime(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    fn emit(&self, f: impl FnOnce(&crate::wire::notify::Notifier)) {
        if let Some(n) = &self.notify {
            f(n);
        }
    }

    fn stat(&mut self, event: &str, i: usize, extra: &str) {
        if self.stats.active() {
            let (nw, nb) = (self.running(), self.count(State::Busy));
            self.stats.event(event, i, nw, nb, extra);
        }
    }

    fn verbose(&self, msg: &str) {
        if self.opts.verbose {
            daemon::log(LOG_INFO, msg);
        }
    }

    // ------------------------------------------------------------ states

    fn set_state(&mut self, i: usize, st: State) {
        let now = Instant::now();
        self.seq += 1;
        let seq = self.seq;
        let s = &mut self.slots[i];
        let old = s.state;
        s.state = st;
        s.tag.clear();
        s.last_change = now;
        s.list_seq = seq;
        if st == State::Busy {
            if s.first_request.is_none() {
                s.first_request = Some(now);
            }
            let busy = self.count(State::Busy);
            if let Some(h) = self.histo.get_mut(busy.saturating_sub(1)) {
                *h += 1;
            }
        }
        let free = self.free();
        self.emit(|n| n.state_change(i, old.name(), st.name(), free));
        if matches!(st, State::Idle | State::Stopped) {
            if let Some(me) = self.me.upgrade() {
                me.freed.notify_waiters();
            }
        }
    }

    /// Sets a worker's status tag (sanitised, at most 63 bytes) and tells
    /// the notifier listeners.
    pub fn set_tag(&mut self, i: usize, tag: &str, announce: bool) {
        let mut t: String = tag
            .chars()
            .map(|c| if (' '..='~').contains(&c) { c } else { ' ' })
            .collect();
        t.truncate(MAX_STATUS_LEN);
        self.slots[i].tag = t;
        if announce && !self.slots[i].tag.is_empty() {
            self.emit(|n| n.status_tag(i, self.slots[i].tag.as_bytes()));
        }
    }

    // ------------------------------------------------------------ choosing

    /// Picks a worker for a class (protocol/multiplexor.md §7.2): an idle one
    /// (preferring one that last ran the same class, then the oldest), else the
    /// head of the Stopped list.
    pub fn find_free(&self, class: Class) -> Option<usize> {
        let want = class.tracked_index().map(|_| class);
        let mut best: Option<usize> = None;
        let mut same: Option<usize> = None;
        for (i, s) in self.slots.iter().enumerate() {
            if s.state != State::Idle {
                continue;
            }
            if best.is_none_or(|b| s.activation_seq < self.slots[b].activation_seq) {
                best = Some(i);
            }
            if s.last_class == want || s.last_class.is_none() {
                let replace = match same {
                    None => true,
                    Some(c) => {
                        self.slots[c].last_class != want
                            || s.activation_seq < self.slots[c].activation_seq
                    }
                };
                if replace {
                    same = Some(i);
                }
            }
        }
        if let Some(i) = same.or(best) {
            return Some(i);
        }
        if self.shutting_down {
            return None;
        }
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.state == State::Stopped)
            .max_by_key(|(_, s)| s.list_seq)
            .map(|(i, _)| i)
    }

    // ------------------------------------------------------------ activation

    /// Starts a worker process in a Stopped slot.
    pub fn activate(&mut self, i: usize, reason: &str) -> Result<(), ActivateError> {
        if self.shutting_down || self.slots[i].state != State::Stopped {
            return Err(ActivateError::Unavailable);
        }
        let now = Instant::now();
        if self.too_soon_to_activate(i, now) {
            return Err(ActivateError::TooSoon);
        }
        self.last_activation = Some(now);
        let wid = self.next_wid;
        let (tx, rx) = mpsc::unbounded_channel();
        let launch = LaunchWorker {
            slot: i,
            wid,
            reason: reason.to_string(),
            rx,
        };
        let process = self.launch_or_count_failure(launch)?;
        self.next_wid += 1;
        self.activations += 1;
        self.metrics.activated(reason);
        self.history.activated(epoch_now());
        self.fresh_slot(i, wid, process.clone(), tx, now);
        self.set_state(i, State::Idle);
        if let Some(p) = &process {
            self.log_start(i, p.pid(), reason);
        }
        self.stat("StartWorker", i, &format!("reason=\"{reason}\""));
        Ok(())
    }

    /// `-W`: whether the last activation was too recent to start slot `i`.
    fn too_soon_to_activate(&self, i: usize, now: Instant) -> bool {
        if self.opts.wait == 0 {
            return false;
        }
        let Some(last) = self.last_activation else {
            return false;
        };
        if now.duration_since(last).as_secs() >= self.opts.wait {
            return false;
        }
        daemon::log(
            LOG_INFO,
            &format!("Did not start worker {i}: Not enough time elapsed since last worker activation. (wait={})", self.opts.wait),
        );
        true
    }

    /// Asks the launcher for the process; a failure to start one counts
    /// towards the consecutive-failure limit like an exit 43.
    fn launch_or_count_failure(
        &mut self,
        launch: LaunchWorker,
    ) -> Result<Option<ProcessHandle>, ActivateError> {
        self.launcher.launch(launch).map_err(|e| {
            daemon::log(
                LOG_ERR,
                &format!("Could not execute {}: {e}", self.opts.filter.display()),
            );
            self.count_failure(43);
            ActivateError::Spawn(format!("{}: {e}", self.opts.filter.display()))
        })
    }

    /// Resets slot `i` for a new process: nothing of the previous one
    /// (counts, classes, queue id, retirement flags, reservation) may carry over.
    fn fresh_slot(
        &mut self,
        i: usize,
        wid: u64,
        process: Option<ProcessHandle>,
        tx: mpsc::UnboundedSender<ToWorker>,
        now: Instant,
    ) {
        let generation = self.generation;
        let seq = self.activations;
        let s = &mut self.slots[i];
        s.process = process;
        s.wid = wid;
        s.tx = Some(tx);
        s.activated = Some(now);
        s.activation_seq = seq;
        s.first_request = None;
        s.idle_since = now;
        s.num_requests = 0;
        s.num_scans = 0;
        s.last_class = None;
        s.cur_class = None;
        s.generation = generation;
        s.qid.clear();
        s.expected_exit = false;
        s.retire_after = false;
        s.oom = false;
        s.replied = false;
        s.reservation = None;
    }

    fn log_start(&self, i: usize, pid: u32, reason: &str) {
        self.verbose(&format!(
            "Starting worker {i} (pid {pid}) ({} running): {reason}",
            self.running()
        ));
    }

    /// The preloading process forked the worker of slot `i` (or perl
    /// started it after a failed fork): its pid is known now.
    pub fn worker_started(&mut self, i: usize, wid: u64, process: ProcessHandle, reason: &str) {
        if self.slots[i].wid == wid && self.slots[i].state != State::Stopped {
            self.log_start(i, process.pid(), reason);
            self.slots[i].process = Some(process);
        }
    }

    /// A worker could not be started after all (neither forked nor exec'd).
    pub fn start_failed(&mut self, i: usize, wid: u64, e: &std::io::Error) {
        if self.slots[i].wid != wid {
            return;
        }
        daemon::log(
            LOG_ERR,
            &format!("Could not execute {}: {e}", self.opts.filter.display()),
        );
        self.count_failure(43);
        let s = &mut self.slots[i];
        s.process = None;
        s.tx = None;
        s.activated = None;
        s.cur_class = None;
        self.set_state(i, State::Stopped);
        self.pump_queue();
    }

    /// Activates one worker if fewer than the minimum run; returns true
    /// when still below the minimum afterwards (protocol/multiplexor.md §7.10).
    pub fn fill_once(&mut self) -> bool {
        if self.shutting_down || self.running() >= self.opts.min_workers {
            return false;
        }
        if let Some(i) = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.state == State::Stopped)
            .max_by_key(|(_, s)| s.list_seq)
            .map(|(i, _)| i)
        {
            let reason = format!(
                "Bringing workers up to minWorkers ({})",
                self.opts.min_workers
            );
            let _ = self.activate(i, &reason);
            self.pump_queue();
        }
        self.running() < self.opts.min_workers
    }

    fn count_failure(&mut self, code: i32) {
        self.failures += 1;
        if self.failures >= MAX_SYNTAX_ERROR_EXITS && !self.shutting_down {
            let msg = "Too many consecutive filter failures.  MULTIPLEXOR IS TERMINATING.";
            daemon::log(LOG_ERR, msg);
            eprintln!("{msg}");
            if let Some(me) = self.me.upgrade() {
                me.shutdown.notify_one();
            }
        }
        let _ = code;
    }

    // ------------------------------------------------------------ dispatch

    /// Sends a job to a worker now, queues it, or answers it with an error
    /// (protocol/multiplexor.md §6.1, §10). Returns the queue id when queued.
    pub fn submit(&mut self, job: Job, allow_queue: bool) -> Option<u64> {
        if self.shutting_down {
            let _ = job.reply.send(Outcome::ShuttingDown);
            return None;
        }
        let domain = self.limited_domain(&job);
        if !domain.is_empty() && self.recipok_limit_hit(&domain) {
            let _ = job.reply.send(Outcome::RecipokLimit);
            return None;
        }
        let Some(i) = self.find_free(job.class) else {
            return self.queue_or_refuse(job, allow_queue);
        };
        if self.opts.log_scheduling {
            self.log_scheduling(i, &job);
        }
        if self.slots[i].state == State::Stopped
            && self.activate(i, &activation_reason(&job)).is_err()
        {
            let _ = job.reply.send(Outcome::ActivateFailed);
            return None;
        }
        self.start_job(i, job, domain);
        None
    }

    /// The recipient domain `-y` counts this job under; empty when the
    /// limit does not apply (protocol/multiplexor.md §11).
    fn limited_domain(&self, job: &Job) -> String {
        if job.class == Class::RecipOk && self.opts.recipok_per_domain > 0 {
            recipient_domain(&job.line)
        } else {
            String::new()
        }
    }

    /// Whether `domain` already has `-y` busy recipok commands (logged).
    fn recipok_limit_hit(&self, domain: &str) -> bool {
        let n = self
            .slots
            .iter()
            .filter(|s| {
                s.state == State::Busy
                    && s.cur_class == Some(Class::RecipOk)
                    && s.recip_domain.eq_ignore_ascii_case(domain)
            })
            .count();
        if n < self.opts.recipok_per_domain {
            return false;
        }
        daemon::log(
            LOG_INFO,
            &format!(
                "Hit per-domain recipok limit ({}) for domain {domain}",
                self.opts.recipok_per_domain
            ),
        );
        true
    }

    /// No worker is free: a client's request waits in the queue when
    /// allowed and there is room (protocol/multiplexor.md §10), anything
    /// else is answered with "no free workers".
    fn queue_or_refuse(&mut self, job: Job, allow_queue: bool) -> Option<u64> {
        if allow_queue && job.kind == JobKind::Client && self.queue.len() < self.opts.queue_size {
            let id = self.next_queue_id;
            self.next_queue_id += 1;
            self.queue.push_back(Queued { id, job });
            daemon::log(
                LOG_INFO,
                &format!(
                    "All workers are busy: Queueing request ({} queued)",
                    self.queue.len()
                ),
            );
            return Some(id);
        }
        if allow_queue && self.opts.queue_size > 0 && job.kind == JobKind::Client {
            daemon::log(LOG_WARNING, "Cannot queue request: request queue is full");
        }
        daemon::log(LOG_WARNING, "No free workers");
        let _ = job.reply.send(Outcome::NoFree);
        None
    }

    /// `-A`: which worker was chosen for which command.
    fn log_scheduling(&self, i: usize, job: &Job) {
        let s = &self.slots[i];
        daemon::log(
            LOG_INFO,
            &format!(
                "Scheduling {} worker {i} for cmdno {} (activated={}, last={})",
                s.state.name(),
                job.class.name(),
                s.activation_seq,
                s.last_class.map(Class::name).unwrap_or("none")
            ),
        );
    }

    fn start_job(&mut self, i: usize, job: Job, domain: String) {
        if self.slots[i].reservation.take().is_some() {
            // Busy since it was reserved (counted in `histo` then); the
            // command is the new state change `ago=` counts from.
            self.slots[i].last_change = Instant::now();
            self.slots[i].tag.clear();
        } else {
            self.set_state(i, State::Busy);
        }
        let line = job.line.strip_suffix(b"\n").unwrap_or(&job.line);
        {
            let s = &mut self.slots[i];
            s.cur_class = Some(job.class);
            s.last_class = job.class.tracked_index().map(|_| job.class);
            s.recip_domain = domain;
            s.qid = match job.kind {
                JobKind::Client => queue_id(job.class, line),
                _ => String::new(),
            };
        }
        match job.kind {
            JobKind::Tick(n) => self.set_tag(i, &format!("tick {n}"), false),
            _ => {
                let tag = tag_from_command(line);
                self.set_tag(i, &tag, true);
            }
        }
        if job.class == Class::Scan {
            self.stat("StartFilter", i, "");
        }
        let tx = self.slots[i].tx.clone();
        if let Some(tx) = tx {
            if let Err(mpsc::error::SendError(ToWorker::Job(job))) = tx.send(ToWorker::Job(job)) {
                // The task is gone (cannot normally happen while the slot is
                // not Stopped): answer instead of losing the request.
                let _ = job.reply.send(Outcome::NoResponse);
            }
        }
    }

    /// Removes a queued request that timed out; false when it already left
    /// the queue (it is then being served).
    pub fn unqueue(&mut self, id: u64) -> bool {
        if let Some(pos) = self.queue.iter().position(|q| q.id == id) {
            self.queue.remove(pos);
            true
        } else {
            false
        }
    }

    /// Hands queued requests to free workers (after completions, reaps and
    /// activations — protocol/multiplexor.md §20.4).
    pub fn pump_queue(&mut self) {
        while let Some(front) = self.queue.front() {
            if self.shutting_down {
                break;
            }
            if self.find_free(front.job.class).is_none() {
                break;
            }
            let Some(q) = self.queue.pop_front() else {
                break;
            };
            self.submit(q.job, false);
        }
    }

    // ------------------------------------------------------------ completion

    /// Bookkeeping when a worker's task finished a job
    /// (protocol/multiplexor.md §7.7, §7.8). Returns what the requester gets.
    pub fn complete(
        &mut self,
        i: usize,
        wid: u64,
        job: &Job,
        how: Completion,
        started: Instant,
    ) -> Outcome {
        let busy = self.count(State::Busy);
        // A stale report (the slot was reaped or reused meanwhile) still
        // answers its requester but changes no slot.
        let current = self.slots[i].wid == wid && self.slots[i].state == State::Busy;
        if current {
            self.count_request(i, job, busy, started);
        }
        let outcome = self.outcome_of(i, job, how, current, busy);
        if current {
            self.after_command(i, job);
        }
        self.pump_queue();
        outcome
    }

    /// What the requester gets for how the command ended; a worker that
    /// timed out, failed to take the command or broke the protocol is
    /// retired (only if the report is `current`).
    fn outcome_of(
        &mut self,
        i: usize,
        job: &Job,
        how: Completion,
        current: bool,
        busy: usize,
    ) -> Outcome {
        match how {
            Completion::Reply { bytes, violation } => {
                self.replied(i, current, violation);
                Outcome::Reply(bytes)
            }
            Completion::Eof(bytes) => {
                if current {
                    self.hung_up(i);
                }
                if bytes.is_empty() {
                    Outcome::NoResponse
                } else {
                    Outcome::Reply(bytes)
                }
            }
            Completion::Timeout => {
                if job.kind == JobKind::Client {
                    self.emit(|n| n.busy_timeout());
                }
                if current {
                    self.kill(i, "Busy timeout");
                }
                Outcome::Timeout {
                    overloaded: busy > 3,
                }
            }
            Completion::WriteFailed => {
                if current {
                    self.kill(i, "Error writing command to worker");
                }
                Outcome::WriteFailed
            }
        }
    }

    /// Counts a finished command of slot `i` in its totals and, for a
    /// client's tracked command, in the history (protocol/multiplexor.md §5.10).
    fn count_request(&mut self, i: usize, job: &Job, busy: usize, started: Instant) {
        self.slots[i].num_requests += 1;
        if job.kind == JobKind::Client && job.class.tracked_index().is_some() {
            let ms = started.elapsed().as_millis() as u64;
            self.history.record(job.class, epoch_now(), busy, ms);
            if job.class == Class::Scan {
                self.slots[i].num_scans += 1;
                self.msgs += 1;
            }
        }
    }

    /// The worker answered: it is known to start properly; a reply that
    /// broke the protocol (`violation`) retires it all the same.
    fn replied(&mut self, i: usize, current: bool, violation: Option<&'static str>) {
        if current {
            self.slots[i].replied = true;
            let ev = self.start_failures.answered();
            self.announce(ev);
        }
        if let Some(why) = violation {
            daemon::log(LOG_WARNING, &format!("Worker {i}: {why}; retiring it"));
            if current {
                self.kill(i, why);
            }
        }
    }

    /// The worker closed its stdout instead of answering.
    fn hung_up(&mut self, i: usize) {
        // The process is going away on its own: keep it out of
        // reach until it is reaped, but report the exit as a
        // surprise.
        self.set_state(i, State::Killed);
        self.slots[i].expected_exit = false;
        if let Some(tx) = &self.slots[i].tx {
            let _ = tx.send(ToWorker::Retire { busy: false });
        }
    }

    /// Slot `i` finished its command and is still ours: idle again unless
    /// it was retired, and retired now if it is due
    /// (protocol/multiplexor.md §7.8).
    fn after_command(&mut self, i: usize, job: &Job) {
        if self.slots[i].state == State::Busy {
            self.set_state(i, State::Idle);
            self.slots[i].idle_since = Instant::now();
            self.slots[i].cur_class = None;
        }
        if job.class == Class::Scan && job.kind == JobKind::Client {
            let n = self.slots[i].num_requests;
            self.stat("EndFilter", i, &format!("numRequests={n}"));
        }
        if self.slots[i].state == State::Idle {
            self.check_expiry(i);
        }
    }

    fn check_expiry(&mut self, i: usize) {
        let s = &self.slots[i];
        if self.shutting_down || s.retire_after {
            self.kill(i, "Multiplexor is shutting down");
        } else if s.num_requests >= self.opts.max_requests {
            let n = s.num_requests;
            self.kill(i, &format!("Worker has processed {n} requests"));
        } else if let Some(life) = self
            .opts
            .max_lifetime
            .filter(|&l| s.first_request.is_some_and(|f| f.elapsed().as_secs() > l))
        {
            self.kill(
                i,
                &format!("Worker has exceeded maximum lifetime of {life} seconds"),
            );
        } else if s.generation < self.generation {
            self.kill(i, "New generation -- forcing reread of filter rules");
        }
    }

    // ------------------------------------------------------------ retirement

    /// Retires a worker (protocol/multiplexor.md §7.12): stdin closed; a busy
    /// one gets SIGTERM at once, an idle one 10 s later; SIGKILL after another
    /// 10 s.
    pub fn kill(&mut self, i: usize, reason: &str) {
        let s = &self.slots[i];
        if matches!(s.state, State::Killed | State::Stopped) {
            return;
        }
        self.metrics.retiring(s.wid, reason);
        let s = &self.slots[i];
        let busy = s.state == State::Busy;
        let age = s.activated.map(|a| a.elapsed().as_secs()).unwrap_or(0);
        let req_age = s.first_request.map(|a| a.elapsed().as_secs()).unwrap_or(0);
        let req = s.num_requests;
        if self.opts.verbose {
            let cmd = match (busy, s.cur_class.and_then(|c| c.tracked_index().map(|_| c))) {
                (true, Some(c)) => format!("cmd={} ", c.name()),
                _ => String::new(),
            };
            daemon::log(
                LOG_INFO,
                &format!("Killing {} worker {i} pid={} {cmd}req={req} age={age} req_age={req_age}: {reason}", s.state.name().to_ascii_lowercase(), s.pid().unwrap_or(0)),
            );
        }
        if let Some(p) = &s.process {
            let _ = p.signal(libc::SIGCONT);
        }
        if let Some(tx) = &s.tx {
            let _ = tx.send(ToWorker::Retire { busy });
        }
        self.set_state(i, State::Killed);
        self.slots[i].expected_exit = true;
        self.slots[i].cur_class = None;
        self.slots[i].reservation = None;
        self.stat(
            "KillWorker",
            i,
            &format!(
                "req={req} age={age} reason=\"{}\"",
                sanitize_reason(reason.as_bytes())
            ),
        );
    }

    /// Logs a reaped worker's resource usage (with `-l`,
    /// protocol/multiplexor.md §17).
    pub fn log_usage(&self, i: usize, wid: u64, ru: &libc::rusage) {
        let s = &self.slots[i];
        if !self.opts.verbose || s.wid != wid {
            return;
        }
        daemon::log(
            LOG_INFO,
            &format!(
                "Worker {i} resource usage: req={}, scans={}, user={}.{:03}, sys={}.{:03}, nswap={}, majflt={}, minflt={}, maxrss={}, bi={}, bo={}",
                s.num_requests,
                s.num_scans,
                ru.ru_utime.tv_sec,
                ru.ru_utime.tv_usec / 1000,
                ru.ru_stime.tv_sec,
                ru.ru_stime.tv_usec / 1000,
                ru.ru_nswap,
                ru.ru_majflt,
                ru.ru_minflt,
                ru.ru_maxrss,
                ru.ru_inblock,
                ru.ru_oublock
            ),
        );
    }

    /// The worker task saw its process exit (protocol/multiplexor.md §7.13).
    pub fn reaped(&mut self, i: usize, wid: u64, status: std::process::ExitStatus) {
        use std::os::unix::process::ExitStatusExt;
        if self.slots[i].wid != wid || self.slots[i].state == State::Stopped {
            return;
        }
        self.metrics.reaped(wid, status);
        let was_killed = self.slots[i].state == State::Killed;
        let expected = was_killed && self.slots[i].expected_exit;
        if was_killed {
            self.failures = 0;
        }
        if let Some(code) = status.code() {
            self.exited_with(i, code, expected);
        } else if let Some(sig) = status.signal() {
            self.killed_by(i, sig, expected);
        }
        self.record_exit(i, wid, expected, &status);
        if !expected {
            self.emit(|n| n.worker_exited_unexpectedly());
            if self.slots[i].num_requests == 0 {
                self.log_premature_death(i);
            }
        }
        self.slot_stopped(i);
    }

    /// What the log says after a reaped worker's exit code, and whether it
    /// counts towards the run of exit-42/43 workers that stops the
    /// multiplexor.
    fn exited_with(&mut self, i: usize, code: i32, expected: bool) {
        let pid = self.slots[i].pid().unwrap_or(0);
        let prio = if expected { LOG_DEBUG } else { LOG_ERR };
        if self.opts.verbose || !expected {
            daemon::log(
                prio,
                &format!(
                    "Reap: worker {i} (pid {pid}) exited normally with status {code}{}",
                    unexpected_suffix(expected)
                ),
            );
        }
        match code {
            42 => {
                daemon::log(
                    LOG_ERR,
                    &format!(
                        "You may have a syntax error in {}.  Check it with 'perl -c'",
                        self.opts.filter.display()
                    ),
                );
                self.count_failure(42);
            }
            43 => {
                daemon::log(
                    LOG_ERR,
                    &format!("Could not execute {}", self.opts.filter.display()),
                );
                self.count_failure(43);
            }
            _ => self.failures = 0,
        }
    }

    /// What the log says after a reaped worker's fatal signal.
    fn killed_by(&mut self, i: usize, sig: i32, expected: bool) {
        let pid = self.slots[i].pid().unwrap_or(0);
        // Only a worker we meant to kill died "as expected"; one killed from
        // outside is unexpected whatever the signal (protocol/multiplexor.md §17).
        if expected && (sig == libc::SIGTERM || sig == libc::SIGKILL) {
            self.verbose(&format!(
                "Reap: worker {i} (pid {pid}) exited due to SIGTERM/SIGKILL as expected."
            ));
        } else {
            daemon::log(
                LOG_ERR,
                &format!(
                    "Reap: worker {i} (pid {pid}) exited due to signal {sig}{}",
                    unexpected_suffix(expected)
                ),
            );
        }
        // Unlike upstream, whose reset here happens only with -l, a
        // death by signal breaks the run of exit-42/43 workers
        // whatever the logging (protocol/multiplexor.md §7.13, §22).
        self.failures = 0;
    }

    /// A worker died unexpectedly before finishing any command: most likely
    /// the filter itself is broken, or a message exhausted its memory.
    fn log_premature_death(&self, i: usize) {
        if self.slots[i].oom {
            daemon::log(
                LOG_ERR,
                &format!(
                    "Worker {i} ran out of memory -- possible DoS attack due to complex MIME?"
                ),
            );
        } else if self.opts.verbose {
            daemon::log(
                LOG_ERR,
                &format!("Worker {i} died prematurely -- check your filter rules"),
            );
        } else {
            daemon::log(
                LOG_ERR,
                &format!("Worker {i} died prematurely -- check your filter rules and use the '-l' flag on mailmunge-multiplexor to see Perl error messages"),
            );
        }
    }

    /// Slot `i`'s process is gone: the slot is Stopped and free for a
    /// queued request or for the minimum filler.
    fn slot_stopped(&mut self, i: usize) {
        {
            let s = &mut self.slots[i];
            s.process = None;
            s.tx = None;
            s.activated = None;
            s.first_request = None;
            s.cur_class = None;
            s.reservation = None;
        }
        self.set_state(i, State::Stopped);
        self.history.reaped(epoch_now());
        self.stat("ReapWorker", i, "");
        self.pump_queue();
        if self.running() < self.opts.min_workers {
            if let Some(me) = self.me.upgrade() {
                me.fill.notify_one();
            }
        }
    }

    /// Keeps a worker that died before answering as the last start-up
    /// failure (protocol/multiplexor.md §26).
    fn record_exit(
        &mut self,
        i: usize,
        wid: u64,
        expected: bool,
        status: &std::process::ExitStatus,
    ) {
        use std::os::unix::process::ExitStatusExt;
        let s = &self.slots[i];
        if expected || s.replied || s.oom {
            self.start_failures.forget(wid);
            return;
        }
        let exit = match (status.code(), status.signal()) {
            (Some(code), _) => format!("exit status {code}"),
            (None, Some(sig)) => format!("signal {sig}"),
            _ => "unknown exit".into(),
        };
        let ev = self.start_failures.died(StartFailure {
            wid,
            slot: i,
            pid: s.pid().unwrap_or(0),
            exit,
            at: epoch_now(),
            stderr: None,
        });
        self.announce(ev);
    }

    /// A worker's stderr reached its end; `tail` is what it wrote last.
    pub fn worker_stderr_closed(&mut self, i: usize, wid: u64, tail: &StderrTail) {
        let s = &self.slots[i];
        let reaped = s.wid != wid || s.state == State::Stopped;
        if !reaped && s.replied {
            return;
        }
        let ev = self.start_failures.stderr_closed(wid, tail, reaped);
        self.announce(ev);
    }

    /// Logs a start-up failure or recovery and shows it in systemd's status.
    fn announce(&self, ev: Option<startfail::Event>) {
        let status = match ev {
            None => return,
            Some(startfail::Event::Failed(line)) => {
                daemon::log(LOG_ERR, &line);
                self.start_failures.current().map(|f| f.headline())
            }
            Some(startfail::Event::Recovered) => {
                daemon::log(LOG_INFO, "Workers answer requests again");
                Some("workers answer requests".into())
            }
        };
        if let Some(st) = status {
            // Under systemd only; errors do not matter to the pool.
            let _ = crate::sys::sdnotify::notify(&format!("STATUS={st}"));
        }
    }

    // ------------------------------------------------------------ timers

    /// The idle timer (protocol/multiplexor.md §7.9).
    pub fn idle_sweep(&mut self) {
        if let Some(life) = self.opts.max_lifetime {
            for i in 0..self.slots.len() {
                let s = &self.slots[i];
                if s.state == State::Idle
                    && s.first_request
                        .is_some_and(|f| f.elapsed().as_secs() > life)
                {
                    self.kill(
                        i,
                        &format!("Worker has exceeded maximum lifetime of {life} seconds"),
                    );
                }
            }
        }
        let mut running = self.count(State::Idle) + self.count(State::Busy);
        let mut idle: Vec<usize> = (0..self.slots.len())
            .filter(|&i| self.slots[i].state == State::Idle)
            .collect();
        idle.sort_by_key(|&i| std::cmp::Reverse(self.slots[i].list_seq));
        for i in idle {
            if running <= self.opts.min_workers {
                break;
            }
            if self.slots[i].idle_since.elapsed().as_secs() >= self.opts.idle_time {
                self.kill(i, "Idle timeout");
                running -= 1;
            }
        }
        if self.running() < self.opts.min_workers {
            if let Some(me) = self.me.upgrade() {
                me.fill.notify_one();
            }
        }
    }

    /// `reread` / SIGINT (protocol/multiplexor.md §7.11).
    pub fn reread(&mut self) {
        self.generation += 1;
        self.launcher.reload();
        for i in 0..self.slots.len() {
            if self.slots[i].state == State::Idle {
                self.kill(i, "Forcing reread of filter rules");
            }
        }
        self.emit(|n| n.reread());
        if let Some(me) = self.me.upgrade() {
            me.fill.notify_one();
        }
    }

    /// Starts the SIGTERM shutdown: no new work, idle workers retired now,
    /// busy ones when their command completes, queued requests answered.
    pub fn begin_shutdown(&mut self) {
        self.shutting_down = true;
        while let Some(q) = self.queue.pop_front() {
            let _ = q.job.reply.send(Outcome::ShuttingDown);
        }
        for i in 0..self.slots.len() {
            match self.slots[i].state {
                State::Idle => self.kill(i, "Multiplexor is shutting down"),
                // A reserved worker has no command to finish; its client's
                // scan gets the shutting-down answer
                // (protocol/multiplexor.md §27.4).
                State::Busy if self.slots[i].reservation.is_some() => {
                    self.kill(i, "Multiplexor is shutting down")
                }
                State::Busy => self.slots[i].retire_after = true,
                _ => {}
            }
        }
    }

    /// Worker processes not yet reaped.
    pub fn live_processes(&self) -> Vec<ProcessHandle> {
        self.slots
            .iter()
            .filter_map(|s| s.process.clone())
            .collect()
    }

    /// The worker counts and totals that `-L` logs and the `load`
    /// replies end with.
    pub fn counters(&self) -> Counters {
        Counters {
            busy: self.count(State::Busy),
            idle: self.count(State::Idle),
            stopped: self.count(State::Stopped),
            killed: self.count(State::Killed),
            queued: self.queue.len(),
            msgs: self.msgs,
            activations: self.activations,
        }
    }

    /// The `-L` status line (protocol/multiplexor.md §15.3).
    pub fn status_log_line(&self) -> String {
        let c = self.counters();
        format!(
            "Worker status: Stopped={} Idle={} Busy={} Killed={} Queued={} Msgs={} Activations={}",
            c.stopped, c.idle, c.busy, c.killed, c.queued, c.msgs, c.activations
        )
    }
}

/// A snapshot of the pool's counters (see `Pool::counters`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    pub busy: usize,
    pub idle: usize,
    pub stopped: usize,
    pub killed: usize,
    pub queued: usize,
    pub msgs: u64,
    pub activations: u64,
}

/// Ends a reap log line: nothing when we asked the worker to go.
fn unexpected_suffix(expected: bool) -> &'static str {
    if expected {
        ""
    } else {
        " (WORKER DIED UNEXPECTEDLY)"
    }
}

/// The reason logged and counted when a job activates a stopped worker.
fn activation_reason(job: &Job) -> String {
    match job.kind {
        JobKind::Tick(_) => "About to run tick".to_string(),
        JobKind::Map => "About to handle map request".to_string(),
        JobKind::Client if job.class == Class::Scan => "About to perform scan".to_string(),
        JobKind::Client => {
            let head = &job.line[..job.line.len().min(100)];
            format!("About to execute command '{}'", sanitize_reason(head))
        }
    }
}

/// The status tag for a dispatched command (protocol/multiplexor.md §8): first
/// word and first argument, percent-decoded, control bytes blanked, at most 63
/// bytes.
pub fn tag_from_command(line: &[u8]) -> String {
    let end = line
        .iter()
        .enumerate()
        .filter(|(_, &b)| b == b' ')
        .nth(1)
        .map(|(p, _)| p)
        .unwrap_or(line.len());
    let mut s = printable_tag(&line[..end.min(MAX_STATUS_LEN)]);
    s.truncate(MAX_STATUS_LEN);
    s
}

/// Percent-decodes a status tag and blanks every byte that is not
/// printable ASCII, so a tag can never break a reply or log line
/// (protocol/multiplexor.md §8).
pub fn printable_tag(raw: &[u8]) -> String {
    crate::wire::percent::decode(raw)
        .iter()
        .map(|&b| {
            if (0x20..=0x7e).contains(&b) {
                b as char
            } else {
                ' '
            }
        })
        .collect()
}

/// The queue id remembered for logging (protocol/multiplexor.md §6.1), still
/// percent-encoded.
pub fn queue_id(class: Class, line: &[u8]) -> String {
    let idx = match class {
        Class::RelayOk => 6,
        Class::SenderOk => 6,
        Class::RecipOk => 8,
        Class::Scan => 1,
        Class::Other => return String::new(),
    };
    let w = line.split(|&b| b == b' ').nth(idx).unwrap_or(b"");
    printable(&w[..w.len().min(31)])
}

/// Bytes as text for logs: printable ASCII kept, anything else `?`.
fn printable(b: &[u8]) -> String {
    b.iter()
        .map(|&c| {
            if (0x21..=0x7e).contains(&c) {
                c as char
            } else {
                '?'
            }
        })
        .collect()
}

/// The recipient domain of a `recipok` line for `-y`
/// (protocol/multiplexor.md §11, with §20.5's fix): the first argument,
/// percent-decoded, the part after its last `@` up to `>`; lower-cased; at most
/// 127 bytes; empty when there is none.
pub fn recipient_domain(line: &[u8]) -> String {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let Some(arg) = line.split(|&b| b == b' ').nth(1) else {
        return String::new();
    };
    let rcpt = crate::wire::percent::decode(arg);
    let Some(at) = rcpt.iter().rposition(|&b| b == b'@') else {
        return String::new();
    };
    let dom: Vec<u8> = rcpt[at + 1..]
        .iter()
        .copied()
        .take_while(|&b| b != b'>' && b != b' ')
        .take(127)
        .collect();
    printable(&dom).to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags() {
        assert_eq!(
            tag_from_command(b"scan NOQUEUE /var/spool/x"),
            "scan NOQUEUE"
        );
        assert_eq!(
            tag_from_command(b"recipok <a@example.com> <b@c>"),
            "recipok <a@example.com>"
        );
        assert_eq!(tag_from_command(b"sleep 2"), "sleep 2");
        assert_eq!(tag_from_command(b"map virt%0Auser key"), "map virt user");
        assert_eq!(tag_from_command(&[b'x'; 100]).len(), 63);
    }

    #[test]
    fn queue_ids() {
        assert_eq!(
            queue_id(Class::RelayOk, b"relayok 1.2.3.4 h 25 5.6.7.8 25 QID1"),
            "QID1"
        );
        assert_eq!(
            queue_id(Class::SenderOk, b"senderok <a> ip name helo dir QID2 X"),
            "QID2"
        );
        assert_eq!(
            queue_id(
                Class::RecipOk,
                b"recipok <r> <s> ip name first helo dir QID3 m h a"
            ),
            "QID3"
        );
        assert_eq!(queue_id(Class::Scan, b"scan QID4 /dir"), "QID4");
        assert_eq!(queue_id(Class::Other, b"ping"), "");
    }

    #[test]
    fn domains() {
        assert_eq!(
            recipient_domain(b"recipok <a@Example.COM> <s@other.org> x\n"),
            "example.com"
        );
        assert_eq!(recipient_domain(b"recipok <a%40b@c.d> x"), "c.d");
        assert_eq!(recipient_domain(b"recipok <postmaster> <s@other.org>"), "");
        assert_eq!(recipient_domain(b"recipok"), "");
        // Non-ASCII bytes cannot make the truncation panic.
        let mut long = b"recipok <a@".to_vec();
        long.extend(std::iter::repeat_n("é".as_bytes(), 100).flatten());
        assert_eq!(recipient_domain(&long).len(), 127);
        let mut q = b"scan ".to_vec();
        q.extend(std::iter::repeat_n("é".as_bytes(), 40).flatten());
        assert_eq!(queue_id(Class::Scan, &q).len(), 31);
    }

    #[test]
    fn classes() {
        assert_eq!(Class::of(b"scan a b\n"), Class::Scan);
        assert_eq!(Class::of(b"relayok x"), Class::RelayOk);
        assert_eq!(Class::of(b"senderok x"), Class::SenderOk);
        assert_eq!(Class::of(b"recipok x"), Class::RecipOk);
        assert_eq!(Class::of(b"scan"), Class::Other);
        assert_eq!(Class::of(b"helook x"), Class::Other);
    }

    #[test]
    fn client_texts() {
        assert_eq!(
            Outcome::NoResponse.client_bytes(),
            b"ERR No response from worker\n"
        );
        assert_eq!(
            Outcome::Timeout { overloaded: false }.client_bytes(),
            b"ERR Filter timed out - check filter rules or system load\n"
        );
        assert_eq!(Outcome::NoFree.client_bytes(), b"error: No free workers\n");
        assert_eq!(Outcome::Reply(b"ok\n".to_vec()).client_bytes(), b"ok\n");
    }
}
