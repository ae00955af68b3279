//! Restoring onto a LUN over iSCSI: runs of extents written by up to
//! `parallel` commands in flight on one session, several extents per
//! WRITE(16), zero runs as WRITE SAME(16) with UNMAP (plain zeros where
//! the LUN refuses it). With `resume` every run is read first and only
//! extents that differ from the backup are written. The rollback
//! (rollback.rs) writes its changed extents through the same writer.

use super::fetch::fetch_run;
use super::manifest::Manifest;
use super::merge;
use super::progress::Progress;
use super::repo::Repo;
use super::restore::{
    Counts, Done, RestoreOptions, RestoreReport, Run, differing, extent_matches, prepare, runs,
};
use super::{BackupError, Result};
use crate::backend::overlay::OverlayImage;
use crate::initiator::{ConnectOptions, Initiator, InitiatorError, Session};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::task::JoinSet;

/// WRITE SAME(16) blocks per command (the target's MAXIMUM WRITE SAME
/// LENGTH is 0xffff).
const MAX_WRITE_SAME_BLOCKS: u64 = 0xffff;

/// Restore backup `id` onto LUN `lun`: the LUN must have the image's
/// block size and at least its capacity (checked before any write).
pub async fn restore_lun(
    repo: Arc<Repo>,
    id: &str,
    connect: &ConnectOptions,
    lun: u64,
    o: &RestoreOptions,
) -> Result<RestoreReport> {
    let m = Arc::new(prepare(&repo, id)?);
    let ov = o
        .overlay
        .as_deref()
        .map(|p| merge::open(&repo, &m, p).map(Arc::new))
        .transpose()?;
    let started = std::time::Instant::now();
    let s = Arc::new(Initiator::connect(connect).await?);
    let _ = s.test_unit_ready(lun).await;
    check_geometry(&s, lun, &m, false).await?;
    let w = Arc::new(LunWriter::new(s.clone(), lun, repo, m.clone(), o.resume));
    let runs = runs(
        &m,
        merge::from_backup(ov.as_deref(), &m),
        o.max_write_bytes,
        w.zero_cap(o.max_write_bytes),
    );
    let mut report = RestoreReport {
        backup: m.id.clone(),
        logical_bytes: m.lun.logical_bytes(),
        resumed: o.resume,
        overlay_extents: ov.as_ref().map_or(0, |o| o.extents()),
        ..Default::default()
    };
    let progress = Progress::new(o.progress, m.lun.logical_bytes(), "restore");
    let mut c = w.write(&runs, o.parallel, &progress).await;
    if let (Ok(done), Some(ov)) = (&c, ov) {
        let done = *done;
        c = w.merge(ov, &progress).await.map(|more| done.plus(more));
    }
    drop(progress);
    let c = c.map_err(|e| {
        BackupError::Invalid(format!(
            "restore of backup {id} to LUN {lun} failed: {e}; run it again with --resume"
        ))
    })?;
    s.sync_cache(lun).await?;
    report.add(c);
    report.seconds = started.elapsed().as_secs_f64();
    if let Ok(s) = Arc::try_unwrap(s) {
        let _ = s.logout().await;
    }
    Ok(report)
}

/// The LUN has the image's block size and at least (`exact`: exactly)
/// its capacity; returns the LUN's size in bytes.
pub(super) async fn check_geometry(
    s: &Session,
    lun: u64,
    m: &Manifest,
    exact: bool,
) -> Result<u64> {
    let (blocks, bs) = s.read_capacity16(lun).await?;
    let need = m.lun.capacity_blocks;
    if bs != m.lun.block_size || blocks < need || (exact && blocks != need) {
        return Err(BackupError::Invalid(format!(
            "LUN {lun} has {blocks} blocks of {bs} bytes; backup {} needs {}{need} of {}: nothing written",
            m.id,
            if exact { "exactly " } else { "" },
            m.lun.block_size
        )));
    }
    Ok(blocks * u64::from(bs))
}

/// Writes runs of one backup onto one LUN.
pub(super) struct LunWriter {
    s: Arc<Session>,
    lun: u64,
    repo: Arc<Repo>,
    m: Arc<Manifest>,
    /// Read first, write only what differs.
    check: bool,
    /// Cleared once the LUN refused WRITE SAME: zeros are written.
    write_same: AtomicBool,
    spare: Spare,
}

/// Run buffers kept for the next runs (one per run in flight is enough):
/// a fresh zeroed MiB per WRITE costs a memset or page faults.
#[derive(Default)]
struct Spare(std::sync::Mutex<Vec<Vec<u8>>>);

impl Spare {
    const KEEP: usize = 64;

    fn take(&self) -> Vec<u8> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .unwrap_or_default()
    }

    fn give(&self, v: Vec<u8>) {
        let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if s.len() < Self::KEEP {
            s.push(v);
        }
    }
}

impl LunWriter {
    pub fn new(s: Arc<Session>, lun: u64, repo: Arc<Repo>, m: Arc<Manifest>, check: bool) -> Self {
        LunWriter {
            s,
            lun,
            repo,
            m,
            check,
            write_same: AtomicBool::new(true),
            spare: Spare::default(),
        }
    }

    /// Blocks per zero run: one WRITE SAME, or what is read at once.
    pub fn zero_cap(&self, max_write_bytes: usize) -> u64 {
        if self.check {
            (max_write_bytes as u64 / u64::from(self.m.lun.block_size)).max(1)
        } else {
            MAX_WRITE_SAME_BLOCKS
        }
    }

    fn lbas(&self, r: Run) -> (u64, u32) {
        let (off, len) = self.m.byte_range(r.first, r.count);
        let bs = u64::from(self.m.lun.block_size);
        (off / bs, (len as u64 / bs) as u32)
    }

    /// Every run, up to `parallel` at once; a failure names the first LBA
    /// not known to be written.
    pub async fn write(
        self: &Arc<Self>,
        runs: &[Run],
        parallel: usize,
        progress: &Progress,
    ) -> Result<Counts> {
        let done = Done::new(runs.len());
        let mut set: JoinSet<(usize, Result<Counts>)> = JoinSet::new();
        let mut total = Counts::default();
        let mut failed = None;
        let mut next = 0;
        while next < runs.len() || !set.is_empty() {
            while failed.is_none() && next < runs.len() && set.len() < parallel.max(1) {
                let (w, r, k) = (self.clone(), runs[next], next);
                set.spawn(async move { (k, w.one(r).await) });
                next += 1;
            }
            let Some(j) = set.join_next().await else {
                break;
            };
            match j {
                Ok((k, Ok(c))) => {
                    done.mark(k);
                    progress.add(c.total());
                    total.written += c.written;
                    total.zeroed += c.zeroed;
                    total.skipped += c.skipped;
                }
                Ok((_, Err(e))) => {
                    failed.get_or_insert(e);
                }
                Err(e) => {
                    failed.get_or_insert(BackupError::Invalid(format!("restore task: {e}")));
                }
            }
        }
        match failed {
            None => Ok(total),
            Some(e) => {
                let from = done.first_missing().map_or(0, |k| self.lbas(runs[k]).0);
                let last = runs.last().map_or(0, |r| {
                    let (l, n) = self.lbas(*r);
                    l + u64::from(n)
                });
                Err(BackupError::Invalid(format!(
                    "{e}; LBAs {from} to {last} of LUN {} are not known to be restored (those before are)",
                    self.lun
                )))
            }
        }
    }

    /// One run: read and compare (when checking), fetch, write.
    async fn one(self: Arc<Self>, run: Run) -> Result<Counts> {
        let (lba, blocks) = self.lbas(run);
        let bs = self.m.lun.block_size;
        let current = match self.check {
            true => Some(self.s.read16(self.lun, lba, blocks, bs).await?),
            false => None,
        };
        let w = self.clone();
        let todo = tokio::task::spawn_blocking(move || {
            let rs = match current {
                Some(cur) => differing(&w.repo, &w.m, run, &cur),
                None => vec![run],
            };
            rs.into_iter()
                .map(|r| match r.zero {
                    true => Ok((r, None)),
                    false => {
                        let mut buf = w.spare.take();
                        fetch_run(&w.repo, &w.m, r.first, r.count, &mut buf)?;
                        Ok((r, Some(buf)))
                    }
                })
                .collect::<Result<Vec<_>>>()
        })
        .await
        .map_err(|e| BackupError::Invalid(format!("restore worker: {e}")))??;
        let mut c = Counts::default();
        for (r, data) in todo {
            let (l, n) = self.lbas(r);
            let bytes = u64::from(n) * u64::from(bs);
            match data {
                Some(d) => {
                    self.s.write16(self.lun, l, &d, bs, false).await?;
                    self.spare.give(d);
                    c.written += bytes;
                }
                None => {
                    self.zero(l, n).await?;
                    c.zeroed += bytes;
                }
            }
        }
        c.skipped = u64::from(blocks) * u64::from(bs) - c.written - c.zeroed;
        Ok(c)
    }

    /// The overlay's extents on top, one WRITE each (there are few), in
    /// order; after every run from the backup.
    async fn merge(&self, ov: Arc<OverlayImage>, progress: &Progress) -> Result<Counts> {
        let mut c = Counts::default();
        for i in merge::from_overlay(&ov, &self.m) {
            let o = ov.clone();
            let data = tokio::task::spawn_blocking(move || o.read_extent(i))
                .await
                .map_err(|e| BackupError::Invalid(format!("overlay reader: {e}")))?
                .map_err(|e| BackupError::Invalid(format!("overlay extent {i}: {e}")))?;
            let run = Run {
                first: i,
                count: 1,
                zero: false,
            };
            let (lba, n) = self.lbas(run);
            let bytes = u64::from(n) * u64::from(self.m.lun.block_size);
            if data.iter().all(|&b| b == 0) {
                self.zero(lba, n).await?;
                c.zeroed += bytes;
            } else {
                self.s
                    .write16(self.lun, lba, &data, self.m.lun.block_size, false)
                    .await
                    .map_err(|e| {
                        BackupError::Invalid(format!(
                            "{e}; the overlay's extents from LBA {lba} on are not known to be written"
                        ))
                    })?;
                c.written += bytes;
            }
            progress.add(bytes);
        }
        Ok(c)
    }

    /// Make `blocks` from `lba` read as zeros.
    async fn zero(&self, lba: u64, blocks: u32) -> Result<()> {
        let bs = self.m.lun.block_size;
        if self.write_same.load(Ordering::Relaxed) {
            match write_same_unmap(&self.s, self.lun, lba, blocks, bs).await {
                Ok(()) => return Ok(()),
                // ILLEGAL REQUEST: no WRITE SAME(16) or no UNMAP bit here.
                Err(e) if e.sense_code().is_some_and(|s| s.0 == 0x05) => {
                    self.write_same.store(false, Ordering::Relaxed);
                }
                Err(e) => return Err(e.into()),
            }
        }
        let step = ((1u64 << 20) / u64::from(bs)).max(1) as u32;
        let zeros = vec![0u8; step as usize * bs as usize];
        let mut at = 0;
        while at < blocks {
            let n = step.min(blocks - at);
            let len = n as usize * bs as usize;
            self.s
                .write16(self.lun, lba + u64::from(at), &zeros[..len], bs, false)
                .await?;
            at += n;
        }
        Ok(())
    }

    /// The extents of `runs` read back: how many differ from the backup.
    pub async fn count_mismatches(&self, runs: &[Run]) -> Result<u64> {
        let mut bad = 0;
        for r in runs {
            let (l, n) = self.lbas(*r);
            let cur = self.s.read16(self.lun, l, n, self.m.lun.block_size).await?;
            let (repo, m, r) = (self.repo.clone(), self.m.clone(), *r);
            bad += tokio::task::spawn_blocking(move || {
                let mut at = 0;
                let mut bad = 0;
                for i in r.first..r.first + r.count {
                    let len = m.lun.extent_bytes(i);
                    if !extent_matches(&repo, &m, i, &cur[at..at + len]) {
                        bad += 1;
                    }
                    at += len;
                }
                bad
            })
            .await
            .map_err(|e| BackupError::Invalid(format!("verify worker: {e}")))?;
        }
        Ok(bad)
    }
}

/// WRITE SAME(16) with the UNMAP bit and one zero block.
async fn write_same_unmap(
    s: &Session,
    lun: u64,
    lba: u64,
    blocks: u32,
    bs: u32,
) -> std::result::Result<(), InitiatorError> {
    let mut cdb = [0u8; 16];
    cdb[0] = 0x93;
    cdb[1] = 0x08;
    cdb[2..10].copy_from_slice(&lba.to_be_bytes());
    cdb[10..14].copy_from_slice(&blocks.to_be_bytes());
    let block = vec![0u8; bs as usize];
    s.scsi(lun, &cdb, Some(&block), 0).await?.good().map(drop)
}
