//! The end of a message's working directory
//! (protocol/milter.md §3.10, §4.3).

use std::path::{Path, PathBuf};
use std::time::Duration;

use indymilter::Status;

use super::{Config, Conn};
use crate::milter::spool::{self, WorkDir};
use crate::mm_log;
use crate::sys::blocking;

/// The filter (or the multiplexor running it) failed: tempfail, and keep
/// the working directory for inspection when `-k` asks for that.
pub(super) async fn filter_failed(cfg: &Config, conn: &mut Conn) -> Status {
    if let Some(msg) = conn.msg.as_mut() {
        msg.filter_failed = true;
    }
    cleanup(cfg, conn).await;
    Status::Tempfail
}

/// A spool file could not be written: log why, clean up, tempfail.
pub(super) async fn write_failed(
    cfg: &Config,
    conn: &mut Conn,
    qid: &str,
    why: impl std::fmt::Display,
) -> Status {
    mm_log!(Warning, qid = qid, "{why}");
    cleanup(cfg, conn).await;
    Status::Tempfail
}

/// Closes the files and removes the working directory unless told to keep
/// it (protocol/milter.md §4.3), on the blocking pool. Forgets the message
/// either way.
pub(super) async fn cleanup(cfg: &Config, conn: &mut Conn) {
    let Some(mut msg) = conn.msg.take() else {
        return;
    };
    // An unused reservation: closing its connection frees the worker now
    // (protocol/milter.md §17).
    drop(msg.reservation.take());
    let keep = KeepRules {
        debug: cfg.debug,
        flag: cfg.no_delete_flag(),
        keep_failed: cfg.keep_failed && msg.filter_failed,
    };
    let qid = conn.qid();
    blocking::run(move || remove_working_directory(&keep, &qid, msg.dir)).await;
}

/// What keeps a working directory after its message (protocol/milter.md §4.3).
struct KeepRules {
    /// `-d`
    debug: bool,
    /// `<spool>/DO-NOT-DELETE-WORK-DIRS`
    flag: PathBuf,
    /// `-k` and the filter failed.
    keep_failed: bool,
}

/// Blocking: runs on the blocking pool.
fn remove_working_directory(keep: &KeepRules, qid: &str, mut dir: WorkDir) {
    if dir.path.is_empty() {
        return;
    }
    let path = dir.path.clone();
    if keep.debug {
        keep_written(qid, &mut dir);
        mm_log!(
            Info,
            qid = qid,
            "Not cleaning up {path} because of command-line `-d' flag"
        );
        return;
    }
    let flag = &keep.flag;
    if flag.exists() {
        keep_written(qid, &mut dir);
        mm_log!(
            Info,
            qid = qid,
            "Not cleaning up {path} because of {}",
            flag.display()
        );
        return;
    }
    if keep.keep_failed {
        keep_written(qid, &mut dir);
        mm_log!(Warning, qid = qid, "Filter failed.  Message kept in {path}");
        return;
    }
    drop(dir.into_path());
    if let Err(e) = remove_settled(Path::new(&path), &mut |m| mm_log!(Warning, "{m}")) {
        mm_log!(Error, qid = qid, "failed to clean up {path}: {e}");
    }
}

/// A kept directory holds everything received, as if every callback had
/// written its part at once: what is still queued goes to the files.
fn keep_written(qid: &str, dir: &mut WorkDir) {
    if let Err(e) = dir.flush_blocking() {
        mm_log!(Warning, qid = qid, "{e}");
    }
}

/// Pauses between removal attempts; their sum (about 1.6 s) bounds the
/// time a broken worker may go on writing in the directory.
const REMOVE_PAUSES: [Duration; 6] = [
    Duration::from_millis(25),
    Duration::from_millis(50),
    Duration::from_millis(100),
    Duration::from_millis(200),
    Duration::from_millis(400),
    Duration::from_millis(800),
];

/// Removes a working directory, trying again while it still exists after
/// an attempt that found the tree changing under it: a worker whose reply
/// was taken before it finished (a broken filter answering early, or with
/// garbage) may still be creating files there, and one created between the
/// walk and the `rmdir` would otherwise leave the directory in the spool
/// for good (protocol/milter.md §12). Only the last attempt's warnings are
/// passed to `warn`. Blocking.
fn remove_settled(dir: &Path, warn: &mut dyn FnMut(String)) -> std::io::Result<()> {
    remove_settled_with(dir, warn, spool::remove_tree)
}

/// [`remove_settled`] with the tree walk as a parameter (tests replay a
/// race through it).
fn remove_settled_with(
    dir: &Path,
    warn: &mut dyn FnMut(String),
    mut remove: impl FnMut(&Path, &mut dyn FnMut(String)) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let mut pauses = REMOVE_PAUSES.iter();
    let mut retried = false;
    loop {
        let mut warnings = Vec::new();
        let Err(e) = remove(dir, &mut |m| warnings.push(m)) else {
            return Ok(());
        };
        let gone = std::fs::symlink_metadata(dir).is_err();
        if gone && retried {
            // Removed after all, by whoever else wrote there.
            return Ok(());
        }
        // Entries appearing (ENOTEMPTY) or vanishing (ENOENT) under the
        // walk mean someone is still at work there; any other error (a
        // permission, a read-only file system) would not go away.
        let racing = matches!(e.raw_os_error(), Some(libc::ENOTEMPTY | libc::ENOENT));
        match pauses.next() {
            Some(p) if !gone && racing => {
                std::thread::sleep(*p);
                retried = true;
            }
            _ => {
                warnings.into_iter().for_each(&mut *warn);
                return Err(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// Entries keep appearing for a while (a worker still writing): the
    /// removal waits until they stop and then succeeds.
    #[test]
    fn removal_outlasts_a_writer() {
        let top = tempfile::tempdir().unwrap();
        let dir = top.path().join("mm-busy");
        std::fs::create_dir(&dir).unwrap();
        let writer_dir = dir.clone();
        let writer = std::thread::spawn(move || {
            let end = Instant::now() + Duration::from_secs(1);
            let mut n = 0u64;
            while Instant::now() < end {
                // Fails once the directory is gone: a removed directory
                // takes no new entries.
                if std::fs::write(writer_dir.join(format!("junk-{n}")), b"x").is_err() {
                    break;
                }
                n += 1;
            }
            end
        });
        // The writer is under way (two entries) before the removal starts.
        let t0 = Instant::now();
        while std::fs::read_dir(&dir).unwrap().take(2).count() < 2 {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "the writer never started"
            );
            std::thread::yield_now();
        }
        let started = Instant::now();
        let mut warnings = Vec::new();
        let r = remove_settled(&dir, &mut |m| warnings.push(m));
        let writer_end = writer.join().unwrap();
        assert!(
            started < writer_end,
            "the removal began after the writer had stopped"
        );
        assert!(r.is_ok(), "{r:?} {warnings:?}");
        assert!(!dir.exists());
        assert!(warnings.is_empty(), "{warnings:?}");
    }

    /// The race replayed: a file appears after the walk emptied the
    /// directory, so its rmdir fails; the next attempt removes it.
    #[test]
    fn entry_created_during_the_walk_is_removed_by_the_next_attempt() {
        let top = tempfile::tempdir().unwrap();
        let dir = top.path().join("mm-race");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("RESULTS"), b"F\n").unwrap();
        let mut calls = 0;
        let mut warnings = Vec::new();
        let r = remove_settled_with(&dir, &mut |m| warnings.push(m), |d, w| {
            calls += 1;
            if calls == 1 {
                std::fs::write(d.join("late"), b"x").unwrap();
                w("rm_r: rmdir(...) failed: Directory not empty".into());
                return Err(std::io::Error::from_raw_os_error(libc::ENOTEMPTY));
            }
            spool::remove_tree(d, w)
        });
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(calls, 2);
        assert!(!dir.exists());
        assert!(
            warnings.is_empty(),
            "only the last attempt's warnings count: {warnings:?}"
        );
    }

    #[test]
    fn lasting_failure_is_reported_after_the_last_attempt() {
        let top = tempfile::tempdir().unwrap();
        let mut calls = 0;
        let mut warnings = Vec::new();
        let r = remove_settled_with(top.path(), &mut |m| warnings.push(m), |_, w| {
            calls += 1;
            w(format!("attempt {calls}"));
            Err(std::io::Error::from_raw_os_error(libc::ENOTEMPTY))
        });
        assert!(r.is_err());
        assert_eq!(calls, REMOVE_PAUSES.len() + 1);
        assert_eq!(warnings, vec![format!("attempt {calls}")]);
    }

    #[test]
    fn other_errors_are_not_retried() {
        let top = tempfile::tempdir().unwrap();
        let mut calls = 0;
        let r = remove_settled_with(top.path(), &mut |_| {}, |_, _| {
            calls += 1;
            Err(std::io::Error::from_raw_os_error(libc::EACCES))
        });
        assert!(r.is_err());
        assert_eq!(calls, 1);
    }

    #[test]
    fn missing_directory_is_reported_at_once() {
        let top = tempfile::tempdir().unwrap();
        let t0 = Instant::now();
        let mut warnings = Vec::new();
        let r = remove_settled(&top.path().join("mm-gone"), &mut |m| warnings.push(m));
        assert!(r.is_err());
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].starts_with("rm_r: lstat("), "{warnings:?}");
        // Nothing there to wait for.
        assert!(t0.elapsed() < REMOVE_PAUSES[0], "{:?}", t0.elapsed());
    }
}
