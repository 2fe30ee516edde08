//! `mm-try`: feed one message to a running mailmunge milter the way an MTA
//! would, and show the verdict at each SMTP stage, the SMTP reply, the
//! requested changes and the resulting message as a unified diff.

use anyhow::{Context, Result};
use mailmunge::config::startargs::Vars;
use mailmunge::tryout::{self, options, Transaction, Verdict};
use mailmunge::wire::sockspec::SockSpec;
use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let cli = match options::parse(&args) {
        Ok(o) => o,
        Err(stop) => std::process::exit(stop.finish()),
    };
    match run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("mm-try: {e:#}");
            std::process::exit(1);
        }
    }
}

/// `<addr>` for an address given with or without brackets.
fn bracket(a: &str) -> String {
    let a = a.trim();
    if a.starts_with('<') {
        a.to_string()
    } else {
        format!("<{a}>")
    }
}

fn run(cli: options::Options) -> Result<i32> {
    let message = read_message(&cli)?;
    let target = Target::from_cli(&cli)?;
    let (sender, recipients) = envelope(&cli, &message)?;
    let t = transaction(&cli, sender, recipients, message);
    let outcome = tryout::run(
        &target.spec,
        &target.spec_text,
        &t,
        Duration::from_secs(cli.timeout.max(1)),
    )?;
    report(&cli, &target, &outcome)?;
    Ok(exit_code(&outcome.final_verdict))
}

/// The message: the named file, or standard input for none or `-`.
fn read_message(cli: &options::Options) -> Result<Vec<u8>> {
    Ok(match &cli.message {
        Some(p) if p.as_os_str() != "-" => {
            std::fs::read(p).with_context(|| format!("reading {}", p.display()))?
        }
        _ => {
            let mut v = Vec::new();
            std::io::stdin()
                .read_to_end(&mut v)
                .context("reading standard input")?;
            v
        }
    })
}

/// Which milter to talk to, and which multiplexor to ask about a
/// temporary failure: the options, else the start-up settings.
struct Target {
    spec_text: String,
    spec: SockSpec,
    mx_socket: Option<PathBuf>,
}

impl Target {
    fn from_cli(cli: &options::Options) -> Result<Target> {
        let mut vars = Vars::from_env();
        vars.read_env_files(&cli.env_files)?;
        let spec_text = match &cli.milter {
            Some(s) => s.clone(),
            None => vars.milter_socket().to_string_lossy().into_owned(),
        };
        let mx_socket = cli.mx.clone().or_else(|| {
            mailmunge::config::startargs::unix_socket_path(&vars.mx_socket()).map(Into::into)
        });
        let spec = tryout::parse_spec(&spec_text)?;
        Ok(Target {
            spec_text,
            spec,
            mx_socket,
        })
    }
}

/// Sender and recipients: the options, else the message's From:, To: and
/// Cc:; the sender falls back to `<>`, but no recipient is an error.
fn envelope(cli: &options::Options, message: &[u8]) -> Result<(String, Vec<String>)> {
    let parsed = mail_parser::MessageParser::default().parse(message);
    let header_addrs = |which: &str| -> Vec<String> {
        let Some(m) = &parsed else { return vec![] };
        let addr = match which {
            "from" => m.from(),
            "to" => m.to(),
            _ => m.cc(),
        };
        addr.map(|a| a.iter().filter_map(|x| x.address()).map(bracket).collect())
            .unwrap_or_default()
    };
    let sender = cli
        .from
        .as_deref()
        .map(bracket)
        .or_else(|| header_addrs("from").into_iter().next())
        .unwrap_or_else(|| "<>".into());
    let mut recipients: Vec<String> = cli.to.iter().map(|a| bracket(a)).collect();
    if recipients.is_empty() {
        recipients = header_addrs("to");
        recipients.extend(header_addrs("cc"));
    }
    anyhow::ensure!(
        !recipients.is_empty(),
        "no recipients: give --to, or a message with To: or Cc:"
    );
    Ok((sender, recipients))
}

/// The SMTP transaction to play, as an MTA on this host would.
fn transaction(
    cli: &options::Options,
    sender: String,
    recipients: Vec<String>,
    message: Vec<u8>,
) -> Transaction {
    Transaction {
        client_ip: cli.client_ip.clone(),
        client_name: cli.client_name.clone(),
        client_port: 4567,
        helo: cli.helo.clone().unwrap_or_else(|| cli.client_name.clone()),
        sender,
        recipients,
        message,
        hostname: nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "localhost".into()),
        queue_id: format!("MMTRY{:X}", std::process::id()),
    }
}

/// Writes the resulting message (`--output`), prints the outcome as text or
/// JSON, and on a temporary failure asks the multiplexor why.
fn report(cli: &options::Options, target: &Target, outcome: &tryout::Outcome) -> Result<()> {
    if let Some(path) = &cli.output {
        std::fs::write(path, &outcome.result)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if cli.json {
        let mut v = serde_json::to_value(outcome)?;
        v["milter"] = serde_json::Value::String(target.spec_text.clone());
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", tryout::render_text(outcome));
    }
    if let (Verdict::Tempfail { .. }, Some(sock)) = (&outcome.final_verdict, &target.mx_socket) {
        let why = mailmunge::ctrl::diagnose::why_tempfail_blocking(sock);
        eprintln!("mm-try: why the temporary failure: {why}");
    }
    Ok(())
}

/// The exit status for the final verdict.
fn exit_code(verdict: &Verdict) -> i32 {
    match verdict {
        Verdict::Reject { .. } => 2,
        Verdict::Tempfail { .. } => 3,
        Verdict::Discard => 4,
        _ => 0,
    }
}
