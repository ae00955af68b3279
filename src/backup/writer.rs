//! Writing chunks into packs behind the backup's reads.
//!
//! `Repo::put_extent` must return a chunk's id at once (the pass records
//! it in the image), but compressing, encrypting, appending and the
//! fsync of a full pack need not hold up the READ that brought the data:
//! the pass keeps a slot of its in-flight limit until `put_extent`
//! returns. So `put_extent` only hashes and queues; a few writer threads
//! do the rest. The queue is bounded (memory stays small and a slow disk
//! slows the reads, as it must). The first error is kept and returned by
//! the next `put_extent` and by `flush`, so nothing is published after a
//! failed write.

use super::format::Codec;
use super::index::Loc;
use super::pack::PackWriter;
use super::repo::loc_of;
use super::{BackupError, Result};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

const WRITERS: usize = 2;
/// Chunks queued at most (x 64 KiB extents: a few MiB).
const QUEUE: usize = 32;

pub(super) fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Chunks written by this process and not yet named by an index segment.
#[derive(Default)]
pub(super) struct WriteState {
    pub pack: Option<PackWriter>,
    pub pending: HashMap<blake3::Hash, Loc>,
    /// Accepted by `put_extent`, not yet appended to a pack.
    pub queued: HashSet<blake3::Hash>,
    pub dirty_dirs: BTreeSet<PathBuf>,
}

/// What the writer threads share with the repository.
pub(super) struct Store {
    pub codec: Arc<Codec>,
    pub state: Mutex<WriteState>,
    pub tmp: PathBuf,
    pub packs: PathBuf,
    pub pack_bytes: u64,
}

impl Store {
    /// Encode and append one chunk; a pack that is full is finished
    /// (trailer, fsync, rename) outside the lock.
    fn write_chunk(&self, id: blake3::Hash, data: &[u8]) -> Result<()> {
        let blob = self.codec.encode_chunk(&id, data);
        let full = {
            let mut w = locked(&self.state);
            if w.pack.is_none() {
                w.pack = Some(PackWriter::create(&self.tmp)?);
            }
            let p = w.pack.as_mut().expect("just made");
            let e = p.append(id, &blob, data.len())?;
            let (pid, full) = (p.id, p.bytes() >= self.pack_bytes);
            w.queued.remove(&id);
            w.pending.insert(id, loc_of(pid, &e));
            if full { w.pack.take() } else { None }
        };
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

type Job = (blake3::Hash, Vec<u8>);

#[derive(Default)]
pub(super) struct Pipeline {
    tx: Mutex<Option<SyncSender<Job>>>,
    workers: Mutex<Vec<JoinHandle<()>>>,
    progress: Arc<(Mutex<Progress>, Condvar)>,
}

impl Pipeline {
    /// Queue a chunk the caller already registered in `queued`.
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
        let Ok((id, data)) = job else { return };
        // A panic must still count the job done, or `wait` would hang.
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            store.write_chunk(id, &data)
        }))
        .unwrap_or_else(|_| Err(BackupError::Invalid("a chunk writer panicked".into())));
        finish_one(progress, r);
    }
}
