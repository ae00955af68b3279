//! Quick rollback (`gentgt restore --changed-only`): put a LUN back to a
//! backup by writing only the extents changed since the backup's
//! generation, as GET CHANGED EXTENTS(SINCE = that generation) lists them
//! under the same tracking UUID (another UUID: refused, a full restore is
//! the answer). The written extents are read back and checked against
//! the backup's chunk ids.
//!
//! Fencing (docs/restore.md, a point the CBT contract does not cover):
//! the CBT write lock holds every change, the holder's too, so it cannot
//! fence our own writes. The rollback takes a PERSISTENT RESERVE Write
//! Exclusive reservation under its own key for the duration: other
//! initiators keep reading but every change from them is refused with
//! RESERVATION CONFLICT. It refuses when another initiator holds a
//! reservation, and (unless `force`) when others are registered (a
//! cluster may own the LUN) or a crashed rollback left its reservation
//! (then `force` preempts it).

use super::manifest::Manifest;
use super::progress::Progress;
use super::repo::Repo;
use super::restore::{Counts, prepare, runs};
use super::restore_lun::{LunWriter, check_geometry};
use super::{BackupError, Result};
use crate::initiator::pr::*;
use crate::initiator::{ConnectOptions, Initiator, Session};
use serde::Serialize;
use std::sync::Arc;

/// The reservation key of every rollback ("gtrollbk"): a reservation
/// under it that outlived its run was left by a crashed rollback.
pub const ROLLBACK_KEY: u64 = u64::from_be_bytes(*b"gtrollbk");

#[derive(Debug, Clone)]
pub struct RollbackOptions {
    pub parallel: usize,
    pub max_write_bytes: usize,
    /// Go on although other initiators are registered; preempt a
    /// reservation a crashed rollback left.
    pub force: bool,
    pub progress: bool,
}

/// What a rollback did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RollbackReport {
    pub backup: String,
    pub lun_bytes: u64,
    /// The backup's generation: changes since it were listed.
    pub since_generation: u64,
    pub changed_extents: u64,
    pub changed_bytes: u64,
    pub written_bytes: u64,
    pub zero_bytes: u64,
    /// Listed as changed but already equal to the backup.
    pub skipped_bytes: u64,
    /// (written + zeroed) / LUN size.
    pub written_fraction: f64,
    pub verified_extents: u64,
    /// The LUN's open generation afterwards: the rolled-back extents
    /// carry it, so the next incremental backup copies them again.
    pub open_generation_after: u64,
    pub seconds: f64,
}

/// Roll LUN `lun` back to backup `id`.
pub async fn rollback(
    repo: Arc<Repo>,
    id: &str,
    connect: &ConnectOptions,
    lun: u64,
    o: &RollbackOptions,
) -> Result<RollbackReport> {
    let m = Arc::new(prepare(&repo, id)?);
    let started = std::time::Instant::now();
    let s = Arc::new(Initiator::connect(connect).await?);
    let _ = s.test_unit_ready(lun).await;
    let lun_bytes = check_geometry(&s, lun, &m, true).await?;
    check_tracking(&s, lun, &m).await?;
    fence(&s, lun, o.force).await?;
    let r = rolled(&s, lun, repo, m, o).await;
    let released = unfence(&s, lun).await;
    let mut r = r?;
    released?;
    r.lun_bytes = lun_bytes;
    r.written_fraction = (r.written_bytes + r.zero_bytes) as f64 / lun_bytes.max(1) as f64;
    r.seconds = started.elapsed().as_secs_f64();
    if let Ok(s) = Arc::try_unwrap(s) {
        let _ = s.logout().await;
    }
    Ok(r)
}

/// Same tracking UUID and extent size as when the backup was made.
async fn check_tracking(s: &Session, lun: u64, m: &Manifest) -> Result<()> {
    let t = s.cbt_report(lun).await?;
    let uuid = hex::encode(t.uuid);
    if uuid != m.lun.uuid {
        return Err(BackupError::Invalid(format!(
            "LUN {lun} tracks changes under UUID {uuid}, backup {} was made under {}: its changes since then are unknown; restore the whole backup instead (without --changed-only)",
            m.id, m.lun.uuid
        )));
    }
    if t.extent_blocks != m.lun.extent_blocks || t.open_generation <= m.lock_generation {
        return Err(BackupError::Invalid(format!(
            "LUN {lun}: extent size {} blocks, open generation {}; backup {} has {} blocks, generation {}: restore the whole backup instead",
            t.extent_blocks, t.open_generation, m.id, m.lun.extent_blocks, m.lock_generation
        )));
    }
    Ok(())
}

/// Take the Write Exclusive reservation (module docs).
async fn fence(s: &Session, lun: u64, force: bool) -> Result<()> {
    let res = s.pr_read_reservation(lun).await?;
    let others: Vec<u64> = s
        .pr_read_keys(lun)
        .await?
        .into_iter()
        .filter(|&k| k != ROLLBACK_KEY)
        .collect();
    let refuse = |why: String| {
        Err(BackupError::Invalid(format!(
            "LUN {lun}: {why}; nothing written"
        )))
    };
    match res {
        Some(r) if r.key != ROLLBACK_KEY => {
            return refuse(format!(
                "reserved by another initiator (key {:#018x}, type {}); have it released first",
                r.key, r.kind
            ));
        }
        Some(_) if !force => {
            return refuse(
                "a reservation of an earlier rollback is still held (did it crash?); pass --force to take it over".into(),
            );
        }
        _ => {}
    }
    if !others.is_empty() && !force {
        return refuse(format!(
            "{} other initiator(s) are registered for persistent reservations (a cluster may own this LUN); pass --force to roll back anyway",
            others.len()
        ));
    }
    s.pr_out(lun, PR_REGISTER_AND_IGNORE, 0, 0, ROLLBACK_KEY)
        .await?;
    let (sa, sa_key) = match res {
        Some(_) => (PR_PREEMPT, ROLLBACK_KEY),
        None => (PR_RESERVE, 0),
    };
    if let Err(e) = s
        .pr_out(lun, sa, PR_WRITE_EXCLUSIVE, ROLLBACK_KEY, sa_key)
        .await
    {
        // Not fenced: leave no registration behind either.
        let _ = s.pr_out(lun, PR_REGISTER, 0, ROLLBACK_KEY, 0).await;
        return Err(e.into());
    }
    Ok(())
}

/// Release the reservation and our registration.
async fn unfence(s: &Session, lun: u64) -> Result<()> {
    let k = ROLLBACK_KEY;
    s.pr_out(lun, PR_RELEASE, PR_WRITE_EXCLUSIVE, k, 0).await?;
    s.pr_out(lun, PR_REGISTER, 0, k, 0).await?;
    Ok(())
}

/// List, write, verify (under the fence).
async fn rolled(
    s: &Arc<Session>,
    lun: u64,
    repo: Arc<Repo>,
    m: Arc<Manifest>,
    o: &RollbackOptions,
) -> Result<RollbackReport> {
    let since = m.lock_generation;
    let eb = u64::from(m.lun.extent_blocks);
    let mut extents: Vec<u64> = Vec::new();
    for d in s.cbt_all_changes(lun, since, 0).await? {
        let last = (d.lba + u64::from(d.blocks.max(1)) - 1) / eb;
        extents.extend((d.lba / eb)..=last.min(m.lun.extent_count() - 1));
    }
    extents.dedup();
    let changed_bytes: u64 = extents.iter().map(|&i| m.lun.extent_bytes(i) as u64).sum();
    let w = Arc::new(LunWriter::new(s.clone(), lun, repo, m.clone(), true));
    let runs = runs(
        &m,
        extents.iter().copied(),
        o.max_write_bytes,
        w.zero_cap(o.max_write_bytes),
    );
    let progress = Progress::new(o.progress, changed_bytes, "rollback");
    let c: Counts = w.write(&runs, o.parallel, &progress).await.map_err(|e| {
        BackupError::Invalid(format!(
            "rollback of LUN {lun} to backup {} failed: {e}; run it again (or restore the whole backup)",
            m.id
        ))
    })?;
    drop(progress);
    s.sync_cache(lun).await?;
    let bad = w.count_mismatches(&runs).await?;
    if bad > 0 {
        return Err(BackupError::Invalid(format!(
            "rollback of LUN {lun}: {bad} extents read back differ from backup {}",
            m.id
        )));
    }
    Ok(RollbackReport {
        backup: m.id.clone(),
        since_generation: since,
        changed_extents: extents.len() as u64,
        changed_bytes,
        written_bytes: c.written,
        zero_bytes: c.zeroed,
        skipped_bytes: c.skipped,
        verified_extents: extents.len() as u64,
        open_generation_after: s.cbt_report(lun).await?.open_generation,
        ..Default::default()
    })
}
