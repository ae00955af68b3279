//! Live reconfiguration: when a reload changes a target's LUN set, the
//! target gets a new device server built around the logical units that
//! stayed (their data, reservations, trackers and locks live in the
//! `LogicalUnit`, so they survive). Each live I_T nexus moves over to it.

use super::sense::SenseReason;
use super::{DeviceServer, Nexus};

impl DeviceServer {
    /// Take over `nexus` from `from`, the device server this one replaces:
    /// its pending unit attentions and its reservation bookkeeping move
    /// here, and it gets REPORTED LUNS DATA HAS CHANGED on every LUN
    /// (SPC-5 §5.14: the LUN inventory changed under it). Nothing per
    /// logical unit is touched: its reservations and CBT lock stay.
    pub fn adopt_nexus(&self, nexus: &Nexus, from: &DeviceServer) {
        self.ua.move_nexus_from(&from.ua, nexus.id);
        from.pr.nexus_removed(nexus.id);
        from.copies.nexus_removed(nexus.id);
        self.pr.nexus_added(nexus);
        for lun in self.visible_luns(nexus) {
            self.ua
                .establish(nexus.id, lun, SenseReason::ReportedLunsDataChanged);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::MemoryBackend;
    use crate::scsi::{LogicalUnit, LunIdentity};
    use std::sync::Arc;

    fn lu(n: u8) -> Arc<LogicalUnit> {
        let id = LunIdentity {
            serial: format!("S{n}"),
            naa: [0x60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, n],
        };
        Arc::new(LogicalUnit::new(
            Arc::new(MemoryBackend::new(1 << 20)),
            512,
            id,
            false,
        ))
    }

    #[test]
    fn nexus_moves_with_its_attentions() {
        let kept = lu(0);
        let old = DeviceServer::new("t", vec![(0, kept.clone())]);
        let nexus = Nexus {
            id: 7,
            initiator_port: "iqn.x,i,0x000000000001".into(),
            initiator_name: "iqn.x".into(),
            relative_port: 1,
        };
        old.nexus_added(&nexus);
        let new = DeviceServer::new("t", vec![(0, kept), (1, lu(1))]);
        new.adopt_nexus(&nexus, &old);
        // The power-on attention still pending moves, then the new one.
        assert_eq!(new.ua.take(7, 0), Some(SenseReason::PowerOnReset));
        assert_eq!(
            new.ua.take(7, 0),
            Some(SenseReason::ReportedLunsDataChanged)
        );
        assert_eq!(
            new.ua.take(7, 1),
            Some(SenseReason::ReportedLunsDataChanged)
        );
        assert_eq!(new.ua.take(7, 1), None);
        assert_eq!(old.ua.take(7, 0), None);
        assert_eq!(new.pr.ids_of(&nexus.initiator_port, 1), vec![7]);
        assert!(old.pr.ids_of(&nexus.initiator_port, 1).is_empty());
    }
}
