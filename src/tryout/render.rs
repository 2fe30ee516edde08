//! What `mm-try` prints: the report of the stages and verdicts, and the
//! diff between the submitted and the filtered message.

use super::{Outcome, Stage};

/// A unified diff (3 lines of context) of two texts, line by line, as
/// diff(1) prints it. Empty when they are equal.
pub fn unified_diff(a: &[u8], b: &[u8], a_name: &str, b_name: &str) -> String {
    let a = String::from_utf8_lossy(a);
    let b = String::from_utf8_lossy(b);
    similar::TextDiff::from_lines(a.as_ref(), b.as_ref())
        .unified_diff()
        .context_radius(3)
        .header(a_name, b_name)
        .to_string()
}

/// Human-readable report: one line a stage, the verdict, the changes, the
/// envelope (when end of message was reached) and the diff.
pub fn render_text(o: &Outcome) -> String {
    let mut s = stage_lines(&o.stages);
    s.push_str(&format!(
        "\nverdict: {}\nSMTP reply: {}\n",
        o.final_verdict.word(),
        o.smtp_reply
    ));
    if !o.modifications.is_empty() {
        s.push_str("changes:\n");
        for m in &o.modifications {
            s.push_str(&format!("  {}\n", m.to_string().replace("\r\n", " ")));
        }
    }
    if o.stages.last().is_some_and(|st| st.stage == "eom") {
        s.push_str(&format!(
            "envelope: from {} to {}\n",
            o.sender,
            o.recipients.join(", ")
        ));
    }
    if !o.diff.is_empty() {
        s.push('\n');
        s.push_str(&o.diff);
    }
    s
}

/// A line a stage: name, argument, verdict and refusal text.
fn stage_lines(stages: &[Stage]) -> String {
    let mut s = String::new();
    let mut k = 0;
    while k < stages.len() {
        let st = &stages[k];
        // A run of header stages with the same verdict is one line.
        let run = stages[k..]
            .iter()
            .take_while(|x| x.stage == "header" && x.verdict == st.verdict)
            .count();
        let (stage, arg) = if run > 1 {
            ("headers", format!("{run} fields"))
        } else {
            (st.stage, st.argument.clone())
        };
        let reply = st
            .verdict
            .smtp_reply()
            .map(|r| format!("  {r}"))
            .unwrap_or_default();
        s.push_str(&format!(
            "{:<8} {:<40} {}{}\n",
            stage,
            arg,
            st.verdict.word(),
            reply
        ));
        k += run.max(1);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unified_diff_has_hunks_with_context() {
        let a = b"1\n2\n3\n4\n5\n6\n7\n8\n9\n10\n11\n12\n";
        let b = b"0\n1\n2\n3\n4\n5\n6\n7\n8\n9\n10\nELEVEN\n12\n";
        assert_eq!(
            unified_diff(a, b, "a", "b"),
            "--- a\n+++ b\n@@ -1,3 +1,4 @@\n+0\n 1\n 2\n 3\n@@ -8,5 +9,5 @@\n 8\n 9\n 10\n-11\n+ELEVEN\n 12\n"
        );
        assert_eq!(unified_diff(a, a, "a", "b"), "");
        assert_eq!(unified_diff(b"x", b"y", "a", "b"), "--- a\n+++ b\n@@ -1 +1 @@\n-x\n\\ No newline at end of file\n+y\n\\ No newline at end of file\n");
    }
}
