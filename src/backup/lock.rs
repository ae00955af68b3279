//! Repository locks: `locks/<pid>-<rand>.lock`, one JSON file per holder
//! (pid, host, command, since, mode), like restic's.
//!
//! Backup, prune and gc take the lock exclusively, restore and verify
//! shared. A taker first writes its own file, then looks at the others:
//! on a conflict it removes its file again and fails naming the holder,
//! so two racing writers may both fail but never both proceed.
//!
//! A lock whose process is gone (same host, pid not running or running a
//! later-started program) is stale. It is never broken silently: the
//! error says so and `--break-lock` / `gentgt unlock` removes it. A lock
//! of another host cannot be judged from here and is only broken by
//! `gentgt unlock --force`.

use super::{BackupError, Result};
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    Shared,
    Exclusive,
}

/// Who holds a lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub pid: u32,
    pub host: String,
    pub command: String,
    pub since_ms: u64,
    pub exclusive: bool,
    /// Start time of the process (clock ticks after boot, /proc/PID/stat),
    /// so a recycled pid is not mistaken for the holder.
    pub start_ticks: Option<u64>,
}

impl Holder {
    fn me(mode: LockMode, command: &str) -> Holder {
        let pid = std::process::id();
        Holder {
            pid,
            host: hostname(),
            command: command.into(),
            since_ms: super::repo::now_ms(),
            exclusive: mode == LockMode::Exclusive,
            start_ticks: start_ticks(pid),
        }
    }

    /// Some(false) when the holder is surely gone; None when it cannot
    /// be told (another host).
    pub fn alive(&self) -> Option<bool> {
        if self.host != hostname() {
            return None;
        }
        let running = unsafe { libc::kill(self.pid as i32, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
        Some(running && (self.start_ticks.is_none() || start_ticks(self.pid) == self.start_ticks))
    }

    pub fn describe(&self) -> String {
        let since = chrono::DateTime::from_timestamp_millis(self.since_ms as i64)
            .map(|t| t.with_timezone(&chrono::Local).to_rfc3339())
            .unwrap_or_default();
        let state = match self.alive() {
            Some(true) => "running",
            Some(false) => "STALE: the process is gone",
            None => "on another host",
        };
        format!(
            "{} lock held by pid {} on {} ({:?}) since {since}, {state}",
            if self.exclusive {
                "exclusive"
            } else {
                "shared"
            },
            self.pid,
            self.host,
            self.command,
        )
    }
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    let r = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if r != 0 {
        return "unknown".into();
    }
    let n = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn start_ticks(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22; the command (field 2) may hold spaces, so count after ')'.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

/// A held lock; dropping it removes the file.
#[derive(Debug)]
pub struct RepoLock {
    path: PathBuf,
}

impl Drop for RepoLock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Every lock file: (path, holder or why it is unreadable).
pub fn holders(dir: &Path) -> Result<Vec<(PathBuf, std::result::Result<Holder, String>)>> {
    let mut out = Vec::new();
    for name in super::fsio::names(dir)? {
        let p = dir.join(&name);
        let h = fs::read(&p)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()));
        out.push((p, h));
    }
    Ok(out)
}

/// Remove stale locks (all locks with `force`); returns what was removed.
pub fn break_locks(dir: &Path, force: bool) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for (p, h) in holders(dir)? {
        let stale = match &h {
            Ok(h) => h.alive() == Some(false),
            // A half-written file of a taker killed while writing it.
            Err(_) => super::fsio::age_secs(&p) > 60,
        };
        if stale || force {
            fs::remove_file(&p).map_err(BackupError::io(&p))?;
            removed.push(match h {
                Ok(h) => h.describe(),
                Err(e) => format!("{}: {e}", p.display()),
            });
        }
    }
    Ok(removed)
}

pub fn acquire(dir: &Path, mode: LockMode, command: &str, break_stale: bool) -> Result<RepoLock> {
    fs::create_dir_all(dir).map_err(BackupError::io(dir))?;
    if break_stale {
        for r in break_locks(dir, false)? {
            tracing::warn!("removed a stale lock: {r}");
        }
    }
    let me = Holder::me(mode, command);
    let path = dir.join(format!("{}-{:08x}.lock", me.pid, rand::random::<u32>()));
    let json = serde_json::to_vec(&me).map_err(|e| BackupError::Invalid(e.to_string()))?;
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .and_then(|mut f| f.write_all(&json).and_then(|()| f.sync_all()))
        .map_err(BackupError::io(&path))?;
    let lock = RepoLock { path };
    for (p, h) in holders(dir)? {
        if p == lock.path {
            continue;
        }
        let conflict = match &h {
            Ok(h) => h.exclusive || mode == LockMode::Exclusive,
            Err(_) => mode == LockMode::Exclusive,
        };
        if conflict {
            let who = match h {
                Ok(h) => h.describe(),
                Err(e) => format!("unreadable lock file {} ({e})", p.display()),
            };
            return Err(BackupError::Locked(format!(
                "the repository is locked: {who}; if that process is gone, run `gentgt unlock --repo DIR` or pass --break-lock"
            )));
        }
    }
    Ok(lock)
}
