//! `mailmunge-start`: runs `mailmunge` or `mailmunge-multiplexor` with the
//! command line that `/etc/default/mailmunge` asks for.
//!
//! The systemd units and the sysvinit script call it instead of assembling
//! the command line in shell (see protocol/deployment.md). The variables come
//! from the environment (systemd's `Environment=`/`EnvironmentFile=`, or the
//! sysv script's exported shell variables), then from `--env-file`s.

use anyhow::{bail, Context, Result};
use mailmunge::config::startargs::{self, Daemon, Vars};
use mailmunge::config::startopts::{self, Options};
use mailmunge::sys::daemon::StaleSocket;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;

fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let cli = match startopts::parse(&args) {
        Ok(o) => o,
        Err(stop) => std::process::exit(stop.finish()),
    };
    if let Err(e) = run(cli) {
        eprintln!("mailmunge-start: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Options) -> Result<()> {
    let daemon = cli.daemon;
    let mut vars = Vars::from_env();
    let from_files = vars.read_env_files(&cli.env_files)?;
    let vars = vars.with_launcher_defaults();

    if cli.cleanup {
        let sock = vars.listen_socket(daemon);
        match startargs::remove_stale_socket(&sock)
            .with_context(|| format!("checking {}", sock.to_string_lossy()))?
        {
            StaleSocket::InUse => eprintln!(
                "mailmunge-start: {} is in use; left alone",
                sock.to_string_lossy()
            ),
            StaleSocket::NotASocket => eprintln!(
                "mailmunge-start: {} is not a socket; left alone",
                sock.to_string_lossy()
            ),
            StaleSocket::Removed | StaleSocket::Nothing => {}
        }
        return Ok(());
    }

    let bindir = match cli.bindir {
        Some(d) => d,
        None => std::env::current_exe()
            .context("locating this program")?
            .parent()
            .map(PathBuf::from)
            .context("this program has no directory")?,
    };
    let program = bindir.join(daemon.program());
    let args = startargs::argv(daemon, &vars, cli.foreground);
    if cli.print {
        let mut words = vec![program.into_os_string()];
        words.extend(args);
        println!("{}", startargs::shell_line(&words));
        return Ok(());
    }

    if startargs::ensure_spooldir(&vars)
        .with_context(|| format!("creating {}", vars.spooldir().display()))?
    {
        eprintln!("mailmunge-start: created {}", vars.spooldir().display());
    }
    // A socket left by a crash would make the daemon fail to bind.
    let sock = vars.listen_socket(daemon);
    if let Err(e) = startargs::remove_stale_socket(&sock) {
        eprintln!("mailmunge-start: checking {}: {e}", sock.to_string_lossy());
    }
    let mut cmd = std::process::Command::new(&program);
    cmd.args(&args)
        .envs(from_files)
        .envs(startargs::extra_env(&vars));
    if daemon == Daemon::Multiplexor && !cli.foreground {
        return start_and_probe(cmd, &program, &vars);
    }
    let err = cmd.exec();
    Err(err).with_context(|| format!("cannot execute {}", program.display()))
}

/// Starts the multiplexor as a daemon (it returns once it listens), then
/// checks that a worker answers, so that a filter that cannot start is
/// reported here, with its Perl error (protocol/deployment.md §8).
fn start_and_probe(
    mut cmd: std::process::Command,
    program: &std::path::Path,
    vars: &Vars,
) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot execute {}", program.display()))?;
    if !status.success() {
        std::process::exit(status.code().unwrap_or(1));
    }
    let Some(sock) = startargs::unix_socket_path(&vars.mx_socket()).map(PathBuf::from) else {
        return Ok(());
    };
    let probe = mailmunge::ctrl::diagnose::probe_workers(&sock, PROBE_LIMIT);
    match mailmunge::ctrl::diagnose::blocking(probe).context("checking the workers")? {
        Ok(()) => Ok(()),
        Err(why) => bail!("the multiplexor is running, but no worker answers: {why}"),
    }
}

/// How long a worker may take to load the filter and answer `ping`.
const PROBE_LIMIT: std::time::Duration = std::time::Duration::from_secs(60);
