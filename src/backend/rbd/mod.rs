//! A LUN on a Ceph RBD image, through librbd's aio API (loaded at run
//! time: see ffi.rs; completions: see aio.rs).
//!
//! What maps to what (docs/rbd.md has the reasons):
//! - read/write: `rbd_aio_read`/`rbd_aio_write`; FUA: the write, then a
//!   flush (librbd has no per-write FUA);
//! - flush (SYNCHRONIZE CACHE): `rbd_aio_flush`;
//! - unmap and write_zeroes: `rbd_aio_write_zeroes`, because a discard
//!   that is not object-aligned leaves the old data readable, and the LUN
//!   promises zeros after UNMAP (LBPRZ);
//! - WRITE SAME: `rbd_aio_writesame`;
//! - COMPARE AND WRITE: `rbd_aio_compare_and_write`, atomic in the OSD;
//! - allocation (GET LBA STATUS): `rbd_diff_iterate2` from the beginning
//!   of the image's history.

mod aio;
mod ffi;
mod open;

use super::Backend;
use open::Handles;
use std::ffi::{c_char, c_int, c_void};
use std::io;
use std::path::PathBuf;

/// Where the image is and how to reach it.
#[derive(Debug, Clone)]
pub struct RbdOptions {
    pub pool: String,
    pub image: String,
    pub namespace: Option<String>,
    /// None: Ceph's default search (`$CEPH_CONF`, /etc/ceph/ceph.conf …).
    pub ceph_conf: Option<PathBuf>,
    /// The cephx user id, without "client." (default "admin").
    pub client: String,
    /// Create the image with this many bytes when it does not exist.
    pub create_size: Option<u64>,
    pub read_only: bool,
}

impl RbdOptions {
    /// "pool" or "pool/namespace", as `rbd` writes it.
    fn place(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("pool {:?} namespace {ns:?}", self.pool),
            None => format!("pool {:?}", self.pool),
        }
    }

    /// "pool[/namespace]/image".
    fn place_image(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{}/{ns}/{}", self.pool, self.image),
            None => format!("{}/{}", self.pool, self.image),
        }
    }
}

/// Most bytes one write-zeroes or writesame call covers: librbd's calls
/// take a `size_t` but some of its paths count in `int`; cuts fall on
/// multiples of this, which are object boundaries.
const OP_SPAN: u64 = 1 << 30;

/// Bytes of image one `rbd_diff_iterate2` call looks at: a bounded
/// number of object lookups between checks of `max_runs`.
const DIFF_SPAN: u64 = 1 << 30;

pub struct RbdBackend {
    h: Handles,
    size: u64,
    read_only: bool,
    place: String,
    identity_seed: String,
}

impl RbdBackend {
    /// Open (or create, with `create_size`) the image. Errors name what
    /// is missing: librbd itself, the cluster, the pool, the image.
    pub fn open(opts: &RbdOptions) -> io::Result<RbdBackend> {
        let h = open::open(opts)?;
        let mut size = 0u64;
        // SAFETY: an open image and a valid out-pointer.
        let r = unsafe { (h.lib.rbd_get_size)(h.image, &mut size) };
        if r < 0 {
            return Err(aio::errno(r as isize));
        }
        let identity_seed = identity_seed(&h, opts)?;
        Ok(RbdBackend {
            h,
            size,
            read_only: opts.read_only,
            place: opts.place_image(),
            identity_seed,
        })
    }

    /// What identifies this image wherever it is opened from: cluster
    /// fsid, pool id, namespace and RBD image id (which survive renames).
    /// Every gateway exporting the image derives the same serial and NAA
    /// from it, so multipath sees one disk.
    pub fn identity_seed(&self) -> &str {
        &self.identity_seed
    }

    fn check(&self, offset: u64, len: u64) -> io::Result<()> {
        super::check_range(offset, len, self.size)
    }

    fn check_write(&self, offset: u64, len: u64) -> io::Result<()> {
        super::check_writable(self.read_only)?;
        self.check(offset, len)
    }

    fn aio_flush(&self) -> io::Result<()> {
        // SAFETY: an open image; the completion is consumed by the call.
        aio::wait(self.h.lib, |c| unsafe {
            (self.h.lib.rbd_aio_flush)(self.h.image, c)
        })?;
        Ok(())
    }

    /// Run `op(offset, len)` over `[offset, offset+len)` in pieces that
    /// end on multiples of [`OP_SPAN`].
    fn in_spans(
        &self,
        offset: u64,
        len: u64,
        mut op: impl FnMut(u64, u64) -> io::Result<()>,
    ) -> io::Result<()> {
        let end = offset + len;
        let mut pos = offset;
        while pos < end {
            let next = ((pos / OP_SPAN + 1) * OP_SPAN).min(end);
            op(pos, next - pos)?;
            pos = next;
        }
        Ok(())
    }

    /// The allocated extents in `[offset, offset+len)`, sorted. Two
    /// passes: whole objects first (from the object map where the image
    /// has fast-diff: no OSD round trips for objects that do not exist),
    /// then the exact extents inside the objects that do.
    fn allocated_in(&self, offset: u64, len: u64) -> io::Result<Vec<(u64, u64)>> {
        let mut exact = Vec::new();
        for (o, n) in self.diff(offset, len, true)? {
            let (o, e) = (o.max(offset), (o + n).min(offset + len));
            if e > o {
                exact.extend(self.diff(o, e - o, false)?);
            }
        }
        exact.sort_unstable();
        Ok(exact)
    }

    /// One `rbd_diff_iterate2` from the image's beginning over a range.
    fn diff(&self, offset: u64, len: u64, whole_object: bool) -> io::Result<Vec<(u64, u64)>> {
        let mut found: Vec<(u64, u64)> = Vec::new();
        let arg = (&mut found as *mut Vec<(u64, u64)>).cast::<c_void>();
        let from_start: *const c_char = std::ptr::null();
        let whole = u8::from(whole_object);
        // SAFETY: an open image; `arg` points at `found`, which outlives
        // the (synchronous) iteration and is only touched by `on_extent`.
        let r = unsafe {
            (self.h.lib.rbd_diff_iterate2)(
                self.h.image,
                from_start,
                offset,
                len,
                1,
                whole,
                on_extent,
                arg,
            )
        };
        if r < 0 {
            return Err(aio::errno(r as isize));
        }
        found.sort_unstable();
        Ok(found)
    }
}

/// `rbd_diff_iterate2`'s callback: collect extents that hold data.
unsafe extern "C" fn on_extent(offset: u64, len: usize, exists: c_int, arg: *mut c_void) -> c_int {
    if exists != 0 {
        // SAFETY: `arg` is the Vec `allocated_in` passed, alive and ours.
        let found = unsafe { &mut *arg.cast::<Vec<(u64, u64)>>() };
        found.push((offset, len as u64));
    }
    0
}

fn identity_seed(h: &Handles, opts: &RbdOptions) -> io::Result<String> {
    let mut id = [0 as c_char; 64];
    let mut fsid = [0 as c_char; 64];
    // SAFETY: open handles; buffers of the given lengths.
    let (r1, r2, pool_id) = unsafe {
        (
            (h.lib.rbd_get_id)(h.image, id.as_mut_ptr(), id.len()),
            (h.lib.rados_cluster_fsid)(h.cluster, fsid.as_mut_ptr(), fsid.len()),
            (h.lib.rados_ioctx_get_id)(h.ioctx),
        )
    };
    for r in [r1, r2] {
        if r < 0 {
            return Err(aio::errno(r as isize));
        }
    }
    // SAFETY: librbd/librados wrote NUL-terminated strings into them.
    let text = |b: &[c_char]| {
        unsafe { std::ffi::CStr::from_ptr(b.as_ptr()) }
            .to_string_lossy()
            .into_owned()
    };
    Ok(format!(
        "{}/{pool_id}/{}/{}",
        text(&fsid),
        opts.namespace.as_deref().unwrap_or(""),
        text(&id)
    ))
}

impl Backend for RbdBackend {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.check(offset, buf.len() as u64)?;
        if buf.is_empty() {
            return Ok(());
        }
        let (ptr, len) = (buf.as_mut_ptr().cast::<c_char>(), buf.len());
        // SAFETY: `buf` is ours and untouched until `wait` returns.
        let n = aio::wait(self.h.lib, |c| unsafe {
            (self.h.lib.rbd_aio_read)(self.h.image, offset, len, ptr, c)
        })?;
        if n != len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "short RBD read",
            ));
        }
        Ok(())
    }

    fn write_at(&self, offset: u64, buf: &[u8], fua: bool) -> io::Result<()> {
        self.check_write(offset, buf.len() as u64)?;
        if !buf.is_empty() {
            let (ptr, len) = (buf.as_ptr().cast::<c_char>(), buf.len());
            // SAFETY: `buf` stays borrowed until `wait` returns.
            aio::wait(self.h.lib, |c| unsafe {
                (self.h.lib.rbd_aio_write)(self.h.image, offset, len, ptr, c)
            })?;
        }
        match fua {
            true => self.aio_flush().map_err(super::sync_failed),
            false => Ok(()),
        }
    }

    fn flush(&self) -> io::Result<()> {
        self.aio_flush()
    }

    fn unmap(&self, offset: u64, len: u64) -> io::Result<()> {
        // Not rbd_aio_discard: see the module docs.
        self.write_zeroes(offset, len)
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        self.check_write(offset, len)?;
        self.in_spans(offset, len, |at, n| {
            // SAFETY: an open image; no buffers involved.
            aio::wait(self.h.lib, |c| unsafe {
                (self.h.lib.rbd_aio_write_zeroes)(self.h.image, at, n as usize, c, 0, 0)
            })
            .map(drop)
        })
    }

    fn write_same(&self, offset: u64, len: u64, block: &[u8]) -> io::Result<()> {
        self.check_write(offset, len)?;
        let unit = block.len() as u64;
        if unit == 0 || !len.is_multiple_of(unit) || !OP_SPAN.is_multiple_of(unit) {
            return Err(super::not_offloaded());
        }
        let ptr = block.as_ptr().cast::<c_char>();
        self.in_spans(offset, len, |at, n| {
            // SAFETY: `block` stays borrowed until `wait` returns.
            aio::wait(self.h.lib, |c| unsafe {
                (self.h.lib.rbd_aio_writesame)(
                    self.h.image,
                    at,
                    n as usize,
                    ptr,
                    unit as usize,
                    c,
                    0,
                )
            })
            .map(drop)
        })
    }

    fn compares_and_writes(&self, offset: u64, len: u64) -> bool {
        // Ceph 16 refuses (EINVAL) anything but one sector: the device
        // server compares the rest, atomic against this gateway's writes
        // only.
        offset % SECTOR + len <= SECTOR
    }

    fn compare_and_write(
        &self,
        offset: u64,
        expect: &[u8],
        new: &[u8],
        fua: bool,
    ) -> io::Result<Option<u64>> {
        self.check_write(offset, expect.len() as u64)?;
        if expect.len() != new.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "compare and write halves differ",
            ));
        }
        if !self.compares_and_writes(offset, expect.len() as u64) {
            return Err(super::not_offloaded());
        }
        let mut mismatch: u64 = 0;
        let out = &mut mismatch as *mut u64;
        let (cmp, buf, len) = (
            expect.as_ptr().cast::<c_char>(),
            new.as_ptr().cast::<c_char>(),
            new.len(),
        );
        // SAFETY: the buffers and `mismatch` outlive the wait.
        let r = aio::wait(self.h.lib, |c| unsafe {
            (self.h.lib.rbd_aio_compare_and_write)(self.h.image, offset, len, cmp, buf, c, out, 0)
                as c_int
        });
        match r {
            Ok(_) => {}
            // librbd compares within one object only; a range across
            // objects is left to the device server.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Err(super::not_offloaded()),
            Err(e) if e.raw_os_error() == Some(libc::EILSEQ) => {
                return Ok(Some(mismatch_in_range(mismatch, offset, len as u64)));
            }
            Err(e) => return Err(e),
        }
        match fua {
            true => self.aio_flush().map_err(super::sync_failed).map(|()| None),
            false => Ok(None),
        }
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn describe(&self) -> String {
        format!("rbd:{}", self.place)
    }

    fn allocation(&self, offset: u64, len: u64, max_runs: usize) -> io::Result<Vec<(u64, bool)>> {
        self.check(offset, len)?;
        let end = offset + len;
        let mut runs = Vec::new();
        let mut pos = offset;
        while pos < end && runs.len() < max_runs {
            let step = (end - pos).min(DIFF_SPAN);
            let mut at = pos;
            for (o, n) in self.allocated_in(pos, step)? {
                let (o, e) = (o.max(at), (o + n).min(pos + step));
                if e > o {
                    super::push_run(&mut runs, o - at, false);
                    super::push_run(&mut runs, e - o, true);
                    at = e;
                }
            }
            super::push_run(&mut runs, pos + step - at, false);
            pos += step;
        }
        runs.truncate(max_runs.max(1));
        Ok(runs)
    }
}

/// Ceph 16 compares at most one 512-byte sector.
const SECTOR: u64 = 512;

/// librbd's mismatch offset as an offset into the compared range `[offset,
/// offset + len)`, where SCSI wants it. Newer librbd reports the image
/// offset of the differing byte. Ceph 16 reports the start of the object
/// plus the offset into the range (it translates a range-relative offset
/// as an object-relative one); its compares are single sectors at
/// sector-aligned offsets, so the offset into the range is then the
/// value's remainder modulo the sector.
fn mismatch_in_range(mismatch: u64, offset: u64, len: u64) -> u64 {
    match mismatch.checked_sub(offset) {
        Some(m) if m < len => m,
        _ => mismatch % SECTOR,
    }
}

#[cfg(test)]
mod tests {
    use super::mismatch_in_range;

    #[test]
    fn mismatch_offsets_of_both_librbd_conventions() {
        // Image offset of the byte (newer librbd).
        assert_eq!(mismatch_in_range(5_120_345, 5_120_000, 512), 345);
        assert_eq!(mismatch_in_range(8_000_100, 8_000_000, 4096), 100);
        // Ceph 16: object start (here 4 MiB) + offset into the range.
        assert_eq!(mismatch_in_range(4_194_304 + 345, 5_120_000, 512), 345);
        // Both agree where the range starts the object.
        assert_eq!(mismatch_in_range(4_194_304 + 7, 4_194_304, 512), 7);
    }
}
