//! EXTENDED COPY(LID1) (83h/00h, SPC-4 §6.4): the device server acts as
//! copy manager between logical units of this target. Supported: the
//! identification CSCD descriptor (E4h) naming a LUN by its NAA designator,
//! and block device to block device segments (02h).

use super::copy_results::{
    COPY_DONE, COPY_FAILED, HeldResult, MAX_CSCD_DESCRIPTORS, MAX_DESCRIPTOR_LIST_LENGTH,
    MAX_SEGMENT_DESCRIPTORS, MAX_SEGMENT_LENGTH,
};
use super::mode;
use crate::cbt::ChangeKind;
use crate::scsi::cdb::{CmdResult, Ctx};
use crate::scsi::data::{be, byte};
use crate::scsi::sense::{Sense, SenseReason};
use crate::scsi::{LogicalUnit, ScsiCommand, ScsiResult};
use std::sync::Arc;

const HEADER_LEN: usize = 16;
const CSCD_LEN: usize = 32;
const B2B_LEN: usize = 28;
const IDENTIFICATION: u8 = 0xe4;
const BLOCK_TO_BLOCK: u8 = 0x02;
/// Bytes moved per backend call.
const CHUNK: u64 = 1 << 20;

/// A copy source or destination: a LUN of this target.
struct Cscd {
    lu: Arc<LogicalUnit>,
}

/// One block-to-block segment, with its offset in the parameter list (for
/// the sense-key specific segment pointer).
struct Segment {
    at: usize,
    src: u16,
    dst: u16,
    /// DC: the block count is in destination blocks.
    dst_counted: bool,
    blocks: u64,
    src_lba: u64,
    dst_lba: u64,
}

struct Params {
    list_id: u8,
    /// LIST ID USAGE 00b: hold the results for RECEIVE COPY RESULTS.
    hold: bool,
    cscds: Vec<Cscd>,
    segments: Vec<Segment>,
}

pub fn extended_copy(ctx: &Ctx, cmd: &ScsiCommand) -> CmdResult {
    ctx.lu()?;
    let len = be(cmd.cdb, 10, 4) as usize;
    if len == 0 {
        // No parameter list: nothing to copy (SPC-4 §6.4.1).
        return Ok(ScsiResult::good(Vec::new(), 0));
    }
    let list = &cmd.data_out[..len.min(cmd.data_out.len())];
    let p = parse(ctx, list)?;
    let copies = &ctx.server.copies;
    let nexus = ctx.nexus.id;
    if p.hold && !copies.start(nexus, p.list_id) {
        return Err(SenseReason::OperationInProgress.into());
    }
    let outcome = run(&p);
    if p.hold {
        let (status, done, bytes, failure) = match &outcome {
            Ok(bytes) => (COPY_DONE, p.segments.len(), *bytes, None),
            Err(f) => (COPY_FAILED, f.segment, f.bytes, Some(f.sense.to_fixed())),
        };
        let mut held = HeldResult::new(p.list_id, status, done as u16, bytes);
        held.failure = failure;
        copies.finish(nexus, p.list_id, Some(held));
    }
    outcome.map_err(|f| f.sense)?;
    Ok(ScsiResult::good(Vec::new(), len as u32))
}

fn parse(ctx: &Ctx, list: &[u8]) -> Result<Params, Sense> {
    if list.len() < HEADER_LEN {
        return Err(SenseReason::ParameterListLengthError.into());
    }
    let list_id = byte(list, 0);
    let usage = (byte(list, 1) >> 3) & 0x03;
    let cscd_len = be(list, 2, 2) as usize;
    let seg_len = be(list, 8, 4) as usize;
    let inline_len = be(list, 12, 4) as usize;
    if byte(list, 1) & 0x20 != 0 {
        // STR (sequential striped) is for stream devices only.
        return Err(Sense::invalid_param_field(1, Some(5)));
    }
    match usage {
        0b01 => return Err(Sense::invalid_param_field(1, Some(3))),
        0b11 if list_id != 0 => return Err(Sense::invalid_param_field(0, None)),
        _ => {}
    }
    let total = HEADER_LEN + cscd_len + seg_len + inline_len;
    if total > list.len() || cscd_len + seg_len > MAX_DESCRIPTOR_LIST_LENGTH as usize {
        return Err(SenseReason::ParameterListLengthError.into());
    }
    if inline_len != 0 {
        return Err(SenseReason::InlineDataLengthExceeded.into());
    }
    let cscd_end = HEADER_LEN + cscd_len;
    let cscds = parse_cscds(ctx, list, cscd_end)?;
    let segments = parse_segments(list, cscd_end, cscd_end + seg_len)?;
    Ok(Params {
        list_id,
        hold: usage == 0b00,
        cscds,
        segments,
    })
}

fn parse_cscds(ctx: &Ctx, list: &[u8], end: usize) -> Result<Vec<Cscd>, Sense> {
    let mut out = Vec::new();
    let mut at = HEADER_LEN;
    while at < end {
        if byte(list, at) != IDENTIFICATION {
            return Err(SenseReason::UnsupportedTargetDescriptorType.into());
        }
        if at + CSCD_LEN > end {
            return Err(SenseReason::ParameterListLengthError.into());
        }
        if out.len() >= MAX_CSCD_DESCRIPTORS as usize {
            return Err(SenseReason::TooManyTargetDescriptors.into());
        }
        out.push(identification(ctx, list, at)?);
        at += CSCD_LEN;
    }
    Ok(out)
}

/// An identification descriptor: the LU ID TYPE and the obsolete NUL bit
/// are ignored (SPC-4); the peripheral type must be a block device.
fn identification(ctx: &Ctx, list: &[u8], at: usize) -> Result<Cscd, Sense> {
    if byte(list, at + 1) & 0x1f != 0 {
        return Err(Sense::invalid_param_field(at + 1, None));
    }
    let code_set = byte(list, at + 4) & 0x0f;
    let assoc_type = byte(list, at + 5) & 0x3f;
    let dlen = byte(list, at + 7) as usize;
    // Binary NAA designator of a logical unit, 16 bytes (what VPD 83h
    // reports); anything else names no LUN we could find.
    let naa = list.get(at + 8..at + 8 + dlen).unwrap_or(&[]);
    let lu = (code_set == 1 && assoc_type == 0x03)
        .then(|| {
            ctx.server
                .luns
                .values()
                // An LU the sender cannot see (a view LUN) is not reachable.
                .find(|l| l.identity.naa.as_slice() == naa && l.visible(&ctx.nexus.initiator_name))
        })
        .flatten()
        .ok_or(Sense::new(SenseReason::CopyTargetNotReachable))?;
    let disk_block_len = be(list, at + 29, 3);
    if disk_block_len != u64::from(lu.block_size) {
        return Err(Sense::invalid_param_field(at + 29, None));
    }
    Ok(Cscd { lu: lu.clone() })
}

fn parse_segments(list: &[u8], start: usize, end: usize) -> Result<Vec<Segment>, Sense> {
    let mut out = Vec::new();
    let mut at = start;
    while at < end {
        if byte(list, at) != BLOCK_TO_BLOCK {
            return Err(SenseReason::UnsupportedSegmentDescriptorType.into());
        }
        if be(list, at + 2, 2) != (B2B_LEN - 4) as u64 {
            return Err(Sense::invalid_param_field(at + 2, None));
        }
        if at + B2B_LEN > end {
            return Err(SenseReason::ParameterListLengthError.into());
        }
        if out.len() >= MAX_SEGMENT_DESCRIPTORS as usize {
            return Err(SenseReason::TooManySegmentDescriptors.into());
        }
        out.push(Segment {
            at,
            src: be(list, at + 4, 2) as u16,
            dst: be(list, at + 6, 2) as u16,
            dst_counted: byte(list, at + 1) & 0x02 != 0,
            blocks: be(list, at + 10, 2),
            src_lba: be(list, at + 12, 8),
            dst_lba: be(list, at + 20, 8),
        });
        at += B2B_LEN;
    }
    Ok(out)
}

/// Why a copy stopped: the sense, the index of the failing segment (= the
/// number processed) and the bytes written before it.
struct Failure {
    sense: Sense,
    segment: usize,
    bytes: u64,
}

/// Process the segments in order; Ok is the number of bytes copied.
fn run(p: &Params) -> Result<u64, Failure> {
    let mut bytes = 0;
    for (i, seg) in p.segments.iter().enumerate() {
        let fail = |sense: Sense| Failure {
            sense: sense.with_segment(seg.at),
            segment: i,
            bytes,
        };
        bytes += copy_segment(p, seg).map_err(fail)?;
    }
    Ok(bytes)
}

trait SegmentPointer {
    fn with_segment(self, at: usize) -> Sense;
}

impl SegmentPointer for Sense {
    /// COPY ABORTED carries a segment pointer: SKSV, SD=0 (the field
    /// pointer is the segment descriptor's offset in the parameter list).
    fn with_segment(mut self, at: usize) -> Sense {
        if self.reason.codes().0 == crate::scsi::sense::key::COPY_ABORTED {
            let f = u16::try_from(at).unwrap_or(u16::MAX).to_be_bytes();
            self.specific = Some([0x80, f[0], f[1]]);
        }
        self
    }
}

fn copy_segment(p: &Params, seg: &Segment) -> Result<u64, Sense> {
    let unreachable = Sense::new(SenseReason::CopyTargetNotReachable);
    let src = &p.cscds.get(seg.src as usize).ok_or(unreachable)?.lu;
    let dst = &p.cscds.get(seg.dst as usize).ok_or(unreachable)?.lu;
    if dst.read_only {
        return Err(SenseReason::WriteProtected.into());
    }
    if mode::software_write_protected(dst) {
        return Err(SenseReason::SoftwareWriteProtected.into());
    }
    let (sbs, dbs) = (src.block_bytes(), dst.block_bytes());
    let bytes = seg.blocks * if seg.dst_counted { dbs } else { sbs };
    if !bytes.is_multiple_of(sbs) || !bytes.is_multiple_of(dbs) {
        return Err(SenseReason::UnexpectedInexactSegment.into());
    }
    if bytes > u64::from(MAX_SEGMENT_LENGTH) {
        return Err(Sense::invalid_param_field(seg.at + 10, None));
    }
    let aborted = Sense::new(SenseReason::CopyAborted);
    in_range(src, seg.src_lba, bytes / sbs).ok_or(aborted)?;
    in_range(dst, seg.dst_lba, bytes / dbs).ok_or(aborted)?;
    copy_bytes(src, seg.src_lba * sbs, dst, seg.dst_lba * dbs, bytes)?;
    Ok(bytes)
}

fn in_range(lu: &LogicalUnit, lba: u64, blocks: u64) -> Option<()> {
    let end = lba.checked_add(blocks)?;
    (end <= lu.num_blocks()).then_some(())
}

/// Move `len` bytes in chunks. When source and destination overlap on one
/// LUN with the destination above, copy from the end so no chunk reads
/// data this copy already overwrote.
fn copy_bytes(
    src: &LogicalUnit,
    from: u64,
    dst: &LogicalUnit,
    to: u64,
    len: u64,
) -> Result<(), Sense> {
    let same = std::ptr::eq(src, dst);
    let backwards = same && to > from && to < from + len;
    let mut buf = vec![0u8; CHUNK.min(len) as usize];
    let chunks = len.div_ceil(CHUNK);
    for k in 0..chunks {
        let k = if backwards { chunks - 1 - k } else { k };
        let off = k * CHUNK;
        let n = CHUNK.min(len - off) as usize;
        let chunk = &mut buf[..n];
        src.backend.read_at(from + off, chunk).map_err(|e| {
            tracing::warn!(backend = %src.backend.describe(), error = %e, "copy read failed");
            Sense::new(SenseReason::CopyAborted)
        })?;
        let bs = dst.block_bytes();
        let lba = (to + off) / bs;
        let fua = !mode::write_cache_enabled(dst);
        if fua {
            crate::scsi::io_fault::check_sync_intact(dst, Some(lba))
                .map_err(|_| Sense::new(SenseReason::CopyAborted))?;
        }
        let _change = dst.change_shared(lba, n as u64 / bs, ChangeKind::Write)?;
        dst.backend.write_at(to + off, chunk, fua).map_err(|e| {
            // Logged (and a lost sync remembered) like any write; the
            // copy itself answers COPY ABORTED (SPC-5 §6.6.4).
            crate::scsi::io_fault::write_failure(dst, &e, lba, fua);
            Sense::new(SenseReason::CopyAborted)
        })?;
    }
    Ok(())
}
