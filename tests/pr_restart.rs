//! APTPL across a restart: a registry built from a config with a file LUN,
//! a registration and reservation made through our own initiator with
//! APTPL=1, the server stopped, a new one built on the same data
//! directory: READ KEYS and READ RESERVATION still show them, and the
//! reservation is enforced again.

use gentgt::config::{Config, build_registry};
use gentgt::initiator::{ConnectOptions, Initiator, Session};
use gentgt::server::Server;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const TARGET: &str = "iqn.2026-11.dev.gentgt:pr";
const HOST_A: &str = "iqn.2026-11.dev.gentgt:host-a";
const HOST_B: &str = "iqn.2026-11.dev.gentgt:host-b";
const RESERVATION_CONFLICT: u8 = 0x18;

fn config() -> Config {
    let text = format!(
        "[[target]]\nname = \"{TARGET}\"\n[[target.lun]]\nid = 0\nbackend = \"file\"\n\
         path = \"lun0.img\"\nsize = \"1MiB\"\n"
    );
    Config::from_toml(&text, "pr.toml").unwrap()
}

async fn start(data: &Path) -> (SocketAddr, oneshot::Sender<()>, JoinHandle<()>) {
    let registry = Arc::new(build_registry(&config(), data).unwrap());
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

async fn login(addr: SocketAddr, name: &str, isid: [u8; 6]) -> Session {
    let mut o = ConnectOptions::new(addr, name, Some(TARGET));
    o.isid = isid;
    o.timeout = Duration::from_secs(20);
    let s = Initiator::connect(&o).await.expect("login");
    let _ = s.test_unit_ready(0).await; // power-on unit attention
    s
}

fn prout_cdb(sa: u8, ty: u8) -> [u8; 10] {
    [0x5f, sa, ty, 0, 0, 0, 0, 0, 24, 0]
}

fn params(key: u64, sa_key: u64, flags: u8) -> Vec<u8> {
    let mut p = key.to_be_bytes().to_vec();
    p.extend_from_slice(&sa_key.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 0, flags, 0, 0, 0]);
    p
}

async fn prin(s: &Session, sa: u8) -> Vec<u8> {
    let cdb = [0x5e, sa, 0, 0, 0, 0, 0, 0x10, 0, 0];
    s.scsi(0, &cdb, None, 4096)
        .await
        .unwrap()
        .good()
        .unwrap()
        .data
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aptpl_registration_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let isid = [0x80, 1, 2, 3, 0, 0];
    let key = 0x0123_4567_89ab_cdefu64;

    let (addr, stop, h) = start(dir.path()).await;
    let a = login(addr, HOST_A, isid).await;
    let caps = prin(&a, 2).await;
    assert_eq!(caps[2] & 1, 1, "PTPL_C for a file LUN");
    a.scsi(0, &prout_cdb(0, 0), Some(&params(0, key, 0x01)), 0)
        .await
        .unwrap()
        .good()
        .unwrap();
    // RESERVE, Write Exclusive.
    a.scsi(0, &prout_cdb(1, 1), Some(&params(key, 0, 0)), 0)
        .await
        .unwrap()
        .good()
        .unwrap();
    a.logout().await.unwrap();
    stop.send(()).unwrap();
    h.await.unwrap();
    assert!(dir.path().join("lun0.img.pr").exists());

    let (addr, stop, h) = start(dir.path()).await;
    let b = login(addr, HOST_B, isid).await;
    let keys = prin(&b, 0).await;
    assert_eq!(u32::from_be_bytes(keys[4..8].try_into().unwrap()), 8);
    assert_eq!(u64::from_be_bytes(keys[8..16].try_into().unwrap()), key);
    let res = prin(&b, 1).await;
    assert_eq!(u64::from_be_bytes(res[8..16].try_into().unwrap()), key);
    assert_eq!(res[21], 1);
    // Host B may not write; host A (same ISID, so the same I_T nexus)
    // still holds the reservation.
    let w = b.scsi(0, &[0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0], Some(&[0u8; 512]), 0);
    assert_eq!(w.await.unwrap().status, RESERVATION_CONFLICT);
    let a = login(addr, HOST_A, isid).await;
    let w = a.scsi(0, &[0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0], Some(&[0u8; 512]), 0);
    assert_eq!(w.await.unwrap().status, 0);
    a.logout().await.unwrap();
    b.logout().await.unwrap();
    stop.send(()).unwrap();
    h.await.unwrap();
}
