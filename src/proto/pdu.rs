//! iSCSI PDU codec (RFC 7143 §11), in two phases.
//!
//! Phase one is the fixed 48-byte Basic Header Segment: from it alone we learn
//! how many more bytes belong to the PDU (AHS, digests, padded data), so a
//! reader never has to guess or buffer more than one header ahead. Phase two
//! takes exactly those bytes and checks digests and lengths. No I/O here.
//!
//! The header is kept raw (`Bhs`) with named accessors: most fields sit at the
//! same offset in many opcodes, and keeping the bytes means unknown opcodes and
//! reserved bits round-trip untouched.

use super::digest::crc32c;
use thiserror::Error;

/// Length of the Basic Header Segment.
pub const BHS_LEN: usize = 48;
/// Byte 1 bit 7: F (final) in most PDUs, T (transit) in Login PDUs.
pub const F_BIT: u8 = 0x80;
pub const T_BIT: u8 = F_BIT;
/// Byte 1 bit 6 of Login and Text PDUs: C (continue, more text follows).
pub const C_BIT: u8 = 0x40;

/// Open enum of PDU opcodes: unknown values round-trip as `Unknown`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Opcode {
    NopOut,
    ScsiCommand,
    TaskMgmtRequest,
    LoginRequest,
    TextRequest,
    DataOut,
    LogoutRequest,
    Snack,
    NopIn,
    ScsiResponse,
    TaskMgmtResponse,
    LoginResponse,
    TextResponse,
    DataIn,
    LogoutResponse,
    R2t,
    AsyncMessage,
    Reject,
    Unknown(u8),
}

impl Opcode {
    pub fn from_u8(v: u8) -> Opcode {
        match v & 0x3f {
            0x00 => Opcode::NopOut,
            0x01 => Opcode::ScsiCommand,
            0x02 => Opcode::TaskMgmtRequest,
            0x03 => Opcode::LoginRequest,
            0x04 => Opcode::TextRequest,
            0x05 => Opcode::DataOut,
            0x06 => Opcode::LogoutRequest,
            0x10 => Opcode::Snack,
            0x20 => Opcode::NopIn,
            0x21 => Opcode::ScsiResponse,
            0x22 => Opcode::TaskMgmtResponse,
            0x23 => Opcode::LoginResponse,
            0x24 => Opcode::TextResponse,
            0x25 => Opcode::DataIn,
            0x26 => Opcode::LogoutResponse,
            0x31 => Opcode::R2t,
            0x32 => Opcode::AsyncMessage,
            0x3f => Opcode::Reject,
            other => Opcode::Unknown(other),
        }
    }

    pub fn to_u8(self) -> u8 {
        match self {
            Opcode::NopOut => 0x00,
            Opcode::ScsiCommand => 0x01,
            Opcode::TaskMgmtRequest => 0x02,
            Opcode::LoginRequest => 0x03,
            Opcode::TextRequest => 0x04,
            Opcode::DataOut => 0x05,
            Opcode::LogoutRequest => 0x06,
            Opcode::Snack => 0x10,
            Opcode::NopIn => 0x20,
            Opcode::ScsiResponse => 0x21,
            Opcode::TaskMgmtResponse => 0x22,
            Opcode::LoginResponse => 0x23,
            Opcode::TextResponse => 0x24,
            Opcode::DataIn => 0x25,
            Opcode::LogoutResponse => 0x26,
            Opcode::R2t => 0x31,
            Opcode::AsyncMessage => 0x32,
            Opcode::Reject => 0x3f,
            Opcode::Unknown(v) => v & 0x3f,
        }
    }
}

/// Raw Basic Header Segment with named accessors.
///
/// Field names follow RFC 7143; where two opcodes put different fields at the
/// same offset, both names exist (e.g. `cmd_sn` and `stat_sn` are both at 24).
#[derive(Clone, PartialEq, Eq)]
pub struct Bhs(pub [u8; BHS_LEN]);

impl std::fmt::Debug for Bhs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Bhs({:?} I={} F={} itt={:#x} dsl={})",
            self.opcode(),
            self.immediate(),
            self.final_bit(),
            self.itt(),
            self.data_segment_len()
        )
    }
}

impl Default for Bhs {
    fn default() -> Self {
        Bhs([0; BHS_LEN])
    }
}

macro_rules! u32_field {
    ($get:ident, $set:ident, $off:expr) => {
        pub fn $get(&self) -> u32 {
            self.u32_at($off)
        }
        pub fn $set(&mut self, v: u32) {
            self.set_u32_at($off, v)
        }
    };
}

impl Bhs {
    /// A header with the opcode set and everything else zero.
    pub fn new(op: Opcode) -> Bhs {
        let mut b = Bhs::default();
        b.0[0] = op.to_u8();
        b
    }

    pub fn u32_at(&self, off: usize) -> u32 {
        u32::from_be_bytes(self.0[off..off + 4].try_into().unwrap())
    }
    pub fn set_u32_at(&mut self, off: usize, v: u32) {
        self.0[off..off + 4].copy_from_slice(&v.to_be_bytes());
    }
    pub fn u16_at(&self, off: usize) -> u16 {
        u16::from_be_bytes([self.0[off], self.0[off + 1]])
    }
    pub fn set_u16_at(&mut self, off: usize, v: u16) {
        self.0[off..off + 2].copy_from_slice(&v.to_be_bytes());
    }

    pub fn opcode(&self) -> Opcode {
        Opcode::from_u8(self.0[0])
    }
    pub fn raw_opcode(&self) -> u8 {
        self.0[0] & 0x3f
    }
    /// The I bit (immediate delivery), byte 0 bit 6.
    pub fn immediate(&self) -> bool {
        self.0[0] & 0x40 != 0
    }
    pub fn set_immediate(&mut self, v: bool) {
        self.set_bit(0, 0x40, v)
    }
    /// Byte 1, the opcode-specific flags.
    pub fn flags(&self) -> u8 {
        self.0[1]
    }
    pub fn set_flags(&mut self, v: u8) {
        self.0[1] = v
    }
    /// The F (final) bit, byte 1 bit 7.
    pub fn final_bit(&self) -> bool {
        self.0[1] & F_BIT != 0
    }
    pub fn set_final(&mut self, v: bool) {
        self.set_bit(1, F_BIT, v)
    }
    pub fn set_bit(&mut self, byte: usize, mask: u8, v: bool) {
        if v {
            self.0[byte] |= mask
        } else {
            self.0[byte] &= !mask
        }
    }

    /// TotalAHSLength in bytes (the wire field counts 4-byte words).
    pub fn total_ahs_len(&self) -> usize {
        self.0[4] as usize * 4
    }
    pub fn data_segment_len(&self) -> u32 {
        u32::from_be_bytes([0, self.0[5], self.0[6], self.0[7]])
    }
    pub fn set_data_segment_len(&mut self, len: u32) {
        let b = len.to_be_bytes();
        self.0[5..8].copy_from_slice(&b[1..4]);
    }

    /// LUN field, bytes 8..16, as the raw 8-byte value.
    pub fn lun(&self) -> u64 {
        u64::from_be_bytes(self.0[8..16].try_into().unwrap())
    }
    pub fn set_lun(&mut self, v: u64) {
        self.0[8..16].copy_from_slice(&v.to_be_bytes())
    }
    /// ISID (login), bytes 8..14.
    pub fn isid(&self) -> [u8; 6] {
        self.0[8..14].try_into().unwrap()
    }
    pub fn set_isid(&mut self, v: [u8; 6]) {
        self.0[8..14].copy_from_slice(&v)
    }
    /// TSIH (login), bytes 14..16.
    pub fn tsih(&self) -> u16 {
        self.u16_at(14)
    }
    pub fn set_tsih(&mut self, v: u16) {
        self.set_u16_at(14, v)
    }
    /// CID (login, logout), bytes 20..22.
    pub fn cid(&self) -> u16 {
        self.u16_at(20)
    }
    pub fn set_cid(&mut self, v: u16) {
        self.set_u16_at(20, v)
    }

    u32_field!(itt, set_itt, 16);
    // Offset 20: TTT (NOP, Data, R2T, Text), EDTL (SCSI Command),
    // Referenced Task Tag (TMF request).
    u32_field!(ttt, set_ttt, 20);
    u32_field!(expected_data_len, set_expected_data_len, 20);
    u32_field!(ref_task_tag, set_ref_task_tag, 20);
    // Offset 24: CmdSN in requests, StatSN in responses.
    u32_field!(cmd_sn, set_cmd_sn, 24);
    u32_field!(stat_sn, set_stat_sn, 24);
    // Offset 28: ExpStatSN in requests, ExpCmdSN in responses.
    u32_field!(exp_stat_sn, set_exp_stat_sn, 28);
    u32_field!(exp_cmd_sn, set_exp_cmd_sn, 28);
    // Offset 32: MaxCmdSN in responses; RefCmdSN in TMF request.
    u32_field!(max_cmd_sn, set_max_cmd_sn, 32);
    u32_field!(ref_cmd_sn, set_ref_cmd_sn, 32);
    // Offset 36: DataSN / R2TSN / ExpDataSN.
    u32_field!(data_sn, set_data_sn, 36);
    u32_field!(r2t_sn, set_r2t_sn, 36);
    u32_field!(exp_data_sn, set_exp_data_sn, 36);
    // Offset 40: Buffer Offset (Data-In/Out, R2T), BegRun (SNACK).
    u32_field!(buffer_offset, set_buffer_offset, 40);
    u32_field!(bidi_residual, set_bidi_residual, 40);
    // Offset 44: Residual Count (Data-In, SCSI Response),
    // Desired Data Transfer Length (R2T).
    u32_field!(residual_count, set_residual_count, 44);
    u32_field!(desired_data_len, set_desired_data_len, 44);

    /// CDB of a SCSI Command (bytes 32..48).
    pub fn cdb(&self) -> &[u8] {
        &self.0[32..48]
    }
    pub fn set_cdb(&mut self, cdb: &[u8]) {
        let n = cdb.len().min(16);
        self.0[32..48].fill(0);
        self.0[32..32 + n].copy_from_slice(&cdb[..n]);
    }
}

/// A whole PDU: header, additional header segments and data segment
/// (without padding or digests, which exist only on the wire).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pdu {
    pub bhs: Bhs,
    pub ahs: Vec<u8>,
    pub data: Vec<u8>,
}

impl Pdu {
    pub fn new(op: Opcode) -> Pdu {
        Pdu {
            bhs: Bhs::new(op),
            ahs: Vec::new(),
            data: Vec::new(),
        }
    }
    pub fn with_data(mut self, data: Vec<u8>) -> Pdu {
        self.data = data;
        self
    }
    pub fn opcode(&self) -> Opcode {
        self.bhs.opcode()
    }
    /// The full CDB: the 16 header bytes plus an Extended CDB AHS if present.
    pub fn full_cdb(&self) -> Vec<u8> {
        let mut cdb = self.bhs.cdb().to_vec();
        let mut rest = &self.ahs[..];
        while rest.len() >= 4 {
            let len = u16::from_be_bytes([rest[0], rest[1]]) as usize;
            let ty = rest[2];
            let body_end = (3 + len).min(rest.len());
            if ty == 1 && len >= 1 {
                // Extended CDB: one reserved byte, then the CDB bytes past 16.
                cdb.extend_from_slice(&rest[4..body_end.max(4)]);
            }
            let padded = (3 + len).div_ceil(4) * 4;
            if padded > rest.len() {
                break;
            }
            rest = &rest[padded..];
        }
        cdb
    }
}

/// What the negotiation decided about framing, for one direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framing {
    pub header_digest: bool,
    pub data_digest: bool,
    /// Largest data segment we accept (our MaxRecvDataSegmentLength when
    /// decoding; the peer's when encoding, checked by the caller).
    pub max_data_segment: u32,
}

impl Default for Framing {
    /// Login phase: no digests, and RFC 7143's 8 KiB default segment limit.
    fn default() -> Self {
        Framing {
            header_digest: false,
            data_digest: false,
            max_data_segment: 8192,
        }
    }
}

/// Why a PDU could not be decoded. The variant says how far the damage
/// reaches: a header problem loses framing (close the connection), a data
/// digest problem loses only this PDU (Reject it, RFC 7143 §7.8).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PduError {
    #[error("header digest mismatch")]
    HeaderDigest,
    #[error("data digest mismatch")]
    DataDigest,
    #[error("data segment of {len} bytes exceeds the negotiated {max}")]
    DataTooLong { len: u32, max: u32 },
    #[error("malformed additional header segment")]
    BadAhs,
    #[error("tail has {got} bytes, expected {want}")]
    WrongTailLength { got: usize, want: usize },
}

impl PduError {
    /// True when the byte stream can no longer be trusted.
    pub fn is_fatal(&self) -> bool {
        !matches!(self, PduError::DataDigest)
    }
}

/// Bytes to pad `len` to a 4-byte boundary.
pub fn pad_len(len: usize) -> usize {
    (4 - len % 4) % 4
}

/// Phase one: from a header, how many bytes follow it on the wire.
pub fn tail_len(bhs: &Bhs, framing: &Framing) -> Result<usize, PduError> {
    let dsl = bhs.data_segment_len();
    if dsl > framing.max_data_segment {
        return Err(PduError::DataTooLong {
            len: dsl,
            max: framing.max_data_segment,
        });
    }
    let dsl = dsl as usize;
    let mut n = bhs.total_ahs_len();
    if framing.header_digest {
        n += 4;
    }
    if dsl > 0 {
        n += dsl + pad_len(dsl);
        if framing.data_digest {
            n += 4;
        }
    }
    Ok(n)
}

/// Phase two: check digests and split the tail into AHS and data.
pub fn decode_tail(bhs: Bhs, tail: &[u8], framing: &Framing) -> Result<Pdu, PduError> {
    let want = tail_len(&bhs, framing)?;
    if tail.len() != want {
        return Err(PduError::WrongTailLength {
            got: tail.len(),
            want,
        });
    }
    let ahs_len = bhs.total_ahs_len();
    let (ahs, mut rest) = tail.split_at(ahs_len);
    if framing.header_digest {
        let mut c = crc32c::crc32c(&bhs.0);
        c = crc32c::crc32c_append(c, ahs);
        let got = u32::from_le_bytes(rest[..4].try_into().unwrap());
        if got != c {
            return Err(PduError::HeaderDigest);
        }
        rest = &rest[4..];
    }
    check_ahs(ahs)?;
    let dsl = bhs.data_segment_len() as usize;
    let mut data = Vec::new();
    if dsl > 0 {
        check_data_digest(rest, dsl, framing)?;
        // Write data passes through here on its way to a command buffer,
        // and the session hands the segment back to the pool.
        data = crate::buffers::copy_of(&rest[..dsl]);
    }
    Ok(Pdu {
        bhs,
        ahs: ahs.to_vec(),
        data,
    })
}

/// Phase two for a tail read into a buffer of its own: as
/// [`decode_tail`], but when the data segment starts the tail (no AHS,
/// no header digest: what initiators negotiate by default) the tail's
/// buffer becomes the data, cut to length, instead of being copied out.
/// Why: READ data otherwise crosses user space once more on its way to
/// the command (the initiator's receive path, issue 13).
pub fn decode_owned(bhs: Bhs, mut tail: Vec<u8>, framing: &Framing) -> Result<Pdu, PduError> {
    let dsl = bhs.data_segment_len() as usize;
    if bhs.total_ahs_len() != 0 || framing.header_digest || dsl == 0 {
        return decode_tail(bhs, &tail, framing);
    }
    let want = tail_len(&bhs, framing)?;
    if tail.len() != want {
        return Err(PduError::WrongTailLength {
            got: tail.len(),
            want,
        });
    }
    check_data_digest(&tail, dsl, framing)?;
    tail.truncate(dsl);
    Ok(Pdu {
        bhs,
        ahs: Vec::new(),
        data: tail,
    })
}

/// `rest` holds a data segment of `dsl` bytes, its padding and (with
/// data digests) the digest over both.
fn check_data_digest(rest: &[u8], dsl: usize, framing: &Framing) -> Result<(), PduError> {
    let padded = dsl + pad_len(dsl);
    if framing.data_digest {
        let got = u32::from_le_bytes(rest[padded..padded + 4].try_into().unwrap());
        if got != crc32c(&rest[..padded]) {
            return Err(PduError::DataDigest);
        }
    }
    Ok(())
}

/// Each AHS is length (2 bytes) + type (1 byte) + body, padded to 4 bytes,
/// and together they must exactly fill TotalAHSLength.
fn check_ahs(mut ahs: &[u8]) -> Result<(), PduError> {
    while !ahs.is_empty() {
        if ahs.len() < 4 {
            return Err(PduError::BadAhs);
        }
        let len = u16::from_be_bytes([ahs[0], ahs[1]]) as usize;
        let padded = (3 + len).div_ceil(4) * 4;
        if padded > ahs.len() {
            return Err(PduError::BadAhs);
        }
        ahs = &ahs[padded..];
    }
    Ok(())
}

/// Encode a PDU for the wire: lengths are taken from `ahs` and `data`,
/// padding and digests are added per `framing`.
pub fn encode(pdu: &Pdu, framing: &Framing) -> Vec<u8> {
    let mut out = Vec::with_capacity(BHS_LEN + pdu.ahs.len() + pdu.data.len() + 12);
    encode_into(pdu, framing, &mut out);
    out
}

/// Like [`encode`], appending to `out` (lets callers batch PDUs in one buffer).
pub fn encode_into(pdu: &Pdu, framing: &Framing, out: &mut Vec<u8>) {
    encode_header(pdu, pdu.data.len(), framing, out);
    out.extend_from_slice(&pdu.data);
    encode_trailer(&pdu.data, framing, out);
}

/// The header part of a PDU whose data segment is `data_len` bytes long
/// and is written separately (BHS, AHS, header digest).
pub fn encode_header(pdu: &Pdu, data_len: usize, framing: &Framing, out: &mut Vec<u8>) {
    let mut bhs = pdu.bhs.clone();
    debug_assert!(pdu.ahs.len().is_multiple_of(4) && pdu.ahs.len() <= 255 * 4);
    bhs.0[4] = (pdu.ahs.len() / 4) as u8;
    bhs.set_data_segment_len(data_len as u32);
    let start = out.len();
    out.extend_from_slice(&bhs.0);
    out.extend_from_slice(&pdu.ahs);
    if framing.header_digest {
        let c = crc32c(&out[start..]);
        out.extend_from_slice(&c.to_le_bytes());
    }
}

/// What follows a data segment on the wire: padding to a multiple of 4
/// and the data digest (nothing for an empty segment).
pub fn encode_trailer(data: &[u8], framing: &Framing, out: &mut Vec<u8>) {
    if data.is_empty() {
        return;
    }
    let pad = &[0u8; 3][..pad_len(data.len())];
    out.extend_from_slice(pad);
    if framing.data_digest {
        let c = crc32c::crc32c_append(crc32c(data), pad);
        out.extend_from_slice(&c.to_le_bytes());
    }
}

/// Decode one PDU from the front of `buf`, for in-memory tests and fuzzing.
/// Returns the PDU and the number of bytes it used, or `Ok(None)` if `buf`
/// does not yet hold a whole PDU.
pub fn decode(buf: &[u8], framing: &Framing) -> Result<Option<(Pdu, usize)>, PduError> {
    if buf.len() < BHS_LEN {
        return Ok(None);
    }
    let bhs = Bhs(buf[..BHS_LEN].try_into().unwrap());
    let n = tail_len(&bhs, framing)?;
    if buf.len() < BHS_LEN + n {
        return Ok(None);
    }
    let pdu = decode_tail(bhs, &buf[BHS_LEN..BHS_LEN + n], framing)?;
    Ok(Some((pdu, BHS_LEN + n)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every combination of header and data digests.
    fn framings() -> impl Iterator<Item = Framing> {
        [(false, false), (false, true), (true, false), (true, true)]
            .into_iter()
            .map(|(hd, dd)| Framing {
                header_digest: hd,
                data_digest: dd,
                max_data_segment: 8192,
            })
    }

    fn sample() -> Pdu {
        let mut p = Pdu::new(Opcode::ScsiCommand);
        p.bhs.set_final(true);
        p.bhs.set_itt(0x1234);
        p.bhs.set_cmd_sn(7);
        p.bhs.set_cdb(&[0x28, 0, 0, 0, 0, 1, 0, 0, 8, 0]);
        p.data = vec![1, 2, 3, 4, 5];
        p
    }

    #[test]
    fn roundtrip_all_framings() {
        for f in framings() {
            let wire = encode(&sample(), &f);
            assert_eq!(wire.len() % 4, 0);
            let (pdu, used) = decode(&wire, &f).unwrap().unwrap();
            assert_eq!(used, wire.len());
            assert_eq!(pdu.data, sample().data);
            assert_eq!(pdu.bhs.itt(), 0x1234);
            assert_eq!(pdu.bhs.cdb()[0], 0x28);
        }
    }

    #[test]
    fn detects_corruption() {
        let f = Framing {
            header_digest: true,
            data_digest: true,
            max_data_segment: 8192,
        };
        let mut wire = encode(&sample(), &f);
        wire[20] ^= 1;
        assert_eq!(decode(&wire, &f), Err(PduError::HeaderDigest));
        let mut wire = encode(&sample(), &f);
        wire[BHS_LEN + 4 + 1] ^= 1;
        assert_eq!(decode(&wire, &f), Err(PduError::DataDigest));
        assert!(!PduError::DataDigest.is_fatal());
    }

    #[test]
    fn owned_decode_keeps_the_tail_and_checks_like_the_copying_one() {
        for f in framings() {
            let wire = encode(&sample(), &f);
            let bhs = Bhs(wire[..BHS_LEN].try_into().unwrap());
            let tail = wire[BHS_LEN..].to_vec();
            let at = tail.as_ptr();
            let pdu = decode_owned(bhs.clone(), tail.clone(), &f).unwrap();
            assert_eq!(pdu, decode_tail(bhs.clone(), &tail, &f).unwrap());
            if !f.header_digest {
                let kept = decode_owned(bhs.clone(), tail, &f).unwrap();
                assert_eq!(kept.data.as_ptr(), at, "the tail's buffer is the data");
            }
            // A flipped data byte, and a tail one byte short.
            let mut bad = wire[BHS_LEN..].to_vec();
            bad[usize::from(f.header_digest) * 4 + 1] ^= 1;
            let want = decode_tail(bhs.clone(), &bad, &f).map(|_| ());
            assert_eq!(decode_owned(bhs.clone(), bad, &f).map(|_| ()), want);
            let short = &wire[BHS_LEN + 1..];
            let want = decode_tail(bhs.clone(), short, &f).map(|_| ());
            assert_eq!(decode_owned(bhs, short.to_vec(), &f).map(|_| ()), want);
        }
    }

    #[test]
    fn rejects_oversized_segment_before_reading_it() {
        let mut bhs = Bhs::new(Opcode::DataOut);
        bhs.set_data_segment_len(0xff_ffff);
        let err = tail_len(&bhs, &Framing::default()).unwrap_err();
        assert!(matches!(err, PduError::DataTooLong { .. }));
    }

    #[test]
    fn partial_input_waits() {
        let f = Framing::default();
        let wire = encode(&sample(), &f);
        for cut in [0, 10, 47, 48, wire.len() - 1] {
            assert_eq!(decode(&wire[..cut], &f), Ok(None));
        }
    }

    #[test]
    fn unknown_opcode_roundtrips() {
        let op = Opcode::from_u8(0x1c);
        assert_eq!(op, Opcode::Unknown(0x1c));
        assert_eq!(op.to_u8(), 0x1c);
    }

    #[test]
    fn bad_ahs_is_rejected() {
        let mut p = sample();
        p.ahs = vec![0, 200, 1, 0];
        let wire = encode(&p, &Framing::default());
        assert_eq!(decode(&wire, &Framing::default()), Err(PduError::BadAhs));
    }

    #[test]
    fn extended_cdb_is_appended() {
        let mut p = sample();
        // AHS length 17 = reserved byte + 16 extra CDB bytes; padded to 20.
        let mut ahs = vec![0, 17, 1, 0];
        ahs.extend(100..116u8);
        p.ahs = ahs;
        let wire = encode(&p, &Framing::default());
        let (pdu, _) = decode(&wire, &Framing::default()).unwrap().unwrap();
        let cdb = pdu.full_cdb();
        assert_eq!(cdb.len(), 32);
        assert_eq!(cdb[16], 100);
    }
}
