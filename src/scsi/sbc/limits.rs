//! Limits the device server advertises (VPD B0h) and enforces, in one
//! place so the page and the handlers can never disagree.

/// MAXIMUM UNMAP LBA COUNT. libiscsi reads "unlimited" badly, so finite.
pub const MAX_UNMAP_LBA_COUNT: u32 = 1024 * 1024;
/// MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT.
pub const MAX_UNMAP_DESCRIPTORS: u32 = 256;
/// MAXIMUM WRITE SAME LENGTH in blocks: what WRITE SAME(10) can express.
/// Larger ranges take several commands (or UNMAP). Not larger, because
/// with a limit of 65536 or more libiscsi's WriteSame16.Unmap sends a
/// 65536-block WRITE(16), beyond our MAXIMUM TRANSFER LENGTH.
pub const MAX_WRITE_SAME_BLOCKS: u64 = 0xffff;
/// MAXIMUM COMPARE AND WRITE LENGTH (a one-byte field).
pub const MAX_COMPARE_AND_WRITE_BLOCKS: u8 = 255;
/// ATOMIC ALIGNMENT and ATOMIC TRANSFER LENGTH GRANULARITY in blocks. The
/// maximum atomic transfer length is the maximum transfer length: every
/// write of the device server is atomic against COMPARE AND WRITE and
/// WRITE ATOMIC through the LUN's write lock.
pub const ATOMIC_ALIGNMENT: u32 = 1;
pub const ATOMIC_GRANULARITY: u32 = 1;

/// Physical block size reported (READ CAPACITY(16) LBPPBE, OPTIMAL UNMAP
/// GRANULARITY): the 4 KiB in which filesystems allocate and punch holes,
/// so an unmap smaller than this may leave the space allocated.
pub const PHYSICAL_BLOCK_BYTES: u32 = 4096;

/// Logical blocks per physical block (at least 1).
pub fn blocks_per_physical(block_size: u32) -> u32 {
    (PHYSICAL_BLOCK_BYTES / block_size.max(1)).max(1)
}

/// LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT (a power of two exponent).
pub fn lbppbe(block_size: u32) -> u8 {
    blocks_per_physical(block_size).ilog2() as u8
}
