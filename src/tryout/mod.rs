//! `mm-try`: plays the MTA's side of the milter protocol against a running
//! milter for one message, and reports what an MTA would have done
//! (protocol/deployment.md §13).
//!
//! The packets go through the library's MTA-side client
//! (`wire::mtaclient`, protocol/milter.md §16). One connection, one message,
//! and every read and write has a timeout, so a hung milter gives a clear
//! error instead of a hung tool.
//!
//! - `transaction`: the SMTP stages played in order, end of message;
//! - `message`: the message and envelope after the milter's changes;
//! - `render`: the human-readable report and the diff;
//! - `options`: the command line.

use serde::Serialize;

use crate::wire::mtaclient::MtaError;
use crate::wire::sockspec::SockSpec;

mod message;
pub mod options;
mod render;
mod transaction;

pub use crate::wire::mtaclient::{Modification, Verdict};
pub use message::{apply, split_message};
pub use render::{render_text, unified_diff};
pub use transaction::run;

/// Why a try-out could not be completed.
#[derive(Debug, thiserror::Error)]
pub enum TryError {
    #[error("bad milter socket {0:?}: {1}")]
    Spec(String, String),
    #[error("cannot connect to the milter at {0}: {1}")]
    Connect(String, std::io::Error),
    #[error(transparent)]
    Milter(#[from] MtaError),
}

/// The SMTP transaction to play.
#[derive(Debug, Clone)]
pub struct Transaction {
    pub client_ip: String,
    pub client_name: String,
    pub client_port: u16,
    pub helo: String,
    pub sender: String,
    pub recipients: Vec<String>,
    /// The message as it would arrive after DATA (headers, blank line, body).
    pub message: Vec<u8>,
    /// Value of the `j` macro (the MTA's host name).
    pub hostname: String,
    /// Value of the `i` macro (queue id).
    pub queue_id: String,
}

/// One stage of the transaction and its verdict.
#[derive(Debug, Clone, Serialize)]
pub struct Stage {
    pub stage: &'static str,
    pub argument: String,
    #[serde(flatten)]
    pub verdict: Verdict,
}

/// The whole result.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub stages: Vec<Stage>,
    /// The end-of-message verdict, or the verdict that ended the transaction.
    pub final_verdict: Verdict,
    /// What the MTA would answer the client at the end.
    pub smtp_reply: String,
    pub modifications: Vec<Modification>,
    pub sender: String,
    pub recipients: Vec<String>,
    /// The message after the modifications (empty unless end of message was reached).
    #[serde(skip)]
    pub result: Vec<u8>,
    /// Unified diff between the submitted and the resulting message.
    pub diff: String,
}

/// Parses a milter socket as in `SOCKET=` / `-p`, also accepting Postfix's
/// `inet:HOST:PORT` spelling from `smtpd_milters`.
pub fn parse_spec(spec: &str) -> Result<SockSpec, TryError> {
    if let Some(rest) = spec.strip_prefix("inet:") {
        if let Some((host, port)) = rest.rsplit_once(':') {
            if !rest.contains('@') && port.bytes().all(|b| b.is_ascii_digit()) {
                return SockSpec::parse_milter(&format!("inet:{port}@{host}"))
                    .map_err(|e| TryError::Spec(spec.into(), e.to_string()));
            }
        }
    }
    SockSpec::parse_milter(spec).map_err(|e| TryError::Spec(spec.into(), e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postfix_style_specs_are_accepted() {
        assert_eq!(
            parse_spec("inet:127.0.0.1:8872").unwrap(),
            parse_spec("inet:8872@127.0.0.1").unwrap()
        );
        assert!(matches!(
            parse_spec("unix:/x/y.sock").unwrap(),
            SockSpec::Unix(_)
        ));
        assert!(parse_spec("inet:notaport@127.0.0.1").is_err());
    }
}
