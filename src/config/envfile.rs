//! `/etc/default/mailmunge` (and `/etc/sysconfig/mailmunge`) as a list of
//! variable assignments.
//!
//! Upstream's sysvinit script sources the file as shell and its systemd units
//! read it as an `EnvironmentFile=`. We accept the part of shell syntax that
//! both readers agree on for assignment-only files, and refuse everything
//! else with the file's line number instead of guessing: a start helper that
//! silently misreads `MX_USER` is worse than one that stops with a message.
//!
//! Accepted per line: blank lines; comments starting with `#` (or `;`, which
//! systemd also treats as a comment); `NAME=VALUE` optionally preceded by
//! `export`. A value is a concatenation of unquoted text (a backslash quotes
//! the next character), `'single quoted'` text (literal), `"double quoted"`
//! text (backslash quotes only `$ " \` and backtick) and `$NAME` / `${NAME}`
//! expansions outside single quotes, resolved against the variables assigned
//! so far and then the caller's base environment (shell semantics). Quoted
//! text may span lines. Unquoted blanks end the value; only a comment may
//! follow them.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

/// Longest value accepted: the kernel refuses longer arguments and
/// environment strings (MAX_ARG_STRLEN, 128 KiB with the NUL). It also
/// stops a few lines of `A=$A$A$A$A` from growing a value without bound
/// (protocol/SECURITY.md §10.6).
pub const MAX_VALUE: usize = 128 * 1024 - 1;

/// Why a file could not be read as an assignment list.
#[derive(Debug, thiserror::Error)]
pub enum EnvFileError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: {msg}")]
    Syntax {
        path: PathBuf,
        line: usize,
        msg: String,
    },
}

/// One assignment, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub name: String,
    pub value: OsString,
    /// 1-based line where the assignment starts.
    pub line: usize,
}

/// Reads `path`. A missing file is `Ok(None)` when `optional` (systemd's
/// `EnvironmentFile=-path`, the sysv script's `[ -f path ]`).
pub fn read_file(
    path: &Path,
    optional: bool,
    base: &dyn Fn(&str) -> Option<OsString>,
) -> Result<Option<Vec<Assignment>>, EnvFileError> {
    match std::fs::read(path) {
        Ok(bytes) => parse(&bytes, base)
            .map(Some)
            .map_err(|(line, msg)| EnvFileError::Syntax {
                path: path.to_owned(),
                line,
                msg,
            }),
        Err(e) if optional && e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(EnvFileError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Parses file contents. `base` resolves `$NAME` for names not assigned
/// earlier in the file. Errors are `(line, message)`.
pub fn parse(
    text: &[u8],
    base: &dyn Fn(&str) -> Option<OsString>,
) -> Result<Vec<Assignment>, (usize, String)> {
    let mut p = Parser {
        s: text,
        i: 0,
        line: 1,
    };
    let mut out: Vec<Assignment> = Vec::new();
    let mut seen: BTreeMap<String, OsString> = BTreeMap::new();
    loop {
        p.skip_blanks();
        match p.peek() {
            None => break,
            Some(b'\n') => {
                p.bump();
                continue;
            }
            Some(b'#') | Some(b';') => {
                p.skip_to_eol();
                continue;
            }
            _ => {}
        }
        let line = p.line;
        let mut name = p.word();
        if name == b"export" && matches!(p.peek(), Some(b' ' | b'\t')) {
            p.skip_blanks();
            name = p.word();
        }
        if name.is_empty() || p.peek() != Some(b'=') {
            return Err((line, "not a NAME=VALUE assignment".into()));
        }
        let name = String::from_utf8(name).expect("word() yields ASCII");
        if name.as_bytes()[0].is_ascii_digit() {
            return Err((line, format!("invalid variable name {name:?}")));
        }
        p.bump(); // '='
        let lookup = |n: &str| seen.get(n).cloned().or_else(|| base(n));
        let value = p.value(&lookup)?;
        // After the value: blanks, then end of line or a comment.
        p.skip_blanks();
        match p.peek() {
            None | Some(b'\n') => {}
            Some(b'#') => p.skip_to_eol(),
            Some(_) => {
                return Err((
                    p.line,
                    format!(
                    "unexpected text after the value of {name} (quote values containing blanks)"
                ),
                ))
            }
        }
        seen.insert(name.clone(), value.clone());
        out.push(Assignment { name, value, line });
    }
    Ok(out)
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
    line: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn bump(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        if c == b'\n' {
            self.line += 1;
        }
        Some(c)
    }

    fn skip_blanks(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\r')) {
            self.bump();
        }
    }

    fn skip_to_eol(&mut self) {
        while !matches!(self.peek(), None | Some(b'\n')) {
            self.bump();
        }
    }

    fn word(&mut self) -> Vec<u8> {
        let start = self.i;
        while matches!(self.peek(), Some(c) if c.is_ascii_alphanumeric() || c == b'_') {
            self.bump();
        }
        self.s[start..self.i].to_vec()
    }

    fn value(
        &mut self,
        lookup: &dyn Fn(&str) -> Option<OsString>,
    ) -> Result<OsString, (usize, String)> {
        let mut v = Vec::new();
        loop {
            match self.peek() {
                None | Some(b' ' | b'\t' | b'\r' | b'\n') => break,
                Some(b'\'') => {
                    let start = self.line;
                    self.bump();
                    loop {
                        match self.bump() {
                            None => return Err((start, "unterminated single quote".into())),
                            Some(b'\'') => break,
                            Some(c) => v.push(c),
                        }
                    }
                }
                Some(b'"') => {
                    let start = self.line;
                    self.bump();
                    loop {
                        match self.peek() {
                            None => return Err((start, "unterminated double quote".into())),
                            Some(b'"') => {
                                self.bump();
                                break;
                            }
                            Some(b'\\') => {
                                self.bump();
                                match self.bump() {
                                    None => {
                                        return Err((start, "unterminated double quote".into()))
                                    }
                                    Some(b'\n') => {} // line continuation
                                    Some(c @ (b'$' | b'"' | b'\\' | b'`')) => v.push(c),
                                    Some(c) => v.extend_from_slice(&[b'\\', c]),
                                }
                            }
                            Some(b'$') => self.expansion(&mut v, lookup)?,
                            Some(b'`') => {
                                return Err((
                                    self.line,
                                    "command substitution is not supported".into(),
                                ))
                            }
                            Some(c) => {
                                self.bump();
                                v.push(c);
                            }
                        }
                    }
                }
                Some(b'\\') => {
                    self.bump();
                    match self.bump() {
                        None => break,
                        Some(b'\n') => {}
                        Some(c) => v.push(c),
                    }
                }
                Some(b'$') => self.expansion(&mut v, lookup)?,
                Some(b'`') => {
                    return Err((self.line, "command substitution is not supported".into()))
                }
                Some(c @ (b';' | b'&' | b'|' | b'<' | b'>' | b'(' | b')')) => {
                    return Err((
                        self.line,
                        format!("shell syntax {:?} is not supported here", c as char),
                    ))
                }
                Some(c) => {
                    self.bump();
                    v.push(c);
                }
            }
        }
        self.check_length(&v)?;
        Ok(OsString::from_vec(v))
    }

    fn check_length(&self, v: &[u8]) -> Result<(), (usize, String)> {
        if v.len() > MAX_VALUE {
            return Err((
                self.line,
                format!("value longer than {MAX_VALUE} bytes (the limit for one argument)"),
            ));
        }
        Ok(())
    }

    /// `$NAME`, `${NAME}`; a `$` not followed by a name is literal (as in sh).
    fn expansion(
        &mut self,
        v: &mut Vec<u8>,
        lookup: &dyn Fn(&str) -> Option<OsString>,
    ) -> Result<(), (usize, String)> {
        self.bump(); // '$'
        let braced = self.peek() == Some(b'{');
        if braced {
            self.bump();
        } else if self.peek() == Some(b'(') {
            return Err((self.line, "command substitution is not supported".into()));
        }
        let name = self.word();
        if braced {
            if self.peek() != Some(b'}') || name.is_empty() {
                return Err((self.line, "only ${NAME} expansions are supported".into()));
            }
            self.bump();
        } else if name.is_empty() {
            v.push(b'$');
            return Ok(());
        }
        let name = String::from_utf8(name).expect("ASCII");
        if let Some(val) = lookup(&name) {
            v.extend_from_slice(val.as_bytes());
        }
        self.check_length(v)
    }
}

/// Convenience for callers holding a `BTreeMap` of the current variables.
pub fn apply(vars: &mut BTreeMap<String, OsString>, assignments: Vec<Assignment>) {
    for a in assignments {
        vars.insert(a.name, a.value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<OsString> {
        None
    }

    fn kv(text: &str) -> Vec<(String, String)> {
        parse(text.as_bytes(), &no_env)
            .unwrap()
            .into_iter()
            .map(|a| (a.name, a.value.into_string().unwrap()))
            .collect()
    }

    fn err(text: &str) -> (usize, String) {
        parse(text.as_bytes(), &no_env).unwrap_err()
    }

    #[test]
    fn plain_quoted_and_commented_lines() {
        let text = "# comment\n\n; also a comment\nMX_USER=mm\nSOCKET=\"inet:8872@127.0.0.1\"\n  SCANNED_BY='My Scanner'  # trailing\nexport MX_LOG=yes\n";
        assert_eq!(
            kv(text),
            vec![
                ("MX_USER".into(), "mm".into()),
                ("SOCKET".into(), "inet:8872@127.0.0.1".into()),
                ("SCANNED_BY".into(), "My Scanner".into()),
                ("MX_LOG".into(), "yes".into()),
            ]
        );
    }

    #[test]
    fn empty_value_is_kept_as_empty() {
        assert_eq!(
            kv("MM_PIDFILE=\nMX_PIDFILE=\"\"\n"),
            vec![
                ("MM_PIDFILE".into(), "".into()),
                ("MX_PIDFILE".into(), "".into())
            ]
        );
    }

    #[test]
    fn expansion_uses_earlier_lines_then_base() {
        let base = |n: &str| (n == "HOME").then(|| OsString::from("/root"));
        let got: Vec<_> = parse(b"SPOOLDIR=/srv/mm\nSOCKET=$SPOOLDIR/m.sock\nX=\"${HOME}/x\"\nY='$SPOOLDIR'\nZ=$UNSET.\nD=a$\n", &base)
            .unwrap()
            .into_iter()
            .map(|a| a.value.into_string().unwrap())
            .collect();
        assert_eq!(
            got,
            [
                "/srv/mm",
                "/srv/mm/m.sock",
                "/root/x",
                "$SPOOLDIR",
                ".",
                "a$"
            ]
        );
    }

    #[test]
    fn backslashes_follow_shell_rules() {
        assert_eq!(kv(r#"A=a\ b"#), vec![("A".into(), "a b".into())]);
        assert_eq!(
            kv(r#"A="x\"y\$z\n""#),
            vec![("A".into(), r#"x"y$z\n"#.into())]
        );
        assert_eq!(
            kv("A=\"one\ntwo\"\nB=1\n"),
            vec![("A".into(), "one\ntwo".into()), ("B".into(), "1".into())]
        );
    }

    #[test]
    fn line_numbers_follow_multiline_values() {
        let a = parse(b"A=\"1\n2\"\n\nB=3\n", &no_env).unwrap();
        assert_eq!((a[0].line, a[1].line), (1, 4));
    }

    #[test]
    fn refuses_what_it_cannot_read_faithfully() {
        assert_eq!(err("A=foo bar\n").0, 1);
        assert!(err("\nA=`hostname`\n").1.contains("command substitution"));
        assert_eq!(err("\nA=`hostname`\n").0, 2);
        assert!(err("A=$(hostname)\n").1.contains("command substitution"));
        assert!(err("A=${B:-x}\n").1.contains("${NAME}"));
        assert!(err("if true; then A=1; fi\n").1.contains("assignment"));
        assert!(err("A=1; B=2\n").1.contains("';'"));
        assert!(err("A=\"open\n").1.contains("unterminated"));
        assert!(err("1A=x\n").1.contains("invalid variable name"));
        assert!(err("A B=x\n").1.contains("assignment"));
    }

    /// The `envfile` fuzz target's `expansion-bomb` seed: each line
    /// multiplied the value by eight until the start helper ran out of
    /// memory.
    #[test]
    fn expansions_cannot_grow_a_value_without_bound() {
        let mut text = String::from("A=aaaaaaaaaaaaaaaa\n");
        for _ in 0..12 {
            text.push_str("A=$A$A$A$A$A$A$A$A\n");
        }
        let (line, msg) = err(&text);
        assert_eq!(line, 6);
        assert_eq!(
            msg,
            "value longer than 131071 bytes (the limit for one argument)"
        );
        let quoted = format!("B={}\nC=\"{}\"\n", "b".repeat(70_000), "$B".repeat(2));
        assert_eq!(err(&quoted).0, 2);
        let at_limit = format!("B={}\nC=${{B}}\n", "b".repeat(MAX_VALUE));
        assert_eq!(kv(&at_limit)[1].1.len(), MAX_VALUE);
        assert_eq!(err(&format!("B={}\n", "b".repeat(MAX_VALUE + 1))).0, 1);
    }

    #[test]
    fn missing_optional_file_is_none_but_missing_required_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("nope");
        assert!(read_file(&p, true, &no_env).unwrap().is_none());
        assert!(matches!(
            read_file(&p, false, &no_env),
            Err(EnvFileError::Io { .. })
        ));
        std::fs::write(&p, "A=1\nB=x y\n").unwrap();
        let e = read_file(&p, true, &no_env).unwrap_err().to_string();
        assert!(
            e.ends_with(
                ":2: unexpected text after the value of B (quote values containing blanks)"
            ),
            "{e}"
        );
    }
}
