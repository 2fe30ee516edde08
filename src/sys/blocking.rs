//! File-system work off the async runtime's threads
//! (protocol/SECURITY.md §1).
//!
//! A blocking call on a runtime thread stalls every task queued on that
//! thread: a worker that leaves a FIFO where a regular file belongs would
//! otherwise freeze unrelated SMTP sessions. All blocking file I/O of the
//! async daemons goes through [`run`] (one helper, so the rule is easy to
//! check) and the opens that read what a worker left use [`open_regular`].

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// Runs `f` on tokio's blocking pool and returns its result. A panic in
/// `f` is resumed in the caller, as if `f` had run inline.
pub async fn run<T, F>(f: F) -> T
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => v,
        Err(e) => match e.try_into_panic() {
            Ok(payload) => std::panic::resume_unwind(payload),
            // Cancelled: the runtime is shutting down before `f` started,
            // and the task awaiting it is about to be dropped as well.
            Err(_) => std::future::pending().await,
        },
    }
}

/// Why [`open_regular`] refused a path.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("not a regular file but {0}")]
    NotRegular(&'static str),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl OpenError {
    /// True when the path does not exist at all.
    pub fn is_not_found(&self) -> bool {
        matches!(self, OpenError::Io(e) if e.kind() == std::io::ErrorKind::NotFound)
    }
}

impl From<OpenError> for std::io::Error {
    fn from(e: OpenError) -> Self {
        match e {
            OpenError::Io(e) => e,
            refused => std::io::Error::new(std::io::ErrorKind::InvalidInput, refused),
        }
    }
}

/// Opens `path` with `opts` plus `O_NOFOLLOW|O_NONBLOCK` and insists on a
/// regular file: a symlink is refused instead of followed, and a FIFO or a
/// device is refused instead of waited on (O_NONBLOCK makes the open of a
/// FIFO return at once; it has no effect on reads of a regular file).
pub fn open_regular(path: &Path, opts: &mut OpenOptions) -> Result<File, OpenError> {
    let file = match opts
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(OpenError::NotRegular("a symbolic link"))
        }
        Err(e) => return Err(e.into()),
    };
    let t = file.metadata()?.file_type();
    if t.is_file() {
        return Ok(file);
    }
    Err(OpenError::NotRegular(if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_dir() {
        "a directory"
    } else {
        "of an unknown type"
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_only() -> OpenOptions {
        let mut o = OpenOptions::new();
        o.read(true);
        o
    }

    #[test]
    fn only_regular_files_open() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        assert!(open_regular(&file, &mut read_only()).is_ok());

        let link = d.path().join("l");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        let e = open_regular(&link, &mut read_only()).unwrap_err();
        assert_eq!(e.to_string(), "not a regular file but a symbolic link");

        // Opening a FIFO for reading would wait for a writer without O_NONBLOCK.
        let fifo = d.path().join("p");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let e = open_regular(&fifo, &mut read_only()).unwrap_err();
        assert_eq!(e.to_string(), "not a regular file but a FIFO");

        let e = open_regular(Path::new("/dev/null"), &mut read_only()).unwrap_err();
        assert_eq!(e.to_string(), "not a regular file but a character device");
        let e = open_regular(d.path(), &mut read_only()).unwrap_err();
        assert_eq!(e.to_string(), "not a regular file but a directory");
        assert!(open_regular(&d.path().join("none"), &mut read_only())
            .unwrap_err()
            .is_not_found());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn runs_off_the_runtime_thread() {
        let here = std::thread::current().id();
        let there = run(move || std::thread::current().id()).await;
        assert_ne!(here, there);
    }
}
