//! The worker-reservation exchange, our extension of the control socket
//! (protocol/multiplexor.md §27): the request, its first answer line and
//! how the multiplexor advertises it in `help`. The multiplexor writes
//! these bytes and the milter reads them, both through this module.

use crate::mux::job::replies;

/// The request word; the `mmrs-` prefix keeps it clear of filter commands
/// (protocol/multiplexor.md §27.1).
pub const COMMAND: &str = "mmrs-reserve";

/// The answer when the multiplexor queues requests (`-q`) instead.
pub const NOT_RESERVED: &[u8] = b"not-reserved queue\n";

/// `mmrs-reserve QID KEEP\n`.
pub fn request(qid: &[u8], keep: i64) -> Vec<u8> {
    super::mxclient::request_line(COMMAND, &[qid, keep.to_string().as_bytes()])
}

/// `reserved N\n`: slot N is held for this connection.
pub fn reserved(slot: usize) -> Vec<u8> {
    format!("reserved {slot}\n").into_bytes()
}

/// Whether a `help` text lists the request (a line `mmrs-reserve  -- …`).
pub fn advertised(help: &[u8]) -> bool {
    let word = COMMAND.as_bytes();
    help.split(|&b| b == b'\n')
        .any(|l| l.starts_with(word) && l.get(word.len()) == Some(&b' '))
}

/// The multiplexor's first answer, as the client reads it.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    Reserved,
    /// It queues requests (`-q`): go on without a reservation.
    NotNeeded,
    NoFree,
    /// Another refusal of our multiplexor (`error: …`).
    Refused,
    /// Not an answer of ours: the multiplexor is upstream's.
    Foreign,
}

impl Answer {
    pub fn parse(line: &[u8]) -> Answer {
        if line.starts_with(b"reserved ") && line.ends_with(b"\n") {
            Answer::Reserved
        } else if line == NOT_RESERVED {
            Answer::NotNeeded
        } else if line == replies::NO_FREE {
            Answer::NoFree
        } else if line.starts_with(b"error: ") {
            Answer::Refused
        } else {
            Answer::Foreign
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_read_back_as_written() {
        assert_eq!(Answer::parse(&reserved(3)), Answer::Reserved);
        assert_eq!(Answer::parse(NOT_RESERVED), Answer::NotNeeded);
        assert_eq!(Answer::parse(replies::NO_FREE), Answer::NoFree);
        assert_eq!(Answer::parse(replies::ACTIVATE_FAILED), Answer::Refused);
        // What an upstream worker's unknown-command answer looks like.
        let upstream = b"ok 0 Unknown%20command 554 5.7.1 0\n";
        assert_eq!(Answer::parse(upstream), Answer::Foreign);
        assert_eq!(Answer::parse(b""), Answer::Foreign);
        assert_eq!(request(b"Q1", 2), b"mmrs-reserve Q1 2\n");
    }

    #[test]
    fn advertisement_is_a_help_line_of_its_own() {
        assert!(advertised(
            b"help  -- x\nmmrs-reserve     -- Hold a worker\n"
        ));
        assert!(!advertised(b"help  -- x\nmmrs-reserved -- no\n"));
        assert!(!advertised(b"scan /path -- Run a scan\n"));
    }
}
