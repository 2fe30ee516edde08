//! The SMTP transaction played stage by stage, as an MTA plays it, up to
//! end of message or the first verdict that ends it.

use std::time::Duration;

use super::message::{apply, envelope, join_message, split_message};
use super::render::unified_diff;
use super::{Outcome, Stage, Transaction, TryError, Verdict};
use crate::wire::mtaclient::{
    connect_data, nul_join, MtaClient, MtaError, Offer, Step, BODY_CHUNK,
};
use crate::wire::sockspec::SockSpec;

/// One transaction in progress: the connection (which knows the stages the
/// milter declined) and the stages played so far.
struct Session<'t> {
    c: MtaClient,
    stages: Vec<Stage>,
    t: &'t Transaction,
}

/// Runs the transaction against the milter at `spec` (`label` names it in
/// errors), waiting at most `timeout` for each answer. Blocking: it runs
/// the client on a runtime of its own, so call it outside any runtime.
pub fn run(
    spec: &SockSpec,
    label: &str,
    t: &Transaction,
    timeout: Duration,
) -> Result<Outcome, TryError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(MtaError::Io)?;
    rt.block_on(run_async(spec, label, t, timeout))
}

async fn run_async(
    spec: &SockSpec,
    label: &str,
    t: &Transaction,
    timeout: Duration,
) -> Result<Outcome, TryError> {
    let mut c = MtaClient::connect(spec, Some(timeout))
        .await
        .map_err(|e| match e {
            MtaError::Connect(e) => TryError::Connect(label.into(), e),
            e => e.into(),
        })?;
    c.negotiate(Offer::NO_LEADSPC).await?;
    let mut s = Session {
        c,
        stages: Vec::new(),
        t,
    };
    // Before MAIL there is no message to abort.
    if let Some(v) = s.connect().await? {
        return Ok(s.end(v, false).await);
    }
    if let Some(v) = s.helo().await? {
        return Ok(s.end(v, false).await);
    }
    if let Some(v) = s.mail().await? {
        return Ok(s.end(v, true).await);
    }
    let accepted = match s.recipients().await? {
        Ok(accepted) => accepted,
        Err(v) => return Ok(s.end(v, true).await),
    };
    let (headers, body) = split_message(&t.message);
    if let Some(v) = s.content(&headers, &body).await? {
        return Ok(s.end(v, true).await);
    }
    let original = join_message(&headers, &body);
    Ok(s.end_of_message(accepted, &original).await?)
}

impl Session<'_> {
    /// Plays a stage (macros first, if any) and records its verdict.
    async fn play(
        &mut self,
        step: Step,
        argument: String,
        macros: &[(&str, &str)],
        data: &[u8],
    ) -> Result<Verdict, MtaError> {
        let reply = self.c.step(step, macros, data).await?;
        let verdict = Verdict::of(reply.as_ref())?;
        self.stages.push(Stage {
            stage: step.name(),
            argument,
            verdict: verdict.clone(),
        });
        Ok(verdict)
    }

    /// Like `play`, but yields only a verdict that ends the transaction.
    async fn play_final(
        &mut self,
        step: Step,
        argument: String,
        macros: &[(&str, &str)],
        data: &[u8],
    ) -> Result<Option<Verdict>, MtaError> {
        let v = self.play(step, argument, macros, data).await?;
        Ok(v.is_final().then_some(v))
    }

    /// Quits the milter (aborting the message when one was started) and
    /// builds the outcome of a transaction that ended before end of message.
    /// The outcome is known by then, so a milter that is already gone
    /// changes nothing.
    async fn end(mut self, v: Verdict, abort: bool) -> Outcome {
        let _ = self.c.quit(abort).await;
        finish(self.stages, v, self.t)
    }

    async fn connect(&mut self) -> Result<Option<Verdict>, MtaError> {
        let t = self.t;
        let client = format!("{} [{}]", t.client_name, t.client_ip);
        let port = t.client_port.to_string();
        let conn_macros = [
            ("j", t.hostname.as_str()),
            ("{daemon_name}", "mm-try"),
            ("v", "mm-try"),
            ("_", &client),
            ("{client_addr}", &t.client_ip),
            ("{client_name}", &t.client_name),
            ("{client_port}", &port),
            ("{daemon_addr}", "127.0.0.1"),
            ("{daemon_port}", "25"),
        ];
        let data = connect_data(&t.client_name, &t.client_ip, t.client_port);
        self.play_final(Step::Connect, client.clone(), &conn_macros, &data)
            .await
    }

    async fn helo(&mut self) -> Result<Option<Verdict>, MtaError> {
        let helo = &self.t.helo;
        let data = nul_join(&[helo.as_bytes()]);
        self.play_final(Step::Helo, helo.clone(), &[], &data).await
    }

    async fn mail(&mut self) -> Result<Option<Verdict>, MtaError> {
        let sender = &self.t.sender;
        let addr = bare_address(sender);
        let mail_macros = [
            ("i", self.t.queue_id.as_str()),
            ("{mail_addr}", &addr),
            ("{mail_host}", domain(&addr)),
            ("{mail_mailer}", "smtp"),
        ];
        let data = nul_join(&[sender.as_bytes()]);
        self.play_final(Step::Mail, sender.clone(), &mail_macros, &data)
            .await
    }

    /// Offers each recipient. A refused one is dropped and the others go
    /// on, as an MTA does; `Err` holds the verdict that ends the
    /// transaction (accept or discard at RCPT, or the last refusal when
    /// every recipient was refused).
    async fn recipients(&mut self) -> Result<Result<Vec<String>, Verdict>, MtaError> {
        let mut accepted = Vec::new();
        let mut last_refusal = None;
        for r in &self.t.recipients {
            let a = bare_address(r);
            let rcpt_macros = [
                ("{rcpt_addr}", a.as_str()),
                ("{rcpt_host}", domain(&a)),
                ("{rcpt_mailer}", "smtp"),
            ];
            let data = nul_join(&[r.as_bytes()]);
            match self
                .play(Step::Rcpt, r.clone(), &rcpt_macros, &data)
                .await?
            {
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
    async fn content(
        &mut self,
        headers: &[(String, String)],
        body: &[u8],
    ) -> Result<Option<Verdict>, MtaError> {
        if let Some(v) = self.play_final(Step::Data, String::new(), &[], &[]).await? {
            return Ok(Some(v));
        }
        for (n, val) in headers {
            let argument = format!("{n}: {}", val.replace("\r\n", " "));
            let data = nul_join(&[n.as_bytes(), val.as_bytes()]);
            if let Some(v) = self.play_final(Step::Header, argument, &[], &data).await? {
                return Ok(Some(v));
            }
        }
        if let Some(v) = self.play_final(Step::Eoh, String::new(), &[], &[]).await? {
            return Ok(Some(v));
        }
        // A milter that declines the body gets no chunk and no stage line.
        if self.c.declines(Step::Body) {
            return Ok(None);
        }
        for chunk in body.chunks(BODY_CHUNK) {
            let argument = format!("{} bytes", chunk.len());
            match self.play(Step::Body, argument, &[], chunk).await? {
                v if v.is_final() => return Ok(Some(v)),
                Verdict::Skip => break,
                _ => {}
            }
        }
        Ok(None)
    }

    /// End of message (with the `i` macro): the changes and the final
    /// verdict, applied to the envelope and to `original` (the message as
    /// it was submitted).
    async fn end_of_message(
        mut self,
        accepted: Vec<String>,
        original: &[u8],
    ) -> Result<Outcome, MtaError> {
        let eom = self.c.end_of_message(&[("i", &self.t.queue_id)]).await?;
        let _ = self.c.quit(false).await;
        let reply = eom.decode()?;
        self.stages.push(Stage {
            stage: "eom",
            argument: String::new(),
            verdict: reply.verdict.clone(),
        });
        let mods = reply.modifications;
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
