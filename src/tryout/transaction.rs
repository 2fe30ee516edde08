//! The SMTP transaction played stage by stage, as an MTA plays it, up to
//! end of message or the first verdict that ends it.

use std::time::Duration;

use super::client::{self, macros, nul_join, Conn};
use super::message::{apply, envelope, join_message, split_message};
use super::render::unified_diff;
use super::{Outcome, Stage, Transaction, TryError, Verdict};
use crate::wire::sockspec::SockSpec;

/// The stages before end of message, each with its command and the
/// negotiation bits by which the milter declines the stage (`P_NO*`) or
/// its reply (`P_NR_*`).
#[derive(Debug, Clone, Copy)]
enum Step {
    Connect,
    Helo,
    Mail,
    Rcpt,
    Data,
    Header,
    Eoh,
    Body,
}

impl Step {
    fn name(self) -> &'static str {
        match self {
            Step::Connect => "connect",
            Step::Helo => "helo",
            Step::Mail => "mail",
            Step::Rcpt => "rcpt",
            Step::Data => "data",
            Step::Header => "header",
            Step::Eoh => "eoh",
            Step::Body => "body",
        }
    }

    /// (command, declined bit, no-reply bit). The body's declined bit is
    /// checked once for all chunks by the caller, hence 0.
    fn wire(self) -> (u8, u32, u32) {
        use client::*;
        match self {
            Step::Connect => (b'C', P_NOCONNECT, P_NR_CONN),
            Step::Helo => (b'H', P_NOHELO, P_NR_HELO),
            Step::Mail => (b'M', P_NOMAIL, P_NR_MAIL),
            Step::Rcpt => (b'R', P_NORCPT, P_NR_RCPT),
            Step::Data => (b'T', P_NODATA, P_NR_DATA),
            Step::Header => (b'L', P_NOHDRS, P_NR_HDR),
            Step::Eoh => (b'N', P_NOEOH, P_NR_EOH),
            Step::Body => (b'B', 0, P_NR_BODY),
        }
    }
}

/// One transaction in progress: the connection, the milter's negotiated
/// protocol mask and the stages played so far.
struct Session<'t> {
    c: Conn,
    proto: u32,
    stages: Vec<Stage>,
    t: &'t Transaction,
}

/// Runs the transaction against the milter at `spec`.
pub fn run(
    spec: &SockSpec,
    label: &str,
    t: &Transaction,
    timeout: Duration,
) -> Result<Outcome, TryError> {
    let mut c = Conn::open(spec, label, timeout)?;
    let proto = c.negotiate()?;
    let mut s = Session {
        c,
        proto,
        stages: Vec::new(),
        t,
    };
    // Before MAIL there is no message to abort.
    if let Some(v) = s.connect()? {
        return Ok(s.end(v, false));
    }
    if let Some(v) = s.helo()? {
        return Ok(s.end(v, false));
    }
    if let Some(v) = s.mail()? {
        return Ok(s.end(v, true));
    }
    let accepted = match s.recipients()? {
        Ok(accepted) => accepted,
        Err(v) => return Ok(s.end(v, true)),
    };
    let (headers, body) = split_message(&t.message);
    if let Some(v) = s.content(&headers, &body)? {
        return Ok(s.end(v, true));
    }
    let original = join_message(&headers, &body);
    s.end_of_message(accepted, &original)
}

impl Session<'_> {
    /// Plays a stage (macros first, if any) and records its verdict.
    fn play(
        &mut self,
        step: Step,
        argument: String,
        macros: Option<Vec<u8>>,
        data: &[u8],
    ) -> Result<Verdict, TryError> {
        let (cmd, declined, noreply) = step.wire();
        let verdict = if self.proto & declined != 0 {
            Verdict::NotAsked
        } else {
            if let Some(m) = &macros {
                self.c.send(b'D', m)?;
            }
            self.c.send(cmd, data)?;
            if self.proto & noreply != 0 {
                Verdict::NotAsked
            } else {
                self.c.verdict()?
            }
        };
        self.stages.push(Stage {
            stage: step.name(),
            argument,
            verdict: verdict.clone(),
        });
        Ok(verdict)
    }

    /// Like `play`, but yields only a verdict that ends the transaction.
    fn play_final(
        &mut self,
        step: Step,
        argument: String,
        macros: Option<Vec<u8>>,
        data: &[u8],
    ) -> Result<Option<Verdict>, TryError> {
        let v = self.play(step, argument, macros, data)?;
        Ok(v.is_final().then_some(v))
    }

    /// Quits the milter (aborting the message when one was started) and
    /// builds the outcome of a transaction that ended before end of message.
    fn end(mut self, v: Verdict, abort: bool) -> Outcome {
        self.c.quit(abort);
        finish(self.stages, v, self.t)
    }

    fn connect(&mut self) -> Result<Option<Verdict>, TryError> {
        let t = self.t;
        let mut conn = Vec::new();
        conn.extend_from_slice(t.client_name.as_bytes());
        conn.push(0);
        let ipv6 = t.client_ip.contains(':');
        conn.push(if ipv6 { b'6' } else { b'4' });
        conn.extend_from_slice(&t.client_port.to_be_bytes());
        conn.extend_from_slice(t.client_ip.as_bytes());
        conn.push(0);
        let client = format!("{} [{}]", t.client_name, t.client_ip);
        let conn_macros = macros(
            b'C',
            &[
                ("j", &t.hostname),
                ("{daemon_name}", "mm-try"),
                ("v", "mm-try"),
                ("_", &client),
                ("{client_addr}", &t.client_ip),
                ("{client_name}", &t.client_name),
                ("{client_port}", &t.client_port.to_string()),
                ("{daemon_addr}", "127.0.0.1"),
                ("{daemon_port}", "25"),
            ],
        );
        self.play_final(Step::Connect, client, Some(conn_macros), &conn)
    }

    fn helo(&mut self) -> Result<Option<Verdict>, TryError> {
        let helo = &self.t.helo;
        self.play_final(
            Step::Helo,
            helo.clone(),
            None,
            &nul_join(&[helo.as_bytes()]),
        )
    }

    fn mail(&mut self) -> Result<Option<Verdict>, TryError> {
        let sender = &self.t.sender;
        let addr = bare_address(sender);
        let mail_macros = macros(
            b'M',
            &[
                ("i", &self.t.queue_id),
                ("{mail_addr}", &addr),
                ("{mail_host}", domain(&addr)),
                ("{mail_mailer}", "smtp"),
            ],
        );
        let data = nul_join(&[sender.as_bytes()]);
        self.play_final(Step::Mail, sender.clone(), Some(mail_macros), &data)
    }

    /// Offers each recipient. A refused one is dropped and the others go
    /// on, as an MTA does; `Err` holds the verdict that ends the
    /// transaction (accept or discard at RCPT, or the last refusal when
    /// every recipient was refused).
    fn recipients(&mut self) -> Result<Result<Vec<String>, Verdict>, TryError> {
        let mut accepted = Vec::new();
        let mut last_refusal = None;
        for r in &self.t.recipients {
            let a = bare_address(r);
            let rcpt_macros = macros(
                b'R',
                &[
                    ("{rcpt_addr}", &a),
                    ("{rcpt_host}", domain(&a)),
                    ("{rcpt_mailer}", "smtp"),
                ],
            );
            let data = nul_join(&[r.as_bytes()]);
            match self.play(Step::Rcpt, r.clone(), Some(rcpt_macros), &data)? {
                v @ (Verdict::Reject { .. } | Verdict::Tempfail { .. }) => last_refusal = Some(v),
                // Whole-message verdicts given at RCPT time.
                v @ (Verdict::Discard | Verdict::Accept) => return Ok(Err(v)),
                _ => accepted.push(r.clone()),
            }
        }
        if accepted.is_empty() {
            return Ok(Err(last_refusal.unwrap_or(Verdict::Reject {
                reply: "554 5.5.1 Error: no valid recipients".into(),
            })));
        }
        Ok(Ok(accepted))
    }

    /// DATA, the header fields, end of headers and the body chunks.
    fn content(
        &mut self,
        headers: &[(String, String)],
        body: &[u8],
    ) -> Result<Option<Verdict>, TryError> {
        if let Some(v) = self.play_final(Step::Data, String::new(), None, &[])? {
            return Ok(Some(v));
        }
        for (n, val) in headers {
            let argument = format!("{n}: {}", val.replace("\r\n", " "));
            let data = nul_join(&[n.as_bytes(), val.as_bytes()]);
            if let Some(v) = self.play_final(Step::Header, argument, None, &data)? {
                return Ok(Some(v));
            }
        }
        if let Some(v) = self.play_final(Step::Eoh, String::new(), None, &[])? {
            return Ok(Some(v));
        }
        if self.proto & client::P_NOBODY != 0 {
            return Ok(None);
        }
        for chunk in body.chunks(client::CHUNK) {
            let argument = format!("{} bytes", chunk.len());
            match self.play(Step::Body, argument, None, chunk)? {
                v if v.is_final() => return Ok(Some(v)),
                Verdict::Skip => break,
                _ => {}
            }
        }
        Ok(None)
    }

    /// End of message: the changes and the final verdict, applied to the
    /// envelope and to `original` (the message as it was submitted).
    fn end_of_message(
        mut self,
        accepted: Vec<String>,
        original: &[u8],
    ) -> Result<Outcome, TryError> {
        let reply = self.c.end_of_message(&self.t.queue_id)?;
        self.c.quit(false);
        let mut mods = reply.mods;
        if let Some(b) = &reply.new_body {
            mods.push(super::Modification::ReplaceBody { length: b.len() });
        }
        self.stages.push(Stage {
            stage: "eom",
            argument: String::new(),
            verdict: reply.verdict.clone(),
        });
        let (sender, recipients) = envelope(&self.t.sender, accepted, &mods);
        let result = apply(&self.t.message, &mods, reply.new_body.as_deref());
        let diff = unified_diff(original, &result, "submitted", "filtered");
        Ok(Outcome {
            modifications: mods,
            sender,
            recipients,
            result,
            diff,
            ..finish(self.stages, reply.verdict, self.t)
        })
    }
}

/// An address without its angle brackets.
fn bare_address(a: &str) -> String {
    a.trim_start_matches('<').trim_end_matches('>').to_string()
}

/// The domain of an address, empty when it has none.
fn domain(addr: &str) -> &str {
    addr.rsplit_once('@').map(|x| x.1).unwrap_or("")
}

/// The outcome of a transaction that ended before end of message.
fn finish(stages: Vec<Stage>, v: Verdict, t: &Transaction) -> Outcome {
    let reply = match &v {
        Verdict::Reject { reply } | Verdict::Tempfail { reply } => reply.clone(),
        Verdict::Discard => "250 2.0.0 Ok (message discarded)".into(),
        _ => "250 2.0.0 Ok".into(),
    };
    Outcome {
        stages,
        final_verdict: v,
        smtp_reply: reply,
        modifications: vec![],
        sender: t.sender.clone(),
        recipients: t.recipients.clone(),
        result: vec![],
        diff: String::new(),
    }
}
