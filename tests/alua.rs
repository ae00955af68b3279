//! ALUA over real TCP: two portals (127.0.0.1 and 127.0.0.2) in two
//! portal groups, each a target port group. The project's initiator logs
//! in through each; SendTargets, the login's TargetPortalGroupTag, VPD 83h
//! and REPORT TARGET PORT GROUPS tell the ports apart; a reload swaps the
//! states (unit attention on every nexus) and standby refuses I/O.

use gentgt::config::{Config, build_registry, rebuild_registry};
use gentgt::initiator::{ConnectOptions, Initiator, Session};
use gentgt::server::{Registry, ReloadRequest, ReloadSummary, Server};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

const T: &str = "iqn.2026-11.dev.gentgt:alua";
const HOST: &str = "iqn.2026-11.dev.gentgt:host";

fn config(state1: &str, state2: &str, tag2: u16) -> String {
    format!(
        "listen = [\"127.0.0.1:0\", \"127.0.0.2:0\"]\n\
         [[portal_group]]\ntag = 1\nportals = [\"127.0.0.1:0\"]\nalua_state = \"{state1}\"\n\
         [[portal_group]]\ntag = {tag2}\nportals = [\"127.0.0.2:0\"]\nalua_state = \"{state2}\"\n\
         [[target]]\nname = \"{T}\"\n[[target.lun]]\nid = 0\nbackend = \"memory\"\nsize = \"1MiB\"\n"
    )
}

struct Harness {
    addrs: Vec<SocketAddr>,
    data: tempfile::TempDir,
    current: (Config, Arc<Registry>),
    tx: mpsc::Sender<ReloadRequest>,
    stop: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<()>,
}

impl Harness {
    async fn start(toml: &str) -> Harness {
        let data = tempfile::tempdir().unwrap();
        let cfg = Config::from_toml(toml, "alua.toml").unwrap();
        let registry = Arc::new(build_registry(&cfg, data.path()).unwrap());
        let server = Server::bind(registry.clone(), &cfg.listen_addrs().unwrap())
            .await
            .unwrap();
        let addrs = server.local_addrs();
        let (tx, rx) = mpsc::channel(1);
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let until = async {
                let _ = stopped.await;
            };
            server.run_with_reloads(until, rx).await.unwrap();
        });
        Harness {
            addrs,
            data,
            current: (cfg, registry),
            tx,
            stop: Some(stop),
            server,
        }
    }

    /// What SIGHUP does: build from the running registry, then hand over.
    async fn reload(&mut self, toml: &str) -> Result<ReloadSummary, String> {
        let (cur, reg) = self.current.clone();
        let next = Config::from_toml(toml, "alua.toml").map_err(|e| e.to_string())?;
        let built =
            rebuild_registry(&cur, &reg, &next, self.data.path()).map_err(|e| e.to_string())?;
        let built = Arc::new(built);
        let (reply, answer) = oneshot::channel();
        let req = ReloadRequest {
            registry: built.clone(),
            max_connections: None,
            reply,
        };
        self.tx.send(req).await.unwrap();
        let summary = answer.await.unwrap();
        self.current = (next, built);
        Ok(summary)
    }

    /// A session through portal `i`, its power-on unit attention taken.
    async fn login(&self, i: usize) -> Session {
        let mut o = ConnectOptions::new(self.addrs[i], HOST, Some(T));
        o.timeout = Duration::from_secs(10);
        let s = Initiator::connect(&o).await.unwrap();
        let _ = s.test_unit_ready(0).await;
        s
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.server.await.unwrap();
    }
}

/// (key, ASC, ASCQ) of TEST UNIT READY, or None for GOOD.
async fn tur(s: &Session) -> Option<(u8, u8, u8)> {
    let r = s.scsi(0, &[0; 6], None, 0).await.unwrap();
    (r.status != 0).then(|| r.sense_code().expect("sense"))
}

async fn read(s: &Session) -> Option<(u8, u8, u8)> {
    let cdb = [0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0];
    let r = s.scsi(0, &cdb, None, 512).await.unwrap();
    (r.status != 0).then(|| r.sense_code().expect("sense"))
}

/// REPORT TARGET PORT GROUPS (extended header): (group id, state, ports).
async fn rtpg(s: &Session) -> Vec<(u16, u8, Vec<u16>)> {
    let cdb = [0xa3, 0x20 | 0x0a, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0];
    let d = s
        .scsi(0, &cdb, None, 1024)
        .await
        .unwrap()
        .good()
        .unwrap()
        .data;
    assert_eq!(d[4], 0x10, "extended header");
    let len = u32::from_be_bytes([d[0], d[1], d[2], d[3]]) as usize;
    assert_eq!(len + 8, d.len());
    let mut at = 8;
    let mut groups = Vec::new();
    while at < d.len() {
        let count = d[at + 7] as usize;
        let ports = (0..count)
            .map(|k| u16::from_be_bytes([d[at + 10 + 4 * k], d[at + 11 + 4 * k]]))
            .collect();
        groups.push((
            u16::from_be_bytes([d[at + 2], d[at + 3]]),
            d[at] & 0x0f,
            ports,
        ));
        at += 8 + 4 * count;
    }
    groups
}

/// The value of VPD 83h designator `kind` with target port association.
async fn port_designator(s: &Session, kind: u8) -> Vec<u8> {
    let d = s.inquiry_vpd(0, 0x83).await.unwrap();
    let mut at = 4;
    while at + 4 <= d.len() {
        let len = d[at + 3] as usize;
        if d[at + 1] & 0x3f == 0x10 | kind {
            return d[at + 4..at + 4 + len].to_vec();
        }
        at += 4 + len;
    }
    panic!("no designator type {kind}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_portal_groups_states_and_reload() {
    let mut h = Harness::start(&config("active/optimized", "standby", 2)).await;

    // Discovery through either portal: both portals, each with its tag.
    let mut o = ConnectOptions::new(h.addrs[1], HOST, None);
    o.timeout = Duration::from_secs(10);
    let disc = Initiator::connect(&o).await.unwrap();
    let targets = disc.send_targets("All").await.unwrap();
    let want = vec![format!("{},1", h.addrs[0]), format!("{},2", h.addrs[1])];
    assert_eq!(targets, vec![(T.to_string(), want)]);
    disc.logout().await.unwrap();

    let (a, b) = (h.login(0).await, h.login(1).await);
    assert_eq!(a.target_declared("TargetPortalGroupTag"), Some("1"));
    assert_eq!(b.target_declared("TargetPortalGroupTag"), Some("2"));
    // One relative target port and one target port group per portal group.
    assert_eq!(port_designator(&a, 4).await, [0, 0, 0, 1]);
    assert_eq!(port_designator(&b, 4).await, [0, 0, 0, 2]);
    assert_eq!(port_designator(&b, 5).await, [0, 0, 0, 2]);
    let groups = vec![(1, 0x0, vec![1]), (2, 0x2, vec![2])];
    assert_eq!(rtpg(&a).await, groups);
    assert_eq!(rtpg(&b).await, groups, "RTPG works in standby");

    // Standby refuses I/O with the right sense; the optimized port serves.
    assert_eq!(tur(&b).await, Some((0x2, 0x04, 0x0b)));
    assert_eq!(read(&b).await, Some((0x2, 0x04, 0x0b)));
    assert_eq!(read(&a).await, None);

    // A reload swaps the states: every nexus sees the unit attention,
    // then port 1 is the standby one.
    let sum = h
        .reload(&config("standby", "active/optimized", 2))
        .await
        .unwrap();
    assert_eq!(sum.alua_changed, [1, 2]);
    assert!(sum.to_string().contains("ALUA state changed"), "{sum}");
    for s in [&a, &b] {
        assert_eq!(tur(s).await, Some((0x6, 0x2a, 0x06)));
    }
    assert_eq!(read(&a).await, Some((0x2, 0x04, 0x0b)));
    assert_eq!(read(&b).await, None);
    assert_eq!(rtpg(&a).await, vec![(1, 0x2, vec![1]), (2, 0x0, vec![2])]);

    // Same states again: nothing changes, no unit attention.
    let sum = h
        .reload(&config("standby", "active/optimized", 2))
        .await
        .unwrap();
    assert!(sum.alua_changed.is_empty());
    assert_eq!(tur(&b).await, None);
    // Regrouping needs a restart: refused whole, the old groups stay.
    let e = h
        .reload(&config("standby", "active/optimized", 3))
        .await
        .unwrap_err();
    assert!(e.contains("needs a restart"), "{e}");
    assert_eq!(b.target_declared("TargetPortalGroupTag"), Some("2"));
    assert_eq!(read(&b).await, None);
    h.stop().await;
}
