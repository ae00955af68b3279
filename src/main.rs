//! The `gentgt` command line. Library errors are typed; here they become
//! `anyhow` messages for the operator.

mod cli;

use anyhow::{Context, Result};
use clap::{ArgAction, Args, Parser, Subcommand};
use gentgt::config::{self, Config, build_registry, format_size};
use gentgt::server::{Registry, Server};
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;

#[derive(Parser)]
#[command(name = "gentgt", version, about = "A user-space iSCSI target")]
struct Cli {
    /// More logging: -v debug, -vv trace (RUST_LOG takes precedence).
    #[arg(short, long, action = ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the configured targets until SIGINT or SIGTERM.
    Serve(ServeArgs),
    /// Changed-block tracking client: status, close, changes, lock, renew,
    /// unlock, view open/renew/release.
    Cbt(cli::cbt::CbtArgs),
    /// Back up a LUN into a repository (full, then incremental via CBT;
    /// through a point-in-time view where the target has them).
    Backup(cli::backup::BackupArgs),
    /// Restore a backup to a file or onto a LUN.
    Restore(cli::backup::RestoreArgs),
    /// Create a backup repository (packs, compression, optional encryption).
    Init(cli::repo::InitArgs),
    /// Check a repository: indexes and chains, every chunk with --read-data.
    Verify(cli::repo::VerifyArgs),
    /// List the backups of a repository.
    Backups(cli::repo::ListArgs),
    /// Remove backups by retention policy (--keep-last/-daily/-weekly/-monthly).
    Prune(cli::repo::PruneArgs),
    /// Reclaim space of chunks no backup references; repack sparse packs.
    Gc(cli::repo::GcArgs),
    /// Show and remove stale repository locks.
    Unlock(cli::repo::UnlockArgs),
    /// Convert a format-1 repository (one file per chunk) to format 2.
    RepoUpgrade(cli::repo::UpgradeArgs),
    /// Change the key file or passphrase of an encrypted repository.
    RepoKey(cli::repo::KeyArgs),
    /// Random-I/O load against a target: IOPS and latency percentiles.
    Bench(cli::bench::BenchArgs),
    /// Make a running server reload its configuration (SIGHUP) and print
    /// the outcome.
    Reload(cli::reload::ReloadArgs),
    /// Print the version.
    Version,
}

#[derive(Args)]
struct ServeArgs {
    /// Portal to listen on (repeatable); replaces the configuration's
    /// `listen`. Port 0 picks a free port.
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Vec<SocketAddr>,
    /// Directory for LUN files with relative paths [default: the
    /// configuration's data_dir, else ./gentgt-data].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Configuration file [default: built-in, see configs/default.toml].
    /// SIGHUP reloads it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Serve metrics (GET /metrics) and health (GET /healthz) over HTTP on
    /// this address; replaces the configuration's `[admin] listen`.
    #[arg(long, value_name = "ADDR:PORT")]
    admin: Option<SocketAddr>,
    /// Write the process id here (and reload outcomes to FILE.reload)
    /// [default: the configuration's pid_file].
    #[arg(long, value_name = "FILE")]
    pid_file: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Cbt(args) => cli::cbt::run(args),
        Command::Backup(args) => cli::backup::run_backup(args),
        Command::Restore(args) => cli::backup::run_restore(args),
        Command::Init(args) => cli::repo::run_init(args),
        Command::Verify(args) => cli::repo::run_verify(args),
        Command::Backups(args) => cli::repo::run_list(args),
        Command::Prune(args) => cli::repo::run_prune(args),
        Command::Gc(args) => cli::repo::run_gc(args),
        Command::Unlock(args) => cli::repo::run_unlock(args),
        Command::RepoUpgrade(args) => cli::repo::run_upgrade(args),
        Command::RepoKey(args) => cli::repo::run_key(args),
        Command::Bench(args) => cli::bench::run(args),
        Command::Reload(args) => cli::reload::run(args),
        Command::Version => {
            println!("gentgt {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            report(&e);
            ExitCode::FAILURE
        }
    }
}

/// Print an error for the operator: the message, then any cause it does
/// not already spell out (no backtrace; RUST_LOG=debug is for digging).
fn report(e: &anyhow::Error) {
    let mut shown = e.to_string();
    eprintln!("error: {shown}");
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !shown.contains(&text) {
            eprintln!("  caused by: {text}");
            shown.push_str(&text);
        }
    }
}

fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => LevelFilter::INFO,
        1 => LevelFilter::DEBUG,
        _ => LevelFilter::TRACE,
    };
    let filter = EnvFilter::builder()
        .with_default_directive(level.into())
        .from_env_lossy();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// Every connection is a file descriptor: lift the soft limit to the hard
/// one so a target with many initiators is not capped at 1024.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// Large I/O buffers are freed on blocking-pool threads into glibc's
/// per-thread arenas, which keep them: measured with 64 sessions of 1 MiB
/// writes, the target stayed at 1.5 GiB RSS after the load ended. Fewer
/// arenas, and a trim every few seconds, give that memory back. (Forcing
/// such buffers to mmap instead cost 2x CPU per 1 MiB I/O in page faults.)
fn tune_allocator() {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: mallopt only adjusts allocator parameters; called before
        // any other thread exists.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 4);
        }
        let spawned = std::thread::Builder::new()
            .name("malloc-trim".into())
            .spawn(|| {
                loop {
                    std::thread::sleep(std::time::Duration::from_secs(5));
                    gentgt::buffers::trim();
                    // SAFETY: malloc_trim is thread-safe; it returns free
                    // pages of every arena to the kernel.
                    unsafe {
                        libc::malloc_trim(0);
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the allocator trim thread");
        }
    }
}

fn serve(args: ServeArgs) -> Result<()> {
    tune_allocator();
    raise_fd_limit();
    // Everything that touches the disk happens here, before the runtime
    // starts, so no blocking I/O runs on the reactor.
    let mut cfg = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default_config(),
    };
    if !args.listen.is_empty() {
        // --listen replaces `listen`; portal groups must name its portals.
        cfg.listen = args.listen.iter().map(|a| a.to_string()).collect();
        cfg.validate()?;
    }
    let addrs = cfg.listen_addrs()?;
    let data_dir = args
        .data_dir
        .or_else(|| cfg.data_dir.clone())
        .unwrap_or_else(|| config::DEFAULT_DATA_DIR.into());
    let data_dir = std::path::absolute(&data_dir)
        .with_context(|| format!("data directory {}", data_dir.display()))?;
    let admin = match args.admin {
        Some(a) => Some(a),
        None => cfg.admin_addr()?,
    };
    let registry = Arc::new(build_registry(&cfg, &data_dir)?);
    let settings = cfg.transport_settings();
    let pid_file = args.pid_file.clone().or_else(|| cfg.pid_file.clone());

    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let result = runtime.block_on(async {
        let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
        let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
        let hup = cli::reload::hangup()?;
        let server = Server::bind(registry.clone(), &addrs)
            .await
            .with_context(|| format!("cannot listen on {addrs:?}"))?
            .with_settings(settings);
        let server = match admin {
            Some(a) => server
                .bind_admin(a)
                .await
                .with_context(|| format!("cannot listen on admin address {a}"))?,
            None => server,
        };
        if let Some(p) = &pid_file {
            std::fs::write(p, format!("{}\n", std::process::id()))
                .with_context(|| format!("writing pid file {}", p.display()))?;
        }
        print_summary(&server.local_addrs(), &registry, &data_dir);
        if let Some(a) = server.admin_addr() {
            println!("  admin    http://{a}/metrics");
        }
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let running = cli::reload::Running {
            config_path: args.config.clone(),
            config: cfg.clone(),
            registry: registry.clone(),
            data_dir: data_dir.clone(),
            status_path: pid_file.as_deref().map(cli::reload::status_path),
            metrics: server.metrics().clone(),
        };
        let reloader = tokio::spawn(cli::reload::on_sighup(hup, running, tx));
        cli::reload::notify_ready();
        let shutdown = async move {
            tokio::select! {
                _ = int.recv() => tracing::info!("SIGINT: shutting down"),
                _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            }
        };
        let served = server.run_with_reloads(shutdown, rx).await;
        reloader.abort();
        served.context("serving")?;
        tracing::info!("stopped");
        Ok(())
    });
    // A backend call that hangs (a dead disk) still holds a blocking-pool
    // thread; dropping the runtime would wait for it forever. Everything
    // acknowledged is durable by now, so do not wait long.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    if let Some(p) = &pid_file {
        let _ = std::fs::remove_file(p);
        let _ = std::fs::remove_file(cli::reload::status_path(p));
    }
    result
}

fn print_summary(portals: &[SocketAddr], registry: &Registry, data_dir: &std::path::Path) {
    println!("gentgt {} ready", env!("CARGO_PKG_VERSION"));
    println!("  data dir {}", data_dir.display());
    for p in portals {
        println!("  portal   {p}");
    }
    if registry.discovery_chap.is_some() {
        println!("  discovery requires CHAP");
    }
    for t in registry.targets.values() {
        let acl = match &t.allowed_initiators {
            None => "open to all".to_string(),
            Some(names) => format!("allow {}", names.join(", ")),
        };
        let auth = match &t.chap {
            None => "no auth",
            Some(c) if c.mutual.is_some() => "mutual CHAP",
            Some(_) => "CHAP",
        };
        let alias = t
            .alias
            .as_deref()
            .map(|a| format!(" ({a})"))
            .unwrap_or_default();
        println!("  target   {}{alias}: {acl}, {auth}", t.name);
        for (id, lun) in t.device.luns.iter().filter(|(_, l)| l.view_of.is_none()) {
            println!(
                "    LUN {id:<4} {}  {}  {}-byte blocks  {}",
                lun.backend.describe(),
                format_size(lun.backend.size()),
                lun.block_size,
                if lun.read_only { "ro" } else { "rw" }
            );
            if let Some(v) = &lun.cbt.view {
                println!(
                    "    LUN {:<4} CBT view of LUN {id} (read-only, CBT initiators only), view space {}",
                    v.lun,
                    format_size(v.space)
                );
            }
        }
    }
}
