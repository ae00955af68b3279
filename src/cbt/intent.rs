//! The write-ahead intent log (group commit) and the persistent side of a
//! tracker: epochs, high-water mark, capacity.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use super::map::ExtentMap;
use super::persist::{
    HIGH_WATER_SLACK, LOG_HEADER_LEN, LOG_MAGIC, Meta, list_logs, log_name, record_crc, write_meta,
};
use crate::durable::sync_dir;

#[derive(Default)]
struct LogState {
    files: Vec<(u64, Arc<File>)>,
    pending: Vec<(u64, u64)>,
    next_ticket: u64,
    durable_ticket: u64,
    leader: bool,
    /// After a failed write or fsync nothing more can be promised.
    broken: Option<String>,
    logged: u64,
}

/// Append-only intent logs with leader/follower group commit: whoever finds
/// no leader writes and fsyncs everything pending, the others wait.
#[derive(Default)]
pub(crate) struct IntentLog {
    state: Mutex<LogState>,
    cv: Condvar,
}

impl IntentLog {
    fn lock(&self) -> MutexGuard<'_, LogState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Create the (empty, durable) log of `epoch` so writers can use it.
    pub(crate) fn open_epoch(&self, dir: &Path, uuid: &[u8; 16], epoch: u64) -> io::Result<()> {
        let path = dir.join(log_name(epoch));
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(path)?;
        let mut h = Vec::with_capacity(LOG_HEADER_LEN);
        h.extend_from_slice(LOG_MAGIC);
        h.extend_from_slice(uuid);
        h.extend_from_slice(&epoch.to_le_bytes());
        h.extend_from_slice(&crc32c::crc32c(&h).to_le_bytes());
        file.write_all(&h)?;
        file.sync_all()?;
        sync_dir(dir)?;
        let mut st = self.lock();
        st.files.push((epoch, Arc::new(file)));
        st.logged = 0;
        Ok(())
    }

    /// Make `regions` durable in the log of `epoch`; returns once they are.
    pub(crate) fn append(&self, epoch: u64, regions: &[u64]) -> io::Result<()> {
        let mut st = self.lock();
        st.pending.extend(regions.iter().map(|&r| (epoch, r)));
        st.next_ticket += 1;
        let ticket = st.next_ticket;
        loop {
            if st.durable_ticket >= ticket {
                return Ok(());
            }
            if let Some(why) = &st.broken {
                return Err(io::Error::other(why.clone()));
            }
            if st.leader {
                st = self.cv.wait(st).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            st.leader = true;
            let batch = std::mem::take(&mut st.pending);
            let upto = st.next_ticket;
            let files = st.files.clone();
            drop(st);
            let res = write_batch(&files, &batch);
            st = self.lock();
            st.leader = false;
            match res {
                Ok(()) => {
                    st.durable_ticket = upto;
                    st.logged += batch.len() as u64;
                }
                Err(BatchError::RolledBack(e)) => {
                    tracing::warn!("CBT intent log write failed (rolled back): {e}");
                    // Nothing of the batch is known durable: its regions
                    // wait for the next leader (the other changes in it
                    // retry), and this change is refused with the cause
                    // (ENOSPC stays ENOSPC, so the SCSI layer can say so).
                    st.pending.extend(batch);
                    self.cv.notify_all();
                    return Err(e);
                }
                Err(BatchError::Broken(e)) => {
                    tracing::error!("CBT intent log write failed: {e}");
                    st.broken = Some(e.to_string());
                }
            }
            self.cv.notify_all();
        }
    }

    /// Regions logged since the current epoch started.
    pub(crate) fn logged(&self) -> u64 {
        self.lock().logged
    }

    /// Close and delete every log older than `epoch`.
    pub(crate) fn retire_below(&self, dir: &Path, epoch: u64) -> io::Result<()> {
        self.lock().files.retain(|(e, _)| *e >= epoch);
        for e in list_logs(dir)? {
            if e < epoch {
                fs::remove_file(dir.join(log_name(e)))?;
            }
        }
        sync_dir(dir)
    }
}

/// How writing a batch failed.
enum BatchError {
    /// A write failed (out of space, say) and the log is back at its last
    /// record: nothing torn remains, a later append may succeed.
    RolledBack(io::Error),
    /// An fsync failed, or undoing a failed write did: nothing more can
    /// be promised.
    Broken(io::Error),
}

/// Append `buf` (whole records) to `file` and make it durable. A failed
/// write is cut off again: a torn record followed by later good ones
/// would end recovery's scan early and hide those.
fn append_records(file: &File, buf: &[u8]) -> Result<(), BatchError> {
    let mut f = file;
    let good = f.stream_position().map_err(BatchError::Broken)?;
    if let Err(e) = f.write_all(buf) {
        let undo = f.set_len(good).and_then(|()| f.seek(SeekFrom::Start(good)));
        return Err(match undo {
            Ok(_) => BatchError::RolledBack(e),
            Err(_) => BatchError::Broken(e),
        });
    }
    file.sync_data().map_err(BatchError::Broken)
}

fn write_batch(files: &[(u64, Arc<File>)], batch: &[(u64, u64)]) -> Result<(), BatchError> {
    for (epoch, file) in files {
        let mut buf = Vec::new();
        for &(_, region) in batch.iter().filter(|(e, _)| e == epoch) {
            buf.extend_from_slice(&region.to_le_bytes());
            buf.extend_from_slice(&record_crc(*epoch, region).to_le_bytes());
        }
        if !buf.is_empty() {
            append_records(file, &buf)?;
        }
    }
    if let Some((e, _)) = batch
        .iter()
        .find(|(e, _)| !files.iter().any(|(f, _)| f == e))
    {
        return Err(BatchError::Broken(io::Error::other(format!(
            "no intent log open for epoch {e}"
        ))));
    }
    Ok(())
}

/// The persistent side of a tracker.
pub(crate) struct Durable {
    pub(crate) dir: PathBuf,
    /// Current intent epoch; regions are (re)logged once per epoch.
    pub(crate) epoch: AtomicU64,
    pub(crate) log: IntentLog,
    pub(crate) meta: Mutex<Meta>,
    pub(crate) checkpoint_lock: Mutex<()>,
}

impl Durable {
    pub(crate) fn new(dir: PathBuf, epoch: u64, meta: Meta) -> Durable {
        Durable {
            dir,
            epoch: AtomicU64::new(epoch),
            log: IntentLog::default(),
            meta: Mutex::new(meta),
            checkpoint_lock: Mutex::new(()),
        }
    }

    pub(crate) fn meta(&self) -> MutexGuard<'_, Meta> {
        self.meta.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Log regions `[first, last]` not yet logged in the current epoch.
    /// Already-logged regions cost one load each and no allocation.
    pub(crate) fn log_regions(&self, map: &ExtentMap, first: u64, last: u64) -> io::Result<()> {
        let epoch = self.epoch.load(SeqCst);
        let mut missing = Vec::new();
        for r in first..=last {
            if map.region_epoch(r).load(SeqCst) < epoch {
                missing.push(r);
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        self.log.append(epoch, &missing)?;
        for r in missing {
            map.region_epoch(r).fetch_max(epoch, SeqCst);
        }
        Ok(())
    }

    /// Are regions `[first, last]` all logged in the current epoch (so a
    /// change to them would not wait for the disk)? Looks at a few only.
    pub(crate) fn all_logged(&self, map: &ExtentMap, first: u64, last: u64) -> bool {
        let epoch = self.epoch.load(SeqCst);
        last.saturating_sub(first) < 4
            && (first..=last).all(|r| map.region_epoch(r).load(SeqCst) >= epoch)
    }

    /// Persist `H >= need` before any generation up to `need` is used.
    pub(crate) fn ensure_high_water(&self, need: u64) -> io::Result<()> {
        let mut meta = self.meta();
        if meta.high_water < need {
            let mut next = meta.clone();
            next.high_water = need + HIGH_WATER_SLACK;
            write_meta(&self.dir, &next)?;
            *meta = next;
        }
        Ok(())
    }

    pub(crate) fn set_capacity(&self, capacity: u64) -> io::Result<()> {
        let mut meta = self.meta();
        let mut next = meta.clone();
        next.capacity = capacity;
        write_meta(&self.dir, &next)?;
        *meta = next;
        Ok(())
    }
}
