//! Live reconfiguration over real sockets: an in-process server fed new
//! registries built from TOML by `rebuild_registry` (what SIGHUP does),
//! and the real binary driven by SIGHUP and `gentgt reload`.

use gentgt::config::{Config, build_registry, rebuild_registry};
use gentgt::initiator::{ConnectOptions, Initiator, InitiatorError, Session};
use gentgt::server::{Registry, ReloadRequest, ReloadSummary, Server, TargetSettings};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

const T1: &str = "iqn.2026-11.dev.gentgt:one";
const T2: &str = "iqn.2026-11.dev.gentgt:two";
const T3: &str = "iqn.2026-11.dev.gentgt:three";
const HOST_A: &str = "iqn.2026-11.dev.gentgt:host-a";
const HOST_B: &str = "iqn.2026-11.dev.gentgt:host-b";

/// A target with `luns` (each "id:backend:size" or "id:file:path:size").
fn target(name: &str, extra: &str, luns: &[&str]) -> String {
    let mut s = format!("[[target]]\nname = \"{name}\"\n{extra}\n");
    for l in luns {
        let f: Vec<&str> = l.split(':').collect();
        match f.as_slice() {
            [id, "memory", size] => s.push_str(&format!(
                "[[target.lun]]\nid = {id}\nbackend = \"memory\"\nsize = \"{size}\"\n"
            )),
            [id, "file", path, size] => s.push_str(&format!(
                "[[target.lun]]\nid = {id}\nbackend = \"file\"\npath = \"{path}\"\nsize = \"{size}\"\n"
            )),
            _ => panic!("bad LUN spec {l}"),
        }
    }
    s
}

struct Harness {
    addr: SocketAddr,
    data: tempfile::TempDir,
    current: (Config, Arc<Registry>),
    tx: mpsc::Sender<ReloadRequest>,
    stop: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<()>,
}

impl Harness {
    async fn start(toml: &str) -> Harness {
        let data = tempfile::tempdir().unwrap();
        let cfg = Config::from_toml(toml, "test.toml").unwrap();
        let registry = Arc::new(build_registry(&cfg, data.path()).unwrap());
        let settings = TargetSettings {
            logout_grace: Duration::from_millis(500),
            login_timeout: Duration::from_secs(3),
            ..TargetSettings::default()
        };
        let server = Server::bind(registry.clone(), &["127.0.0.1:0".parse().unwrap()])
            .await
            .unwrap()
            .with_settings(settings);
        let addr = server.local_addrs()[0];
        let (tx, rx) = mpsc::channel(1);
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            server
                .run_with_reloads(
                    async {
                        let _ = stopped.await;
                    },
                    rx,
                )
                .await
                .unwrap();
        });
        Harness {
            addr,
            data,
            current: (cfg, registry),
            tx,
            stop: Some(stop),
            server,
        }
    }

    /// What SIGHUP does: validate and build, then hand over; an error
    /// leaves the server as it was.
    async fn reload(&mut self, toml: &str) -> Result<ReloadSummary, String> {
        let (cur, reg) = self.current.clone();
        let dir = self.data.path().to_path_buf();
        let text = toml.to_string();
        let built = tokio::task::spawn_blocking(move || {
            let next = Config::from_toml(&text, "test.toml").map_err(|e| e.to_string())?;
            let r = rebuild_registry(&cur, &reg, &next, &dir).map_err(|e| e.to_string())?;
            Ok::<_, String>((next, Arc::new(r)))
        })
        .await
        .unwrap()?;
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(ReloadRequest {
                registry: built.1.clone(),
                max_connections: None,
                reply,
            })
            .await
            .unwrap();
        let summary = answer.await.unwrap();
        self.current = built;
        Ok(summary)
    }

    async fn login(&self, target: &str, initiator: &str) -> Result<Session, InitiatorError> {
        let mut o = ConnectOptions::new(self.addr, initiator, Some(target));
        o.timeout = Duration::from_secs(10);
        Initiator::connect(&o).await
    }

    /// Log in and take the power-on unit attention of every LUN.
    async fn session(&self, target: &str, initiator: &str) -> Session {
        let s = self.login(target, initiator).await.unwrap();
        for lun in s.report_luns().await.unwrap() {
            let _ = s.test_unit_ready(lun).await;
        }
        s
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.server.await.unwrap();
    }
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

/// The session ends (logout requested, then closed) within a few seconds.
async fn ends(s: &Session) -> bool {
    for _ in 0..100 {
        if s.is_closed() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

fn ua_code(e: &InitiatorError) -> Option<(u8, u8, u8)> {
    e.sense_code()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_added_and_removed_while_another_session_does_io() {
    let one = target(T1, "", &["0:file:one.img:4MiB"]);
    let two = target(T2, "", &["0:memory:1MiB"]);
    let three = target(T3, "", &["0:memory:1MiB"]);
    let mut h = Harness::start(&format!("{one}{two}")).await;
    let s1 = Arc::new(h.session(T1, HOST_A).await);
    let s2 = h.session(T2, HOST_A).await;

    // I/O on target one runs across the reload.
    let io = {
        let s1 = s1.clone();
        tokio::spawn(async move {
            for i in 0..60u64 {
                let data = pattern(i as u8, 4096);
                s1.write16(0, i * 8, &data, 512, false).await.unwrap();
                assert_eq!(s1.read16(0, i * 8, 8, 512).await.unwrap(), data);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let sum = h.reload(&format!("{one}{three}")).await.unwrap();
    assert_eq!(sum.targets_added, vec![T3.to_string()]);
    assert_eq!(sum.targets_removed, vec![T2.to_string()]);
    assert!(sum.luns_changed.is_empty(), "{sum}");
    assert_eq!(sum.sessions_ended, 1);
    io.await.unwrap();

    // Target two's session was asked to log out, then closed.
    assert!(ends(&s2).await, "session of the removed target still open");
    let events = s2.take_async_events();
    assert!(events.iter().any(|e| e.event == 1), "{events:?}");
    // Target one's session never noticed: no unit attention, data intact.
    s1.test_unit_ready(0).await.unwrap();
    for i in 0..60u64 {
        assert_eq!(
            s1.read16(0, i * 8, 8, 512).await.unwrap(),
            pattern(i as u8, 4096)
        );
    }
    // New logins see the new set of targets.
    match h.login(T2, HOST_A).await {
        Err(InitiatorError::LoginFailed {
            class: 2,
            detail: 3,
        }) => {}
        other => panic!("login to a removed target: {:?}", other.map(|_| ())),
    }
    let s3 = h.session(T3, HOST_A).await;
    s3.write16(0, 0, &pattern(3, 512), 512, false)
        .await
        .unwrap();
    drop(s3);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lun_set_changes_reach_live_sessions_as_unit_attention() {
    let base = target(T1, "", &["0:file:a.img:1MiB"]);
    let grown = target(T1, "", &["0:file:a.img:1MiB", "1:file:b.img:2MiB"]);
    let mut h = Harness::start(&base).await;
    let s = h.session(T1, HOST_A).await;
    let data = pattern(7, 8192);
    s.write16(0, 10, &data, 512, false).await.unwrap();

    let sum = h.reload(&grown).await.unwrap();
    assert_eq!(sum.luns_changed, vec![T1.to_string()]);
    assert_eq!(sum.sessions_moved, 1);
    // REPORTED LUNS DATA HAS CHANGED (3Fh/0Eh), then the new inventory.
    let e = s.test_unit_ready(0).await.unwrap_err();
    assert_eq!(ua_code(&e), Some((6, 0x3f, 0x0e)), "{e}");
    s.test_unit_ready(0).await.unwrap();
    assert_eq!(s.report_luns().await.unwrap(), vec![0, 1]);
    assert_eq!(s.read16(0, 10, 16, 512).await.unwrap(), data);
    let _ = s.test_unit_ready(1).await;
    assert_eq!(s.read_capacity16(1).await.unwrap(), (4096, 512));
    s.write16(1, 0, &pattern(9, 512), 512, false).await.unwrap();

    // Remove LUN 1 again: another attention, LUN 0 still intact; the
    // removed LUN's file was flushed and stays on disk.
    let sum = h.reload(&base).await.unwrap();
    assert_eq!(sum.luns_changed, vec![T1.to_string()]);
    let e = s.test_unit_ready(0).await.unwrap_err();
    assert_eq!(ua_code(&e), Some((6, 0x3f, 0x0e)), "{e}");
    assert_eq!(s.report_luns().await.unwrap(), vec![0]);
    assert_eq!(s.read16(0, 10, 16, 512).await.unwrap(), data);
    let b = std::fs::read(h.data.path().join("b.img")).unwrap();
    assert_eq!(&b[..512], &pattern(9, 512)[..]);

    // A LUN whose definition changes on the same file (it grows): the
    // old unit lets go, the new one serves the same data.
    let bigger = target(T1, "", &["0:file:a.img:2MiB"]);
    h.reload(&bigger).await.unwrap();
    let _ = s.test_unit_ready(0).await;
    assert_eq!(s.read_capacity16(0).await.unwrap(), (4096, 512));
    assert_eq!(s.read16(0, 10, 16, 512).await.unwrap(), data);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_change_ends_only_sessions_no_longer_allowed() {
    let both = target(
        T1,
        &format!("allow = [\"{HOST_A}\", \"{HOST_B}\"]"),
        &["0:memory:1MiB"],
    );
    let only_a = target(T1, &format!("allow = [\"{HOST_A}\"]"), &["0:memory:1MiB"]);
    let mut h = Harness::start(&both).await;
    let a = h.session(T1, HOST_A).await;
    let b = h.session(T1, HOST_B).await;
    let sum = h.reload(&only_a).await.unwrap();
    assert_eq!(sum.acl_changed, vec![T1.to_string()]);
    assert!(sum.luns_changed.is_empty());
    assert_eq!(sum.sessions_ended, 1);
    assert!(ends(&b).await, "disallowed initiator's session still open");
    a.test_unit_ready(0).await.unwrap();
    a.write16(0, 0, &pattern(1, 512), 512, false).await.unwrap();
    match h.login(T1, HOST_B).await {
        Err(InitiatorError::LoginFailed {
            class: 2,
            detail: 2,
        }) => {}
        other => panic!("login of a removed initiator: {:?}", other.map(|_| ())),
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chap_user_added_applies_to_new_logins_only() {
    let open = target(T1, "", &["0:memory:1MiB"]);
    let chap = target(
        T1,
        "[target.chap]\nuser = \"backup\"\nsecret = \"s3cret-s3cret-s3cret\"",
        &["0:memory:1MiB"],
    );
    let mut h = Harness::start(&open).await;
    let s = h.session(T1, HOST_A).await;
    let sum = h.reload(&chap).await.unwrap();
    assert_eq!(sum.chap_changed, vec![T1.to_string()]);
    assert_eq!(sum.sessions_ended, 0);
    s.test_unit_ready(0).await.unwrap();
    assert!(h.login(T1, HOST_B).await.is_err(), "login without CHAP");
    let mut o = ConnectOptions::new(h.addr, HOST_B, Some(T1));
    o.chap = Some(("backup".into(), "s3cret-s3cret-s3cret".into()));
    let c = Initiator::connect(&o).await.unwrap();
    let _ = c.test_unit_ready(0).await;
    c.test_unit_ready(0).await.unwrap();
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_config_is_rejected_whole() {
    let one = target(T1, "", &["0:file:one.img:1MiB"]);
    let two = target(T2, "", &["0:memory:1MiB"]);
    let mut h = Harness::start(&format!("{one}{two}")).await;
    let s1 = h.session(T1, HOST_A).await;
    let s2 = h.session(T2, HOST_A).await;
    s1.write16(0, 0, &pattern(5, 512), 512, false)
        .await
        .unwrap();

    // Invalid: target two dropped (valid) but a LUN with block size 1000.
    let bad = format!(
        "{one}[[target]]\nname = \"{T3}\"\n[[target.lun]]\nid = 0\nbackend = \"memory\"\n\
         size = \"1MiB\"\nblock_size = 1000\n"
    );
    let e = h.reload(&bad).await.unwrap_err();
    assert!(e.contains("block"), "{e}");
    // Valid text, but a new LUN cannot open (its path is a directory),
    // after another new LUN opened fine.
    std::fs::create_dir(h.data.path().join("adir")).unwrap();
    let bad = format!(
        "{one}{}{}",
        target(T3, "", &["0:memory:1MiB"]),
        target("iqn.2026-11.dev.gentgt:four", "", &["0:file:adir:1MiB"])
    );
    let e = h.reload(&bad).await.unwrap_err();
    assert!(e.contains("adir"), "{e}");

    // Nothing changed: both sessions work, target two still logs in,
    // target three does not exist.
    s1.test_unit_ready(0).await.unwrap();
    s2.test_unit_ready(0).await.unwrap();
    assert_eq!(s1.read16(0, 0, 1, 512).await.unwrap(), pattern(5, 512));
    drop(h.session(T2, HOST_B).await);
    assert!(h.login(T3, HOST_A).await.is_err());
    h.stop().await;
}

// ---- the real binary ------------------------------------------------------

struct Served {
    child: std::process::Child,
    addr: SocketAddr,
    /// The admin endpoint (GET /metrics).
    admin: SocketAddr,
    pid_file: PathBuf,
    config: PathBuf,
}

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_gentgt")
}

fn serve(dir: &Path, toml: &str) -> Served {
    use std::io::BufRead;
    let config = dir.join("gentgt.toml");
    std::fs::write(&config, toml).unwrap();
    let pid_file = dir.join("gentgt.pid");
    // Stand in for systemd's notification socket (Type=notify).
    let notify = std::os::unix::net::UnixDatagram::bind(dir.join("notify")).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut child = std::process::Command::new(bin())
        .env("NOTIFY_SOCKET", dir.join("notify"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .arg("--pid-file")
        .arg(&pid_file)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--admin", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let out = std::io::BufReader::new(child.stdout.take().unwrap());
    let (mut addr, mut admin) = (None, None);
    let mut lines = out.lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(a) = line.trim().strip_prefix("portal") {
            addr = Some(a.trim().parse().unwrap());
        }
        if let Some(a) = line.trim().strip_prefix("admin") {
            let a = a.trim().trim_start_matches("http://");
            admin = Some(a.trim_end_matches("/metrics").parse().unwrap());
            break;
        }
    }
    // Keep reading: a closed pipe would fail the server's next println.
    std::thread::spawn(move || lines.for_each(drop));
    let mut buf = [0u8; 64];
    let n = notify.recv(&mut buf).expect("no sd_notify message");
    assert_eq!(&buf[..n], b"READY=1");
    Served {
        child,
        addr: addr.expect("no portal line"),
        admin: admin.expect("no admin line"),
        pid_file,
        config,
    }
}

/// One sample's value from the server's /metrics page (0 when absent).
fn metric(s: &Served, series: &str) -> f64 {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(s.admin).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut page = String::new();
    c.read_to_string(&mut page).unwrap();
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

fn reload_cmd(s: &Served) -> (bool, String) {
    let out = std::process::Command::new(bin())
        .arg("reload")
        .arg("--pid-file")
        .arg(&s.pid_file)
        .arg("--config")
        .arg(&s.config)
        .args(["--timeout", "20"])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_and_reload_command_on_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let one = target(T1, "", &["0:file:one.img:1MiB"]);
    let mut srv = serve(dir.path(), &one);
    let login = |t: &str| {
        let mut o = ConnectOptions::new(srv.addr, HOST_A, Some(t));
        o.timeout = Duration::from_secs(10);
        o
    };
    let s = Initiator::connect(&login(T1)).await.unwrap();
    let _ = s.test_unit_ready(0).await;
    s.write16(0, 0, &pattern(2, 512), 512, false).await.unwrap();

    // `gentgt reload` with a new target: applied, reported, served.
    std::fs::write(
        &srv.config,
        format!("{one}{}", target(T2, "", &["0:memory:1MiB"])),
    )
    .unwrap();
    let (ok, text) = reload_cmd(&srv);
    assert!(ok, "{text}");
    assert!(text.contains("reloaded") && text.contains(T2), "{text}");
    Initiator::connect(&login(T2)).await.unwrap();

    // Invalid text: the command refuses before signalling anything.
    std::fs::write(&srv.config, "[[target]]\nname = 5\n").unwrap();
    let (ok, text) = reload_cmd(&srv);
    assert!(!ok && text.contains("name"), "{text}");
    // Valid text the server cannot build: rejected by the server, whole.
    let missing = "[[target.lun]]\nid = 1\nbackend = \"file\"\npath = \"gone.img\"\n\
                   size = \"1MiB\"\nread_only = true\n";
    std::fs::write(&srv.config, format!("{one}{missing}")).unwrap();
    let (ok, text) = reload_cmd(&srv);
    assert!(
        !ok && text.contains("rejected") && text.contains("gone.img"),
        "{text}"
    );
    // Counted by result (the text refused before signalling never reached
    // the server); the last one failed.
    let applied = r#"gentgt_config_reloads_total{result="applied"}"#;
    let rejected = r#"gentgt_config_reloads_total{result="rejected"}"#;
    let last_ok = "gentgt_config_last_reload_successful";
    assert_eq!(metric(&srv, applied), 1.0);
    assert_eq!(metric(&srv, rejected), 1.0);
    assert_eq!(metric(&srv, last_ok), 0.0);
    Initiator::connect(&login(T2)).await.unwrap();

    // Plain SIGHUP (what systemd's ExecReload sends): target two goes.
    std::fs::write(&srv.config, &one).unwrap();
    let status = dir.path().join("gentgt.pid.reload");
    let before = std::fs::read_to_string(&status).unwrap();
    let pid = srv.child.id() as i32;
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    let mut after = before.clone();
    for _ in 0..200 {
        after = std::fs::read_to_string(&status).unwrap_or_default();
        if after != before && !after.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        after.contains(" ok ") && after.contains(T2),
        "{before} -> {after}"
    );
    assert!(Initiator::connect(&login(T2)).await.is_err());
    assert_eq!(metric(&srv, applied), 2.0);
    assert_eq!(metric(&srv, last_ok), 1.0);
    // The first session lived through all of it.
    assert_eq!(s.read16(0, 0, 1, 512).await.unwrap(), pattern(2, 512));

    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let code = srv.child.wait().unwrap();
    assert!(code.success(), "{code:?}");
    assert!(!srv.pid_file.exists());
}
