//! Helpers shared by handlers: bounds-safe CDB field reads and the
//! data-in/allocation-length rule.

use super::{ScsiCommand, ScsiResult};

/// Big-endian field of `n` bytes (n ≤ 8) at `at`. Bytes past the end of the
/// CDB read as zero, so a handler can never index out of bounds.
pub fn be(buf: &[u8], at: usize, n: usize) -> u64 {
    (at..at + n).fold(0u64, |acc, i| {
        (acc << 8) | buf.get(i).copied().unwrap_or(0) as u64
    })
}

pub fn byte(buf: &[u8], at: usize) -> u8 {
    buf.get(at).copied().unwrap_or(0)
}

/// Answer with parameter data `data` under an ALLOCATION LENGTH: the
/// device server transfers min(data, allocation length) bytes (that is the
/// SPDTL), and of those only what fits the initiator's expected length.
pub fn data_in(cmd: &ScsiCommand, mut data: Vec<u8>, alloc_len: u64) -> ScsiResult {
    let spdtl = (data.len() as u64).min(alloc_len);
    let sent = spdtl.min(cmd.expected_len as u64);
    data.truncate(sent as usize);
    ScsiResult::good(data, u32::try_from(spdtl).unwrap_or(u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn be_reads_and_pads() {
        let b = [0x12, 0x34, 0x56];
        assert_eq!(be(&b, 0, 2), 0x1234);
        assert_eq!(be(&b, 1, 4), 0x3456_0000);
        assert_eq!(be(&b, 9, 8), 0);
        assert_eq!(byte(&b, 3), 0);
    }
}
