//! The end of a message's working directory
//! (protocol/milter.md §3.10, §4.3).

use std::path::{Path, PathBuf};

use indymilter::Status;

use super::{Config, Conn};
use crate::milter::spool;
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
    let Some(msg) = conn.msg.take() else {
        return;
    };
    let keep = KeepRules {
        debug: cfg.debug,
        flag: cfg.no_delete_flag(),
        keep_failed: cfg.keep_failed && msg.filter_failed,
    };
    let qid = conn.qid();
    blocking::run(move || remove_working_directory(&keep, &qid, &msg.dir.into_path())).await;
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
fn remove_working_directory(keep: &KeepRules, qid: &str, dir: &str) {
    if dir.is_empty() {
        return;
    }
    if keep.debug {
        mm_log!(
            Info,
            qid = qid,
            "Not cleaning up {dir} because of command-line `-d' flag"
        );
        return;
    }
    let flag = &keep.flag;
    if flag.exists() {
        mm_log!(
            Info,
            qid = qid,
            "Not cleaning up {dir} because of {}",
            flag.display()
        );
        return;
    }
    if keep.keep_failed {
        mm_log!(Warning, qid = qid, "Filter failed.  Message kept in {dir}");
        return;
    }
    if let Err(e) = spool::remove_tree(Path::new(dir), &mut |m| mm_log!(Warning, "{m}")) {
        mm_log!(Error, qid = qid, "failed to clean up {dir}: {e}");
    }
}
