//! A backend over a regular file (sparse where the filesystem allows),
//! using positional I/O so concurrent commands need no lock.

use super::{Backend, SpaceUse, push_run};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

pub struct FileBackend {
    file: File,
    path: PathBuf,
    size: u64,
    read_only: bool,
    /// The file lives in RAM (tmpfs/ramfs): I/O never waits for a device.
    in_ram: bool,
}

impl FileBackend {
    /// Open (or with `create`, create sparse) a backing file of `size`
    /// bytes. A smaller existing file is grown; a larger one is refused,
    /// because shrinking it would destroy data.
    pub fn open(path: &Path, size: u64, create: bool, read_only: bool) -> io::Result<FileBackend> {
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .create(create && !read_only)
            .open(path)?;
        let current = file.metadata()?.len();
        if current > size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} holds {current} bytes, more than the configured {size}; refusing to truncate",
                    path.display()
                ),
            ));
        }
        if current < size {
            if read_only {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "{} holds {current} bytes, less than {size}, and is read-only",
                        path.display()
                    ),
                ));
            }
            file.set_len(size)?;
        }
        let in_ram = in_ram(&file);
        Ok(FileBackend {
            in_ram,
            file,
            path: path.to_path_buf(),
            size,
            read_only,
        })
    }

    /// Open an existing file, taking the size from it.
    pub fn open_existing(path: &Path, read_only: bool) -> io::Result<FileBackend> {
        let size = std::fs::metadata(path)?.len();
        FileBackend::open(path, size, false, read_only)
    }

    fn check(&self, offset: u64, len: u64) -> io::Result<()> {
        super::check_range(offset, len, self.size)
    }

    fn check_writable(&self) -> io::Result<()> {
        super::check_writable(self.read_only)
    }

    /// Deallocate with fallocate; `Ok(false)` when the filesystem cannot.
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<bool> {
        let (Ok(off), Ok(l)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
            return Ok(false);
        };
        // SAFETY: fallocate on a file descriptor we own, no memory involved.
        let rc = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                off,
                l,
            )
        };
        if rc == 0 {
            return Ok(true);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) | Some(libc::EINVAL) => Ok(false),
            _ => Err(err),
        }
    }

    fn write_zeros_slowly(&self, offset: u64, len: u64) -> io::Result<()> {
        const STEP: u64 = 1 << 20;
        let zeros = vec![0u8; STEP.min(len) as usize];
        let mut done = 0;
        while done < len {
            let n = STEP.min(len - done) as usize;
            self.file.write_all_at(&zeros[..n], offset + done)?;
            done += n as u64;
        }
        Ok(())
    }

    /// lseek with SEEK_DATA/SEEK_HOLE. `Ok(None)` when there is no data
    /// at or after `pos` (ENXIO), `Err` with EINVAL/EOPNOTSUPP when the
    /// filesystem cannot tell.
    fn seek(&self, pos: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
        let off = libc::off_t::try_from(pos)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))?;
        // SAFETY: lseek on a descriptor we own. Moving the file position is
        // harmless: all data I/O is positional (pread/pwrite).
        let rc = unsafe { libc::lseek(self.file.as_raw_fd(), off, whence) };
        if rc >= 0 {
            return Ok(Some(rc as u64));
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::ENXIO) => Ok(None),
            _ => Err(err),
        }
    }

    /// Allocation runs from SEEK_DATA/SEEK_HOLE; filesystems without them
    /// report everything mapped (what lseek's fallback means anyway).
    fn map_runs(&self, offset: u64, len: u64, max_runs: usize) -> io::Result<Vec<(u64, bool)>> {
        let end = offset + len;
        let mut runs: Vec<(u64, bool)> = Vec::new();
        let mut pos = offset;
        while pos < end {
            let data = self.seek(pos, libc::SEEK_DATA)?.unwrap_or(end).min(end);
            let (next, mapped) = if data > pos {
                (data, false)
            } else {
                let hole = self.seek(pos, libc::SEEK_HOLE)?.unwrap_or(end).min(end);
                // A hole at `pos` right after SEEK_DATA found data there
                // would mean a racing punch: call the rest mapped.
                (if hole > pos { hole } else { end }, true)
            };
            if runs.len() == max_runs && runs.last().is_some_and(|r| r.1 != mapped) {
                break;
            }
            push_run(&mut runs, next - pos, mapped);
            pos = next;
        }
        Ok(runs)
    }

    fn zero_range(&self, offset: u64, len: u64) -> io::Result<()> {
        self.check_writable()?;
        self.check(offset, len)?;
        if len == 0 || self.punch_hole(offset, len)? {
            return Ok(());
        }
        self.write_zeros_slowly(offset, len)
    }
}

impl Backend for FileBackend {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.check(offset, buf.len() as u64)?;
        self.file.read_exact_at(buf, offset)
    }

    fn write_at(&self, offset: u64, buf: &[u8], fua: bool) -> io::Result<()> {
        self.check_writable()?;
        self.check(offset, buf.len() as u64)?;
        self.file.write_all_at(buf, offset)?;
        if fua {
            // Coarser than needed (syncs the whole file) but correct.
            self.file.sync_data().map_err(super::sync_failed)?;
        }
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.file.sync_data()
    }

    fn unmap(&self, offset: u64, len: u64) -> io::Result<()> {
        self.zero_range(offset, len)
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        self.zero_range(offset, len)
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn describe(&self) -> String {
        format!("file:{}", self.path.display())
    }

    fn memory_speed(&self) -> bool {
        self.in_ram
    }

    fn read_is_cached(&self, offset: u64, len: u64) -> bool {
        self.in_ram || page_cached(&self.file, offset, len)
    }

    fn space(&self) -> io::Result<Option<SpaceUse>> {
        file_space(&self.file, self.size).map(Some)
    }

    fn allocation(&self, offset: u64, len: u64, max_runs: usize) -> io::Result<Vec<(u64, bool)>> {
        self.check(offset, len)?;
        match self.map_runs(offset, len, max_runs) {
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINVAL) | Some(libc::EOPNOTSUPP)
                ) =>
            {
                Ok(vec![(len, true)])
            }
            r => r,
        }
    }
}

/// What a sparse file of `size` bytes holds (its allocated blocks) and
/// could still get (free space of its filesystem for unprivileged users,
/// at most the part of `size` it does not hold yet).
pub(crate) fn file_space(file: &File, size: u64) -> io::Result<SpaceUse> {
    use std::os::unix::fs::MetadataExt;
    // st_blocks counts 512-byte units whatever the filesystem's block size.
    let allocated = file.metadata()?.blocks().saturating_mul(512).min(size);
    // SAFETY: statvfs is plain old data; fstatvfs fills it or fails.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatvfs(file.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let free = (st.f_bavail as u64).saturating_mul(st.f_frsize as u64);
    Ok(SpaceUse {
        allocated,
        available: free.min(size - allocated),
    })
}

/// Is every page of `[offset, offset + len)` in the page cache? Asks the
/// kernel with cachestat(2) (Linux 6.5+); false where it is missing.
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn page_cached(_file: &File, _offset: u64, _len: u64) -> bool {
    false
}

/// Is every page of `[offset, offset + len)` in the page cache? Asks the
/// kernel with cachestat(2) (Linux 6.5+); false where it is missing.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn page_cached(file: &File, offset: u64, len: u64) -> bool {
    use std::os::fd::AsRawFd;
    #[repr(C)]
    struct Range {
        off: u64,
        len: u64,
    }
    #[repr(C)]
    #[derive(Default)]
    struct Stat {
        nr_cache: u64,
        nr_dirty: u64,
        nr_writeback: u64,
        nr_evicted: u64,
        nr_recently_evicted: u64,
    }
    // The generic syscall table's number, shared by x86_64 and aarch64.
    const SYS_CACHESTAT: libc::c_long = 451;
    if len == 0 {
        return true;
    }
    let page = 4096u64;
    let first = offset / page;
    let pages = (offset + len).div_ceil(page) - first;
    let range = Range {
        off: first * page,
        len: pages * page,
    };
    let mut st = Stat::default();
    // SAFETY: a valid descriptor, pointers to live structs of the layout
    // the kernel expects, flags 0.
    let r = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            file.as_raw_fd(),
            &range as *const Range,
            &mut st as *mut Stat,
            0u32,
        )
    };
    r == 0 && st.nr_cache >= pages
}

/// Is the file on a RAM filesystem? (statfs magic of tmpfs and ramfs.)
fn in_ram(file: &File) -> bool {
    use std::os::fd::AsRawFd;
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    const RAMFS_MAGIC: i64 = 0x8584_58f6;
    // SAFETY: statfs is plain old data; fstatfs fills it or fails.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid open descriptor and a pointer to a live struct.
    if unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) } != 0 {
        return false;
    }
    #[allow(clippy::unnecessary_cast)]
    let magic = st.f_type as i64;
    magic == TMPFS_MAGIC || magic == RAMFS_MAGIC
}

#[cfg(test)]
mod tests {

    /// cachestat sees a range that was just written and read as cached
    /// and an evicted one as not (where the kernel has cachestat at all).
    #[test]
    fn page_cache_hint() {
        let dir = tempfile::tempdir_in(concat!(env!("CARGO_MANIFEST_DIR"), "/target")).unwrap();
        let path = dir.path().join("c.img");
        let b = FileBackend::open(&path, 1 << 20, true, false).unwrap();
        b.write_at(0, &[7u8; 65536], false).unwrap();
        let mut buf = vec![0u8; 65536];
        b.read_at(0, &mut buf).unwrap();
        let supported = page_cached(&b.file, 0, 4096);
        if !supported {
            eprintln!("cachestat unsupported or page evicted: hint stays false");
            return;
        }
        assert!(b.read_is_cached(0, 65536));
        b.flush().unwrap();
        use std::os::fd::AsRawFd;
        // SAFETY: plain advice on a valid descriptor.
        unsafe { libc::posix_fadvise(b.file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        assert!(!b.read_is_cached(0, 65536) || b.in_ram);
    }
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn create_sparse_and_persist_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("disk.img");
        {
            let b = FileBackend::open(&p, 1 << 30, true, false).unwrap();
            assert_eq!(b.size(), 1 << 30);
            b.write_at(4096, b"hello", true).unwrap();
            b.flush().unwrap();
        }
        // Sparse: a 1 GiB file with one small write occupies little space.
        assert!(std::fs::metadata(&p).unwrap().blocks() * 512 < 1 << 20);
        let b = FileBackend::open_existing(&p, true).unwrap();
        assert_eq!(b.size(), 1 << 30);
        let mut buf = [0u8; 5];
        b.read_at(4096, &mut buf).unwrap();
        assert_eq!(&buf, b"hello");
        assert!(b.write_at(0, b"x", false).is_err());
    }

    #[test]
    fn grows_but_never_truncates() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d");
        std::fs::write(&p, vec![1u8; 8192]).unwrap();
        assert!(FileBackend::open(&p, 4096, false, false).is_err());
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 8192);
        let b = FileBackend::open(&p, 16384, false, false).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 16384);
        let mut buf = [9u8; 4];
        b.read_at(8190, &mut buf).unwrap();
        assert_eq!(buf, [1, 1, 0, 0]);
    }

    #[test]
    fn missing_file_without_create_fails() {
        let dir = tempfile::tempdir().unwrap();
        assert!(FileBackend::open(&dir.path().join("nope"), 4096, false, false).is_err());
    }

    #[test]
    fn unmap_reads_zeros_and_frees_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d");
        let b = FileBackend::open(&p, 4 << 20, true, false).unwrap();
        b.write_at(0, &vec![0xabu8; 4 << 20], false).unwrap();
        b.flush().unwrap();
        let before = std::fs::metadata(&p).unwrap().blocks();
        b.unmap(1 << 20, 2 << 20).unwrap();
        let mut buf = vec![1u8; 4 << 20];
        b.read_at(0, &mut buf).unwrap();
        assert!(buf[..1 << 20].iter().all(|&x| x == 0xab));
        assert!(buf[1 << 20..3 << 20].iter().all(|&x| x == 0));
        assert!(buf[3 << 20..].iter().all(|&x| x == 0xab));
        let after = std::fs::metadata(&p).unwrap().blocks();
        // Filesystems without hole punching fall back to writing zeros.
        assert!(after <= before);
    }

    #[test]
    fn allocation_reports_holes() {
        let dir = tempfile::tempdir().unwrap();
        let b = FileBackend::open(&dir.path().join("d"), 8 << 20, true, false).unwrap();
        assert_eq!(
            b.allocation(0, 8 << 20, 16).unwrap(),
            vec![(8 << 20, false)]
        );
        b.write_at(2 << 20, &vec![1u8; 1 << 20], false).unwrap();
        let runs = b.allocation(0, 8 << 20, 16).unwrap();
        let total: u64 = runs.iter().map(|r| r.0).sum();
        assert_eq!(total, 8 << 20);
        // The written MiB is mapped (filesystems may map a little more).
        let mut pos = 0;
        for (len, mapped) in &runs {
            if pos <= 2 << 20 && pos + len >= 3 << 20 {
                assert!(mapped);
            }
            pos += len;
        }
        assert!(b.allocation(1, 8 << 20, 16).is_err());
    }

    #[test]
    fn range_checks() {
        let dir = tempfile::tempdir().unwrap();
        let b = FileBackend::open(&dir.path().join("d"), 4096, true, false).unwrap();
        let mut buf = [0u8; 8];
        assert!(b.read_at(4090, &mut buf).is_err());
        assert!(b.write_at(u64::MAX, &buf, false).is_err());
        assert!(b.unmap(4000, 200).is_err());
    }
}
