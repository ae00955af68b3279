//! One point-in-time view: copy-before-write into a [`ViewStore`], and
//! reads of the LUN as it was at the open.
//!
//! # Pieces
//!
//! Old data is kept in *pieces* of 4 KiB (one block if blocks are larger;
//! coarser, up to an extent, only for LUNs so large that the bitmaps below
//! would pass 2 MiB each), not whole extents: a 4 KiB first write then
//! copies 4 KiB, not 64. Generations are kept per extent: the first claim
//! of any piece of an extent records the extent's generation and hint at
//! the open, before any change after the open could stamp it.
//!
//! # Per-piece states
//!
//! `untouched` → `touched` (a change claimed it and is copying its old
//! content) → `kept` (the old content is in the view). Two bitmaps hold the
//! states; claims happen under `inner`'s mutex, so exactly one change
//! copies a piece, and others wanting it wait on `cv`. A change stamps and
//! writes its range only once every piece of it is `kept`.
//!
//! # Why a view read never sees data written after the open
//!
//! A read takes a piece from the store if it is kept. Otherwise it reads
//! the LUN, *then* loads `touched` (SeqCst). A change sets `touched` before
//! it copies, and writes new data only after `kept` — so if the load after
//! the read still sees `untouched`, the change's data write comes later
//! than the read in real time and the read saw old data. If it sees
//! `touched`, the read waits for `kept` and takes the piece from the store.
//!
//! # Why copying cannot deadlock
//!
//! A change claims runs of pieces in increasing order and only waits for a
//! piece claimed by someone else after finishing every copy it claimed
//! itself; a copy waits for nothing but I/O.
//!
//! # Space and loss
//!
//! Space is reserved before a copy (whole pieces, given back for pieces
//! that held only zeros). A reservation over the limit, or any I/O error
//! while keeping, *loses* the view: the change goes on, every waiter wakes,
//! reads fail from then on, and the store is emptied.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use super::map::ExtentMap;
use super::store::ViewStore;

/// Reads the LUN's current data (its backend).
pub trait ViewSource: Send + Sync {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
}

/// Largest run copied with one read (bounds the buffer of one change).
const MAX_COPY_BYTES: u64 = 4 << 20;
/// Piece size aimed at (bytes).
const PIECE_BYTES: u64 = 4096;
/// Pieces per view at most: each state bitmap stays within 2 MiB.
const MAX_PIECES: u64 = 1 << 24;

/// Why a view read cannot be served; carried inside `io::Error` through
/// the backend interface so the SCSI layer can pick the spec's sense.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ViewUnavailable {
    #[error("no view is open")]
    NoView,
    #[error("the view was lost")]
    Lost,
}

impl ViewUnavailable {
    pub fn into_io(self) -> io::Error {
        io::Error::other(self)
    }

    /// The reason inside an `io::Error` made by [`into_io`](Self::into_io).
    pub fn of(e: &io::Error) -> Option<ViewUnavailable> {
        e.get_ref()?.downcast_ref::<ViewUnavailable>().copied()
    }
}

/// What the view needs to know about the LUN when it opens.
pub struct ViewGeometry {
    pub block_len: u32,
    pub capacity_blocks: u64,
    pub extent_shift: u32,
}

/// Blocks per piece, as a shift: 4 KiB worth (at least one block), doubled
/// while the LUN would have more than `MAX_PIECES`, at most an extent.
pub(crate) fn piece_shift(g: &ViewGeometry) -> u32 {
    let per_4k = (PIECE_BYTES / u64::from(g.block_len.max(1))).max(1);
    let mut shift = per_4k.next_power_of_two().trailing_zeros();
    while shift < g.extent_shift && g.capacity_blocks >> shift > MAX_PIECES {
        shift += 1;
    }
    shift.min(g.extent_shift)
}

/// Generation and deallocated hint at the open of every extent a change
/// claimed a piece of: 8 bytes per extent, in chunks allocated on first
/// use (a hash map cost ~40 bytes per extent: 700 MB for a 1 TiB LUN
/// rewritten during one view). Written under the view's mutex, read
/// without it.
struct AtOpen {
    chunks: Vec<OnceLock<Box<[AtomicU64]>>>,
}

/// Extents per chunk of `AtOpen` (32 KiB of memory per 256 MiB of LUN at
/// 64 KiB extents).
const AT_OPEN_CHUNK: u64 = 4096;
/// Set in a slot that holds a record (a generation may be 0).
const RECORDED: u64 = 1 << 63;

impl AtOpen {
    fn new(extents: u64) -> AtOpen {
        AtOpen {
            chunks: (0..extents.div_ceil(AT_OPEN_CHUNK))
                .map(|_| OnceLock::new())
                .collect(),
        }
    }

    fn slot(&self, x: u64) -> &AtomicU64 {
        let chunk = self.chunks[(x / AT_OPEN_CHUNK) as usize]
            .get_or_init(|| (0..AT_OPEN_CHUNK).map(|_| AtomicU64::new(0)).collect());
        &chunk[(x % AT_OPEN_CHUNK) as usize]
    }

    /// Record `x`'s (generation, hint) unless it already has a record.
    fn record(&self, x: u64, (g, dealloc): (u64, bool)) {
        let slot = self.slot(x);
        if slot.load(SeqCst) == 0 {
            slot.store(RECORDED | g << 1 | u64::from(dealloc), SeqCst);
        }
    }

    fn get(&self, x: u64) -> Option<(u64, bool)> {
        let chunk = self.chunks.get((x / AT_OPEN_CHUNK) as usize)?.get()?;
        let v = chunk[(x % AT_OPEN_CHUNK) as usize].load(SeqCst);
        (v & RECORDED != 0).then_some(((v & !RECORDED) >> 1, v & 1 != 0))
    }
}

pub struct View {
    pub generation: u64,
    pub token: u64,
    /// The nexus that opened it (only it may re-open to renew).
    pub owner: u64,
    pub capacity_blocks: u64,
    block_len: u64,
    /// Blocks per extent / per piece, as shifts.
    extent_shift: u32,
    piece_shift: u32,
    touched: Vec<AtomicU64>,
    kept: Vec<AtomicU64>,
    lost: AtomicBool,
    used: AtomicU64,
    limit: u64,
    expires: Mutex<Instant>,
    /// Serialises claims and copy completions; `cv` signals them.
    inner: Mutex<()>,
    cv: Condvar,
    at_open: AtOpen,
    source: Arc<dyn ViewSource>,
    store: ViewStore,
    lost_total: Arc<AtomicU64>,
}

fn bit(v: &[AtomicU64], x: u64) -> bool {
    v[(x >> 6) as usize].load(SeqCst) & (1 << (x & 63)) != 0
}

fn set_bit(v: &[AtomicU64], x: u64) {
    v[(x >> 6) as usize].fetch_or(1 << (x & 63), SeqCst);
}

fn bitmap(n: u64) -> Vec<AtomicU64> {
    (0..n.div_ceil(64)).map(|_| AtomicU64::new(0)).collect()
}

pub(crate) struct ViewParts {
    pub generation: u64,
    pub token: u64,
    pub owner: u64,
    pub geometry: ViewGeometry,
    pub limit: u64,
    pub lease: Duration,
    pub source: Arc<dyn ViewSource>,
    pub store: ViewStore,
    pub lost_total: Arc<AtomicU64>,
}

impl View {
    pub(crate) fn new(p: ViewParts) -> View {
        let g = p.geometry;
        let piece_shift = piece_shift(&g);
        let pieces = g.capacity_blocks.div_ceil(1 << piece_shift);
        View {
            generation: p.generation,
            token: p.token,
            owner: p.owner,
            capacity_blocks: g.capacity_blocks,
            block_len: u64::from(g.block_len),
            extent_shift: g.extent_shift,
            piece_shift,
            touched: bitmap(pieces),
            kept: bitmap(pieces),
            lost: AtomicBool::new(false),
            used: AtomicU64::new(0),
            limit: p.limit,
            expires: Mutex::new(Instant::now() + p.lease),
            inner: Mutex::new(()),
            cv: Condvar::new(),
            at_open: AtOpen::new(g.capacity_blocks.div_ceil(1 << g.extent_shift)),
            source: p.source,
            store: p.store,
            lost_total: p.lost_total,
        }
    }

    fn inner(&self) -> MutexGuard<'_, ()> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn lost(&self) -> bool {
        self.lost.load(SeqCst)
    }

    /// Kept data bytes (VIEW SPACE USED).
    pub fn used(&self) -> u64 {
        self.used.load(SeqCst).min(self.limit)
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Bytes of one piece (the unit old data is kept in).
    pub fn piece_bytes(&self) -> u64 {
        (1u64 << self.piece_shift) * self.block_len
    }

    pub(crate) fn expires(&self) -> Instant {
        *self.expires.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn renew(&self, lease: Duration) {
        *self.expires.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now() + lease;
    }

    /// Lease left, at least 1 ms while not expired (REPORT TRACKING).
    pub fn lease_left(&self, now: Instant) -> Duration {
        self.expires()
            .checked_duration_since(now)
            .unwrap_or_default()
            .max(Duration::from_millis(1))
    }

    /// Pieces `[first, end)` of blocks `[lba, lba + blocks)`, clipped to
    /// the view's capacity (a LUN grown after the open is not in it).
    fn pieces_of(&self, lba: u64, blocks: u64) -> (u64, u64) {
        let end_lba = (lba + blocks).min(self.capacity_blocks);
        if blocks == 0 || lba >= end_lba {
            return (0, 0);
        }
        (
            lba >> self.piece_shift,
            ((end_lba - 1) >> self.piece_shift) + 1,
        )
    }

    /// Every piece of the range is kept (or nothing needs keeping).
    pub(crate) fn all_kept(&self, lba: u64, blocks: u64) -> bool {
        let (first, end) = self.pieces_of(lba, blocks);
        self.lost() || (first..end).all(|x| bit(&self.kept, x))
    }

    /// Byte offset and length of piece `x` (the last one may be short).
    fn piece_span(&self, x: u64) -> (u64, u64) {
        let lba = x << self.piece_shift;
        let blocks = (1u64 << self.piece_shift).min(self.capacity_blocks - lba);
        (lba * self.block_len, blocks * self.block_len)
    }

    /// Lose the view (idempotent): wake every waiter, free the store.
    pub(crate) fn lose(&self, why: &str) {
        let _st = self.inner();
        if self.lost.swap(true, SeqCst) {
            return;
        }
        tracing::warn!(generation = self.generation, "view lost: {why}");
        self.lost_total.fetch_add(1, SeqCst);
        self.store.discard();
        self.cv.notify_all();
    }

    /// Before a change alters blocks `[lba, lba + blocks)`: keep the old
    /// content of each piece not kept yet (and the generation of its
    /// extent). Never fails: trouble loses the view instead. Returns once
    /// every piece is kept (or the view lost).
    pub(crate) fn keep(&self, map: &ExtentMap, lba: u64, blocks: u64) {
        let (first, end) = self.pieces_of(lba, blocks);
        let mut x = first;
        while x < end && !self.lost() {
            if bit(&self.kept, x) {
                x += 1;
                continue;
            }
            let st = self.inner();
            if self.lost() || bit(&self.kept, x) {
                continue;
            }
            if bit(&self.touched, x) {
                // Another change is copying it: wait, then look again.
                drop(self.cv.wait(st).unwrap_or_else(|e| e.into_inner()));
                continue;
            }
            let run_end = self.claim(map, x, end);
            drop(st);
            self.copy(x, run_end);
            x = run_end;
        }
    }

    /// Claim untouched pieces from `x` (the caller holds the mutex),
    /// recording their extents' generation and hint at the open. Returns
    /// the end of the run.
    fn claim(&self, map: &ExtentMap, x: u64, end: u64) -> u64 {
        let max_run = (MAX_COPY_BYTES / self.piece_bytes().max(1)).max(1);
        let mut p = x;
        while p < end && p - x < max_run && !bit(&self.touched, p) {
            let extent = p >> (self.extent_shift - self.piece_shift);
            self.at_open.record(extent, map.get(extent));
            set_bit(&self.touched, p);
            p += 1;
        }
        p
    }

    /// Copy claimed pieces `[x, end)` into the store and mark them kept.
    fn copy(&self, x: u64, end: u64) {
        let (off, _) = self.piece_span(x);
        let (last_off, last_len) = self.piece_span(end - 1);
        let len = last_off + last_len - off;
        let before = self.used.fetch_add(len, SeqCst);
        if before.saturating_add(len) > self.limit {
            return self.lose("view space limit reached");
        }
        let mut buf = crate::buffers::take(len as usize);
        if let Err(e) = self.source.read_at(off, &mut buf) {
            crate::buffers::give(buf);
            return self.lose(&format!("reading old data: {e}"));
        }
        let mut zero_bytes = 0;
        for p in x..end {
            let (po, pl) = self.piece_span(p);
            let piece = &buf[(po - off) as usize..(po - off + pl) as usize];
            if piece.iter().all(|&b| b == 0) {
                zero_bytes += pl; // stays a hole
                continue;
            }
            if self.lost() {
                break;
            }
            if let Err(err) = self.store.write_at(po, piece) {
                crate::buffers::give(buf);
                return self.lose(&format!("writing kept data: {err}"));
            }
        }
        crate::buffers::give(buf);
        self.used.fetch_sub(zero_bytes, SeqCst);
        let _st = self.inner();
        for p in x..end {
            set_bit(&self.kept, p);
        }
        self.cv.notify_all();
    }

    /// Wait until claimed piece `x` is kept; false if the view was lost.
    fn wait_kept(&self, x: u64) -> bool {
        let mut st = self.inner();
        while !bit(&self.kept, x) && !self.lost() {
            st = self.cv.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        !self.lost()
    }

    /// Generation and hint extent `x` had at the open, given its current
    /// generation `now`: a generation above the view's means a change
    /// after the open, which claimed a piece of it (and recorded) first.
    pub(crate) fn at_open(&self, x: u64, now: (u64, bool)) -> (u64, bool) {
        if now.0 <= self.generation {
            return now;
        }
        self.at_open.get(x).unwrap_or((0, false))
    }

    /// Read `buf.len()` bytes at `offset` of the LUN as it was at the open.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let lost = || Err(ViewUnavailable::Lost.into_io());
        if self.lost() {
            return lost();
        }
        let pbytes = self.piece_bytes();
        let end = offset + buf.len() as u64;
        let mut pos = offset;
        while pos < end {
            let x = pos / pbytes;
            let from_store = bit(&self.kept, x);
            // A run of pieces in the same state at the start.
            let mut run_end = ((x + 1) * pbytes).min(end);
            while run_end < end && bit(&self.kept, run_end / pbytes) == from_store {
                run_end = (run_end + pbytes).min(end);
            }
            let piece = &mut buf[(pos - offset) as usize..(run_end - offset) as usize];
            if from_store {
                self.store.read_at(pos, piece)?;
            } else {
                self.source.read_at(pos, piece)?;
                self.fix_up(pos, piece, pbytes)?;
            }
            pos = run_end;
        }
        // The store is emptied when a view is lost: nothing read may count.
        if self.lost() { lost() } else { Ok(()) }
    }

    /// After reading `piece` (at `pos`) from the LUN: pieces a change
    /// claimed meanwhile come from the store instead.
    fn fix_up(&self, pos: u64, piece: &mut [u8], pbytes: u64) -> io::Result<()> {
        let end = pos + piece.len() as u64;
        let mut at = pos;
        while at < end {
            let x = at / pbytes;
            let stop = ((x + 1) * pbytes).min(end);
            if bit(&self.touched, x) {
                if !self.wait_kept(x) {
                    return Err(ViewUnavailable::Lost.into_io());
                }
                let seg = &mut piece[(at - pos) as usize..(stop - pos) as usize];
                self.store.read_at(at, seg)?;
            }
            at = stop;
        }
        Ok(())
    }
}
