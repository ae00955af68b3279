//! The connection limit over real sockets: connections beyond
//! `max_connections` (logged in or still logging in) get "out of
//! resources" (0302h) and are closed; established sessions go on; freed
//! slots are usable again.

mod common;

use common::{INITIATOR, LunSpec, TargetOptions, TestTarget};
use gentgt::initiator::{ConnectOptions, Initiator, InitiatorError, Session};
use gentgt::server::TargetSettings;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

const LIMIT: usize = 3;

fn start() -> TestTarget {
    TestTarget::start(
        &[LunSpec::Memory {
            size: 1 << 20,
            block_size: 512,
        }],
        TargetOptions {
            settings: Some(TargetSettings {
                max_connections: LIMIT,
                login_timeout: Duration::from_secs(1),
                ..TargetSettings::default()
            }),
            ..Default::default()
        },
    )
}

fn opts(t: &TestTarget, name: &str) -> ConnectOptions {
    let mut o = ConnectOptions::new(t.addr, name, Some(&t.name));
    o.timeout = Duration::from_secs(10);
    o
}

async fn login(t: &TestTarget, name: &str) -> Result<Session, InitiatorError> {
    Initiator::connect(&opts(t, name)).await
}

fn refused(r: &Result<Session, InitiatorError>) -> bool {
    matches!(
        r,
        Err(InitiatorError::LoginFailed {
            class: 3,
            detail: 2
        })
    )
}

/// Wait until the peer closes `sock`; returns how long that took.
async fn closed_within(sock: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 64];
    loop {
        match tokio::time::timeout(limit, sock.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => continue,
            Err(_) => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn excess_logins_get_out_of_resources_and_sessions_go_on() {
    let t = start();
    let mut sessions = Vec::new();
    for i in 0..LIMIT {
        let s = login(&t, &format!("{INITIATOR}-{i}")).await.unwrap();
        let _ = s.test_unit_ready(0).await;
        sessions.push(s);
    }
    // Every connection beyond the limit is refused with 0302h.
    for i in 0..4 {
        let r = login(&t, &format!("{INITIATOR}-x{i}")).await;
        assert!(refused(&r), "excess login {i}: {:?}", r.map(|_| ()));
    }
    // A silent excess connection is closed after the login timeout.
    let mut silent = TcpStream::connect(t.addr).await.unwrap();
    let took = closed_within(&mut silent, Duration::from_secs(5)).await;
    assert!(
        took.is_some_and(|d| d >= Duration::from_millis(800)),
        "{took:?}"
    );
    // The established sessions noticed nothing.
    for (i, s) in sessions.iter().enumerate() {
        let data = vec![i as u8 + 1; 512];
        s.write16(0, i as u64, &data, 512, false).await.unwrap();
        assert_eq!(s.read16(0, i as u64, 1, 512).await.unwrap(), data);
    }
    // One logs out: its slot is free for a new login.
    sessions.pop().unwrap().logout().await.unwrap();
    let again = retry_login(&t, "iqn.2026-11.dev.gentgt:late").await;
    again.test_unit_ready(0).await.ok();
    assert!(refused(&login(&t, "iqn.2026-11.dev.gentgt:later").await));
    t.stop();
}

/// A freed slot may take a moment to be given back (the connection task
/// ends after the logout response).
async fn retry_login(t: &TestTarget, name: &str) -> Session {
    for _ in 0..40 {
        match login(t, name).await {
            Ok(s) => return s,
            Err(InitiatorError::LoginFailed {
                class: 3,
                detail: 2,
            }) => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => panic!("{e}"),
        }
    }
    panic!("slot never freed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_still_logging_in_count() {
    let t = start();
    let s = login(&t, INITIATOR).await.unwrap();
    let _ = s.test_unit_ready(0).await;
    // Two connections that never send a login hold the other slots.
    let mut idle = Vec::new();
    for _ in 0..LIMIT - 1 {
        idle.push(TcpStream::connect(t.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(refused(&login(&t, "iqn.2026-11.dev.gentgt:other").await));
    // The login timeout drops them; then logins succeed again.
    for sock in &mut idle {
        assert!(closed_within(sock, Duration::from_secs(5)).await.is_some());
    }
    let other = retry_login(&t, "iqn.2026-11.dev.gentgt:other").await;
    let _ = other.test_unit_ready(0).await;
    other.test_unit_ready(0).await.unwrap();
    s.test_unit_ready(0).await.unwrap();
    t.stop();
}
