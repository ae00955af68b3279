//! A target built from a config whose LUNs use `io = "uring"` and
//! `direct = true` (512- and 4096-byte blocks), on the real disk under
//! target/: concurrent writes of many sizes (some FUA) through our
//! initiator, read back and verified; then the target restarts with the
//! default buffered backend on the same data directory and sees the same
//! bytes. libiscsi's data-path conformance tests run against it too.

mod common;

use gentgt::config::{Config, build_registry};
use gentgt::initiator::{ConnectOptions, Initiator, Session};
use gentgt::server::Server;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const TARGET: &str = "iqn.2026-11.dev.gentgt:uring";
const SIZE: u64 = 16 << 20;
/// (LUN, block size).
const LUNS: [(u64, u32); 2] = [(0, 512), (1, 4096)];

fn config(io: &str) -> Config {
    let mut text = format!("[[target]]\nname = \"{TARGET}\"\n");
    for (id, bs) in LUNS {
        text += &format!(
            "[[target.lun]]\nid = {id}\nbackend = \"file\"\npath = \"lun{id}.img\"\n\
             size = {SIZE}\nblock_size = {bs}\ntracking = \"off\"\n{io}\n"
        );
    }
    Config::from_toml(&text, "uring.toml").unwrap()
}

async fn start(cfg: &Config, data: &Path) -> (SocketAddr, oneshot::Sender<()>, JoinHandle<()>) {
    let registry = Arc::new(build_registry(cfg, data).unwrap());
    let server = Server::bind(registry, &["127.0.0.1:0".parse().unwrap()])
        .await
        .unwrap();
    let addr = server.local_addrs()[0];
    let (tx, rx) = oneshot::channel::<()>();
    let h = tokio::spawn(async move {
        server
            .run(async {
                let _ = rx.await;
            })
            .await
            .unwrap();
    });
    (addr, tx, h)
}

async fn login(addr: SocketAddr) -> Session {
    let mut o = ConnectOptions::new(addr, common::INITIATOR, Some(TARGET));
    o.timeout = Duration::from_secs(30);
    let s = Initiator::connect(&o).await.expect("login");
    let _ = s.test_unit_ready(0).await; // power-on unit attention
    let _ = s.test_unit_ready(1).await;
    s
}

/// Each task owns one slice of the LUN and writes random extents of it
/// (1 block .. 1 MiB), keeping a model; the model is the expected image.
async fn write_concurrently(s: Arc<Session>, lun: u64, bs: u32) -> Vec<u8> {
    const TASKS: u64 = 4;
    let slice = SIZE / TASKS;
    let mut handles = Vec::new();
    for t in 0..TASKS {
        let s = s.clone();
        handles.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(lun * 10 + t);
            let mut model = vec![0u8; slice as usize];
            let blocks_in_slice = slice / u64::from(bs);
            for _ in 0..24 {
                let max = (1 << 20) / bs;
                let n = rng.gen_range(1..=max.min(blocks_in_slice as u32));
                let first = rng.gen_range(0..=blocks_in_slice - u64::from(n));
                let mut data = vec![0u8; (n * bs) as usize];
                rng.fill(&mut data[..]);
                let lba = t * blocks_in_slice + first;
                s.write16(lun, lba, &data, bs, rng.gen_bool(0.25))
                    .await
                    .unwrap();
                let at = (first * u64::from(bs)) as usize;
                model[at..at + data.len()].copy_from_slice(&data);
                // Read back part of what was just written.
                let back = s.read16(lun, lba, n.min(8), bs).await.unwrap();
                assert!(back[..] == data[..back.len()], "LUN {lun} lba {lba}");
            }
            model
        }));
    }
    let mut image = Vec::new();
    for h in handles {
        image.extend(h.await.unwrap());
    }
    image
}

async fn read_all(s: &Session, lun: u64, bs: u32) -> Vec<u8> {
    let mut out = Vec::new();
    let step = (1 << 20) / bs;
    let total = SIZE / u64::from(bs);
    let mut lba = 0;
    while lba < total {
        out.extend(s.read16(lun, lba, step, bs).await.unwrap());
        lba += u64::from(step);
    }
    out
}

fn data_dir() -> tempfile::TempDir {
    let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
    tempfile::tempdir_in(base).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_uring_luns_serve_and_persist() {
    let dir = data_dir();
    let cfg = config("io = \"uring\"\ndirect = true");
    let (addr, stop, h) = start(&cfg, dir.path()).await;
    let s = Arc::new(login(addr).await);
    let mut images = Vec::new();
    for (lun, bs) in LUNS {
        let image = write_concurrently(s.clone(), lun, bs).await;
        s.sync_cache(lun).await.unwrap();
        assert!(
            read_all(&s, lun, bs).await == image,
            "LUN {lun} after writes"
        );
        images.push(image);
    }
    drop(s);
    stop.send(()).unwrap();
    h.await.unwrap();

    // Restart on the same files with the plain buffered backend.
    let (addr, stop, h) = start(&config(""), dir.path()).await;
    let s = login(addr).await;
    for ((lun, bs), image) in LUNS.iter().zip(&images) {
        assert!(
            read_all(&s, *lun, *bs).await == *image,
            "LUN {lun} after restart"
        );
    }
    drop(s);
    stop.send(()).unwrap();
    h.await.unwrap();
}

/// libiscsi's conformance tests for the data path, against both direct
/// LUNs (one iscsi-test-cu process per test, as conformance/run does:
/// libiscsi 1.19 leaks PDU hooks between tests sharing a process).
#[test]
fn libiscsi_data_path_tests_pass_on_direct_uring_luns() {
    common::require_tool("iscsi-test-cu");
    let dir = data_dir();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cfg = config("io = \"uring\"\ndirect = true");
    let (addr, stop, h) = rt.block_on(start(&cfg, dir.path()));
    let tests = [
        "ALL.Read16.Simple",
        "ALL.Write16.Simple",
        "ALL.Write16.DpoFua",
        "ALL.WriteSame16.Unmap",
        "ALL.WriteSame16.Check",
        "ALL.Unmap.Simple",
    ];
    for (lun, _) in LUNS {
        let url = format!("iscsi://{addr}/{TARGET}/{lun}");
        for test in tests {
            let (ok, out, err) = common::run(
                std::process::Command::new("iscsi-test-cu")
                    .args(["-d", "-i", common::INITIATOR, "-t", test])
                    .arg(&url),
                120,
            );
            let passed = out.contains("asserts") && !out.contains("FAILED");
            assert!(ok && passed, "LUN {lun} {test}:\n{out}\n{err}");
            assert!(
                !out.contains("[SKIPPED]"),
                "LUN {lun} {test} skipped:\n{out}"
            );
        }
    }
    stop.send(()).unwrap();
    rt.block_on(h).unwrap();
}
