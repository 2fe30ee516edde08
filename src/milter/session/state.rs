//! What one SMTP connection and its message hold between callbacks
//! (protocol/milter.md §3.0), and the macro look-ups they are filled from
//! (protocol/milter.md §2.5).

use std::ffi::{CStr, CString};

use indymilter::{Macros, Status};

use crate::milter::commands::CommandsBlock;
use crate::milter::spool::{BodyFilter, WorkDir};
use crate::mm_log;

/// State of one SMTP connection.
#[derive(Debug, Default)]
pub struct Conn {
    pub(super) hostname: Option<Vec<u8>>,
    pub(super) hostip: Option<String>,
    pub(super) hostport: u32,
    pub(super) myip: Option<String>,
    /// `myip` came from `{if_addr}` and differs from the computed address:
    /// upstream forgets it at the first MAIL FROM.
    pub(super) myip_from_macro: bool,
    pub(super) daemon_port: u32,
    pub(super) helo: Option<Vec<u8>>,
    /// The MTA queue id; `None` is upstream's `NOQUEUE`.
    pub(super) qid: Option<Vec<u8>>,
    pub(super) qid_written: bool,
    /// Boxed: an idle connection holds only the pointer, not a message's
    /// few hundred bytes of state (protocol/milter.md §18.3).
    pub(super) msg: Option<Box<Msg>>,
    /// The client is 127.0.0.1 or ::1 (or unknown): `-R` does not apply
    /// to it (protocol/milter.md §3.1 step 2).
    pub(super) local: bool,
    /// The MTA offered the DATA stage at negotiation, so a worker can be
    /// reserved there (protocol/milter.md §17.4). Kept from the
    /// negotiation through every connection of the milter session.
    pub(super) mta_data_stage: bool,
}

/// State of the message being received.
#[derive(Debug)]
pub(super) struct Msg {
    pub(super) dir: WorkDir,
    pub(super) sender: Vec<u8>,
    pub(super) first_rcpt: Option<Vec<u8>>,
    pub(super) content_types: u32,
    pub(super) seen_mime_version: bool,
    pub(super) body: BodyFilter,
    pub(super) filter_failed: bool,
    /// The worker our multiplexor holds for this message's scan, from the
    /// DATA command on (protocol/milter.md §17); dropping it releases the
    /// worker.
    pub(super) reservation: Option<crate::wire::mxclient::Held>,
}

impl Conn {
    /// What negotiation leaves for the connect callback, before any
    /// client is known.
    pub(super) fn negotiated(mta_data_stage: bool) -> Conn {
        Conn {
            mta_data_stage,
            ..Default::default()
        }
    }

    /// Whether the connect callback filled this in (not just negotiation).
    pub(super) fn is_connected(&self) -> bool {
        self.hostname.is_some()
    }

    pub(super) fn qid(&self) -> String {
        match &self.qid {
            Some(q) => String::from_utf8_lossy(q).into_owned(),
            None => "NOQUEUE".to_string(),
        }
    }

    pub(super) fn qid_bytes(&self) -> &[u8] {
        self.qid.as_deref().unwrap_or(b"NOQUEUE")
    }

    /// Upstream's `set_queueid`: adopt the `i` macro when it is defined and
    /// new. (An empty `i` counts as undefined.)
    pub(super) fn set_queueid(&mut self, m: &Macros) {
        let Some(v) = macro_value(m, "i") else { return };
        if v.is_empty() || self.qid.as_deref() == Some(v) {
            return;
        }
        if self.qid.is_some() {
            self.qid_written = false;
        }
        self.qid = Some(v.to_vec());
    }

    pub(super) fn ip_or_unknown(&self) -> Vec<u8> {
        match &self.hostip {
            Some(ip) if !ip.is_empty() => ip.as_bytes().to_vec(),
            _ => b"UNKNOWN".to_vec(),
        }
    }

    pub(super) fn name_or_ip(&self) -> Vec<u8> {
        match &self.hostname {
            Some(n) if !n.is_empty() => n.clone(),
            _ => self.ip_or_unknown(),
        }
    }

    /// HELO for a request line: `UNKNOWN` when none was seen and also when
    /// it was empty (an empty field would shift the worker's arguments).
    pub(super) fn helo_field(&self) -> Vec<u8> {
        match &self.helo {
            Some(h) if !h.is_empty() => h.clone(),
            _ => b"UNKNOWN".to_vec(),
        }
    }

    pub(super) fn myip_field(&self) -> Vec<u8> {
        match &self.myip {
            Some(ip) if !ip.is_empty() => ip.as_bytes().to_vec(),
            _ => b"UNKNOWN".to_vec(),
        }
    }

    /// Writes `Q<qid>` and the `=i` line if a real qid is known and not yet
    /// in COMMANDS.
    pub(super) fn pending_qid_lines(&mut self, m: &Macros, block: &mut CommandsBlock) {
        if self.qid_written {
            return;
        }
        if let Some(q) = &self.qid {
            block.line(b'Q', Some(q));
            // Upstream quirk kept: `=i` again, after the one among the
            // standard macros (protocol/milter.md §10.19).
            append_macro(block, m, "i");
            self.qid_written = true;
        }
    }
}

/// Looks a macro up the way upstream does: multi-character names in braces.
pub(super) fn macro_value<'a>(m: &'a Macros, name: &str) -> Option<&'a [u8]> {
    // The key is built on the stack: this runs for every macro of every
    // MAIL and for the queue id at almost every callback.
    let mut key = [0u8; 64];
    let braced = name.len() > 1;
    let len = name.len() + if braced { 2 } else { 0 };
    if len >= key.len() || name.as_bytes().contains(&0) {
        return macro_value_long(m, name);
    }
    if braced {
        key[0] = b'{';
        key[1..=name.len()].copy_from_slice(name.as_bytes());
        key[name.len() + 1] = b'}';
    } else {
        key[..name.len()].copy_from_slice(name.as_bytes());
    }
    let key = CStr::from_bytes_with_nul(&key[..=len]).ok()?;
    m.get(key).map(|v| v.to_bytes())
}

/// [`macro_value`] for names too long for its stack buffer (`-a` macros).
fn macro_value_long<'a>(m: &'a Macros, name: &str) -> Option<&'a [u8]> {
    let key = CString::new(format!("{{{name}}}")).ok()?;
    m.get(&key).map(|v| v.to_bytes())
}

/// `=name value` if the macro is defined (an empty value is defined).
pub(super) fn append_macro(block: &mut CommandsBlock, m: &Macros, name: &str) {
    if let Some(v) = macro_value(m, name) {
        block.macro_line(name.as_bytes(), v);
    }
}

pub(super) fn no_private_data(callback: &str) -> Status {
    mm_log!(
        Warning,
        "{callback}: Unable to obtain private data from milter context"
    );
    Status::Tempfail
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every idle session holds a `Conn` (protocol/milter.md §18.3): the
    /// message's state stays out of it until MAIL, so a connection that
    /// only said HELO costs the pointer, not the spool queues.
    #[test]
    fn an_idle_connection_holds_no_message_state() {
        let conn = std::mem::size_of::<Conn>();
        let msg = std::mem::size_of::<Msg>();
        assert!(
            msg > 200,
            "Msg is {msg} bytes: the bound below is too loose"
        );
        assert!(conn < msg, "Conn is {conn} bytes, a message's state {msg}");
        assert!(conn <= 192, "Conn is {conn} bytes");
    }
}
