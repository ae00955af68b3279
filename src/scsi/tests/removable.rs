//! Removable medium: INQUIRY RMB, START STOP UNIT LOEJ eject/load, PREVENT
//! ALLOW MEDIUM REMOVAL per I_T nexus and what ends it; SANITIZE
//! CRYPTOGRAPHIC ERASE.

use super::*;

const NO_MEDIUM: (u8, u8, u8) = (key::NOT_READY, 0x3a, 0);
const REMOVAL_PREVENTED: (u8, u8, u8) = (key::ILLEGAL_REQUEST, 0x53, 2);
const TUR: [u8; 6] = [0x00, 0, 0, 0, 0, 0];
const EJECT: [u8; 6] = [0x1b, 0, 0, 0, 0x02, 0];
const LOAD: [u8; 6] = [0x1b, 0, 0, 0, 0x03, 0];
const PREVENT: [u8; 6] = [0x1e, 0, 0, 0, 0x01, 0];
const ALLOW: [u8; 6] = [0x1e, 0, 0, 0, 0x00, 0];

fn removable_lu() -> Arc<LogicalUnit> {
    let backend: Arc<dyn Backend> = Arc::new(MemoryBackend::new(BLOCKS * BS as u64));
    Arc::new(LogicalUnit::new(backend, BS, identity(1), false).with_removable(true))
}

fn harness() -> Harness {
    Harness::with_luns(vec![(0, removable_lu())])
}

/// Run `cdb` on LUN 0 from another I_T nexus; return (status, sense codes).
fn from(h: &Harness, id: u64, cdb: &[u8]) -> (u8, Option<(u8, u8, u8)>) {
    let mut padded = cdb.to_vec();
    padded.resize(16, 0);
    let n = nexus(id);
    let r = h.srv.execute(&ScsiCommand {
        lun: 0,
        cdb: &padded,
        data_out: &[],
        expected_len: 0,
        nexus: &n,
    });
    (r.status, r.sense_codes())
}

#[test]
fn inquiry_reports_rmb_only_for_removable_luns() {
    let inq = [0x12, 0, 0, 0, 96, 0];
    assert_eq!(harness().good(&inq, &[], 96).data_in[1], 0x80);
    assert_eq!(Harness::new().good(&inq, &[], 96).data_in[1], 0x00);
}

#[test]
fn eject_hides_the_medium_and_load_brings_it_back_unchanged() {
    let h = harness();
    let data = pattern(2 * BS as usize, 7);
    h.good(&write10(5, 2, false), &data, 2 * BS);
    h.good(&EJECT, &[], 0);
    for cdb in [
        TUR.to_vec(),
        read10(5, 2),
        write10(5, 2, false),
        vec![0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], // READ CAPACITY(10)
        vec![0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], // SYNCHRONIZE CACHE(10)
    ] {
        h.check(&cdb, &data, 2 * BS, NO_MEDIUM);
    }
    // Identification, mode pages and the medium commands still work.
    h.good(&[0x12, 0, 0, 0, 96, 0], &[], 96);
    h.good(&[0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], &[], 256);
    h.good(&[0x1a, 0, 0x3f, 0, 255, 0], &[], 255);
    h.good(&PREVENT, &[], 0);
    h.good(&ALLOW, &[], 0);
    h.good(&EJECT, &[], 0); // ejecting an ejected medium: no-op
    h.good(&LOAD, &[], 0);
    h.good(&TUR, &[], 0);
    assert_eq!(h.good(&read10(5, 2), &[], 2 * BS).data_in, data);
}

#[test]
fn prevention_refuses_eject_and_load_until_allowed() {
    let h = harness();
    h.good(&PREVENT, &[], 0);
    h.check(&EJECT, &[], 0, REMOVAL_PREVENTED);
    h.good(&TUR, &[], 0);
    h.good(&ALLOW, &[], 0);
    h.good(&EJECT, &[], 0);
    h.check(&TUR, &[], 0, NO_MEDIUM);
    // Prevention locks an ejected medium out as well.
    h.good(&PREVENT, &[], 0);
    h.check(&LOAD, &[], 0, REMOVAL_PREVENTED);
    h.check(&TUR, &[], 0, NO_MEDIUM);
    h.good(&ALLOW, &[], 0);
    h.good(&LOAD, &[], 0);
    h.good(&TUR, &[], 0);
}

#[test]
fn prevention_is_per_nexus_and_ends_with_the_nexus() {
    let h = harness();
    h.good(&PREVENT, &[], 0);
    // Another nexus can neither eject nor lift nexus 1's prevention.
    assert_eq!(
        from(&h, 2, &EJECT),
        (status::CHECK_CONDITION, Some(REMOVAL_PREVENTED))
    );
    assert_eq!(from(&h, 2, &ALLOW).0, status::GOOD);
    h.check(&EJECT, &[], 0, REMOVAL_PREVENTED);
    // Both prevent; one allowing is not enough.
    assert_eq!(from(&h, 2, &PREVENT).0, status::GOOD);
    h.good(&ALLOW, &[], 0);
    h.check(&EJECT, &[], 0, REMOVAL_PREVENTED);
    // Nexus 2 logs out: its prevention goes with it.
    h.srv.nexus_removed(&nexus(2));
    h.good(&EJECT, &[], 0);
    h.good(&LOAD, &[], 0);
    h.good(&PREVENT, &[], 0);
    h.srv.nexus_removed(&h.nexus);
    assert_eq!(from(&h, 3, &EJECT).0, status::GOOD);
}

#[test]
fn resets_end_every_prevention_but_do_not_move_the_medium() {
    let h = harness();
    h.srv.nexus_added(&h.nexus);
    h.check(&TUR, &[], 0, POWER_ON);
    h.good(&PREVENT, &[], 0);
    assert_eq!(from(&h, 2, &PREVENT).0, status::GOOD);
    h.srv.lun_reset(0, &h.nexus);
    h.check(&TUR, &[], 0, BUS_DEVICE_RESET);
    h.good(&TUR, &[], 0);
    h.good(&EJECT, &[], 0);
    h.good(&PREVENT, &[], 0);
    h.srv.target_reset(&h.nexus);
    h.check(&TUR, &[], 0, BUS_DEVICE_RESET);
    h.check(&TUR, &[], 0, NO_MEDIUM); // still ejected after the reset
    h.good(&LOAD, &[], 0);
    h.good(&TUR, &[], 0);
}

#[test]
fn a_power_condition_ignores_loej_and_start() {
    let h = harness();
    for pc in [0x1u8, 0x2, 0x3, 0x7, 0xa, 0xb] {
        h.good(&[0x1b, 1, 0, 0, (pc << 4) | 0x02, 0], &[], 0);
        h.good(&TUR, &[], 0);
    }
    // Reserved power conditions are refused, even with LOEJ.
    h.check(&[0x1b, 0, 0, 0, 0x42, 0], &[], 0, INVALID_FIELD);
    h.good(&TUR, &[], 0);
    // LOEJ=0 never moves the medium.
    for b4 in [0x00, 0x01] {
        h.good(&[0x1b, 1, 0, 0, b4, 0], &[], 0);
        h.good(&TUR, &[], 0);
    }
}

#[test]
fn a_fixed_disk_refuses_loej_and_ignores_prevention() {
    let h = Harness::new();
    h.check(&EJECT, &[], 0, INVALID_FIELD);
    h.check(&LOAD, &[], 0, INVALID_FIELD);
    h.good(&PREVENT, &[], 0);
    h.good(&TUR, &[], 0);
    h.check(&[0x1e, 0, 0, 0, 0x02, 0], &[], 0, INVALID_FIELD);
}

fn crypto_erase(param_len: u16) -> Vec<u8> {
    let mut c = vec![0x48, 0x03, 0, 0, 0, 0, 0];
    c.extend_from_slice(&param_len.to_be_bytes());
    c.push(0);
    c
}

#[test]
fn crypto_erase_makes_every_block_read_zeros() {
    let h = Harness::new();
    let data = pattern(4 * BS as usize, 3);
    h.good(&write10(0, 4, false), &data, 4 * BS);
    h.good(&write10((BLOCKS - 4) as u32, 4, false), &data, 4 * BS);
    h.check(&crypto_erase(8), &[0; 8], 8, INVALID_FIELD);
    assert_eq!(h.good(&read10(0, 4), &[], 4 * BS).data_in, data);
    h.good(&crypto_erase(0), &[], 0);
    let zeros = vec![0u8; 4 * BS as usize];
    assert_eq!(h.good(&read10(0, 4), &[], 4 * BS).data_in, zeros);
    let tail = read10((BLOCKS - 4) as u32, 4);
    assert_eq!(h.good(&tail, &[], 4 * BS).data_in, zeros);
}

#[test]
fn crypto_erase_is_listed_and_write_protected() {
    let rsoc = [0xa3, 0x0c, 0x02, 0x48, 0, 0x03, 0, 0, 0x01, 0, 0, 0];
    let r = Harness::new().good(&rsoc, &[], 256);
    assert_eq!(r.data_in[1] & 0x07, 0x03, "supported per standard");
    let ro = Harness::with_luns(vec![(0, mem_lu(BLOCKS, true))]);
    ro.check(&crypto_erase(0), &[], 0, WRITE_PROTECTED);
}
