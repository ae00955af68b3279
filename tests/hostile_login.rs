//! Hostile clients before full feature phase: silent, stalled, garbage and
//! wrong-opcode connections are dropped (the silent ones after the login
//! timeout) without disturbing an established session.

mod common;

use common::*;
use gentgt::initiator::{ConnectOptions, Initiator};
use gentgt::server::TargetSettings;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn target(login_timeout: Duration) -> TestTarget {
    let settings = TargetSettings {
        login_timeout,
        ..Default::default()
    };
    TestTarget::start(
        &[LunSpec::Memory {
            size: 1 << 20,
            block_size: 512,
        }],
        TargetOptions {
            settings: Some(settings),
            ..Default::default()
        },
    )
}

/// Wait for the target to close `s`; returns how long after `start`.
async fn closed_within(s: &mut TcpStream, start: Instant, limit: Duration) -> Duration {
    let mut buf = [0u8; 512];
    loop {
        match tokio::time::timeout(limit, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return start.elapsed(),
            Ok(Ok(_)) => continue, // a login reject may come first
            Err(_) => panic!("connection still open after {limit:?}"),
        }
    }
}

#[tokio::test]
async fn silent_and_stalled_logins_time_out_others_unaffected() {
    let t = target(Duration::from_millis(500));
    let s = Initiator::connect(&ConnectOptions::new(t.addr, INITIATOR, Some(TARGET)))
        .await
        .unwrap();
    let _ = s.test_unit_ready(0).await;

    let start = Instant::now();
    let mut silent = TcpStream::connect(t.addr).await.unwrap();
    let mut stalled = TcpStream::connect(t.addr).await.unwrap();
    // Half a header, then nothing.
    stalled.write_all(&[0x43; 20]).await.unwrap();

    let a = closed_within(&mut silent, start, Duration::from_secs(5)).await;
    let b = closed_within(&mut stalled, start, Duration::from_secs(5)).await;
    assert!(
        a >= Duration::from_millis(400),
        "silent login closed too early: {a:?}"
    );
    assert!(
        b >= Duration::from_millis(400),
        "stalled login closed too early: {b:?}"
    );

    // The established session never noticed.
    s.nop().await.unwrap();
    s.test_unit_ready(0).await.unwrap();
    s.logout().await.unwrap();
}

#[tokio::test]
async fn non_login_first_pdu_and_garbage_are_dropped_at_once() {
    // A long login timeout: closing within the 5 s bound below can only be
    // the answer to the PDU itself, not the timer.
    let t = target(Duration::from_secs(60));
    // A SCSI Command as the first PDU: not a login.
    let start = Instant::now();
    let mut wrong = TcpStream::connect(t.addr).await.unwrap();
    let mut pdu = [0u8; 48];
    pdu[0] = 0x01;
    pdu[1] = 0x80;
    wrong.write_all(&pdu).await.unwrap();
    closed_within(&mut wrong, start, Duration::from_secs(5)).await;

    // A login header that declares a huge data segment: refused without
    // waiting for (or buffering) the 16 MiB it announces.
    let start = Instant::now();
    let mut huge = TcpStream::connect(t.addr).await.unwrap();
    let mut pdu = [0u8; 48];
    pdu[0] = 0x43;
    pdu[1] = 0x87;
    pdu[5..8].copy_from_slice(&[0xff, 0xff, 0xff]);
    huge.write_all(&pdu).await.unwrap();
    closed_within(&mut huge, start, Duration::from_secs(5)).await;

    // The target still serves new logins.
    let s = Initiator::connect(&ConnectOptions::new(t.addr, INITIATOR, Some(TARGET)))
        .await
        .unwrap();
    s.logout().await.unwrap();
}
