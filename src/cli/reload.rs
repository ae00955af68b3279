//! Live reconfiguration: the server side (SIGHUP: reload the configuration
//! file, report the outcome in `<pid file>.reload`) and `gentgt reload`
//! (validate the file, signal the server, wait for and print its outcome).

use anyhow::{Context, Result, bail};
use clap::Args;
use gentgt::config::{Config, keep_restart_settings, needs_restart, rebuild_registry};
use gentgt::server::{Registry, ReloadRequest};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::{mpsc, oneshot};

/// What the running server was built from; a reload replaces it.
pub struct Running {
    pub config_path: Option<PathBuf>,
    pub config: Config,
    pub registry: Arc<Registry>,
    pub data_dir: PathBuf,
    /// `<pid file>.reload`, when there is a pid file.
    pub status_path: Option<PathBuf>,
    /// Counts reloads by result.
    pub metrics: Arc<gentgt::metrics::Metrics>,
}

/// The status file beside a pid file.
pub fn status_path(pid_file: &Path) -> PathBuf {
    let mut s = pid_file.as_os_str().to_owned();
    s.push(".reload");
    PathBuf::from(s)
}

/// Write `text` to `path` atomically (readers never see half a file) and
/// durably.
pub fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    gentgt::durable::replace_bytes(path, text.as_bytes())
}

/// Install the SIGHUP handler (before anything could send one: the
/// default action would kill the server).
pub fn hangup() -> Result<Signal> {
    signal(SignalKind::hangup()).context("installing SIGHUP handler")
}

/// Reload on every SIGHUP until the server stops.
pub async fn on_sighup(mut hup: Signal, mut state: Running, tx: mpsc::Sender<ReloadRequest>) {
    let mut generation = 0u64;
    if let Some(p) = &state.status_path
        && let Err(e) = write_atomic(p, "0 ok started\n")
    {
        tracing::warn!(path = %p.display(), error = %e, "cannot write the reload status file");
    }
    while hup.recv().await.is_some() {
        generation += 1;
        tracing::info!(generation, "SIGHUP: reloading the configuration");
        let result = reload_once(&mut state, &tx).await;
        state.metrics.reload(result.is_ok());
        let outcome = match result {
            Ok(summary) => format!("{generation} ok {summary}"),
            Err(e) => {
                let reason = one_line(&e);
                tracing::error!("reload rejected, old configuration kept: {reason}");
                format!("{generation} error {reason}")
            }
        };
        if let Some(p) = &state.status_path
            && let Err(e) = write_atomic(p, &format!("{outcome}\n"))
        {
            tracing::warn!(path = %p.display(), error = %e, "cannot write the reload status file");
        }
    }
}

async fn reload_once(state: &mut Running, tx: &mpsc::Sender<ReloadRequest>) -> Result<String> {
    let Some(path) = state.config_path.clone() else {
        bail!("started without --config: there is no file to reload");
    };
    let (current, running, data_dir) = (
        state.config.clone(),
        state.registry.clone(),
        state.data_dir.clone(),
    );
    // Reading files and opening LUNs block: off the reactor.
    let (next, registry) = tokio::task::spawn_blocking(move || -> Result<_> {
        let next = Config::load(&path)?;
        let registry = rebuild_registry(&current, &running, &next, &data_dir)?;
        Ok((next, Arc::new(registry)))
    })
    .await
    .context("reload worker")??;
    let restart = needs_restart(&state.config, &next);
    if !restart.is_empty() {
        tracing::warn!(
            "changed settings need a restart and keep their old values: {}",
            restart.join(", ")
        );
    }
    let (reply, answer) = oneshot::channel();
    let max_connections = Some(
        next.max_connections
            .unwrap_or(gentgt::server::shared::DEFAULT_MAX_CONNECTIONS),
    );
    tx.send(ReloadRequest {
        registry: registry.clone(),
        max_connections,
        reply,
    })
    .await
    .context("the server is stopping")?;
    let summary = answer.await.context("the server is stopping")?;
    let mut applied = next;
    keep_restart_settings(&mut applied, &state.config);
    state.config = applied;
    state.registry = registry;
    let mut text = summary.to_string();
    if !restart.is_empty() {
        text.push_str(&format!("; need a restart: {}", restart.join(", ")));
    }
    Ok(text)
}

fn one_line(e: &anyhow::Error) -> String {
    let mut s = String::new();
    for cause in e.chain() {
        let t = cause.to_string();
        if !s.contains(&t) {
            if !s.is_empty() {
                s.push_str(": ");
            }
            s.push_str(&t);
        }
    }
    s.split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[derive(Args)]
pub struct ReloadArgs {
    /// The running server's pid file [default: the configuration's
    /// pid_file].
    #[arg(long, value_name = "FILE")]
    pid_file: Option<PathBuf>,
    /// Check this configuration file first (it should be the one the server
    /// was started with); nothing is signalled if it is invalid.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// How long to wait for the server's answer, in seconds.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
}

/// `gentgt reload`: validate, SIGHUP, wait for the outcome, print it.
pub fn run(args: ReloadArgs) -> Result<()> {
    let cfg = match &args.config {
        Some(p) => Some(Config::load(p)?),
        None => None,
    };
    let Some(pid_file) = args
        .pid_file
        .clone()
        .or_else(|| cfg.as_ref().and_then(|c| c.pid_file.clone()))
    else {
        bail!("no pid file: give --pid-file or a --config with pid_file");
    };
    let text = std::fs::read_to_string(&pid_file)
        .with_context(|| format!("reading {}", pid_file.display()))?;
    let pid: libc::pid_t = text
        .trim()
        .parse()
        .with_context(|| format!("{} does not hold a process id", pid_file.display()))?;
    let status = status_path(&pid_file);
    let before = generation_of(&status).unwrap_or(0);
    // SAFETY: kill(2) with a valid signal number has no memory effects.
    if unsafe { libc::kill(pid, libc::SIGHUP) } != 0 {
        let e = std::io::Error::last_os_error();
        bail!("cannot signal process {pid}: {e}");
    }
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    loop {
        if let Ok(line) = std::fs::read_to_string(&status)
            && generation_of_line(&line).is_some_and(|g| g > before)
        {
            let line = line.trim();
            let rest = line.split_once(' ').map_or("", |(_, r)| r);
            return match rest.split_once(' ') {
                Some(("ok", what)) => {
                    println!("reloaded: {what}");
                    Ok(())
                }
                Some((_, why)) => bail!("reload rejected (old configuration kept): {why}"),
                None => bail!("unexpected reload status {line:?}"),
            };
        }
        if Instant::now() >= deadline {
            bail!("no answer from process {pid} within {} s", args.timeout);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn generation_of(path: &Path) -> Option<u64> {
    generation_of_line(&std::fs::read_to_string(path).ok()?)
}

fn generation_of_line(line: &str) -> Option<u64> {
    line.split_whitespace().next()?.parse().ok()
}

/// Tell systemd (Type=notify) we are ready, if it is listening.
pub fn notify_ready() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sock = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(_) => return,
    };
    let bytes = path.as_encoded_bytes();
    let sent = if let Some(name) = bytes.strip_prefix(b"@") {
        // An abstract socket name.
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|a| sock.send_to_addr(b"READY=1", &a))
    } else {
        sock.send_to(b"READY=1", Path::new(&path))
    };
    if let Err(e) = sent {
        tracing::warn!(error = %e, "sd_notify READY=1 failed");
    }
}
