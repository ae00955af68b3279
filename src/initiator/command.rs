//! SCSI commands over the session (RFC 7143 §11.3-11.8): one function
//! drives any CDB, including the write dance of immediate data,
//! unsolicited Data-Out and R2T answers.

use super::datain::DataInAssembler;
use super::dataout::{DataOutSeg, plan_r2t, plan_unsolicited};
use super::error::{InitiatorError, Result};
use super::session::{RESERVED_TAG, Session};
use crate::proto::{Opcode, Pdu};

const F_BIT: u8 = 0x80;
const R_BIT: u8 = 0x40;
const W_BIT: u8 = 0x20;
const ATTR_SIMPLE: u8 = 1;
/// A CDB must fit in the header plus one Extended CDB AHS.
const MAX_CDB: usize = 16 + 255 * 4 - 4;

/// How a SCSI command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScsiOutcome {
    /// SCSI status (0 GOOD, 2 CHECK CONDITION, ...).
    pub status: u8,
    /// Sense data (without the 2-byte SenseLength).
    pub sense: Option<Vec<u8>>,
    /// Data-In received.
    pub data: Vec<u8>,
    /// (overflow?, residual count) when the target reported one.
    pub residual: Option<(bool, u32)>,
}

impl ScsiOutcome {
    /// (sense key, ASC, ASCQ) from the sense data, if any.
    pub fn sense_code(&self) -> Option<(u8, u8, u8)> {
        self.sense.as_deref().and_then(parse_sense)
    }

    /// `Ok(self)` if the status is GOOD, else `ScsiCheck`.
    pub fn good(self) -> Result<ScsiOutcome> {
        if self.status == 0 {
            Ok(self)
        } else {
            Err(InitiatorError::ScsiCheck {
                status: self.status,
                sense: self.sense.unwrap_or_default(),
            })
        }
    }
}

/// (sense key, ASC, ASCQ) of fixed (0x70/0x71) or descriptor (0x72/0x73)
/// format sense data.
pub fn parse_sense(s: &[u8]) -> Option<(u8, u8, u8)> {
    match s.first()? & 0x7f {
        0x70 | 0x71 if s.len() >= 14 => Some((s[2] & 0x0f, s[12], s[13])),
        0x72 | 0x73 if s.len() >= 4 => Some((s[1] & 0x0f, s[2], s[3])),
        _ => None,
    }
}

/// The 8-byte LUN field for a LUN number ([`crate::scsi::lun_field::encode`]).
/// Larger values are taken to be an already-encoded LUN field and pass
/// through unchanged.
pub fn encode_lun(lun: u64) -> u64 {
    crate::scsi::lun_field::encode(lun).unwrap_or(lun)
}

/// Inverse of [`encode_lun`]: other forms pass through unchanged.
pub fn decode_lun(field: u64) -> u64 {
    crate::scsi::lun_field::decode(field).unwrap_or(field)
}

fn command_pdu(lun: u64, cdb: &[u8], edtl: u32, read: bool, write: bool) -> Pdu {
    let mut p = Pdu::new(Opcode::ScsiCommand);
    let mut flags = F_BIT | ATTR_SIMPLE;
    if read {
        flags |= R_BIT;
    }
    if write {
        flags |= W_BIT;
    }
    p.bhs.set_flags(flags);
    p.bhs.set_lun(encode_lun(lun));
    p.bhs.set_expected_data_len(edtl);
    p.bhs.set_cdb(cdb);
    if cdb.len() > 16 {
        // Extended CDB AHS: length covers the reserved byte + the extra CDB.
        let extra = &cdb[16..];
        let len = (extra.len() + 1) as u16;
        let mut ahs = len.to_be_bytes().to_vec();
        ahs.extend_from_slice(&[1, 0]);
        ahs.extend_from_slice(extra);
        ahs.resize(ahs.len().div_ceil(4) * 4, 0);
        p.ahs = ahs;
    }
    p
}

impl Session {
    /// Run one SCSI command. `data_out` makes it a write; `expected_in` is
    /// the read allocation. Bidirectional commands are not supported.
    pub async fn scsi(
        &self,
        lun: u64,
        cdb: &[u8],
        data_out: Option<&[u8]>,
        expected_in: u32,
    ) -> Result<ScsiOutcome> {
        if cdb.is_empty() || cdb.len() > MAX_CDB {
            return Err(InitiatorError::Protocol(format!(
                "CDB of {} bytes",
                cdb.len()
            )));
        }
        if data_out.is_some() && expected_in > 0 {
            return Err(InitiatorError::Protocol(
                "bidirectional commands are not supported".into(),
            ));
        }
        let out = data_out.unwrap_or(&[]);
        let total = u32::try_from(out.len())
            .map_err(|_| InitiatorError::Protocol("write larger than 4 GiB".into()))?;
        let edtl = if data_out.is_some() {
            total
        } else {
            expected_in
        };
        let mut pdu = command_pdu(lun, cdb, edtl, expected_in > 0, data_out.is_some());
        let p = self.params();
        let mrdsl = p.target_max_recv_dsl;
        let plan = if data_out.is_some() {
            plan_unsolicited(
                total,
                p.immediate_data,
                p.initial_r2t,
                p.first_burst_length,
                mrdsl,
            )
        } else {
            plan_unsolicited(0, false, true, 0, mrdsl)
        };
        pdu.data = out[..plan.immediate as usize].to_vec();
        pdu.bhs.set_final(plan.unsolicited.is_empty());

        let mut task = self.shared.new_task();
        let itt = task.itt;
        pdu.bhs.set_itt(itt);
        self.shared.send_command(Some(itt), pdu).await?;
        for seg in &plan.unsolicited {
            self.send_data_out(lun, itt, RESERVED_TAG, seg, out).await?;
        }

        let mut data_in = DataInAssembler::new(expected_in);
        loop {
            let r = task.next().await?;
            match r.opcode() {
                Opcode::DataIn => {
                    if let Some(done) = data_in.accept(r)? {
                        return Ok(done);
                    }
                }
                Opcode::ScsiResponse => return data_in.finish(&r),
                Opcode::R2t if data_out.is_some() => {
                    let b = &r.bhs;
                    let segs = plan_r2t(b.buffer_offset(), b.desired_data_len(), total, mrdsl)?;
                    for seg in &segs {
                        self.send_data_out(lun, itt, b.ttt(), seg, out).await?;
                    }
                }
                other => {
                    return Err(InitiatorError::Protocol(format!(
                        "unexpected {other:?} for a SCSI command"
                    )));
                }
            }
        }
    }

    async fn send_data_out(
        &self,
        lun: u64,
        itt: u32,
        ttt: u32,
        seg: &DataOutSeg,
        buf: &[u8],
    ) -> Result<()> {
        let (a, b) = (seg.offset as usize, (seg.offset + seg.len) as usize);
        let mut p = Pdu::new(Opcode::DataOut).with_data(buf[a..b].to_vec());
        p.bhs.set_final(seg.final_bit);
        p.bhs.set_lun(encode_lun(lun));
        p.bhs.set_itt(itt);
        p.bhs.set_ttt(ttt);
        p.bhs.set_data_sn(seg.data_sn);
        p.bhs.set_buffer_offset(seg.offset);
        self.shared.send_data(p).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lun_encoding_roundtrips() {
        assert_eq!(encode_lun(1), 0x0001_0000_0000_0000);
        assert_eq!(encode_lun(300), 0x412c_0000_0000_0000);
        for l in [0u64, 1, 255, 256, 16383] {
            assert_eq!(decode_lun(encode_lun(l)), l);
        }
        assert_eq!(encode_lun(0x0001_0000_0000_0000), 0x0001_0000_0000_0000);
    }

    #[test]
    fn sense_formats() {
        let fixed = [0x70, 0, 0x05, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x24, 0x01];
        assert_eq!(parse_sense(&fixed), Some((5, 0x24, 1)));
        assert_eq!(parse_sense(&[0x72, 0x06, 0x29, 0x00]), Some((6, 0x29, 0)));
        assert_eq!(parse_sense(&[0x70, 0, 5]), None);
        assert_eq!(parse_sense(&[]), None);
    }

    #[test]
    fn long_cdb_goes_to_ahs() {
        let cdb: Vec<u8> = (0..32).collect();
        let p = command_pdu(0, &cdb, 0, false, false);
        assert_eq!(p.full_cdb(), cdb);
        assert_eq!(p.ahs.len() % 4, 0);
    }
}
