//! The project's own initiator against a real gentgt over loopback TCP:
//! data path (immediate, unsolicited, R2T-solicited, multi-PDU Data-In),
//! digests, CHAP, discovery, task management, NOP, logout, reinstatement,
//! and hostile PDUs.

mod common;

use common::*;
use gentgt::initiator::{ConnectOptions, Initiator, Session, tmf};
use gentgt::proto::login::ChapSecrets;
use gentgt::proto::pdu::{Opcode, Pdu};
use rand::RngCore;
use std::time::Duration;

fn opts(t: &TestTarget) -> ConnectOptions {
    let mut o = ConnectOptions::new(t.addr, INITIATOR, Some(TARGET));
    o.timeout = Duration::from_secs(20);
    o
}

async fn login(o: &ConnectOptions) -> Session {
    let s = Initiator::connect(o).await.expect("login");
    // Clear the power-on unit attention.
    let _ = s.test_unit_ready(0).await;
    s
}

fn random(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand::thread_rng().fill_bytes(&mut v);
    v
}

async fn write_read_back(s: &Session, lba: u64, len: usize) {
    let data = random(len);
    s.write16(0, lba, &data, 512, false).await.expect("write");
    let back = s
        .read16(0, lba, (len / 512) as u32, 512)
        .await
        .expect("read");
    assert!(back == data, "read back differs at lba {lba} len {len}");
}

#[tokio::test]
async fn data_path_all_transfer_shapes() {
    let t = TestTarget::memory(64 << 20);
    // ImmediateData + unsolicited data (InitialR2T=No), the defaults.
    let s = login(&opts(&t)).await;
    assert_eq!(s.read_capacity16(0).await.unwrap(), (131072, 512));
    write_read_back(&s, 0, 512).await;
    write_read_back(&s, 100, 4 << 20).await; // many R2Ts, several bursts
    s.logout().await.unwrap();
    // Everything solicited through R2Ts.
    let mut o = opts(&t);
    o.immediate_data = false;
    o.initial_r2t = true;
    o.max_burst = 64 * 1024;
    let s = login(&o).await;
    write_read_back(&s, 9000, 1 << 20).await;
    s.logout().await.unwrap();
    // Small segments: multi-PDU Data-In and Data-Out.
    let mut o = opts(&t);
    o.max_recv_dsl = 4096;
    let s = login(&o).await;
    write_read_back(&s, 20000, 300 * 1024).await;
    s.logout().await.unwrap();
}

#[tokio::test]
async fn concurrent_commands_in_flight() {
    let t = TestTarget::memory(64 << 20);
    let s = login(&opts(&t)).await;
    let blocks: Vec<Vec<u8>> = (0..32).map(|_| random(64 * 1024)).collect();
    let writes = blocks
        .iter()
        .enumerate()
        .map(|(i, d)| s.write16(0, i as u64 * 128, d, 512, false));
    for r in futures_join(writes).await {
        r.expect("concurrent write");
    }
    let reads = (0..32).map(|i| s.read16(0, i as u64 * 128, 128, 512));
    for (i, r) in futures_join(reads).await.into_iter().enumerate() {
        assert!(
            r.expect("concurrent read") == blocks[i],
            "block {i} differs"
        );
    }
}

async fn futures_join<F: std::future::Future>(fs: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut out = Vec::new();
    let fs: Vec<_> = fs.map(Box::pin).collect();
    // Poll them all together: a join without extra crates.
    let mut pending: Vec<_> = fs.into_iter().map(Some).collect();
    let mut results: Vec<Option<F::Output>> = (0..pending.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut all = true;
        for (i, f) in pending.iter_mut().enumerate() {
            if let Some(fut) = f {
                match fut.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => {
                        results[i] = Some(v);
                        *f = None;
                    }
                    std::task::Poll::Pending => all = false,
                }
            }
        }
        if all {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    for r in results {
        out.push(r.unwrap());
    }
    out
}

#[tokio::test]
async fn header_and_data_digests() {
    let t = TestTarget::memory(16 << 20);
    let mut o = opts(&t);
    o.header_digest = true;
    o.data_digest = true;
    let s = login(&o).await;
    assert!(s.params().header_digest && s.params().data_digest);
    write_read_back(&s, 0, 1 << 20).await;
    s.nop().await.unwrap();
    s.logout().await.unwrap();
}

#[tokio::test]
async fn chap_one_way_and_mutual() {
    let opts_t = TargetOptions {
        chap: Some(ChapSecrets {
            user: "carol".into(),
            secret: "carol-secret-12".into(),
            mutual: Some(("tgt".into(), "target-secret-1".into())),
        }),
        ..Default::default()
    };
    let t = TestTarget::start(
        &[LunSpec::Memory {
            size: 1 << 20,
            block_size: 512,
        }],
        opts_t,
    );
    let mut o = opts(&t);
    assert!(Initiator::connect(&o).await.is_err(), "no CHAP accepted");
    o.chap = Some(("carol".into(), "wrong-secret-00".into()));
    assert!(Initiator::connect(&o).await.is_err(), "bad secret accepted");
    o.chap = Some(("carol".into(), "carol-secret-12".into()));
    let s = login(&o).await;
    s.logout().await.unwrap();
    o.mutual_chap = Some(("tgt".into(), "target-secret-1".into()));
    let s = login(&o).await;
    s.logout().await.unwrap();
    o.mutual_chap = Some(("tgt".into(), "not-the-secret!".into()));
    assert!(
        Initiator::connect(&o).await.is_err(),
        "target's bad proof accepted"
    );
}

#[tokio::test]
async fn discovery_send_targets() {
    let t = TestTarget::memory(1 << 20);
    let o = ConnectOptions::new(t.addr, INITIATOR, None);
    let s = Initiator::connect(&o).await.expect("discovery login");
    let targets = s.send_targets("All").await.unwrap();
    assert_eq!(targets.len(), 1);
    assert_eq!(targets[0].0, TARGET);
    assert_eq!(targets[0].1, vec![format!("{},1", t.addr)]);
    // SCSI commands have no place in a discovery session.
    assert!(s.test_unit_ready(0).await.is_err());
}

#[tokio::test]
async fn unknown_target_and_acl() {
    let opts_t = TargetOptions {
        allowed: Some(vec![INITIATOR.into()]),
        ..Default::default()
    };
    let t = TestTarget::start(
        &[LunSpec::Memory {
            size: 1 << 20,
            block_size: 512,
        }],
        opts_t,
    );
    let mut o = opts(&t);
    o.target_name = Some("iqn.2026-11.dev.gentgt:nope".into());
    let e = Initiator::connect(&o)
        .await
        .err()
        .expect("unknown target accepted");
    assert!(format!("{e:?}").contains("LoginFailed"), "{e:?}");
    let mut o = opts(&t);
    o.initiator_name = "iqn.2026-11.dev.gentgt:stranger".into();
    assert!(Initiator::connect(&o).await.is_err(), "ACL ignored");
}

#[tokio::test]
async fn task_management_and_unit_attention() {
    let t = TestTarget::memory(1 << 20);
    let s = Initiator::connect(&opts(&t)).await.unwrap();
    // First command after login: power-on unit attention.
    let r = s.scsi(0, &[0, 0, 0, 0, 0, 0], None, 0).await.unwrap();
    assert_eq!(r.status, 2);
    assert_eq!(r.sense_code().map(|c| (c.0, c.1)), Some((0x06, 0x29)));
    assert_eq!(s.scsi(0, &[0; 6], None, 0).await.unwrap().status, 0);
    assert_eq!(
        s.task_mgmt(tmf::LOGICAL_UNIT_RESET, 0, 0xffff_ffff)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        s.task_mgmt(tmf::LOGICAL_UNIT_RESET, 7, 0xffff_ffff)
            .await
            .unwrap(),
        2
    );
    assert_eq!(s.task_mgmt(tmf::ABORT_TASK, 0, 0x1234).await.unwrap(), 1);
    assert_eq!(s.task_mgmt(tmf::TASK_REASSIGN, 0, 0x1234).await.unwrap(), 4);
    s.nop().await.unwrap();
    s.logout().await.unwrap();
}

#[tokio::test]
async fn session_reinstatement_replaces_old_session() {
    let t = TestTarget::memory(1 << 20);
    let o = opts(&t);
    let old = login(&o).await;
    let new = login(&o).await; // same initiator name and ISID
    assert!(new.tsih() != old.tsih());
    new.test_unit_ready(0).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(old.nop().await.is_err(), "old session still alive");
}

#[tokio::test]
async fn hostile_pdus_rejected_session_survives() {
    let t = TestTarget::memory(1 << 20);
    let s = login(&opts(&t)).await;
    // An opcode no initiator may send.
    let mut p = Pdu::new(Opcode::Unknown(0x1d));
    p.bhs.set_immediate(true);
    p.bhs.set_final(true);
    p.bhs.set_itt(s.alloc_itt());
    s.send_raw_pdu(&p).await.unwrap();
    let r = s.recv_raw_within(Duration::from_secs(5)).await.unwrap();
    assert_eq!(r.opcode(), Opcode::Reject);
    assert_eq!(r.bhs.0[2], 0x05); // command not supported
    assert_eq!(&r.data[..48], &p.bhs.0[..]);
    // A CmdSN far outside the window is ignored; the session goes on.
    let mut p = Pdu::new(Opcode::ScsiCommand);
    p.bhs.set_final(true);
    p.bhs.set_itt(s.alloc_itt());
    let (next, ..) = s.sequence_numbers();
    p.bhs.set_cmd_sn(next.wrapping_add(100_000));
    s.send_raw_pdu(&p).await.unwrap();
    assert!(s.recv_raw_within(Duration::from_millis(500)).await.is_err());
    s.test_unit_ready(0).await.unwrap();
    write_read_back(&s, 8, 4096).await;
}

#[tokio::test]
async fn oversized_segment_closes_connection_only() {
    let t = TestTarget::memory(1 << 20);
    let bystander = login(&opts(&t)).await;
    let s = login(&opts(&t)).await;
    let mut p = Pdu::new(Opcode::NopOut);
    p.bhs.set_immediate(true);
    p.bhs.set_final(true);
    p.bhs.set_itt(s.alloc_itt());
    p.bhs.set_data_segment_len(0xff_ffff);
    // Header only: the declared 16 MiB never arrive, and must not be awaited.
    s.send_raw_bytes(&p.bhs.0).await.unwrap();
    let r = s.recv_raw_within(Duration::from_secs(5)).await.unwrap();
    assert_eq!(r.opcode(), Opcode::Reject);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(s.nop().await.is_err(), "connection should be closed");
    bystander.nop().await.unwrap();
    write_read_back(&bystander, 0, 8192).await;
}

#[tokio::test]
async fn shutdown_asks_initiators_to_log_out() {
    let t = TestTarget::memory(1 << 20);
    let s = login(&opts(&t)).await;
    let stopper = std::thread::spawn(move || t.stop());
    let mut asked = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if s.take_async_events().iter().any(|e| e.event == 1) {
            asked = true;
            break;
        }
    }
    assert!(asked, "no Async Message asking for logout");
    s.logout().await.unwrap();
    stopper.join().unwrap();
}
