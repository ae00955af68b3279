//! `gentgt backup | restore`: the backup appliance
//! (`gentgt::backup`) from the command line.

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, ValueEnum};
use gentgt::backup::lock::LockMode;
use gentgt::backup::{self, BackupOptions, MethodChoice};
use gentgt::initiator::ConnectOptions;
use gentgt::scsi::lun::DEFAULT_CBT_INITIATOR;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Args)]
pub struct BackupArgs {
    #[arg(long, value_name = "ADDR:PORT")]
    portal: SocketAddr,
    #[arg(long, value_name = "IQN")]
    target: String,
    #[arg(long, value_name = "N", default_value_t = 0)]
    lun: u64,
    /// Repository (created with defaults if missing; see `gentgt init`).
    #[command(flatten)]
    access: super::repo::RepoAccess,
    /// zstd level for the chunks of this run (default: the repository's;
    /// negative: zstd's fast levels).
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    compression_level: Option<i32>,
    /// Initiator name (must be in the LUN's cbt_initiators).
    #[arg(long, value_name = "NAME", default_value = DEFAULT_CBT_INITIATOR)]
    initiator: String,
    /// Take the write lock once a pass copied fewer extents than this.
    #[arg(long, value_name = "K", default_value_t = 64)]
    threshold_extents: u64,
    /// Passes before the locked pass at most.
    #[arg(long, value_name = "M", default_value_t = 5)]
    max_passes: u32,
    /// Write-lock lease (renewed while the final pass runs).
    #[arg(long, value_name = "L", default_value_t = 20_000)]
    lease_ms: u32,
    /// Force a method [default: a view where the target offers one
    /// (contract version 2, views on), else the lock loop].
    #[arg(long, value_enum, value_name = "M")]
    method: Option<MethodArg>,
    /// View lease (renewed at a third while the copy runs; a crashed run's
    /// view holds the target's view space this long).
    #[arg(long, value_name = "L", default_value_t = 60_000)]
    view_lease_ms: u32,
    /// READs in flight.
    #[arg(long, value_name = "Q", default_value_t = 8)]
    parallel: usize,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
    /// Print a machine-readable summary.
    #[arg(long)]
    json: bool,
}

/// `--method`.
#[derive(Clone, Copy, ValueEnum)]
enum MethodArg {
    /// One pass over a point-in-time view; fail where there is none.
    View,
    /// Converge passes, then a pass under the write lock.
    Lock,
}

#[derive(Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    access: super::repo::RepoAccess,
    #[arg(long, value_name = "ID")]
    backup: String,
    /// Restore to a (sparse) image file.
    #[arg(long, value_name = "PATH", conflicts_with = "portal")]
    to_file: Option<PathBuf>,
    /// Or onto a LUN over iSCSI.
    #[arg(long, value_name = "ADDR:PORT", requires = "target")]
    portal: Option<SocketAddr>,
    #[arg(long, value_name = "IQN")]
    target: Option<String>,
    #[arg(long, value_name = "N", default_value_t = 0)]
    lun: u64,
    #[arg(long, value_name = "NAME", default_value = DEFAULT_CBT_INITIATOR)]
    initiator: String,
    /// Writes (and chunk reads) in flight.
    #[arg(long, value_name = "Q", default_value_t = backup::restore::DEFAULT_PARALLEL)]
    parallel: usize,
    /// Largest WRITE in KiB (several extents per command).
    #[arg(long, value_name = "KIB", default_value_t = 1024)]
    max_write_kib: usize,
    /// Read what the destination holds and write only extents that differ
    /// (a file with its PATH.restoring marker resumes without it).
    #[arg(long)]
    resume: bool,
    /// Merge a writable instant-restore LUN's overlay back: restore the
    /// backup with the extents written into FILE (and FILE.map) on top,
    /// as the instant LUN showed them. Stop serving that LUN first.
    #[arg(long, value_name = "FILE", conflicts_with = "changed_only")]
    overlay: Option<PathBuf>,
    /// Print progress on stderr also when it is not a terminal.
    #[arg(long)]
    progress: bool,
    /// Print a machine-readable report.
    #[arg(long)]
    json: bool,
    /// Roll the LUN back: write only the extents changed since the
    /// backup's generation (same tracking UUID), fenced by a Write
    /// Exclusive persistent reservation, then verify them.
    #[arg(long, requires = "portal")]
    changed_only: bool,
    /// With --changed-only: go on although other initiators are
    /// registered, and take over a crashed rollback's reservation.
    #[arg(long, requires = "changed_only")]
    force: bool,
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Runtime::new().context("starting the async runtime")
}

pub fn run_backup(a: BackupArgs) -> Result<()> {
    let create = Some(backup::CreateOptions::default());
    let repo =
        Arc::new(
            a.access
                .open_with(LockMode::Exclusive, "backup", create, a.compression_level)?,
        );
    let mut opts = BackupOptions::new(
        ConnectOptions::new(a.portal, &a.initiator, Some(&a.target)),
        a.lun,
    );
    opts.threshold_extents = a.threshold_extents;
    opts.max_passes = a.max_passes;
    opts.lease_ms = a.lease_ms;
    opts.view_lease_ms = a.view_lease_ms;
    opts.method = match a.method {
        None => MethodChoice::Auto,
        Some(MethodArg::View) => MethodChoice::View,
        Some(MethodArg::Lock) => MethodChoice::Lock,
    };
    opts.parallel = a.parallel;
    opts.progress = !a.quiet && !a.json;
    let summary = runtime()?.block_on(async move {
        // Ctrl-C cancels the run; the run itself releases the lock.
        let cancel = opts.cancel.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                cancel.cancel();
            }
        });
        backup::backup(repo, &opts).await
    });
    let s = summary.map_err(|e| anyhow!("backup of {} LUN {}: {e}", a.target, a.lun))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    if let Some(r) = &s.full_reason {
        println!("full backup: {r}");
    }
    if let Some(r) = &s.fallback_reason {
        println!("no view: {r}");
    }
    println!(
        "backup {} (parent {}), method {}, generation {}: read {} of {} ({:.2} %), {} extents, {} passes, lock held {} ms, {:.1} MiB/s",
        s.id,
        s.parent.as_deref().unwrap_or("none"),
        s.method.name(),
        s.generation,
        s.stats.bytes_read,
        s.logical_bytes,
        s.read_ratio * 100.0,
        s.stats.extents_copied,
        s.stats.passes,
        s.stats.lock_held_ms,
        s.throughput_bytes_per_s / (1024.0 * 1024.0),
    );
    Ok(())
}

pub fn run_restore(a: RestoreArgs) -> Result<()> {
    // The shared lock is held for the whole restore: no prune or gc can
    // remove a chunk it still has to read.
    let repo = Arc::new(a.access.open(LockMode::Shared, "restore")?);
    let o = backup::RestoreOptions {
        parallel: a.parallel.max(1),
        max_write_bytes: a.max_write_kib.clamp(4, 16 * 1024) << 10,
        progress: a.progress || (!a.json && std::io::stderr().is_terminal()),
        resume: a.resume,
        overlay: a.overlay.clone(),
    };
    if a.changed_only {
        return run_rollback(repo, &a, &o);
    }
    let r = match (&a.to_file, a.portal, &a.target) {
        (Some(path), None, _) => backup::restore_to_path(&repo, &a.backup, path, &o)?,
        (None, Some(portal), Some(target)) => {
            let c = ConnectOptions::new(portal, &a.initiator, Some(target));
            runtime()?.block_on(backup::restore_lun(repo, &a.backup, &c, a.lun, &o))?
        }
        _ => bail!("give --to-file PATH or --portal P --target T [--lun N]"),
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    let merged = match r.overlay_extents {
        0 => String::new(),
        n => format!(" with {n} extents from the overlay"),
    };
    println!(
        "restored backup {}{merged}{}: {} bytes: {} written, {} zero, {} already right; {:.2} s, {:.1} MiB/s",
        r.backup,
        if r.resumed { " (resumed)" } else { "" },
        r.logical_bytes,
        r.written_bytes,
        r.zero_bytes,
        r.skipped_bytes,
        r.seconds,
        r.logical_bytes as f64 / r.seconds.max(1e-6) / (1024.0 * 1024.0),
    );
    Ok(())
}

fn run_rollback(
    repo: Arc<backup::Repo>,
    a: &RestoreArgs,
    o: &backup::RestoreOptions,
) -> Result<()> {
    let (Some(portal), Some(target)) = (a.portal, &a.target) else {
        bail!("--changed-only needs --portal P --target T [--lun N]");
    };
    let c = ConnectOptions::new(portal, &a.initiator, Some(target));
    let ro = backup::RollbackOptions {
        parallel: o.parallel,
        max_write_bytes: o.max_write_bytes,
        force: a.force,
        progress: o.progress,
    };
    let r = runtime()?.block_on(backup::rollback(repo, &a.backup, &c, a.lun, &ro))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    println!(
        "rolled LUN {} back to backup {}: {} extents changed since generation {} ({} bytes); wrote {} + {} zero of {} LUN bytes ({:.3} %), {} already right; {} extents verified; {:.2} s",
        a.lun,
        r.backup,
        r.changed_extents,
        r.since_generation,
        r.changed_bytes,
        r.written_bytes,
        r.zero_bytes,
        r.lun_bytes,
        r.written_fraction * 100.0,
        r.skipped_bytes,
        r.verified_extents,
        r.seconds,
    );
    println!(
        "note: the rolled-back extents now carry generation {} or later: the next incremental backup copies them again",
        r.open_generation_after
    );
    Ok(())
}
