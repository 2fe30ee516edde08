//! Worker reservations (protocol/multiplexor.md §27): a worker held for
//! one control connection's next scan. Part of the pool and run under its
//! lock like the rest; it calls only the pool's own methods.

use std::time::Instant;

use super::{Class, Pool, State};
use crate::mux::job::Job;
use crate::sys::daemon::{self, LOG_WARNING};

/// A worker held for one control connection's next scan
/// (protocol/multiplexor.md §27).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation {
    pub slot: usize,
    pub wid: u64,
    pub id: u64,
}

/// The answer to a reservation request (protocol/multiplexor.md §27.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reserve {
    Held(Reservation),
    /// The multiplexor queues requests (`-q`): no reservation is needed.
    Declined,
    /// No free worker (beyond the `keep` the client asked to leave).
    NoFree,
    ActivateFailed,
    ShuttingDown,
}

impl Pool {
    /// Holds a worker for a client's next scan
    /// (protocol/multiplexor.md §27.2): an idle one, else a stopped slot activated for it, as for a
    /// scan; none when `keep` or fewer are free. With `-q` requests wait in
    /// the queue instead, so nothing is reserved. A refusal is logged and
    /// counted only on the `last` try (the caller may wait and try again).
    pub fn reserve(&mut self, qid: &str, keep: usize, last: bool) -> Reserve {
        if self.shutting_down {
            return Reserve::ShuttingDown;
        }
        if self.opts.queue_size > 0 {
            return Reserve::Declined;
        }
        let found = if self.free() > keep {
            self.find_free(Class::Scan)
        } else {
            None
        };
        let Some(i) = found else {
            if !last {
                return Reserve::NoFree;
            }
            daemon::log(
                LOG_WARNING,
                &format!("{qid}: No free workers: cannot reserve one for this message"),
            );
            self.metrics.reservation("refused");
            return Reserve::NoFree;
        };
        if self.slots[i].state == State::Stopped
            && self
                .activate(i, "About to reserve a worker for a scan")
                .is_err()
        {
            self.metrics.reservation("activate_failed");
            return Reserve::ActivateFailed;
        }
        let held = self.hold(i, qid);
        self.metrics.reservation("held");
        Reserve::Held(held)
    }

    /// Marks the free worker of slot `i` as held for `qid`: Busy with no
    /// command, so no other request is given to it.
    fn hold(&mut self, i: usize, qid: &str) -> Reservation {
        let id = self.next_reservation;
        self.next_reservation += 1;
        self.set_state(i, State::Busy);
        let s = &mut self.slots[i];
        s.reservation = Some(id);
        s.cur_class = None;
        s.qid = qid.chars().take(31).collect();
        self.set_tag(i, &format!("reserved {qid}"), true);
        Reservation {
            slot: i,
            wid: self.slots[i].wid,
            id,
        }
    }

    /// Whether `r` still holds its worker (it is lost when the worker died
    /// or the multiplexor began shutting down).
    fn holds(&self, r: &Reservation) -> bool {
        let s = &self.slots[r.slot];
        s.wid == r.wid && s.state == State::Busy && s.reservation == Some(r.id)
    }

    /// Ends a reservation that no scan used: the worker is idle again and
    /// goes through the usual retirement checks. `why` is logged when set.
    pub fn release(&mut self, r: &Reservation, why: Option<&str>) {
        if !self.holds(r) {
            return;
        }
        let i = r.slot;
        if let Some(why) = why {
            daemon::log(
                LOG_WARNING,
                &format!(
                    "{}: Worker {i} reserved but not used: {why}; releasing it",
                    self.slots[i].qid
                ),
            );
        }
        self.metrics
            .reservation(if why.is_some() { "expired" } else { "released" });
        self.slots[i].reservation = None;
        self.set_state(i, State::Idle);
        self.slots[i].idle_since = Instant::now();
        self.check_expiry(i);
        self.pump_queue();
    }

    /// Runs a client's job on its reserved worker; when the reservation was
    /// lost meanwhile, the job takes the usual path
    /// (protocol/multiplexor.md §6.1).
    pub fn submit_reserved(&mut self, r: &Reservation, job: Job) -> Option<u64> {
        if self.shutting_down || !self.holds(r) {
            return self.submit(job, true);
        }
        self.metrics.reservation("used");
        self.start_job(r.slot, job, String::new());
        None
    }
}
