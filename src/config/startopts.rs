//! `mailmunge-start`'s command line (protocol/deployment.md §8) in the
//! shared syntax (protocol/cli.md §1, §4).

use std::ffi::OsString;
use std::path::PathBuf;

use super::startargs::Daemon;
use crate::cformat::getopt::{Asked, Asks, Name::Both, Name::Long, Opt, Stop, Tool};

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Pass `-D` (stay in the foreground), as the systemd units do.
    pub foreground: bool,
    /// `NAME=VALUE` files read after the environment, in order; a leading
    /// `-` means "skip if missing".
    pub env_files: Vec<String>,
    /// Directory of the daemons; default: this program's directory.
    pub bindir: Option<PathBuf>,
    /// Print the command line instead of running it.
    pub print: bool,
    /// Only remove a stale socket of the daemon, then exit.
    pub cleanup: bool,
    pub daemon: Daemon,
}

/// The options before the daemon word is checked.
#[derive(Default)]
struct Raw {
    foreground: bool,
    env_files: Vec<String>,
    bindir: Option<PathBuf>,
    print: bool,
    cleanup: bool,
    asked: Asked,
}

impl Asks for Raw {
    fn asked(&mut self) -> &mut Asked {
        &mut self.asked
    }
}

#[rustfmt::skip]
const OPTIONS: &[Opt<Raw>] = &[
    Opt::flag(Both('D', "foreground"), "Pass -D (stay in the foreground), as the systemd units do", |o| o.foreground = true),
    Opt::text(Long("env-file"), "FILE", "Read NAME=VALUE lines from FILE (a leading - means skip if missing)", |o, v| o.env_files.push(v)),
    Opt::bytes(Long("bindir"), "DIR", "Directory holding the daemons (default: this program's directory)", |o, v| o.bindir = Some(v.into())),
    Opt::flag(Long("print"), "Print the command line instead of running it", |o| o.print = true),
    Opt::flag(Long("cleanup"), "Only remove the daemon's socket if it is a stale UNIX socket, then exit", |o| o.cleanup = true),
    Opt::HELP,
    Opt::VERSION,
];

/// `mailmunge-start`'s usage and help.
const TOOL: Tool<Raw> = Tool {
    name: "mailmunge-start",
    synopsis: "[options] DAEMON",
    about: "Start a Mailmunge daemon with the options /etc/default/mailmunge asks for.",
    after: "DAEMON is `milter` (mailmunge) or `multiplexor` (mailmunge-multiplexor).\n\
            Variables are read from the environment, then from each --env-file in order \
            (later values win). See mailmunge-start(8).",
    options: OPTIONS,
};

/// Parses argv without argv\[0\].
pub fn parse(args: &[OsString]) -> Result<Options, Stop> {
    let mut raw = Raw::default();
    let operands = TOOL.parse(args, &mut raw)?;
    if raw.print && raw.cleanup {
        return Err(TOOL.fail("--print and --cleanup exclude each other"));
    }
    let daemon = match &operands[..] {
        [one] => {
            let word = one.to_string_lossy();
            Daemon::from_name(&word).ok_or_else(|| {
                TOOL.fail(format!(
                    "unknown daemon {word:?} (expected `milter` or `multiplexor`)"
                ))
            })?
        }
        [] => return Err(TOOL.fail("which daemon? (`milter` or `multiplexor`)")),
        [_, extra, ..] => {
            return Err(TOOL.fail(format!(
                "one daemon at a time: unexpected '{}'",
                extra.to_string_lossy()
            )))
        }
    };
    Ok(Options {
        foreground: raw.foreground,
        env_files: raw.env_files,
        bindir: raw.bindir,
        print: raw.print,
        cleanup: raw.cleanup,
        daemon,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cformat::getopt;

    fn p(args: &[&str]) -> Result<Options, Stop> {
        let v: Vec<OsString> = args.iter().map(OsString::from).collect();
        parse(&v)
    }

    fn first_line(r: Result<Options, Stop>) -> String {
        match r {
            Err(Stop::Fail(t)) => t.lines().next().unwrap_or("").to_string(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn table_is_sound() {
        assert_eq!(getopt::table_errors(OPTIONS), Vec::<String>::new());
    }

    #[test]
    fn options_in_any_order() {
        let o = p(&[
            "--print",
            "milter",
            "-D",
            "--env-file",
            "-/a",
            "--env-file=/b",
            "--bindir",
            "/x",
        ])
        .unwrap();
        assert_eq!(o.daemon, Daemon::Milter);
        assert!(o.print && o.foreground && !o.cleanup);
        assert_eq!(o.env_files, ["-/a", "/b"]);
        assert_eq!(o.bindir, Some(PathBuf::from("/x")));
        assert_eq!(p(&["mx"]).unwrap().daemon, Daemon::Multiplexor);
    }

    #[test]
    fn errors_help_and_version() {
        assert_eq!(
            first_line(p(&["postfix"])),
            "mailmunge-start: unknown daemon \"postfix\" (expected `milter` or `multiplexor`)"
        );
        assert_eq!(
            first_line(p(&[])),
            "mailmunge-start: which daemon? (`milter` or `multiplexor`)"
        );
        assert_eq!(
            first_line(p(&["milter", "multiplexor"])),
            "mailmunge-start: one daemon at a time: unexpected 'multiplexor'"
        );
        assert_eq!(
            first_line(p(&["--print", "--cleanup", "milter"])),
            "mailmunge-start: --print and --cleanup exclude each other"
        );
        assert_eq!(
            first_line(p(&["--env-file"])),
            "mailmunge-start: option '--env-file' requires an argument"
        );
        let Err(Stop::Print(h)) = p(&["--help"]) else {
            panic!("no help")
        };
        assert!(
            h.starts_with("Usage: mailmunge-start [options] DAEMON\n"),
            "{h}"
        );
        assert!(h.contains("\n  -D, --foreground       -- Pass -D"), "{h}");
        assert_eq!(
            p(&["--version"]),
            Err(Stop::Print("mailmunge-start 3.09\n".into()))
        );
    }
}
