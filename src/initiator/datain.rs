//! Reassembly of a read's Data-In PDUs and the final status (RFC 7143
//! §11.4, §11.7). Pure: the session feeds it headers and data.

use super::command::ScsiOutcome;
use super::error::{InitiatorError, Result};
use crate::proto::Pdu;

const F_BIT: u8 = 0x80;
const O_BIT: u8 = 0x04;
const U_BIT: u8 = 0x02;
const S_BIT: u8 = 0x01;

/// Collects Data-In for one task.
#[derive(Debug)]
pub struct DataInAssembler {
    buf: Vec<u8>,
    expected: u32,
    next_data_sn: u32,
}

/// The residual as the flags and count report it.
fn residual(flags: u8, count: u32) -> Option<(bool, u32)> {
    if flags & O_BIT != 0 {
        Some((true, count))
    } else if flags & U_BIT != 0 {
        Some((false, count))
    } else {
        None
    }
}

impl DataInAssembler {
    /// For a command that expects up to `expected` bytes.
    pub fn new(expected: u32) -> DataInAssembler {
        DataInAssembler {
            buf: Vec::new(),
            expected,
            next_data_sn: 0,
        }
    }

    /// Take one Data-In PDU; returns the outcome if it carried status.
    pub fn accept(&mut self, pdu: Pdu) -> Result<Option<ScsiOutcome>> {
        let Pdu { bhs: b, data, .. } = pdu;
        if b.data_sn() != self.next_data_sn {
            return Err(InitiatorError::Protocol(format!(
                "Data-In DataSN {} where {} was due",
                b.data_sn(),
                self.next_data_sn
            )));
        }
        self.next_data_sn = self.next_data_sn.wrapping_add(1);
        let off = b.buffer_offset() as u64;
        let end = off + data.len() as u64;
        if end > self.expected as u64 {
            return Err(InitiatorError::Protocol(format!(
                "Data-In bytes {off}..{end} beyond the expected {}",
                self.expected
            )));
        }
        self.place(off as usize, data);
        let flags = b.flags();
        if flags & S_BIT == 0 {
            return Ok(None);
        }
        if flags & F_BIT == 0 {
            return Err(InitiatorError::Protocol("Data-In with S but not F".into()));
        }
        Ok(Some(ScsiOutcome {
            status: b.0[3],
            sense: None,
            data: std::mem::take(&mut self.buf),
            residual: residual(flags, b.residual_count()),
        }))
    }

    /// Put a segment's bytes at `off` of the command's buffer.
    fn place(&mut self, off: usize, data: Vec<u8>) {
        if off == 0 && self.buf.is_empty() && data.capacity() >= self.expected as usize {
            // The first segment's buffer has room for the whole transfer
            // (always when one PDU carries it: the receive path reads
            // into pooled buffers of a power-of-two size): it becomes the
            // command's buffer, so that data is never copied in user
            // space (issue 13).
            self.buf = data;
            return;
        }
        if self.buf.capacity() == 0 {
            // Once, the size this command asked for: no regrowth copies
            // of a large READ's buffer as its PDUs arrive.
            self.buf.reserve_exact(self.expected as usize);
        }
        let end = off + data.len();
        if off == self.buf.len() {
            // In order (the usual case): append, without zeroing first.
            self.buf.extend_from_slice(&data);
        } else {
            if self.buf.len() < end {
                self.buf.resize(end, 0);
            }
            self.buf[off..end].copy_from_slice(&data);
        }
        // Segments come from the pool (initiator::wire): back they go.
        crate::buffers::give(data);
    }

    /// Finish with a SCSI Response PDU.
    pub fn finish(&mut self, resp: &Pdu) -> Result<ScsiOutcome> {
        let b = &resp.bhs;
        let response = b.0[2];
        if response != 0 {
            return Err(InitiatorError::TargetFailure { response });
        }
        Ok(ScsiOutcome {
            status: b.0[3],
            sense: sense_from_segment(&resp.data)?,
            data: std::mem::take(&mut self.buf),
            residual: residual(b.flags(), b.residual_count()),
        })
    }
}

/// The sense bytes of a SCSI Response data segment (2-byte SenseLength,
/// then the sense data, then possibly response data we ignore).
fn sense_from_segment(d: &[u8]) -> Result<Option<Vec<u8>>> {
    if d.len() < 2 {
        return Ok(None);
    }
    let n = u16::from_be_bytes([d[0], d[1]]) as usize;
    if n == 0 {
        return Ok(None);
    }
    d.get(2..2 + n)
        .map(|s| Some(s.to_vec()))
        .ok_or_else(|| InitiatorError::Protocol("SenseLength beyond data segment".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Opcode;

    fn data_in(sn: u32, off: u32, data: &[u8], flags: u8, status: u8) -> Pdu {
        let mut p = Pdu::new(Opcode::DataIn).with_data(data.to_vec());
        p.bhs.set_flags(flags);
        p.bhs.0[3] = status;
        p.bhs.set_data_sn(sn);
        p.bhs.set_buffer_offset(off);
        p
    }

    #[test]
    fn reassembles_with_status_in_last_data_in() {
        let mut a = DataInAssembler::new(12);
        assert!(a.accept(data_in(0, 0, b"abcd", 0, 0)).unwrap().is_none());
        assert!(a.accept(data_in(1, 4, b"efgh", 0, 0)).unwrap().is_none());
        let mut last = data_in(2, 8, b"ij", F_BIT | S_BIT | U_BIT, 0);
        last.bhs.set_residual_count(2);
        let out = a.accept(last).unwrap().unwrap();
        assert_eq!(out.data, b"abcdefghij");
        assert_eq!(out.status, 0);
        assert_eq!(out.residual, Some((false, 2)));
    }

    #[test]
    fn rejects_gaps_and_overruns() {
        let mut a = DataInAssembler::new(8);
        a.accept(data_in(0, 0, b"ab", 0, 0)).unwrap();
        assert!(a.accept(data_in(2, 2, b"cd", 0, 0)).is_err());
        let mut a = DataInAssembler::new(4);
        assert!(a.accept(data_in(0, 2, b"abcd", 0, 0)).is_err());
        let mut a = DataInAssembler::new(4);
        assert!(a.accept(data_in(0, u32::MAX, b"a", 0, 0)).is_err());
    }

    #[test]
    fn scsi_response_with_sense() {
        let mut a = DataInAssembler::new(0);
        let sense = [0x70, 0, 0x05, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x24, 0];
        let mut seg = vec![0, sense.len() as u8];
        seg.extend_from_slice(&sense);
        let mut r = Pdu::new(Opcode::ScsiResponse).with_data(seg);
        r.bhs.set_flags(0x80);
        r.bhs.0[3] = 0x02;
        let out = a.finish(&r).unwrap();
        assert_eq!(out.status, 2);
        assert_eq!(out.sense.as_deref(), Some(&sense[..]));
        let mut bad = r.clone();
        bad.data = vec![0, 40, 1];
        assert!(DataInAssembler::new(0).finish(&bad).is_err());
        let mut fail = r;
        fail.bhs.0[2] = 1;
        assert!(matches!(
            DataInAssembler::new(0).finish(&fail),
            Err(InitiatorError::TargetFailure { response: 1 })
        ));
    }
}
