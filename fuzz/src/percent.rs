//! The percent codec (src/wire/percent.rs): decoding any bytes, and encoding
//! that decodes back and yields one printable word.

use mailmunge::wire::percent::{self, Variant};

pub fn run(data: &[u8]) {
    let d = percent::decode(data);
    assert!(d.len() <= data.len(), "decoding never grows");
    let c = percent::decode_c(data);
    assert!(!c.contains(&0), "decode_c stops at a NUL");
    assert!(d.starts_with(&c));

    for v in [Variant::Command, Variant::CommandsFile] {
        let mut e = Vec::new();
        percent::encode_into(&mut e, data, v);
        // One word: request lines and COMMANDS fields are split on spaces.
        assert!(e.iter().all(|&b| (0x21..0x7f).contains(&b)), "{e:?}");
        if v == Variant::Command {
            assert!(!e.iter().any(|b| matches!(b, b'\\' | b'\'' | b'"')));
        }
        assert_eq!(percent::decode(&e), data, "round trip {v:?}");
    }
    assert_eq!(percent::decode(&percent::encode(data)), data);
    assert_eq!(percent::decode(&percent::encode_file(data)), data);
}
