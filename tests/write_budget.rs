//! A session's solicited write data is bounded: with a budget of 64 KiB,
//! three queued 64 KiB writes get their R2Ts one after another, each only
//! once the previous write finished — and a burst of concurrent writes far
//! over the budget still completes with the right data.

mod common;

use common::*;
use gentgt::initiator::{ConnectOptions, Initiator, Session};
use gentgt::proto::pdu::{Opcode, Pdu};
use gentgt::server::TargetSettings;
use std::time::Duration;

const KIB: u32 = 1024;

fn target(budget: u64) -> TestTarget {
    target_with(budget, 256 << 20)
}

fn target_with(budget: u64, total: u64) -> TestTarget {
    let settings = TargetSettings {
        write_buffer_per_session: budget,
        write_buffer_total: total,
        ..TargetSettings::default()
    };
    TestTarget::start(
        &[LunSpec::Memory {
            size: 8 << 20,
            block_size: 512,
        }],
        TargetOptions {
            settings: Some(settings),
            ..TargetOptions::default()
        },
    )
}

async fn login(t: &TestTarget) -> Session {
    let mut o = ConnectOptions::new(t.addr, INITIATOR, Some(TARGET));
    o.timeout = Duration::from_secs(20);
    // Every byte of data solicited by R2T.
    o.immediate_data = false;
    o.initial_r2t = true;
    let s = Initiator::connect(&o).await.expect("login");
    let _ = s.test_unit_ready(0).await;
    s
}

fn write16(itt: u32, lba: u64, len: u32) -> Pdu {
    let mut cdb = [0u8; 16];
    cdb[0] = 0x8a;
    cdb[2..10].copy_from_slice(&lba.to_be_bytes());
    cdb[10..14].copy_from_slice(&(len / 512).to_be_bytes());
    let mut p = Pdu::new(Opcode::ScsiCommand);
    p.bhs.set_flags(0x80 | 0x20); // F, W
    p.bhs.set_itt(itt);
    p.bhs.set_expected_data_len(len);
    p.bhs.set_cdb(&cdb);
    p
}

async fn next(s: &Session) -> Pdu {
    s.recv_raw_within(Duration::from_secs(5))
        .await
        .expect("a PDU")
}

/// Answer one R2T with its data (a fill byte per command).
async fn answer(s: &Session, r2t: &Pdu, fill: u8) {
    let mut d = Pdu::new(Opcode::DataOut);
    d.bhs.set_final(true);
    d.bhs.set_itt(r2t.bhs.itt());
    d.bhs.set_ttt(r2t.bhs.ttt());
    d.bhs.set_buffer_offset(r2t.bhs.buffer_offset());
    d.data = vec![fill; r2t.bhs.desired_data_len() as usize];
    s.send_raw_pdu(&d).await.unwrap();
}

#[tokio::test]
async fn r2ts_wait_for_the_budget() {
    let t = target(u64::from(64 * KIB));
    let s = login(&t).await;
    let itts: Vec<u32> = (0..3).map(|_| s.alloc_itt()).collect();
    for (i, &itt) in itts.iter().enumerate() {
        s.send_raw_command(write16(itt, i as u64 * 128, 64 * KIB))
            .await
            .unwrap();
    }
    for (i, &itt) in itts.iter().enumerate() {
        // This write's R2Ts (one per MaxBurstLength) and nothing for the
        // later writes, which wait for the budget.
        let mut asked = 0;
        while asked < 64 * KIB {
            let r2t = next(&s).await;
            assert_eq!(r2t.opcode(), Opcode::R2t);
            assert_eq!(r2t.bhs.itt(), itt, "R2T for a write over the budget");
            asked += r2t.bhs.desired_data_len();
            answer(&s, &r2t, i as u8 + 1).await;
        }
        let resp = next(&s).await;
        assert_eq!(resp.opcode(), Opcode::ScsiResponse);
        assert_eq!(resp.bhs.itt(), itt);
        assert_eq!(resp.bhs.0[3], 0, "status GOOD");
    }
    for i in 0..3u64 {
        let back = s.read16(0, i * 128, 128, 512).await.unwrap();
        assert!(back.iter().all(|&b| b == i as u8 + 1));
    }
}

#[tokio::test]
async fn many_writes_over_the_budget_complete() {
    let t = target(u64::from(256 * KIB));
    let s = std::sync::Arc::new(login(&t).await);
    let mut tasks = Vec::new();
    for i in 0..32u64 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let data = vec![i as u8 ^ 0x5a; 128 * KIB as usize];
            s.write16(0, i * 256, &data, 512, false).await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    for i in 0..32u64 {
        let back = s.read16(0, i * 256, 256, 512).await.unwrap();
        assert!(back.iter().all(|&b| b == i as u8 ^ 0x5a), "write {i}");
    }
}

/// The target-wide budget: once other sessions hold it, a session that
/// already has a write going waits for them, and gets its R2T as soon as
/// another session's write finishes.
#[tokio::test]
async fn the_target_wide_budget_is_shared() {
    let t = target_with(1 << 20, u64::from(96 * KIB));
    let a = login(&t).await;
    let b = login(&t).await;
    let a1 = a.alloc_itt();
    a.send_raw_command(write16(a1, 0, 64 * KIB)).await.unwrap();
    let r2t_a = next(&a).await;
    assert_eq!((r2t_a.opcode(), r2t_a.bhs.itt()), (Opcode::R2t, a1));
    // B's first write always fits (no session starves): 96 KiB in use.
    let (b1, b2) = (b.alloc_itt(), b.alloc_itt());
    b.send_raw_command(write16(b1, 1024, 32 * KIB))
        .await
        .unwrap();
    let r2t_b1 = next(&b).await;
    assert_eq!((r2t_b1.opcode(), r2t_b1.bhs.itt()), (Opcode::R2t, b1));
    // B's second write would pass 96 KiB: no R2T while A holds its share.
    b.send_raw_command(write16(b2, 2048, 32 * KIB))
        .await
        .unwrap();
    assert!(b.recv_raw_within(Duration::from_millis(300)).await.is_err());
    // A finishes; B's second write is asked for its data.
    answer(&a, &r2t_a, 0xaa).await;
    assert_eq!(next(&a).await.opcode(), Opcode::ScsiResponse);
    let r2t_b2 = next(&b).await;
    assert_eq!((r2t_b2.opcode(), r2t_b2.bhs.itt()), (Opcode::R2t, b2));
    answer(&b, &r2t_b1, 0xb1).await;
    answer(&b, &r2t_b2, 0xb2).await;
    for _ in 0..2 {
        let r = next(&b).await;
        assert_eq!((r.opcode(), r.bhs.0[3]), (Opcode::ScsiResponse, 0));
    }
    let back = b.read16(0, 2048, 64, 512).await.unwrap();
    assert!(back.iter().all(|&x| x == 0xb2));
}

/// A session that ends while its writes wait for their data gives their
/// budget back to the target: otherwise every initiator that drops its
/// connection mid-write (a crash, a path failover) would shrink the
/// target-wide budget for good, until writes stall everywhere.
#[tokio::test]
async fn a_session_ending_mid_write_gives_its_budget_back() {
    let t = target_with(1 << 20, u64::from(96 * KIB));
    for round in 0..3u64 {
        let a = login(&t).await;
        let itt = a.alloc_itt();
        a.send_raw_command(write16(itt, round * 256, 64 * KIB))
            .await
            .unwrap();
        let r2t = next(&a).await;
        assert_eq!((r2t.opcode(), r2t.bhs.itt()), (Opcode::R2t, itt));
        // Gone without sending the data.
        drop(a);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while t.stats.snapshot().sessions > 0 {
            assert!(std::time::Instant::now() < deadline, "session never ended");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // 3 x 64 KiB would be held for nothing; both 32 KiB writes of a new
    // session fit the 96 KiB only if they were given back.
    let b = login(&t).await;
    let (b1, b2) = (b.alloc_itt(), b.alloc_itt());
    b.send_raw_command(write16(b1, 1024, 32 * KIB))
        .await
        .unwrap();
    b.send_raw_command(write16(b2, 2048, 32 * KIB))
        .await
        .unwrap();
    let mut r2ts = Vec::new();
    for _ in 0..2 {
        let r = next(&b).await;
        assert_eq!(
            r.opcode(),
            Opcode::R2t,
            "the second write was asked for its data"
        );
        r2ts.push(r);
    }
    for r in &r2ts {
        answer(&b, r, 0xc3).await;
    }
    for _ in 0..2 {
        let r = next(&b).await;
        assert_eq!((r.opcode(), r.bhs.0[3]), (Opcode::ScsiResponse, 0));
    }
}
