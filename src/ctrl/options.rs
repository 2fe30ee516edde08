//! mm-mx-ctrl's command line: glibc `getopt(argc, argv, "hs:ibt:")`
//! (protocol/mm-mx-ctrl.md §1) in the shared syntax (protocol/cli.md §1):
//! options may be clustered (`-bi`), `-s` takes the next word or the rest of
//! its own (`-s/x`), options after the command word are still options (GNU
//! permutation, unless `POSIXLY_CORRECT` is set) and `--` ends them. `-h`
//! and errors act at the point where they are met, so only the `-s`/`-i`
//! seen before them count. `-t` is our extension
//! (protocol/mm-mx-ctrl.md §9.1).

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::time::Duration;

use crate::cformat::getopt::{self, Name::Short, Opt, Order};

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

/// What the table fills in: the options, and whether `-h` was met.
struct Parse {
    options: Options,
    help: bool,
}

/// The options, in the order of the usage text (protocol/mm-mx-ctrl.md §6);
/// `-t` is ours and not listed there.
#[rustfmt::skip]
const OPTIONS: &[Opt<Parse>] = &[
    Opt::last(Short('h'), "Display help", |p| p.help = true),
    Opt::bytes(Short('s'), "path", "Specify path to multiplexor socket", |p, v| p.options.sockets.push(v)),
    Opt::flag(Short('i'), "Read commands from stdin", |p| p.options.interactive = true),
    Opt::flag(Short('b'), "Bracket responses with < and >", |p| p.options.bracket = true),
    Opt::checked(Short('t'), "secs", "", |p, v| {
        p.options.timeout = match v.trim().parse::<u64>() {
            Ok(0) => None,
            Ok(secs) => Some(Duration::from_secs(secs)),
            Err(_) => return Err(format!("invalid timeout '{v}'")),
        };
        Ok(())
    }),
];

/// Parses `args` (without the program name). `prog` is used in diagnostics
/// as getopt uses `argv[0]`.
pub fn parse(prog: &str, args: &[OsString], order: Order) -> Invocation {
    let mut p = Parse {
        options: Options {
            sockets: Vec::new(),
            interactive: false,
            bracket: false,
            timeout: Some(DEFAULT_TIMEOUT),
            words: Vec::new(),
        },
        help: false,
    };
    let result = getopt::parse(OPTIONS, args, order, &mut p);
    let usage = |options: Options, diagnostic: Option<String>, exit_ok: bool| Invocation::Usage {
        options,
        diagnostic,
        exit_ok,
    };
    let mut o = p.options;
    match result {
        Err(e) => usage(o, Some(e.message(prog)), false),
        Ok(_) if p.help => usage(o, None, true),
        Ok(words) => {
            o.words = words.into_iter().map(OsString::into_vec).collect();
            if !o.interactive && o.words.is_empty() {
                return usage(o, None, false);
            }
            Invocation::Run(o)
        }
    }
}

/// The usage text (protocol/mm-mx-ctrl.md §6), printed to stderr.
pub fn usage_text() -> String {
    format!(
        "Usage: mm-mx-ctrl [options] command\n\nOptions:\n{}",
        getopt::usage_lines(OPTIONS, "", 16)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Invocation {
        let v: Vec<OsString> = args.iter().map(OsString::from).collect();
        parse("mm-mx-ctrl", &v, Order::Permute)
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
    fn usage_is_upstreams() {
        assert_eq!(
            usage_text(),
            "Usage: mm-mx-ctrl [options] command\n\nOptions:\n\
             -h               -- Display help\n\
             -s path          -- Specify path to multiplexor socket\n\
             -i               -- Read commands from stdin\n\
             -b               -- Bracket responses with < and >\n"
        );
        assert_eq!(getopt::table_errors(OPTIONS), Vec::<String>::new());
        assert_eq!(
            getopt::optstring_letters(&getopt::optstring(OPTIONS)),
            getopt::optstring_letters("hs:ibt:")
        );
        match p(&["-t", "5x", "status"]) {
            Invocation::Usage {
                diagnostic: Some(d),
                exit_ok: false,
                ..
            } => assert_eq!(d, "mm-mx-ctrl: invalid timeout '5x'\n"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn posixly_correct_stops_at_the_command() {
        let v: Vec<OsString> = ["status", "-b"].iter().map(OsString::from).collect();
        match parse("x", &v, Order::RequireOrder) {
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
