//! Unit attention conditions, queued per (I_T nexus, LUN) (SAM-5 §5.14).

use super::sense::SenseReason;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// Bound on queued conditions per nexus and LUN: older ones are dropped
/// (SAM-5 allows reporting only the most recent when too many pile up).
const MAX_QUEUED: usize = 8;

#[derive(Default)]
pub struct UnitAttentions {
    /// nexus id → LUN → pending conditions, oldest first.
    pending: Mutex<HashMap<u64, HashMap<u64, VecDeque<SenseReason>>>>,
}

impl UnitAttentions {
    fn with<R>(
        &self,
        f: impl FnOnce(&mut HashMap<u64, HashMap<u64, VecDeque<SenseReason>>>) -> R,
    ) -> R {
        // A poisoned lock only means another command panicked mid-update;
        // the map itself is still usable.
        let mut g = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut g)
    }

    fn push(queue: &mut VecDeque<SenseReason>, reason: SenseReason) {
        if queue.contains(&reason) {
            return;
        }
        if queue.len() >= MAX_QUEUED {
            queue.pop_front();
        }
        queue.push_back(reason);
    }

    /// Register a nexus with `reason` pending on each of `luns`.
    pub fn add_nexus(&self, nexus: u64, luns: impl Iterator<Item = u64>, reason: SenseReason) {
        self.with(|m| {
            let per_lun = m.entry(nexus).or_default();
            for lun in luns {
                Self::push(per_lun.entry(lun).or_default(), reason);
            }
        });
    }

    pub fn remove_nexus(&self, nexus: u64) {
        self.with(|m| m.remove(&nexus));
    }

    /// Move `nexus`'s pending conditions from `from` into this table
    /// (the nexus moves to another device server at a reload).
    pub fn move_nexus_from(&self, from: &UnitAttentions, nexus: u64) {
        let moved = from.with(|m| m.remove(&nexus)).unwrap_or_default();
        self.with(|m| {
            let per_lun = m.entry(nexus).or_default();
            for (lun, queue) in moved {
                let q = per_lun.entry(lun).or_default();
                for reason in queue {
                    Self::push(q, reason);
                }
            }
        });
    }

    /// Establish `reason` for `lun` on every known nexus. A reset
    /// supersedes whatever was pending for that LUN.
    pub fn establish_all(&self, lun: u64, reason: SenseReason, supersede: bool) {
        self.with(|m| {
            for per_lun in m.values_mut() {
                let q = per_lun.entry(lun).or_default();
                if supersede {
                    q.clear();
                }
                Self::push(q, reason);
            }
        });
    }

    /// Establish `reason` for `lun` on every known nexus but `except` (the
    /// one whose command caused it, e.g. MODE SELECT).
    pub fn establish_others(&self, lun: u64, reason: SenseReason, except: u64) {
        self.with(|m| {
            for (_, per_lun) in m.iter_mut().filter(|(n, _)| **n != except) {
                Self::push(per_lun.entry(lun).or_default(), reason);
            }
        });
    }

    /// Establish `reason` for one (nexus, lun) (reservation changes).
    pub fn establish(&self, nexus: u64, lun: u64, reason: SenseReason) {
        self.with(|m| Self::push(m.entry(nexus).or_default().entry(lun).or_default(), reason));
    }

    /// Take the oldest pending condition for (nexus, lun).
    pub fn take(&self, nexus: u64, lun: u64) -> Option<SenseReason> {
        self.with(|m| m.get_mut(&nexus)?.get_mut(&lun)?.pop_front())
    }

    #[cfg(test)]
    pub fn has_pending(&self, nexus: u64, lun: u64) -> bool {
        self.with(|m| {
            m.get(&nexus)
                .and_then(|l| l.get(&lun))
                .is_some_and(|q| !q.is_empty())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_per_nexus_and_lun() {
        let ua = UnitAttentions::default();
        ua.add_nexus(1, [0, 1].into_iter(), SenseReason::PowerOnReset);
        ua.add_nexus(2, [0, 1].into_iter(), SenseReason::PowerOnReset);
        assert_eq!(ua.take(1, 0), Some(SenseReason::PowerOnReset));
        assert_eq!(ua.take(1, 0), None);
        assert!(ua.has_pending(1, 1));
        ua.establish_all(1, SenseReason::BusDeviceReset, true);
        assert_eq!(ua.take(2, 1), Some(SenseReason::BusDeviceReset));
        assert_eq!(ua.take(2, 1), None);
        assert_eq!(ua.take(2, 0), Some(SenseReason::PowerOnReset));
        ua.remove_nexus(1);
        assert!(!ua.has_pending(1, 1));
        assert_eq!(ua.take(99, 0), None);
    }

    #[test]
    fn bounded_and_deduplicated() {
        let ua = UnitAttentions::default();
        ua.add_nexus(1, std::iter::once(0), SenseReason::PowerOnReset);
        ua.establish_all(0, SenseReason::PowerOnReset, false);
        ua.establish_all(0, SenseReason::ReportedLunsDataChanged, false);
        assert_eq!(ua.take(1, 0), Some(SenseReason::PowerOnReset));
        assert_eq!(ua.take(1, 0), Some(SenseReason::ReportedLunsDataChanged));
        assert_eq!(ua.take(1, 0), None);
    }
}
