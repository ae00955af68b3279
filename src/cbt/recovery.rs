//! Opening a persistent tracker (create, clean restart, crash recovery),
//! checkpoints and clean shutdown.

use std::fs;
use std::io;
use std::path::Path;
use std::sync::atomic::Ordering::SeqCst;

use super::intent::Durable;
use super::map::{CHUNK_SHIFT, REGION_SHIFT};
use super::persist::{self, Corrupt, HIGH_WATER_SLACK, LogContents, Meta, Snapshot};
use super::tracker::wait_until;
use super::{CbtError, Tracker};

/// Regions logged in one epoch after which a checkpoint is worth it.
const CHECKPOINT_REGIONS: u64 = 4096;

/// What was found on disk for a readable tracking directory.
struct Found {
    meta: Meta,
    snapshot: Option<Snapshot>,
    /// Every intent log with its epoch.
    logs: Vec<(u64, LogContents)>,
}

fn load(dir: &Path) -> Result<Option<Found>, Corrupt> {
    let Some(meta) = persist::read_meta(dir)? else {
        let leftovers = persist::list_logs(dir)
            .map(|l| !l.is_empty())
            .unwrap_or(true)
            || dir.join("snapshot").exists();
        return if leftovers {
            Err(Corrupt("meta missing but tracking files exist".into()))
        } else {
            Ok(None)
        };
    };
    let snapshot = persist::read_snapshot(dir, &meta.uuid)?;
    let epochs = persist::list_logs(dir).map_err(|e| Corrupt(format!("listing logs: {e}")))?;
    let mut logs = Vec::new();
    for epoch in epochs {
        logs.push((epoch, persist::read_log(dir, &meta.uuid, epoch)?));
    }
    Ok(Some(Found {
        meta,
        snapshot,
        logs,
    }))
}

impl Tracker {
    /// Create or recover the persistent tracker kept in `dir` (for example
    /// `<data_dir>/lun0.cbt/`). A larger `capacity_blocks` than recorded is
    /// a grow; a smaller one or another extent size starts afresh with a
    /// new UUID (appliances then do one full pass).
    pub fn open(dir: &Path, capacity_blocks: u64, extent_blocks: u32) -> Result<Tracker, CbtError> {
        fs::create_dir_all(dir)?;
        // The directory's own name must be durable before anything in it
        // is promised: fsyncing the files inside does not make a new
        // directory's entry durable, and a power cut that loses it loses
        // meta with it — a new UUID, a full backup (tests/power_loss.rs).
        crate::durable::sync_parent(dir)?;
        let found = match load(dir) {
            Ok(found) => found,
            Err(Corrupt(why)) => {
                tracing::error!(
                    "CBT metadata in {} unreadable ({why}): starting with a new tracking UUID, \
                     backups of this LUN need a full pass",
                    dir.display()
                );
                None
            }
        };
        let found = found.filter(|f| {
            let same = f.meta.extent_blocks == extent_blocks && f.meta.capacity <= capacity_blocks;
            if !same {
                tracing::warn!(
                    "CBT in {}: extent size or capacity shrank; new tracking UUID",
                    dir.display()
                );
            }
            same
        });
        let tracker = match found {
            Some(found) => Self::restart(dir, found)?,
            None => Self::fresh(dir, capacity_blocks, extent_blocks)?,
        };
        tracker.checkpoint()?;
        tracker.grow(capacity_blocks)?;
        Ok(tracker)
    }

    fn fresh(dir: &Path, capacity: u64, extent_blocks: u32) -> Result<Tracker, CbtError> {
        remove_tracking_files(dir)?;
        let meta = Meta {
            uuid: rand::random(),
            extent_blocks,
            capacity,
            high_water: 1 + HIGH_WATER_SLACK,
            open: 1,
            recovery_gen: 0,
            clean: false,
        };
        persist::write_meta(dir, &meta)?;
        let durable = Durable::new(dir.to_path_buf(), 0, meta.clone());
        Self::build(meta.uuid, capacity, extent_blocks, 1, Some(durable))
    }

    fn restart(dir: &Path, found: Found) -> Result<Tracker, CbtError> {
        let Found {
            mut meta,
            snapshot,
            logs,
        } = found;
        let snap_epoch = snapshot.as_ref().map_or(0, |s| s.epoch);
        let last_epoch = logs
            .iter()
            .map(|(e, _)| *e)
            .max()
            .unwrap_or(0)
            .max(snap_epoch);
        let recovery = (!meta.clean).then_some(meta.high_water + 1);
        let open = recovery.unwrap_or(meta.open);
        meta.recovery_gen = recovery.unwrap_or(meta.recovery_gen);
        meta.high_water = open + HIGH_WATER_SLACK;
        meta.open = open;
        meta.clean = false;
        // Durable before any generation of this run is used or stamped.
        persist::write_meta(dir, &meta)?;
        let durable = Durable::new(dir.to_path_buf(), last_epoch, meta.clone());
        let mut t = Self::build(
            meta.uuid,
            meta.capacity,
            meta.extent_blocks,
            open,
            Some(durable),
        )?;
        t.recovery_gen = meta.recovery_gen;
        for chunk in snapshot.iter().flat_map(|s| &s.chunks) {
            t.load_chunk(chunk.index, &chunk.gens, chunk.dealloc);
        }
        if let Some(r) = recovery {
            t.recovered = true;
            let live = || {
                logs.iter()
                    .filter(|(e, _)| *e >= snap_epoch)
                    .map(|(_, l)| l)
            };
            let mut dirty: Vec<u64> = live().flat_map(|l| l.regions.iter().copied()).collect();
            if live().any(|l| l.damaged) {
                // Which regions the damaged records named is unknown: every
                // extent may have changed (a full pass, but the same UUID).
                tracing::error!(
                    "CBT in {}: damaged intent log; marking the whole LUN",
                    dir.display()
                );
                let extents = t.capacity_blocks().div_ceil(u64::from(t.extent_blocks()));
                dirty = (0..extents.div_ceil(1 << REGION_SHIFT)).collect();
            }
            tracing::warn!(
                "CBT in {}: unclean stop; {} logged regions stamped with recovery generation {r}",
                dir.display(),
                dirty.len()
            );
            for region in dirty {
                t.stamp_recovered(region, r);
            }
        }
        Ok(t)
    }

    fn load_chunk(&self, index: u64, gens: &[u64], dealloc: u64) {
        let first = index << CHUNK_SHIFT;
        let cap_extents = self
            .capacity_blocks()
            .div_ceil(u64::from(self.extent_blocks()));
        if first >= cap_extents {
            return;
        }
        let max = gens.iter().copied().max().unwrap_or(0);
        if max == 0 {
            return;
        }
        let chunk = self.map.chunk(index, max);
        for (i, &g) in gens.iter().enumerate() {
            if g != 0 {
                chunk.raise(i, g);
            }
        }
        chunk.dealloc.store(dealloc, SeqCst);
    }

    /// Every extent of `region` may have changed after its durable record.
    fn stamp_recovered(&self, region: u64, r: u64) {
        let cap_extents = self
            .capacity_blocks()
            .div_ceil(u64::from(self.extent_blocks()));
        let first = region << REGION_SHIFT;
        let end = ((region + 1) << REGION_SHIFT).min(cap_extents);
        if first >= end {
            return;
        }
        self.map.stamp(first, end, r);
        let mut ci = first >> CHUNK_SHIFT;
        while ci << CHUNK_SHIFT < end {
            if let Some(chunk) = self.map.chunk_if_present(ci) {
                chunk.dealloc.store(0, SeqCst);
            }
            ci += 1;
        }
    }

    /// Write every generation to the snapshot and retire the intent logs.
    /// Safe with concurrent writers; a no-op for volatile trackers.
    pub fn checkpoint(&self) -> Result<(), CbtError> {
        self.checkpoint_with(|| Ok(()))
    }

    /// Like [`checkpoint`](Self::checkpoint), calling `flush` (the backend's
    /// flush) after the old epoch's changes drained and before the logs that
    /// cover them are dropped: with a volatile write cache, data of those
    /// changes must be durable before their intents are forgotten.
    pub fn checkpoint_with(&self, flush: impl FnOnce() -> io::Result<()>) -> Result<(), CbtError> {
        let Some(d) = &self.durable else {
            return Ok(());
        };
        let _only_one = d.checkpoint_lock.lock().unwrap_or_else(|e| e.into_inner());
        let next = d.epoch.load(SeqCst) + 1;
        // The new log exists before any writer can pick the new epoch.
        d.log.open_epoch(&d.dir, &self.uuid, next)?;
        {
            let _phase = self.phase_lock.lock().unwrap_or_else(|e| e.into_inner());
            d.epoch.store(next, SeqCst);
            // Changes that may have logged in the old epoch finish before the
            // snapshot reads their stamps; later ones log in `next`.
            self.bump_phase_and_drain();
        }
        flush()?;
        persist::write_snapshot(&d.dir, &self.uuid, next, &self.map)?;
        d.log.retire_below(&d.dir, next)?;
        Ok(())
    }

    /// True when enough regions were logged since the last checkpoint that
    /// a crash would over-report noticeably (callers also checkpoint on a
    /// timer).
    pub fn needs_checkpoint(&self) -> bool {
        self.durable
            .as_ref()
            .is_some_and(|d| d.log.logged() >= CHECKPOINT_REGIONS)
    }

    /// Clean shutdown: refuse new changes, wait for those in flight,
    /// checkpoint and mark the directory clean (nothing to recover).
    pub fn shutdown(&self) -> Result<(), CbtError> {
        self.shut.store(true, SeqCst);
        wait_until(None, || self.in_flight() == 0);
        let Some(d) = &self.durable else {
            return Ok(());
        };
        self.checkpoint()?;
        let _phase = self.phase_lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut meta = d.meta();
        let mut next = meta.clone();
        next.open = self.open.load(SeqCst);
        next.clean = true;
        persist::write_meta(&d.dir, &next)?;
        *meta = next;
        Ok(())
    }
}

fn remove_tracking_files(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let ours =
            name.starts_with("intent.") || name.starts_with("snapshot") || name.starts_with("meta");
        if ours {
            fs::remove_file(entry.path())?;
        }
    }
    crate::durable::sync_dir(dir)
}
