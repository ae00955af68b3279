//! The reservation state of one logical unit: persistent reservation
//! registrations and holder (SPC-5 §5.13) plus the SPC-2 RESERVE holder.
//! Pure data and rules; the handlers lock it, persist.rs stores it.

use crate::scsi::Nexus;

/// Persistent reservation types (SPC-5 table 174), by their TYPE code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrType {
    WriteExclusive = 1,
    ExclusiveAccess = 3,
    WriteExclusiveRegistrantsOnly = 5,
    ExclusiveAccessRegistrantsOnly = 6,
    WriteExclusiveAllRegistrants = 7,
    ExclusiveAccessAllRegistrants = 8,
}

impl PrType {
    pub fn from_code(code: u8) -> Option<PrType> {
        use PrType::*;
        Some(match code {
            1 => WriteExclusive,
            3 => ExclusiveAccess,
            5 => WriteExclusiveRegistrantsOnly,
            6 => ExclusiveAccessRegistrantsOnly,
            7 => WriteExclusiveAllRegistrants,
            8 => ExclusiveAccessAllRegistrants,
            _ => return None,
        })
    }

    pub fn code(self) -> u8 {
        self as u8
    }

    /// Every registrant is a reservation holder (SPC-5 §5.13.10).
    pub fn all_registrants(self) -> bool {
        matches!(
            self,
            PrType::WriteExclusiveAllRegistrants | PrType::ExclusiveAccessAllRegistrants
        )
    }

    /// Registrants that do not hold the reservation still get access.
    pub fn registrants_have_access(self) -> bool {
        !matches!(self, PrType::WriteExclusive | PrType::ExclusiveAccess)
    }

    /// Only writes are refused to those without access (reads pass).
    pub fn write_exclusive_family(self) -> bool {
        matches!(
            self,
            PrType::WriteExclusive
                | PrType::WriteExclusiveRegistrantsOnly
                | PrType::WriteExclusiveAllRegistrants
        )
    }
}

/// One registered I_T nexus. It is named by the SCSI initiator port name
/// and the relative target port, not by the session, so a reconnecting
/// initiator with the same ISID keeps its registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub port: String,
    pub rel_port: u16,
    pub key: u64,
    /// Registered with ALL_TG_PT=1 (we have one target port, so it only
    /// changes what READ FULL STATUS reports).
    pub all_tg_pt: bool,
}

impl Registration {
    pub fn is(&self, port: &str, rel_port: u16) -> bool {
        self.rel_port == rel_port && self.port == port
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub kind: PrType,
    /// The holder's I_T nexus (port name, relative port); `None` for the
    /// all-registrants types, where every registrant holds it.
    pub holder: Option<(String, u16)>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrState {
    /// PRgeneration: bumped by every PROUT except RESERVE and RELEASE.
    pub generation: u32,
    pub registrations: Vec<Registration>,
    pub reservation: Option<Reservation>,
    /// The last valid APTPL bit: the state survives a restart.
    pub aptpl: bool,
    /// SPC-2 RESERVE(6)/(10) holder, by nexus id. Never persisted: it ends
    /// with the nexus, a reset or a restart.
    pub spc2_holder: Option<u64>,
}

impl PrState {
    pub fn registration(&self, n: &Nexus) -> Option<&Registration> {
        self.registrations
            .iter()
            .find(|r| r.is(&n.initiator_port, n.relative_port))
    }

    pub fn is_registered(&self, n: &Nexus) -> bool {
        self.registration(n).is_some()
    }

    /// Does `n` hold the persistent reservation?
    pub fn is_holder(&self, n: &Nexus) -> bool {
        match &self.reservation {
            None => false,
            Some(r) if r.kind.all_registrants() => self.is_registered(n),
            Some(r) => r
                .holder
                .as_ref()
                .is_some_and(|(p, rp)| *p == n.initiator_port && *rp == n.relative_port),
        }
    }

    /// May `n` do anything the reservation otherwise restricts?
    pub fn has_access(&self, n: &Nexus) -> bool {
        match &self.reservation {
            None => true,
            Some(r) => {
                self.is_holder(n) || (r.kind.registrants_have_access() && self.is_registered(n))
            }
        }
    }

    /// The key reported for the reservation (zero for all-registrants).
    pub fn reservation_key(&self) -> u64 {
        match &self.reservation {
            Some(Reservation {
                holder: Some((p, rp)),
                ..
            }) => self
                .registrations
                .iter()
                .find(|r| r.is(p, *rp))
                .map_or(0, |r| r.key),
            _ => 0,
        }
    }

    pub fn bump(&mut self) {
        self.generation = self.generation.wrapping_add(1);
    }

    /// Remove `n`'s registration. Releases the reservation when `n` held
    /// it alone, or was the last registrant of an all-registrants type
    /// (SPC-5 §5.13.11.2.3). Returns the released reservation type.
    pub fn unregister(&mut self, port: &str, rel_port: u16) -> Option<PrType> {
        let holder_gone = match &self.reservation {
            Some(r) if !r.kind.all_registrants() => r
                .holder
                .as_ref()
                .is_some_and(|(p, rp)| p == port && *rp == rel_port),
            _ => false,
        };
        self.registrations.retain(|r| !r.is(port, rel_port));
        let last_gone = self.registrations.is_empty();
        match &self.reservation {
            Some(r) if holder_gone || (r.kind.all_registrants() && last_gone) => {
                let kind = r.kind;
                self.reservation = None;
                Some(kind)
            }
            _ => None,
        }
    }
}
