//! The CBT wire contract's numbers (`shared/specs/cbt-scsi.md`, version
//! 2), in one place for both sides: the target (`scsi::vendor`) builds
//! replies with them and the client (`initiator::cbt`) parses with them.
//! Byte offsets inside the replies stay with the code that reads or writes
//! each field.

/// The vendor-specific CBT opcode.
pub const OPCODE: u8 = 0xc0;
/// The INQUIRY VPD page carrying the tracking summary.
pub const VPD_PAGE: u8 = 0xc0;
/// Wire contract version (bump it when the layout is extended).
pub const VERSION: u8 = 2;
/// The first version: no views (a client still accepts it).
pub const VERSION_1: u8 = 1;

/// Service actions of opcode C0h (CDB byte 1 bits 4-0).
pub mod sa {
    pub const REPORT_TRACKING: u8 = 0x00;
    pub const CLOSE_GENERATION: u8 = 0x01;
    pub const GET_CHANGED_EXTENTS: u8 = 0x02;
    pub const ACQUIRE_WRITE_LOCK: u8 = 0x03;
    pub const RENEW_WRITE_LOCK: u8 = 0x04;
    pub const RELEASE_WRITE_LOCK: u8 = 0x05;
    pub const OPEN_VIEW: u8 = 0x06;
    pub const RENEW_VIEW: u8 = 0x07;
    pub const RELEASE_VIEW: u8 = 0x08;
}

/// SA 00h REPORT TRACKING reply.
pub const REPORT_LEN: usize = 96;
/// SA 01h CLOSE GENERATION reply.
pub const CLOSE_LEN: usize = 32;
/// SAs 03h-05h (write lock) reply.
pub const LOCK_LEN: usize = 32;
/// SAs 06h-08h (views) reply.
pub const VIEW_LEN: usize = 32;
/// SA 02h GET CHANGED EXTENTS header, then descriptors.
pub const HEADER_LEN: usize = 48;
pub const DESCRIPTOR_LEN: usize = 24;
/// VPD page C0h: the PAGE LENGTH field (bytes after the 4-byte header)...
pub const VPD_PAGE_LEN: usize = 60;
/// ...and the whole page, header included.
pub const VPD_LEN: usize = 4 + VPD_PAGE_LEN;
/// STARTING LBA of GET CHANGED EXTENTS is a 40-bit field.
pub const MAX_START_LBA: u64 = (1 << 40) - 1;
/// VIEW LUN when views are off for the LUN.
pub const NO_VIEW_LUN: u16 = 0xffff;
/// GET CHANGED EXTENTS CDB byte 1 bit 5.
pub const AS_OF_VIEW: u8 = 0x20;

/// FLAGS of REPORT TRACKING and VPD C0h (byte 1 / byte 5).
pub mod flag {
    pub const TRACKING_ON: u8 = 0x01;
    pub const PERSISTENT: u8 = 0x02;
    pub const WRITE_LOCKED: u8 = 0x04;
    pub const RECOVERED: u8 = 0x08;
    pub const VIEW_OPEN: u8 = 0x10;
    pub const VIEW_LOST: u8 = 0x20;
    /// Bits a version-1 reply may set.
    pub const KNOWN_V1: u8 = 0x0f;
    /// Bits a version-2 reply may set.
    pub const KNOWN_V2: u8 = 0x3f;
}

/// GET CHANGED EXTENTS header FLAGS bit 0.
pub const PAGE_COMPLETE: u8 = 0x01;
/// Descriptor FLAGS bit 0.
pub const DESC_DEALLOCATED: u32 = 0x01;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vpd_lengths_are_page_plus_header() {
        assert_eq!(VPD_PAGE_LEN, 60);
        assert_eq!(VPD_LEN, 64);
    }

    #[test]
    fn known_flags_cover_the_named_bits() {
        use flag::*;
        assert_eq!(
            TRACKING_ON | PERSISTENT | WRITE_LOCKED | RECOVERED,
            KNOWN_V1
        );
        assert_eq!(KNOWN_V1 | VIEW_OPEN | VIEW_LOST, KNOWN_V2);
    }
}
