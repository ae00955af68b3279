//! Collecting a write command's data: immediate data, unsolicited Data-Out,
//! and Data-Out solicited by R2Ts (RFC 7143 §4.2.5.2, §11.7, §11.8).
//!
//! The state machine checks every Data-Out against what it may legally
//! carry (offsets inside the transfer, unsolicited data inside the first
//! burst, solicited data inside its R2T, DataSN in order) and hands out the
//! next R2Ts as earlier ones are satisfied, never more than
//! MaxOutstandingR2T at once. The buffer grows with the data actually
//! received, not with what the initiator declared.

use super::pdu::Bhs;
use thiserror::Error;

/// The reserved "no target transfer tag" value.
pub const NO_TTT: u32 = 0xffff_ffff;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DataOutError {
    #[error("Data-Out beyond the expected transfer length")]
    BeyondTransfer,
    #[error("unsolicited data beyond FirstBurstLength or not allowed")]
    UnsolicitedNotAllowed,
    #[error("Data-Out with unknown target transfer tag {0:#x}")]
    UnknownTtt(u32),
    #[error("Data-Out outside its R2T's range")]
    OutsideR2t,
    #[error("DataSN {got} where {want} was expected")]
    DataSn { got: u32, want: u32 },
}

/// One R2T to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct R2tRequest {
    pub ttt: u32,
    pub r2t_sn: u32,
    pub offset: u32,
    pub len: u32,
}

/// What the negotiation says about writes.
#[derive(Debug, Clone, Copy)]
pub struct WriteLimits {
    pub initial_r2t: bool,
    pub first_burst: u32,
    pub max_burst: u32,
    pub max_outstanding_r2t: u32,
}

#[derive(Debug)]
struct Outstanding {
    req: R2tRequest,
    received: u32,
    next_data_sn: u32,
}

#[derive(Debug)]
pub struct WriteTransfer {
    edtl: u32,
    limits: WriteLimits,
    buf: Vec<u8>,
    /// Bytes received so far (overlaps are rejected, so this is exact).
    received: u32,
    /// Unsolicited phase: still expecting Data-Out with TTT = NO_TTT.
    unsolicited_open: bool,
    unsolicited_end: u32,
    unsolicited_data_sn: u32,
    /// Next offset no R2T has asked for yet.
    next_offset: u32,
    next_r2t_sn: u32,
    outstanding: Vec<Outstanding>,
}

impl WriteTransfer {
    /// Start a write of `edtl` bytes whose command carried `immediate` data;
    /// `cmd_final` is the command PDU's F bit (no unsolicited Data-Out
    /// follows). `ttt_source` hands out connection-unique transfer tags.
    pub fn new(
        edtl: u32,
        immediate: &[u8],
        cmd_final: bool,
        limits: WriteLimits,
        ttt_source: &mut dyn FnMut() -> u32,
    ) -> Result<(WriteTransfer, Vec<R2tRequest>), DataOutError> {
        let imm = immediate.len() as u32;
        if imm > edtl || imm > limits.first_burst {
            return Err(DataOutError::BeyondTransfer);
        }
        let unsolicited_cap = if limits.initial_r2t {
            imm
        } else {
            limits.first_burst.min(edtl)
        };
        let mut t = WriteTransfer {
            edtl,
            limits,
            buf: crate::buffers::copy_of(immediate),
            received: imm,
            unsolicited_open: !cmd_final && unsolicited_cap > imm,
            unsolicited_end: unsolicited_cap,
            unsolicited_data_sn: 0,
            next_offset: imm,
            next_r2t_sn: 0,
            outstanding: Vec::new(),
        };
        let r2ts = if t.unsolicited_open {
            Vec::new()
        } else {
            t.next_offset = imm;
            t.issue_r2ts(ttt_source)
        };
        Ok((t, r2ts))
    }

    pub fn is_complete(&self) -> bool {
        self.received == self.edtl && !self.unsolicited_open && self.outstanding.is_empty()
    }

    pub fn received(&self) -> u32 {
        self.received
    }

    /// Size the buffer for the whole transfer now (one allocation instead
    /// of growing and copying as data arrives). Call it only once the
    /// transfer is admitted: the declared length is the peer's word.
    pub fn reserve_all(&mut self) {
        let edtl = self.edtl as usize;
        if self.buf.capacity() >= edtl {
            return;
        }
        let mut whole = crate::buffers::with_capacity(edtl);
        whole.extend_from_slice(&self.buf);
        crate::buffers::give(std::mem::replace(&mut self.buf, whole));
    }

    pub fn into_buffer(self) -> Vec<u8> {
        self.buf
    }

    /// R2Ts still outstanding (for recovery and task management).
    pub fn outstanding_ttts(&self) -> Vec<u32> {
        self.outstanding.iter().map(|o| o.req.ttt).collect()
    }

    /// Accept one Data-Out; returns R2Ts to send now.
    pub fn on_data_out(
        &mut self,
        bhs: &Bhs,
        data: &[u8],
        ttt_source: &mut dyn FnMut() -> u32,
    ) -> Result<Vec<R2tRequest>, DataOutError> {
        let offset = bhs.buffer_offset();
        let len = data.len() as u32;
        let end = offset
            .checked_add(len)
            .ok_or(DataOutError::BeyondTransfer)?;
        if end > self.edtl {
            return Err(DataOutError::BeyondTransfer);
        }
        let ttt = bhs.ttt();
        if ttt == NO_TTT {
            self.unsolicited(bhs, offset, end)?;
        } else {
            self.solicited(bhs, ttt, offset, end)?;
        }
        self.store(offset, data);
        if ttt == NO_TTT && bhs.final_bit() {
            // End of the unsolicited burst: ask for whatever it left out.
            self.unsolicited_open = false;
            self.next_offset = self.received.max(self.next_offset);
        }
        Ok(self.issue_r2ts(ttt_source))
    }

    fn unsolicited(&mut self, bhs: &Bhs, offset: u32, end: u32) -> Result<(), DataOutError> {
        if !self.unsolicited_open || end > self.unsolicited_end {
            return Err(DataOutError::UnsolicitedNotAllowed);
        }
        if offset != self.received {
            return Err(DataOutError::OutsideR2t);
        }
        let sn = bhs.data_sn();
        if sn != self.unsolicited_data_sn {
            return Err(DataOutError::DataSn {
                got: sn,
                want: self.unsolicited_data_sn,
            });
        }
        self.unsolicited_data_sn += 1;
        Ok(())
    }

    fn solicited(
        &mut self,
        bhs: &Bhs,
        ttt: u32,
        offset: u32,
        end: u32,
    ) -> Result<(), DataOutError> {
        let idx = self
            .outstanding
            .iter()
            .position(|o| o.req.ttt == ttt)
            .ok_or(DataOutError::UnknownTtt(ttt))?;
        let o = &mut self.outstanding[idx];
        let r_end = o.req.offset + o.req.len;
        // In-order data within the R2T: each PDU continues where the last
        // stopped, which also rules out overlaps and double counting.
        if offset != o.req.offset + o.received || end > r_end {
            return Err(DataOutError::OutsideR2t);
        }
        let sn = bhs.data_sn();
        if sn != o.next_data_sn {
            return Err(DataOutError::DataSn {
                got: sn,
                want: o.next_data_sn,
            });
        }
        o.next_data_sn += 1;
        o.received += end - offset;
        if o.received == o.req.len {
            self.outstanding.remove(idx);
        }
        Ok(())
    }

    fn store(&mut self, offset: u32, data: &[u8]) {
        let end = offset as usize + data.len();
        if self.buf.len() < end {
            self.buf.resize(end, 0);
        }
        self.buf[offset as usize..end].copy_from_slice(data);
        self.received += data.len() as u32;
    }

    fn issue_r2ts(&mut self, ttt_source: &mut dyn FnMut() -> u32) -> Vec<R2tRequest> {
        let mut out = Vec::new();
        if self.unsolicited_open {
            return out;
        }
        while self.next_offset < self.edtl
            && (self.outstanding.len() as u32) < self.limits.max_outstanding_r2t.max(1)
        {
            let len = (self.edtl - self.next_offset).min(self.limits.max_burst.max(512));
            let req = R2tRequest {
                ttt: ttt_source(),
                r2t_sn: self.next_r2t_sn,
                offset: self.next_offset,
                len,
            };
            self.next_r2t_sn += 1;
            self.next_offset += len;
            self.outstanding.push(Outstanding {
                req,
                received: 0,
                next_data_sn: 0,
            });
            out.push(req);
        }
        out
    }

    /// R2TSN to use for the next R2T (R2T and Data-In share the numbering
    /// of a task's responses; the caller needs it for ExpDataSN checks).
    pub fn next_r2t_sn(&self) -> u32 {
        self.next_r2t_sn
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::pdu::Opcode;

    fn limits(initial_r2t: bool) -> WriteLimits {
        WriteLimits {
            initial_r2t,
            first_burst: 8192,
            max_burst: 16384,
            max_outstanding_r2t: 2,
        }
    }

    fn data_out(ttt: u32, sn: u32, offset: u32, fin: bool) -> Bhs {
        let mut b = Bhs::new(Opcode::DataOut);
        b.set_ttt(ttt);
        b.set_data_sn(sn);
        b.set_buffer_offset(offset);
        b.set_final(fin);
        b
    }

    fn counter() -> impl FnMut() -> u32 {
        let mut n = 100;
        move || {
            n += 1;
            n
        }
    }

    #[test]
    fn immediate_only() {
        let mut c = counter();
        let (t, r2ts) = WriteTransfer::new(512, &[7u8; 512], true, limits(true), &mut c).unwrap();
        assert!(r2ts.is_empty());
        assert!(t.is_complete());
        assert_eq!(t.into_buffer(), vec![7u8; 512]);
    }

    #[test]
    fn r2ts_cover_the_rest_respecting_outstanding_limit() {
        let mut c = counter();
        let (mut t, r2ts) =
            WriteTransfer::new(40000, &[1u8; 1000], true, limits(true), &mut c).unwrap();
        assert_eq!(r2ts.len(), 2);
        assert_eq!((r2ts[0].offset, r2ts[0].len), (1000, 16384));
        assert_eq!((r2ts[1].offset, r2ts[1].len), (17384, 16384));
        let next = t
            .on_data_out(
                &data_out(r2ts[0].ttt, 0, 1000, true),
                &vec![2u8; 16384],
                &mut c,
            )
            .unwrap();
        assert_eq!(next.len(), 1);
        assert_eq!(
            (next[0].offset, next[0].len, next[0].r2t_sn),
            (33768, 6232, 2)
        );
        t.on_data_out(
            &data_out(r2ts[1].ttt, 0, 17384, true),
            &vec![3u8; 16384],
            &mut c,
        )
        .unwrap();
        assert!(!t.is_complete());
        t.on_data_out(
            &data_out(next[0].ttt, 0, 33768, true),
            &vec![4u8; 6232],
            &mut c,
        )
        .unwrap();
        assert!(t.is_complete());
        let buf = t.into_buffer();
        assert_eq!(buf.len(), 40000);
        assert_eq!((buf[999], buf[1000], buf[17384], buf[39999]), (1, 2, 3, 4));
    }

    #[test]
    fn unsolicited_then_r2t() {
        let mut c = counter();
        let (mut t, r2ts) =
            WriteTransfer::new(20000, &[1u8; 4096], false, limits(false), &mut c).unwrap();
        assert!(r2ts.is_empty());
        let r2ts = t
            .on_data_out(&data_out(NO_TTT, 0, 4096, true), &[5u8; 4096], &mut c)
            .unwrap();
        assert_eq!(r2ts.len(), 1);
        assert_eq!((r2ts[0].offset, r2ts[0].len), (8192, 11808));
    }

    #[test]
    fn hostile_data_out_rejected() {
        let mut c = counter();
        let (mut t, r2ts) = WriteTransfer::new(8192, &[], true, limits(true), &mut c).unwrap();
        let ttt = r2ts[0].ttt;
        assert_eq!(
            t.on_data_out(&data_out(ttt, 0, 8000, true), &[0u8; 1000], &mut c),
            Err(DataOutError::BeyondTransfer)
        );
        assert_eq!(
            t.on_data_out(&data_out(ttt + 9, 0, 0, true), &[0u8; 10], &mut c),
            Err(DataOutError::UnknownTtt(ttt + 9))
        );
        assert_eq!(
            t.on_data_out(&data_out(NO_TTT, 0, 0, true), &[0u8; 10], &mut c),
            Err(DataOutError::UnsolicitedNotAllowed)
        );
        assert_eq!(
            t.on_data_out(&data_out(ttt, 3, 0, false), &[0u8; 10], &mut c),
            Err(DataOutError::DataSn { got: 3, want: 0 })
        );
        assert_eq!(
            t.on_data_out(&data_out(ttt, 0, u32::MAX - 2, false), &[0u8; 10], &mut c),
            Err(DataOutError::BeyondTransfer)
        );
        assert!(WriteTransfer::new(10, &[0u8; 11], true, limits(true), &mut c).is_err());
    }
}
