//! The RESULTS file a worker leaves (src/milter/results.rs): parsing, the
//! safety checks and bare-CR repair, and the SMTP replies built from B and
//! T lines.

use mailmunge::milter::reply::{build_reply, Class};
use mailmunge::milter::results::{self, Action, ResultsError};

use crate::milter_reply::check_reply;

pub fn run(data: &[u8]) {
    let r = match results::parse(data) {
        Err(ResultsError::OverlongLine(n)) => {
            assert!(n >= results::MAX_LINE);
            return;
        }
        Ok(r) => r,
    };
    let stops = |a: &Action| {
        matches!(
            a,
            Action::Bounce { .. } | Action::Discard | Action::Tempfail { .. }
        )
    };
    // Reading stops at the first refusal, which is then the last action.
    if let Some(i) = r.actions.iter().position(stops) {
        assert_eq!(i + 1, r.actions.len());
        assert!(r.rejecting);
        assert!(!r.finished);
    }
    for a in &r.actions {
        // Values reach the MTA as C strings.
        let bytes: Vec<&[u8]> = match a {
            Action::AddHeader { name, value }
            | Action::InsertHeader { name, value, .. }
            | Action::ChangeHeader { name, value, .. } => vec![name, value],
            Action::DeleteHeader { name, index } => {
                assert!(*index >= 1);
                vec![name]
            }
            Action::ContentType(v)
            | Action::AddRcpt(v)
            | Action::DeleteRcpt(v)
            | Action::ChangeFrom(v)
            | Action::Quarantine(v) => vec![v],
            Action::Bounce { code, dsn, text } | Action::Tempfail { code, dsn, text } => {
                let class = if matches!(a, Action::Bounce { .. }) {
                    Class::Perm
                } else {
                    Class::Temp
                };
                check_reply(
                    class,
                    &build_reply(class, code.as_deref(), dsn.as_deref(), text.as_deref()),
                );
                vec![]
            }
            Action::Discard | Action::ReplaceBody | Action::Unknown(_) => vec![],
        };
        assert!(bytes.iter().all(|b| !b.contains(&0)), "NUL in {a:?}");
        if let Action::InsertHeader { index, .. } = a {
            assert!(*index >= 0);
        }
        if let Action::ChangeHeader { index, .. } = a {
            assert!(*index >= 1);
        }
    }
    let mut actions = r.actions.clone();
    if let Ok(changed) = results::sanitize_actions(&mut actions) {
        for (i, (before, after)) in r.actions.iter().zip(&actions).enumerate() {
            assert_eq!(before != after, changed.contains(&i), "{before:?}");
        }
        // What passed cannot add a header line of its own.
        for a in &actions {
            if let Action::AddHeader { value, .. } | Action::InsertHeader { value, .. } = a {
                for (i, &b) in value.iter().enumerate() {
                    match b {
                        b'\n' => assert!(matches!(value.get(i + 1), Some(b' ' | b'\t')), "{a:?}"),
                        b'\r' => assert_eq!(value.get(i + 1), Some(&b'\n'), "{a:?}"),
                        _ => {}
                    }
                }
            }
        }
    }
}
