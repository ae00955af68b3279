//! The per-LUN tracker: the write path (`begin_change`), `close`, draining.
//! See the module docs in `mod.rs` for why the phase protocol is correct.

use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::intent::Durable;
use super::map::{CHUNK_EXTENTS, CHUNK_SHIFT, ExtentMap, REGION_SHIFT};
use super::views::ViewSlot;
use super::{CbtError, ChangeKind, Status};

/// Largest capacity the CDB can address (STARTING LBA is a u40).
const MAX_ADDRESSABLE_BLOCKS: u64 = 1 << 40;

pub struct Tracker {
    pub(crate) uuid: [u8; 16],
    pub(crate) extent_shift: u32,
    pub(crate) capacity: AtomicU64,
    pub(crate) open: AtomicU64,
    /// Bumped by every close and checkpoint; its parity picks the slot.
    phase: AtomicU64,
    pub(crate) inflight: [AtomicU64; 2],
    /// Serialises phase bumps (close, checkpoint, shutdown).
    pub(crate) phase_lock: Mutex<()>,
    pub(crate) shut: AtomicBool,
    pub(crate) map: ExtentMap,
    pub(crate) recovery_gen: u64,
    pub(crate) recovered: bool,
    pub(crate) durable: Option<Durable>,
    /// The point-in-time view, if one is open (views.rs).
    pub(crate) views: ViewSlot,
}

impl Tracker {
    /// A tracker without persistence (memory LUNs, `persistent = false`).
    pub fn volatile(capacity_blocks: u64, extent_blocks: u32) -> Result<Tracker, CbtError> {
        Self::build(rand::random(), capacity_blocks, extent_blocks, 1, None)
    }

    pub(crate) fn build(
        uuid: [u8; 16],
        capacity_blocks: u64,
        extent_blocks: u32,
        open: u64,
        durable: Option<Durable>,
    ) -> Result<Tracker, CbtError> {
        if extent_blocks == 0 || !extent_blocks.is_power_of_two() {
            return Err(CbtError::InvalidField("extent size must be a power of two"));
        }
        let extent_shift = extent_blocks.trailing_zeros();
        let reach_blocks = capacity_blocks.max(MAX_ADDRESSABLE_BLOCKS);
        let map = ExtentMap::new(reach_blocks.div_ceil(u64::from(extent_blocks)));
        if capacity_blocks.div_ceil(u64::from(extent_blocks)) > map.reach() {
            return Err(CbtError::TooLarge(capacity_blocks));
        }
        Ok(Tracker {
            uuid,
            extent_shift,
            capacity: AtomicU64::new(capacity_blocks),
            open: AtomicU64::new(open.max(1)),
            phase: AtomicU64::new(0),
            inflight: [AtomicU64::new(0), AtomicU64::new(0)],
            phase_lock: Mutex::new(()),
            shut: AtomicBool::new(false),
            map,
            recovery_gen: 0,
            recovered: false,
            durable,
            views: ViewSlot::default(),
        })
    }

    pub fn extent_blocks(&self) -> u32 {
        1 << self.extent_shift
    }

    pub fn capacity_blocks(&self) -> u64 {
        self.capacity.load(SeqCst)
    }

    pub fn open_generation(&self) -> u64 {
        self.open.load(SeqCst)
    }

    pub fn status(&self) -> Status {
        Status {
            uuid: self.uuid,
            extent_blocks: self.extent_blocks(),
            capacity_blocks: self.capacity_blocks(),
            open_generation: self.open_generation(),
            recovery_generation: self.recovery_gen,
            tracking_on: true,
            persistent: self.durable.is_some(),
            recovered: self.recovered,
        }
    }

    /// Extents `[first, end)` touched by blocks `[lba, lba + blocks)`.
    fn extent_range(&self, lba: u64, blocks: u64) -> (u64, u64) {
        let first = lba >> self.extent_shift;
        let end = (lba + blocks - 1) >> self.extent_shift;
        (first, end + 1)
    }

    /// Register a change, staying out of a view OPEN's drain (views.rs):
    /// one that sees the OPEN after registering steps back and waits.
    fn register_outside_view_open(&self) -> usize {
        loop {
            let slot = self.register();
            if !self.view_opening() {
                return slot;
            }
            self.inflight[slot].fetch_sub(1, SeqCst);
            self.wait_view_opened();
        }
    }

    /// Register a change under the current phase; returns its slot.
    fn register(&self) -> usize {
        loop {
            let p = self.phase.load(SeqCst);
            let slot = (p & 1) as usize;
            self.inflight[slot].fetch_add(1, SeqCst);
            if self.phase.load(SeqCst) == p {
                return slot;
            }
            // A close/checkpoint bumped the phase meanwhile: it may already
            // be waiting on this slot, so leave it and retry in the new one.
            self.inflight[slot].fetch_sub(1, SeqCst);
        }
    }

    /// Start a change to `[lba, lba + blocks)`. Call it BEFORE writing the
    /// data and drop the guard AFTER the write completed (or failed). Blocks
    /// while the write-ahead intent of a region touched for the first time
    /// in this epoch is made durable; on error the data write must not
    /// proceed. Zero blocks is a no-op guard.
    pub fn begin_change(
        &self,
        lba: u64,
        blocks: u64,
        kind: ChangeKind,
    ) -> Result<ChangeGuard<&Tracker>, CbtError> {
        begin(self, lba, blocks, kind)
    }

    /// [`begin_change`](Self::begin_change) with a guard that owns a
    /// reference, for moving into `spawn_blocking` and the like.
    pub fn begin_change_owned(
        self: &Arc<Self>,
        lba: u64,
        blocks: u64,
        kind: ChangeKind,
    ) -> Result<ChangeGuard<Arc<Tracker>>, CbtError> {
        begin(Arc::clone(self), lba, blocks, kind)
    }

    /// Would a change to `[lba, lba + blocks)` start without waiting for
    /// the disk (no intent record to make durable first)? A hint for
    /// callers choosing a thread; `begin_change` stays correct either way.
    pub fn change_is_quick(&self, lba: u64, blocks: u64) -> bool {
        let capacity = self.capacity_blocks();
        if blocks == 0 || lba.checked_add(blocks).is_none_or(|end| end > capacity) {
            return true; // refused without touching the log
        }
        let (first, end) = self.extent_range(lba, blocks);
        if self.view_needs_copy(lba, blocks) {
            return false; // old data to copy first
        }
        let Some(durable) = &self.durable else {
            return true;
        };
        durable.all_logged(&self.map, first >> REGION_SHIFT, (end - 1) >> REGION_SHIFT)
    }

    fn start(&self, rec: &mut InFlight) -> Result<(), CbtError> {
        let (lba, blocks) = (rec.lba, rec.blocks);
        let capacity = self.capacity_blocks();
        if lba.checked_add(blocks).is_none_or(|end| end > capacity) {
            return Err(CbtError::OutOfRange {
                lba,
                blocks,
                capacity,
            });
        }
        if blocks == 0 {
            return Ok(());
        }
        rec.slot = Some(self.register_outside_view_open());
        // Checked after registering, so shutdown's drain sees this change.
        if self.shut.load(SeqCst) {
            return Err(CbtError::ShutDown);
        }
        let g = self.open.load(SeqCst);
        let (first, end) = self.extent_range(lba, blocks);
        if let Some(durable) = &self.durable {
            durable.log_regions(&self.map, first >> REGION_SHIFT, (end - 1) >> REGION_SHIFT)?;
        }
        // Old data goes to the view before the stamp and the data write.
        self.keep_for_view(g, lba, blocks);
        self.map.stamp(first, end, g);
        match rec.kind {
            ChangeKind::Write => self.clear_dealloc(first, end, true),
            ChangeKind::Unmap => rec.unmap_seqs = self.prepare_unmap(lba, blocks, first, end),
        }
        Ok(())
    }

    /// Clear the hint bits of `[first, end)`; `bump` marks a write start.
    fn clear_dealloc(&self, first: u64, end: u64, bump: bool) {
        for_each_chunk_mask(first, end, |ci, mask| {
            let Some(chunk) = self.map.chunk_if_present(ci) else {
                return;
            };
            if bump {
                chunk.wseq.fetch_add(1, SeqCst);
            }
            if chunk.dealloc.load(SeqCst) & mask != 0 {
                chunk.dealloc.fetch_and(!mask, SeqCst);
            }
        });
    }

    /// Partial extents count as writes; whole extents get their hint bit at
    /// the end if no write started in their chunk meanwhile.
    fn prepare_unmap(&self, lba: u64, blocks: u64, first: u64, end: u64) -> Vec<(u64, u64, u64)> {
        let capacity = self.capacity_blocks();
        let eb = u64::from(self.extent_blocks());
        let whole = |x: u64| lba <= x * eb && ((x + 1) * eb).min(capacity) <= lba + blocks;
        let mut whole_first = first;
        let mut whole_end = end;
        if !whole(first) {
            self.clear_dealloc(first, first + 1, true);
            whole_first = first + 1;
        }
        if whole_end > whole_first && !whole(end - 1) {
            self.clear_dealloc(end - 1, end, true);
            whole_end = end - 1;
        }
        let mut seqs = Vec::new();
        if whole_first < whole_end {
            for_each_chunk_mask(whole_first, whole_end, |ci, mask| {
                let chunk = self.map.chunk(ci, 0);
                seqs.push((ci, chunk.wseq.load(SeqCst), mask));
            });
        }
        seqs
    }

    fn end_change(&self, guard: &InFlight) {
        if guard.blocks == 0 {
            return;
        }
        match guard.kind {
            ChangeKind::Write => {
                let (first, end) = self.extent_range(guard.lba, guard.blocks);
                self.clear_dealloc(first, end, false);
            }
            ChangeKind::Unmap => {
                for &(ci, seq, mask) in &guard.unmap_seqs {
                    let chunk = self.map.chunk(ci, 0);
                    if chunk.wseq.load(SeqCst) == seq {
                        chunk.dealloc.fetch_or(mask, SeqCst);
                        // A write that started between the check and the
                        // set may have cleared already: undo, stay a hint.
                        if chunk.wseq.load(SeqCst) != seq {
                            chunk.dealloc.fetch_and(!mask, SeqCst);
                        }
                    }
                }
            }
        }
    }

    /// CLOSE GENERATION: returns `G = O`, makes `O = G + 1`, and returns
    /// only once every change that may have been stamped `G` has finished.
    pub fn close(&self) -> Result<u64, CbtError> {
        let _lock = self.phase_lock.lock().unwrap_or_else(|e| e.into_inner());
        if self.shut.load(SeqCst) {
            return Err(CbtError::ShutDown);
        }
        let g = self.open.load(SeqCst);
        if let Some(durable) = &self.durable {
            durable.ensure_high_water(g + 1)?;
        }
        self.open.store(g + 1, SeqCst);
        self.bump_phase_and_drain();
        Ok(g)
    }

    /// Move to a new phase and wait for every change of the old one. The
    /// caller holds `phase_lock`.
    pub(crate) fn bump_phase_and_drain(&self) {
        let p = self.phase.fetch_add(1, SeqCst);
        let slot = &self.inflight[(p & 1) as usize];
        wait_until(None, || slot.load(SeqCst) == 0);
    }

    /// Wait until no change is in flight at all (for the write lock).
    /// Returns false on timeout. Does not close anything.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        wait_until(Some(timeout), || self.in_flight() == 0)
    }

    /// Changes currently in flight (may transiently count a retrying one).
    pub fn in_flight(&self) -> u64 {
        self.inflight[0].load(SeqCst) + self.inflight[1].load(SeqCst)
    }

    /// Growing the LUN: the new blocks count as changed (spec: Model).
    pub fn grow(&self, new_capacity: u64) -> Result<(), CbtError> {
        let old = self.capacity_blocks();
        if new_capacity < old {
            return Err(CbtError::InvalidField("capacity cannot shrink"));
        }
        if new_capacity == old {
            return Ok(());
        }
        if new_capacity.div_ceil(u64::from(self.extent_blocks())) > self.map.reach() {
            return Err(CbtError::TooLarge(new_capacity));
        }
        self.capacity.fetch_max(new_capacity, SeqCst);
        // Intents are durable before the new capacity is, so a crash in
        // between either recovers these regions or re-grows at open.
        let guard = self.begin_change(old, new_capacity - old, ChangeKind::Write)?;
        if let Some(durable) = &self.durable {
            durable.set_capacity(new_capacity)?;
        }
        drop(guard);
        Ok(())
    }
}

/// Calls `f(chunk index, bit mask)` for the chunks of extents `[first, end)`.
fn for_each_chunk_mask(first: u64, end: u64, mut f: impl FnMut(u64, u64)) {
    let mut x = first;
    while x < end {
        let ci = x >> CHUNK_SHIFT;
        let stop = ((ci + 1) << CHUNK_SHIFT).min(end);
        let lo = x - (ci << CHUNK_SHIFT);
        let n = stop - x;
        let mask = if n == CHUNK_EXTENTS {
            u64::MAX
        } else {
            ((1u64 << n) - 1) << lo
        };
        f(ci, mask);
        x = stop;
    }
}

/// Poll with backoff: a spin, then yields, then short sleeps. Writers never
/// signal, which keeps their path free of locks and syscalls.
pub(crate) fn wait_until(timeout: Option<Duration>, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    let mut round = 0u32;
    while !done() {
        if timeout.is_some_and(|t| start.elapsed() >= t) {
            return false;
        }
        match round {
            0..64 => std::hint::spin_loop(),
            64..128 => std::thread::yield_now(),
            _ => std::thread::sleep(Duration::from_micros(50 << (round - 128).min(5))),
        }
        round = round.saturating_add(1);
    }
    true
}

fn begin<T: Deref<Target = Tracker>>(
    tracker: T,
    lba: u64,
    blocks: u64,
    kind: ChangeKind,
) -> Result<ChangeGuard<T>, CbtError> {
    let mut guard = ChangeGuard {
        tracker,
        rec: InFlight {
            slot: None,
            lba,
            blocks,
            kind,
            unmap_seqs: Vec::new(),
        },
    };
    // On error the guard drops here and deregisters.
    guard.tracker.start(&mut guard.rec)?;
    Ok(guard)
}

struct InFlight {
    slot: Option<usize>,
    lba: u64,
    blocks: u64,
    kind: ChangeKind,
    /// Unmap only: (chunk, write counter at begin, whole-extent mask).
    unmap_seqs: Vec<(u64, u64, u64)>,
}

/// A change in flight; drop it after the data write completed (or failed).
/// `T` is `&Tracker` or `Arc<Tracker>`.
pub struct ChangeGuard<T: Deref<Target = Tracker>> {
    tracker: T,
    rec: InFlight,
}

impl<T: Deref<Target = Tracker>> ChangeGuard<T> {
    /// The backend call failed. The extents stay stamped (over-reporting
    /// is safe), but a failed UNMAP may have freed nothing: it must not
    /// leave the "deallocated" hint behind, or a backup would zero-fill
    /// data that is still there. Ending it as a write clears the hint.
    pub fn failed(&mut self) {
        self.rec.kind = ChangeKind::Write;
    }
}

impl<T: Deref<Target = Tracker>> Drop for ChangeGuard<T> {
    fn drop(&mut self) {
        let Some(slot) = self.rec.slot else { return };
        self.tracker.end_change(&self.rec);
        self.tracker.inflight[slot].fetch_sub(1, SeqCst);
    }
}
