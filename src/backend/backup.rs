//! An instant-restore LUN: a backup served straight from its repository.
//!
//! Opening reads only the repository's config, index and the backup's
//! manifest (and takes the repository's shared lock, held as long as the
//! backend lives, so prune and gc cannot delete its chunks). Reads fetch
//! chunks from packs on demand through a bounded [`ChunkCache`]; zero
//! extents are markers and cost no I/O; a sequential reader gets
//! read-ahead on two background threads. A chunk that is missing or fails
//! its check fails the read (the device server answers MEDIUM ERROR),
//! never returns other data.
//!
//! Writable LUNs write into an [`Overlay`]; the repository is never
//! modified.

use super::chunk_cache::ChunkCache;
use super::overlay::{Overlay, OverlayOwner};
use super::{Backend, check_range};
use crate::backup::crypto::KeySource;
use crate::backup::lock::LockMode;
use crate::backup::{BackupError, ExtentRef, Repo, RepoOptions, repo::parse_id};
use std::io;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex, Weak};

/// Bytes read ahead of a sequential reader (at most a quarter of the cache).
const READ_AHEAD_BYTES: u64 = 8 << 20;
const READ_AHEAD_THREADS: usize = 2;

/// What to serve.
#[derive(Debug, Clone)]
pub struct InstantOptions {
    pub repository: PathBuf,
    pub backup: String,
    pub key: Option<KeySource>,
    /// Most bytes of decoded chunks kept in memory.
    pub cache_bytes: u64,
    /// Where writes go; `None`: the LUN is read-only.
    pub overlay: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum InstantError {
    #[error("repository {}: {source}", path.display())]
    Repo { path: PathBuf, source: BackupError },
    #[error("overlay {}: {source}", path.display())]
    Overlay { path: PathBuf, source: io::Error },
}

struct Inner {
    repo: Repo,
    /// Per extent: its chunk, or `None` for zeros.
    chunks: Vec<Option<blake3::Hash>>,
    extent: u64,
    size: u64,
    cache: ChunkCache,
    overlay: Option<Arc<Overlay>>,
}

pub struct BackupBackend {
    inner: Arc<Inner>,
    block_size: u32,
    describe: String,
    ahead: ReadAhead,
}

impl BackupBackend {
    pub fn open(o: &InstantOptions) -> Result<BackupBackend, InstantError> {
        let repo_err = |source| InstantError::Repo {
            path: o.repository.clone(),
            source,
        };
        let repo = Repo::open_with(
            &o.repository,
            &RepoOptions {
                lock: Some(LockMode::Shared),
                command: format!("instant-restore LUN of backup {}", o.backup),
                key: o.key.clone(),
                ..Default::default()
            },
        )
        .map_err(repo_err)?;
        let m = repo.load(&o.backup).map_err(repo_err)?;
        repo.check_indexed(&m).map_err(repo_err)?;
        let chunks = m
            .extents
            .iter()
            .map(|e| match e {
                ExtentRef::Zero => Ok(None),
                ExtentRef::Blake3(h) => parse_id(h).map(Some),
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(repo_err)?;
        let extent = u64::from(m.lun.extent_blocks) * u64::from(m.lun.block_size);
        let size = m.lun.logical_bytes();
        let overlay = match &o.overlay {
            None => None,
            Some(p) => {
                let owner = OverlayOwner {
                    backup: format!("{}/{}", repo.config().id, o.backup),
                    size,
                    extent,
                };
                let ov = Overlay::open(p, &owner).map_err(|source| InstantError::Overlay {
                    path: p.clone(),
                    source,
                })?;
                Some(ov)
            }
        };
        let describe = format!(
            "backup:{}@{}{}",
            o.repository.display(),
            o.backup,
            overlay
                .as_ref()
                .map_or(String::new(), |ov| format!(" + overlay {}", ov.describe()))
        );
        let inner = Arc::new(Inner {
            repo,
            chunks,
            extent,
            size,
            cache: ChunkCache::new(o.cache_bytes),
            overlay,
        });
        let window = (READ_AHEAD_BYTES.min(o.cache_bytes / 4) / extent).max(1);
        Ok(BackupBackend {
            ahead: ReadAhead::start(&inner, window),
            inner,
            block_size: m.lun.block_size,
            describe,
        })
    }

    /// The backup's block size.
    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    /// Extents written into the overlay (0 when read-only).
    pub fn overlay_extents(&self) -> u64 {
        self.inner
            .overlay
            .as_ref()
            .map_or(0, |o| o.extents_present())
    }

    fn overlay(&self) -> io::Result<&Overlay> {
        super::check_writable(self.inner.overlay.is_none())?;
        Ok(self.inner.overlay.as_deref().expect("checked"))
    }

    /// Apply a change (data, or zeros) extent by extent through the overlay.
    fn change(&self, offset: u64, len: u64, data: Option<&[u8]>) -> io::Result<()> {
        let ov = self.overlay()?;
        check_range(offset, len, self.inner.size)?;
        let base = |idx| self.inner.extent_data(idx);
        for (idx, _, pos, n) in self.inner.pieces(offset, len) {
            let piece = data.map(|d| &d[pos as usize..(pos + n) as usize]);
            ov.change(idx, offset + pos, n, piece, &base)?;
        }
        Ok(())
    }
}

impl Inner {
    /// (extent, offset inside it, position in the caller's range, length).
    fn pieces(&self, offset: u64, len: u64) -> impl Iterator<Item = (u64, u64, u64, u64)> {
        let extent = self.extent;
        let mut pos = 0;
        std::iter::from_fn(move || {
            if pos >= len {
                return None;
            }
            let abs = offset + pos;
            let inner = abs % extent;
            let n = (extent - inner).min(len - pos);
            let item = (abs / extent, inner, pos, n);
            pos += n;
            Some(item)
        })
    }

    fn extent_len(&self, idx: u64) -> usize {
        self.extent.min(self.size - idx * self.extent) as usize
    }

    /// A chunk from its pack, checked against its extent's length.
    fn load(&self, idx: u64, id: &blake3::Hash) -> Result<Vec<u8>, BackupError> {
        let data = self.repo.get_chunk_id(id)?;
        if data.len() != self.extent_len(idx) {
            return Err(BackupError::Corrupt {
                what: format!("chunk {}", id.to_hex()),
                why: format!(
                    "{} bytes for an extent of {}",
                    data.len(),
                    self.extent_len(idx)
                ),
            });
        }
        Ok(data)
    }

    /// The backup's chunk of extent `idx`; `None` for a zero extent.
    fn chunk(&self, idx: u64) -> io::Result<Option<Arc<[u8]>>> {
        let Some(id) = self.chunks[idx as usize] else {
            return Ok(None);
        };
        self.cache
            .get(&id, || self.load(idx, &id))
            .map(Some)
            .map_err(|e| io::Error::other(format!("extent {idx}: {e}")))
    }

    /// The backup's content of extent `idx` (for a copy-up).
    fn extent_data(&self, idx: u64) -> io::Result<Vec<u8>> {
        Ok(match self.chunk(idx)? {
            Some(c) => c.to_vec(),
            None => vec![0; self.extent_len(idx)],
        })
    }

    fn prefetch(&self, idx: u64) {
        let Some(Some(id)) = self.chunks.get(idx as usize) else {
            return;
        };
        if self.overlay.as_ref().is_some_and(|o| o.present(idx)) {
            return;
        }
        self.cache.prefetch(id, || self.load(idx, id));
    }
}

impl Backend for BackupBackend {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let inner = &self.inner;
        check_range(offset, buf.len() as u64, inner.size)?;
        let mut last = None;
        for (idx, at, pos, n) in inner.pieces(offset, buf.len() as u64) {
            let dst = &mut buf[pos as usize..(pos + n) as usize];
            last = Some(idx);
            if let Some(ov) = inner.overlay.as_ref().filter(|o| o.present(idx)) {
                ov.read(offset + pos, dst)?;
                continue;
            }
            match inner.chunk(idx)? {
                Some(c) => dst.copy_from_slice(&c[at as usize..(at + n) as usize]),
                None => dst.fill(0),
            }
        }
        if let Some(last) = last {
            self.ahead.note(offset / inner.extent, last);
        }
        Ok(())
    }

    fn write_at(&self, offset: u64, buf: &[u8], fua: bool) -> io::Result<()> {
        self.change(offset, buf.len() as u64, Some(buf))?;
        if fua {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        match &self.inner.overlay {
            Some(o) => o.flush(),
            None => Ok(()),
        }
    }

    fn unmap(&self, offset: u64, len: u64) -> io::Result<()> {
        self.change(offset, len, None)
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        self.change(offset, len, None)
    }

    /// The backup's thin-provisioning view: a zero extent (a marker in
    /// the manifest, no chunk) is deallocated, a chunk's extent mapped; an
    /// extent written into the overlay is as the overlay file has it.
    fn allocation(&self, offset: u64, len: u64, max_runs: usize) -> io::Result<Vec<(u64, bool)>> {
        let inner = &self.inner;
        check_range(offset, len, inner.size)?;
        let mut runs = Vec::new();
        for (idx, _, pos, n) in inner.pieces(offset, len) {
            match inner.overlay.as_ref().filter(|o| o.present(idx)) {
                Some(ov) => {
                    let mut covered = 0;
                    for (l, mapped) in ov.allocation(offset + pos, n, max_runs)? {
                        super::push_run(&mut runs, l, mapped);
                        covered += l;
                    }
                    // A map cut short: the rest may hold data.
                    super::push_run(&mut runs, n.saturating_sub(covered), true);
                }
                None => super::push_run(&mut runs, n, inner.chunks[idx as usize].is_some()),
            }
            if runs.len() > max_runs {
                // The last run may not be complete yet: leave it out.
                runs.truncate(max_runs.max(1));
                break;
            }
        }
        Ok(runs)
    }

    fn size(&self) -> u64 {
        self.inner.size
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }
}

/// Read-ahead: a reader whose reads follow each other gets the next
/// `window` extents loaded into the cache by background threads.
struct ReadAhead {
    tx: Sender<u64>,
    /// (furthest extent read, extents queued up to).
    pos: Mutex<(u64, u64)>,
    window: u64,
    extents: u64,
}

impl ReadAhead {
    fn start(inner: &Arc<Inner>, window: u64) -> ReadAhead {
        let (tx, rx) = channel();
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..READ_AHEAD_THREADS {
            let (rx, weak) = (rx.clone(), Arc::downgrade(inner));
            let _ = std::thread::Builder::new()
                .name("instant-readahead".into())
                .spawn(move || prefetch_loop(&rx, &weak));
        }
        ReadAhead {
            tx,
            pos: Mutex::new((0, 0)),
            window,
            extents: inner.chunks.len() as u64,
        }
    }

    /// A read covered extents `first..=last`.
    fn note(&self, first: u64, last: u64) {
        let mut p = self.pos.lock().unwrap_or_else(|e| e.into_inner());
        let (seen, queued) = *p;
        let near = first + 2 * self.window >= seen && first <= seen + 2;
        if !near {
            *p = (last, last + 1);
            return;
        }
        let from = queued.max(last + 1);
        let to = (last + 1 + self.window).min(self.extents);
        for idx in from..to {
            let _ = self.tx.send(idx);
        }
        *p = (seen.max(last), queued.max(to));
    }
}

fn prefetch_loop(rx: &Mutex<Receiver<u64>>, inner: &Weak<Inner>) {
    loop {
        let next = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
        let (Ok(idx), Some(inner)) = (next, inner.upgrade()) else {
            return;
        };
        inner.prefetch(idx);
    }
}
