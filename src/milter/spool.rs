//! The per-message working directory (protocol/milter.md §4): its name,
//! its permissions, and the writers for INPUTMSG, HEADERS and PRISTINE_HEADERS.
//! The file work runs on the blocking pool (`crate::sys::blocking`).
//!
//! The byte transformations here are contract: the Perl workers (and filters
//! that sign DKIM over PRISTINE_HEADERS) read these files as upstream wrote them.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::sys::blocking;

/// The 60 symbols of upstream's message-id alphabet.
const ID_ALPHABET: &[u8; 60] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWX";

/// Process-wide MAIL FROM counter; the low part of every generated id.
static ID_COUNTER: AtomicU64 = AtomicU64::new(0);

fn base60(mut v: u64, digits: usize, out: &mut Vec<u8>) {
    let start = out.len();
    for _ in 0..digits {
        out.push(ID_ALPHABET[(v % 60) as usize]);
        v /= 60;
    }
    out[start..].reverse();
}

/// Builds an 8-character id from a time in seconds and a counter value
/// (protocol/milter.md §4.1): five base-60 digits of the time, three of the
/// counter.
pub fn format_id(time: u64, counter: u64) -> String {
    let mut out = Vec::with_capacity(8);
    base60(time % 60u64.pow(5), 5, &mut out);
    base60(counter % 60u64.pow(3), 3, &mut out);
    String::from_utf8(out).expect("alphabet is ASCII")
}

/// A fresh id for one MAIL FROM.
pub fn generate_id() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format_id(now, ID_COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// Renders one header as INPUTMSG/PRISTINE_HEADERS hold it: `Name: value\n`,
/// every CR that is not part of a CRLF pair turned into a space. Returns the
/// line and whether such a bare CR was seen (the header is "suspicious").
pub fn pristine_header_line(name: &[u8], value: &[u8]) -> (Vec<u8>, bool) {
    let mut out = Vec::with_capacity(name.len() + value.len() + 3);
    let suspicious = pristine_header_into(&mut out, name, value);
    (out, suspicious)
}

/// [`pristine_header_line`] appended to `out`; returns whether it is
/// suspicious.
pub fn pristine_header_into(out: &mut Vec<u8>, name: &[u8], value: &[u8]) -> bool {
    out.reserve(name.len() + value.len() + 3);
    let mut suspicious = bare_cr_to_space(out, name);
    out.extend_from_slice(b": ");
    suspicious |= bare_cr_to_space(out, value);
    out.push(b'\n');
    suspicious
}

fn bare_cr_to_space(out: &mut Vec<u8>, s: &[u8]) -> bool {
    let mut suspicious = false;
    for (i, &b) in s.iter().enumerate() {
        if b == b'\r' && s.get(i + 1) != Some(&b'\n') {
            suspicious = true;
            out.push(b' ');
        } else {
            out.push(b);
        }
    }
    suspicious
}

/// Removes every CR and LF (upstream's `chomp`): HEADERS holds each header on
/// one line with its folding whitespace kept.
pub fn strip_crlf(s: &[u8]) -> Vec<u8> {
    s.iter()
        .copied()
        .filter(|&b| b != b'\r' && b != b'\n')
        .collect()
}

/// The HEADERS line for one header.
pub fn headers_line(name: &[u8], value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len() + value.len() + 3);
    headers_line_into(&mut out, name, value);
    out
}

/// [`headers_line`] appended to `out`.
pub fn headers_line_into(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    let keep = |&b: &u8| b != b'\r' && b != b'\n';
    out.reserve(name.len() + value.len() + 3);
    out.extend(name.iter().filter(|b| keep(b)));
    out.extend_from_slice(b": ");
    out.extend(value.iter().filter(|b| keep(b)));
    out.push(b'\n');
}

/// Whether `s` with every CR and LF removed equals `word` (ASCII case
/// ignored), without building the stripped copy.
pub fn stripped_eq_ignore_case(s: &[u8], word: &[u8]) -> bool {
    let mut rest = s.iter().filter(|&&b| b != b'\r' && b != b'\n');
    word.iter()
        .all(|w| rest.next().is_some_and(|b| b.eq_ignore_ascii_case(w)))
        && rest.next().is_none()
}

/// The body transformation of protocol/milter.md §3.8: CRLF becomes LF, bare
/// CRs are kept (or dropped with `-c`) and flagged, NULs are flagged. A CR at
/// the end of a chunk is held back until the next chunk shows whether an LF
/// follows.
#[derive(Debug, Default)]
pub struct BodyFilter {
    strip_bare_cr: bool,
    last_was_cr: bool,
    suspicious: bool,
}

impl BodyFilter {
    pub fn new(strip_bare_cr: bool) -> Self {
        BodyFilter {
            strip_bare_cr,
            ..Default::default()
        }
    }

    /// Whether a bare CR or a NUL was seen so far.
    pub fn suspicious(&self) -> bool {
        self.suspicious
    }

    /// Transforms one chunk; empty chunks change nothing.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(chunk.len() + 1);
        self.feed_into(chunk, &mut out);
        out
    }

    /// [`BodyFilter::feed`], appending the transformed bytes to `out`.
    /// Runs of bytes without a CR or a NUL are copied whole.
    pub fn feed_into(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        if chunk.is_empty() {
            return;
        }
        out.reserve(chunk.len() + 1);
        if self.last_was_cr && chunk[0] != b'\n' {
            self.suspicious = true;
            if !self.strip_bare_cr {
                out.push(b'\r');
            }
        }
        self.last_was_cr = false;
        let n = chunk.len();
        let mut i = 0;
        while i < n {
            // Plain bytes up to the next CR or NUL go over in one copy;
            // the search is memchr's vectorised one, not a loop per byte
            // (protocol/milter.md §18.4).
            let run = memchr::memchr2(b'\r', 0, &chunk[i..]).unwrap_or(n - i);
            out.extend_from_slice(&chunk[i..i + run]);
            i += run;
            if i == n {
                break;
            }
            let b = chunk[i];
            i += 1;
            if b == 0 {
                self.suspicious = true;
                out.push(0);
                continue;
            }
            // A CR: held back at the end of the chunk, dropped before LF,
            // kept (or dropped with -c) and flagged otherwise. Upstream
            // quirk kept: when no chunk follows, the held CR is dropped
            // unflagged (protocol/milter.md §10.17).
            if i == n {
                self.last_was_cr = true;
            } else if chunk[i] != b'\n' {
                self.suspicious = true;
                if !self.strip_bare_cr {
                    out.push(b'\r');
                }
            }
        }
    }
}

/// Pending bytes of a working directory are written once they reach this
/// (about one body chunk of the MTA), so a message in progress holds at
/// most this much beside the chunk being added.
pub const FLUSH_AT: usize = 64 * 1024;

/// One file of the working directory, opened for appending on first use.
/// Appended bytes gather in memory ([`SpoolFile::buffer`]) until a flush
/// writes them in one `write` (protocol/milter.md §18.1). With `-C`
/// (conserve descriptors) the file is closed again after every flush.
/// The I/O is blocking: use it through [`WorkDir::with_files`].
#[derive(Debug)]
pub struct SpoolFile {
    path: PathBuf,
    file: Option<File>,
    conserve: bool,
    /// Appended and not yet written.
    pending: Vec<u8>,
    /// Nothing more will be appended: close the file after the next flush.
    finished: bool,
}

impl SpoolFile {
    fn new(path: PathBuf, conserve: bool) -> Self {
        SpoolFile {
            path,
            file: None,
            conserve,
            pending: Vec::new(),
            finished: false,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens (creating) the file; like every file a worker can reach, it
    /// must be a regular file (protocol/SECURITY.md §1).
    fn open(&mut self) -> Result<&mut File, SpoolError> {
        if self.file.is_none() {
            let f = blocking::open_regular(
                &self.path,
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .read(true)
                    .mode(0o640),
            )
            .map_err(|e| SpoolError::Open(self.path.clone(), e))?;
            self.file = Some(f);
        }
        Ok(self.file.as_mut().expect("just opened"))
    }

    /// Creates the file if it does not exist yet.
    pub fn touch(&mut self) -> Result<(), SpoolError> {
        self.open()?;
        if self.conserve {
            self.file = None;
        }
        Ok(())
    }

    /// Queues `bytes` for the next flush (no I/O).
    pub fn buffer(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
    }

    /// The queue itself, for writers that render straight into it.
    pub fn pending_mut(&mut self) -> &mut Vec<u8> {
        &mut self.pending
    }

    /// Writes what is queued in one write. The queue is emptied either
    /// way: after a failure the message is given up.
    pub fn flush(&mut self) -> Result<(), SpoolError> {
        let r = if self.pending.is_empty() {
            Ok(())
        } else {
            let len = self.pending.len();
            let pending = std::mem::take(&mut self.pending);
            let r = match self.open() {
                Ok(f) => f.write_all(&pending).map_err(|e| (len, e)),
                Err(e) => {
                    self.pending = pending;
                    self.pending.clear();
                    return Err(e);
                }
            }
            .map_err(|(len, e)| SpoolError::Write(self.path.clone(), len, e));
            // The buffer is kept for the next chunk of the body.
            self.pending = pending;
            self.pending.clear();
            r
        };
        if self.conserve || self.finished {
            self.file = None;
        }
        r
    }

    /// Appends `bytes` (and whatever was queued) in one write now.
    pub fn append(&mut self, bytes: &[u8]) -> Result<(), SpoolError> {
        self.buffer(bytes);
        self.flush()
    }

    /// Marks the file complete: it is closed after the next flush (no I/O
    /// here, so callable on a runtime thread).
    pub fn finish(&mut self) {
        self.finished = true;
    }

    pub fn close(&mut self) {
        self.file = None;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("Could not create directory {path}: {source}", path = .0.display(), source = .1)]
    Mkdir(PathBuf, #[source] std::io::Error),
    #[error("Could not open {path}: {source}", path = .0.display(), source = .1)]
    Open(PathBuf, #[source] blocking::OpenError),
    #[error("Unable to write {len} bytes to file {path}: {source}", path = .0.display(), len = .1, source = .2)]
    Write(PathBuf, usize, #[source] std::io::Error),
}

/// The four milter-written files of a working directory.
#[derive(Debug)]
pub struct Files {
    pub inputmsg: SpoolFile,
    pub headers: SpoolFile,
    pub pristine: SpoolFile,
    pub commands: SpoolFile,
}

impl Files {
    fn new(dir: &Path, conserve: bool) -> Files {
        let file = |n: &str| SpoolFile::new(dir.join(n), conserve);
        Files {
            inputmsg: file("INPUTMSG"),
            headers: file("HEADERS"),
            pristine: file("PRISTINE_HEADERS"),
            commands: file("COMMANDS"),
        }
    }

    /// Bytes queued over the four files.
    pub fn pending(&self) -> usize {
        self.inputmsg.pending.len()
            + self.headers.pending.len()
            + self.pristine.pending.len()
            + self.commands.pending.len()
    }

    /// Writes every file's queue, in the order the callbacks fill them;
    /// stops at the first failure.
    pub fn flush_all(&mut self) -> Result<(), SpoolError> {
        self.inputmsg.flush()?;
        self.pristine.flush()?;
        self.headers.flush()?;
        self.commands.flush()
    }

    pub fn close_all(&mut self) {
        self.inputmsg.close();
        self.headers.close();
        self.pristine.close();
        self.commands.close();
    }
}

/// The working directory of one message. Its files are only touched on
/// the blocking pool ([`WorkDir::with_files`]), never on a runtime thread;
/// what the callbacks append is queued ([`WorkDir::files`]) and written by
/// [`WorkDir::settle`] or [`WorkDir::flush`].
#[derive(Debug)]
pub struct WorkDir {
    /// The path exactly as given to the multiplexor (`<spool>/mm-<name>`).
    pub path: String,
    conserve: bool,
    /// `None` while a blocking task holds the files (or after that task
    /// was abandoned: the files then reopen by path on next use, and what
    /// was queued is lost with the task).
    files: Option<Files>,
}

impl WorkDir {
    /// Creates `<spool>/mm-<name>` with mode 0750 (the umask narrows it),
    /// then runs `init` on its files, both in one trip to the blocking
    /// pool. `name` must come from [`dir_name`]. On an `init` failure the
    /// directory is returned with the error, so that it can be cleaned up.
    pub async fn create<F>(
        spool: &str,
        name: &str,
        conserve: bool,
        init: F,
    ) -> Result<WorkDir, (Option<WorkDir>, SpoolError)>
    where
        F: FnOnce(&mut Files) -> Result<(), SpoolError> + Send + 'static,
    {
        let path = format!("{spool}/mm-{name}");
        let p = PathBuf::from(&path);
        let made = blocking::run(move || {
            std::fs::DirBuilder::new()
                .mode(0o750)
                .create(&p)
                .map_err(|e| SpoolError::Mkdir(p.clone(), e))?;
            let mut files = Files::new(&p, conserve);
            let r = init(&mut files);
            Ok((files, r))
        })
        .await;
        let (files, r) = made.map_err(|e| (None, e))?;
        let dir = WorkDir {
            files: Some(files),
            path,
            conserve,
        };
        match r {
            Ok(()) => Ok(dir),
            Err(e) => Err((Some(dir), e)),
        }
    }

    /// The files, to queue bytes on (no I/O).
    pub fn files(&mut self) -> &mut Files {
        let (path, conserve) = (&self.path, self.conserve);
        self.files
            .get_or_insert_with(|| Files::new(Path::new(path), conserve))
    }

    /// Writes the queued bytes when they should not wait: with `-C`
    /// every callback writes what it added (and closes again), as
    /// upstream does; otherwise only once [`FLUSH_AT`] bytes have gathered.
    pub async fn settle(&mut self) -> Result<(), SpoolError> {
        let pending = self.files.as_ref().map_or(0, Files::pending);
        if pending >= FLUSH_AT || (self.conserve && pending > 0) {
            self.flush().await
        } else {
            Ok(())
        }
    }

    /// Writes every queued byte now.
    pub async fn flush(&mut self) -> Result<(), SpoolError> {
        self.with_files(Files::flush_all).await
    }

    /// Runs `f` on the files on the blocking pool.
    pub async fn with_files<R, F>(&mut self, f: F) -> R
    where
        F: FnOnce(&mut Files) -> R + Send + 'static,
        R: Send + 'static,
    {
        let mut files = self
            .files
            .take()
            .unwrap_or_else(|| Files::new(Path::new(&self.path), self.conserve));
        let (files, r) = blocking::run(move || {
            let r = f(&mut files);
            (files, r)
        })
        .await;
        self.files = Some(files);
        r
    }

    pub async fn close_all(&mut self) {
        self.with_files(Files::close_all).await
    }

    /// Writes what is still queued (blocking: call on the blocking pool).
    pub fn flush_blocking(&mut self) -> Result<(), SpoolError> {
        self.files().flush_all()
    }

    /// Closes the files (blocking: call on the blocking pool).
    pub fn into_path(self) -> String {
        drop(self.files);
        self.path
    }
}

/// The working directory's name for a message (protocol/SECURITY.md §3):
/// the MTA's queue id when it is safe as one path component, otherwise the
/// generated id. Returns the name and, when the queue id was refused, why.
pub fn dir_name<'a>(qid: Option<&'a [u8]>, generated: &'a str) -> (&'a str, Option<&'static str>) {
    let Some(q) = qid else {
        return (generated, None);
    };
    let refused = if q.len() > MAX_QID_NAME {
        "too long"
    } else if !q
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        "has characters other than A-Z a-z 0-9 . _ -"
    } else if q.iter().all(|&b| b == b'.') {
        "is empty or only dots"
    } else {
        return (std::str::from_utf8(q).expect("checked ASCII"), None);
    };
    (generated, Some(refused))
}

/// Longest queue id used as a directory name: `mm-` plus the id must fit
/// in one path component (NAME_MAX, 255 bytes).
const MAX_QID_NAME: usize = 252;

/// Removes a directory tree without following symlinks, carrying on past
/// errors (each is reported through `warn`). Returns the first error.
/// Blocking: call on the blocking pool.
pub fn remove_tree(path: &Path, warn: &mut dyn FnMut(String)) -> std::io::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) => {
            warn(format!("rm_r: lstat({}) failed: {e}", path.display()));
            return Err(e);
        }
    };
    if !meta.is_dir() {
        return std::fs::remove_file(path)
            .inspect_err(|e| warn(format!("rm_r: unlink({}) failed: {e}", path.display())));
    }
    let mut first_err = None;
    match std::fs::read_dir(path) {
        Ok(entries) => {
            for entry in entries {
                match entry {
                    Ok(entry) => {
                        if let Err(e) = remove_entry(&entry, warn) {
                            first_err.get_or_insert(e);
                        }
                    }
                    Err(e) => {
                        warn(format!("rm_r: readdir({}) failed: {e}", path.display()));
                        first_err.get_or_insert(e);
                    }
                }
            }
        }
        Err(e) => {
            warn(format!("rm_r: opendir({}) failed: {e}", path.display()));
            first_err.get_or_insert(e);
        }
    }
    if let Err(e) = std::fs::remove_dir(path) {
        warn(format!("rm_r: rmdir({}) failed: {e}", path.display()));
        first_err.get_or_insert(e);
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// One entry of a directory being removed: the type readdir reported
/// (no `lstat` per file) says whether to unlink it or descend; a
/// symlink is unlinked like a file, never followed.
fn remove_entry(entry: &std::fs::DirEntry, warn: &mut dyn FnMut(String)) -> std::io::Result<()> {
    let path = entry.path();
    match entry.file_type() {
        Ok(t) if !t.is_dir() => std::fs::remove_file(&path)
            .inspect_err(|e| warn(format!("rm_r: unlink({}) failed: {e}", path.display()))),
        _ => remove_tree(&path, warn),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_base60_time_then_counter() {
        assert_eq!(format_id(0, 0), "00000000");
        assert_eq!(format_id(59, 61), "0000X011");
        // Wraps: time mod 60^5, counter mod 60^3.
        assert_eq!(format_id(60u64.pow(5) + 1, 60u64.pow(3) + 2), "00001002");
        assert_eq!(format_id(60u64.pow(5) - 1, 60u64.pow(3) - 1), "XXXXXXXX");
        let a = generate_id();
        let b = generate_id();
        assert_eq!(a.len(), 8);
        assert_ne!(a, b);
    }

    #[test]
    fn header_lines() {
        let (l, s) = pristine_header_line(b"Subject", b"one\n\ttwo");
        assert_eq!(l, b"Subject: one\n\ttwo\n");
        assert!(!s);
        assert_eq!(
            headers_line(b"Subject", b"one\n\ttwo"),
            b"Subject: one\ttwo\n"
        );
        // Bare CR (also at the very end) becomes a space; CRLF is kept.
        let (l, s) = pristine_header_line(b"X\rY", b"a\r\n b\rc\r");
        assert_eq!(l, b"X Y: a\r\n b c \n");
        assert!(s);
        assert_eq!(headers_line(b"X\rY", b"a\r\n b\rc\r"), b"XY: a bc\n");
        let (l, _) = pristine_header_line(b"X-8bit", b"caf\xc3\xa9");
        assert_eq!(l, b"X-8bit: caf\xc3\xa9\n");
    }

    #[test]
    fn body_crlf_and_bare_cr() {
        let mut f = BodyFilter::new(false);
        assert_eq!(f.feed(b"a\r\nb\r"), b"a\nb");
        assert!(!f.suspicious());
        // The held-back CR is followed by LF: dropped.
        assert_eq!(f.feed(b"\nc\rd\0"), b"\nc\rd\0");
        assert!(f.suspicious());
        let mut f = BodyFilter::new(false);
        assert_eq!(f.feed(b"x\r"), b"x");
        assert_eq!(f.feed(b""), b"");
        assert_eq!(f.feed(b"y"), b"\ry");
        assert!(f.suspicious());
        // -c drops bare CRs, including a held-back one.
        let mut f = BodyFilter::new(true);
        assert_eq!(f.feed(b"a\rb\r"), b"ab");
        assert_eq!(f.feed(b"z\r\n"), b"z\n");
        assert!(f.suspicious());
        // A CR at the very end of the body is silently lost.
        let mut f = BodyFilter::new(false);
        assert_eq!(f.feed(b"end\r"), b"end");
        assert!(!f.suspicious());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn workdir_files_and_removal() {
        let d = tempfile::tempdir().unwrap();
        let spool = d.path().to_str().unwrap();
        let mut w = WorkDir::create(spool, "abc", true, |f| {
            f.headers.touch()?;
            f.commands.append(b"F\n")
        })
        .await
        .unwrap();
        assert_eq!(w.path, format!("{spool}/mm-abc"));
        // With -C every settle writes; without, bytes wait for a flush.
        w.files().commands.buffer(b"G\n");
        w.settle().await.unwrap();
        assert_eq!(
            std::fs::read(Path::new(&w.path).join("COMMANDS")).unwrap(),
            b"F\nG\n"
        );
        assert!(WorkDir::create(spool, "abc", false, |_| Ok(()))
            .await
            .is_err());
        // A file someone replaced by a symlink is refused, not followed.
        let target = d.path().join("target");
        std::fs::write(&target, b"").unwrap();
        std::fs::remove_file(Path::new(&w.path).join("HEADERS")).unwrap();
        std::os::unix::fs::symlink(&target, Path::new(&w.path).join("HEADERS")).unwrap();
        w.files().headers.buffer(b"x");
        let e = w.flush().await.unwrap_err();
        assert!(
            e.to_string()
                .ends_with("/HEADERS: not a regular file but a symbolic link"),
            "{e}"
        );
        assert_eq!(std::fs::read(&target).unwrap(), b"");
        std::fs::create_dir(Path::new(&w.path).join("Work")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", Path::new(&w.path).join("link")).unwrap();
        let path = w.into_path();
        let mut warnings = vec![];
        remove_tree(Path::new(&path), &mut |m| warnings.push(m)).unwrap();
        assert!(!Path::new(&path).exists());
        assert!(Path::new("/etc/passwd").exists());
        assert!(warnings.is_empty());
    }

    #[test]
    fn stripped_names_compare_without_case() {
        assert!(stripped_eq_ignore_case(b"Subject", b"subject"));
        assert!(stripped_eq_ignore_case(b"SUB\r\nJECT", b"subject"));
        assert!(!stripped_eq_ignore_case(b"Subjec", b"subject"));
        assert!(!stripped_eq_ignore_case(b"Subjects", b"subject"));
        assert!(!stripped_eq_ignore_case(b"Sub ject", b"subject"));
        assert!(stripped_eq_ignore_case(b"", b""));
    }

    /// Without -C, queued bytes reach the file only at a flush or once
    /// FLUSH_AT of them have gathered; a kept directory is flushed.
    #[tokio::test(flavor = "current_thread")]
    async fn queued_bytes_wait_for_a_flush() {
        let d = tempfile::tempdir().unwrap();
        let spool = d.path().to_str().unwrap();
        let mut w = WorkDir::create(spool, "q", false, |f| f.commands.append(b"i1\n"))
            .await
            .unwrap();
        let dir = w.path.clone();
        let file = |n: &str| std::fs::read(Path::new(&dir).join(n)).unwrap_or_default();
        assert_eq!(file("COMMANDS"), b"i1\n");
        w.files().commands.buffer(b"R<a>\n");
        w.files().inputmsg.buffer(b"Subject: x\n\n");
        w.settle().await.unwrap();
        assert_eq!(
            file("COMMANDS"),
            b"i1\n",
            "below FLUSH_AT nothing is written"
        );
        assert!(!Path::new(&dir).join("INPUTMSG").exists());
        w.files().inputmsg.buffer(&vec![b'b'; FLUSH_AT]);
        w.settle().await.unwrap();
        assert_eq!(file("COMMANDS"), b"i1\nR<a>\n");
        assert_eq!(file("INPUTMSG").len(), 12 + FLUSH_AT);
        assert_eq!(w.files().pending(), 0);
        w.files().headers.buffer(b"Subject: x\n");
        blocking::run(move || {
            w.flush_blocking().unwrap();
            w
        })
        .await;
        assert_eq!(
            std::fs::read(d.path().join("mm-q/HEADERS")).unwrap(),
            b"Subject: x\n"
        );
    }

    #[test]
    fn body_runs_copied_whole() {
        let mut f = BodyFilter::new(false);
        let long = b"plain text without carriage returns\n".repeat(100);
        assert_eq!(f.feed(&long), long);
        let mut out = b"kept".to_vec();
        f.feed_into(b"a\r\nb\0c\rd", &mut out);
        assert_eq!(out, b"kepta\nb\0c\rd");
        assert!(f.suspicious());
    }

    #[test]
    fn queue_ids_as_directory_names() {
        fn ok(q: &str) -> (&str, Option<&'static str>) {
            dir_name(Some(q.as_bytes()), "GEN")
        }
        assert_eq!(dir_name(None, "GEN"), ("GEN", None));
        assert_eq!(ok("4AB1cD012345"), ("4AB1cD012345", None));
        assert_eq!(ok("a.b_c-D9"), ("a.b_c-D9", None));
        assert_eq!(ok("...x"), ("...x", None));
        for bad in [
            "X/../../../w/escaped",
            "..",
            ".",
            "a b",
            "a\nb",
            "caf\u{e9}",
            "a/b",
        ] {
            let (name, why) = ok(bad);
            assert_eq!(name, "GEN", "{bad:?}");
            assert!(why.is_some(), "{bad:?}");
        }
        let long = "a".repeat(MAX_QID_NAME);
        assert_eq!(ok(&long).0, long);
        assert_eq!(ok(&format!("{long}a")), ("GEN", Some("too long")));
    }
}
