//! Per-initiator LUN maps (`LogicalUnit::visible_to`, config key
//! `initiators`): to an initiator a LUN is not mapped for, it does not
//! exist — REPORT LUNS omits it, INQUIRY reports peripheral qualifier 3 /
//! device type 1Fh, every other command gets LOGICAL UNIT NOT SUPPORTED,
//! and none of its unit attentions or sense settings reach that initiator.

use super::*;

/// LUN 0 for everyone, LUN 1 mapped for host1 only (case differs: iSCSI
/// names compare case-insensitively).
fn mapped() -> DeviceServer {
    let backend: Arc<dyn Backend> = Arc::new(MemoryBackend::new(BLOCKS * BS as u64));
    let mut only = LogicalUnit::new(backend, BS, identity(2), false);
    only.visible_to = Some(vec!["IQN.2024-01.test:HOST1".into()]);
    DeviceServer::new(
        "iqn.2024-01.test:target",
        vec![(0, mem_lu(BLOCKS, false)), (1, Arc::new(only))],
    )
}

fn run(srv: &DeviceServer, n: &Nexus, lun: u64, cdb: &[u8], out: &[u8], len: u32) -> ScsiResult {
    let mut padded = cdb.to_vec();
    padded.resize(padded.len().max(16), 0);
    srv.execute(&ScsiCommand {
        lun,
        cdb: &padded,
        data_out: out,
        expected_len: len,
        nexus: n,
    })
}

fn report_luns(srv: &DeviceServer, n: &Nexus) -> Vec<u64> {
    let cdb = [0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0];
    let d = run(srv, n, 0, &cdb, &[], 256).data_in;
    let len = u32::from_be_bytes([d[0], d[1], d[2], d[3]]) as usize;
    d[8..8 + len]
        .chunks(8)
        .map(|e| u64::from(u16::from_be_bytes([e[0] & 0x3f, e[1]])))
        .collect()
}

#[test]
fn report_luns_lists_only_mapped_luns() {
    let srv = mapped();
    assert_eq!(report_luns(&srv, &nexus(1)), vec![0, 1]);
    assert_eq!(report_luns(&srv, &nexus(2)), vec![0]);
}

#[test]
fn unmapped_lun_behaves_as_missing() {
    let srv = mapped();
    let other = nexus(2);
    let inq = run(&srv, &other, 1, &[0x12, 0, 0, 0, 36, 0], &[], 36);
    assert_eq!(inq.status, status::GOOD);
    assert_eq!(inq.data_in[0], 0x7f, "PQ 3, device type 1Fh");
    // The LUN that exists nowhere answers the same.
    let missing = run(&srv, &other, 7, &[0x12, 0, 0, 0, 36, 0], &[], 36);
    assert_eq!(inq.data_in, missing.data_in);
    let cdbs: [&[u8]; 4] = [&[0; 6], &read10(0, 1), &write10(0, 1, false), &[0x25; 10]];
    for cdb in cdbs {
        let r = run(&srv, &other, 1, cdb, &[0; 512], 512);
        assert_eq!(r.sense_codes(), Some(LUN_NOT_SUPPORTED), "{cdb:02x?}");
    }
    // REQUEST SENSE says LOGICAL UNIT NOT SUPPORTED in its data.
    let r = run(&srv, &other, 1, &[0x03, 0, 0, 0, 18, 0], &[], 18);
    assert_eq!(
        (r.data_in[2] & 0x0f, r.data_in[12]),
        (key::ILLEGAL_REQUEST, 0x25)
    );
    // The mapped initiator uses it.
    let me = nexus(1);
    srv.nexus_added(&me);
    let _ = run(&srv, &me, 1, &[0; 6], &[], 0); // power-on UA
    assert_eq!(run(&srv, &me, 1, &[0; 6], &[], 0).status, status::GOOD);
}

/// Unit attentions of a LUN an initiator cannot see never reach it: not
/// the power-on one, not one a reset by another initiator established.
#[test]
fn unit_attentions_of_unmapped_luns_do_not_leak() {
    let srv = mapped();
    let (me, other) = (nexus(1), nexus(2));
    srv.nexus_added(&me);
    srv.nexus_added(&other);
    srv.lun_reset(1, &me);
    for _ in 0..3 {
        let r = run(&srv, &other, 1, &[0x03, 0, 0, 0, 18, 0], &[], 18);
        assert_eq!(r.data_in[12], 0x25, "a unit attention leaked");
    }
    // LUN 0's power-on attention is reported as usual.
    let r = run(&srv, &other, 0, &[0; 6], &[], 0);
    assert_eq!(r.sense_codes(), Some(POWER_ON));
}
