//! The COMMANDS writer (src/milter/commands.rs) given values from the MTA:
//! every value must come back unchanged from the line it was written to,
//! and no value may start a line of its own.

use mailmunge::milter::commands::CommandsBlock;
use mailmunge::wire::percent::decode;

use crate::Cursor;

/// The letters the milter writes.
const LETTERS: &[u8] = b"SsRrHIEUXQi!?F";

pub fn run(data: &[u8]) {
    let mut c = Cursor(data);
    let letter = LETTERS[usize::from(c.byte()) % LETTERS.len()];
    let mut fields = [&b""[..]; 4];
    for f in &mut fields {
        let n = usize::from(c.byte());
        *f = c.take(n);
    }
    let value = c.rest();

    let mut b = CommandsBlock::new();
    b.line(letter, Some(value))
        .line(letter, None)
        .macro_line(fields[0], fields[1])
        .recipient(fields[0], fields[1], fields[2], fields[3]);
    let text = b.as_bytes();
    assert_eq!(text.last(), Some(&b'\n'));
    let lines: Vec<&[u8]> = text[..text.len() - 1].split(|&b| b == b'\n').collect();
    assert_eq!(lines.len(), 4, "{:?}", String::from_utf8_lossy(text));

    assert_eq!(lines[0][0], letter);
    assert_eq!(decode(&lines[0][1..]), value);
    assert_eq!(lines[1], [letter]);

    let m = lines[2].strip_prefix(b"=").expect("macro line");
    let words: Vec<&[u8]> = m.split(|&b| b == b' ').collect();
    assert_eq!(words.len(), 2);
    assert_eq!(decode(words[0]), fields[0]);
    assert_eq!(decode(words[1]), fields[1]);

    let r = lines[3].strip_prefix(b"R").expect("recipient line");
    let words: Vec<Vec<u8>> = r.split(|&b| b == b' ').map(decode).collect();
    assert_eq!(words, fields.map(<[u8]>::to_vec));
}
