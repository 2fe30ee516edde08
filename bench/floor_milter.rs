//! The indymilter floor (bench/README.md, `bench_floor` and the `floor`
//! phase of `bench_compare`; protocol/milter.md §18.3): a milter on indymilter alone, on the runtime
//! mailmunge builds (one thread), every callback registered and answering
//! continue at once, no per-connection data, no spool, no multiplexor.
//! What it spends per message and holds per idle session is what any
//! milter on that crate spends, whatever its callbacks do.
//!
//! The benchmark program itself is the floor milter: started again with
//! `serve SOCKET` as its arguments ([`start`]), it runs [`serve`] instead
//! of the benchmark; `main` asks [`serve_requested`] first.
//!
//! Included with `#[path]` after `support.rs` and `milter_client.rs` (it
//! uses both), so some items are unused in one of the examples.
#![allow(dead_code)]

use std::process::Command;

use anyhow::{bail, Context as _, Result};

use crate::milter_client::{self, Target};
use crate::support::Daemon;

/// The name the floor goes by in the reports.
pub const NAME: &str = "indymilter floor";

/// The first argument that makes the program the floor milter.
const SERVE: &str = "serve";

/// When the program was started as the floor milter (`PROGRAM serve
/// SOCKET`), runs it until SIGTERM and returns its outcome; otherwise
/// `None`. Call first in `main`, before any benchmark set-up.
pub fn serve_requested() -> Option<Result<()>> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) != Some(SERVE) {
        return None;
    }
    Some(match args.get(2) {
        Some(path) => serve(path),
        None => Err(anyhow::anyhow!("usage: {} {SERVE} SOCKET", args[0])),
    })
}

/// Starts this program as the floor milter on `target` (a unix socket),
/// its output in a log beside the socket, and waits until it negotiates.
/// It inherits this process's descriptor limit.
pub fn start(target: &Target) -> Result<Daemon> {
    let Target::Unix(path) = target else {
        bail!("the floor milter listens on a unix socket");
    };
    let mut cmd = Command::new(std::env::current_exe().context("own executable")?);
    cmd.arg(SERVE).arg(path);
    milter_client::spawn_milter(NAME, cmd, path.with_extension("log"), target)
}

/// The floor milter on the unix socket `path`, until SIGTERM.
pub fn serve(path: &str) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let listener = tokio::net::UnixListener::bind(path)?;
        use indymilter::Status::Continue;
        // Every callback registered, as mailmunge does: the MTA is then
        // asked at every stage (and offered no step to skip).
        let callbacks: indymilter::Callbacks<()> = indymilter::Callbacks::new()
            .on_connect(|_cx, _host, _sock| Box::pin(async { Continue }))
            .on_helo(|_cx, _arg| Box::pin(async { Continue }))
            .on_mail(|_cx, _args| Box::pin(async { Continue }))
            .on_rcpt(|_cx, _args| Box::pin(async { Continue }))
            .on_data(|_cx| Box::pin(async { Continue }))
            .on_header(|_cx, _name, _value| Box::pin(async { Continue }))
            .on_eoh(|_cx| Box::pin(async { Continue }))
            .on_body(|_cx, _chunk| Box::pin(async { Continue }))
            .on_eom(|_cx| Box::pin(async { Continue }))
            .on_abort(|_cx| Box::pin(async { Continue }))
            .on_close(|_cx| Box::pin(async { Continue }))
            .on_unknown(|_cx, _arg| Box::pin(async { Continue }));
        // No bound that the idle probes could reach.
        let config = indymilter::Config {
            max_connections: 1_000_000,
            ..Default::default()
        };
        let stop = async {
            if let Ok(mut s) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            {
                s.recv().await;
            }
        };
        indymilter::run(listener, callbacks, config, stop).await?;
        Ok(())
    })
}
