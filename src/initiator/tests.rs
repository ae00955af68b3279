//! Login and negotiation driven by canned target responses.

use super::ConnectOptions;
use super::error::InitiatorError;
use super::login::{LoginDriver, LoginNext};
use super::negotiate::{Negotiator, offers};
use crate::proto::chap::{chap_md5, decode_binary, encode_hex as encode_binary};
use crate::proto::text::TextPairs;
use crate::proto::{Opcode, Pdu};

const T: u8 = 0x80;
const C: u8 = 0x40;

fn opts(target: Option<&str>) -> ConnectOptions {
    ConnectOptions::new("127.0.0.1:1".parse().unwrap(), "iqn.i", target)
}

fn resp(flags: u8, stat_sn: u32, text: &[(&str, &str)]) -> Pdu {
    let mut t = TextPairs::new();
    for (k, v) in text {
        t.push(k, *v);
    }
    let mut p = Pdu::new(Opcode::LoginResponse).with_data(t.encode());
    p.bhs.set_flags(flags);
    p.bhs.set_stat_sn(stat_sn);
    p.bhs.set_exp_cmd_sn(1);
    p.bhs.set_max_cmd_sn(8);
    p.bhs.set_tsih(0x22);
    p
}

fn send(n: LoginNext) -> Pdu {
    match n {
        LoginNext::Send(p) => p,
        LoginNext::Done(_) => panic!("login finished early"),
    }
}

fn text(p: &Pdu) -> TextPairs {
    TextPairs::parse(&p.data).unwrap()
}

#[test]
fn plain_login_negotiates_per_rfc_rules() {
    let mut o = opts(Some("iqn.t"));
    o.data_digest = true;
    let mut d = LoginDriver::new(&o, 1);
    let first = d.start();
    assert!(first.bhs.immediate());
    assert_eq!(first.bhs.flags(), T | 1); // CSG 0 -> NSG 1
    assert_eq!(text(&first).get("AuthMethod"), Some("None"));
    assert_eq!(text(&first).get("TargetName"), Some("iqn.t"));

    let op = send(
        d.on_response(&resp(T | 1, 5, &[("AuthMethod", "None")]))
            .unwrap(),
    );
    assert_eq!(op.bhs.flags(), T | (1 << 2) | 3);
    assert_eq!(op.bhs.exp_stat_sn(), 6);
    assert_eq!(op.bhs.tsih(), 0x22);
    let offer = text(&op);
    assert_eq!(offer.get("DataDigest"), Some("CRC32C,None"));
    assert_eq!(offer.get("ErrorRecoveryLevel"), Some("0"));

    let answer = [
        ("HeaderDigest", "None"),
        ("DataDigest", "CRC32C"),
        ("MaxRecvDataSegmentLength", "65536"),
        ("ImmediateData", "No"),
        ("InitialR2T", "Yes"),
        ("MaxBurstLength", "131072"),
        ("FirstBurstLength", "999999"),
        ("DefaultTime2Wait", "7"),
        ("DefaultTime2Retain", "0"),
        ("TargetAlias", "disk"),
    ];
    let LoginNext::Done(out) = d.on_response(&resp(T | (1 << 2) | 3, 6, &answer)).unwrap() else {
        panic!("expected the login to finish");
    };
    let p = &out.params;
    assert!(p.data_digest && !p.header_digest);
    assert_eq!(p.target_max_recv_dsl, 65536);
    assert_eq!(p.initiator_max_recv_dsl, o.max_recv_dsl);
    assert!(!p.immediate_data && p.initial_r2t);
    assert_eq!(p.max_burst_length, 131072);
    // Min of our 256 KiB and their 999999, then capped by MaxBurstLength.
    assert_eq!(p.first_burst_length, 131072);
    assert_eq!(p.default_time2wait, 7);
    assert_eq!(p.default_time2retain, 0);
    assert_eq!(out.stat_sn, 6);
    assert_eq!(out.cmd_sn, 1);
    assert_eq!(out.max_cmd_sn, 8);
    assert_eq!(
        out.declared.get("TargetAlias").map(String::as_str),
        Some("disk")
    );
}

#[test]
fn continued_response_is_joined() {
    let mut d = LoginDriver::new(&opts(None), 1);
    d.start();
    send(d.on_response(&resp(T | 1, 0, &[])).unwrap());
    let mut part1 = resp(C | (1 << 2), 1, &[]);
    part1.data = b"HeaderDigest=None\0MaxRecvDataSeg".to_vec();
    let ask = send(d.on_response(&part1).unwrap());
    assert!(ask.data.is_empty());
    assert_eq!(ask.bhs.flags() & (T | C), 0);
    let mut part2 = resp(T | (1 << 2) | 3, 2, &[]);
    part2.data = b"mentLength=4096\0".to_vec();
    let LoginNext::Done(out) = d.on_response(&part2).unwrap() else {
        panic!("expected done");
    };
    assert_eq!(out.params.target_max_recv_dsl, 4096);
}

#[test]
fn mutual_chap_checks_the_target() {
    let mut o = opts(Some("iqn.t"));
    o.chap = Some(("alice".into(), "secret-one".into()));
    o.mutual_chap = Some(("tgt".into(), "secret-two".into()));
    let run = |good: bool| {
        let mut d = LoginDriver::new(&o, 1);
        let first = d.start();
        assert_eq!(first.bhs.flags() & T, 0);
        assert_eq!(text(&first).get("AuthMethod"), Some("CHAP,None"));
        let a = send(
            d.on_response(&resp(0, 0, &[("AuthMethod", "CHAP")]))
                .unwrap(),
        );
        assert_eq!(text(&a).get("CHAP_A"), Some("5"));
        let challenge = [9u8, 8, 7, 6, 5, 4, 3, 2, 1, 0, 1, 2, 3, 4, 5, 6];
        let c = encode_binary(&challenge);
        let r = send(
            d.on_response(&resp(
                0,
                1,
                &[("CHAP_A", "5"), ("CHAP_I", "77"), ("CHAP_C", &c)],
            ))
            .unwrap(),
        );
        let rt = text(&r);
        assert_eq!(rt.get("CHAP_N"), Some("alice"));
        let want = chap_md5(77, b"secret-one", &challenge);
        assert_eq!(decode_binary(rt.get("CHAP_R").unwrap()).unwrap(), want);
        let id: u8 = rt.get("CHAP_I").unwrap().parse().unwrap();
        let ours = decode_binary(rt.get("CHAP_C").unwrap()).unwrap();
        let secret: &[u8] = if good { b"secret-two" } else { b"wrong" };
        let proof = encode_binary(&chap_md5(id, secret, &ours));
        d.on_response(&resp(T | 1, 2, &[("CHAP_N", "tgt"), ("CHAP_R", &proof)]))
    };
    let next = send(run(true).unwrap());
    assert_eq!(next.bhs.flags(), T | (1 << 2) | 3);
    assert!(matches!(run(false), Err(InitiatorError::AuthFailed(_))));
}

/// CHAP_I is a number, which RFC 7143 lets the target write in hex: a
/// login with CHAP_I=0x4d answers identifier 77 and completes.
#[test]
fn chap_identifier_in_hex_completes_the_login() {
    let mut o = opts(Some("iqn.t"));
    o.chap = Some(("alice".into(), "secret-one".into()));
    let mut d = LoginDriver::new(&o, 1);
    d.start();
    send(
        d.on_response(&resp(0, 0, &[("AuthMethod", "CHAP")]))
            .unwrap(),
    );
    let challenge = [3u8; 16];
    let c = encode_binary(&challenge);
    let chap = [("CHAP_A", "5"), ("CHAP_I", "0x4d"), ("CHAP_C", c.as_str())];
    let r = send(d.on_response(&resp(0, 1, &chap)).unwrap());
    let want = chap_md5(0x4d, b"secret-one", &challenge);
    assert_eq!(
        decode_binary(text(&r).get("CHAP_R").unwrap()).unwrap(),
        want
    );
    assert_eq!(
        text(&r).get("CHAP_I"),
        None,
        "one-way CHAP: no challenge back"
    );
    let op = send(d.on_response(&resp(T | 1, 2, &[])).unwrap());
    assert_eq!(op.bhs.flags(), T | (1 << 2) | 3);
    let done = d.on_response(&resp(T | (1 << 2) | 3, 3, &[])).unwrap();
    assert!(matches!(done, LoginNext::Done(_)));
}

#[test]
fn login_failure_is_typed() {
    let mut d = LoginDriver::new(&opts(Some("iqn.nope")), 1);
    d.start();
    let mut r = resp(0, 0, &[]);
    r.bhs.0[36] = 2;
    r.bhs.0[37] = 3;
    assert!(matches!(
        d.on_response(&r),
        Err(InitiatorError::LoginFailed {
            class: 2,
            detail: 3
        })
    ));
}

#[test]
fn digest_the_target_may_not_pick() {
    let mut n = Negotiator::new(offers(&opts(Some("t"))));
    let mut t = TextPairs::new();
    t.push("HeaderDigest", "CRC32C"); // we offered only None
    assert!(n.absorb(&t).is_err());
}

#[test]
fn keys_the_target_raises_get_answers() {
    let mut mine = TextPairs::new();
    mine.push("MaxRecvDataSegmentLength", "8192");
    let mut n = Negotiator::new(mine);
    let mut t = TextPairs::new();
    t.push("MaxOutstandingR2T", "4");
    t.push("InitialR2T", "No");
    t.push("X-vendor-thing", "1");
    t.push("TargetPortalGroupTag", "1");
    let reply = n.absorb(&t).unwrap();
    assert_eq!(reply.get("MaxOutstandingR2T"), Some("1"));
    assert_eq!(reply.get("X-vendor-thing"), Some("NotUnderstood"));
    assert_eq!(reply.get("TargetPortalGroupTag"), None);
    // Not offered: we answer from the RFC default (Yes), and OR keeps Yes.
    assert_eq!(reply.get("InitialR2T"), Some("Yes"));
    let p = n.params().unwrap();
    assert_eq!(p.max_outstanding_r2t, 1);
    assert!(p.initial_r2t);
}

/// Session dispatch against a scripted peer on loopback: the CmdSN window,
/// keep-alive answers, Async Messages, Reject routing and ExpStatSN.
#[tokio::test]
async fn session_dispatch_with_scripted_peer() {
    use super::session::Session;
    use super::wire::read_pdu;
    use crate::proto::Framing;
    use crate::proto::pdu::encode;
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (mut peer, _) = l.accept().await.unwrap();
    let (rd, wr) = client.into_split();
    let outcome = super::login::LoginOutcome {
        params: Default::default(),
        tsih: 1,
        stat_sn: 4,
        cmd_sn: 1,
        exp_cmd_sn: 1,
        max_cmd_sn: 0, // window closed: no command may go yet
        declared: Default::default(),
    };
    let s = Session::start(rd, wr, outcome, Duration::from_secs(5));
    let f = Framing::default();
    let to_peer = |op: Opcode, stat_sn: u32, max: u32| {
        let mut p = Pdu::new(op);
        p.bhs.set_final(true);
        p.bhs.set_stat_sn(stat_sn);
        p.bhs.set_exp_cmd_sn(1);
        p.bhs.set_max_cmd_sn(max);
        p
    };

    let peer_script = async {
        let mut ev = to_peer(Opcode::AsyncMessage, 5, 0);
        ev.bhs.set_itt(0xffff_ffff);
        ev.bhs.0[36] = 1; // target requests logout
        let mut ping = to_peer(Opcode::NopIn, 6, 0);
        ping.bhs.set_itt(0xffff_ffff);
        ping.bhs.set_ttt(0x55);
        let mut bytes = encode(&ev, &f);
        bytes.extend(encode(&ping, &f));
        peer.write_all(&bytes).await.unwrap();
        // Only the NOP-Out answer may arrive while the window is closed.
        let pong = read_pdu(&mut peer, &f).await.unwrap().unwrap();
        assert_eq!(pong.opcode(), Opcode::NopOut);
        assert_eq!((pong.bhs.itt(), pong.bhs.ttt()), (0xffff_ffff, 0x55));
        assert!(pong.bhs.immediate());
        let quiet = tokio::time::timeout(Duration::from_millis(200), read_pdu(&mut peer, &f));
        assert!(
            quiet.await.is_err(),
            "a command went out with the window closed"
        );
        // Open the window with an unsolicited NOP-In (which has no status).
        let mut open = to_peer(Opcode::NopIn, 6, 1);
        open.bhs.set_itt(0xffff_ffff);
        open.bhs.set_ttt(0xffff_ffff);
        peer.write_all(&encode(&open, &f)).await.unwrap();
        let cmd = read_pdu(&mut peer, &f).await.unwrap().unwrap();
        assert_eq!(cmd.opcode(), Opcode::ScsiCommand);
        assert_eq!(cmd.bhs.cmd_sn(), 1);
        assert_eq!(
            cmd.bhs.exp_stat_sn(),
            6,
            "Async Message StatSN 5 acknowledged"
        );
        let mut rej = to_peer(Opcode::Reject, 6, 2);
        rej.bhs.0[2] = 0x04;
        rej.data = cmd.bhs.0.to_vec();
        peer.write_all(&encode(&rej, &f)).await.unwrap();
        peer
    };
    let (res, _peer) = tokio::join!(s.test_unit_ready(0), peer_script);
    assert!(matches!(res, Err(InitiatorError::Rejected { reason: 4 })));
    let events = s.take_async_events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event, 1);
    assert_eq!(s.sequence_numbers(), (2, 1, 2, 7));
}
