//! The COMMANDS file (protocol/milter.md §4.7): one letter per line followed by
//! its percent-encoded argument, plus `=name value` macro lines. The milter
//! builds each block in memory and appends it in one write.

use crate::wire::percent::{encode_into, Variant};

/// The macros written at MAIL FROM, in upstream's fixed order (names
/// without braces).
pub const STANDARD_MACROS: [&str; 23] = [
    "_",
    "auth_authen",
    "auth_author",
    "auth_ssf",
    "auth_type",
    "cert_issuer",
    "cert_subject",
    "cipher",
    "cipher_bits",
    "daemon_name",
    "daemon_port",
    "i",
    "if_addr",
    "if_name",
    "j",
    "mail_addr",
    "mail_host",
    "mail_mailer",
    "tls_version",
    "verify",
    "rcpt_addr",
    "rcpt_host",
    "rcpt_mailer",
];

/// The macro list requested with `-y`: the standard macros then the `-a`
/// ones, multi-character names in braces, separated by single spaces.
pub fn symlist(extra: &[String]) -> String {
    STANDARD_MACROS
        .iter()
        .copied()
        .chain(extra.iter().map(String::as_str))
        .map(|m| {
            if m.len() > 1 {
                format!("{{{m}}}")
            } else {
                m.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// [`CommandsBlock::line`] appended to `out` (a file's queue, with no
/// block in between).
pub fn line_into(out: &mut Vec<u8>, letter: u8, arg: Option<&[u8]>) {
    out.push(letter);
    if let Some(a) = arg {
        encode_into(out, a, Variant::CommandsFile);
    }
    out.push(b'\n');
}

/// [`CommandsBlock::recipient`] appended to `out`.
pub fn recipient_into(out: &mut Vec<u8>, rcpt: &[u8], mailer: &[u8], host: &[u8], addr: &[u8]) {
    out.push(b'R');
    for (i, f) in [rcpt, mailer, host, addr].into_iter().enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        encode_into(out, f, Variant::CommandsFile);
    }
    out.push(b'\n');
}

/// A block of COMMANDS lines being assembled.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CommandsBlock(Vec<u8>);

impl CommandsBlock {
    pub fn new() -> Self {
        Self::default()
    }

    /// `<letter><encoded arg>\n`; `None` writes the bare letter.
    pub fn line(&mut self, letter: u8, arg: Option<&[u8]>) -> &mut Self {
        line_into(&mut self.0, letter, arg);
        self
    }

    /// `=<name> <value>\n` (the value may be empty).
    pub fn macro_line(&mut self, name: &[u8], value: &[u8]) -> &mut Self {
        self.0.push(b'=');
        encode_into(&mut self.0, name, Variant::CommandsFile);
        self.0.push(b' ');
        encode_into(&mut self.0, value, Variant::CommandsFile);
        self.0.push(b'\n');
        self
    }

    /// `R<rcpt> <mailer> <host> <addr>\n`, each field encoded.
    pub fn recipient(&mut self, rcpt: &[u8], mailer: &[u8], host: &[u8], addr: &[u8]) -> &mut Self {
        recipient_into(&mut self.0, rcpt, mailer, host, addr);
        self
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_encoding() {
        let mut b = CommandsBlock::new();
        b.line(b'S', Some(b"<a b@c>"))
            .line(b'H', None)
            .line(b'U', Some(b"100% \"q\" \\ 'x' caf\xc3\xa9\t"))
            .macro_line(b"_", b"h [1.2.3.4]")
            .macro_line(b"verify", b"")
            .recipient(b"<r@x>", b"smtp", b"?", b"r@x");
        assert_eq!(
            b.as_bytes(),
            b"S<a%20b@c>\nH\nU100%25%20\"q\"%20\\%20'x'%20caf%C3%A9%09\n=_ h%20[1.2.3.4]\n=verify \nR<r@x> smtp ? r@x\n"
        );
    }

    #[test]
    fn default_symlist_string() {
        assert_eq!(
            symlist(&[]),
            "_ {auth_authen} {auth_author} {auth_ssf} {auth_type} {cert_issuer} {cert_subject} {cipher} {cipher_bits} {daemon_name} {daemon_port} i {if_addr} {if_name} j {mail_addr} {mail_host} {mail_mailer} {tls_version} {verify} {rcpt_addr} {rcpt_host} {rcpt_mailer}"
        );
        assert!(symlist(&["foo".into(), "x".into()]).ends_with("{rcpt_mailer} {foo} x"));
    }
}
