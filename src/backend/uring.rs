//! A file backend doing its reads and writes through io_uring, optionally
//! with O_DIRECT (no page cache: the data goes straight to the disk, and
//! the target's memory is not doubled by cached copies of the LUN).
//!
//! The file is opened twice: a plain [`FileBackend`] keeps the size rules,
//! hole punching, SEEK_DATA/SEEK_HOLE allocation maps and flush exactly
//! as the buffered backend does them, and a second descriptor (O_DIRECT
//! when asked) carries the data. Linux keeps the two coherent: direct I/O
//! writes back and drops cached pages of its range first.
//!
//! O_DIRECT needs offsets, lengths and memory aligned. Aligned requests
//! into aligned memory go to the disk from the caller's buffer; others go
//! through page-aligned bounce buffers from a pool, widened to whole
//! alignment blocks, with a read-modify-write of partial head/tail blocks
//! under a byte-range lock.

use super::aligned::{ALIGN, BufferPool};
use super::rangelock::RangeLocks;
use super::ring::{self, DEPTH, Dir, Op};
use super::{Backend, FileBackend};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// How to open a [`UringBackend`].
#[derive(Debug, Clone)]
pub struct UringOptions {
    /// Open the data descriptor with O_DIRECT (falls back to buffered
    /// I/O, with a warning, where the filesystem refuses it).
    pub direct: bool,
    /// Largest piece of a transfer in one SQE (and bounce buffer size).
    pub chunk: usize,
    /// Treat O_DIRECT alignment as at least this (tests use 4096 to force
    /// read-modify-write on filesystems that would accept 512).
    pub min_align: usize,
}

impl Default for UringOptions {
    fn default() -> Self {
        UringOptions {
            direct: false,
            chunk: 128 << 10,
            min_align: 0,
        }
    }
}

pub struct UringBackend {
    meta: FileBackend,
    data: File,
    path: PathBuf,
    size: u64,
    read_only: bool,
    direct: bool,
    /// Offset and length alignment of the data descriptor (1 if buffered).
    align: u64,
    /// Memory alignment for I/O straight from the caller's buffer.
    mem_align: usize,
    chunk: usize,
    pool: BufferPool,
    locks: RangeLocks,
}

/// Open a file LUN with io_uring when the kernel allows it, otherwise
/// (with a warning) the plain buffered [`FileBackend`].
pub fn open_file(
    path: &Path,
    size: u64,
    create: bool,
    read_only: bool,
    opts: &UringOptions,
) -> io::Result<Arc<dyn Backend>> {
    if !ring::available() {
        tracing::warn!(path = %path.display(), "io_uring unavailable: using buffered file I/O");
        return Ok(Arc::new(FileBackend::open(path, size, create, read_only)?));
    }
    Ok(Arc::new(UringBackend::open(
        path, size, create, read_only, opts,
    )?))
}

impl UringBackend {
    /// Like [`FileBackend::open`] (same create/grow/refuse-to-truncate
    /// rules). Fails with `Unsupported` when io_uring cannot be used.
    pub fn open(
        path: &Path,
        size: u64,
        create: bool,
        read_only: bool,
        opts: &UringOptions,
    ) -> io::Result<UringBackend> {
        if !ring::available() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "io_uring is not available",
            ));
        }
        let meta = FileBackend::open(path, size, create, read_only)?;
        let (data, align, mem_align) = match opts.direct {
            true => open_direct(path, read_only, opts.min_align)?,
            false => (open_data(path, read_only, 0)?, 1, 1),
        };
        let chunk = opts.chunk.max(ALIGN).next_multiple_of(ALIGN);
        Ok(UringBackend {
            meta,
            data,
            path: path.to_path_buf(),
            size,
            read_only,
            direct: align > 1,
            align,
            mem_align,
            chunk,
            pool: BufferPool::new(chunk, DEPTH as usize),
            locks: RangeLocks::default(),
        })
    }

    /// Whether data I/O really bypasses the page cache.
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    /// Offset/length alignment of data I/O (1 when buffered).
    pub fn alignment(&self) -> u64 {
        self.align
    }

    fn check(&self, offset: u64, len: u64) -> io::Result<()> {
        super::check_range(offset, len, self.size)
    }

    fn check_writable(&self) -> io::Result<()> {
        super::check_writable(self.read_only)
    }

    /// Whether `[offset, offset+len)` at `ptr` can go to the descriptor
    /// as it is.
    fn aligned(&self, offset: u64, len: usize, ptr: *const u8) -> bool {
        offset.is_multiple_of(self.align)
            && (len as u64).is_multiple_of(self.align)
            && (ptr as usize).is_multiple_of(self.mem_align)
    }

    /// The alignment blocks covering `[offset, offset+len)`.
    fn widen(&self, offset: u64, len: usize) -> (u64, u64) {
        let start = offset - offset % self.align;
        let end = (offset + len as u64).next_multiple_of(self.align);
        (start, end)
    }

    /// I/O on the caller's own memory, cut into chunk-sized SQEs.
    ///
    /// # Safety
    /// `ptr` valid for `len` bytes (and exclusive, for reads) for the call.
    unsafe fn direct_io(&self, dir: Dir, offset: u64, ptr: *mut u8, len: usize) -> io::Result<()> {
        let mut ops: Vec<Op> = (0..len)
            .step_by(self.chunk)
            .map(|at| Op {
                offset: offset + at as u64,
                // SAFETY: at < len.
                ptr: unsafe { ptr.add(at) },
                len: self.chunk.min(len - at),
            })
            .collect();
        // SAFETY: forwarded from our caller.
        unsafe { ring::run(&self.data, dir, &mut ops) }
    }

    /// An unaligned read: whole blocks into bounce buffers, `DEPTH`
    /// buffers at a time, then copy the wanted bytes out.
    fn read_bounced(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let (start, end) = self.widen(offset, buf.len());
        let span = (self.chunk * DEPTH as usize) as u64;
        let mut pos = start;
        while pos < end {
            let batch_end = end.min(pos + span);
            let mut bufs = self.batch(pos, batch_end);
            let mut ops = ops_for(&mut bufs);
            // SAFETY: the ops point into `bufs`, alive and untouched here.
            unsafe { ring::run(&self.data, Dir::Read, &mut ops) }?;
            for (at, b) in &bufs {
                if let Some((i, u, n)) = overlap(*at, b.len(), offset, buf.len()) {
                    buf[u..u + n].copy_from_slice(&b.as_slice()[i..i + n]);
                }
            }
            pos = batch_end;
        }
        Ok(())
    }

    /// An unaligned write: read the partial head and tail blocks, merge
    /// the new bytes in, write whole blocks. The caller holds the range.
    fn write_bounced(&self, offset: u64, data: &[u8], fua: bool) -> io::Result<()> {
        let (start, end) = self.widen(offset, data.len());
        let span = (self.chunk * DEPTH as usize) as u64;
        let mut pos = start;
        while pos < end {
            let batch_end = end.min(pos + span);
            let mut bufs = self.batch(pos, batch_end);
            self.fill_partial_blocks(&mut bufs, offset, offset + data.len() as u64)?;
            for (at, b) in bufs.iter_mut() {
                if let Some((i, u, n)) = overlap(*at, b.len(), offset, data.len()) {
                    b.as_mut_slice()[i..i + n].copy_from_slice(&data[u..u + n]);
                }
            }
            let mut ops = ops_for(&mut bufs);
            // SAFETY: the ops point into `bufs`, alive and untouched here.
            unsafe { ring::run(&self.data, Dir::Write { dsync: fua }, &mut ops) }?;
            pos = batch_end;
        }
        Ok(())
    }

    /// Read from disk the blocks of the batch that the write covers only
    /// in part (at most the first and the last).
    fn fill_partial_blocks(&self, bufs: &mut Bufs<'_>, wstart: u64, wend: u64) -> io::Result<()> {
        let mut ops = Vec::new();
        let n = bufs.len();
        for (i, (at, b)) in bufs.iter_mut().enumerate() {
            let len = b.len() as u64;
            let base = b.as_mut_slice().as_mut_ptr();
            let first = (i == 0 && wstart > *at).then_some(*at);
            let last_block = *at + len - self.align;
            let last = (i + 1 == n && wend < *at + len).then_some(last_block);
            for block in [first, last].into_iter().flatten() {
                if ops.iter().any(|o: &Op| o.offset == block) {
                    continue;
                }
                ops.push(Op {
                    offset: block,
                    // SAFETY: the block lies inside this buffer.
                    ptr: unsafe { base.add((block - *at) as usize) },
                    len: self.align as usize,
                });
            }
        }
        // SAFETY: the ops point into `bufs`, alive and untouched here.
        unsafe { ring::run(&self.data, Dir::Read, &mut ops) }
    }

    /// Bounce buffers for file range `[pos, end)`, each with its position
    /// and trimmed to the bytes it carries.
    fn batch(&self, mut pos: u64, end: u64) -> Bufs<'_> {
        let mut bufs = Vec::new();
        while pos < end {
            let n = (self.chunk as u64).min(end - pos) as usize;
            bufs.push((pos, Chunk(self.pool.take(), n)));
            pos += n as u64;
        }
        bufs
    }

    /// Widened range lock for writes under O_DIRECT; no-op when buffered
    /// (the page cache merges partial-page writes itself).
    fn lock_for_write(&self, offset: u64, len: u64) -> Option<super::rangelock::RangeGuard<'_>> {
        self.direct.then(|| {
            let (s, e) = self.widen(offset, len as usize);
            self.locks.lock(s, e)
        })
    }
}

/// A pooled buffer and the number of its bytes in use.
struct Chunk<'a>(super::aligned::PooledBuf<'a>, usize);

impl Chunk<'_> {
    fn len(&self) -> usize {
        self.1
    }
    fn as_slice(&self) -> &[u8] {
        &self.0.as_slice()[..self.1]
    }
    fn as_mut_slice(&mut self) -> &mut [u8] {
        let n = self.1;
        &mut self.0.as_mut_slice()[..n]
    }
}

type Bufs<'a> = Vec<(u64, Chunk<'a>)>;

fn ops_for(bufs: &mut Bufs<'_>) -> Vec<Op> {
    bufs.iter_mut()
        .map(|(at, b)| Op {
            offset: *at,
            len: b.len(),
            ptr: b.as_mut_slice().as_mut_ptr(),
        })
        .collect()
}

/// Where bounce buffer bytes at file position `at` (length `blen`) and
/// the caller's range at `user_at` (length `ulen`) overlap: (index in the
/// bounce buffer, index in the caller's buffer, length).
fn overlap(at: u64, blen: usize, user_at: u64, ulen: usize) -> Option<(usize, usize, usize)> {
    let lo = at.max(user_at);
    let hi = (at + blen as u64).min(user_at + ulen as u64);
    (lo < hi).then(|| {
        (
            (lo - at) as usize,
            (lo - user_at) as usize,
            (hi - lo) as usize,
        )
    })
}

/// A second descriptor on the file for data, with extra open flags.
fn open_data(path: &Path, read_only: bool, flags: i32) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(!read_only)
        .custom_flags(flags)
        .open(path)
}

/// The O_DIRECT descriptor and its (offset, memory) alignment, or the
/// buffered one (alignment 1) when the filesystem refuses direct I/O.
fn open_direct(path: &Path, read_only: bool, min_align: usize) -> io::Result<(File, u64, usize)> {
    let refused = |why: String| -> io::Result<(File, u64, usize)> {
        tracing::warn!(path = %path.display(), reason = %why, "O_DIRECT refused: using buffered I/O through io_uring");
        Ok((open_data(path, read_only, 0)?, 1, 1))
    };
    let file = match open_data(path, read_only, libc::O_DIRECT) {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return refused(e.to_string()),
        Err(e) => return Err(e),
    };
    let (offset_align, mem_align) = match dio_align(&file) {
        Some((0, _)) => return refused("the filesystem reports no direct I/O support".into()),
        Some((o, m)) => (o as usize, m as usize),
        // Kernels before 6.1 do not say: assume the largest usual sector.
        None => (ALIGN, ALIGN),
    };
    if mem_align > ALIGN || offset_align > 1 << 20 {
        return refused(format!("unusual alignment {offset_align}/{mem_align}"));
    }
    let align = offset_align.max(min_align).max(1).next_power_of_two() as u64;
    Ok((file, align, mem_align.max(1)))
}

/// STATX_DIOALIGN: (offset alignment, memory alignment), None if unknown.
fn dio_align(file: &File) -> Option<(u32, u32)> {
    // SAFETY: statx fills the zeroed struct we own; the empty path with
    // AT_EMPTY_PATH names the descriptor itself.
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    let rc = unsafe {
        libc::statx(
            file.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            &mut st,
        )
    };
    (rc == 0 && st.stx_mask & libc::STATX_DIOALIGN != 0)
        .then_some((st.stx_dio_offset_align, st.stx_dio_mem_align))
}

impl Backend for UringBackend {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.check(offset, buf.len() as u64)?;
        if buf.is_empty() {
            return Ok(());
        }
        if self.aligned(offset, buf.len(), buf.as_ptr()) {
            // SAFETY: `buf` is borrowed exclusively for the whole call.
            unsafe { self.direct_io(Dir::Read, offset, buf.as_mut_ptr(), buf.len()) }
        } else {
            self.read_bounced(offset, buf)
        }
    }

    fn write_at(&self, offset: u64, buf: &[u8], fua: bool) -> io::Result<()> {
        self.check_writable()?;
        self.check(offset, buf.len() as u64)?;
        if buf.is_empty() {
            return Ok(());
        }
        let _range = self.lock_for_write(offset, buf.len() as u64);
        if self.aligned(offset, buf.len(), buf.as_ptr()) {
            let ptr = buf.as_ptr().cast_mut();
            // SAFETY: writes only read through `ptr`, valid for the call.
            unsafe { self.direct_io(Dir::Write { dsync: fua }, offset, ptr, buf.len()) }
        } else {
            self.write_bounced(offset, buf, fua)
        }
    }

    fn flush(&self) -> io::Result<()> {
        if self.read_only {
            return Ok(());
        }
        // fdatasync is per inode: it covers writes from both descriptors.
        self.data.sync_data()
    }

    fn unmap(&self, offset: u64, len: u64) -> io::Result<()> {
        self.check(offset, len)?;
        let _range = self.lock_for_write(offset, len);
        self.meta.unmap(offset, len)
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        self.check(offset, len)?;
        let _range = self.lock_for_write(offset, len);
        self.meta.write_zeroes(offset, len)
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn describe(&self) -> String {
        let mode = if self.direct {
            "io_uring, O_DIRECT"
        } else {
            "io_uring"
        };
        format!("file:{} ({mode})", self.path.display())
    }

    fn allocation(&self, offset: u64, len: u64, max_runs: usize) -> io::Result<Vec<(u64, bool)>> {
        self.meta.allocation(offset, len, max_runs)
    }

    fn space(&self) -> io::Result<Option<super::SpaceUse>> {
        self.meta.space()
    }
}

#[cfg(test)]
#[path = "uring_tests.rs"]
mod tests;
