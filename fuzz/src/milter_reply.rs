//! The multiplexor's replies as the milter reads them
//! (src/milter/reply.rs): `free`, the check verdicts and their reply
//! fields, and the SMTP reply made from them.

use mailmunge::milter::reply::{
    build_reply, parse_check_reply, parse_free_reply, split_reply_fields, Class, SmtpReply,
};

/// What the MTA gets must be a valid reply: the right class of code, at
/// most 31 lines, and no byte that would end a line or a C string.
pub fn check_reply(class: Class, r: &SmtpReply) {
    let digit = match class {
        Class::Temp => b'4',
        Class::Perm => b'5',
    };
    assert!(r.code.len() == 3 && r.code.as_bytes()[0] == digit, "{r:?}");
    assert!(r.code.bytes().all(|b| b.is_ascii_digit()), "{r:?}");
    assert_eq!(r.dsn.as_bytes()[0], digit, "{r:?}");
    assert_eq!(r.dsn.split('.').count(), 3, "{r:?}");
    assert!(!r.lines.is_empty() && r.lines.len() <= 31, "{r:?}");
    for l in &r.lines {
        assert!(!l.iter().any(|&b| b == 0 || b == b'\r' || b == b'\n'), "{r:?}");
    }
    let _ = r.wire();
}

pub fn run(data: &[u8]) {
    let _ = parse_free_reply(data);
    let reply = match parse_check_reply(data) {
        Ok(r) => r,
        Err(text) => {
            assert!(!text.contains(&b'\n'));
            return;
        }
    };
    let f = split_reply_fields(&reply.msg);
    for v in [&f.text, f.code.as_deref().unwrap_or(b""), f.dsn.as_deref().unwrap_or(b"")] {
        assert!(!v.contains(&0));
    }
    for class in [Class::Temp, Class::Perm] {
        check_reply(
            class,
            &build_reply(class, f.code.as_deref(), f.dsn.as_deref(), Some(&f.text)),
        );
    }
}
