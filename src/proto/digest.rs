//! CRC32C (Castagnoli) digests, RFC 7143 §13.1 / RFC 3720 Appendix B.4.
//!
//! The crc32c crate uses the SSE4.2 instruction when the CPU has it. The
//! digest goes on the wire least significant byte first.

/// CRC32C of `data`, as RFC 3720 B.4 defines it.
pub fn crc32c(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 3720 Appendix B.4 test vectors; the RFC lists the digest bytes in
    // wire order, which is little-endian.
    #[test]
    fn rfc3720_vectors() {
        assert_eq!(crc32c(&[0u8; 32]).to_le_bytes(), [0xaa, 0x36, 0x91, 0x8a]);
        assert_eq!(
            crc32c(&[0xffu8; 32]).to_le_bytes(),
            [0x43, 0xab, 0xa8, 0x62]
        );
        let inc: Vec<u8> = (0u8..32).collect();
        assert_eq!(crc32c(&inc).to_le_bytes(), [0x4e, 0x79, 0xdd, 0x46]);
        let dec: Vec<u8> = (0u8..32).rev().collect();
        assert_eq!(crc32c(&dec).to_le_bytes(), [0x5c, 0xdb, 0x3f, 0x11]);
    }
}
