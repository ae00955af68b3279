//! The copy-on-write overlay of a writable instant-restore LUN.
//!
//! Two files: `PATH`, a sparse file of the LUN's size holding every extent
//! written since the overlay was made at its own offset (a [`FileBackend`]),
//! and `PATH.map`, a header naming the backup the overlay belongs to and a
//! bitmap of the extents that live in `PATH`. An extent is copied up whole
//! the first time a write touches part of it, so a present extent is
//! always complete in `PATH`.
//!
//! Durability: a bit reaches `PATH.map` only after the data it vouches for
//! was synced (flush: sync `PATH`, then write the bitmap pages that changed
//! and sync `PATH.map`), so after a crash the map never claims an extent
//! whose data is not there. FUA writes and SYNCHRONIZE CACHE flush.
//!
//! One overlay object per file in the process: a LUN redefined by reload
//! gets the running one (no second writer on the same files).

use super::{Backend, FileBackend};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

const MAGIC: &[u8; 8] = b"GTOVL1\n\0";
/// Header area of the map file; the bitmap follows.
const HEADER: u64 = 4096;
const PAGE: usize = 4096;
const STRIPES: usize = 64;

/// What an overlay belongs to: a change of any of these makes it useless.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayOwner {
    /// "<repository id>/<backup id>".
    pub backup: String,
    pub size: u64,
    pub extent: u64,
}

pub struct Overlay {
    data: FileBackend,
    map: File,
    map_path: PathBuf,
    owner: OverlayOwner,
    present: Vec<AtomicU64>,
    /// Extents marked present since the last flush.
    pending: Mutex<Vec<u64>>,
    /// The bitmap as on disk; held across a flush, which it serializes.
    on_disk: Mutex<Vec<u64>>,
    /// Copy-ups of one extent are serialized by its stripe.
    stripes: Vec<Mutex<()>>,
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn bad(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

static OPEN: Mutex<Vec<(PathBuf, Weak<Overlay>)>> = Mutex::new(Vec::new());

impl Overlay {
    /// Open the overlay at `path` (creating it when missing) for `owner`;
    /// the process's running one if it is open already.
    pub fn open(path: &Path, owner: &OverlayOwner) -> io::Result<Arc<Overlay>> {
        let mut open = locked(&OPEN);
        open.retain(|(_, w)| w.strong_count() > 0);
        let key = std::path::absolute(path)?;
        if let Some(o) = open
            .iter()
            .find(|(p, _)| *p == key)
            .and_then(|(_, w)| w.upgrade())
        {
            if o.owner != *owner {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("in use by a LUN of backup {}", o.owner.backup),
                ));
            }
            return Ok(o);
        }
        let o = Arc::new(Overlay::open_files(&key, owner)?);
        open.push((key, Arc::downgrade(&o)));
        Ok(o)
    }

    fn open_files(path: &Path, owner: &OverlayOwner) -> io::Result<Overlay> {
        let map_path = map_path(path);
        let extents = owner.size.div_ceil(owner.extent);
        let words = extents.div_ceil(64) as usize;
        let exists = map_path.exists();
        let data = FileBackend::open(path, owner.size, true, false)?;
        if !exists {
            create_map(&map_path, owner, words)?;
        }
        let map = OpenOptions::new().read(true).write(true).open(&map_path)?;
        // Held while the overlay is open: a second server, or a merge
        // (`gentgt restore --overlay`), must not use it meanwhile. The
        // kernel drops it when the process dies, so it never goes stale.
        lock_file(&map, libc::LOCK_EX).map_err(|_| {
            io::Error::new(
                io::ErrorKind::AlreadyExists,
                "in use by another process (a running gentgt serve?)",
            )
        })?;
        let bits = read_bitmap(&map, owner)?;
        Ok(Overlay {
            data,
            map,
            map_path,
            owner: owner.clone(),
            present: bits.iter().map(|&w| AtomicU64::new(w)).collect(),
            pending: Mutex::default(),
            on_disk: Mutex::new(bits),
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
        })
    }

    pub fn describe(&self) -> String {
        self.data.describe()
    }

    /// Does extent `idx` live in the overlay?
    pub fn present(&self, idx: u64) -> bool {
        let w = &self.present[(idx / 64) as usize];
        w.load(Ordering::Acquire) & (1 << (idx % 64)) != 0
    }

    /// Extents in the overlay now.
    pub fn extents_present(&self) -> u64 {
        let ones = |w: &AtomicU64| u64::from(w.load(Ordering::Relaxed).count_ones());
        self.present.iter().map(ones).sum()
    }

    fn mark(&self, idx: u64) {
        self.present[(idx / 64) as usize].fetch_or(1 << (idx % 64), Ordering::Release);
        locked(&self.pending).push(idx);
    }

    fn extent_len(&self, idx: u64) -> u64 {
        self.owner
            .extent
            .min(self.owner.size - idx * self.owner.extent)
    }

    /// Read a range that lies in one present extent.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.data.read_at(offset, buf)
    }

    /// Allocation map of a range inside present extents (the overlay
    /// file's holes: zeros written there may have been deallocated).
    pub fn allocation(&self, offset: u64, len: u64, max: usize) -> io::Result<Vec<(u64, bool)>> {
        self.data.allocation(offset, len, max)
    }

    /// Write `data` (zeros when `None`) at `offset` within extent `idx`,
    /// copying the extent up first (its content from `base`) if it is
    /// not in the overlay yet and the write covers only part of it.
    pub fn change(
        &self,
        idx: u64,
        offset: u64,
        len: u64,
        data: Option<&[u8]>,
        base: &dyn Fn(u64) -> io::Result<Vec<u8>>,
    ) -> io::Result<()> {
        let put = |off: u64, len: u64| match data {
            Some(d) => self.data.write_at(off, d, false),
            None => self.data.write_zeroes(off, len),
        };
        if self.present(idx) {
            return put(offset, len);
        }
        let _g = locked(&self.stripes[idx as usize % STRIPES]);
        if self.present(idx) {
            return put(offset, len);
        }
        let start = idx * self.owner.extent;
        if len != self.extent_len(idx) {
            let mut whole = base(idx)?;
            let at = (offset - start) as usize;
            match data {
                Some(d) => whole[at..at + d.len()].copy_from_slice(d),
                None => whole[at..at + len as usize].fill(0),
            }
            self.data.write_at(start, &whole, false)?;
        } else {
            put(offset, len)?;
        }
        self.mark(idx);
        Ok(())
    }

    /// Make every write so far durable, data before the map.
    pub fn flush(&self) -> io::Result<()> {
        let mut disk = locked(&self.on_disk);
        let marked = std::mem::take(&mut *locked(&self.pending));
        let r = self.write_map(&mut disk, &marked);
        if r.is_err() {
            locked(&self.pending).extend(marked);
        }
        r
    }

    fn write_map(&self, disk: &mut [u64], marked: &[u64]) -> io::Result<()> {
        self.data.flush()?;
        if marked.is_empty() {
            return Ok(());
        }
        let mut pages = std::collections::BTreeSet::new();
        for &idx in marked {
            let w = (idx / 64) as usize;
            disk[w] |= 1 << (idx % 64);
            pages.insert(w * 8 / PAGE);
        }
        for p in pages {
            let words = &disk[p * PAGE / 8..disk.len().min((p + 1) * PAGE / 8)];
            let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
            self.map.write_all_at(&bytes, HEADER + (p * PAGE) as u64)?;
        }
        self.map
            .sync_data()
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", self.map_path.display())))
    }
}

/// A stopped overlay read back, to merge it onto a restore of its
/// backup (`gentgt restore --overlay`): the extents its map names, as
/// the LUN showed them (only what was flushed, as after a restart).
pub struct OverlayImage {
    data: File,
    owner: OverlayOwner,
    bits: Vec<u64>,
    /// Keeps the shared lock: no server opens the overlay meanwhile.
    _map: File,
}

impl OverlayImage {
    /// Open `path` and `path.map` read-only for `owner`: refused when the
    /// files belong to another backup or a server has them open.
    pub fn open(path: &Path, owner: &OverlayOwner) -> io::Result<OverlayImage> {
        let map_path = map_path(path);
        let map = File::open(&map_path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", map_path.display())))?;
        lock_file(&map, libc::LOCK_SH).map_err(|_| {
            io::Error::new(
                io::ErrorKind::WouldBlock,
                "in use by a running LUN: stop serving it first (SIGTERM flushes it)",
            )
        })?;
        let bits = read_bitmap(&map, owner)?;
        let data = File::open(path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        Ok(OverlayImage {
            data,
            owner: owner.clone(),
            bits,
            _map: map,
        })
    }

    /// Does extent `idx` come from the overlay?
    pub fn present(&self, idx: u64) -> bool {
        self.bits
            .get((idx / 64) as usize)
            .is_some_and(|w| w & (1 << (idx % 64)) != 0)
    }

    /// Extents the overlay holds.
    pub fn extents(&self) -> u64 {
        self.bits.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// The content of present extent `idx` (holes read as zeros; a file
    /// shorter than the LUN, too).
    pub fn read_extent(&self, idx: u64) -> io::Result<Vec<u8>> {
        let start = idx * self.owner.extent;
        let len = self.owner.extent.min(self.owner.size.saturating_sub(start)) as usize;
        let mut buf = vec![0u8; len];
        let mut at = 0;
        while at < len {
            match self.data.read_at(&mut buf[at..], start + at as u64) {
                Ok(0) => break,
                Ok(n) => at += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(buf)
    }
}

/// The map file's header checked against `owner`, then its bitmap (one
/// bit per extent, little-endian words).
fn read_bitmap(map: &File, owner: &OverlayOwner) -> io::Result<Vec<u64>> {
    check_header(map, owner)?;
    let words = owner.size.div_ceil(owner.extent).div_ceil(64) as usize;
    let mut bytes = vec![0u8; words * 8];
    map.read_exact_at(&mut bytes, HEADER)
        .map_err(|e| bad(format!("map file bitmap: {e}")))?;
    Ok(bytes
        .chunks_exact(8)
        .map(|w| u64::from_le_bytes(w.try_into().expect("8 bytes")))
        .collect())
}

fn map_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".map");
    PathBuf::from(s)
}

/// flock(2) without waiting.
fn lock_file(f: &File, mode: libc::c_int) -> io::Result<()> {
    use std::os::unix::io::AsRawFd;
    // SAFETY: flock on a descriptor this File owns; no memory involved.
    match unsafe { libc::flock(f.as_raw_fd(), mode | libc::LOCK_NB) } {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

fn header_bytes(owner: &OverlayOwner) -> Vec<u8> {
    let mut h = MAGIC.to_vec();
    h.extend_from_slice(&owner.size.to_le_bytes());
    h.extend_from_slice(&owner.extent.to_le_bytes());
    h.extend_from_slice(&(owner.backup.len() as u16).to_le_bytes());
    h.extend_from_slice(owner.backup.as_bytes());
    let sum = blake3::hash(&h);
    h.extend_from_slice(sum.as_bytes());
    h
}

fn create_map(path: &Path, owner: &OverlayOwner, words: usize) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let f = File::create(&tmp)?;
    f.write_all_at(&header_bytes(owner), 0)?;
    f.set_len(HEADER + (words * 8) as u64)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    File::open(dir.unwrap_or(Path::new(".")))?.sync_all()
}

fn check_header(map: &File, owner: &OverlayOwner) -> io::Result<()> {
    let want = header_bytes(owner);
    let mut got = vec![0u8; HEADER as usize];
    map.read_exact_at(&mut got, 0)
        .map_err(|e| bad(format!("map file header: {e}")))?;
    if got[..want.len()] == want[..] {
        return Ok(());
    }
    if &got[..8] != MAGIC {
        return Err(bad("not an overlay map file".into()));
    }
    let n = u16::from_le_bytes([got[24], got[25]]) as usize;
    let theirs = String::from_utf8_lossy(got.get(26..26 + n).unwrap_or_default());
    Err(bad(format!(
        "belongs to backup {theirs} (this LUN serves {}, {} bytes): remove PATH and PATH.map to start afresh, or set another overlay",
        owner.backup, owner.size
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner() -> OverlayOwner {
        OverlayOwner {
            backup: "r/b1".into(),
            size: 10 * 4096 + 512,
            extent: 4096,
        }
    }

    fn base(idx: u64) -> io::Result<Vec<u8>> {
        let len = 4096.min(owner().size - idx * 4096) as usize;
        Ok(vec![idx as u8 + 1; len])
    }

    #[test]
    fn copy_up_flush_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("o");
        {
            let o = Overlay::open(&p, &owner()).unwrap();
            o.change(2, 2 * 4096 + 100, 3, Some(b"abc"), &base).unwrap();
            o.change(10, 10 * 4096, 512, None, &base).unwrap();
            assert!(o.present(2) && o.present(10) && !o.present(3));
            let mut b = vec![0u8; 4096];
            o.read(2 * 4096, &mut b).unwrap();
            assert_eq!(&b[99..104], &[3, b'a', b'b', b'c', 3]);
            o.flush().unwrap();
            // Marked but never flushed: gone after a reopen.
            o.change(5, 5 * 4096, 4096, Some(&[9; 4096]), &base)
                .unwrap();
        }
        let o = Overlay::open(&p, &owner()).unwrap();
        assert_eq!(o.extents_present(), 2);
        assert!(o.present(2) && o.present(10) && !o.present(5));
        let mut b = vec![1u8; 512];
        o.read(10 * 4096, &mut b).unwrap();
        assert!(b.iter().all(|&x| x == 0));
    }

    #[test]
    fn another_backup_is_refused_and_one_object_per_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("o");
        let a = Overlay::open(&p, &owner()).unwrap();
        let b = Overlay::open(&p, &owner()).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        let other = OverlayOwner {
            backup: "r/b2".into(),
            ..owner()
        };
        let e = Overlay::open(&p, &other).err().unwrap().to_string();
        assert!(e.contains("in use"), "{e}");
        drop((a, b));
        let e = Overlay::open(&p, &other).err().unwrap().to_string();
        assert!(e.contains("belongs to backup r/b1"), "{e}");
    }
}
