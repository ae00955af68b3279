//! RECEIVE COPY RESULTS (84h, LID1 service actions; SPC-4 §6.18), the copy
//! manager's advertised limits, the results it holds per I_T nexus, and
//! the Third-party Copy VPD page (8Fh) built from the same limits.

use crate::scsi::ScsiCommand;
use crate::scsi::cdb::{CmdResult, Ctx};
use crate::scsi::data::{be, byte, data_in};
use crate::scsi::sense::Sense;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;

/// Identification (CSCD) descriptors one EXTENDED COPY may carry.
pub const MAX_CSCD_DESCRIPTORS: u16 = 8;
/// Segment descriptors one EXTENDED COPY may carry.
pub const MAX_SEGMENT_DESCRIPTORS: u16 = 16;
/// Bytes of CSCD plus segment descriptors: exactly the counts above at
/// their fixed sizes (32 and 28 bytes), so neither limit is unreachable.
pub const MAX_DESCRIPTOR_LIST_LENGTH: u32 =
    MAX_CSCD_DESCRIPTORS as u32 * 32 + MAX_SEGMENT_DESCRIPTORS as u32 * 28;
/// Bytes one segment may move (a block-to-block segment's count is 16 bits).
pub const MAX_SEGMENT_LENGTH: u32 = 64 << 20;
/// Copies the copy manager processes at once (advisory: copies run on the
/// command's own thread).
pub const MAX_CONCURRENT_COPIES: u8 = 16;
/// Descriptor type codes implemented: block→block segment, identification
/// CSCD descriptor.
pub const IMPLEMENTED_DESCRIPTORS: [u8; 2] = [0x02, 0xe4];
/// Held results kept per nexus; the oldest is dropped beyond this.
const MAX_HELD: usize = 16;

/// COPY MANAGER STATUS values.
pub const COPY_DONE: u8 = 0x01;
pub const COPY_FAILED: u8 = 0x02;

/// What RECEIVE COPY RESULTS can report for one finished copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldResult {
    pub list_id: u8,
    pub status: u8,
    pub segments: u16,
    pub bytes: u64,
    /// Fixed-format sense of the failure (FAILED SEGMENT DETAILS).
    pub failure: Option<Vec<u8>>,
    status_taken: bool,
}

impl HeldResult {
    pub fn new(list_id: u8, status: u8, segments: u16, bytes: u64) -> HeldResult {
        HeldResult {
            list_id,
            status,
            segments,
            bytes,
            failure: None,
            status_taken: false,
        }
    }
}

/// Copy operations in progress and held results, per I_T nexus (list
/// identifiers are scoped to the nexus, SPC-4 §6.4.3).
#[derive(Default)]
pub struct CopyResults {
    inner: Mutex<State>,
}

#[derive(Default)]
struct State {
    active: HashSet<(u64, u8)>,
    held: HashMap<u64, VecDeque<HeldResult>>,
}

impl CopyResults {
    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut g)
    }

    /// Mark a list id busy; false when a copy with it is still running.
    pub fn start(&self, nexus: u64, list_id: u8) -> bool {
        self.with(|s| s.active.insert((nexus, list_id)))
    }

    /// The copy with `list_id` ended; hold its result when there is one.
    pub fn finish(&self, nexus: u64, list_id: u8, result: Option<HeldResult>) {
        self.with(|s| {
            s.active.remove(&(nexus, list_id));
            let Some(r) = result else { return };
            let q = s.held.entry(nexus).or_default();
            q.retain(|h| h.list_id != r.list_id);
            if q.len() >= MAX_HELD {
                q.pop_front();
            }
            q.push_back(r);
        })
    }

    pub fn nexus_removed(&self, nexus: u64) {
        self.with(|s| {
            s.held.remove(&nexus);
            s.active.retain(|(n, _)| *n != nexus);
        })
    }

    /// Hand out part of a held result; `take` consumes that part, and the
    /// record goes once both its status and failure were reported.
    fn report<R>(
        &self,
        nexus: u64,
        list_id: u8,
        take: impl FnOnce(&mut HeldResult) -> R,
    ) -> Option<R> {
        self.with(|s| {
            let q = s.held.get_mut(&nexus)?;
            let i = q.iter().position(|h| h.list_id == list_id)?;
            let r = take(q.get_mut(i)?);
            if q.get(i)
                .is_some_and(|h| h.status_taken && h.failure.is_none())
            {
                q.remove(i);
            }
            Some(r)
        })
    }
}

pub fn receive_copy_results(ctx: &Ctx, cmd: &ScsiCommand) -> CmdResult {
    ctx.lu()?;
    let list_id = byte(cmd.cdb, 2);
    let alloc = be(cmd.cdb, 10, 4);
    let copies = &ctx.server.copies;
    let nexus = ctx.nexus.id;
    let data = match byte(cmd.cdb, 1) & 0x1f {
        0x00 => copies
            .report(nexus, list_id, |h| {
                h.status_taken = true;
                copy_status(h)
            })
            .ok_or(Sense::invalid_cdb_field(2, None))?,
        0x04 => copies
            .report(nexus, list_id, |h| failed_segment_details(h.failure.take()))
            .ok_or(Sense::invalid_cdb_field(2, None))?,
        _ => operating_parameters(),
    };
    Ok(data_in(cmd, data, alloc))
}

fn copy_status(h: &HeldResult) -> Vec<u8> {
    let mut d = vec![0u8; 12];
    d[3] = 8;
    d[4] = h.status & 0x7f; // HDD 0: no held data
    d[5..7].copy_from_slice(&h.segments.to_be_bytes());
    // TRANSFER COUNT UNITS 0 (bytes) while the count fits, else KiB.
    let (units, count) = match u32::try_from(h.bytes) {
        Ok(b) => (0, b),
        Err(_) => (1, u32::try_from(h.bytes >> 10).unwrap_or(u32::MAX)),
    };
    d[7] = units;
    d[8..12].copy_from_slice(&count.to_be_bytes());
    d
}

fn failed_segment_details(sense: Option<Vec<u8>>) -> Vec<u8> {
    let Some(sense) = sense else {
        // Nothing failed: AVAILABLE DATA zero.
        return vec![0u8; 4];
    };
    let mut d = vec![0u8; 60];
    d[56] = crate::scsi::status::CHECK_CONDITION;
    d[58..60].copy_from_slice(&(sense.len() as u16).to_be_bytes());
    d.extend_from_slice(&sense);
    let avail = (d.len() - 4) as u32;
    d[0..4].copy_from_slice(&avail.to_be_bytes());
    d
}

fn operating_parameters() -> Vec<u8> {
    let mut d = vec![0u8; 44];
    d[4] = 0x01; // SNLID: list identifiers of concurrent copies are checked
    d[8..10].copy_from_slice(&MAX_CSCD_DESCRIPTORS.to_be_bytes());
    d[10..12].copy_from_slice(&MAX_SEGMENT_DESCRIPTORS.to_be_bytes());
    d[12..16].copy_from_slice(&MAX_DESCRIPTOR_LIST_LENGTH.to_be_bytes());
    d[16..20].copy_from_slice(&MAX_SEGMENT_LENGTH.to_be_bytes());
    // Inline data, held data and stream transfer size: none (0).
    d[34..36].copy_from_slice(&u16::from(MAX_CONCURRENT_COPIES).to_be_bytes());
    d[36] = MAX_CONCURRENT_COPIES;
    // Granularities (log2): data segments are whole blocks of at least 512.
    d[37] = 9;
    d[43] = IMPLEMENTED_DESCRIPTORS.len() as u8;
    d.extend_from_slice(&IMPLEMENTED_DESCRIPTORS);
    let avail = (d.len() - 4) as u32;
    d[0..4].copy_from_slice(&avail.to_be_bytes());
    d
}

/// Third-party Copy VPD page body (SPC-4 §7.8.17): the descriptors for
/// EXTENDED COPY(LID1) with the same limits as OPERATING PARAMETERS.
pub fn third_party_copy_vpd() -> Vec<u8> {
    let mut d = Vec::new();
    // Supported Commands: 83h/00h, 84h/00h,03h,04h.
    let cmds = [0x83, 1, 0x00, 0x84, 3, 0x00, 0x03, 0x04];
    let mut body = vec![cmds.len() as u8];
    body.extend_from_slice(&cmds);
    tpc_descriptor(&mut d, 0x0001, body);
    // Parameter Data.
    let mut body = vec![0u8; 4];
    body.extend_from_slice(&MAX_CSCD_DESCRIPTORS.to_be_bytes());
    body.extend_from_slice(&MAX_SEGMENT_DESCRIPTORS.to_be_bytes());
    body.extend_from_slice(&MAX_DESCRIPTOR_LIST_LENGTH.to_be_bytes());
    body.extend_from_slice(&0u32.to_be_bytes()); // max inline data length
    body.extend_from_slice(&[0u8; 12]);
    tpc_descriptor(&mut d, 0x0004, body);
    // Supported Descriptors.
    let mut body = vec![IMPLEMENTED_DESCRIPTORS.len() as u8];
    body.extend_from_slice(&IMPLEMENTED_DESCRIPTORS);
    tpc_descriptor(&mut d, 0x0008, body);
    // Supported CSCD Descriptor IDs: none.
    tpc_descriptor(&mut d, 0x000c, vec![0, 0]);
    // General Copy Operations.
    let mut body = u32::from(MAX_CONCURRENT_COPIES).to_be_bytes().to_vec();
    body.extend_from_slice(&u32::from(MAX_CONCURRENT_COPIES).to_be_bytes());
    body.extend_from_slice(&MAX_SEGMENT_LENGTH.to_be_bytes());
    body.extend_from_slice(&[9, 0]);
    body.extend_from_slice(&[0u8; 18]);
    tpc_descriptor(&mut d, 0x8001, body);
    d
}

/// One descriptor: type, length, body padded to a multiple of 4 bytes.
fn tpc_descriptor(out: &mut Vec<u8>, kind: u16, mut body: Vec<u8>) {
    while !(body.len() + 4).is_multiple_of(4) {
        body.push(0);
    }
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(&body);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_results_consumed_once() {
        let c = CopyResults::default();
        assert!(c.start(1, 5));
        assert!(!c.start(1, 5));
        c.finish(1, 5, Some(HeldResult::new(5, COPY_DONE, 1, 512)));
        assert!(c.start(1, 5));
        c.finish(1, 5, None);
        let d = c.report(1, 5, |h| {
            h.status_taken = true;
            copy_status(h)
        });
        assert_eq!(d.unwrap()[4], COPY_DONE);
        assert!(c.report(1, 5, |_| ()).is_none());
        c.finish(2, 7, Some(HeldResult::new(7, COPY_DONE, 1, 0)));
        c.nexus_removed(2);
        assert!(c.report(2, 7, |_| ()).is_none());
    }
}
