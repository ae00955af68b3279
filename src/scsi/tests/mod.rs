//! Device server tests: CDBs run through `DeviceServer::execute` over
//! memory and file backends.

mod alua;
mod cbt;
mod fuzz;
mod lock;
mod lun_map;
mod mode;
mod pr;
mod removable;
mod sbc;
mod short_data;
mod spc;
mod thin;
mod uring;
mod verify;
mod view;
mod xcopy;

use super::sense::key;
use super::*;
use crate::backend::{Backend, MemoryBackend};
use std::sync::Arc;

pub const BS: u32 = 512;
pub const BLOCKS: u64 = 2048;

pub fn identity(n: u8) -> LunIdentity {
    let mut naa = [0u8; 16];
    naa[0] = 0x60;
    naa[15] = n;
    LunIdentity {
        serial: format!("SER{n:04}"),
        naa,
    }
}

pub fn mem_lu(blocks: u64, read_only: bool) -> Arc<LogicalUnit> {
    let backend: Arc<dyn Backend> = Arc::new(MemoryBackend::new(blocks * BS as u64));
    Arc::new(LogicalUnit::new(backend, BS, identity(1), read_only))
}

pub fn nexus(id: u64) -> Nexus {
    Nexus {
        id,
        initiator_port: format!("iqn.2024-01.test:host{id},i,0x1"),
        initiator_name: format!("iqn.2024-01.test:host{id}"),
        relative_port: 1,
    }
}

pub struct Harness {
    pub srv: DeviceServer,
    pub nexus: Nexus,
}

impl Harness {
    /// LUN 0: a read-write memory LUN of BLOCKS blocks. No unit attention
    /// is pending (nexus_added is not called).
    pub fn new() -> Harness {
        Harness::with_luns(vec![(0, mem_lu(BLOCKS, false))])
    }

    pub fn with_luns(luns: Vec<(u64, Arc<LogicalUnit>)>) -> Harness {
        Harness {
            srv: DeviceServer::new("iqn.2024-01.test:target", luns),
            nexus: nexus(1),
        }
    }

    pub fn exec(&self, lun: u64, cdb: &[u8], data_out: &[u8], expected_len: u32) -> ScsiResult {
        self.exec_as(&self.nexus, lun, cdb, data_out, expected_len)
    }

    /// [`exec`](Self::exec) from another I_T nexus.
    pub fn exec_as(
        &self,
        nexus: &Nexus,
        lun: u64,
        cdb: &[u8],
        data_out: &[u8],
        expected_len: u32,
    ) -> ScsiResult {
        let mut padded = cdb.to_vec();
        // The transport hands over at least 16 bytes (the BHS CDB field).
        padded.resize(padded.len().max(16), 0);
        self.srv.execute(&ScsiCommand {
            lun,
            cdb: &padded,
            data_out,
            expected_len,
            nexus,
        })
    }

    /// Run on LUN 0 and require GOOD.
    pub fn good(&self, cdb: &[u8], data_out: &[u8], expected_len: u32) -> ScsiResult {
        let r = self.exec(0, cdb, data_out, expected_len);
        assert_eq!(
            r.status,
            status::GOOD,
            "cdb {cdb:02x?}: {:?}",
            r.sense_codes()
        );
        r
    }

    /// Run on LUN 0 and require CHECK CONDITION with (key, asc, ascq).
    pub fn check(
        &self,
        cdb: &[u8],
        data_out: &[u8],
        expected_len: u32,
        want: (u8, u8, u8),
    ) -> ScsiResult {
        let r = self.exec(0, cdb, data_out, expected_len);
        assert_eq!(r.status, status::CHECK_CONDITION, "cdb {cdb:02x?}");
        assert_eq!(r.sense_codes(), Some(want), "cdb {cdb:02x?}");
        assert_eq!(r.sense.as_ref().map(Vec::len), Some(18));
        r
    }
}

pub const INVALID_FIELD: (u8, u8, u8) = (key::ILLEGAL_REQUEST, 0x24, 0);
pub const INVALID_OPCODE: (u8, u8, u8) = (key::ILLEGAL_REQUEST, 0x20, 0);
pub const LBA_OOB: (u8, u8, u8) = (key::ILLEGAL_REQUEST, 0x21, 0);
pub const LUN_NOT_SUPPORTED: (u8, u8, u8) = (key::ILLEGAL_REQUEST, 0x25, 0);
pub const WRITE_PROTECTED: (u8, u8, u8) = (key::DATA_PROTECT, 0x27, 0);
pub const INVALID_PARAM: (u8, u8, u8) = (key::ILLEGAL_REQUEST, 0x26, 0);
pub const POWER_ON: (u8, u8, u8) = (key::UNIT_ATTENTION, 0x29, 0);
pub const BUS_DEVICE_RESET: (u8, u8, u8) = (key::UNIT_ATTENTION, 0x29, 3);

pub fn read10(lba: u32, blocks: u16) -> Vec<u8> {
    let mut c = vec![0x28, 0];
    c.extend_from_slice(&lba.to_be_bytes());
    c.push(0);
    c.extend_from_slice(&blocks.to_be_bytes());
    c.push(0);
    c
}

pub fn write10(lba: u32, blocks: u16, fua: bool) -> Vec<u8> {
    let mut c = read10(lba, blocks);
    c[0] = 0x2a;
    if fua {
        c[1] |= 0x08;
    }
    c
}

pub fn rw16(op: u8, lba: u64, blocks: u32) -> Vec<u8> {
    let mut c = vec![op, 0];
    c.extend_from_slice(&lba.to_be_bytes());
    c.extend_from_slice(&blocks.to_be_bytes());
    c.extend_from_slice(&[0, 0]);
    c
}

pub fn rw12(op: u8, lba: u32, blocks: u32) -> Vec<u8> {
    let mut c = vec![op, 0];
    c.extend_from_slice(&lba.to_be_bytes());
    c.extend_from_slice(&blocks.to_be_bytes());
    c.extend_from_slice(&[0, 0]);
    c
}

pub fn rw6(op: u8, lba: u32, blocks: u8) -> Vec<u8> {
    let l = lba.to_be_bytes();
    vec![op, l[1] & 0x1f, l[2], l[3], blocks, 0]
}

pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}
