//! Byte-range locks: a writer that must read-modify-write a whole
//! alignment block may not interleave with another write touching that
//! block, or it would put back stale bytes the other one just wrote.

use std::sync::{Condvar, Mutex};

#[derive(Default)]
pub struct RangeLocks {
    held: Mutex<Vec<(u64, u64)>>,
    freed: Condvar,
}

/// Holds `[start, end)` until dropped.
pub struct RangeGuard<'a> {
    locks: &'a RangeLocks,
    range: (u64, u64),
}

impl RangeLocks {
    /// Wait until no held range overlaps `[start, end)`, then hold it.
    /// Writers hold one range at a time, so there is no lock ordering to
    /// get wrong.
    pub fn lock(&self, start: u64, end: u64) -> RangeGuard<'_> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        while held.iter().any(|&(s, e)| s < end && start < e) {
            held = self.freed.wait(held).unwrap_or_else(|p| p.into_inner());
        }
        held.push((start, end));
        RangeGuard {
            locks: self,
            range: (start, end),
        }
    }
}

impl Drop for RangeGuard<'_> {
    fn drop(&mut self) {
        let mut held = self.locks.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = held.iter().position(|r| *r == self.range) {
            held.swap_remove(i);
        }
        self.locks.freed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    #[test]
    fn overlapping_ranges_exclude_each_other() {
        let locks = Arc::new(RangeLocks::default());
        let inside = Arc::new(AtomicU32::new(0));
        let threads: Vec<_> = (0..4u64)
            .map(|i| {
                let (locks, inside) = (locks.clone(), inside.clone());
                std::thread::spawn(move || {
                    for _ in 0..20 {
                        // Every range covers [4096, 8192).
                        let _g = locks.lock(i * 1000, 8192 + i);
                        assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0);
                        std::thread::sleep(Duration::from_micros(200));
                        inside.fetch_sub(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }

    #[test]
    fn disjoint_ranges_do_not_wait() {
        let locks = RangeLocks::default();
        let _a = locks.lock(0, 4096);
        let _b = locks.lock(4096, 8192);
        drop(_a);
        let _c = locks.lock(0, 4096);
    }
}
