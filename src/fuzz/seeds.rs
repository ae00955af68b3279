//! Seed inputs for every target, in each harness's own input format:
//! valid PDUs, whole login exchanges (CHAP included), one command per
//! table row, lock sequences, well-formed parameter lists, the shipped
//! configs. `tests/fuzz_replay.rs` runs them and (on request) writes them
//! to `fuzz/corpus/<target>/`.

use super::login::{CHAP, INITIATOR, MUTUAL, OPEN};
use crate::proto::pdu::{self, Framing, Opcode, Pdu};
use crate::scsi::cdb::TABLE;

fn chunk(out: &mut Vec<u8>, data: &[u8]) {
    out.extend_from_slice(&(data.len() as u16).to_be_bytes());
    out.extend_from_slice(data);
}

fn text(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut t = Vec::new();
    for (k, v) in pairs {
        t.extend_from_slice(format!("{k}={v}\0").as_bytes());
    }
    t
}

const OP_KEYS: &[(&str, &str)] = &[
    ("HeaderDigest", "None,CRC32C"),
    ("DataDigest", "None,CRC32C"),
    ("MaxRecvDataSegmentLength", "262144"),
    ("InitialR2T", "No"),
    ("ImmediateData", "Yes"),
    ("MaxBurstLength", "16776192"),
    ("FirstBurstLength", "262144"),
    ("MaxOutstandingR2T", "1"),
    ("DefaultTime2Wait", "2"),
    ("DefaultTime2Retain", "0"),
    ("ErrorRecoveryLevel", "0"),
    ("MaxConnections", "1"),
    ("DataPDUInOrder", "Yes"),
    ("DataSequenceInOrder", "Yes"),
];

/// All seeds as (target, input).
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut v = Vec::new();
    v.extend(pdu_seeds().into_iter().map(|s| ("pdu", s)));
    v.extend(text_seeds().into_iter().map(|s| ("text_keys", s)));
    v.extend(negotiation_seeds().into_iter().map(|s| ("negotiation", s)));
    v.extend(login_seeds().into_iter().map(|s| ("login", s)));
    v.extend(session_seeds().into_iter().map(|s| ("session", s)));
    // The in-memory session target reads the same inputs.
    v.extend(session_seeds().into_iter().map(|s| ("session_sm", s)));
    v.extend(cdb_seeds().into_iter().map(|s| ("cdb", s)));
    v.extend(cbt_seeds().into_iter().map(|s| ("cbt", s)));
    v.extend(param_seeds().into_iter().map(|s| ("param_lists", s)));
    v.extend(config_seeds().into_iter().map(|s| ("config", s)));
    v
}

fn pdu_seeds() -> Vec<Vec<u8>> {
    let mut cmd = Pdu::new(Opcode::ScsiCommand);
    cmd.bhs.set_final(true);
    cmd.bhs.set_flags(0xa1);
    cmd.bhs.set_itt(7);
    cmd.bhs.set_cdb(&[0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
    cmd.bhs.set_expected_data_len(512);
    cmd.data = vec![0xab; 512];
    // Extended CDB AHS: length 0x11 (1 reserved + 16 CDB bytes), type 1.
    let mut ext = cmd.clone();
    ext.ahs = vec![0, 0x11, 1, 0];
    ext.ahs.extend_from_slice(&[0x5a; 16]);
    let mut login = Pdu::new(Opcode::LoginRequest);
    login.bhs.set_flags(0x87);
    login.data = text(&[("InitiatorName", INITIATOR), ("TargetName", OPEN)]);
    let mut out = Vec::new();
    for (mode, pdus) in [
        (0x10u8, vec![&cmd]),
        (0x13, vec![&cmd, &login]),
        (0x20, vec![&ext, &login]),
        (0x11, vec![&login]),
    ] {
        let f = Framing {
            header_digest: mode & 1 != 0,
            data_digest: mode & 2 != 0,
            max_data_segment: [512, 8192, 262_144, (1 << 24) - 1][(mode >> 4) as usize & 3],
        };
        let mut s = vec![mode];
        for p in pdus {
            pdu::encode_into(p, &f, &mut s);
        }
        out.push(s);
    }
    // Built mode: header, two AHS words, a flip position, data.
    let mut s = vec![0x17];
    s.extend_from_slice(&cmd.bhs.0);
    s.push(2);
    s.extend_from_slice(&[0, 5, 1, 0, 1, 2, 3, 4]);
    s.extend_from_slice(&[0x01, 0x30]);
    s.extend_from_slice(&[0x11; 40]);
    out.push(s);
    out
}

fn text_seeds() -> Vec<Vec<u8>> {
    let mut a = vec![0];
    a.extend(text(&[
        ("SendTargets", "All"),
        ("HeaderDigest", "CRC32C,None"),
        ("CHAP_C", "0x0123456789abcdef"),
        ("CHAP_R", "0bAAECAwQFBgcICQoLDA0ODw=="),
        ("MaxBurstLength", "0x40000"),
    ]));
    // Responder: tiny segment, SendTargets=All in two PDUs (C bit), then
    // fetch the continuation of the answer.
    let mut b = vec![1, 0, 0x10];
    b.extend_from_slice(&[0x41, 1]);
    chunk(&mut b, b"SendTarg");
    b.extend_from_slice(&[0x80, 1]);
    chunk(&mut b, b"ets=All\0");
    b.extend_from_slice(&[0x80, 1]);
    chunk(&mut b, b"");
    vec![a, b]
}

fn negotiation_seeds() -> Vec<Vec<u8>> {
    let mut a = vec![0x0f];
    chunk(&mut a, &text(OP_KEYS));
    a.push(1);
    chunk(
        &mut a,
        &text(&[("MaxRecvDataSegmentLength", "8192"), ("X-vendor", "1")]),
    );
    a.push(0);
    let mut b = vec![0x10];
    chunk(
        &mut b,
        &text(&[("MaxConnections", "4"), ("IFMarker", "Yes")]),
    );
    vec![a, b]
}

/// A login request in the `login` harness format: kind 0 (fixed ISID,
/// ITT, CmdSN), flags, text.
fn login_pdu(out: &mut Vec<u8>, flags: u8, pairs: &[(&str, &str)]) {
    out.push(0);
    out.push(flags);
    chunk(out, &text(pairs));
}

fn login_seeds() -> Vec<Vec<u8>> {
    let ident = |target: &'static str| {
        vec![
            ("InitiatorName", INITIATOR),
            ("TargetName", target),
            ("SessionType", "Normal"),
        ]
    };
    let mut seeds = Vec::new();
    // One PDU straight to full feature phase.
    let mut a = vec![0x1b];
    login_pdu(&mut a, 0x87, &[ident(OPEN), OP_KEYS.to_vec()].concat());
    seeds.push(a);
    // Security stage (AuthMethod=None), then operational, continued text.
    let mut b = vec![0x0a];
    login_pdu(
        &mut b,
        0x81,
        &[ident(OPEN), vec![("AuthMethod", "None")]].concat(),
    );
    login_pdu(&mut b, 0x44, &OP_KEYS[..5]);
    login_pdu(&mut b, 0x87, &OP_KEYS[5..]);
    seeds.push(b);
    // CHAP, one-way and mutual, with the computed response.
    for (flags, target) in [(0x02u8, CHAP), (0x06, MUTUAL)] {
        let mut c = vec![flags];
        login_pdu(
            &mut c,
            0x00,
            &[ident(target), vec![("AuthMethod", "CHAP,None")]].concat(),
        );
        login_pdu(&mut c, 0x00, &[("CHAP_A", "5")]);
        login_pdu(&mut c, 0x81, &[("CHAP_N", "x"), ("CHAP_R", "%")]);
        login_pdu(&mut c, 0x87, OP_KEYS);
        seeds.push(c);
    }
    // Discovery with discovery CHAP.
    let mut d = vec![0x03];
    let disc = [("InitiatorName", INITIATOR), ("SessionType", "Discovery")];
    login_pdu(
        &mut d,
        0x00,
        &[disc.to_vec(), vec![("AuthMethod", "CHAP")]].concat(),
    );
    login_pdu(&mut d, 0x00, &[("CHAP_A", "7,5")]);
    login_pdu(&mut d, 0x83, &[("CHAP_N", "x"), ("CHAP_R", "%")]);
    seeds.push(d);
    seeds
}

fn row_index(opcode: u8, sa: Option<u16>) -> u8 {
    TABLE
        .iter()
        .position(|d| d.opcode == opcode && d.service_action == sa)
        .expect("row in table") as u8
}

/// A CDB body (bytes 1..16) asking for one block / a small allocation.
fn body_for(cdb_len: usize) -> [u8; 15] {
    let mut b = [0u8; 15];
    match cdb_len {
        6 => b[3] = 8,
        10 => b[7] = 1,
        12 => b[8] = 1,
        _ => b[12] = 1,
    }
    b
}

fn cdb_seeds() -> Vec<Vec<u8>> {
    TABLE
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let mut s = vec![i as u8, 0];
            s.extend_from_slice(&4096u16.to_be_bytes());
            s.extend_from_slice(&body_for(d.cdb_len)[..d.cdb_len - 1]);
            let data = if d.direction == crate::scsi::DataDirection::Out {
                vec![0u8; 512]
            } else {
                Vec::new()
            };
            chunk(&mut s, &data);
            s
        })
        .collect()
}

fn session_seeds() -> Vec<Vec<u8>> {
    let cmd = |s: &mut Vec<u8>, op: u8, sa: Option<u16>, flags: u8, body: [u8; 15], data: &[u8]| {
        s.extend_from_slice(&[0, row_index(op, sa), flags, 1]);
        s.extend_from_slice(&body);
        s.extend_from_slice(&4096u16.to_be_bytes());
        chunk(s, data);
    };
    let mut rw = [0u8; 15];
    rw[7] = 8; // 8 blocks
    let mut seeds = Vec::new();
    for choice in [0x00u8, 0x03, 0x2c, 0x10] {
        let mut s = vec![choice];
        cmd(&mut s, 0x00, None, 0, [0; 15], &[]);
        cmd(&mut s, 0x12, None, 0x40, body_for(6), &[]);
        cmd(&mut s, 0x28, None, 0x40, rw, &[]);
        cmd(&mut s, 0x2a, None, 0x20, rw, &[0x5a; 1024]);
        // Solicited Data-Out answering the latest R2T.
        s.extend_from_slice(&[0x0f, 0x80]);
        s.extend_from_slice(&[0x06, 0, 1]);
        chunk(&mut s, b"ping");
        seeds.push(s);
    }
    let mut t = vec![0x40, 0x08, 0x80, 1, 0];
    chunk(&mut t, b"SendTargets=All\0");
    t.extend_from_slice(&[0x09, 0, 1, 0, 0]);
    seeds.push(t);
    // CBT: acquire, a held write, abort it by TMF, release.
    let mut c = vec![0x00];
    let mut acq = [0u8; 15];
    acq[0] = 0x03;
    acq[4] = 100;
    cmd(&mut c, 0xc0, Some(3), 0x40, acq, &[]);
    cmd(
        &mut c,
        0x2a,
        None,
        0x20,
        [0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0],
        &[1; 512],
    );
    c.extend_from_slice(&[0x07, 0x01, 1, 1, 0, 0, 0, 0, 0]);
    c.extend_from_slice(&[0x07, 0x05, 1, 1, 0, 0, 0, 0, 0]);
    seeds.push(c);
    seeds
}

fn cbt_seeds() -> Vec<Vec<u8>> {
    let step = |s: &mut Vec<u8>, kind: u8, body: &[u8]| {
        s.extend_from_slice(&[kind, 0, 0, 96]);
        s.extend_from_slice(body);
    };
    let mut s = Vec::new();
    step(&mut s, 0, &[0; 15]);
    step(&mut s, 7, &[3, 2]);
    step(&mut s, 1, &[0; 15]);
    let mut since = [0u8; 15];
    since[8] = 1;
    step(&mut s, 2, &since);
    step(&mut s, 3, &[0, 0, 0, 0, 30, 0, 0, 0, 10, 0, 0, 0, 0, 0, 0]);
    step(&mut s, 8, &[5, 1]);
    step(&mut s, 0x24, &[0; 15]);
    step(&mut s, 0x25, &[0; 15]);
    step(&mut s, 9, &[]);
    step(
        &mut s,
        0x13,
        &[0, 0, 0, 0, 30, 0, 0, 0, 10, 0, 0, 0, 0, 0, 0],
    );
    step(&mut s, 10, &[]);
    vec![s]
}

fn param_seeds() -> Vec<Vec<u8>> {
    let step = |s: &mut Vec<u8>, kind: u8, aux: u8, list: &[u8]| {
        s.extend_from_slice(&[kind, aux]);
        chunk(s, list);
    };
    let mut unmap = vec![0, 22, 0, 16, 0, 0, 0, 0];
    unmap.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 4, 0, 0, 0, 0]);
    let mut register = vec![0u8; 24];
    register[8..16].copy_from_slice(&0x1122_3344_5566_7788u64.to_be_bytes());
    let mut reserve = vec![0u8; 24];
    reserve[0..8].copy_from_slice(&0x1122_3344_5566_7788u64.to_be_bytes());
    // EXTENDED COPY (LID1): one identification target (NAA of LUN 0) and
    // a block→block segment of 2 blocks.
    let mut xcopy = vec![0u8; 16];
    xcopy[3] = 32;
    xcopy[11] = 28;
    let mut tgt = vec![0xe4, 0, 0, 0, 1, 3, 0, 16, 0x60];
    tgt.extend_from_slice(&[0; 14]);
    tgt.push(0);
    tgt.extend_from_slice(&[0, 0, 0, 0, 0, 0, 2, 0]);
    xcopy.extend_from_slice(&tgt[..32]);
    xcopy.extend_from_slice(&[0x02, 0, 0, 0x18, 0, 0, 0, 0, 0, 0, 0, 2]);
    xcopy.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 16]);
    let mut ms6 = vec![0, 0, 0, 0, 0x08, 0x12, 0x04];
    ms6.resize(4 + 20, 0);
    let mut ms10 = vec![0, 0, 0, 0, 0, 0, 0, 0, 0x0a, 0x0a];
    ms10.resize(8 + 12, 0);
    let mut s = Vec::new();
    step(&mut s, 0, 0, &unmap);
    step(&mut s, 1, 0, &register);
    step(&mut s, 2, 1 | (1 << 3), &reserve);
    step(&mut s, 3, 0, &xcopy);
    step(&mut s, 4, 0x10, &ms6);
    step(&mut s, 6, 0x10, &ms10);
    step(&mut s, 0x41, 0, &register);
    vec![s]
}

fn config_seeds() -> Vec<Vec<u8>> {
    vec![
        include_bytes!("../../configs/default.toml").to_vec(),
        include_bytes!("../../configs/chap-mutual.toml").to_vec(),
        include_bytes!("../../configs/example-full.toml").to_vec(),
        b"1GiB".to_vec(),
        b"iqn.2026-11.dev.gentgt:x".to_vec(),
    ]
}
