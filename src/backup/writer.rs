//! Writing chunks into packs behind the backup's reads.
//!
//! `Repo::put_extent` must return a chunk's id at once (the pass records
//! it in the image), but compressing, encrypting, appending and the
//! fsync of a full pack need not hold up the READ that brought the data:
//! the pass keeps a slot of its in-flight limit until `put_extent`
//! returns. So `put_extent` only hashes and queues; a few writer threads
//! do the rest. A job is a batch (the new chunks of one READ), so a
//! writer wakes once per batch and appends it with one writev. The queue
//! is bounded (memory stays small and a slow disk slows the reads, as it
//! must). The open pack has its own lock, so a writer waiting on the disk
//! never holds up the hashing threads' look-ups in `WriteState`. The
//! first error is kept and returned by the next `put_extent` and by
//! `flush`, so nothing is published after a failed write.

use super::format::Codec;
use super::index::Loc;
use super::pack::PackWriter;
use super::repo::loc_of;
use super::{BackupError, Result};
use bytes::Bytes;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

const WRITERS: usize = 2;
/// Batches queued at most (one READ's new chunks each, up to 1 MiB: a
/// few MiB in all).
const QUEUE: usize = 8;

pub(super) fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Chunks written by this process and not yet named by an index segment.
#[derive(Default)]
pub(super) struct WriteState {
    pub pending: HashMap<blake3::Hash, Loc>,
    /// Accepted by `put_extent`, not yet appended to a pack.
    pub queued: HashSet<blake3::Hash>,
    pub dirty_dirs: BTreeSet<PathBuf>,
}

/// What the writer threads share with the repository.
pub(super) struct Store {
    pub codec: Arc<Codec>,
    pub state: Mutex<WriteState>,
    /// The pack being filled.
    pub pack: Mutex<Option<PackWriter>>,
    pub tmp: PathBuf,
    pub packs: PathBuf,
    pub pack_bytes: u64,
}

impl Store {
    /// Encode (outside any lock: the writers compress in parallel) and
    /// append a batch of chunks; a pack that is full is finished
    /// (trailer, fsync, rename) outside the locks.
    fn write_batch(&self, job: Job) -> Result<()> {
        let blobs: Vec<_> = job
            .into_iter()
            .map(|(id, data)| {
                let n = data.len();
                (id, self.codec.encode_chunk_parts(&id, data), n)
            })
            .collect();
        let (pid, entries, full) = {
            let mut slot = locked(&self.pack);
            if slot.is_none() {
                *slot = Some(PackWriter::create(&self.tmp)?);
            }
            let p = slot.as_mut().expect("just made");
            let entries = p.append_blobs(&blobs)?;
            let (pid, full) = (p.id, p.bytes() >= self.pack_bytes);
            (pid, entries, if full { slot.take() } else { None })
        };
        {
            let mut w = locked(&self.state);
            for e in &entries {
                w.queued.remove(&e.id);
                w.pending.insert(e.id, loc_of(pid, e));
            }
        }
        match full {
            Some(p) => self.finish_pack(p),
            None => Ok(()),
        }
    }

    pub fn finish_pack(&self, p: PackWriter) -> Result<()> {
        let (_, _, dir) = p.finish(&self.codec, &self.packs)?;
        locked(&self.state).dirty_dirs.insert(dir);
        Ok(())
    }
}

#[derive(Default)]
struct Progress {
    in_flight: usize,
    error: Option<BackupError>,
    /// The first error's text, for every later `submit`.
    failed: Option<String>,
}

/// New chunks of one READ, each already registered in `queued`.
pub(super) type Job = Vec<(blake3::Hash, Bytes)>;

#[derive(Default)]
pub(super) struct Pipeline {
    tx: Mutex<Option<SyncSender<Job>>>,
    workers: Mutex<Vec<JoinHandle<()>>>,
    progress: Arc<(Mutex<Progress>, Condvar)>,
}

impl Pipeline {
    /// Queue chunks the caller already registered in `queued`.
    pub fn submit(&self, store: &Arc<Store>, job: Job) -> Result<()> {
        if let Some(why) = &locked(&self.progress.0).failed {
            return Err(BackupError::Invalid(format!(
                "an earlier chunk write failed: {why}"
            )));
        }
        let tx = {
            let mut tx = locked(&self.tx);
            if tx.is_none() {
                *tx = Some(self.start(store));
            }
            tx.clone().expect("just started")
        };
        locked(&self.progress.0).in_flight += 1;
        if tx.send(job).is_err() {
            self.done(Err(BackupError::Invalid(
                "the chunk writers stopped".into(),
            )));
        }
        Ok(())
    }

    fn start(&self, store: &Arc<Store>) -> SyncSender<Job> {
        let (tx, rx) = sync_channel::<Job>(QUEUE);
        let rx = Arc::new(Mutex::new(rx));
        let mut workers = locked(&self.workers);
        for _ in 0..WRITERS {
            let (store, rx, progress) = (store.clone(), rx.clone(), self.progress.clone());
            workers.push(std::thread::spawn(move || work(&store, &rx, &progress)));
        }
        tx
    }

    fn done(&self, r: Result<()>) {
        finish_one(&self.progress, r);
    }

    /// Wait until every queued chunk is appended; the first error, if any.
    pub fn wait(&self) -> Result<()> {
        let (m, cv) = &*self.progress;
        let mut p = locked(m);
        while p.in_flight > 0 {
            p = cv.wait(p).unwrap_or_else(|e| e.into_inner());
        }
        match p.error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Stop the writers (after `wait`, or dropping what is queued).
    pub fn shutdown(&self) {
        locked(&self.tx).take();
        for h in locked(&self.workers).drain(..) {
            let _ = h.join();
        }
    }
}

fn finish_one(progress: &(Mutex<Progress>, Condvar), r: Result<()>) {
    let mut p = locked(&progress.0);
    if let Err(e) = r
        && p.failed.is_none()
    {
        p.failed = Some(e.to_string());
        p.error = Some(e);
    }
    p.in_flight -= 1;
    progress.1.notify_all();
}

fn work(store: &Store, rx: &Mutex<Receiver<Job>>, progress: &(Mutex<Progress>, Condvar)) {
    loop {
        let job = locked(rx).recv();
        let Ok(job) = job else { return };
        // A panic must still count the job done, or `wait` would hang.
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| store.write_batch(job)))
            .unwrap_or_else(|_| Err(BackupError::Invalid("a chunk writer panicked".into())));
        finish_one(progress, r);
    }
}
