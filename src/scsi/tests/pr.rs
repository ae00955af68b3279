//! Reservations: PERSISTENT RESERVE IN/OUT, the conflict rules, unit
//! attentions, APTPL, and SPC-2 RESERVE/RELEASE.

use super::*;
use crate::backend::FileBackend;
use crate::scsi::cdb::TABLE;
use crate::scsi::pr::PrClass;
use std::sync::Mutex;

const CONFLICT: u8 = status::RESERVATION_CONFLICT;
const PARAM_LEN_ERR: (u8, u8, u8) = (key::ILLEGAL_REQUEST, 0x1a, 0);
const INVALID_PARAM: (u8, u8, u8) = (key::ILLEGAL_REQUEST, 0x26, 0);
const INVALID_RELEASE: (u8, u8, u8) = (key::ILLEGAL_REQUEST, 0x26, 4);
const RES_PREEMPTED: (u8, u8, u8) = (key::UNIT_ATTENTION, 0x2a, 3);
const RES_RELEASED: (u8, u8, u8) = (key::UNIT_ATTENTION, 0x2a, 4);
const REG_PREEMPTED: (u8, u8, u8) = (key::UNIT_ATTENTION, 0x2a, 5);

const WE: u8 = 1;
const EA: u8 = 3;
const WE_RO: u8 = 5;
const EA_RO: u8 = 6;
const WE_AR: u8 = 7;
const EA_AR: u8 = 8;
const ALL_TYPES: [u8; 6] = [WE, EA, WE_RO, EA_RO, WE_AR, EA_AR];

const REGISTER: u8 = 0;
const RESERVE: u8 = 1;
const RELEASE: u8 = 2;
const CLEAR: u8 = 3;
const PREEMPT: u8 = 4;
const PREEMPT_ABORT: u8 = 5;
const REGISTER_IGNORE: u8 = 6;

const APTPL: u8 = 0x01;

fn run(h: &Harness, n: &Nexus, cdb: &[u8], data: &[u8], exp: u32) -> ScsiResult {
    let mut padded = cdb.to_vec();
    padded.resize(16, 0);
    h.srv.execute(&ScsiCommand {
        lun: 0,
        cdb: &padded,
        data_out: data,
        expected_len: exp,
        nexus: n,
    })
}

fn prout_cdb(sa: u8, ty: u8, len: u32) -> Vec<u8> {
    let l = len.to_be_bytes();
    vec![0x5f, sa, ty, 0, 0, l[0], l[1], l[2], l[3], 0]
}

fn params(key: u64, sa_key: u64, flags: u8) -> Vec<u8> {
    let mut p = key.to_be_bytes().to_vec();
    p.extend_from_slice(&sa_key.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 0, flags, 0, 0, 0]);
    p
}

fn prout_f(h: &Harness, n: &Nexus, sa: u8, ty: u8, key: u64, sark: u64, flags: u8) -> ScsiResult {
    run(h, n, &prout_cdb(sa, ty, 24), &params(key, sark, flags), 24)
}

fn prout(h: &Harness, n: &Nexus, sa: u8, ty: u8, key: u64, sark: u64) -> ScsiResult {
    prout_f(h, n, sa, ty, key, sark, 0)
}

fn ok(r: ScsiResult) -> ScsiResult {
    assert_eq!(r.status, status::GOOD, "{:?}", r.sense_codes());
    r
}

fn prin(h: &Harness, n: &Nexus, sa: u8, alloc: u16) -> ScsiResult {
    let a = alloc.to_be_bytes();
    run(
        h,
        n,
        &[0x5e, sa, 0, 0, 0, 0, 0, a[0], a[1], 0],
        &[],
        alloc as u32,
    )
}

fn be32(d: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(d[at..at + 4].try_into().unwrap())
}

fn be64(d: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(d[at..at + 8].try_into().unwrap())
}

/// (PRgeneration, keys) from READ KEYS.
fn keys(h: &Harness, n: &Nexus) -> (u32, Vec<u64>) {
    let d = ok(prin(h, n, 0, 4096)).data_in;
    let len = be32(&d, 4) as usize;
    assert_eq!(d.len(), 8 + len);
    (
        be32(&d, 0),
        (0..len / 8).map(|i| be64(&d, 8 + 8 * i)).collect(),
    )
}

/// (key, type) from READ RESERVATION.
fn reservation(h: &Harness, n: &Nexus) -> Option<(u64, u8)> {
    let d = ok(prin(h, n, 1, 4096)).data_in;
    match be32(&d, 4) {
        0 => None,
        16 => Some((be64(&d, 8), d[21])),
        l => panic!("additional length {l}"),
    }
}

/// REQUEST SENSE (never blocked by a reservation) until no unit
/// attention is left.
fn drain(h: &Harness, n: &Nexus) {
    for _ in 0..10 {
        let r = ok(run(h, n, &[0x03, 0, 0, 0, 18, 0], &[], 18));
        if r.data_in[2] & 0x0f == key::NO_SENSE {
            return;
        }
    }
    panic!("unit attentions do not drain");
}

fn two() -> (Harness, Nexus, Nexus) {
    let h = Harness::new();
    let (a, b) = (nexus(1), nexus(2));
    h.srv.nexus_added(&a);
    h.srv.nexus_added(&b);
    // Drain the power-on unit attentions.
    for n in [&a, &b] {
        run(&h, n, &[0; 6], &[], 0);
    }
    (h, a, b)
}

fn read1(h: &Harness, n: &Nexus) -> u8 {
    run(h, n, &read10(0, 1), &[], BS).status
}

fn write1(h: &Harness, n: &Nexus) -> u8 {
    run(h, n, &write10(0, 1, false), &[0u8; BS as usize], BS).status
}

#[test]
fn register_reregister_unregister() {
    let (h, a, _) = two();
    assert_eq!(keys(&h, &a), (0, vec![]));
    // REGISTER with a non-zero key while unregistered conflicts.
    assert_eq!(prout(&h, &a, REGISTER, 0, 5, 6).status, CONFLICT);
    // SARK zero while unregistered: nothing happens.
    ok(prout(&h, &a, REGISTER, 0, 0, 0));
    assert_eq!(keys(&h, &a), (0, vec![]));
    ok(prout(&h, &a, REGISTER, 0, 0, 0x11));
    assert_eq!(keys(&h, &a), (1, vec![0x11]));
    // Wrong existing key.
    assert_eq!(prout(&h, &a, REGISTER, 0, 0x12, 0x13).status, CONFLICT);
    ok(prout(&h, &a, REGISTER, 0, 0x11, 0x22));
    assert_eq!(keys(&h, &a), (2, vec![0x22]));
    ok(prout(&h, &a, REGISTER, 0, 0x22, 0));
    assert_eq!(keys(&h, &a), (3, vec![]));
}

#[test]
fn register_and_ignore_existing_key() {
    let (h, a, b) = two();
    ok(prout(&h, &a, REGISTER_IGNORE, 0, 0xdead, 0x1));
    ok(prout(&h, &a, REGISTER_IGNORE, 0, 0xbeef, 0x2));
    ok(prout(&h, &b, REGISTER_IGNORE, 0, 0, 0x3));
    assert_eq!(keys(&h, &a), (3, vec![0x2, 0x3]));
    ok(prout(&h, &b, REGISTER_IGNORE, 0, 0, 0));
    assert_eq!(keys(&h, &b).1, vec![0x2]);
}

#[test]
fn registrations_are_per_initiator_port_not_session() {
    let (h, a, _) = two();
    ok(prout(&h, &a, REGISTER, 0, 0, 7));
    h.srv.nexus_removed(&a);
    // Same initiator port name and target port, new session id.
    let again = Nexus {
        id: 99,
        ..a.clone()
    };
    h.srv.nexus_added(&again);
    drain(&h, &again);
    assert_eq!(keys(&h, &again).1, vec![7]);
    ok(prout(&h, &again, RESERVE, EA, 7, 0));
    assert_eq!(reservation(&h, &again), Some((7, EA)));
    // Another ISID of the same initiator is another I_T nexus.
    let other = Nexus {
        id: 100,
        initiator_port: format!("{},i,0x2", a.initiator_name),
        ..a.clone()
    };
    assert_eq!(prout(&h, &other, RESERVE, EA, 7, 0).status, CONFLICT);
}

#[test]
fn reserve_and_release_every_type() {
    let (h, a, _) = two();
    ok(prout(&h, &a, REGISTER, 0, 0, 0xabc));
    for ty in ALL_TYPES {
        ok(prout(&h, &a, RESERVE, ty, 0xabc, 0));
        let key = if ty >= WE_AR { 0 } else { 0xabc };
        assert_eq!(reservation(&h, &a), Some((key, ty)), "type {ty}");
        // Reserving again the same type is fine, another type conflicts.
        ok(prout(&h, &a, RESERVE, ty, 0xabc, 0));
        let other = if ty == WE { EA } else { WE };
        assert_eq!(prout(&h, &a, RESERVE, other, 0xabc, 0).status, CONFLICT);
        let bad = run(
            &h,
            &a,
            &prout_cdb(RELEASE, other, 24),
            &params(0xabc, 0, 0),
            24,
        );
        assert_eq!(bad.sense_codes(), Some(INVALID_RELEASE));
        ok(prout(&h, &a, RELEASE, ty, 0xabc, 0));
        assert_eq!(reservation(&h, &a), None);
    }
    // RESERVE and RELEASE leave PRgeneration alone.
    assert_eq!(keys(&h, &a).0, 1);
    // Wrong key, or unregistered: conflict.
    assert_eq!(prout(&h, &a, RESERVE, WE, 0xabd, 0).status, CONFLICT);
}

#[test]
fn release_by_non_holder_is_a_no_op() {
    let (h, a, b) = two();
    ok(prout(&h, &a, REGISTER, 0, 0, 1));
    ok(prout(&h, &b, REGISTER, 0, 0, 2));
    ok(prout(&h, &a, RESERVE, WE, 1, 0));
    assert_eq!(prout(&h, &b, RESERVE, WE, 2, 0).status, CONFLICT);
    ok(prout(&h, &b, RELEASE, WE, 2, 0));
    assert_eq!(reservation(&h, &a), Some((1, WE)));
}

/// For each type: what an unregistered and then a registered non-holder
/// may do (SPC-5 table 68, SBC-4 table 13).
#[test]
fn conflict_matrix() {
    for ty in ALL_TYPES {
        let (h, a, b) = two();
        ok(prout(&h, &a, REGISTER, 0, 0, 1));
        ok(prout(&h, &a, RESERVE, ty, 1, 0));
        assert_eq!(read1(&h, &a), status::GOOD);
        assert_eq!(write1(&h, &a), status::GOOD);
        let we = matches!(ty, WE | WE_RO | WE_AR);
        let read_want = if we { status::GOOD } else { CONFLICT };
        assert_eq!(read1(&h, &b), read_want, "read, type {ty}");
        assert_eq!(write1(&h, &b), CONFLICT, "write, type {ty}");
        let mode_sense = run(&h, &b, &[0x1a, 0, 0x3f, 0, 255, 0], &[], 255).status;
        assert_eq!(mode_sense, read_want, "mode sense, type {ty}");
        let sync = run(&h, &b, &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 0).status;
        assert_eq!(sync, CONFLICT);
        // Always allowed.
        for cdb in [
            vec![0x00, 0, 0, 0, 0, 0],
            vec![0x12, 0, 0, 0, 96, 0],
            vec![0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0],
            vec![0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            vec![0x1e, 0, 0, 0, 0, 0],
        ] {
            assert_eq!(
                run(&h, &b, &cdb, &[], 256).status,
                status::GOOD,
                "{cdb:02x?}"
            );
        }
        assert_eq!(run(&h, &b, &[0x1e, 0, 0, 0, 1, 0], &[], 0).status, CONFLICT);
        // Registering gives access under registrants-only and
        // all-registrants types only.
        ok(prout(&h, &b, REGISTER, 0, 0, 2));
        let reg_access = !matches!(ty, WE | EA);
        let want = |allowed| if allowed { status::GOOD } else { CONFLICT };
        assert_eq!(read1(&h, &b), want(reg_access || we), "type {ty}");
        assert_eq!(write1(&h, &b), want(reg_access), "type {ty}");
        // The holder unregistering ends a WE/EA/RO reservation but not an
        // all-registrants one.
        ok(prout(&h, &a, REGISTER, 0, 1, 0));
        drain(&h, &b);
        let left = reservation(&h, &b).map(|r| r.1);
        assert_eq!(left, (ty >= WE_AR).then_some(ty), "type {ty}");
    }
}

#[test]
fn clear_removes_everything_and_tells_the_others() {
    let (h, a, b) = two();
    ok(prout(&h, &a, REGISTER, 0, 0, 1));
    ok(prout(&h, &b, REGISTER, 0, 0, 2));
    ok(prout(&h, &a, RESERVE, EA, 1, 0));
    assert_eq!(prout(&h, &b, CLEAR, 0, 9, 0).status, CONFLICT);
    ok(prout(&h, &b, CLEAR, 0, 2, 0));
    assert_eq!(keys(&h, &b), (3, vec![]));
    let r = run(&h, &a, &[0; 6], &[], 0);
    assert_eq!(r.sense_codes(), Some(RES_PREEMPTED));
    // The issuer gets none.
    assert_eq!(run(&h, &b, &[0; 6], &[], 0).status, status::GOOD);
    assert_eq!(reservation(&h, &a), None);
}

#[test]
fn preempt_registration_only() {
    let (h, a, b) = two();
    ok(prout(&h, &a, REGISTER, 0, 0, 1));
    ok(prout(&h, &b, REGISTER, 0, 0, 2));
    let g0 = keys(&h, &a).0;
    // No reservation, SARK zero: invalid; unknown key: conflict.
    let r = prout(&h, &b, PREEMPT, EA, 2, 0);
    assert_eq!(r.sense_codes(), Some(INVALID_PARAM));
    assert_eq!(prout(&h, &b, PREEMPT, EA, 2, 77).status, CONFLICT);
    ok(prout(&h, &b, PREEMPT, EA, 2, 1));
    assert_eq!(keys(&h, &b), (g0 + 1, vec![2]));
    assert_eq!(reservation(&h, &b), None);
    let r = run(&h, &a, &[0; 6], &[], 0);
    assert_eq!(r.sense_codes(), Some(REG_PREEMPTED));
}

#[test]
fn preempt_holder_takes_the_reservation() {
    let (h, a, b) = two();
    ok(prout(&h, &a, REGISTER, 0, 0, 1));
    ok(prout(&h, &b, REGISTER, 0, 0, 2));
    ok(prout(&h, &a, RESERVE, WE, 1, 0));
    ok(prout(&h, &b, PREEMPT, EA_RO, 2, 1));
    assert_eq!(reservation(&h, &b), Some((2, EA_RO)));
    assert_eq!(keys(&h, &b).1, vec![2]);
    let r = run(&h, &a, &[0; 6], &[], 0);
    assert_eq!(r.sense_codes(), Some(REG_PREEMPTED));
    assert_eq!(read1(&h, &a), CONFLICT);
}

#[test]
fn preempt_all_registrants_with_zero_key() {
    let (h, a, b) = two();
    let c = nexus(3);
    h.srv.nexus_added(&c);
    run(&h, &c, &[0; 6], &[], 0);
    for (n, k) in [(&a, 1), (&b, 2), (&c, 3)] {
        ok(prout(&h, n, REGISTER, 0, 0, k));
    }
    ok(prout(&h, &a, RESERVE, WE_AR, 1, 0));
    ok(prout(&h, &c, PREEMPT, WE, 3, 0));
    assert_eq!(keys(&h, &c).1, vec![3]);
    assert_eq!(reservation(&h, &c), Some((3, WE)));
    for n in [&a, &b] {
        assert_eq!(
            run(&h, n, &[0; 6], &[], 0).sense_codes(),
            Some(REG_PREEMPTED)
        );
    }
}

#[test]
fn preempt_and_abort_calls_the_hook() {
    let (h, a, b) = two();
    type Calls = Mutex<Vec<(Vec<u64>, u64)>>;
    let seen: Arc<Calls> = Arc::default();
    let s2 = seen.clone();
    h.srv.set_abort_hook(Box::new(move |ids, lun| {
        s2.lock().unwrap().push((ids.to_vec(), lun));
    }));
    ok(prout(&h, &a, REGISTER, 0, 0, 1));
    ok(prout(&h, &b, REGISTER, 0, 0, 2));
    ok(prout(&h, &a, RESERVE, EA, 1, 0));
    // Plain PREEMPT aborts nothing.
    ok(prout(&h, &a, REGISTER_IGNORE, 0, 0, 1));
    ok(prout(&h, &b, PREEMPT_ABORT, EA, 2, 1));
    assert_eq!(*seen.lock().unwrap(), vec![(vec![a.id], 0)]);
    assert_eq!(reservation(&h, &b), Some((2, EA)));
}

#[test]
fn release_of_registrants_only_tells_the_registrants() {
    let (h, a, b) = two();
    ok(prout(&h, &a, REGISTER, 0, 0, 1));
    ok(prout(&h, &b, REGISTER, 0, 0, 2));
    ok(prout(&h, &a, RESERVE, WE_RO, 1, 0));
    ok(prout(&h, &a, RELEASE, WE_RO, 1, 0));
    assert_eq!(
        run(&h, &b, &[0; 6], &[], 0).sense_codes(),
        Some(RES_RELEASED)
    );
    assert_eq!(run(&h, &a, &[0; 6], &[], 0).status, status::GOOD);
}

#[test]
fn report_capabilities() {
    let (h, a, _) = two();
    let d = ok(prin(&h, &a, 2, 100)).data_in;
    assert_eq!(d.len(), 8);
    assert_eq!(u16::from_be_bytes([d[0], d[1]]), 8);
    assert_eq!(d[2] & 0x08, 0, "SIP_C: SPEC_I_PT is refused");
    assert_eq!(d[2] & 0x04, 0x04, "ATP_C");
    assert_eq!(d[2] & 0x01, 0, "memory LUN: no PTPL_C");
    assert_eq!(d[3] & 0x80, 0x80, "TMV");
    assert!((d[3] >> 4) & 7 <= 5);
    assert_eq!([d[4], d[5]], [0xea, 0x01]);
}

#[test]
fn read_full_status_has_transport_ids() {
    let (h, a, b) = two();
    ok(prout_f(&h, &a, REGISTER, 0, 0, 1, 0x04));
    ok(prout(&h, &b, REGISTER, 0, 0, 2));
    ok(prout(&h, &a, RESERVE, EA, 1, 0));
    let d = ok(prin(&h, &a, 3, 4096)).data_in;
    assert_eq!(be32(&d, 4) as usize, d.len() - 8);
    let mut at = 8;
    let mut seen = Vec::new();
    while at < d.len() {
        let key = be64(&d, at);
        let flags = d[at + 12];
        let ty = d[at + 13];
        let rel = u16::from_be_bytes([d[at + 18], d[at + 19]]);
        let n = be32(&d, at + 20) as usize;
        let tid = &d[at + 24..at + 24 + n];
        assert_eq!(tid[0], 0x45);
        let tlen = u16::from_be_bytes([tid[2], tid[3]]) as usize;
        assert_eq!(tlen + 4, n);
        assert!(tlen >= 20 && tlen.is_multiple_of(4));
        let name = tid[4..].split(|&c| c == 0).next().unwrap();
        seen.push((
            key,
            flags,
            ty,
            rel,
            String::from_utf8(name.to_vec()).unwrap(),
        ));
        at += 24 + n;
    }
    assert_eq!(
        seen,
        vec![
            (1, 0x03, EA, 1, a.initiator_port.clone()),
            (2, 0x00, 0, 1, b.initiator_port.clone()),
        ]
    );
}

#[test]
fn read_keys_truncated_keeps_full_length() {
    let (h, a, b) = two();
    ok(prout(&h, &a, REGISTER, 0, 0, 1));
    ok(prout(&h, &b, REGISTER, 0, 0, 2));
    let r = ok(prin(&h, &a, 0, 12));
    assert_eq!(r.data_in.len(), 12);
    assert_eq!(be32(&r.data_in, 4), 16);
}

#[test]
fn bad_cdbs_and_parameter_lists() {
    let (h, a, _) = two();
    let p = params(0, 1, 0);
    for len in [0u32, 23, 25] {
        let mut d = p.clone();
        d.resize(len as usize, 0);
        let r = run(&h, &a, &prout_cdb(REGISTER, 0, len), &d, len);
        assert_eq!(r.sense_codes(), Some(PARAM_LEN_ERR), "len {len}");
    }
    // Length says 24 but less arrived.
    let r = run(&h, &a, &prout_cdb(REGISTER, 0, 24), &p[..10], 24);
    assert_eq!(r.sense_codes(), Some(PARAM_LEN_ERR));
    // SPEC_I_PT is not supported.
    let r = prout_f(&h, &a, REGISTER, 0, 0, 1, 0x08);
    assert_eq!(r.sense_codes(), Some(INVALID_PARAM));
    // APTPL on a LUN without a state file.
    let r = prout_f(&h, &a, REGISTER, 0, 0, 1, APTPL);
    assert_eq!(r.sense_codes(), Some(INVALID_PARAM));
    ok(prout(&h, &a, REGISTER, 0, 0, 1));
    // Bad type, bad scope.
    assert_eq!(
        prout(&h, &a, RESERVE, 2, 1, 0).sense_codes(),
        Some(INVALID_FIELD)
    );
    assert_eq!(
        prout(&h, &a, RESERVE, 0x11, 1, 0).sense_codes(),
        Some(INVALID_FIELD)
    );
    // Service actions without a row.
    assert_eq!(prout(&h, &a, 7, 0, 1, 0).sense_codes(), Some(INVALID_FIELD));
    for sa in 4..0x20 {
        assert_eq!(prin(&h, &a, sa, 100).sense_codes(), Some(INVALID_FIELD));
    }
    for sa in 0..4 {
        ok(prin(&h, &a, sa, 100));
    }
    // Nothing above changed the registration.
    assert_eq!(keys(&h, &a), (1, vec![1]));
}

fn file_lu(dir: &std::path::Path) -> LogicalUnit {
    let data = dir.join("lun0.img");
    let backend: Arc<dyn Backend> =
        Arc::new(FileBackend::open(&data, BLOCKS * BS as u64, true, false).unwrap());
    LogicalUnit::new(backend, BS, identity(1), false)
        .with_pr_state(dir.join("lun0.img.pr"))
        .unwrap()
}

#[test]
fn aptpl_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (nexus(1), nexus(2));
    {
        let h = Harness::with_luns(vec![(0, Arc::new(file_lu(dir.path())))]);
        let caps = ok(prin(&h, &a, 2, 8)).data_in;
        assert_eq!((caps[2] & 1, caps[3] & 1), (1, 0), "PTPL_C, PTPL_A");
        ok(prout_f(&h, &a, REGISTER, 0, 0, 0x1234, APTPL));
        ok(prout_f(&h, &b, REGISTER_IGNORE, 0, 0, 0x5678, APTPL));
        ok(prout(&h, &a, RESERVE, WE_RO, 0x1234, 0));
        let caps = ok(prin(&h, &a, 2, 8)).data_in;
        assert_eq!(caps[3] & 1, 1, "PTPL_A");
    }
    let h = Harness::with_luns(vec![(0, Arc::new(file_lu(dir.path())))]);
    assert_eq!(keys(&h, &a), (2, vec![0x1234, 0x5678]));
    assert_eq!(reservation(&h, &a), Some((0x1234, WE_RO)));
    let c = nexus(3);
    assert_eq!(write1(&h, &c), CONFLICT);
    assert_eq!(write1(&h, &b), status::GOOD);
    // APTPL=0 in a REGISTER: nothing survives the next restart.
    ok(prout(&h, &b, REGISTER, 0, 0x5678, 0x9));
    drop(h);
    let h = Harness::with_luns(vec![(0, Arc::new(file_lu(dir.path())))]);
    assert_eq!(keys(&h, &a), (0, vec![]));
    assert!(!dir.path().join("lun0.img.pr").exists());
}

#[test]
fn corrupt_state_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("x.pr"), "nonsense").unwrap();
    let lu = LogicalUnit::new(Arc::new(MemoryBackend::new(4096)), BS, identity(1), false);
    assert!(lu.with_pr_state(dir.path().join("x.pr")).is_err());
}

#[test]
fn nexus_loss_and_lun_reset_keep_registrations() {
    let (h, a, b) = two();
    ok(prout(&h, &a, REGISTER, 0, 0, 1));
    ok(prout(&h, &a, RESERVE, EA, 1, 0));
    h.srv.lun_reset(0, &b);
    h.srv.nexus_removed(&a);
    h.srv.target_reset(&b);
    drain(&h, &b);
    assert_eq!(keys(&h, &b).1, vec![1]);
    assert_eq!(reservation(&h, &b), Some((1, EA)));
}

fn reserve6(h: &Harness, n: &Nexus) -> u8 {
    run(h, n, &[0x16, 0, 0, 0, 0, 0], &[], 0).status
}

fn release6(h: &Harness, n: &Nexus) -> u8 {
    run(h, n, &[0x17, 0, 0, 0, 0, 0], &[], 0).status
}

#[test]
fn reserve6_between_two_initiators() {
    let (h, a, b) = two();
    assert_eq!(reserve6(&h, &a), status::GOOD);
    assert_eq!(reserve6(&h, &a), status::GOOD);
    assert_eq!(reserve6(&h, &b), CONFLICT);
    assert_eq!(release6(&h, &b), status::GOOD);
    let ms = [0x1a, 0, 0x3f, 0, 255, 0];
    assert_eq!(run(&h, &a, &ms, &[], 255).status, status::GOOD);
    assert_eq!(run(&h, &b, &ms, &[], 255).status, CONFLICT);
    assert_eq!(run(&h, &b, &[0; 6], &[], 0).status, CONFLICT);
    assert_eq!(
        run(&h, &b, &[0x12, 0, 0, 0, 96, 0], &[], 96).status,
        status::GOOD
    );
    // Persistent reservation commands conflict for everyone.
    assert_eq!(prin(&h, &a, 0, 100).status, CONFLICT);
    assert_eq!(prout(&h, &a, REGISTER, 0, 0, 1).status, CONFLICT);
    assert_eq!(release6(&h, &a), status::GOOD);
    assert_eq!(reserve6(&h, &b), status::GOOD);
    // RESERVE(10)/RELEASE(10) share the reservation.
    assert_eq!(
        run(&h, &a, &[0x56, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 0).status,
        CONFLICT
    );
    assert_eq!(
        run(&h, &b, &[0x57, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 0).status,
        status::GOOD
    );
    assert_eq!(reserve6(&h, &a), status::GOOD);
}

#[test]
fn reserve6_ends_with_nexus_and_resets() {
    let (h, a, b) = two();
    assert_eq!(reserve6(&h, &a), status::GOOD);
    h.srv.nexus_removed(&a);
    assert_eq!(reserve6(&h, &b), status::GOOD);
    h.srv.lun_reset(0, &b);
    drain(&h, &b);
    assert_eq!(reserve6(&h, &b), status::GOOD);
    h.srv.nexus_added(&a);
    drain(&h, &a);
    assert_eq!(reserve6(&h, &a), CONFLICT);
    h.srv.lun_reset(0, &a);
    drain(&h, &a);
    assert_eq!(reserve6(&h, &a), status::GOOD);
    drain(&h, &b);
    h.srv.target_reset(&b);
    drain(&h, &b);
    assert_eq!(reserve6(&h, &b), status::GOOD);
}

#[test]
fn reserve6_refused_while_registered() {
    let (h, a, b) = two();
    ok(prout(&h, &a, REGISTER, 0, 0, 1));
    assert_eq!(reserve6(&h, &b), CONFLICT);
    assert_eq!(reserve6(&h, &a), CONFLICT);
    assert_eq!(release6(&h, &a), status::GOOD);
}

/// Every row has a rule, and the rule fits the row's `writes` flag.
#[test]
fn every_row_has_a_reservation_class() {
    for d in TABLE {
        let cdb = [d.opcode, 0, 0, 0, 0, 0];
        let class = match d.pr {
            PrClass::Cond(f) => f(&cdb),
            c => c,
        };
        if d.writes {
            assert!(matches!(class, PrClass::Write), "{}", d.name);
        }
        if d.lun_optional {
            assert!(matches!(class, PrClass::Exempt), "{}", d.name);
        }
    }
    assert!(matches!(
        crate::scsi::pr::classify(0xee, None, true),
        PrClass::Write
    ));
    assert!(matches!(
        crate::scsi::pr::classify(0xee, None, false),
        PrClass::Read
    ));
}
