//! `mm-try`'s command line (protocol/deployment.md §13) in the shared
//! syntax (protocol/cli.md §1, §4).

use std::ffi::OsString;
use std::path::PathBuf;

use crate::cformat::getopt::{self, Asked, Asks, Name::Both, Name::Long, Opt, Stop, Tool};

/// Where SOCKET and MX_SOCKET are looked up without `--env-file` (a
/// leading `-`: skipped when missing).
pub const DEFAULT_ENV_FILES: [&str; 2] = ["-/etc/sysconfig/mailmunge", "-/etc/default/mailmunge"];

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Milter socket; default: SOCKET from the env files.
    pub milter: Option<String>,
    /// Where to look for SOCKET and MX_SOCKET, in order.
    pub env_files: Vec<String>,
    /// Envelope sender; default: the From: address, else `<>`.
    pub from: Option<String>,
    /// Envelope recipients; default: the To: and Cc: addresses.
    pub to: Vec<String>,
    pub client_ip: String,
    pub client_name: String,
    /// HELO argument; default: the client name.
    pub helo: Option<String>,
    /// Seconds to wait for each answer.
    pub timeout: u64,
    /// Multiplexor socket asked why a message was tempfailed; default:
    /// MX_SOCKET from the env files.
    pub mx: Option<PathBuf>,
    pub json: bool,
    /// Where to write the resulting message too.
    pub output: Option<PathBuf>,
    /// The message; `None` or `-`: standard input.
    pub message: Option<PathBuf>,
    asked: Asked,
}

impl Asks for Options {
    fn asked(&mut self) -> &mut Asked {
        &mut self.asked
    }
}

impl Default for Options {
    fn default() -> Options {
        Options {
            milter: None,
            env_files: Vec::new(),
            from: None,
            to: Vec::new(),
            client_ip: "192.0.2.1".into(),
            client_name: "client.example".into(),
            helo: None,
            timeout: 660,
            mx: None,
            json: false,
            output: None,
            message: None,
            asked: Asked::Run,
        }
    }
}

#[rustfmt::skip]
const OPTIONS: &[Opt<Options>] = &[
    Opt::text(Both('m', "milter"), "SPEC", "Milter socket (as SOCKET= or in smtpd_milters); default: SOCKET from the env files", |o, v| o.milter = Some(v)),
    Opt::text(Long("env-file"), "FILE", "Where to look for SOCKET (a leading - means optional); repeatable", |o, v| o.env_files.push(v)),
    Opt::text(Both('f', "from"), "ADDR", "Envelope sender (default: the From: address, else <>)", |o, v| o.from = Some(v)),
    Opt::text(Both('t', "to"), "ADDR", "Envelope recipient; repeatable (default: To: and Cc:)", |o, v| o.to.push(v)),
    Opt::text(Long("client-ip"), "ADDR", "Client address the milter sees (default 192.0.2.1)", |o, v| o.client_ip = v),
    Opt::text(Long("client-name"), "NAME", "Client host name the milter sees (default client.example)", |o, v| o.client_name = v),
    Opt::text(Long("helo"), "NAME", "HELO/EHLO argument (default: the client name)", |o, v| o.helo = Some(v)),
    Opt::checked(Long("timeout"), "SECS", "Seconds to wait for each answer (default 660)", |o, v| {
        o.timeout = getopt::decimal("--timeout", &v)?;
        Ok(())
    }),
    Opt::bytes(Both('s', "mx"), "PATH", "Multiplexor socket asked why mail was tempfailed; default: MX_SOCKET", |o, v| o.mx = Some(v.into())),
    Opt::flag(Long("json"), "Print the result as JSON", |o| o.json = true),
    Opt::bytes(Both('o', "output"), "FILE", "Also write the resulting message to FILE", |o, v| o.output = Some(v.into())),
    Opt::HELP,
    Opt::VERSION,
];

/// `mm-try`'s usage and help.
const TOOL: Tool<Options> = Tool {
    name: "mm-try",
    synopsis: "[options] [MESSAGE]",
    about: "Try a message against a running mailmunge milter, as an MTA would.",
    after: "MESSAGE is read from standard input when it is absent or `-`.\n\
            Exit status: 0 the message would be accepted, 2 rejected, 3 tempfailed, \
            4 discarded, 1 the try-out itself failed.",
    options: OPTIONS,
};

/// Parses argv without argv\[0\].
pub fn parse(args: &[OsString]) -> Result<Options, Stop> {
    let mut o = Options::default();
    let mut operands = TOOL.parse(args, &mut o)?.into_iter();
    o.message = operands.next().map(PathBuf::from);
    if let Some(extra) = operands.next() {
        return Err(TOOL.fail(format!(
            "one message at a time: unexpected '{}'",
            extra.to_string_lossy()
        )));
    }
    if o.env_files.is_empty() {
        o.env_files = DEFAULT_ENV_FILES.map(String::from).to_vec();
    }
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Options, Stop> {
        let v: Vec<OsString> = args.iter().map(OsString::from).collect();
        parse(&v)
    }

    #[test]
    fn table_is_sound() {
        assert_eq!(getopt::table_errors(OPTIONS), Vec::<String>::new());
    }

    #[test]
    fn defaults_and_repeats() {
        let o = p(&[]).unwrap();
        assert_eq!(o.env_files, DEFAULT_ENV_FILES);
        assert_eq!(
            (o.client_ip.as_str(), o.timeout, o.message),
            ("192.0.2.1", 660, None)
        );
        let o = p(&[
            "-t",
            "a@x",
            "--to=b@x",
            "-tc@x",
            "--env-file",
            "-/e1",
            "--env-file=/e2",
            "m.eml",
            "--json",
            "-mmilter.sock",
            "--timeout",
            "5",
        ])
        .unwrap();
        assert_eq!(o.to, ["a@x", "b@x", "c@x"]);
        assert_eq!(o.env_files, ["-/e1", "/e2"]);
        assert_eq!(o.message, Some(PathBuf::from("m.eml")));
        assert!(o.json);
        assert_eq!((o.milter.as_deref(), o.timeout), (Some("milter.sock"), 5));
        assert_eq!(p(&["--", "-"]).unwrap().message, Some(PathBuf::from("-")));
    }

    #[test]
    fn help_version_and_errors() {
        let Err(Stop::Print(h)) = p(&["-t", "x", "--help", "--bogus"]) else {
            panic!("no help");
        };
        assert!(h.starts_with("Usage: mm-try [options] [MESSAGE]\n"), "{h}");
        assert!(
            h.contains("\n  -m, --milter SPEC      -- Milter socket"),
            "{h}"
        );
        assert_eq!(p(&["-V"]), Err(Stop::Print("mm-try 3.09\n".into())));
        let fail = |args: &[&str]| match p(args) {
            Err(Stop::Fail(t)) => t.lines().next().unwrap_or("").to_string(),
            other => panic!("{other:?}"),
        };
        assert_eq!(fail(&["--bogus"]), "mm-try: unrecognized option '--bogus'");
        assert_eq!(fail(&["-Z"]), "mm-try: invalid option -- 'Z'");
        assert_eq!(
            fail(&["--timeout", "x"]),
            "mm-try: --timeout: not a number: 'x'"
        );
        assert_eq!(
            fail(&["--json=1"]),
            "mm-try: option '--json' doesn't allow an argument"
        );
        assert_eq!(
            fail(&["--helo"]),
            "mm-try: option '--helo' requires an argument"
        );
        assert_eq!(
            fail(&["a", "b"]),
            "mm-try: one message at a time: unexpected 'b'"
        );
    }
}
