//! PERSISTENT RESERVE IN/OUT helpers (SPC-5 §6.16, §6.17): READ KEYS,
//! READ RESERVATION and the basic PROUT service actions, for tools that
//! fence a LUN (the rollback of `gentgt restore --changed-only`).

use super::error::{InitiatorError, Result};
use super::session::Session;

/// PROUT service actions: the device server's own numbers.
pub use crate::scsi::pr::prout::{
    PREEMPT as PR_PREEMPT, REGISTER as PR_REGISTER, REGISTER_AND_IGNORE as PR_REGISTER_AND_IGNORE,
    RELEASE as PR_RELEASE, RESERVE as PR_RESERVE,
};
/// Reservation type Write Exclusive: only the holder may change the LU.
pub const PR_WRITE_EXCLUSIVE: u8 = crate::scsi::pr::state::PrType::WriteExclusive as u8;

/// The reservation READ RESERVATION reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrReservation {
    pub key: u64,
    pub kind: u8,
}

fn prin_cdb(sa: u8, alloc: u16) -> [u8; 10] {
    let a = alloc.to_be_bytes();
    [0x5e, sa, 0, 0, 0, 0, 0, a[0], a[1], 0]
}

fn short(what: &str) -> InitiatorError {
    InitiatorError::Protocol(format!("short PERSISTENT RESERVE IN ({what}) data"))
}

fn be64(d: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(d.get(at..at + 8)?.try_into().ok()?))
}

impl Session {
    /// READ KEYS: every registered reservation key.
    pub async fn pr_read_keys(&self, lun: u64) -> Result<Vec<u64>> {
        let alloc = 8 + 8 * 256;
        let d = self
            .scsi(lun, &prin_cdb(0, alloc), None, u32::from(alloc))
            .await?
            .good()?
            .data;
        let len = d
            .get(4..8)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .ok_or_else(|| short("READ KEYS"))?;
        let body = d.get(8..).unwrap_or_default();
        Ok(body
            .chunks_exact(8)
            .take(len / 8)
            .filter_map(|c| be64(c, 0))
            .collect())
    }

    /// READ RESERVATION: the reservation, if any.
    pub async fn pr_read_reservation(&self, lun: u64) -> Result<Option<PrReservation>> {
        let d = self
            .scsi(lun, &prin_cdb(1, 24), None, 24)
            .await?
            .good()?
            .data;
        let len = d
            .get(4..8)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or_else(|| short("READ RESERVATION"))?;
        if len == 0 {
            return Ok(None);
        }
        let key = be64(&d, 8).ok_or_else(|| short("READ RESERVATION"))?;
        let kind = d.get(21).ok_or_else(|| short("READ RESERVATION"))? & 0x0f;
        Ok(Some(PrReservation { key, kind }))
    }

    /// PERSISTENT RESERVE OUT with the basic 24-byte parameter list.
    pub async fn pr_out(&self, lun: u64, sa: u8, kind: u8, key: u64, sa_key: u64) -> Result<()> {
        let cdb = [0x5f, sa, kind & 0x0f, 0, 0, 0, 0, 0, 24, 0];
        let mut p = [0u8; 24];
        p[0..8].copy_from_slice(&key.to_be_bytes());
        p[8..16].copy_from_slice(&sa_key.to_be_bytes());
        self.scsi(lun, &cdb, Some(&p), 0).await?.good().map(drop)
    }
}
