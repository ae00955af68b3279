//! Recycled I/O buffers: read data, write data, data segments.
//!
//! Why: a fresh 128 KiB `vec![0; n]` per READ costs a memset, page faults
//! and often an mmap/munmap pair (glibc hands large blocks to the kernel
//! and back); a profile of 128 KiB sequential reads spent ~10 % of the
//! target's CPU there. Buffers are kept per power-of-two size class, a few
//! MiB per class at most, and dropped when [`trim`] finds a class unused
//! since its last call, so an idle target gives the memory back.
//!
//! A recycled buffer holds stale bytes from an earlier command (possibly of
//! another initiator): callers of [`take`] must overwrite all of it before
//! anyone sees it, or drop it on error. Backend `read_at` fills the whole
//! buffer or fails, which is the use this is for.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// Smallest and largest pooled capacities (as log2).
const MIN_SHIFT: u32 = 12;
const MAX_SHIFT: u32 = 20;
const CLASSES: usize = (MAX_SHIFT - MIN_SHIFT + 1) as usize;
/// Bytes kept per class at most.
const CLASS_BYTES: usize = 4 << 20;

struct Class {
    free: Mutex<Vec<Vec<u8>>>,
    used: AtomicBool,
}

/// Free lists by size class. The process uses one, [`GLOBAL`], through the
/// free functions below.
pub struct Pool {
    classes: [Class; CLASSES],
}

static GLOBAL: Pool = Pool::new();

fn class_of(capacity: usize) -> Option<usize> {
    if capacity == 0 || capacity > 1 << MAX_SHIFT {
        return None;
    }
    let shift = capacity.next_power_of_two().trailing_zeros().max(MIN_SHIFT);
    Some((shift - MIN_SHIFT) as usize)
}

/// A buffer of exactly `len` bytes from the process's pool: see
/// [`Pool::take`].
pub fn take(len: usize) -> Vec<u8> {
    GLOBAL.take(len)
}

/// An empty buffer with room for `cap` bytes: see [`Pool::with_capacity`].
pub fn with_capacity(cap: usize) -> Vec<u8> {
    GLOBAL.with_capacity(cap)
}

/// `bytes` in a buffer of their own: from the process's pool when they are
/// large enough to be worth recycling (4 KiB and up), copied exactly
/// otherwise (text, sense and the like, which may be kept a while).
pub fn copy_of(bytes: &[u8]) -> Vec<u8> {
    let mut v = room_for(bytes.len());
    v.extend_from_slice(bytes);
    v
}

/// An empty buffer for `cap` bytes of data: pooled like [`copy_of`]'s
/// from 4 KiB up, exactly `cap` below.
pub fn room_for(cap: usize) -> Vec<u8> {
    if cap < 1 << MIN_SHIFT {
        return Vec::with_capacity(cap);
    }
    with_capacity(cap)
}

/// Hand a buffer back to the process's pool: see [`Pool::give`].
pub fn give(v: Vec<u8>) {
    GLOBAL.give(v)
}

/// Drop the process's idle buffers: see [`Pool::trim`].
pub fn trim() {
    GLOBAL.trim()
}

impl Pool {
    pub const fn new() -> Pool {
        Pool {
            classes: [const {
                Class {
                    free: Mutex::new(Vec::new()),
                    used: AtomicBool::new(false),
                }
            }; CLASSES],
        }
    }

    /// A buffer of exactly `len` bytes, recycled when one is free (stale
    /// contents: overwrite it all) or newly zeroed.
    pub fn take(&self, len: usize) -> Vec<u8> {
        let Some(mut v) = self.reuse(len) else {
            return vec![0; len];
        };
        // The bytes up to its old length are initialised already: only
        // growth beyond them is zeroed (capacity suffices, nothing
        // reallocates).
        v.resize(len, 0);
        v
    }

    /// An empty buffer with room for at least `cap` bytes (recycled when
    /// one is free). Its spare capacity may hold stale bytes, which safe
    /// code cannot see.
    pub fn with_capacity(&self, cap: usize) -> Vec<u8> {
        let mut v = self.reuse(cap).unwrap_or_else(|| Vec::with_capacity(cap));
        v.clear();
        v
    }

    /// A free buffer of the class that fits `len` (a fresh one of the
    /// class's full capacity when the class is empty); `None` when `len`
    /// is not pooled.
    fn reuse(&self, len: usize) -> Option<Vec<u8>> {
        let c = class_of(len)?;
        let class = &self.classes[c];
        class.used.store(true, Ordering::Relaxed);
        let reused = class.free.lock().ok().and_then(|mut f| f.pop());
        Some(reused.unwrap_or_else(|| Vec::with_capacity(1 << (c as u32 + MIN_SHIFT))))
    }

    /// Hand a buffer back for reuse (any buffer: those of a foreign
    /// capacity are simply dropped).
    pub fn give(&self, v: Vec<u8>) {
        let cap = v.capacity();
        let Some(c) = class_of(cap) else {
            return;
        };
        if cap != 1 << (c as u32 + MIN_SHIFT) {
            return;
        }
        if let Ok(mut free) = self.classes[c].free.lock()
            && (free.len() + 1) * cap <= CLASS_BYTES
        {
            free.push(v);
        }
    }

    /// Drop the buffers of every class not used since the previous call.
    pub fn trim(&self) {
        for class in &self.classes {
            if !class.used.swap(false, Ordering::Relaxed)
                && let Ok(mut free) = class.free.lock()
            {
                free.clear();
                free.shrink_to_fit();
            }
        }
    }
}

impl Default for Pool {
    fn default() -> Self {
        Pool::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_round_up_and_bound() {
        assert_eq!(class_of(1), Some(0));
        assert_eq!(class_of(4096), Some(0));
        assert_eq!(class_of(4097), Some(1));
        assert_eq!(class_of(1 << 20), Some(CLASSES - 1));
        assert_eq!(class_of((1 << 20) + 1), None);
        assert_eq!(class_of(0), None);
    }

    #[test]
    fn a_given_buffer_comes_back_with_the_asked_length() {
        let pool = Pool::new();
        let mut v = pool.take(300_000);
        assert_eq!(v.len(), 300_000);
        assert_eq!(v.capacity(), 512 << 10);
        v[0] = 7;
        let ptr = v.as_ptr();
        pool.give(v);
        let w = pool.take(262_145);
        assert_eq!(w.len(), 262_145);
        assert_eq!(w.as_ptr(), ptr, "the same allocation is reused");
        pool.give(w);
        let e = pool.with_capacity(300_000);
        assert!(e.is_empty() && e.capacity() == 512 << 10);
        assert_eq!(e.as_ptr(), ptr);
        pool.give(e);
        // A foreign capacity is not kept.
        pool.give(Vec::with_capacity(300_000));
        let again = pool.take(300_000);
        assert_eq!(again.as_ptr(), ptr);
        pool.give(again);
        // Unused for a whole period: dropped.
        pool.trim();
        pool.trim();
        let x = pool.take(300_000);
        assert!(x.iter().all(|&b| b == 0), "a new buffer is zeroed");
    }
}
