//! Repository commands: `init`, `backups`, `verify`, `prune`, `gc`,
//! `unlock`, `repo-upgrade`, `repo-key`, and the options every command
//! that opens a repository shares (key, lock breaking).

use anyhow::{Context, Result, bail};
use clap::Args;
use gentgt::backup::crypto::{self, KeySource};
use gentgt::backup::gc::{self, GcOptions};
use gentgt::backup::lock::{self, LockMode};
use gentgt::backup::prune::{self, Policy};
use gentgt::backup::verify::Subset;
use gentgt::backup::{self, CreateOptions, ExtentRef, Repo, RepoOptions, VerifyOptions};
use std::collections::HashSet;
use std::path::PathBuf;

/// How to reach a repository: where, its key, lock breaking.
#[derive(Args, Clone)]
pub struct RepoAccess {
    /// Repository directory.
    #[arg(long, value_name = "DIR")]
    pub repo: PathBuf,
    /// Key file of an encrypted repository (64 hex digits).
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// Name of an environment variable holding the passphrase of an
    /// encrypted repository [GENTGT_PASSPHRASE is read when set].
    #[arg(long, value_name = "VAR")]
    pub passphrase_env: Option<String>,
    /// Remove stale locks (their process is gone) before taking ours.
    #[arg(long)]
    pub break_lock: bool,
}

impl RepoAccess {
    pub fn key(&self) -> Result<Option<KeySource>> {
        key_source(self.key_file.as_ref(), self.passphrase_env.as_deref())
    }

    pub fn open(&self, mode: LockMode, command: &str) -> Result<Repo> {
        self.open_with(mode, command, None, None)
    }

    pub fn open_with(
        &self,
        mode: LockMode,
        command: &str,
        create: Option<CreateOptions>,
        zstd_level: Option<i32>,
    ) -> Result<Repo> {
        let o = RepoOptions {
            lock: Some(mode),
            command: command.into(),
            break_lock: self.break_lock,
            create,
            key: self.key()?,
            zstd_level,
            upgrading: false,
        };
        Repo::open_with(&self.repo, &o)
            .with_context(|| format!("repository {}", self.repo.display()))
    }
}

fn key_source(file: Option<&PathBuf>, env: Option<&str>) -> Result<Option<KeySource>> {
    if let Some(f) = file {
        return Ok(Some(KeySource::File(f.clone())));
    }
    let var = env.unwrap_or("GENTGT_PASSPHRASE");
    match std::env::var(var) {
        Ok(p) if !p.is_empty() => Ok(Some(KeySource::Passphrase(p))),
        _ if env.is_some() => bail!("environment variable {var} is not set"),
        _ => Ok(None),
    }
}

#[derive(Args)]
pub struct InitArgs {
    #[command(flatten)]
    access: RepoAccess,
    /// Pack file size in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 32)]
    pack_mib: u64,
    /// zstd level for chunks (0 = no compression; negative: zstd's
    /// fast levels).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 1,
        allow_negative_numbers = true
    )]
    compression_level: i32,
    /// Encrypt with the key file or passphrase given.
    #[arg(long)]
    encrypt: bool,
    /// Create a new random key file at --key-file first.
    #[arg(long, requires = "encrypt")]
    new_key_file: bool,
}

pub fn run_init(a: InitArgs) -> Result<()> {
    if a.new_key_file {
        let Some(f) = &a.access.key_file else {
            bail!("--new-key-file needs --key-file PATH");
        };
        crypto::generate_key_file(f)?;
        println!(
            "wrote a new key to {} (keep a copy away from the repository)",
            f.display()
        );
    }
    if a.access.repo.join("config").exists() || backup::repo::is_old_format(&a.access.repo) {
        bail!("{} is already a repository", a.access.repo.display());
    }
    let encrypt = match (a.encrypt, a.access.key()?) {
        (true, None) => bail!("--encrypt needs --key-file FILE or a passphrase"),
        (true, k) => k,
        (false, _) => None,
    };
    let create = CreateOptions {
        pack_bytes: a.pack_mib.max(1) << 20,
        zstd_level: a.compression_level,
        encrypt,
        kdf_cost: None,
    };
    let repo = a
        .access
        .open_with(LockMode::Exclusive, "init", Some(create), None)?;
    let c = repo.config();
    println!(
        "created repository {} (format {}, packs {} MiB, zstd level {}, {})",
        repo.root().display(),
        c.version,
        c.pack_bytes >> 20,
        c.zstd_level,
        if c.encryption.is_some() {
            "encrypted"
        } else {
            "not encrypted"
        }
    );
    Ok(())
}

#[derive(Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    access: RepoAccess,
    /// Read, decode and re-hash every referenced chunk.
    #[arg(long)]
    read_data: bool,
    /// Read only part of the packs: N/T (part N of T) or P%.
    #[arg(long, value_name = "N/T|P%", value_parser = Subset::parse)]
    read_data_subset: Option<Subset>,
    #[arg(long)]
    json: bool,
}

pub fn run_verify(a: VerifyArgs) -> Result<()> {
    let repo = a.access.open(LockMode::Shared, "verify")?;
    let o = VerifyOptions {
        read_data: a.read_data || a.read_data_subset.is_some(),
        subset: a.read_data_subset,
    };
    let r = backup::verify_with(&repo, &o)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        for p in &r.problems {
            println!("PROBLEM: {p}");
        }
        if !r.damaged_backups.is_empty() {
            println!("DAMAGED BACKUPS: {}", r.damaged_backups.join(" "));
        }
        println!(
            "{} backups, {} packs, {} chunks referenced, {} read back ({} bytes), {} unreferenced chunks ({} bytes), {} temp files: {}",
            r.backups,
            r.packs,
            r.chunks_referenced,
            r.chunks_checked,
            r.bytes_hashed,
            r.orphan_chunks,
            r.orphan_bytes,
            r.temp_files,
            if r.ok() { "OK" } else { "PROBLEMS FOUND" }
        );
    }
    if !r.ok() {
        bail!(
            "{} problems in {}",
            r.problems.len(),
            a.access.repo.display()
        );
    }
    Ok(())
}

#[derive(Args)]
pub struct ListArgs {
    #[command(flatten)]
    access: RepoAccess,
    #[arg(long)]
    json: bool,
}

#[derive(serde::Serialize)]
struct Listed {
    id: String,
    parent: Option<String>,
    /// RFC 3339, local time zone.
    created: String,
    created_ms: u64,
    /// "lock" or "view" (`stats.method`; older manifests read as "lock").
    method: String,
    lock_generation: u64,
    full: bool,
    logical_bytes: u64,
    /// Bytes of extents that differ from the previous backup of the LUN.
    changed_bytes: u64,
    /// Bytes of chunks this backup added to the repository (first use).
    stored_bytes: u64,
    /// The same chunks as stored on disk (compressed, maybe encrypted).
    compressed_bytes: u64,
}

pub fn run_list(a: ListArgs) -> Result<()> {
    let repo = a.access.open(LockMode::Shared, "backups")?;
    let rows = listing(&repo)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "{:<19} {:<25} {:<6} {:>6} {:>10} {:>10} {:>10} {:>10}  PARENT",
        "ID", "CREATED", "METHOD", "GEN", "LOGICAL", "CHANGED", "STORED", "COMPRESSED"
    );
    for r in rows {
        let local = chrono::DateTime::parse_from_rfc3339(&r.created)
            .map(|t| t.format("%Y-%m-%d %H:%M:%S %:z").to_string())
            .unwrap_or(r.created);
        println!(
            "{:<19} {:<25} {:<6} {:>6} {:>10} {:>10} {:>10} {:>10}  {}",
            r.id,
            local,
            r.method,
            r.lock_generation,
            human(r.logical_bytes),
            human(r.changed_bytes),
            human(r.stored_bytes),
            human(r.compressed_bytes),
            r.parent.as_deref().unwrap_or("-"),
        );
    }
    Ok(())
}

fn listing(repo: &Repo) -> Result<Vec<Listed>> {
    let mut rows = Vec::new();
    let mut seen: HashSet<String> = HashSet::new();
    let mut prev: std::collections::HashMap<String, backup::Manifest> = Default::default();
    for m in repo.list()? {
        let method = m.stats.method.name().to_string();
        let before = prev.get(&m.lun.naa);
        let (mut changed, mut stored, mut compressed) = (0, 0, 0);
        for (i, e) in m.extents.iter().enumerate() {
            let len = m.lun.extent_bytes(i as u64) as u64;
            let differs = before.is_none_or(|p| p.extents.get(i) != Some(e));
            if differs && (before.is_some() || *e != ExtentRef::Zero) {
                changed += len;
            }
            if let ExtentRef::Blake3(h) = e
                && seen.insert(h.clone())
            {
                stored += len;
                let id = backup::repo::parse_id(h)?;
                compressed += repo.chunk_loc(&id).map_or(0, |l| u64::from(l.len));
            }
        }
        let created = chrono::DateTime::from_timestamp_millis(m.created_ms as i64)
            .map(|t| t.with_timezone(&chrono::Local).to_rfc3339())
            .unwrap_or_default();
        rows.push(Listed {
            id: m.id.clone(),
            parent: m.parent.clone(),
            created,
            created_ms: m.created_ms,
            method,
            lock_generation: m.lock_generation,
            full: m.stats.full,
            logical_bytes: m.lun.logical_bytes(),
            changed_bytes: changed,
            stored_bytes: stored,
            compressed_bytes: compressed,
        });
        prev.insert(m.lun.naa.clone(), m);
    }
    Ok(rows)
}

fn human(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let (mut v, mut u) = (n as f64, 0);
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

#[derive(Args)]
pub struct PruneArgs {
    #[command(flatten)]
    access: RepoAccess,
    #[arg(long, value_name = "N", default_value_t = 0)]
    keep_last: u32,
    #[arg(long, value_name = "D", default_value_t = 0)]
    keep_daily: u32,
    #[arg(long, value_name = "W", default_value_t = 0)]
    keep_weekly: u32,
    #[arg(long, value_name = "M", default_value_t = 0)]
    keep_monthly: u32,
    /// Show what would be removed, remove nothing.
    #[arg(long)]
    dry_run: bool,
    /// Run gc afterwards.
    #[arg(long)]
    gc: bool,
    #[arg(long)]
    json: bool,
}

pub fn run_prune(a: PruneArgs) -> Result<()> {
    let repo = a.access.open(LockMode::Exclusive, "prune")?;
    let p = Policy {
        keep_last: a.keep_last,
        keep_daily: a.keep_daily,
        keep_weekly: a.keep_weekly,
        keep_monthly: a.keep_monthly,
    };
    let r = prune::prune(&repo, &p, a.dry_run)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        for d in &r.decisions {
            let what = if d.keep {
                "keep  "
            } else if a.dry_run {
                "would remove"
            } else {
                "remove"
            };
            println!("{what} {} ({})", d.id, d.reasons.join(", "));
        }
        println!(
            "{} kept, {} {}",
            r.kept,
            r.removed,
            if a.dry_run { "to remove" } else { "removed" }
        );
    }
    if a.gc && !a.dry_run {
        print_gc(&gc::gc(&repo, &GcOptions::default())?, a.json)?;
    }
    Ok(())
}

#[derive(Args)]
pub struct GcArgs {
    #[command(flatten)]
    access: RepoAccess,
    /// Dead bytes allowed to stay in packs, percent of pack bytes.
    #[arg(long, value_name = "PCT", default_value_t = 5.0)]
    max_unused: f64,
    /// Keep packs and temp files nothing indexes for this many seconds
    /// (they may be a running backup's).
    #[arg(long, value_name = "SECS", default_value_t = 3600)]
    grace_secs: u64,
    #[arg(long)]
    dry_run: bool,
    #[arg(long)]
    json: bool,
}

pub fn run_gc(a: GcArgs) -> Result<()> {
    let repo = a.access.open(LockMode::Exclusive, "gc")?;
    let o = GcOptions {
        max_unused: a.max_unused / 100.0,
        grace_secs: a.grace_secs,
        dry_run: a.dry_run,
    };
    print_gc(&gc::gc(&repo, &o)?, a.json)
}

fn print_gc(r: &gc::GcReport, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(r)?);
        return Ok(());
    }
    println!(
        "{}{} packs ({}) -> {} packs ({}): {} deleted, {} repacked into {}, {} unindexed deleted, {} chunks dropped, {} temp files deleted; {} unreferenced left",
        if r.dry_run { "(dry run) " } else { "" },
        r.packs_before,
        human(r.bytes_before),
        r.packs_after,
        human(r.bytes_after),
        r.packs_deleted,
        r.packs_repacked,
        r.packs_written,
        r.unindexed_packs_deleted,
        r.chunks_dropped,
        r.temp_files_deleted,
        human(r.unreferenced_bytes_after),
    );
    Ok(())
}

#[derive(Args)]
pub struct UnlockArgs {
    #[arg(long, value_name = "DIR")]
    repo: PathBuf,
    /// Also remove locks that look alive or belong to another host.
    #[arg(long)]
    force: bool,
}

pub fn run_unlock(a: UnlockArgs) -> Result<()> {
    let dir = a.repo.join("locks");
    let removed = lock::break_locks(&dir, a.force)?;
    for r in &removed {
        println!("removed: {r}");
    }
    for (p, h) in lock::holders(&dir)? {
        match h {
            Ok(h) => println!("still held: {}", h.describe()),
            Err(e) => println!("still there: {} ({e})", p.display()),
        }
    }
    Ok(())
}

#[derive(Args)]
pub struct UpgradeArgs {
    #[command(flatten)]
    access: RepoAccess,
    #[arg(long, value_name = "MIB", default_value_t = 32)]
    pack_mib: u64,
    #[arg(
        long,
        value_name = "N",
        default_value_t = 1,
        allow_negative_numbers = true
    )]
    compression_level: i32,
    /// Encrypt the converted repository with the key given.
    #[arg(long)]
    encrypt: bool,
}

pub fn run_upgrade(a: UpgradeArgs) -> Result<()> {
    let key = a.access.key()?;
    let create = CreateOptions {
        pack_bytes: a.pack_mib.max(1) << 20,
        zstd_level: a.compression_level,
        encrypt: if a.encrypt { key.clone() } else { None },
        kdf_cost: None,
    };
    let r = backup::upgrade::upgrade(&a.access.repo, &create, key)?;
    println!(
        "converted {} backups ({} chunks re-hashed), {} already done",
        r.backups_converted, r.chunks_read, r.backups_skipped
    );
    Ok(())
}

#[derive(Args)]
pub struct KeyArgs {
    #[command(flatten)]
    access: RepoAccess,
    /// The new key file (see `init --new-key-file`).
    #[arg(long, value_name = "FILE")]
    new_key_file: Option<PathBuf>,
    /// Environment variable holding the new passphrase.
    #[arg(long, value_name = "VAR")]
    new_passphrase_env: Option<String>,
}

pub fn run_key(a: KeyArgs) -> Result<()> {
    let repo = a.access.open(LockMode::Exclusive, "repo-key")?;
    let Some(old) = a.access.key()? else {
        bail!("give the current key (--key-file or a passphrase)");
    };
    let new = match (&a.new_key_file, &a.new_passphrase_env) {
        (Some(f), _) => KeySource::File(f.clone()),
        (None, Some(v)) => KeySource::Passphrase(
            std::env::var(v).with_context(|| format!("environment variable {v}"))?,
        ),
        _ => bail!("give --new-key-file FILE or --new-passphrase-env VAR"),
    };
    backup::repo::change_key(&repo, &old, &new)?;
    println!(
        "the master key is now wrapped by the new key; the old one no longer opens the repository"
    );
    Ok(())
}
