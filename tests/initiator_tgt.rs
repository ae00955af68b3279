//! End-to-end checks of the initiator against Debian's tgt (tgtd), the
//! user-space reference target. Each test starts its own tgtd on a free
//! 127.0.0.1 port with its own control socket; a guard kills it on drop.
//! tgt (Debian package `tgt`) is installed by .ci/run; without it these
//! tests fail rather than pass silently.

use gentgt::initiator::{ConnectOptions, Initiator, InitiatorError, Session, tmf};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TGTD: &str = "/usr/sbin/tgtd";
const TGTADM: &str = "/usr/sbin/tgtadm";
const IQN: &str = "iqn.2026-01.dev.gentgt:tgt-test";
const INITIATOR: &str = "iqn.2026-01.dev.gentgt:initiator";
const LU_BYTES: u64 = 16 * 1024 * 1024;

/// A running tgtd with one target (tid 1, LUN 1 on a sparse file).
struct Tgtd {
    child: Child,
    port: u16,
    ctl: u16,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    l.local_addr().unwrap().port()
}

/// tgtd's control socket is /var/run/tgtd/socket.<id>, with id below
/// 32768 and shared by every tgtd on the machine: pick one nobody uses.
fn unused_control_id() -> u16 {
    let seed = std::process::id() as u64 ^ Instant::now().elapsed().as_nanos() as u64;
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(free_port() as u64);
    loop {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let id = 1000 + (x >> 33) as u16 % 31000;
        let base = format!("/var/run/tgtd/socket.{id}");
        if !Path::new(&base).exists() && !Path::new(&format!("{base}.lock")).exists() {
            return id;
        }
    }
}

impl Tgtd {
    /// None when tgtd is not installed.
    fn start() -> Option<Tgtd> {
        assert!(
            Path::new(TGTD).exists() && Path::new(TGTADM).exists(),
            "tgtd is not installed (apt-get install tgt; .ci/run does)"
        );
        std::fs::create_dir_all("/var/run/tgtd").expect("tgtd needs /var/run/tgtd");
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("lu1.img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(LU_BYTES)
            .unwrap();
        let port = free_port();
        let ctl = unused_control_id();
        let child = Command::new(TGTD)
            .args(["-f", "-C", &ctl.to_string(), "--iscsi"])
            .arg(format!("portal=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn tgtd");
        let mut t = Tgtd {
            child,
            port,
            ctl,
            _dir: dir,
        };
        t.wait_ready();
        t.adm(&["--op", "new", "--mode", "target", "--tid", "1", "-T", IQN]);
        let b = img.to_str().unwrap().to_string();
        t.adm(&[
            "--op",
            "new",
            "--mode",
            "logicalunit",
            "--tid",
            "1",
            "--lun",
            "1",
            "-b",
            &b,
        ]);
        t.adm(&[
            "--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL",
        ]);
        Some(t)
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            // Never talk to a control socket that is not our daemon's.
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("tgtd exited early: {st}");
            }
            let ctl_ok = self.try_adm(&["--op", "show", "--mode", "target"]);
            if ctl_ok && TcpStream::connect(self.addr()).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("tgtd did not come up on port {}", self.port);
    }

    fn try_adm(&self, args: &[&str]) -> bool {
        Command::new(TGTADM)
            .args(["-C", &self.ctl.to_string(), "--lld", "iscsi"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    fn adm(&self, args: &[&str]) {
        assert!(self.try_adm(args), "tgtadm {args:?} failed");
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn opts(&self) -> ConnectOptions {
        let mut o = ConnectOptions::new(self.addr(), INITIATOR, Some(IQN));
        o.timeout = Duration::from_secs(10);
        o
    }

    fn socket_paths(&self) -> [PathBuf; 2] {
        let base = format!("/var/run/tgtd/socket.{}", self.ctl);
        [PathBuf::from(&base), PathBuf::from(format!("{base}.lock"))]
    }
}

impl Drop for Tgtd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for p in self.socket_paths() {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0] ^ seed)
        .collect()
}

/// A new I_T nexus starts with a unit attention (power on / reset); TEST
/// UNIT READY consumes it. Anything but GOOD or a unit attention fails.
async fn clear_unit_attention(s: &Session) {
    for _ in 0..4 {
        match s.test_unit_ready(1).await {
            Ok(()) => return,
            Err(e) if e.sense_code().map(|c| c.0) == Some(6) => continue,
            Err(e) => panic!("TEST UNIT READY: {e}"),
        }
    }
    panic!("unit attention does not clear");
}

/// Write, read back and compare, with several reads in flight at once.
async fn exercise_io(s: &Session) {
    let (blocks, bs) = s.read_capacity16(1).await.unwrap();
    assert_eq!(bs, 512);
    assert_eq!(blocks * bs as u64, LU_BYTES);
    // 1 MiB: bigger than FirstBurstLength, so R2Ts must be answered.
    let data = pattern(1024 * 1024, 0x5a);
    s.write16(1, 64, &data, bs, false).await.unwrap();
    let back = s
        .read16(1, 64, (data.len() / 512) as u32, bs)
        .await
        .unwrap();
    assert!(back == data, "read back differs from what was written");
    // Small write carried entirely as immediate/unsolicited data.
    let small = pattern(4096, 0x11);
    s.write16(1, 8, &small, bs, true).await.unwrap();
    let (a, b, c) = tokio::join!(
        s.read16(1, 8, 8, bs),
        s.read16(1, 64, 16, bs),
        s.read16(1, 64 + 1024, 512, bs),
    );
    // Compare without printing megabytes on failure.
    assert!(a.unwrap() == small, "small write differs");
    assert!(b.unwrap() == data[..8192], "head of big write differs");
    assert!(c.unwrap() == data[512 * 1024..768 * 1024], "middle differs");
}

#[tokio::test]
async fn login_inquiry_write_read_logout() {
    let Some(t) = Tgtd::start() else { return };
    let s = Initiator::connect(&t.opts()).await.unwrap();
    assert_ne!(s.tsih(), 0);
    clear_unit_attention(&s).await;
    let inq = s.inquiry(1).await.unwrap();
    assert_eq!(inq[0] & 0x1f, 0, "LUN 1 is a disk");
    assert!(inq.len() >= 36);
    let luns = s.report_luns().await.unwrap();
    assert!(luns.contains(&1), "REPORT LUNS {luns:?}");
    exercise_io(&s).await;
    s.sync_cache(1).await.unwrap();
    s.nop().await.unwrap();
    assert_eq!(
        s.task_mgmt(tmf::LOGICAL_UNIT_RESET, 1, 0xffff_ffff)
            .await
            .unwrap(),
        0
    );
    // After the reset tgt reports a unit attention; TEST UNIT READY says so.
    match s.test_unit_ready(1).await {
        Err(e @ InitiatorError::ScsiCheck { .. }) => {
            assert_eq!(e.sense_code().map(|c| c.0), Some(6), "unit attention");
        }
        other => panic!("expected unit attention, got {other:?}"),
    }
    s.test_unit_ready(1).await.unwrap();
    s.logout().await.unwrap();
}

#[tokio::test]
async fn digests_and_solicited_only_writes() {
    let Some(t) = Tgtd::start() else { return };
    // tgt offers no digests unless the target is configured for them.
    for key in ["HeaderDigest", "DataDigest"] {
        t.adm(&[
            "--op", "update", "--mode", "target", "--tid", "1", "--name", key, "--value", "CRC32C",
        ]);
    }
    let mut o = t.opts();
    o.header_digest = true;
    o.data_digest = true;
    o.immediate_data = false;
    o.initial_r2t = true;
    o.max_recv_dsl = 16 * 1024;
    let s = Initiator::connect(&o).await.unwrap();
    assert!(s.params().header_digest && s.params().data_digest);
    assert!(!s.params().immediate_data && s.params().initial_r2t);
    clear_unit_attention(&s).await;
    exercise_io(&s).await;
    s.logout().await.unwrap();
}

#[tokio::test]
async fn discovery_send_targets() {
    let Some(t) = Tgtd::start() else { return };
    let mut o = t.opts();
    o.target_name = None;
    let s = Initiator::connect(&o).await.unwrap();
    let targets = s.send_targets("All").await.unwrap();
    let (name, addrs) = targets
        .iter()
        .find(|(n, _)| n == IQN)
        .unwrap_or_else(|| panic!("{IQN} not in {targets:?}"));
    assert_eq!(name, IQN);
    assert!(
        addrs.iter().any(|a| a.contains(&t.port.to_string())),
        "addresses {addrs:?}"
    );
    s.logout().await.unwrap();
}

#[tokio::test]
async fn chap_and_mutual_chap() {
    let Some(t) = Tgtd::start() else { return };
    t.adm(&[
        "--op",
        "new",
        "--mode",
        "account",
        "--user",
        "alice",
        "--password",
        "alice-secret",
    ]);
    t.adm(&[
        "--op", "bind", "--mode", "account", "--tid", "1", "--user", "alice",
    ]);
    // Without credentials the target refuses (initiator error class 2).
    match Initiator::connect(&t.opts()).await {
        Err(InitiatorError::LoginFailed { class: 2, .. }) => {}
        other => panic!(
            "expected an authentication failure, got {:?}",
            other.map(|_| ())
        ),
    }
    let mut o = t.opts();
    o.chap = Some(("alice".into(), "wrong-secret".into()));
    assert!(matches!(
        Initiator::connect(&o).await,
        Err(InitiatorError::LoginFailed { class: 2, .. })
    ));
    o.chap = Some(("alice".into(), "alice-secret".into()));
    let s = Initiator::connect(&o).await.unwrap();
    clear_unit_attention(&s).await;
    s.logout().await.unwrap();

    t.adm(&[
        "--op",
        "new",
        "--mode",
        "account",
        "--user",
        "tgtuser",
        "--password",
        "target-secret",
    ]);
    t.adm(&[
        "--op",
        "bind",
        "--mode",
        "account",
        "--tid",
        "1",
        "--user",
        "tgtuser",
        "--outgoing",
    ]);
    o.mutual_chap = Some(("tgtuser".into(), "target-secret".into()));
    let s = Initiator::connect(&o).await.unwrap();
    s.inquiry(1).await.unwrap();
    s.logout().await.unwrap();
    o.mutual_chap = Some(("tgtuser".into(), "not-the-secret".into()));
    assert!(matches!(
        Initiator::connect(&o).await,
        Err(InitiatorError::AuthFailed(_))
    ));
}

#[tokio::test]
async fn raw_pdu_escape_hatch() {
    use gentgt::proto::{Opcode, Pdu};
    let Some(t) = Tgtd::start() else { return };
    let s = Initiator::connect(&t.opts()).await.unwrap();
    // A hand-built NOP-Out with our own ITT comes back on the raw queue.
    let itt = s.alloc_itt();
    let mut p = Pdu::new(Opcode::NopOut).with_data(b"raw".to_vec());
    p.bhs.set_immediate(true);
    p.bhs.set_final(true);
    p.bhs.set_itt(itt);
    p.bhs.set_ttt(0xffff_ffff);
    s.send_raw_command(p).await.unwrap();
    let r = s.recv_raw().await.unwrap();
    assert_eq!(r.opcode(), Opcode::NopIn);
    assert_eq!(r.bhs.itt(), itt);
    assert_eq!(r.data, b"raw");
    // The session still works for ordinary commands afterwards.
    clear_unit_attention(&s).await;
    s.logout().await.unwrap();
}
