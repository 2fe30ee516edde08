//! The example /etc/default/mailmunge documents every variable of
//! protocol/deployment.md §2 with its real default.

use mailmunge::config::envfile;
use mailmunge::config::startargs::{self, Daemon, Vars};
use std::ffi::OsString;

/// The example with every `# NAME=value` line uncommented.
fn uncommented() -> Vec<envfile::Assignment> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/etc/default/mailmunge"
    ))
    .unwrap();
    let lines: String = text
        .lines()
        .filter_map(|l| {
            let l = l.strip_prefix("# ")?;
            let name_end = l.find('=')?;
            let name = &l[..name_end];
            (!name.is_empty() && name.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'))
                .then(|| format!("{l}\n"))
        })
        .collect();
    envfile::parse(lines.as_bytes(), &|_| None).unwrap()
}

#[test]
fn example_lists_every_variable_once() {
    let a = uncommented();
    let mut names: Vec<&str> = a.iter().map(|a| a.name.as_str()).collect();
    names.sort_unstable();
    let n = names.len();
    names.dedup();
    assert_eq!(n, names.len(), "a variable is listed twice");
    let mut expected = startargs::known_variables();
    expected.push("MM_DEBUG_ALLOCATION");
    expected.sort_unstable();
    assert_eq!(names, expected);
}

/// Uncommenting every line must not change what the daemons do: the command
/// lines equal the ones without a file, apart from options that spell out
/// the daemons' own built-in defaults.
#[test]
fn example_values_are_the_defaults() {
    let mut file = Vars::new();
    for a in uncommented() {
        file.set(&a.name, a.value);
    }
    let file = file.with_launcher_defaults();
    let none = Vars::new().with_launcher_defaults();
    let builtin: &[(&str, &str)] = &[
        ("-S", "mail"),
        ("-x", "mailmunge 3.09"),
        ("-Y", "mailmunge-multiplexor"),
        ("-c", "10"),
        ("-i", "300"),
        ("-r", "500"),
        ("-f", "/etc/mailmunge/mailmunge-filter.pl"),
        ("--worker-nice", "5"),
    ];
    for d in [Daemon::Milter, Daemon::Multiplexor] {
        let mut with: Vec<OsString> = startargs::argv(d, &file, false);
        for (flag, value) in builtin {
            if let Some(i) = with
                .windows(2)
                .position(|w| w[0] == *flag && w[1] == *value)
            {
                with.drain(i..i + 2);
            }
        }
        assert_eq!(with, startargs::argv(d, &none, false), "{d:?}");
    }
}
