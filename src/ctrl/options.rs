//! mm-mx-ctrl's command line, parsed like glibc `getopt(argc, argv, "hs:ibt:")`
//! (protocol/mm-mx-ctrl.md §1): options may be clustered (`-bi`), `-s` takes
//! the next word or the rest of its own (`-s/x`), options after the command
//! word are still options (GNU permutation, unless `POSIXLY_CORRECT` is set)
//! and `--` ends them. `-h` and errors act at the point where they are met, so
//! only the `-s`/`-i` seen before them count. `-t` is our extension
//! (protocol/mm-mx-ctrl.md §9.1).

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::time::Duration;

/// The default control socket (upstream's `SPOOLDIR "/mailmunge-multiplexor.sock"`).
pub const DEFAULT_SOCKET: &str = "/var/spool/mailmunge/mailmunge-multiplexor.sock";

/// How long a request may take unless `-t` says otherwise: longer than the
/// multiplexor's default busy timeout (120 s) plus queueing, short enough
/// that a wedged multiplexor does not hang cron jobs forever.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// A parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Every `-s` in order; commands use the last, `top` shows them all.
    pub sockets: Vec<OsString>,
    /// `-i`: commands from stdin, errors to stdout.
    pub interactive: bool,
    /// `-b`: bracket each response.
    pub bracket: bool,
    /// `-t SECS`; `None` (from `-t 0`) waits forever like upstream.
    pub timeout: Option<Duration>,
    /// The command words (empty with `-i`).
    pub words: Vec<Vec<u8>>,
}

impl Options {
    /// The socket commands talk to.
    pub fn socket(&self) -> OsString {
        self.sockets
            .last()
            .cloned()
            .unwrap_or_else(|| DEFAULT_SOCKET.into())
    }
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invocation {
    Run(Options),
    /// Print the usage (and the multiplexor's help); exit 0 for `-h`, 1
    /// otherwise. `diagnostic` is getopt's complaint, if any.
    Usage {
        options: Options,
        diagnostic: Option<String>,
        exit_ok: bool,
    },
}

/// Parses `args` (without the program name). `prog` is used in diagnostics
/// as getopt uses `argv[0]`.
pub fn parse(prog: &str, args: &[OsString], posixly_correct: bool) -> Invocation {
    let mut o = Options {
        sockets: Vec::new(),
        interactive: false,
        bracket: false,
        timeout: Some(DEFAULT_TIMEOUT),
        words: Vec::new(),
    };
    let usage = |o: &Options, diagnostic: Option<String>, exit_ok: bool| Invocation::Usage {
        options: o.clone(),
        diagnostic,
        exit_ok,
    };
    let mut i = 0;
    let mut only_words = false;
    while i < args.len() {
        let arg = args[i].as_bytes();
        i += 1;
        if only_words || arg.len() < 2 || arg[0] != b'-' {
            o.words.push(arg.to_vec());
            if posixly_correct {
                only_words = true;
            }
            continue;
        }
        if arg == b"--" {
            only_words = true;
            continue;
        }
        let mut k = 1;
        while k < arg.len() {
            let c = arg[k];
            k += 1;
            match c {
                b'h' => return usage(&o, None, true),
                b'i' => o.interactive = true,
                b'b' => o.bracket = true,
                b's' | b't' => {
                    let value = if k < arg.len() {
                        let v = arg[k..].to_vec();
                        k = arg.len();
                        v
                    } else if i < args.len() {
                        i += 1;
                        args[i - 1].as_bytes().to_vec()
                    } else {
                        let msg =
                            format!("{prog}: option requires an argument -- '{}'\n", c as char);
                        return usage(&o, Some(msg), false);
                    };
                    if c == b's' {
                        o.sockets.push(OsString::from_vec(value));
                    } else {
                        match std::str::from_utf8(&value)
                            .ok()
                            .and_then(|v| v.trim().parse::<u64>().ok())
                        {
                            Some(0) => o.timeout = None,
                            Some(secs) => o.timeout = Some(Duration::from_secs(secs)),
                            None => {
                                let msg = format!(
                                    "{prog}: invalid timeout '{}'\n",
                                    String::from_utf8_lossy(&value)
                                );
                                return usage(&o, Some(msg), false);
                            }
                        }
                    }
                }
                other => {
                    let shown = String::from_utf8_lossy(&[other]).into_owned();
                    return usage(
                        &o,
                        Some(format!("{prog}: invalid option -- '{shown}'\n")),
                        false,
                    );
                }
            }
        }
    }
    if !o.interactive && o.words.is_empty() {
        return usage(&o, None, false);
    }
    Invocation::Run(o)
}

/// The usage text (protocol/mm-mx-ctrl.md §6), printed to stderr.
pub const USAGE: &str = "Usage: mm-mx-ctrl [options] command\n\n\
Options:\n\
-h               -- Display help\n\
-s path          -- Specify path to multiplexor socket\n\
-i               -- Read commands from stdin\n\
-b               -- Bracket responses with < and >\n";

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Invocation {
        let v: Vec<OsString> = args.iter().map(OsString::from).collect();
        parse("mm-mx-ctrl", &v, false)
    }

    fn run(args: &[&str]) -> Options {
        match p(args) {
            Invocation::Run(o) => o,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn options_and_permutation() {
        let o = run(&["-s", "/a", "-bs/b", "status", "-i"]);
        assert_eq!(o.sockets, vec![OsString::from("/a"), OsString::from("/b")]);
        assert_eq!(o.socket(), OsString::from("/b"));
        assert!(o.bracket && o.interactive);
        assert_eq!(o.words, vec![b"status".to_vec()]);
        let o = run(&["scan", "-b", "q", "--", "-x", "-"]);
        assert_eq!(
            o.words,
            vec![
                b"scan".to_vec(),
                b"q".to_vec(),
                b"-x".to_vec(),
                b"-".to_vec()
            ]
        );
        assert_eq!(o.timeout, Some(DEFAULT_TIMEOUT));
        assert_eq!(run(&["-t", "0", "x"]).timeout, None);
        assert_eq!(run(&["-t5", "x"]).timeout, Some(Duration::from_secs(5)));
        assert_eq!(run(&["-i"]).words, Vec::<Vec<u8>>::new());
        assert_eq!(run(&[""]).words, vec![Vec::<u8>::new()]);
    }

    #[test]
    fn posixly_correct_stops_at_the_command() {
        let v: Vec<OsString> = ["status", "-b"].iter().map(OsString::from).collect();
        match parse("x", &v, true) {
            Invocation::Run(o) => {
                assert!(!o.bracket);
                assert_eq!(o.words.len(), 2);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn help_and_errors_act_where_met() {
        match p(&["-s", "/a", "-h", "-s", "/b"]) {
            Invocation::Usage {
                options,
                diagnostic: None,
                exit_ok: true,
            } => assert_eq!(options.socket(), OsString::from("/a")),
            other => panic!("{other:?}"),
        }
        match p(&["status", "-x"]) {
            Invocation::Usage {
                diagnostic: Some(d),
                exit_ok: false,
                ..
            } => assert_eq!(d, "mm-mx-ctrl: invalid option -- 'x'\n"),
            other => panic!("{other:?}"),
        }
        match p(&["-s"]) {
            Invocation::Usage {
                diagnostic: Some(d),
                exit_ok: false,
                ..
            } => assert_eq!(d, "mm-mx-ctrl: option requires an argument -- 's'\n"),
            other => panic!("{other:?}"),
        }
        match p(&["--long"]) {
            Invocation::Usage {
                diagnostic: Some(d),
                ..
            } => assert_eq!(d, "mm-mx-ctrl: invalid option -- '-'\n"),
            other => panic!("{other:?}"),
        }
        match p(&["-b"]) {
            Invocation::Usage {
                diagnostic: None,
                exit_ok: false,
                options,
            } => assert!(options.bracket),
            other => panic!("{other:?}"),
        }
    }
}
