//! The notifier socket, `mailmunge-multiplexor -O`
//! (protocol/multiplexor.md §14).
//!
//! Monitoring programs connect, get `*OK\n`, subscribe with a line
//! `?LETTERS` (`A`–`Z`, or `*` for all) and then receive one line per event
//! of a subscribed type; lines starting with `*` go to every listener.
//!
//! The pool reports events through a [`Notifier`], a cheap cloneable handle
//! whose methods never block: each message is appended to each listener's
//! pending buffer and that listener's task writes it out. [`run`] accepts
//! and serves the listeners.
//!
//! ```ignore
//! let notifier = notify::Notifier::new();
//! tokio::spawn(notify::run(spec.bind(5)?, notifier.clone(), shutdown));
//! // in the pool, on every state change:
//! notifier.state_change(slot, "Idle", "Busy", idle + stopped);
//! notifier.status_tag(slot, tag.as_bytes());
//! notifier.busy_timeout();             // B, before killing for -b
//! notifier.reread();                   // R
//! notifier.worker_exited_unexpectedly(); // U
//! ```
//!
//! Differences from upstream (protocol/notify.md): the pending buffer holds
//! [`MAX_PENDING`] bytes instead of 256, and a listener that falls that far
//! behind is disconnected instead of silently losing older messages; every
//! subscription line in a packet is honoured; newlines inside a status tag
//! become spaces so they cannot forge messages.

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::Notify;

use crate::cformat::string::until_nul;
use crate::wire::sockspec::{Listener, Stream};

/// Simultaneous listeners (upstream `MAX_LISTENERS`).
pub const MAX_LISTENERS: usize = 5;
/// A subscription line is read into this many bytes; the last one is
/// taken for the newline, as upstream does.
pub const MAX_LINE: usize = 256;
/// Pending bytes per listener before it is disconnected.
pub const MAX_PENDING: usize = 64 * 1024;
/// Time allowed for each write to a listener.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Status tags are cut to this many bytes in `S` messages.
pub const MAX_TAG: usize = 200;

const BANNER: &[u8] = b"*OK\n";
const NO_SLOTS: &[u8] = b"*ERR No free listening slots\n";

struct Slot {
    id: u64,
    /// Bit n set: subscribed to letter `A + n`.
    types: u32,
    pending: Vec<u8>,
    overflowed: bool,
    wake: Arc<Notify>,
}

#[derive(Default)]
struct Hub {
    slots: Vec<Slot>,
    next_id: u64,
    /// Free count at the last state change; `None` before the first.
    last_free: Option<usize>,
}

/// The handle the pool reports events through. Cloning is cheap; all
/// clones feed the same listeners.
#[derive(Clone, Default)]
pub struct Notifier {
    hub: Arc<Mutex<Hub>>,
}

fn letter_bit(b: u8) -> Option<u32> {
    b.is_ascii_uppercase().then(|| 1u32 << (b - b'A'))
}

impl Notifier {
    pub fn new() -> Notifier {
        Notifier::default()
    }

    fn lock(&self) -> MutexGuard<'_, Hub> {
        // A panic while holding the lock cannot leave the hub inconsistent
        // in a way that matters more than losing notifications.
        self.hub.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Delivers one message (ending in `\n`) to every listener interested
    /// in it: a message starting with `A`–`Z` only to listeners subscribed
    /// to that letter, any other to all.
    pub fn send(&self, msg: &[u8]) {
        let mut hub = self.lock();
        deliver(&mut hub, msg);
    }

    /// `B`: a worker was killed for exceeding the busy timeout on a client
    /// request (not for ticks or map lookups).
    pub fn busy_timeout(&self) {
        self.send(b"B\n");
    }

    /// `R`: the filter rules are being reread (`reread` or SIGINT).
    pub fn reread(&self) {
        self.send(b"R\n");
    }

    /// `U`: a worker exited while not in the Killed state.
    pub fn worker_exited_unexpectedly(&self) {
        self.send(b"U\n");
    }

    /// `S <n> <tag>`: worker `n`'s status tag was set. Empty tags are not
    /// reported; tags are cut at a NUL byte and to [`MAX_TAG`] bytes.
    pub fn status_tag(&self, worker: usize, tag: &[u8]) {
        let tag = until_nul(tag);
        if tag.is_empty() {
            return;
        }
        let mut msg = format!("S {worker} ").into_bytes();
        msg.extend(tag[..tag.len().min(MAX_TAG)].iter().map(|&b| {
            if b == b'\n' || b == b'\r' {
                b' '
            } else {
                b
            }
        }));
        msg.push(b'\n');
        self.send(&msg);
    }

    /// A worker changed state (names `Stopped`, `Idle`, `Busy`, `Killed`);
    /// `free_now` is the number of Idle plus Stopped workers after the
    /// change. Sends `S <n> StateChange <old> -> <new>`, then `F <free>`
    /// when the free count differs from the previous change's (always on
    /// the first), `Z` while it is 0, and `Y` when it left 0.
    pub fn state_change(&self, worker: usize, old: &str, new: &str, free_now: usize) {
        let mut hub = self.lock();
        deliver(
            &mut hub,
            format!("S {worker} StateChange {old} -> {new}\n").as_bytes(),
        );
        let last = hub.last_free.replace(free_now);
        if last != Some(free_now) {
            deliver(&mut hub, format!("F {free_now}\n").as_bytes());
        }
        if free_now == 0 {
            deliver(&mut hub, b"Z\n");
        }
        if last == Some(0) && free_now != 0 {
            deliver(&mut hub, b"Y\n");
        }
    }

    /// A callback that sends each message it is given plus a newline, for
    /// code that produces messages as text without the `\n`.
    pub fn line_sink(&self) -> impl Fn(&str) + Send + Sync + 'static {
        let n = self.clone();
        move |msg: &str| {
            let mut line = Vec::with_capacity(msg.len() + 1);
            line.extend_from_slice(msg.as_bytes());
            line.push(b'\n');
            n.send(&line);
        }
    }

    /// How many listeners are connected.
    pub fn listeners(&self) -> usize {
        self.lock().slots.len()
    }

    /// How many listeners receive messages of type `letter` (`A`–`Z`).
    pub fn subscribed(&self, letter: u8) -> usize {
        let Some(bit) = letter_bit(letter) else {
            return 0;
        };
        self.lock()
            .slots
            .iter()
            .filter(|s| s.types & bit != 0)
            .count()
    }

    fn add_listener(&self) -> Option<(u64, Arc<Notify>)> {
        let mut hub = self.lock();
        if hub.slots.len() >= MAX_LISTENERS {
            return None;
        }
        let id = hub.next_id;
        hub.next_id += 1;
        let wake = Arc::new(Notify::new());
        hub.slots.push(Slot {
            id,
            types: 0,
            pending: BANNER.to_vec(),
            overflowed: false,
            wake: wake.clone(),
        });
        wake.notify_one();
        Some((id, wake))
    }

    fn remove_listener(&self, id: u64) {
        self.lock().slots.retain(|s| s.id != id);
    }

    fn subscribe(&self, id: u64, line: &[u8]) {
        let Some(letters) = line.strip_prefix(b"?") else {
            return;
        };
        let mut types = 0u32;
        for &b in letters {
            if b == b'*' {
                types = (1 << 26) - 1;
            } else if let Some(bit) = letter_bit(b) {
                types |= bit;
            }
        }
        if let Some(s) = self.lock().slots.iter_mut().find(|s| s.id == id) {
            s.types = types;
        }
    }

    /// Takes what is pending for a listener; `None` if it overflowed or is gone.
    fn take_pending(&self, id: u64) -> Option<Vec<u8>> {
        let mut hub = self.lock();
        let s = hub.slots.iter_mut().find(|s| s.id == id)?;
        if s.overflowed {
            return None;
        }
        Some(std::mem::take(&mut s.pending))
    }
}

fn deliver(hub: &mut Hub, msg: &[u8]) {
    let bit = msg.first().and_then(|&b| letter_bit(b));
    for s in hub.slots.iter_mut() {
        if bit.is_some_and(|bit| s.types & bit == 0) || s.overflowed {
            continue;
        }
        if s.pending.len() + msg.len() > MAX_PENDING {
            s.overflowed = true;
            s.pending = Vec::new();
        } else {
            s.pending.extend_from_slice(msg);
        }
        s.wake.notify_one();
    }
}

/// Removes the slot when the listener's task ends, aborted tasks included.
struct SlotGuard {
    notifier: Notifier,
    id: u64,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.notifier.remove_listener(self.id);
    }
}

/// The bytes of a subscription line as upstream sees them: at most
/// `MAX_LINE - 1` bytes, up to a NUL.
fn line_content(line: &[u8]) -> &[u8] {
    until_nul(&line[..line.len().min(MAX_LINE - 1)])
}

async fn serve_listener(stream: Stream, notifier: Notifier, id: u64, wake: Arc<Notify>) {
    let _guard = SlotGuard {
        notifier: notifier.clone(),
        id,
    };
    let (rd, mut wr) = tokio::io::split(stream);
    let mut rd = BufReader::new(rd);
    let mut line: Vec<u8> = Vec::new();
    loop {
        tokio::select! {
            // fill_buf is cancel-safe: nothing is consumed until we do it.
            r = rd.fill_buf() => {
                let buf = match r {
                    Ok(b) => b,
                    Err(_) => return,
                };
                if buf.is_empty() {
                    // EOF closes the listener, as upstream.
                    return;
                }
                let (used, complete) = match buf.iter().position(|&b| b == b'\n') {
                    Some(n) => (n + 1, true),
                    None => (buf.len(), false),
                };
                let room = MAX_LINE.saturating_sub(line.len());
                let chunk = &buf[..used - usize::from(complete)];
                line.extend_from_slice(&chunk[..chunk.len().min(room)]);
                rd.consume(used);
                if complete {
                    notifier.subscribe(id, line_content(&line));
                    line.clear();
                }
            }
            _ = wake.notified() => {
                let Some(data) = notifier.take_pending(id) else { return };
                if data.is_empty() {
                    continue;
                }
                match tokio::time::timeout(WRITE_TIMEOUT, wr.write_all(&data)).await {
                    Ok(Ok(())) => {}
                    _ => return,
                }
            }
        }
    }
}

async fn refuse(mut stream: Stream) {
    let _ = tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(NO_SLOTS)).await;
    let _ = stream.shutdown().await;
}

/// Serves notifier listeners on `listener` until `shutdown` completes; then
/// closes every listener connection. A listener's slot is taken when it is
/// accepted, so the sixth concurrent one is refused at once.
pub async fn run(listener: Listener, notifier: Notifier, shutdown: impl Future<Output = ()>) {
    listener
        .serve_each("notifier socket", shutdown, |stream| {
            let slot = notifier.add_listener();
            let notifier = notifier.clone();
            async move {
                match slot {
                    Some((id, wake)) => serve_listener(stream, notifier, id, wake).await,
                    None => refuse(stream).await,
                }
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(n: &Notifier) -> Vec<Vec<u8>> {
        n.lock().slots.iter().map(|s| s.pending.clone()).collect()
    }

    #[test]
    fn free_count_messages() {
        let n = Notifier::new();
        let (id, _) = n.add_listener().unwrap();
        n.subscribe(id, b"?*");
        n.state_change(0, "Idle", "Busy", 3);
        n.state_change(0, "Stopped", "Idle", 3);
        n.state_change(1, "Idle", "Busy", 0);
        n.state_change(1, "Busy", "Killed", 0);
        n.state_change(1, "Killed", "Stopped", 1);
        let want = "*OK\nS 0 StateChange Idle -> Busy\nF 3\nS 0 StateChange Stopped -> Idle\n\
S 1 StateChange Idle -> Busy\nF 0\nZ\nS 1 StateChange Busy -> Killed\nZ\nS 1 StateChange Killed -> Stopped\nF 1\nY\n";
        assert_eq!(String::from_utf8(pending(&n)[0].clone()).unwrap(), want);
    }

    #[test]
    fn subscriptions_filter_letters_only() {
        let n = Notifier::new();
        let (a, _) = n.add_listener().unwrap();
        let (b, _) = n.add_listener().unwrap();
        n.subscribe(a, b"?RB");
        n.subscribe(b, b"ignored");
        n.reread();
        n.busy_timeout();
        n.worker_exited_unexpectedly();
        n.send(b"*note\n");
        n.status_tag(2, b"");
        let sink = n.line_sink();
        sink("R");
        let p = pending(&n);
        assert_eq!(p[0], b"*OK\nR\nB\n*note\nR\n");
        assert_eq!(p[1], b"*OK\n*note\n");
        assert_eq!(n.subscribed(b'R'), 1);
        n.subscribe(a, b"?U");
        assert_eq!((n.subscribed(b'R'), n.subscribed(b'U')), (0, 1));
    }

    #[test]
    fn status_tags_are_cut_and_kept_on_one_line() {
        let n = Notifier::new();
        let (a, _) = n.add_listener().unwrap();
        n.subscribe(a, b"?S");
        n.status_tag(1, &[b'x'; 300]);
        n.status_tag(2, b"two\nlines\0hidden");
        let p = pending(&n);
        let want = format!("*OK\nS 1 {}\nS 2 two lines\n", "x".repeat(200));
        assert_eq!(String::from_utf8(p[0].clone()).unwrap(), want);
    }

    #[test]
    fn slots_and_overflow() {
        let n = Notifier::new();
        let ids: Vec<u64> = (0..MAX_LISTENERS)
            .map(|_| n.add_listener().unwrap().0)
            .collect();
        assert!(n.add_listener().is_none());
        n.subscribe(ids[0], b"?*");
        for _ in 0..(MAX_PENDING / 2) {
            n.reread();
        }
        assert_eq!(n.take_pending(ids[0]), None);
        assert_eq!(n.take_pending(ids[1]), Some(BANNER.to_vec()));
        n.remove_listener(ids[0]);
        assert_eq!(n.listeners(), MAX_LISTENERS - 1);
        assert!(n.add_listener().is_some());
    }

    #[test]
    fn long_lines_lose_their_tail() {
        assert_eq!(line_content(b"?AB"), b"?AB");
        let mut long = vec![b'?'];
        long.extend(vec![b'x'; 254]);
        long.push(b'B');
        assert_eq!(line_content(&long).len(), 255);
        assert!(!line_content(&long).contains(&b'B'));
        assert_eq!(line_content(b"?A\0B"), b"?A");
    }
}
