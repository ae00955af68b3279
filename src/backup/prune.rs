//! Retention: which backups to keep (`--keep-last/-daily/-weekly/-monthly`,
//! as restic and PBS count them), and removing the others' manifests.
//!
//! Every manifest lists the whole image, so a kept incremental never
//! needs its parent's manifest: chunks are shared through the index, not
//! through the chain. Removing a parent therefore only leaves the child's
//! `parent` pointing at a tombstone (`pruned/<id>`), which verify accepts.
//! The newest backup of each LUN is always kept: it is the base of the
//! next incremental (without it the next run would be a full one).
//! Removing manifests frees nothing by itself; gc reclaims the chunks.

use super::manifest::Manifest;
use super::repo::{Repo, now_ms};
use super::{BackupError, Result, fsio};
use chrono::{Datelike, TimeZone};
use serde::Serialize;
use std::collections::{BTreeMap, HashSet};

/// A calendar bucket (day, ISO week, month) of a time.
type Bucket<Tz> = fn(&chrono::DateTime<Tz>) -> (i32, u32, u32);

#[derive(Debug, Clone, Copy, Default)]
pub struct Policy {
    pub keep_last: u32,
    pub keep_daily: u32,
    pub keep_weekly: u32,
    pub keep_monthly: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    pub id: String,
    pub lun: String,
    pub created_ms: u64,
    pub keep: bool,
    /// Which rules keep it ("last", "daily", ..., "newest").
    pub reasons: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PruneReport {
    pub dry_run: bool,
    pub decisions: Vec<Decision>,
    pub removed: usize,
    pub kept: usize,
}

/// The decisions for `backups` under `p`, bucketing days/weeks/months in
/// `tz` (local time for the CLI). Per LUN (NAA), newest first.
pub fn plan<Tz: TimeZone>(backups: &[Manifest], p: &Policy, tz: &Tz) -> Vec<Decision> {
    let mut groups: BTreeMap<&str, Vec<&Manifest>> = BTreeMap::new();
    for m in backups {
        groups.entry(&m.lun.naa).or_default().push(m);
    }
    let mut out = Vec::new();
    for (lun, mut ms) in groups {
        ms.sort_by(|a, b| (b.created_ms, &b.id).cmp(&(a.created_ms, &a.id)));
        let mut reasons: Vec<Vec<String>> = vec![Vec::new(); ms.len()];
        reasons[0].push("newest".into());
        for r in reasons.iter_mut().take(p.keep_last as usize) {
            r.push("last".into());
        }
        let rules: [(&str, u32, Bucket<Tz>); 3] = [
            ("daily", p.keep_daily, |t| (t.year(), t.month(), t.day())),
            ("weekly", p.keep_weekly, |t| {
                let w = t.iso_week();
                (w.year(), w.week(), 0)
            }),
            ("monthly", p.keep_monthly, |t| (t.year(), t.month(), 0)),
        ];
        for (name, n, bucket) in rules {
            let mut last = None;
            let mut kept = 0;
            for (i, m) in ms.iter().enumerate() {
                if kept >= n {
                    break;
                }
                let t = tz.timestamp_millis_opt(m.created_ms as i64).single();
                let b = t.as_ref().map(bucket);
                if b != last {
                    last = b;
                    kept += 1;
                    reasons[i].push(name.into());
                }
            }
        }
        for (m, r) in ms.into_iter().zip(reasons) {
            out.push(Decision {
                id: m.id.clone(),
                lun: lun.to_string(),
                created_ms: m.created_ms,
                keep: !r.is_empty(),
                reasons: r,
            });
        }
    }
    out
}

/// Apply `p` (local time): tombstone, then remove each manifest to go.
pub fn prune(repo: &Repo, p: &Policy, dry_run: bool) -> Result<PruneReport> {
    if p.keep_last + p.keep_daily + p.keep_weekly + p.keep_monthly == 0 {
        return Err(BackupError::Invalid(
            "give at least one --keep-* rule (prune never removes everything)".into(),
        ));
    }
    let decisions = plan(&repo.list()?, p, &chrono::Local);
    let gone: HashSet<&str> = decisions
        .iter()
        .filter(|d| !d.keep)
        .map(|d| d.id.as_str())
        .collect();
    if !dry_run {
        for id in &gone {
            remove_backup(repo, id)?;
        }
    }
    Ok(PruneReport {
        dry_run,
        removed: gone.len(),
        kept: decisions.len() - gone.len(),
        decisions,
    })
}

/// The tombstone first: a crash in between leaves the backup listed (and
/// whole: its chunks are only reclaimed once the manifest is gone).
pub fn remove_backup(repo: &Repo, id: &str) -> Result<()> {
    let path = repo.manifest_path(id)?;
    let tomb = repo.dir("pruned").join(id);
    fsio::write_atomic(
        &repo.tmp_path("tomb"),
        &tomb,
        now_ms().to_string().as_bytes(),
    )?;
    std::fs::remove_file(&path).map_err(BackupError::io(&path))?;
    fsio::fsync_dir(&repo.dir("manifests"))
}
