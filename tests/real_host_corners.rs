//! Corners independent initiators hit (issue 17): a bad SendTargets value
//! in full feature phase, SendTargets over several portals, and a write
//! whose Expected Data Transfer Length disagrees with its CDB.

mod common;

use common::*;
use gentgt::initiator::{ConnectOptions, Initiator, Session};
use gentgt::proto::text::TextPairs;
use std::time::Duration;

fn opts(t: &TestTarget) -> ConnectOptions {
    let mut o = ConnectOptions::new(t.addr, INITIATOR, Some(TARGET));
    o.timeout = Duration::from_secs(20);
    o
}

async fn login(o: &ConnectOptions) -> Session {
    let s = Initiator::connect(o).await.expect("login");
    let _ = s.test_unit_ready(0).await; // the power-on unit attention
    s
}

/// A SendTargets value that is neither "All", an iSCSI name nor empty
/// selects no target: the Text Response is an empty list (what RFC 7143
/// Appendix C gives for a name that matches nothing), which every client
/// parses, and the session and its I/O carry on. ("SendTargets=Reject" in
/// a SendTargets answer made libiscsi and open-iscsi, which accept only
/// TargetName/TargetAddress there, drop the connection.)
#[tokio::test]
async fn bad_send_targets_value_keeps_the_session() {
    let t = TestTarget::memory(1 << 20);
    let s = login(&opts(&t)).await;
    for bad in ["Alle", "all", "x", "iqn"] {
        let mut req = TextPairs::new();
        req.push("SendTargets", bad);
        let text = s.text_exchange(req.encode()).await.expect("text response");
        assert!(text.is_empty(), "value {bad:?}: {text:?}");
    }
    // Other keys, known and unknown, with odd values: answered, not fatal.
    let mut req = TextPairs::new();
    req.push("MaxBurstLength", "banana");
    req.push("X-com.example.thing", "");
    req.push("HeaderDigest", "CRC32C,None");
    let text = s.text_exchange(req.encode()).await.expect("text response");
    let got = TextPairs::parse(&text).unwrap();
    assert_eq!(got.get("MaxBurstLength"), Some("Reject"));
    assert_eq!(got.get("X-com.example.thing"), Some("NotUnderstood"));
    s.test_unit_ready(0)
        .await
        .expect("session still serves I/O");
    let own = s.send_targets("All").await.unwrap();
    assert_eq!(own.len(), 1);
    s.logout().await.unwrap();
}

/// What libiscsi's iSCSISendTargets.Invalid sends: immediate Text
/// Requests, one bad value after another, each answered with a Text
/// Response on a session that keeps serving I/O.
#[tokio::test]
async fn immediate_bad_send_targets_answered() {
    use gentgt::proto::pdu::{Opcode, Pdu};
    let t = TestTarget::memory(1 << 20);
    let s = login(&opts(&t)).await;
    for bad in ["SendTargets=Alle", "SendTargets=A", "SendTargets=aLL"] {
        let mut data = bad.as_bytes().to_vec();
        data.push(0);
        let mut p = Pdu::new(Opcode::TextRequest).with_data(data);
        p.bhs.set_immediate(true);
        p.bhs.set_final(true);
        p.bhs.set_itt(s.alloc_itt());
        p.bhs.set_ttt(0xffff_ffff);
        s.send_raw_command(p).await.unwrap();
        let r = s.recv_raw_within(Duration::from_secs(5)).await.expect(bad);
        assert_eq!(r.opcode(), Opcode::TextResponse, "{bad}");
        assert!(r.bhs.final_bit());
        assert!(r.data.is_empty(), "{bad}: {:?}", r.data);
    }
    s.test_unit_ready(0)
        .await
        .expect("session still serves I/O");
}

/// RFC 7143 Appendix C: SendTargets returns every address of a target, so
/// a host that discovers through one portal finds all its paths
/// (multipath). Both a discovery session and a normal session's
/// full-feature SendTargets, through each portal, list both portals.
#[tokio::test]
async fn send_targets_lists_every_portal() {
    let t = TestTarget::start(
        &[LunSpec::Memory {
            size: 1 << 20,
            block_size: 512,
        }],
        TargetOptions {
            portals: 2,
            ..Default::default()
        },
    );
    assert_eq!(t.addrs.len(), 2);
    let want: Vec<String> = t.addrs.iter().map(|a| format!("{a},1")).collect();
    for via in &t.addrs {
        let mut o = ConnectOptions::new(*via, INITIATOR, None);
        o.timeout = Duration::from_secs(20);
        let d = Initiator::connect(&o).await.expect("discovery login");
        let got = d.send_targets("All").await.unwrap();
        assert_eq!(got, vec![(TARGET.to_string(), want.clone())], "via {via}");
        o.target_name = Some(TARGET.into());
        let s = login(&o).await;
        let got = s.send_targets("All").await.unwrap();
        assert_eq!(got, vec![(TARGET.to_string(), want.clone())], "via {via}");
        s.logout().await.unwrap();
    }
}

/// Per-initiator LUN maps over the wire: LUN 1 is mapped for INITIATOR
/// only. The other initiator does not find it in REPORT LUNS, gets
/// LOGICAL UNIT NOT SUPPORTED for commands, peripheral qualifier 3 from
/// INQUIRY and "LUN does not exist" from task management (RFC 7143
/// §11.6.1), while INITIATOR uses it normally.
#[tokio::test]
async fn two_initiators_see_their_own_luns() {
    use gentgt::initiator::tmf;
    const OTHER: &str = "iqn.2026-11.dev.gentgt:other-host";
    let lun = LunSpec::Memory {
        size: 1 << 20,
        block_size: 512,
    };
    let lun1 = LunSpec::Memory {
        size: 1 << 20,
        block_size: 512,
    };
    let t = TestTarget::start(
        &[lun, lun1],
        TargetOptions {
            lun_initiators: vec![None, Some(vec![INITIATOR.into()])],
            ..Default::default()
        },
    );
    let mine = login(&opts(&t)).await;
    let mut o = opts(&t);
    o.initiator_name = OTHER.into();
    let other = login(&o).await;
    assert_eq!(mine.report_luns().await.unwrap(), vec![0, 1]);
    assert_eq!(other.report_luns().await.unwrap(), vec![0]);
    let _ = mine.test_unit_ready(1).await; // power-on unit attention
    mine.write16(1, 0, &[0x5a; 512], 512, false).await.unwrap();
    let e = other.test_unit_ready(1).await.unwrap_err();
    assert_eq!(e.sense_code(), Some((0x05, 0x25, 0x00)), "{e:?}");
    let e = other.read16(1, 0, 1, 512).await.unwrap_err();
    assert_eq!(e.sense_code(), Some((0x05, 0x25, 0x00)), "{e:?}");
    assert_eq!(other.inquiry(1).await.unwrap()[0], 0x7f);
    // RFC 7143 §11.6.1: response 2, "LUN does not exist".
    let r = other
        .task_mgmt(tmf::LOGICAL_UNIT_RESET, 1, 0)
        .await
        .unwrap();
    assert_eq!(r, 2, "LUN RESET of an unmapped LUN");
    let r = mine.task_mgmt(tmf::LOGICAL_UNIT_RESET, 1, 0).await.unwrap();
    assert_eq!(r, 0);
    other.test_unit_ready(0).await.unwrap();
}

/// The write over the wire: WRITE(16) of one 512-byte block with
/// EDTL 200 is refused (0Eh/03h) with the 312-byte overflow residual, and
/// the block keeps its data; EDTL one block for two blocks still writes
/// the one block, GOOD with a 512-byte overflow residual.
#[tokio::test]
async fn torn_write_is_refused_with_its_residual() {
    let t = TestTarget::memory(1 << 20);
    let s = login(&opts(&t)).await;
    s.write16(0, 3, &[b'a'; 1024], 512, false).await.unwrap();
    let mut cdb = [0u8; 16];
    cdb[0] = 0x8a;
    cdb[9] = 3; // LBA 3
    cdb[13] = 1; // one block
    let r = s.scsi(0, &cdb, Some(&[b'b'; 200]), 0).await.unwrap();
    assert_eq!(r.status, 2);
    assert_eq!(r.sense_code(), Some((0x05, 0x0e, 0x03)));
    assert_eq!(r.residual, Some((true, 312)));
    assert_eq!(s.read16(0, 3, 2, 512).await.unwrap(), vec![b'a'; 1024]);
    cdb[13] = 2;
    let r = s.scsi(0, &cdb, Some(&[b'c'; 512]), 0).await.unwrap();
    assert_eq!((r.status, r.residual), (0, Some((true, 512))));
    let back = s.read16(0, 3, 2, 512).await.unwrap();
    assert_eq!(
        (&back[..512], &back[512..]),
        (&[b'c'; 512][..], &[b'a'; 512][..])
    );
}
