//! The real `gentgt serve` binary: starts on the built-in default with a
//! free port, serves libiscsi, stops cleanly on SIGTERM (exit 0), and the
//! data and the LUN's identity survive a restart.

mod common;

use common::{ServeProcess, require_tool, run};
use std::process::{Command, Stdio};

fn start(data_dir: &std::path::Path) -> ServeProcess {
    ServeProcess::start(data_dir, None, Stdio::null())
}

fn sigterm(mut s: ServeProcess) -> std::process::ExitStatus {
    s.signal(libc::SIGTERM);
    s.wait_exit(std::time::Duration::from_secs(30))
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn session(portal: std::net::SocketAddr) -> gentgt::initiator::Session {
    let o = gentgt::initiator::ConnectOptions::new(
        portal,
        common::INITIATOR,
        Some("iqn.2026-11.dev.gentgt:default"),
    );
    let s = gentgt::initiator::Initiator::connect(&o).await.unwrap();
    let _ = s.test_unit_ready(0).await; // power-on unit attention
    s
}

const URL_TAIL: &str = "iqn.2026-11.dev.gentgt:default/0";

#[test]
fn default_serve_sigterm_and_restart() {
    require_tool("iscsi-inq");
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path());
    let url = format!("iscsi://{}/{URL_TAIL}", s.addr);
    let (ok, first, err) = run(
        Command::new("iscsi-inq")
            .args(["-e", "1", "-c", "128"])
            .arg(&url),
        30,
    );
    assert!(ok, "{first}\n{err}");
    let lun = dir.path().join("lun0.img");
    assert_eq!(std::fs::metadata(&lun).unwrap().len(), 1 << 30);
    let pattern: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 251) as u8).collect();
    rt().block_on(async {
        let s = session(s.addr).await;
        s.write16(0, 2048, &pattern, 512, false).await.unwrap();
        s.logout().await.unwrap();
    });
    let status = sigterm(s);
    assert!(
        status.success(),
        "gentgt did not exit 0 on SIGTERM: {status:?}"
    );
    // Restart: same serial number (identity stored beside the data).
    let s = start(dir.path());
    let url = format!("iscsi://{}/{URL_TAIL}", s.addr);
    let (ok, second, err) = run(
        Command::new("iscsi-inq")
            .args(["-e", "1", "-c", "128"])
            .arg(&url),
        30,
    );
    assert!(ok, "{second}\n{err}");
    assert!(first.contains("Unit Serial Number"), "{first}");
    assert_eq!(first, second, "identity changed across restart");
    let back = rt().block_on(async {
        let s = session(s.addr).await;
        let d = s.read16(0, 2048, 8, 512).await.unwrap();
        s.logout().await.unwrap();
        d
    });
    assert!(back == pattern, "data lost across a clean restart");
    assert!(sigterm(s).success());
}

#[test]
fn bad_config_fails_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "listen = [\"127.0.0.1:0\"]\nbogus_key = 1\n").unwrap();
    let data = dir.path().join("data");
    let (ok, out, err) = run(
        Command::new(env!("CARGO_BIN_EXE_gentgt"))
            .args(["serve", "--config"])
            .arg(&cfg)
            .arg("--data-dir")
            .arg(&data),
        30,
    );
    assert!(!ok, "bad config accepted: {out}");
    assert!(
        err.contains("bogus_key"),
        "error does not name the key: {err}"
    );
    assert!(!data.exists(), "bad config created the data dir");
}
