//! Convenience wrappers for the SCSI commands tests and the backup client
//! use most. Each maps a non-GOOD status to `InitiatorError::ScsiCheck`.

use super::command::decode_lun;
use super::error::{InitiatorError, Result};
use super::session::Session;

impl Session {
    pub async fn test_unit_ready(&self, lun: u64) -> Result<()> {
        self.scsi(lun, &[0; 6], None, 0).await?.good().map(drop)
    }

    /// Standard INQUIRY data (up to 255 bytes).
    pub async fn inquiry(&self, lun: u64) -> Result<Vec<u8>> {
        let cdb = [0x12, 0, 0, 0, 255, 0];
        Ok(self.scsi(lun, &cdb, None, 255).await?.good()?.data)
    }

    /// INQUIRY for a Vital Product Data page.
    pub async fn inquiry_vpd(&self, lun: u64, page: u8) -> Result<Vec<u8>> {
        let cdb = [0x12, 1, page, 0x10, 0, 0]; // allocation length 4096
        Ok(self.scsi(lun, &cdb, None, 4096).await?.good()?.data)
    }

    /// READ CAPACITY (16): (number of blocks, block size).
    pub async fn read_capacity16(&self, lun: u64) -> Result<(u64, u32)> {
        let mut cdb = [0u8; 16];
        cdb[0] = 0x9e;
        cdb[1] = 0x10;
        cdb[13] = 32;
        let d = self.scsi(lun, &cdb, None, 32).await?.good()?.data;
        if d.len() < 12 {
            return Err(InitiatorError::Protocol("short READ CAPACITY data".into()));
        }
        let last = u64::from_be_bytes(d[0..8].try_into().unwrap_or_default());
        let bs = u32::from_be_bytes(d[8..12].try_into().unwrap_or_default());
        Ok((last.wrapping_add(1), bs))
    }

    /// READ (16) of `blocks` blocks of `block_size` bytes.
    pub async fn read16(
        &self,
        lun: u64,
        lba: u64,
        blocks: u32,
        block_size: u32,
    ) -> Result<Vec<u8>> {
        let len = blocks
            .checked_mul(block_size)
            .ok_or_else(|| InitiatorError::Protocol("read too large".into()))?;
        let cdb = rw16(0x88, lba, blocks, false);
        let d = self.scsi(lun, &cdb, None, len).await?.good()?.data;
        if d.len() != len as usize {
            return Err(InitiatorError::Protocol(format!(
                "READ (16) returned {} of {len} bytes",
                d.len()
            )));
        }
        Ok(d)
    }

    /// WRITE (16); `data` must be whole blocks of `block_size`.
    pub async fn write16(
        &self,
        lun: u64,
        lba: u64,
        data: &[u8],
        block_size: u32,
        fua: bool,
    ) -> Result<()> {
        if block_size == 0 || !data.len().is_multiple_of(block_size as usize) {
            return Err(InitiatorError::Protocol("write is not whole blocks".into()));
        }
        let blocks = u32::try_from(data.len() / block_size as usize)
            .map_err(|_| InitiatorError::Protocol("write too large".into()))?;
        let cdb = rw16(0x8a, lba, blocks, fua);
        self.scsi(lun, &cdb, Some(data), 0).await?.good().map(drop)
    }

    /// SYNCHRONIZE CACHE (10) of the whole LU.
    pub async fn sync_cache(&self, lun: u64) -> Result<()> {
        self.scsi(lun, &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], None, 0)
            .await?
            .good()
            .map(drop)
    }

    /// REPORT LUNS: the LUN numbers (decoded from SAM addressing).
    pub async fn report_luns(&self) -> Result<Vec<u64>> {
        let alloc: u32 = 16 + 8 * 1024;
        let mut cdb = [0u8; 12];
        cdb[0] = 0xa0;
        cdb[6..10].copy_from_slice(&alloc.to_be_bytes());
        let d = self.scsi(0, &cdb, None, alloc).await?.good()?.data;
        let list_len = d
            .get(0..4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .ok_or_else(|| InitiatorError::Protocol("short REPORT LUNS data".into()))?;
        let body = d.get(8..).unwrap_or_default();
        let n = list_len.min(body.len()) / 8;
        Ok(body
            .chunks_exact(8)
            .take(n)
            .map(|c| decode_lun(u64::from_be_bytes(c.try_into().unwrap_or_default())))
            .collect())
    }
}

/// READ (16) / WRITE (16) CDB.
fn rw16(op: u8, lba: u64, blocks: u32, fua: bool) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = op;
    if fua {
        c[1] = 0x08;
    }
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}
