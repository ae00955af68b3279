//! Unit tests: the exposition's shape and the admin responder on good and
//! malformed requests (pure, then over a real socket).

use super::*;
use crate::scsi::ScsiResult;
use crate::server::admin::{self as http, MAX_REQUEST, respond};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn line_value(page: &str, series: &str) -> Option<String> {
    page.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')
            .map(str::to_string)
    })
}

#[test]
fn session_handles_count_into_the_registry() {
    let m = Arc::new(Metrics::new());
    {
        let mut s = SessionMetrics::new(m.clone(), "iqn.t", false, vec![0]);
        let guard = s.command_started(0);
        let page = m.render();
        assert_eq!(
            line_value(
                &page,
                r#"gentgt_scsi_commands_in_flight{target="iqn.t",lun="0"}"#
            ),
            Some("1".into())
        );
        drop(guard);
        let now = Instant::now();
        let read = ScsiResult::good(vec![0; 8192], 8192);
        // Data-In beyond the initiator's EDTL is not sent.
        s.command_done(0, &[0x28], true, 4096, read.status, read.data_in.len(), now);
        let written = ScsiResult::good(Vec::new(), 512);
        s.command_done(
            7,
            &[0x2a],
            false,
            512,
            written.status,
            written.data_in.len(),
            now - Duration::from_millis(2),
        );
        s.reject(0x04);
        s.tmf(1, 1);
        s.digest_error(true);
        let page = m.render();
        let v = |k: &str| line_value(&page, k);
        assert_eq!(
            v(r#"gentgt_iscsi_sessions{target="iqn.t",session_type="normal"}"#),
            Some("1".into())
        );
        assert_eq!(
            v(r#"gentgt_scsi_read_bytes_total{target="iqn.t",lun="0"}"#),
            Some("4096".into())
        );
        // An id the target does not have is folded into one series.
        assert_eq!(
            v(r#"gentgt_scsi_written_bytes_total{target="iqn.t",lun="unknown"}"#),
            Some("512".into())
        );
        assert_eq!(
            v(
                r#"gentgt_scsi_command_duration_seconds_bucket{target="iqn.t",lun="unknown",kind="write",le="0.0016"}"#
            ),
            Some("0".into())
        );
        assert_eq!(
            v(
                r#"gentgt_scsi_command_duration_seconds_bucket{target="iqn.t",lun="unknown",kind="write",le="0.4096"}"#
            ),
            Some("1".into())
        );
        assert_eq!(
            v(r#"gentgt_iscsi_rejects_total{target="iqn.t",reason="protocol_error"}"#),
            Some("1".into())
        );
        assert_eq!(
            v(
                r#"gentgt_iscsi_task_management_total{target="iqn.t",function="abort_task",response="task_does_not_exist"}"#
            ),
            Some("1".into())
        );
        assert_eq!(
            v(r#"gentgt_iscsi_digest_errors_total{target="iqn.t",digest="data"}"#),
            Some("1".into())
        );
    }
    let page = m.render();
    assert_eq!(
        line_value(
            &page,
            r#"gentgt_iscsi_sessions{target="iqn.t",session_type="normal"}"#
        ),
        Some("0".into())
    );
    assert_eq!(
        line_value(
            &page,
            r#"gentgt_scsi_commands_in_flight{target="iqn.t",lun="0"}"#
        ),
        Some("0".into())
    );
}

fn status_of(r: &http::Reply) -> u16 {
    r.status
}

#[test]
fn responder_routes_and_refuses() {
    let m = Metrics::new();
    m.connection_accepted();
    let ok = respond(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", &m);
    assert_eq!(ok.status, 200);
    let body = String::from_utf8(ok.body.clone()).unwrap();
    assert!(
        body.contains("gentgt_iscsi_connections_accepted_total 1\n"),
        "{body}"
    );
    let enc = String::from_utf8(ok.encode()).unwrap();
    assert!(enc.starts_with("HTTP/1.1 200 OK\r\n"));
    assert!(enc.contains(&format!("Content-Length: {}\r\n", ok.body.len())));
    assert!(enc.contains("text/plain; version=0.0.4"));

    let health = respond(b"GET /healthz?x=1 HTTP/1.0\r\n\r\n", &m);
    assert_eq!((health.status, health.body.as_slice()), (200, &b"ok\n"[..]));
    let head = respond(b"HEAD /healthz HTTP/1.1\r\n\r\n", &m);
    assert!(!String::from_utf8(head.encode()).unwrap().ends_with("ok\n"));

    let cases: &[(&[u8], u16)] = &[
        (b"GET /nope HTTP/1.1\r\n\r\n", 404),
        (b"POST /metrics HTTP/1.1\r\n\r\n", 405),
        (b"GET /metrics HTTP/2.0\r\n\r\n", 505),
        (b"GET /metrics\r\n\r\n", 400),
        (b"GET  /metrics HTTP/1.1\r\n\r\n", 400),
        (b"GET metrics HTTP/1.1\r\n\r\n", 400),
        (b"get /metrics HTTP/1.1\r\n\r\n", 400),
        (b"GET /metrics HTTP/1.1 extra\r\n\r\n", 400),
        (b"\xff\xfe /metrics HTTP/1.1\r\n\r\n", 400),
        (b"\r\n\r\n", 400),
        (b"no line end", 400),
    ];
    for (req, want) in cases {
        assert_eq!(status_of(&respond(req, &m)), *want, "{req:?}");
    }
}

/// Send `req` to a live responder, return what came back.
async fn exchange(addr: std::net::SocketAddr, req: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    // The server may close before reading everything (oversized): ignore.
    let _ = s.write_all(req).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn live_responder_bounds_requests() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let server = tokio::spawn(http::serve(l, Arc::new(Metrics::new())));

    let r = exchange(addr, b"GET /healthz HTTP/1.1\r\n\r\n").await;
    assert!(
        r.starts_with("HTTP/1.1 200 OK\r\n") && r.ends_with("\r\n\r\nok\n"),
        "{r}"
    );

    let r = exchange(addr, b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert!(
        r.contains("\ngentgt_iscsi_connections_accepted_total 0\n"),
        "{r}"
    );

    let big = vec![b'a'; MAX_REQUEST + 100];
    let r = exchange(addr, &big).await;
    assert!(r.starts_with("HTTP/1.1 431 "), "{r}");

    let r = exchange(addr, b"BREW /pot HTCPCP/1.0\r\n\r\n").await;
    assert!(r.starts_with("HTTP/1.1 400 "), "{r}");

    // A client that connects and goes away mid-request costs nothing.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /met").await.unwrap();
    s.shutdown().await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    assert!(out.is_empty());

    // The responder survived all of that.
    let r = exchange(addr, b"GET /healthz HTTP/1.1\r\n\r\n").await;
    assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
    server.abort();
}

#[tokio::test]
async fn silent_client_times_out() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let m = Arc::new(Metrics::new());
    let server = tokio::spawn(http::serve_with(l, m, Duration::from_millis(200)));
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\n").await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let r = String::from_utf8_lossy(&out);
    assert!(r.starts_with("HTTP/1.1 408 "), "{r}");
    server.abort();
}

#[test]
fn admin_config_key() {
    let base = "[[target]]\nname = \"iqn.2026-11.dev.gentgt:x\"\n[[target.lun]]\nid = 0\n\
                backend = \"memory\"\nsize = \"1MiB\"\n";
    let c = crate::config::Config::from_toml(base, "t").unwrap();
    assert_eq!(c.admin_addr().unwrap(), None);
    let text = format!("[admin]\nlisten = \"127.0.0.1:9180\"\n{base}");
    let c = crate::config::Config::from_toml(&text, "t").unwrap();
    assert_eq!(
        c.admin_addr().unwrap(),
        Some("127.0.0.1:9180".parse().unwrap())
    );
    let bad = format!("[admin]\nlisten = \"localhost\"\n{base}");
    let e = crate::config::Config::from_toml(&bad, "t").unwrap_err();
    assert!(e.to_string().contains("[admin] listen"), "{e}");
    let typo = format!("[admin]\nlisten = \"127.0.0.1:1\"\nport = 2\n{base}");
    assert!(crate::config::Config::from_toml(&typo, "t").is_err());
}
