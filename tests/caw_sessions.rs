//! COMPARE AND WRITE from two iSCSI sessions of the project's initiator
//! against an in-process gentgt: the target must order them so that of
//! two CAWs from the same old value exactly one succeeds and the other
//! sees MISCOMPARE, and a counter advanced only by CAW never loses an
//! increment.

mod common;

use common::*;
use gentgt::initiator::{ConnectOptions, Initiator, Session};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Barrier;

const BS: usize = 512;
/// Blocks the counter occupies: a CAW must compare and write all of them.
const N: usize = 4;
const MISCOMPARE: (u8, u8, u8) = (0x0e, 0x1d, 0x00);

async fn login(t: &TestTarget) -> Session {
    let mut o = ConnectOptions::new(t.addr, INITIATOR, Some(TARGET));
    o.timeout = Duration::from_secs(20);
    let s = Initiator::connect(&o).await.expect("login");
    // Clear the power-on unit attention.
    let _ = s.test_unit_ready(0).await;
    s
}

/// The counter image: (value, writer) repeated over N blocks, so every
/// byte of every block depends on both.
fn image(value: u64, writer: u8) -> Vec<u8> {
    let mut unit = value.to_be_bytes().to_vec();
    unit.push(writer);
    unit.iter().copied().cycle().take(N * BS).collect()
}

fn value_of(img: &[u8]) -> u64 {
    u64::from_be_bytes(img[..8].try_into().unwrap())
}

fn caw_cdb(lba: u64) -> Vec<u8> {
    let mut c = vec![0u8; 16];
    c[0] = 0x89;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[13] = N as u8;
    c
}

/// CAW from `old` to `new`: Ok(true) if it wrote, Ok(false) on MISCOMPARE.
async fn caw(s: &Session, lba: u64, old: &[u8], new: &[u8]) -> bool {
    let out = [old, new].concat();
    let r = s.scsi(0, &caw_cdb(lba), Some(&out), 0).await.expect("CAW");
    match r.status {
        0 => true,
        2 => {
            assert_eq!(r.sense_code(), Some(MISCOMPARE));
            false
        }
        st => panic!("CAW status {st:#x}"),
    }
}

/// Each round both sessions read the same old value, then race their CAWs
/// from it: exactly one may win.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn competing_caws_exactly_one_wins() {
    const ROUNDS: u64 = 150;
    let t = TestTarget::memory(1 << 20);
    let first = login(&t).await;
    first
        .write16(0, 8, &image(0, 0), BS as u32, false)
        .await
        .unwrap();
    let sessions = [first, login(&t).await];
    let barrier = Arc::new(Barrier::new(2));
    let mut tasks = Vec::new();
    for (id, s) in sessions.into_iter().enumerate() {
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            let mut wins = Vec::new();
            for round in 0..ROUNDS {
                let old = s.read16(0, 8, N as u32, BS as u32).await.unwrap();
                assert_eq!(value_of(&old), round, "session {id}");
                barrier.wait().await;
                let new = image(round + 1, id as u8 + 1);
                wins.push(caw(&s, 8, &old, &new).await);
                barrier.wait().await;
            }
            s.logout().await.unwrap();
            wins
        }));
    }
    let a = tasks.remove(0).await.unwrap();
    let b = tasks.remove(0).await.unwrap();
    for round in 0..ROUNDS as usize {
        assert!(
            a[round] ^ b[round],
            "round {round}: {} {}",
            a[round],
            b[round]
        );
    }
}

/// Free-running: both sessions keep reading and incrementing the counter
/// by CAW. Every success is exactly one increment, so the final value is
/// the number of successes — a lost update would make it smaller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caw_counter_never_loses_an_increment() {
    const TRIES: usize = 300;
    let t = TestTarget::memory(1 << 20);
    let first = login(&t).await;
    first
        .write16(0, 64, &image(0, 0), BS as u32, false)
        .await
        .unwrap();
    let sessions = [first, login(&t).await];
    let mut tasks = Vec::new();
    for (id, s) in sessions.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let (mut wins, mut misses) = (0u64, 0u64);
            for _ in 0..TRIES {
                let old = s.read16(0, 64, N as u32, BS as u32).await.unwrap();
                let new = image(value_of(&old) + 1, id as u8 + 1);
                if caw(&s, 64, &old, &new).await {
                    wins += 1;
                } else {
                    misses += 1;
                }
            }
            s.logout().await.unwrap();
            (wins, misses)
        }));
    }
    let (wa, ma) = tasks.remove(0).await.unwrap();
    let (wb, mb) = tasks.remove(0).await.unwrap();
    assert_eq!(wa + ma + wb + mb, 2 * TRIES as u64);
    let s = login(&t).await;
    let end = s.read16(0, 64, N as u32, BS as u32).await.unwrap();
    assert_eq!(value_of(&end), wa + wb, "wins {wa}+{wb}, misses {ma}+{mb}");
    // The image is whole: one writer's bytes throughout.
    assert!(end == image(wa + wb, end[8]));
    s.logout().await.unwrap();
}
