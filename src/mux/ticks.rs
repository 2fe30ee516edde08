//! Periodic ticks (`-X`, `-P`; protocol/multiplexor.md §12): for each tick type
//! one timer; `tick <N>` goes to a free worker, its answer is ignored, and the
//! next tick of that type is due `-X` seconds after completion, so at most one
//! tick per type is ever in flight.

use std::sync::Arc;
use std::time::Duration;

use super::job::{Job, JobKind, Outcome};
use super::pool::Mux;
use crate::sys::daemon::{self, LOG_INFO, LOG_WARNING};

/// Starts one timer task per tick type (nothing when `-X` is 0).
pub fn start(mux: &Arc<Mux>) {
    if mux.opts.tick_interval == 0 {
        return;
    }
    for n in 0..mux.opts.tick_types {
        tokio::spawn(run(mux.clone(), n));
    }
}

async fn run(mux: Arc<Mux>, n: u32) {
    let period = Duration::from_secs(mux.opts.tick_interval);
    loop {
        tokio::time::sleep(period).await;
        let (job, rx) = Job::new(format!("tick {n}\n").into_bytes(), JobKind::Tick(n));
        mux.lock().submit(job, false);
        match rx.await {
            Ok(Outcome::NoFree) => {
                daemon::log(LOG_INFO, &format!("Tick {n} skipped -- no free workers"))
            }
            Ok(Outcome::ActivateFailed) => daemon::log(
                LOG_WARNING,
                &format!("Tick {n} skipped -- unable to activate worker"),
            ),
            _ => {}
        }
    }
}
