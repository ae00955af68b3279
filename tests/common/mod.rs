//! A real target for integration tests: started in-process on
//! 127.0.0.1:0 on its own runtime thread, with real backends, so tests can
//! point real clients (libiscsi's tools, qemu-img, our initiator) at it.
#![allow(dead_code)]

pub mod bystander;
pub mod ceph;
pub mod raw;

use gentgt::backend::{Backend, FileBackend, MemoryBackend};
use gentgt::cbt::Tracker;
use gentgt::proto::login::ChapSecrets;
use gentgt::scsi::{DeviceServer, LogicalUnit, LunIdentity};
use gentgt::server::{Registry, Server, ServerStats, TargetEntry, TargetSettings};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::thread::JoinHandle;
use tokio::sync::oneshot;

pub const TARGET: &str = "iqn.2026-11.dev.gentgt:test";
pub const INITIATOR: &str = "iqn.2026-11.dev.gentgt:test-initiator";

/// How to build one test LUN.
pub enum LunSpec<'a> {
    Memory {
        size: u64,
        block_size: u32,
    },
    File {
        path: &'a Path,
        size: u64,
        block_size: u32,
    },
    /// A backend the test built (e.g. one that injects faults or hangs).
    Backend {
        backend: Arc<dyn Backend>,
        block_size: u32,
    },
}

#[derive(Default, Clone)]
pub struct TargetOptions {
    pub chap: Option<ChapSecrets>,
    pub discovery_chap: Option<ChapSecrets>,
    pub allowed: Option<Vec<String>>,
    pub read_only: bool,
    pub settings: Option<TargetSettings>,
    /// Turn on changed-block tracking (volatile) on every LUN with this
    /// extent size in blocks; INITIATOR may then use opcode C0h.
    pub cbt_extent_blocks: Option<u32>,
    /// Serve the admin endpoint (metrics) on 127.0.0.1:0 too.
    pub admin: bool,
    /// Listen on this many 127.0.0.1:0 portals (0 means one).
    pub portals: usize,
    /// Per LUN (by position), the initiators it is mapped for; a LUN past
    /// the end, or `None`, is mapped for everyone.
    pub lun_initiators: Vec<Option<Vec<String>>>,
}

pub struct TestTarget {
    pub addr: SocketAddr,
    /// Every portal bound (`addr` is the first).
    pub addrs: Vec<SocketAddr>,
    /// The admin endpoint, with `TargetOptions::admin`.
    pub admin_addr: Option<SocketAddr>,
    pub name: String,
    /// Live connection/session/task counts of the running server.
    pub stats: Arc<ServerStats>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

fn identity(n: u8) -> LunIdentity {
    let mut naa = [0u8; 16];
    naa[0] = 0x60;
    naa[15] = n;
    LunIdentity {
        serial: format!("TESTSERIAL{n:04}"),
        naa,
    }
}

impl TestTarget {
    pub fn memory(size: u64) -> TestTarget {
        Self::start(
            &[LunSpec::Memory {
                size,
                block_size: 512,
            }],
            TargetOptions::default(),
        )
    }

    pub fn start(luns: &[LunSpec], opts: TargetOptions) -> TestTarget {
        let mut list = Vec::new();
        for (i, spec) in luns.iter().enumerate() {
            let (backend, bs): (Arc<dyn Backend>, u32) = match spec {
                LunSpec::Memory { size, block_size } => {
                    (Arc::new(MemoryBackend::new(*size)), *block_size)
                }
                LunSpec::File {
                    path,
                    size,
                    block_size,
                } => (
                    Arc::new(FileBackend::open(path, *size, true, opts.read_only).unwrap()),
                    *block_size,
                ),
                LunSpec::Backend {
                    backend,
                    block_size,
                } => (backend.clone(), *block_size),
            };
            let mut lu = LogicalUnit::new(backend.clone(), bs, identity(i as u8), opts.read_only);
            if let Some(eb) = opts.cbt_extent_blocks {
                let blocks = backend.size() / u64::from(bs);
                lu = lu.with_tracker(Arc::new(Tracker::volatile(blocks, eb).unwrap()));
                lu.cbt.allowed_initiators = vec![INITIATOR.to_string()];
            }
            lu.visible_to = opts.lun_initiators.get(i).cloned().flatten();
            list.push((i as u64, Arc::new(lu)));
        }
        let mut registry = Registry {
            discovery_chap: opts.discovery_chap.clone(),
            ..Default::default()
        };
        registry.targets.insert(
            TARGET.to_string(),
            TargetEntry {
                name: TARGET.to_string(),
                alias: Some("test".into()),
                allowed_initiators: opts.allowed.clone(),
                chap: opts.chap.clone(),
                device: Arc::new(DeviceServer::new(TARGET, list)),
            },
        );
        let settings = opts.settings.clone().unwrap_or_default();
        Self::serve(registry, settings, opts.admin, TARGET, opts.portals)
    }

    /// A target built from configuration TOML the way `gentgt serve` builds
    /// it (views, per-initiator LUN lists and all), LUN paths relative to
    /// `data_dir`; served in-process on 127.0.0.1:0 (the TOML's `listen` is
    /// ignored), with the admin endpoint when `admin`. `name` is the first
    /// target's name.
    pub fn from_toml(toml: &str, data_dir: &Path, admin: bool) -> TestTarget {
        let cfg = gentgt::config::Config::from_toml(toml, "test config").unwrap();
        let registry = gentgt::config::build_registry(&cfg, data_dir).unwrap();
        let name = cfg
            .targets
            .first()
            .map(|t| t.name.clone())
            .unwrap_or_else(|| gentgt::config::DEFAULT_TARGET.to_string());
        Self::serve(registry, cfg.transport_settings(), admin, &name, 1)
    }

    /// Serve `registry` in-process on `portals` portals 127.0.0.1:0 on its
    /// own runtime thread.
    pub fn serve(
        registry: Registry,
        settings: TargetSettings,
        admin: bool,
        name: &str,
        portals: usize,
    ) -> TestTarget {
        let registry = Arc::new(registry);
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let listens = vec!["127.0.0.1:0".parse().unwrap(); portals.max(1)];
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let server = Server::bind(registry, &listens)
                    .await
                    .unwrap()
                    .with_settings(settings);
                let server = match admin {
                    true => server
                        .bind_admin("127.0.0.1:0".parse().unwrap())
                        .await
                        .unwrap(),
                    false => server,
                };
                addr_tx
                    .send((server.local_addrs(), server.admin_addr(), server.stats()))
                    .unwrap();
                server
                    .run(async {
                        let _ = stop_rx.await;
                    })
                    .await
                    .unwrap();
            });
        });
        let (addrs, admin_addr, stats) = addr_rx.recv().unwrap();
        TestTarget {
            addr: addrs[0],
            addrs,
            admin_addr,
            stats,
            name: name.to_string(),
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// iscsi://127.0.0.1:PORT/TARGET/LUN
    pub fn url(&self, lun: u32) -> String {
        format!("iscsi://{}/{}/{}", self.addr, self.name, lun)
    }

    pub fn portal_url(&self) -> String {
        format!("iscsi://{}", self.addr)
    }

    /// Stop the target and wait for it (graceful shutdown path).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for TestTarget {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Whether a client program is installed; tests that need it fail loudly
/// rather than skip, because CI installs it.
pub fn require_tool(name: &str) {
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(ok, "{name} is not installed (CI installs it: see .ci/run)");
}

/// Run a command with a timeout, returning (success, stdout, stderr).
pub fn run(cmd: &mut Command, secs: u64) -> (bool, String, String) {
    let out = Command::new("timeout")
        .arg(secs.to_string())
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .envs(cmd.get_envs().filter_map(|(k, v)| v.map(|v| (k, v))))
        .output()
        .expect("spawn");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A `gentgt serve` child process on 127.0.0.1:0 and the portal it
/// printed; killed (SIGKILL) and reaped when dropped.
pub struct ServeProcess {
    pub child: Child,
    pub addr: SocketAddr,
}

impl ServeProcess {
    /// `gentgt serve --listen 127.0.0.1:0 --data-dir DATA_DIR`, with
    /// `--config CONFIG` when given, its stderr to `stderr`; returns once
    /// the portal line is printed (panics after 30 s without one).
    pub fn start(data_dir: &Path, config: Option<&Path>, stderr: Stdio) -> ServeProcess {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_gentgt"));
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir);
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn gentgt");
        let addr = wait_for_portal(&mut child, std::time::Duration::from_secs(30));
        let addr = addr.unwrap_or_else(|| {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "no portal line from gentgt serve (data dir {})",
                data_dir.display()
            )
        });
        ServeProcess { child, addr }
    }

    /// `gentgt serve` on configuration `toml` (written to
    /// `dir/gentgt.toml`), data in `dir/data`, stderr appended to
    /// `dir/stderr.log` (so restarts keep one log).
    pub fn start_in(dir: &Path, toml: &str) -> ServeProcess {
        let cfg = dir.join("gentgt.toml");
        std::fs::write(&cfg, toml).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("stderr.log"))
            .unwrap();
        ServeProcess::start(&dir.join("data"), Some(&cfg), log.into())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Send `sig` to the server.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid; no memory involved.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Wait (bounded) for the process to end.
    pub fn wait_exit(&mut self, limit: std::time::Duration) -> std::process::ExitStatus {
        let until = std::time::Instant::now() + limit;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                std::time::Instant::now() < until,
                "gentgt did not exit within {limit:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The portal a spawned `gentgt serve` (stdout piped) prints once it is
/// ready, or `None` if none comes `within`. Its stdout keeps being drained
/// afterwards so the child never blocks writing to it.
pub fn wait_for_portal(child: &mut Child, within: std::time::Duration) -> Option<SocketAddr> {
    use std::io::{BufRead, BufReader};
    let out = child.stdout.take().expect("stdout piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Some(p) = line.trim().strip_prefix("portal") {
                let _ = tx.send(p.trim().to_string());
            }
        }
    });
    rx.recv_timeout(within).ok()?.parse().ok()
}

/// `gentgt ARGS` run to completion: (success, stdout + stderr).
pub fn gentgt_cli(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_gentgt"))
        .args(args)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}
