//! The shared command-line parser (protocol/cli.md §1–§4): clusters,
//! attached and separate arguments, `--`, operands and their order, missing
//! arguments, unknown options, repeated options, long options, options that
//! end the parse, and the usage lines, on a small table of its own.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

use mailmunge::cformat::getopt::{self, Error, Name::Both, Name::Long, Name::Short, Opt, Order};

/// Everything the test table can record, in the order it was applied.
#[derive(Debug, Default, PartialEq)]
struct Seen {
    events: Vec<String>,
}

fn note(s: &mut Seen, what: String) {
    s.events.push(what);
}

const TABLE: &[Opt<Seen>] = &[
    Opt::flag(Short('k'), "keep", |s| note(s, "k".into())),
    Opt::flag(Short('T'), "times", |s| note(s, "T".into())),
    Opt::text(Short('m'), "N", "number", |s, v| note(s, format!("m={v}"))),
    Opt::bytes(Short('p'), "path", "path", |s, v| {
        note(s, format!("p={}", String::from_utf8_lossy(&v.into_vec())))
    }),
    Opt::last(Short('h'), "help", |s| note(s, "h".into())),
    Opt::checked(Short('n'), "num", "", |s, v| {
        let n: u32 = getopt::decimal("-n", &v)?;
        note(s, format!("n={n}"));
        Ok(())
    }),
];

const WITH_LONG: &[Opt<Seen>] = &[
    Opt::flag(Both('j', "json"), "json", |s| note(s, "json".into())),
    Opt::text(Long("env-file"), "FILE", "file", |s, v| {
        note(s, format!("env={v}"))
    }),
    Opt::text(Both('t', "to"), "ADDR", "to", |s, v| {
        note(s, format!("to={v}"))
    }),
];

fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

/// Parses with `table`; the events applied and the operands (or the error).
fn run_with(
    table: &[Opt<Seen>],
    args: &[&str],
    order: Order,
) -> (Vec<String>, Result<Vec<String>, Error>) {
    let mut seen = Seen::default();
    let r = getopt::parse(table, &os(args), order, &mut seen).map(|ops| {
        ops.into_iter()
            .map(|o| o.to_string_lossy().into_owned())
            .collect()
    });
    (seen.events, r)
}

fn run(args: &[&str]) -> (Vec<String>, Result<Vec<String>, Error>) {
    run_with(TABLE, args, Order::Permute)
}

#[test]
fn clusters_and_arguments() {
    assert_eq!(run(&["-kT"]), (vec!["k".into(), "T".into()], Ok(vec![])));
    // The rest of a cluster after an option with an argument is its value.
    assert_eq!(run(&["-kmTk"]).0, ["k", "m=Tk"]);
    assert_eq!(run(&["-m5", "-m", "6"]).0, ["m=5", "m=6"]);
    // A separate argument is the next word, whatever it looks like.
    assert_eq!(run(&["-m", "-k"]).0, ["m=-k"]);
    assert_eq!(run(&["-m", "--"]), (vec!["m=--".into()], Ok(vec![])));
    assert_eq!(run(&["-m", ""]).0, ["m="]);
}

#[test]
fn missing_argument_and_unknown_option() {
    let (events, r) = run(&["-k", "-m"]);
    assert_eq!(events, ["k"]);
    assert_eq!(r, Err(Error::NeedsArgument('m')));
    assert_eq!(
        r.unwrap_err().message("prog"),
        "prog: option requires an argument -- 'm'\n"
    );
    // The error stops the walk where it is met.
    let (events, r) = run(&["-k", "-kZT", "-T"]);
    assert_eq!(events, ["k", "k"]);
    assert_eq!(
        r.unwrap_err().message("prog"),
        "prog: invalid option -- 'Z'\n"
    );
    // Without long options in the table, `--word` is a cluster of letters.
    assert_eq!(run(&["--k"]).1, Err(Error::Invalid(b'-')));
    assert_eq!(
        run(&["-n", "x"]).1.unwrap_err().message("p"),
        "p: -n: not a number: 'x'\n"
    );
    assert_eq!(run(&["-n", "7"]).0, ["n=7"]);
}

#[test]
fn double_dash_and_operands() {
    assert_eq!(
        run(&["a", "-k", "--", "-T", "-", "b"]),
        (
            vec!["k".into()],
            Ok(vec!["a".into(), "-T".into(), "-".into(), "b".into()])
        )
    );
    // A lone `-` is an operand, not an option.
    assert_eq!(run(&["-", "-k"]), (vec!["k".into()], Ok(vec!["-".into()])));
    // POSIX order: the first operand ends the options.
    assert_eq!(
        run_with(TABLE, &["-k", "cmd", "-T"], Order::RequireOrder),
        (vec!["k".into()], Ok(vec!["cmd".into(), "-T".into()]))
    );
}

#[test]
fn repeated_options_apply_in_order() {
    assert_eq!(
        run(&["-p/a", "-kp", "/b", "-p", "/c"]).0,
        ["p=/a", "k", "p=/b", "p=/c"]
    );
}

#[test]
fn final_option_ends_the_parse() {
    // Nothing after -h is applied or checked, operands included.
    assert_eq!(
        run(&["x", "-k", "-hT", "-Z", "y"]),
        (vec!["k".into(), "h".into()], Ok(vec!["x".into()]))
    );
}

#[test]
fn bytes_and_text_arguments() {
    let bad = OsString::from_vec(vec![b'/', 0xff]);
    let mut seen = Seen::default();
    getopt::parse(
        TABLE,
        &[OsString::from("-p"), bad.clone()],
        Order::Permute,
        &mut seen,
    )
    .unwrap();
    assert_eq!(seen.events, ["p=/\u{fffd}"]);
    let r = getopt::parse(
        TABLE,
        &[OsString::from("-m"), bad],
        Order::Permute,
        &mut Seen::default(),
    );
    assert_eq!(
        r.unwrap_err().message("prog"),
        "prog: the argument of -m is not UTF-8 text\n"
    );
}

#[test]
fn long_options() {
    let long = |args: &[&str]| run_with(WITH_LONG, args, Order::Permute);
    assert_eq!(
        long(&[
            "--json",
            "--env-file",
            "-/a",
            "--env-file=/b",
            "--to=",
            "-jt",
            "x"
        ])
        .0,
        ["json", "env=-/a", "env=/b", "to=", "json", "to=x"]
    );
    let err = |args: &[&str]| long(args).1.unwrap_err().message("p");
    assert_eq!(err(&["--nope"]), "p: unrecognized option '--nope'\n");
    assert_eq!(err(&["--nope=1"]), "p: unrecognized option '--nope=1'\n");
    // No abbreviations: only the whole name.
    assert_eq!(err(&["--js"]), "p: unrecognized option '--js'\n");
    assert_eq!(
        err(&["--json=yes"]),
        "p: option '--json' doesn't allow an argument\n"
    );
    assert_eq!(
        err(&["--env-file"]),
        "p: option '--env-file' requires an argument\n"
    );
    assert_eq!(long(&["--", "--json"]).1, Ok(vec!["--json".into()]));
}

#[test]
fn usage_lines_tables_and_lookup() {
    assert_eq!(
        getopt::usage_lines(&TABLE[..3], "  ", 6),
        "  -k     -- keep\n  -T     -- times\n  -m N   -- number\n"
    );
    assert_eq!(
        getopt::usage_lines(WITH_LONG, "", 12),
        "-j, --json   -- json\n--env-file FILE -- file\n-t, --to ADDR -- to\n"
    );
    assert_eq!(getopt::optstring(TABLE), "kTm:p:hn:");
    assert_eq!(
        getopt::optstring_letters("m:kT"),
        [('T', false), ('k', false), ('m', true)]
    );
    assert!(getopt::find(TABLE, "-m").is_some_and(|o| o.takes_argument()));
    assert!(getopt::find(WITH_LONG, "--to").is_some());
    assert!(getopt::find(WITH_LONG, "--nope").is_none());
    assert!(getopt::table_errors(TABLE).is_empty());
    let broken: &[Opt<Seen>] = &[
        Opt::flag(Short('k'), "", |_| {}),
        Opt::text(Both('k', "a=b"), "", "", |_, _| {}),
        Opt::flag(Short('-'), "", |_| {}),
    ];
    assert_eq!(
        getopt::table_errors(broken),
        [
            "-k, --a=b: not a long option name",
            "-k, --a=b: the argument name and the action disagree",
            "--: not an ASCII letter or digit",
            "-k: in the table twice"
        ]
    );
}

/// A tool of ours: `-h`/`--help` and `-V`/`--version` from the shared
/// entries, usage errors in the tool's words (protocol/cli.md §3, §4).
#[derive(Default)]
struct ToolOpts {
    asked: getopt::Asked,
    verbose: bool,
}

impl getopt::Asks for ToolOpts {
    fn asked(&mut self) -> &mut getopt::Asked {
        &mut self.asked
    }
}

const TOOL: getopt::Tool<ToolOpts> = getopt::Tool {
    name: "tool",
    synopsis: "[options] FILE",
    about: "Does a thing.",
    after: "Exit status: 0.",
    options: &[
        Opt::flag(Both('v', "verbose"), "Say more", |o| o.verbose = true),
        Opt::HELP,
        Opt::VERSION,
    ],
};

#[test]
fn tools_help_version_and_usage_errors() {
    use getopt::Stop;
    let tool = |args: &[&str]| TOOL.parse(&os(args), &mut ToolOpts::default());
    assert_eq!(
        tool(&["-v", "--help", "--bogus"]),
        Err(Stop::Print(
            "Usage: tool [options] FILE\nDoes a thing.\n\nOptions:\n\
             \x20 -v, --verbose          -- Say more\n\
             \x20 -h, --help             -- Show this help and exit\n\
             \x20 -V, --version          -- Print the version and exit\n\
             \nExit status: 0.\n"
                .into()
        ))
    );
    assert_eq!(tool(&["f", "-V"]), Err(Stop::Print("tool 3.09\n".into())));
    assert_eq!(
        tool(&["--verbose=1"]),
        Err(Stop::Fail(
            "tool: option '--verbose' doesn't allow an argument\n\
             Usage: tool [options] FILE\nTry 'tool --help' for more information.\n"
                .into()
        ))
    );
    let mut o = ToolOpts::default();
    assert_eq!(TOOL.parse(&os(&["f", "-v"]), &mut o), Ok(vec!["f".into()]));
    assert!(o.verbose);
    assert_eq!(Stop::Print(String::new()).finish(), 0);
    assert_eq!(Stop::Fail(String::new()).finish(), 1);
}

#[test]
fn whole_argv_skips_the_program_name() {
    #[derive(Default, Debug, PartialEq)]
    struct Flags {
        k: bool,
    }
    let table: &[Opt<Flags>] = &[Opt::flag(Short('k'), "", |f| f.k = true)];
    let argv = os(&["-Z", "-k"]);
    assert_eq!(getopt::parse_argv(table, &argv), Ok(Flags { k: true }));
    assert_eq!(getopt::parse_argv(table, &[]), Ok(Flags { k: false }));
}
