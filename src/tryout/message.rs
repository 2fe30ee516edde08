//! The message and the envelope as the MTA keeps them after the milter's
//! changes (applied the way Postfix applies them).

use super::Modification;

/// Splits a message into its header fields (name, value as the MTA passes
/// them: without the colon and the one space after it, continuation lines
/// kept with CRLF) and the body (CRLF line endings, as on the SMTP wire).
pub fn split_message(msg: &[u8]) -> (Vec<(String, String)>, Vec<u8>) {
    let text = String::from_utf8_lossy(msg).replace("\r\n", "\n");
    let (head, body) = match text.find("\n\n") {
        Some(i) => (&text[..i + 1], &text[i + 2..]),
        None if text.starts_with('\n') => ("", &text[1..]),
        None => (text.as_str(), ""),
    };
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in head.lines() {
        if line.starts_with([' ', '\t']) {
            if let Some(last) = headers.last_mut() {
                last.1.push_str("\r\n");
                last.1.push_str(line);
            }
            continue;
        }
        if let Some((n, v)) = line.split_once(':') {
            headers.push((n.to_string(), v.strip_prefix(' ').unwrap_or(v).to_string()));
        }
    }
    (headers, body.replace('\n', "\r\n").into_bytes())
}

pub(super) fn join_message(headers: &[(String, String)], body: &[u8]) -> Vec<u8> {
    let mut out = String::new();
    for (n, v) in headers {
        out.push_str(n);
        out.push_str(": ");
        out.push_str(&v.replace("\r\n", "\n"));
        out.push('\n');
    }
    out.push('\n');
    let mut v = out.into_bytes();
    v.extend_from_slice(
        &String::from_utf8_lossy(body)
            .replace("\r\n", "\n")
            .into_bytes(),
    );
    v
}

/// Applies the header and body changes the way Postfix does: add appends,
/// insert puts the header before the given 0-based position, change
/// replaces the index-th (1-based) header of that name (empty value
/// deletes; a missing one is added).
pub fn apply(message: &[u8], mods: &[Modification], new_body: Option<&[u8]>) -> Vec<u8> {
    let (mut headers, body) = split_message(message);
    for m in mods {
        match m {
            Modification::AddHeader { name, value } => headers.push((name.clone(), value.clone())),
            Modification::InsertHeader { index, name, value } => {
                let at = (*index as usize).min(headers.len());
                headers.insert(at, (name.clone(), value.clone()));
            }
            Modification::ChangeHeader { index, name, value } => {
                change_header(&mut headers, *index, name, value)
            }
            _ => {}
        }
    }
    join_message(&headers, new_body.unwrap_or(&body))
}

/// Replaces the `index`-th (1-based) header called `name`; an empty value
/// deletes it, and a missing one is added.
fn change_header(headers: &mut Vec<(String, String)>, index: u32, name: &str, value: &str) {
    let pos = headers
        .iter()
        .enumerate()
        .filter(|(_, (n, _))| n.eq_ignore_ascii_case(name))
        .nth(index.max(1) as usize - 1)
        .map(|(i, _)| i);
    match (pos, value.is_empty()) {
        (Some(i), true) => {
            headers.remove(i);
        }
        (Some(i), false) => headers[i].1 = value.to_string(),
        (None, false) => headers.push((name.to_string(), value.to_string())),
        (None, true) => {}
    }
}

/// The envelope after the changes: the new sender, and the accepted
/// recipients with the added ones and without the deleted ones.
pub(super) fn envelope(
    sender: &str,
    accepted: Vec<String>,
    mods: &[Modification],
) -> (String, Vec<String>) {
    let mut sender = sender.to_string();
    let mut recipients = accepted;
    for m in mods {
        match m {
            Modification::ChangeSender { sender: s, .. } => sender = s.clone(),
            Modification::AddRecipient { recipient, .. } => recipients.push(recipient.clone()),
            Modification::DeleteRecipient { recipient } => recipients.retain(|r| r != recipient),
            _ => {}
        }
    }
    (sender, recipients)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_headers_with_continuations_and_crlf_body() {
        let (h, b) = split_message(b"From: a@b\nSubject: one\n two\nX:\n\nline1\nline2\n");
        assert_eq!(
            h,
            [
                ("From".into(), "a@b".into()),
                ("Subject".into(), "one\r\n two".into()),
                ("X".into(), "".into())
            ]
        );
        assert_eq!(b, b"line1\r\nline2\r\n");
        assert_eq!(
            join_message(&h, &b),
            b"From: a@b\nSubject: one\n two\nX: \n\nline1\nline2\n"
        );
    }

    #[test]
    fn applies_header_changes_like_postfix() {
        let msg = b"A: 1\nB: 2\nA: 3\n\nbody\n";
        let mods = vec![
            Modification::ChangeHeader {
                index: 2,
                name: "a".into(),
                value: "three".into(),
            },
            Modification::ChangeHeader {
                index: 1,
                name: "B".into(),
                value: "".into(),
            },
            Modification::InsertHeader {
                index: 0,
                name: "First".into(),
                value: "x".into(),
            },
            Modification::AddHeader {
                name: "Last".into(),
                value: "y".into(),
            },
            Modification::ChangeHeader {
                index: 1,
                name: "New".into(),
                value: "z".into(),
            },
            Modification::ChangeHeader {
                index: 5,
                name: "Absent".into(),
                value: "".into(),
            },
        ];
        assert_eq!(
            apply(msg, &mods, None),
            b"First: x\nA: 1\nA: three\nLast: y\nNew: z\n\nbody\n"
        );
        assert_eq!(
            apply(msg, &[], Some(b"new\r\nbody\r\n")),
            b"A: 1\nB: 2\nA: 3\n\nnew\nbody\n"
        );
    }
}
