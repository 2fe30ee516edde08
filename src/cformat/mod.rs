//! What upstream's C code does with text, where a reply or a message
//! depends on it: numbers as `sscanf` and `atoi` read them ([`number`]),
//! buffers as C strings ([`string`]), error numbers as `strerror` words
//! them ([`strerror`]), and command lines as `getopt` reads them
//! ([`getopt`], the one option parser of every program).

pub mod getopt;
pub mod number;
pub mod string;

/// The C library's text for an I/O error, as upstream prints it with `%s`
/// of `strerror` (without Rust's " (os error N)"); the error's own text
/// when it carries no error number.
pub fn strerror(e: &std::io::Error) -> String {
    let Some(n) = e.raw_os_error() else {
        return e.to_string();
    };
    let mut buf = [0 as libc::c_char; 256];
    // SAFETY: the buffer is writable for its whole length and the XSI
    // strerror_r (what the libc crate binds) NUL-terminates within it on
    // success. std and nix have no text without a suffix or their own table.
    let rc = unsafe { libc::strerror_r(n, buf.as_mut_ptr(), buf.len()) };
    if rc != 0 {
        return format!("Unknown error {n}");
    }
    // SAFETY: NUL-terminated by strerror_r, within `buf`, which lives on.
    unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strerror_is_the_c_library_text() {
        let e = std::io::Error::from_raw_os_error(libc::ENOENT);
        assert_eq!(strerror(&e), "No such file or directory");
        let e = std::io::Error::from_raw_os_error(libc::EAGAIN);
        assert_eq!(strerror(&e), "Resource temporarily unavailable");
        let e = std::io::Error::other("plain");
        assert_eq!(strerror(&e), "plain");
    }
}
