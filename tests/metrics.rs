//! Operator metrics end to end: an in-process target with the admin
//! endpoint on 127.0.0.1:0, driven over real iSCSI by our initiator, and
//! scraped over real HTTP. Every value asserted is one this test caused.

mod common;

use common::{INITIATOR, LunSpec, TargetOptions, TestTarget};
use gentgt::initiator::{ConnectOptions, Initiator, Session};
use gentgt::proto::login::ChapSecrets;
use gentgt::server::TargetSettings;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BS: u32 = 512;
const USER: &str = "mona";
const SECRET: &str = "mona-secret-123";

/// One scrape: series (name plus labels, as printed) → value.
struct Page(HashMap<String, f64>, String);

impl Page {
    fn get(&self, series: &str) -> f64 {
        match self.0.get(series) {
            Some(v) => *v,
            None => panic!("no series {series} in:\n{}", self.1),
        }
    }
}

async fn scrape(addr: SocketAddr) -> Page {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    let series = body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap();
            (k.to_string(), v.parse().unwrap())
        })
        .collect();
    Page(series, body.to_string())
}

/// Scrape until `series` has `want` (the target updates some values just
/// after the initiator has its answer).
async fn scrape_until(addr: SocketAddr, series: &str, want: f64) -> Page {
    for _ in 0..100 {
        let p = scrape(addr).await;
        if p.0.get(series) == Some(&want) {
            return p;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let p = scrape(addr).await;
    panic!("{series} never became {want}:\n{}", p.1);
}

fn opts(t: &TestTarget, secret: &str) -> ConnectOptions {
    let mut o = ConnectOptions::new(t.addr, INITIATOR, Some(&t.name));
    o.chap = Some((USER.into(), secret.into()));
    o.timeout = Duration::from_secs(10);
    o
}

async fn login(t: &TestTarget) -> Session {
    let s = Initiator::connect(&opts(t, SECRET)).await.unwrap();
    // The power-on unit attention (one "other" command).
    let _ = s.test_unit_ready(0).await;
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrape_counts_what_the_initiators_did() {
    let t = TestTarget::start(
        &[LunSpec::Memory {
            size: 4 << 20,
            block_size: BS,
        }],
        TargetOptions {
            chap: Some(ChapSecrets {
                user: USER.into(),
                secret: SECRET.into(),
                mutual: None,
            }),
            cbt_extent_blocks: Some(16),
            admin: true,
            ..Default::default()
        },
    );
    let admin = t.admin_addr.unwrap();
    let tl = format!("target=\"{}\"", t.name);
    let lun0 = format!("{tl},lun=\"0\"");

    // Two failed logins, each with its reason.
    assert!(
        Initiator::connect(&opts(&t, "wrong-secret-99"))
            .await
            .is_err()
    );
    let mut unknown = opts(&t, SECRET);
    unknown.target_name = Some("iqn.2026-11.dev.gentgt:nobody".into());
    assert!(Initiator::connect(&unknown).await.is_err());

    let a = login(&t).await;
    let p = scrape(admin).await;
    assert_eq!(
        p.get(&format!(
            "gentgt_iscsi_sessions{{{tl},session_type=\"normal\"}}"
        )),
        1.0
    );

    // Known sizes: two 4 KiB writes, one 12 KiB read.
    let block = vec![0x5au8; 4096];
    a.write16(0, 0, &block, BS, false).await.unwrap();
    a.write16(0, 8, &block, BS, false).await.unwrap();
    let back = a.read16(0, 0, 24, BS).await.unwrap();
    assert_eq!(back.len(), 12288);

    // Task management on an idle LUN.
    assert_eq!(a.task_mgmt(2, 0, 0xffff_ffff).await.unwrap(), 0);

    // CBT: closing moves the open generation; the gauge reads it live.
    let g0 = a.cbt_report(0).await.unwrap().open_generation;
    let p = scrape(admin).await;
    assert_eq!(
        p.get(&format!("gentgt_cbt_open_generation{{{lun0}}}")),
        g0 as f64
    );
    assert_eq!(
        p.get(&format!("gentgt_cbt_tracking_enabled{{{lun0}}}")),
        1.0
    );
    a.cbt_close(0).await.unwrap();
    let g1 = a.cbt_report(0).await.unwrap().open_generation;
    assert_eq!(g1, g0 + 1);
    let p = scrape(admin).await;
    assert_eq!(
        p.get(&format!("gentgt_cbt_open_generation{{{lun0}}}")),
        g1 as f64
    );
    assert_eq!(p.get(&format!("gentgt_cbt_write_lock_held{{{lun0}}}")), 0.0);

    // A write lock holds another session's write: lock state, held writes
    // and the queue-depth gauge all show it until the lock is released.
    let lock = a.cbt_acquire(0, 20_000, 1_000).await.unwrap();
    let b = login(&t).await;
    let held = b.write16(0, 64, &block, BS, false);
    let observe = async {
        let p = scrape_until(admin, &format!("gentgt_cbt_held_writes{{{lun0}}}"), 1.0).await;
        assert_eq!(p.get(&format!("gentgt_cbt_write_lock_held{{{lun0}}}")), 1.0);
        assert_eq!(
            p.get(&format!("gentgt_scsi_commands_in_flight{{{lun0}}}")),
            1.0
        );
        assert_eq!(
            p.get(&format!(
                "gentgt_iscsi_sessions{{{tl},session_type=\"normal\"}}"
            )),
            2.0
        );
        a.cbt_release(0, lock.token).await.unwrap();
    };
    let (w, ()) = tokio::join!(held, observe);
    w.unwrap();
    a.logout().await.unwrap();
    b.logout().await.unwrap();

    let sessions = format!("gentgt_iscsi_sessions{{{tl},session_type=\"normal\"}}");
    let p = scrape_until(admin, &sessions, 0.0).await;
    let v = |s: &str| p.get(s);
    let logins = |r: &str, target: &str| {
        v(&format!(
            "gentgt_iscsi_logins_total{{target=\"{target}\",result=\"{r}\"}}"
        ))
    };
    assert_eq!(logins("success", &t.name), 2.0);
    assert_eq!(logins("auth_failure", &t.name), 1.0);
    // Names the target does not serve are not labels.
    assert_eq!(logins("target_not_found", ""), 1.0);
    assert_eq!(v("gentgt_iscsi_connections_accepted_total"), 4.0);

    let cmds = |k: &str| {
        v(&format!(
            "gentgt_scsi_commands_total{{{lun0},kind=\"{k}\"}}"
        ))
    };
    assert_eq!(cmds("read"), 1.0);
    assert_eq!(cmds("write"), 3.0);
    // 2 TEST UNIT READY, 2 REPORT TRACKING, CLOSE, ACQUIRE, RELEASE.
    assert_eq!(cmds("other"), 7.0);
    assert_eq!(
        v(&format!("gentgt_scsi_read_bytes_total{{{lun0}}}")),
        12288.0
    );
    assert_eq!(
        v(&format!("gentgt_scsi_written_bytes_total{{{lun0}}}")),
        3.0 * 4096.0
    );
    assert_eq!(v(&format!("gentgt_scsi_commands_in_flight{{{lun0}}}")), 0.0);

    let hist = |suffix: &str, k: &str, le: Option<&str>| {
        let le = le.map(|l| format!(",le=\"{l}\"")).unwrap_or_default();
        v(&format!(
            "gentgt_scsi_command_duration_seconds_{suffix}{{{lun0},kind=\"{k}\"{le}}}"
        ))
    };
    assert_eq!(hist("count", "write", None), 3.0);
    assert_eq!(hist("bucket", "write", Some("+Inf")), 3.0);
    assert_eq!(hist("count", "read", None), 1.0);
    // The held write waited for the scrape and the release.
    assert!(hist("sum", "write", None) > 0.0);

    assert_eq!(
        v(&format!(
            "gentgt_iscsi_task_management_total{{{tl},function=\"abort_task_set\",response=\"function_complete\"}}"
        )),
        1.0
    );
    assert_eq!(v(&format!("gentgt_cbt_held_writes{{{lun0}}}")), 0.0);
    assert_eq!(v(&format!("gentgt_cbt_write_lock_held{{{lun0}}}")), 0.0);
    // Nothing was rejected and no digest failed.
    assert!(!p.1.contains("gentgt_iscsi_rejects_total{"));
    assert!(!p.1.contains("gentgt_iscsi_digest_errors_total{"));
    t.stop();
}

#[tokio::test]
async fn health_paths_and_login_timeout() {
    let t = TestTarget::start(
        &[LunSpec::Memory {
            size: 1 << 20,
            block_size: BS,
        }],
        TargetOptions {
            admin: true,
            settings: Some(TargetSettings {
                login_timeout: Duration::from_millis(300),
                ..Default::default()
            }),
            ..Default::default()
        },
    );
    let admin = t.admin_addr.unwrap();
    // A connection that never sends a login is counted when it times out.
    let _silent = TcpStream::connect(t.addr).await.unwrap();
    scrape_until(
        admin,
        r#"gentgt_iscsi_logins_total{target="",result="timeout"}"#,
        1.0,
    )
    .await;
    for (req, want) in [
        ("GET /healthz HTTP/1.1\r\n\r\n", "HTTP/1.1 200 OK"),
        ("GET /admin HTTP/1.1\r\n\r\n", "HTTP/1.1 404 "),
        ("DELETE /metrics HTTP/1.1\r\n\r\n", "HTTP/1.1 405 "),
    ] {
        let mut s = TcpStream::connect(admin).await.unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).await.unwrap();
        assert!(raw.starts_with(want), "{req:?} → {raw}");
    }
    t.stop();
}
