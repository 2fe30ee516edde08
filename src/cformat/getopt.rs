//! The one command-line parser of every program: glibc `getopt` as
//! upstream's C programs call it, plus long options in the manner of
//! `getopt_long` for our extensions (protocol/cli.md §1–§4).
//!
//! Each program describes its options once, in a table of [`Opt`]s: the
//! spelling, the usage line and what the option does to the program's
//! options struct. [`parse`] walks argv in order and applies each option as
//! it meets it, so "a later option overrides an earlier one", "every `-a`
//! is kept" and "`-h` acts where it is met" are all decided by the table.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

/// How an option is spelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Name {
    /// `-x`; the letter must be ASCII.
    Short(char),
    /// `--name` only.
    Long(&'static str),
    /// Both `-x` and `--name`.
    Both(char, &'static str),
}

impl Name {
    fn short(self) -> Option<char> {
        match self {
            Name::Short(c) | Name::Both(c, _) => Some(c),
            Name::Long(_) => None,
        }
    }

    fn long(self) -> Option<&'static str> {
        match self {
            Name::Long(l) | Name::Both(_, l) => Some(l),
            Name::Short(_) => None,
        }
    }
}

/// What an option does to the program's options struct `T`.
pub enum Action<T> {
    /// A flag (no argument).
    Flag(fn(&mut T)),
    /// A flag after which parsing stops (`-h`, `-v`): what follows it is
    /// neither applied nor checked (protocol/cli.md §2).
    Final(fn(&mut T)),
    /// An argument that must be UTF-8 text.
    Text(fn(&mut T, String)),
    /// An argument kept as the bytes given (paths, socket names).
    Bytes(fn(&mut T, OsString)),
    /// A text argument that can be refused; the message is the whole
    /// complaint, printed after the program name.
    Checked(fn(&mut T, String) -> Result<(), String>),
}

/// One option of a program's table.
pub struct Opt<T> {
    pub name: Name,
    /// The argument's name in the usage text; empty for flags.
    pub arg: &'static str,
    /// The usage line; empty keeps the option out of the usage text.
    pub help: &'static str,
    pub action: Action<T>,
}

// One line each: the constructors differ only in the action they wrap.
#[rustfmt::skip]
impl<T> Opt<T> {
    /// A flag.
    pub const fn flag(name: Name, help: &'static str, f: fn(&mut T)) -> Opt<T> {
        Opt { name, arg: "", help, action: Action::Flag(f) }
    }

    /// A flag that ends parsing.
    pub const fn last(name: Name, help: &'static str, f: fn(&mut T)) -> Opt<T> {
        Opt { name, arg: "", help, action: Action::Final(f) }
    }

    /// An option with a text argument.
    pub const fn text(name: Name, arg: &'static str, help: &'static str, f: fn(&mut T, String)) -> Opt<T> {
        Opt { name, arg, help, action: Action::Text(f) }
    }

    /// An option whose argument is kept as bytes.
    pub const fn bytes(name: Name, arg: &'static str, help: &'static str, f: fn(&mut T, OsString)) -> Opt<T> {
        Opt { name, arg, help, action: Action::Bytes(f) }
    }

    /// An option whose text argument the action may refuse.
    pub const fn checked(
        name: Name, arg: &'static str, help: &'static str, f: fn(&mut T, String) -> Result<(), String>,
    ) -> Opt<T> {
        Opt { name, arg, help, action: Action::Checked(f) }
    }
}

impl<T> Opt<T> {
    /// `-x` and/or `--name`, as argv spells them.
    pub fn names(&self) -> Vec<String> {
        let short = self.name.short().map(|c| format!("-{c}"));
        let long = self.name.long().map(|l| format!("--{l}"));
        short.into_iter().chain(long).collect()
    }

    /// Whether the option takes an argument.
    pub fn takes_argument(&self) -> bool {
        matches!(
            self.action,
            Action::Text(_) | Action::Bytes(_) | Action::Checked(_)
        )
    }

    /// The option as the usage shows it: `-p conn`, `--metrics sock`,
    /// `-m, --milter SPEC`.
    pub fn spelling(&self) -> String {
        let mut s = match self.name {
            Name::Short(c) => format!("-{c}"),
            Name::Long(l) => format!("--{l}"),
            Name::Both(c, l) => format!("-{c}, --{l}"),
        };
        if !self.arg.is_empty() {
            s.push(' ');
            s.push_str(self.arg);
        }
        s
    }
}

/// Where the options end (protocol/cli.md §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// glibc's default: options may follow operands.
    Permute,
    /// POSIX (glibc with `POSIXLY_CORRECT` set): the first operand ends
    /// the options.
    RequireOrder,
}

impl Order {
    /// glibc's choice: [`Order::RequireOrder`] when `POSIXLY_CORRECT` is in
    /// the environment.
    pub fn from_env() -> Order {
        if std::env::var_os("POSIXLY_CORRECT").is_some() {
            Order::RequireOrder
        } else {
            Order::Permute
        }
    }
}

/// Why parsing stopped. `Display` is glibc's wording without the program
/// name; [`Error::message`] adds it (protocol/cli.md §3).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("invalid option -- '{}'", String::from_utf8_lossy(&[*.0]))]
    Invalid(u8),
    #[error("option requires an argument -- '{0}'")]
    NeedsArgument(char),
    #[error("unrecognized option '{0}'")]
    UnrecognizedLong(String),
    #[error("option '--{0}' requires an argument")]
    LongNeedsArgument(&'static str),
    #[error("option '--{0}' doesn't allow an argument")]
    LongTakesNoArgument(&'static str),
    /// The argument of a text option is not UTF-8; carries the option as
    /// spelled (`-x`, `--helo`).
    #[error("the argument of {0} is not UTF-8 text")]
    NotText(String),
    /// An action refused its argument.
    #[error("{0}")]
    Refused(String),
}

impl Error {
    /// The complaint as the program prints it: `PROG: TEXT\n`.
    pub fn message(&self, prog: &str) -> String {
        format!("{prog}: {self}\n")
    }
}

/// Whether to go on after an option.
enum Flow {
    Go,
    Stop,
}

/// Walks `args` (argv without argv\[0\]), applying each option of `table`
/// to `target` as it is met; returns the operands in order. An error stops
/// the walk where it happens, with the options before it applied.
pub fn parse<T>(
    table: &[Opt<T>],
    args: &[OsString],
    order: Order,
    target: &mut T,
) -> Result<Vec<OsString>, Error> {
    let with_long = table.iter().any(|o| o.name.long().is_some());
    let mut operands = Vec::new();
    let mut next = 0;
    while next < args.len() {
        let arg = args[next].as_bytes();
        next += 1;
        if arg == b"--" {
            operands.extend_from_slice(&args[next..]);
            break;
        }
        if arg.len() < 2 || arg[0] != b'-' {
            operands.push(args[next - 1].clone());
            if order == Order::RequireOrder {
                operands.extend_from_slice(&args[next..]);
                break;
            }
            continue;
        }
        let rest = &args[next..];
        let (flow, used) = match arg.strip_prefix(b"--") {
            Some(long) if with_long => long_option(table, long, rest, target)?,
            _ => cluster(table, &arg[1..], rest, target)?,
        };
        next += used;
        if let Flow::Stop = flow {
            break;
        }
    }
    Ok(operands)
}

/// [`parse`] for a daemon's whole argv (argv\[0\] first) into a fresh
/// `T`, in glibc's order for the environment.
pub fn parse_argv<T: Default>(table: &[Opt<T>], argv: &[OsString]) -> Result<T, Error> {
    let mut target = T::default();
    parse(
        table,
        argv.get(1..).unwrap_or(&[]),
        Order::from_env(),
        &mut target,
    )?;
    Ok(target)
}

/// One word of short options (`-kT`, `-mN`, `-m`); `rest` is the words
/// after it. Returns how many of them were used as an argument.
fn cluster<T>(
    table: &[Opt<T>],
    letters: &[u8],
    rest: &[OsString],
    target: &mut T,
) -> Result<(Flow, usize), Error> {
    for (k, &c) in letters.iter().enumerate() {
        let opt = table
            .iter()
            .find(|o| o.name.short().is_some_and(|s| s.is_ascii() && s as u8 == c))
            .ok_or(Error::Invalid(c))?;
        if !opt.takes_argument() {
            if let Flow::Stop = apply(opt, None, target)? {
                return Ok((Flow::Stop, 0));
            }
            continue;
        }
        let attached = &letters[k + 1..];
        let (value, used) = if !attached.is_empty() {
            (OsStr::from_bytes(attached).to_owned(), 0)
        } else {
            let next = rest.first().ok_or(Error::NeedsArgument(c as char))?;
            (next.clone(), 1)
        };
        return Ok((apply(opt, Some(value), target)?, used));
    }
    Ok((Flow::Go, 0))
}

/// One `--name` or `--name=value` (without the dashes).
fn long_option<T>(
    table: &[Opt<T>],
    word: &[u8],
    rest: &[OsString],
    target: &mut T,
) -> Result<(Flow, usize), Error> {
    let (name, inline) = match word.iter().position(|&b| b == b'=') {
        Some(eq) => (&word[..eq], Some(OsStr::from_bytes(&word[eq + 1..]))),
        None => (word, None),
    };
    let opt = table
        .iter()
        .find(|o| o.name.long().is_some_and(|l| l.as_bytes() == name))
        .ok_or_else(|| Error::UnrecognizedLong(format!("--{}", String::from_utf8_lossy(word))))?;
    let long = opt.name.long().unwrap_or_default();
    if !opt.takes_argument() {
        if inline.is_some() {
            return Err(Error::LongTakesNoArgument(long));
        }
        return Ok((apply(opt, None, target)?, 0));
    }
    let (value, used) = match inline {
        Some(v) => (v.to_owned(), 0),
        None => (
            rest.first().ok_or(Error::LongNeedsArgument(long))?.clone(),
            1,
        ),
    };
    Ok((apply(opt, Some(value), target)?, used))
}

/// Runs an option's action; `value` is present exactly when it takes one.
fn apply<T>(opt: &Opt<T>, value: Option<OsString>, target: &mut T) -> Result<Flow, Error> {
    let text = |v: OsString| {
        v.into_string()
            .map_err(|_| Error::NotText(opt.names().remove(0)))
    };
    match (&opt.action, value) {
        (Action::Flag(f), _) => f(target),
        (Action::Final(f), _) => {
            f(target);
            return Ok(Flow::Stop);
        }
        (Action::Text(f), Some(v)) => f(target, text(v)?),
        (Action::Bytes(f), Some(v)) => f(target, v),
        (Action::Checked(f), Some(v)) => f(target, text(v)?).map_err(Error::Refused)?,
        // parse() passes a value to every option that takes one.
        (_, None) => {}
    }
    Ok(Flow::Go)
}

/// The usage lines of `table`, in its order: `indent`, the spelling
/// left-justified in `width` columns, ` -- `, the help text.
pub fn usage_lines<T>(table: &[Opt<T>], indent: &str, width: usize) -> String {
    table
        .iter()
        .filter(|o| !o.help.is_empty())
        .map(|o| format!("{indent}{:<width$} -- {}\n", o.spelling(), o.help))
        .collect()
}

/// The table's short options as a getopt string (`ab:c`), in table order.
pub fn optstring<T>(table: &[Opt<T>]) -> String {
    let mut s = String::new();
    for o in table {
        if let Some(c) = o.name.short() {
            s.push(c);
            if o.takes_argument() {
                s.push(':');
            }
        }
    }
    s
}

/// The letters of a getopt string, each with whether it takes an argument,
/// sorted: two strings with the same letters compare equal.
pub fn optstring_letters(optstring: &str) -> Vec<(char, bool)> {
    let chars: Vec<char> = optstring.chars().collect();
    let mut letters: Vec<(char, bool)> = chars
        .iter()
        .enumerate()
        .filter(|(_, &c)| c != ':')
        .map(|(i, &c)| (c, chars.get(i + 1) == Some(&':')))
        .collect();
    letters.sort();
    letters
}

/// The table's option spelled `spelled` (`-p`, `--metrics`), if any.
pub fn find<'t, T>(table: &'t [Opt<T>], spelled: &str) -> Option<&'t Opt<T>> {
    table
        .iter()
        .find(|o| o.names().iter().any(|n| n == spelled))
}

/// A table's mistakes, for each program's unit tests: letters that are not
/// ASCII alphanumerics, long names that are empty or hold `=`, spellings
/// used twice, an argument name on a flag or none on an option with one.
pub fn table_errors<T>(table: &[Opt<T>]) -> Vec<String> {
    let mut errors = Vec::new();
    for o in table {
        if o.name.short().is_some_and(|c| !c.is_ascii_alphanumeric()) {
            errors.push(format!("{}: not an ASCII letter or digit", o.spelling()));
        }
        if o.name
            .long()
            .is_some_and(|l| l.is_empty() || l.contains('=') || l.starts_with('-'))
        {
            errors.push(format!("{}: not a long option name", o.spelling()));
        }
        if o.takes_argument() == o.arg.is_empty() {
            errors.push(format!(
                "{}: the argument name and the action disagree",
                o.spelling()
            ));
        }
    }
    let names: Vec<String> = table.iter().flat_map(Opt::names).collect();
    for (i, n) in names.iter().enumerate() {
        if names[..i].contains(n) {
            errors.push(format!("{n}: in the table twice"));
        }
    }
    errors
}

/// A count or number of seconds given to one of our long options: plain
/// decimal, refused with the option's name otherwise.
pub fn decimal<N: std::str::FromStr>(option: &str, v: &str) -> Result<N, String> {
    v.parse()
        .map_err(|_| format!("{option}: not a number: '{v}'"))
}

/// How the command line of one of our own tools (`mm-try`,
/// `mailmunge-start`) ends when it does not run the tool
/// (protocol/cli.md §4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// `--help` or `--version`: this text on stdout, exit status 0.
    Print(String),
    /// A usage error: this text on stderr, exit status 1.
    Fail(String),
}

impl Stop {
    /// Prints the text where it belongs; returns the exit status.
    pub fn finish(&self) -> i32 {
        use std::io::Write;
        match self {
            Stop::Print(t) => {
                let _ = std::io::stdout().write_all(t.as_bytes());
                0
            }
            Stop::Fail(t) => {
                let _ = std::io::stderr().write_all(t.as_bytes());
                1
            }
        }
    }
}

/// What a tool's `-h`/`--help` or `-V`/`--version` asked for.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Asked {
    #[default]
    Run,
    Help,
    Version,
}

/// A tool's options struct: where [`Opt::HELP`] and [`Opt::VERSION`] leave
/// their mark for [`Tool::parse`].
pub trait Asks {
    fn asked(&mut self) -> &mut Asked;
}

impl<T: Asks> Opt<T> {
    /// A tool's `-h`, `--help`.
    pub const HELP: Opt<T> = Opt::last(Name::Both('h', "help"), "Show this help and exit", |o| {
        *o.asked() = Asked::Help
    });
    /// A tool's `-V`, `--version`.
    pub const VERSION: Opt<T> = Opt::last(
        Name::Both('V', "version"),
        "Print the version and exit",
        |o| *o.asked() = Asked::Version,
    );
}

/// One of our own tools: its table and the text of its `--help`.
pub struct Tool<T: 'static> {
    pub name: &'static str,
    /// What follows the name in the usage line: `[options] DAEMON`.
    pub synopsis: &'static str,
    /// One line on what the tool does.
    pub about: &'static str,
    /// Paragraphs after the options (operands, exit status).
    pub after: &'static str,
    pub options: &'static [Opt<T>],
}

impl<T: Asks> Tool<T> {
    /// Parses `args` (without argv\[0\]) into `target`; returns the
    /// operands. A getopt error becomes the tool's usage error; `--help`
    /// and `--version` their text.
    pub fn parse(&self, args: &[OsString], target: &mut T) -> Result<Vec<OsString>, Stop> {
        let operands =
            parse(self.options, args, Order::from_env(), target).map_err(|e| self.fail(e))?;
        match *target.asked() {
            Asked::Run => Ok(operands),
            Asked::Help => Err(self.help()),
            Asked::Version => Err(self.version()),
        }
    }

    /// A usage error: the complaint, the usage line, where to look.
    pub fn fail(&self, complaint: impl std::fmt::Display) -> Stop {
        let name = self.name;
        Stop::Fail(format!(
            "{name}: {complaint}\nUsage: {name} {}\nTry '{name} --help' for more information.\n",
            self.synopsis
        ))
    }

    /// The `--help` text.
    pub fn help(&self) -> Stop {
        Stop::Print(format!(
            "Usage: {} {}\n{}\n\nOptions:\n{}\n{}\n",
            self.name,
            self.synopsis,
            self.about,
            usage_lines(self.options, "  ", 22),
            self.after
        ))
    }

    /// The `--version` line.
    pub fn version(&self) -> Stop {
        Stop::Print(format!("{} {}\n", self.name, crate::VERSION))
    }
}
