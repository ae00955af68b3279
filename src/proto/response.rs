//! Builders for the PDUs a target sends in full feature phase
//! (RFC 7143 §11): SCSI Response, Data-In sequences, R2T, NOP-In, Reject,
//! Task Management Response, Logout Response, Async Message, Text Response.
//!
//! Sequence numbers (StatSN, ExpCmdSN, MaxCmdSN) are filled in by the
//! connection when it sends, through [`stamp`], so builders never guess.

use super::dataout::{NO_TTT, R2tRequest};
use super::pdu::{Opcode, Pdu};
use std::ops::Range;

/// Residual of a command: Expected Data Transfer Length against what the
/// command itself called for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Residual {
    None,
    Overflow(u32),
    Underflow(u32),
}

impl Residual {
    pub fn compute(edtl: u32, transfer_len: u32) -> Residual {
        use std::cmp::Ordering::*;
        match transfer_len.cmp(&edtl) {
            Greater => Residual::Overflow(transfer_len - edtl),
            Less => Residual::Underflow(edtl - transfer_len),
            Equal => Residual::None,
        }
    }

    /// The O/U flag bits (same positions in SCSI Response and Data-In) and
    /// the residual count.
    fn flags_and_count(self) -> (u8, u32) {
        match self {
            Residual::None => (0, 0),
            Residual::Overflow(n) => (0x04, n),
            Residual::Underflow(n) => (0x02, n),
        }
    }
}

/// Sequence numbers the connection stamps on outgoing PDUs.
#[derive(Debug, Clone, Copy)]
pub struct SeqNums {
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
}

/// Put StatSN/ExpCmdSN/MaxCmdSN into a target PDU.
pub fn stamp(pdu: &mut Pdu, seq: SeqNums) {
    pdu.bhs.set_stat_sn(seq.stat_sn);
    pdu.bhs.set_exp_cmd_sn(seq.exp_cmd_sn);
    pdu.bhs.set_max_cmd_sn(seq.max_cmd_sn);
}

/// Whether a PDU consumes a StatSN (those that carry status do).
pub fn carries_status(pdu: &Pdu) -> bool {
    match pdu.opcode() {
        Opcode::ScsiResponse
        | Opcode::TaskMgmtResponse
        | Opcode::TextResponse
        | Opcode::LogoutResponse
        | Opcode::Reject
        | Opcode::AsyncMessage => true,
        // NOP-In carries a StatSN but only answers to a ping advance it.
        Opcode::NopIn => pdu.bhs.itt() != NO_TTT,
        Opcode::DataIn => pdu.bhs.flags() & 0x01 != 0,
        _ => false,
    }
}

/// SCSI Response with optional sense data.
pub fn scsi_response(
    itt: u32,
    status: u8,
    sense: Option<&[u8]>,
    residual: Residual,
    exp_data_sn: u32,
) -> Pdu {
    let mut p = Pdu::new(Opcode::ScsiResponse);
    let (flags, count) = residual.flags_and_count();
    p.bhs.set_flags(0x80 | flags);
    p.bhs.0[2] = 0; // Command Completed at Target
    p.bhs.0[3] = status;
    p.bhs.set_itt(itt);
    p.bhs.set_exp_data_sn(exp_data_sn);
    p.bhs.set_residual_count(count);
    if let Some(s) = sense {
        let mut d = Vec::with_capacity(2 + s.len());
        d.extend_from_slice(&(s.len() as u16).to_be_bytes());
        d.extend_from_slice(s);
        p.data = d;
    }
    p
}

/// Parameters for splitting data-in into PDUs.
#[derive(Debug, Clone, Copy)]
pub struct DataInPlan {
    pub itt: u32,
    pub lun: [u8; 8],
    /// The initiator's MaxRecvDataSegmentLength.
    pub max_segment: u32,
    pub max_burst: u32,
    /// Put GOOD status in the last Data-In (phase collapse) instead of a
    /// separate SCSI Response.
    pub status: Option<(u8, Residual)>,
}

/// Split `data` into Data-In PDUs, DataSN from 0. Returns the PDUs; when
/// `plan.status` is set the last one carries S, the status and residual.
pub fn data_in_pdus(data: &[u8], plan: &DataInPlan) -> Vec<Pdu> {
    let (mut pdus, spans) = data_in_headers(data.len(), plan);
    for (p, span) in pdus.iter_mut().zip(spans) {
        p.data = data[span].to_vec();
    }
    pdus
}

/// [`data_in_pdus`] without the data: the headers (empty data segments)
/// and, for each, the range of the data it carries — so the data can go
/// to the socket straight from the command's buffer.
pub fn data_in_headers(len: usize, plan: &DataInPlan) -> (Vec<Pdu>, Vec<Range<usize>>) {
    let seg = plan.max_segment.max(512) as usize;
    let burst = (plan.max_burst.max(512) as usize).max(seg);
    let mut out = Vec::with_capacity(len.div_ceil(seg));
    let mut spans = Vec::with_capacity(len.div_ceil(seg));
    let mut offset = 0usize;
    let mut sn = 0u32;
    while offset < len {
        let burst_end = (offset / burst + 1) * burst;
        let end = (offset + seg).min(len).min(burst_end);
        let mut p = Pdu::new(Opcode::DataIn);
        p.bhs.0[8..16].copy_from_slice(&plan.lun);
        p.bhs.set_itt(plan.itt);
        p.bhs.set_ttt(NO_TTT);
        p.bhs.set_data_sn(sn);
        p.bhs.set_buffer_offset(offset as u32);
        // F marks the end of each burst (a Data-In sequence).
        p.bhs.set_final(end == len || end == burst_end);
        out.push(p);
        spans.push(offset..end);
        offset = end;
        sn += 1;
    }
    if let (Some((status, residual)), Some(last)) = (plan.status, out.last_mut()) {
        let (flags, count) = residual.flags_and_count();
        last.bhs.set_flags(0x80 | flags | 0x01);
        last.bhs.0[3] = status;
        last.bhs.set_residual_count(count);
    }
    (out, spans)
}

pub fn r2t(itt: u32, lun: [u8; 8], req: &R2tRequest) -> Pdu {
    let mut p = Pdu::new(Opcode::R2t);
    p.bhs.set_final(true);
    p.bhs.0[8..16].copy_from_slice(&lun);
    p.bhs.set_itt(itt);
    p.bhs.set_ttt(req.ttt);
    p.bhs.set_r2t_sn(req.r2t_sn);
    p.bhs.set_buffer_offset(req.offset);
    p.bhs.set_desired_data_len(req.len);
    p
}

/// NOP-In answering a ping (echoing its data) or, with `itt == NO_TTT`
/// and a real `ttt`, a target ping asking for a NOP-Out.
pub fn nop_in(itt: u32, ttt: u32, lun: u64, data: Vec<u8>) -> Pdu {
    let mut p = Pdu::new(Opcode::NopIn);
    p.bhs.set_final(true);
    p.bhs.set_lun(lun);
    p.bhs.set_itt(itt);
    p.bhs.set_ttt(ttt);
    p.data = data;
    p
}

/// Reject reasons (RFC 7143 §11.17.1).
pub mod reject {
    pub const DATA_DIGEST: u8 = 0x02;
    pub const SNACK_REJECT: u8 = 0x03;
    pub const PROTOCOL_ERROR: u8 = 0x04;
    pub const COMMAND_NOT_SUPPORTED: u8 = 0x05;
    pub const IMMEDIATE_COMMAND_REJECT: u8 = 0x06;
    pub const TASK_IN_PROGRESS: u8 = 0x07;
    pub const INVALID_DATA_ACK: u8 = 0x08;
    pub const INVALID_PDU_FIELD: u8 = 0x09;
    pub const LONG_OPERATION_REJECT: u8 = 0x0a;
    pub const WAITING_FOR_LOGOUT: u8 = 0x0c;
}

/// Reject carrying the offending PDU's header as its data.
pub fn reject(reason: u8, offending_header: &[u8; 48]) -> Pdu {
    let mut p = Pdu::new(Opcode::Reject);
    p.bhs.set_final(true);
    p.bhs.0[2] = reason;
    p.bhs.set_itt(NO_TTT);
    p.data = offending_header.to_vec();
    p
}

/// TMF response codes (RFC 7143 §11.6.1).
pub mod tmf_response {
    pub const FUNCTION_COMPLETE: u8 = 0;
    pub const TASK_DOES_NOT_EXIST: u8 = 1;
    pub const LUN_DOES_NOT_EXIST: u8 = 2;
    pub const TASK_STILL_ALLEGIANT: u8 = 3;
    pub const REASSIGNMENT_NOT_SUPPORTED: u8 = 4;
    pub const NOT_SUPPORTED: u8 = 5;
    pub const AUTHORIZATION_FAILED: u8 = 6;
    pub const REJECTED: u8 = 255;
}

pub fn tmf_response(itt: u32, response: u8) -> Pdu {
    let mut p = Pdu::new(Opcode::TaskMgmtResponse);
    p.bhs.set_final(true);
    p.bhs.0[2] = response;
    p.bhs.set_itt(itt);
    p
}

/// Logout response; `response` 0 = closed successfully, 1 = CID not found,
/// 2 = recovery not supported, 3 = cleanup failed.
pub fn logout_response(itt: u32, response: u8) -> Pdu {
    let mut p = Pdu::new(Opcode::LogoutResponse);
    p.bhs.set_final(true);
    p.bhs.0[2] = response;
    p.bhs.set_itt(itt);
    p
}

/// Async Message "target requests logout" with `seconds` to comply.
pub fn async_logout_request(seconds: u16) -> Pdu {
    let mut p = Pdu::new(Opcode::AsyncMessage);
    p.bhs.set_final(true);
    p.bhs.set_itt(NO_TTT);
    p.bhs.0[36] = 1; // AsyncEvent: target requests logout
    p.bhs.set_u16_at(42, seconds); // Parameter3: time to logout
    p
}

/// Text Response (F set unless `more`; TTT for continuation).
pub fn text_response(itt: u32, ttt: u32, more: bool, data: Vec<u8>) -> Pdu {
    let mut p = Pdu::new(Opcode::TextResponse);
    p.bhs.set_final(!more);
    if more {
        p.bhs.set_flags(0x40); // C: continues
    }
    p.bhs.set_itt(itt);
    p.bhs.set_ttt(ttt);
    p.data = data;
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn residual_kinds() {
        assert_eq!(Residual::compute(512, 1024), Residual::Overflow(512));
        assert_eq!(Residual::compute(10000, 512), Residual::Underflow(9488));
        assert_eq!(Residual::compute(512, 512), Residual::None);
    }

    #[test]
    fn data_in_split_with_bursts_and_status() {
        let data = vec![9u8; 10000];
        let plan = DataInPlan {
            itt: 5,
            lun: [0, 1, 0, 0, 0, 0, 0, 0],
            max_segment: 4096,
            max_burst: 6000,
            status: Some((0, Residual::Underflow(100))),
        };
        let pdus = data_in_pdus(&data, &plan);
        let shape: Vec<(u32, usize, bool)> = pdus
            .iter()
            .map(|p| (p.bhs.buffer_offset(), p.data.len(), p.bhs.final_bit()))
            .collect();
        // Bursts end at 6000: 4096 + 1904 (F), then 4000 (F, last).
        assert_eq!(
            shape,
            vec![(0, 4096, false), (4096, 1904, true), (6000, 4000, true)]
        );
        let last = pdus.last().unwrap();
        assert_eq!(last.bhs.flags() & 0x03, 0x03); // U and S
        assert_eq!(last.bhs.residual_count(), 100);
        assert_eq!(last.bhs.data_sn(), 2);
        assert!(carries_status(last) && !carries_status(&pdus[0]));
    }

    #[test]
    fn response_sense_is_length_prefixed() {
        let p = scsi_response(1, 2, Some(&[0x70, 0, 5]), Residual::None, 0);
        assert_eq!(p.data, vec![0, 3, 0x70, 0, 5]);
        assert_eq!(p.bhs.0[3], 2);
    }
}
