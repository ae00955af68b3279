//! Removable medium (INQUIRY RMB=1): whether the medium is loaded, and
//! which I_T nexuses prevent its removal (SPC-5 §6.15 / SBC-4 §5.13 PREVENT
//! ALLOW MEDIUM REMOVAL, SBC-4 §5.25 START STOP UNIT with LOEJ).
//!
//! Ejecting never touches the LUN's data: the backend stays open and
//! unchanged, only the commands that need the medium are refused with
//! NOT READY, MEDIUM NOT PRESENT until it is loaded again.

use super::sense::{Sense, SenseReason};
use std::collections::BTreeSet;
use std::sync::{Mutex, MutexGuard};

/// The medium of one logical unit.
#[derive(Debug, Default)]
pub struct Medium {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// `false` (the default) means loaded: a LUN starts with its medium in.
    ejected: bool,
    /// Nexus ids that sent PREVENT=01b and have not allowed removal since.
    /// Removal stays prevented while any of them holds it (SPC-5: the
    /// prevention is per I_T nexus and ends only for that nexus).
    preventing: BTreeSet<u64>,
}

impl Medium {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is two plain values: a panic elsewhere cannot leave
        // it half-updated, so poisoning is ignored.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Is the medium loaded?
    pub fn present(&self) -> bool {
        !self.lock().ejected
    }

    /// PREVENT ALLOW MEDIUM REMOVAL from `nexus`.
    pub fn set_prevent(&self, nexus: u64, prevent: bool) {
        let mut s = self.lock();
        if prevent {
            s.preventing.insert(nexus);
        } else {
            s.preventing.remove(&nexus);
        }
    }

    /// Does any nexus prevent removal?
    pub fn prevented(&self) -> bool {
        !self.lock().preventing.is_empty()
    }

    /// START STOP UNIT with LOEJ=1: load (`load`) or eject the medium.
    /// While any nexus prevents removal both are refused with MEDIUM
    /// REMOVAL PREVENTED: SBC-4 only requires refusing the eject, but
    /// libiscsi's PreventAllow.Eject expects a load to be refused too, so
    /// prevention locks the medium in whatever state it is (tgt loads and
    /// fails that test). Loading a loaded or ejecting an ejected medium is
    /// a no-op.
    pub fn load_or_eject(&self, load: bool) -> Result<(), Sense> {
        let mut s = self.lock();
        if !s.preventing.is_empty() {
            return Err(SenseReason::MediumRemovalPrevented.into());
        }
        s.ejected = !load;
        Ok(())
    }

    /// The nexus is gone (logout, connection loss): its prevention ends
    /// (SPC-5 §6.15).
    pub fn nexus_lost(&self, nexus: u64) {
        self.lock().preventing.remove(&nexus);
    }

    /// LOGICAL UNIT RESET, TARGET WARM/COLD RESET: every prevention ends.
    /// A reset does not move the medium.
    pub fn reset(&self) {
        self.lock().preventing.clear();
    }
}

/// Commands that work with no medium loaded: identification, sense,
/// mode parameters, reservations, medium handling itself, the command
/// list and CBT's bookkeeping. Everything else (TEST UNIT READY, READ
/// CAPACITY, every read, write, verify, cache and copy command) reads or
/// changes the medium and gets NOT READY, MEDIUM NOT PRESENT.
const WITHOUT_MEDIUM: [u8; 17] = [
    0x03, // REQUEST SENSE
    0x12, // INQUIRY
    0x15, // MODE SELECT(6)
    0x16, // RESERVE(6)
    0x17, // RELEASE(6)
    0x1a, // MODE SENSE(6)
    0x1b, // START STOP UNIT (loads the medium)
    0x1e, // PREVENT ALLOW MEDIUM REMOVAL
    0x55, // MODE SELECT(10)
    0x56, // RESERVE(10)
    0x57, // RELEASE(10)
    0x5a, // MODE SENSE(10)
    0x5e, // PERSISTENT RESERVE IN
    0x5f, // PERSISTENT RESERVE OUT
    0x84, // RECEIVE COPY RESULTS
    0xa0, // REPORT LUNS
    0xa3, // MAINTENANCE IN (REPORT SUPPORTED OPERATION CODES)
];

/// Does `opcode` need the medium loaded?
pub fn needs_medium(opcode: u8) -> bool {
    // CBT (C0h) reports tracking state and write locks, not medium data.
    opcode != 0xc0 && !WITHOUT_MEDIUM.contains(&opcode)
}
