//! The device server: every row of the command table, the CBT service
//! actions (with the write lock and held changes) and the parameter lists
//! that commands carry in their data-out.

use super::input::Input;
use crate::backend::{Backend, MemoryBackend};
use crate::cbt::Tracker;
use crate::scsi::cdb::TABLE;
use crate::scsi::{DeviceServer, LogicalUnit, Nexus, OwnedCommand, ScsiCommand};
use crate::scsi::{ScsiResult, status};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const BS: u32 = 512;
const BLOCKS: u64 = 64;
/// 4 blocks per extent: 16 extents on a LUN.
const EXTENT: u32 = 4;
const INITIATORS: [&str; 2] = [
    "iqn.2026-11.dev.gentgt:fuzz-a",
    "iqn.2026-11.dev.gentgt:fuzz-b",
];

fn lu(n: u8, read_only: bool, tracked: bool) -> Arc<LogicalUnit> {
    let backend: Arc<dyn Backend> = Arc::new(MemoryBackend::new(BLOCKS * u64::from(BS)));
    let id = crate::config::identity::derived_identity("fuzz-scsi", u64::from(n));
    let mut lu = LogicalUnit::new(backend, BS, id, read_only);
    if tracked {
        let t = Tracker::volatile(BLOCKS, EXTENT).expect("volatile tracker");
        lu = lu.with_tracker(Arc::new(t));
        lu.cbt.allowed_initiators = vec![INITIATORS[0].to_string()];
        // Keep leases and drains short so nothing a fuzz input asks for
        // can stall the run.
        lu.cbt.max_lease = Duration::from_millis(50);
        lu.cbt.default_drain = Duration::from_millis(10);
    }
    Arc::new(lu)
}

/// LUN 0 read-write and tracked, LUN 1 read-only, LUN 2 untracked; LUN 3
/// does not exist.
fn server() -> Arc<DeviceServer> {
    let luns = vec![
        (0, lu(0, false, true)),
        (1, lu(1, true, false)),
        (2, lu(2, false, false)),
    ];
    Arc::new(DeviceServer::new("iqn.2026-11.dev.gentgt:fuzz", luns))
}

fn nexus(n: usize) -> Nexus {
    let name = INITIATORS[n % 2];
    Nexus {
        id: n as u64 + 1,
        initiator_port: format!("{name},i,0x80000000123{n}"),
        initiator_name: name.to_string(),
        relative_port: 1,
    }
}

/// The transport never hands over more data-out than the EDTL.
fn clip(data: &[u8], edtl: u32) -> &[u8] {
    &data[..data.len().min(edtl as usize)]
}

/// What every result must satisfy, whatever the command.
pub fn check_result(r: &ScsiResult, expected_len: u32) {
    assert!(
        r.data_in.len() as u64 <= u64::from(expected_len),
        "data-in beyond EDTL"
    );
    assert!(
        r.data_in.len() as u64 <= u64::from(r.transfer_len),
        "data-in beyond SPDTL"
    );
    if r.status == status::CHECK_CONDITION {
        let s = r.sense.as_ref().expect("CHECK CONDITION without sense");
        assert_eq!(s.len(), 18, "sense is not 18 bytes");
        assert!(matches!(s[0] & 0x7f, 0x70 | 0x71), "not fixed-format sense");
        assert_eq!(s[7], 10, "additional sense length");
        assert!(s[2] & 0x0f != 0, "CHECK CONDITION with NO SENSE key");
        assert!(r.data_in.is_empty());
    } else {
        assert!(r.sense.is_none(), "sense without CHECK CONDITION");
    }
}

fn run(srv: &DeviceServer, lun: u64, cdb: &[u8], data: &[u8], edtl: u32, nx: &Nexus) -> ScsiResult {
    let r = srv.execute(&ScsiCommand {
        lun,
        cdb,
        data_out: data,
        expected_len: edtl,
        nexus: nx,
    });
    check_result(&r, edtl);
    r
}

/// A sequence of commands, each: row byte (picks a table row, so every
/// opcode and service action is reached), flags byte, EDTL, the CDB bytes
/// after the opcode, and a length-prefixed data-out.
pub fn cdb(data: &[u8]) {
    let srv = server();
    let nexuses = [nexus(0), nexus(1)];
    let mut inp = Input::new(data);
    while !inp.is_empty() {
        let row = &TABLE[inp.u8() as usize % TABLE.len()];
        let flags = inp.u8();
        let nx = &nexuses[(flags >> 4) as usize & 1];
        if flags & 0x20 != 0 {
            srv.nexus_added(nx);
        }
        let edtl = if flags & 0x40 != 0 {
            inp.u32()
        } else {
            u32::from(inp.u16())
        };
        let mut cdb = [0u8; 16];
        let body = inp.take(row.cdb_len.saturating_sub(1).min(15));
        cdb[1..1 + body.len()].copy_from_slice(body);
        cdb[0] = row.opcode;
        if let Some(sa) = row.service_action {
            cdb[1] = (cdb[1] & 0xe0) | sa as u8;
        }
        if flags & 0x80 == 0 {
            // Clear reserved bits so the handler itself is reached.
            for (c, m) in cdb.iter_mut().zip(row.usage_mask) {
                *c &= m;
            }
        }
        let data_out = clip(inp.chunk(), edtl);
        let lun = u64::from(flags & 3);
        run(&srv, lun, &cdb, data_out, edtl, nx);
    }
}

/// C0h service actions and changes interleaved, through `submit` so
/// changes are held while the write lock is held. Step byte: low nibble
/// the action, bit 4 the nexus, bit 5 reuse the last lock token.
pub fn cbt(data: &[u8]) {
    let srv = server();
    let nexuses = [Arc::new(nexus(0)), Arc::new(nexus(1))];
    let results: Arc<Mutex<Vec<(ScsiResult, u32)>>> = Arc::default();
    let mut inp = Input::new(data);
    let mut token = [0u8; 8];
    let mut tag = 0u64;
    while !inp.is_empty() {
        let step = inp.u8();
        let nx = &nexuses[(step >> 4) as usize & 1];
        let lun = u64::from(inp.u8() & 3);
        let edtl = u32::from(inp.u16());
        let (cdb, data_out) = match step & 0x0f {
            sa @ 0..=6 => {
                let mut c = [0u8; 16];
                let body = inp.take(15);
                c[1..1 + body.len()].copy_from_slice(body);
                c[0] = 0xc0;
                c[1] = (c[1] & 0xe0) | sa;
                if step & 0x20 != 0 {
                    c[2..10].copy_from_slice(&token);
                }
                (c.to_vec(), Vec::new())
            }
            7 | 8 => {
                // WRITE(10) / WRITE SAME(10)+UNMAP of a few blocks.
                let lba = inp.u8() % (BLOCKS as u8 + 2);
                let n = inp.u8() % 5;
                let op = if step & 0x0f == 7 { 0x2a } else { 0x41 };
                let c = vec![op, (op == 0x41) as u8 * 8, 0, 0, 0, lba, 0, 0, n, 0];
                let len = if op == 0x2a { n as usize } else { 1 } * BS as usize;
                (c, clip(&vec![step; len], edtl).to_vec())
            }
            9 => {
                srv.tick();
                continue;
            }
            10 => {
                srv.nexus_removed(nx);
                continue;
            }
            11 => {
                let _ = srv.abort_held(Some(lun), Some(nx.id), None);
                continue;
            }
            _ => {
                srv.nexus_added(nx);
                continue;
            }
        };
        tag += 1;
        let out = Arc::clone(&results);
        let cmd = OwnedCommand {
            lun,
            cdb,
            data_out,
            expected_len: edtl,
            nexus: Arc::clone(nx),
            tag,
        };
        let done = Box::new(move |r: ScsiResult| out.lock().unwrap().push((r, edtl)));
        srv.submit(cmd, done);
        if let Some((r, _)) = results.lock().unwrap().last()
            && r.status == status::GOOD
            && r.data_in.len() >= 8
        {
            token.copy_from_slice(&r.data_in[..8]);
        }
    }
    // Finish whatever is still held, then check every result.
    srv.abort_held(None, None, None);
    for (r, edtl) in results.lock().unwrap().iter() {
        check_result(r, *edtl);
    }
}

/// Parameter lists with valid CDBs: step byte picks UNMAP, PR OUT (service
/// action from the byte), EXTENDED COPY, MODE SELECT(6)/(10); the CDB's
/// parameter list length is the data length (or, with bit 7, a raw value).
pub fn param_lists(data: &[u8]) {
    let srv = server();
    let nexuses = [nexus(0), nexus(1)];
    let mut inp = Input::new(data);
    while !inp.is_empty() {
        let step = inp.u8();
        let nx = &nexuses[(step >> 6) as usize & 1];
        let aux = inp.u8();
        let list = inp.chunk();
        let len = if step & 0x20 != 0 {
            inp.u16()
        } else {
            list.len() as u16
        };
        let l = len.to_be_bytes();
        let lun = u64::from(aux >> 6);
        let cdb: Vec<u8> = match step & 0x07 {
            0 => vec![0x42, aux & 1, 0, 0, 0, 0, 0, l[0], l[1], 0],
            1 | 2 => {
                // PR OUT: service action and scope/type from aux.
                let sa = aux & 0x07;
                vec![0x5f, sa, (aux >> 3) & 0x0f, 0, 0, 0, 0, l[0], l[1], 0]
            }
            3 => {
                let mut c = vec![0x83, 0, 0, 0, 0, 0, 0, 0, 0, 0];
                c.extend_from_slice(&u32::from(len).to_be_bytes());
                c.extend_from_slice(&[0, 0]);
                c
            }
            4 | 5 => vec![0x15, aux & 0x11, 0, 0, l[1], 0],
            _ => vec![0x55, aux & 0x11, 0, 0, 0, 0, 0, l[0], l[1], 0],
        };
        let mut padded = cdb.clone();
        padded.resize(16, 0);
        run(
            &srv,
            lun,
            &padded,
            clip(list, u32::from(len)),
            u32::from(len),
            nx,
        );
    }
}
