//! Thin provisioning resources of a LUN: how much of what it could map it
//! holds (SBC-4 §4.7.3), the soft threshold on that, and the Logical Block
//! Provisioning log page (0Ch) that reports it.
//!
//! The resources of a file LUN are its allocated bytes (used) and what it
//! could still allocate (available: the filesystem's free space, capped by
//! the part of the LUN not yet allocated). Usage is used / (used +
//! available), so the threshold is reached both when the LUN itself fills
//! and when the filesystem below it runs short.

use super::LogicalUnit;
use crate::backend::{Backend, SpaceUse};
use std::sync::atomic::{AtomicBool, Ordering};

/// The soft threshold of one LUN and whether it is currently reached.
#[derive(Debug, Default)]
pub struct SpaceWatch {
    /// Percent of the resources in use that raises THIN PROVISIONING SOFT
    /// THRESHOLD REACHED; `None`: no threshold.
    threshold: Option<u8>,
    reached: AtomicBool,
}

impl SpaceWatch {
    pub fn new(threshold_percent: Option<u8>) -> SpaceWatch {
        SpaceWatch {
            threshold: threshold_percent,
            reached: AtomicBool::new(false),
        }
    }

    pub fn threshold(&self) -> Option<u8> {
        self.threshold
    }

    /// Usage was at or above the threshold at the last check.
    pub fn reached(&self) -> bool {
        self.reached.load(Ordering::Acquire)
    }

    /// After a command that changed the medium: true exactly when usage
    /// has just gone from below the threshold to at or above it (the unit
    /// attention is then established once; it is armed again when usage
    /// falls back below, e.g. after UNMAP or when the filesystem frees
    /// space). Costs nothing without a threshold.
    pub fn crossed(&self, backend: &dyn Backend) -> bool {
        let Some(limit) = self.threshold else {
            return false;
        };
        let use_ = match backend.space() {
            Ok(Some(u)) => u,
            Ok(None) => return false,
            Err(e) => {
                tracing::warn!(backend = %backend.describe(), error = %e, "cannot read space use");
                return false;
            }
        };
        let above = percent_used(use_) >= u64::from(limit);
        let was = self.reached.swap(above, Ordering::AcqRel);
        if above && !was {
            tracing::warn!(
                backend = %backend.describe(),
                allocated = use_.allocated,
                available = use_.available,
                threshold = limit,
                "thin provisioning soft threshold reached"
            );
        }
        above && !was
    }
}

/// Percent of the resources in use (0 when there are none at all).
fn percent_used(u: SpaceUse) -> u64 {
    let total = u.allocated.saturating_add(u.available);
    match total {
        0 => 0,
        t => (u128::from(u.allocated) * 100 / u128::from(t)) as u64,
    }
}

/// THRESHOLD EXPONENT (VPD B2h): resource counts are in units of
/// 2^exponent blocks. Without a threshold it is 0 (SBC-4: thresholds not
/// supported; the log page then counts single blocks); with one, the
/// smallest exponent from 1 whose count of the whole LUN fits 32 bits.
pub fn threshold_exponent(lu: &LogicalUnit) -> u8 {
    if lu.space.threshold.is_none() {
        return 0;
    }
    let blocks = lu.num_blocks();
    let mut e = 1u8;
    while e < 63 && (blocks >> e) > u64::from(u32::MAX) {
        e += 1;
    }
    e
}

/// Logical Block Provisioning log page (0Ch) parameters: 0001h available
/// and 0002h used LBA mapping resource counts, in threshold-exponent
/// units; available is shared with whatever else uses the filesystem
/// (SCOPE 10b), used is this LUN's own (SCOPE 01b). No parameters where
/// the backend cannot tell.
pub fn log_page_params(lu: &LogicalUnit) -> Vec<u8> {
    let Ok(Some(u)) = lu.backend.space() else {
        return Vec::new();
    };
    let unit = lu.block_bytes().max(1) << threshold_exponent(lu);
    let count = |bytes: u64| u32::try_from(bytes / unit).unwrap_or(u32::MAX);
    let mut out = Vec::new();
    for (code, bytes, scope) in [(1u16, u.available, 0b10u8), (2, u.allocated, 0b01)] {
        out.extend_from_slice(&code.to_be_bytes());
        // DU 0, TSD 0, ETC 0, TMC 0, FORMAT AND LINKING 11b; length 8.
        out.extend_from_slice(&[0x03, 0x08]);
        out.extend_from_slice(&count(bytes).to_be_bytes());
        out.extend_from_slice(&[0, 0, 0, scope]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::MemoryBackend;

    struct Fixed(SpaceUse);
    impl Backend for Fixed {
        fn read_at(&self, _: u64, _: &mut [u8]) -> std::io::Result<()> {
            Ok(())
        }
        fn write_at(&self, _: u64, _: &[u8], _: bool) -> std::io::Result<()> {
            Ok(())
        }
        fn flush(&self) -> std::io::Result<()> {
            Ok(())
        }
        fn unmap(&self, _: u64, _: u64) -> std::io::Result<()> {
            Ok(())
        }
        fn write_zeroes(&self, _: u64, _: u64) -> std::io::Result<()> {
            Ok(())
        }
        fn size(&self) -> u64 {
            1 << 30
        }
        fn describe(&self) -> String {
            "fixed".into()
        }
        fn space(&self) -> std::io::Result<Option<SpaceUse>> {
            Ok(Some(self.0))
        }
    }

    fn at(allocated: u64, available: u64) -> Fixed {
        Fixed(SpaceUse {
            allocated,
            available,
        })
    }

    #[test]
    fn crossing_reports_once_and_rearms_below() {
        let w = SpaceWatch::new(Some(50));
        assert!(!w.crossed(&at(10, 90)));
        assert!(w.crossed(&at(50, 50)));
        assert!(!w.crossed(&at(60, 40)), "still above: not again");
        assert!(!w.crossed(&at(10, 90)));
        assert!(w.crossed(&at(90, 10)), "armed again after falling below");
    }

    #[test]
    fn no_threshold_or_no_space_info_never_crosses() {
        assert!(!SpaceWatch::new(None).crossed(&at(100, 0)));
        let mem = MemoryBackend::new(1 << 20);
        assert!(!SpaceWatch::new(Some(1)).crossed(&mem));
        assert_eq!(
            percent_used(SpaceUse {
                allocated: 0,
                available: 0
            }),
            0
        );
    }
}
