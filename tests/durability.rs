//! Acknowledged writes survive SIGKILL of the real `gentgt serve` binary.
//!
//! Writers over several sessions do WRITE (16) with FUA, and plain writes
//! followed by SYNCHRONIZE CACHE, on a file LUN; the test keeps its own
//! record of every block: the last version whose durability was
//! acknowledged (an acknowledged FUA write, or a write acknowledged before
//! a SYNCHRONIZE CACHE that was then acknowledged), and the versions sent
//! after it (acknowledged without a flush, or in flight at the kill). The
//! target is killed with SIGKILL at a random moment, restarted on the same
//! data directory, and every block must hold its durable version or one
//! of the later ones — never an older version, a torn mix, or garbage.
//!
//! What SIGKILL can prove: the page cache survives it, so this checks the
//! target's acknowledgement order (no GOOD status before the write reached
//! the backend, no flush acknowledged before the writes it covers), not
//! behaviour on power loss. `DURABILITY_ROUNDS` sets the rounds (default 6).

mod common;

use common::ServeProcess;
use gentgt::initiator::{ConnectOptions, Initiator, Session};
use rand::{Rng, SeedableRng};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

const TARGET: &str = "iqn.2026-11.dev.gentgt:durable";
const BS: usize = 512;
const SIZE_MIB: u64 = 8;
const BLOCKS: u64 = (SIZE_MIB << 20) / BS as u64;
const SESSIONS: u64 = 4;
const PER_SESSION: u64 = 3;
const WRITERS: u64 = SESSIONS * PER_SESSION;
/// Each writer owns a disjoint run of blocks, so one writer's writes to a
/// block are strictly ordered (one command at a time).
const REGION: u64 = BLOCKS / WRITERS;

fn config() -> String {
    format!(
        r#"listen = ["127.0.0.1:0"]

[[target]]
name = "{TARGET}"

[[target.lun]]
id = 0
backend = "file"
path = "lun0.img"
size = "{SIZE_MIB}MiB"
block_size = {BS}
"#
    )
}

/// `gentgt serve` on this test's configuration, data under `dir`.
fn start_server(dir: &Path) -> ServeProcess {
    let cfg = dir.join("gentgt.toml");
    std::fs::write(&cfg, config()).unwrap();
    ServeProcess::start(&dir.join("data"), Some(&cfg), Stdio::null())
}

/// Block content of `version` (0 = never written: zeros). The block number
/// and version head the block; the rest derives from both, so a torn or
/// misplaced block cannot pass for a valid one.
fn content(block: u64, version: u64) -> [u8; BS] {
    let mut b = [0u8; BS];
    if version == 0 {
        return b;
    }
    b[..8].copy_from_slice(&block.to_le_bytes());
    b[8..16].copy_from_slice(&version.to_le_bytes());
    let mut x = block.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ version;
    for c in b[16..].chunks_exact_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        c.copy_from_slice(&x.to_le_bytes());
    }
    b
}

/// Which version a block holds, if it is a valid one.
fn version_of(block: u64, data: &[u8]) -> Option<u64> {
    if data.iter().all(|&b| b == 0) {
        return Some(0);
    }
    let v = u64::from_le_bytes(data[8..16].try_into().ok()?);
    (content(block, v)[..] == *data).then_some(v)
}

/// The test's record of one block.
#[derive(Clone, Default)]
struct BlockRecord {
    /// Last version acknowledged as durable.
    durable: u64,
    /// Versions sent after it: acknowledged without a flush, or in flight.
    later: Vec<u64>,
    /// Last version acknowledged at all (becomes durable on a flush).
    acked: u64,
}

/// One writer's region and counters.
struct Writer {
    first: u64,
    blocks: Vec<BlockRecord>,
    next_version: u64,
    durable_acks: u64,
}

async fn login(addr: SocketAddr, n: u64) -> Option<Session> {
    let mut o = ConnectOptions::new(addr, &format!("iqn.2026-11.dev.gentgt:w{n}"), Some(TARGET));
    o.timeout = Duration::from_secs(5);
    let s = Initiator::connect(&o).await.ok()?;
    let _ = s.test_unit_ready(0).await;
    Some(s)
}

/// Write until the connection fails (the kill), keeping the record.
async fn write_until_killed(s: Arc<Session>, mut w: Writer, seed: u64) -> Writer {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut since_sync: Vec<usize> = Vec::new();
    loop {
        if rng.gen_ratio(1, 6) && !since_sync.is_empty() {
            // SYNCHRONIZE CACHE: every write acknowledged before it was
            // sent is durable once it is acknowledged.
            if s.sync_cache(0).await.is_err() {
                return w;
            }
            for i in since_sync.drain(..) {
                let r = &mut w.blocks[i];
                r.durable = r.acked;
                r.later.retain(|&v| v > r.acked);
            }
            w.durable_acks += 1;
            continue;
        }
        let n = rng.gen_range(1..=16u64);
        let off = rng.gen_range(0..REGION - n);
        let fua = rng.gen_bool(0.5);
        let version = w.next_version;
        w.next_version += 1;
        let mut data = Vec::with_capacity(n as usize * BS);
        for k in 0..n {
            let blk = w.first + off + k;
            data.extend_from_slice(&content(blk, version));
            w.blocks[(off + k) as usize].later.push(version);
        }
        if s.write16(0, w.first + off, &data, BS as u32, fua)
            .await
            .is_err()
        {
            // In flight at the kill: either version may be on disk.
            return w;
        }
        for k in 0..n {
            let i = (off + k) as usize;
            let r = &mut w.blocks[i];
            r.acked = version;
            if fua {
                r.durable = version;
                r.later.clear();
                since_sync.retain(|&j| j != i);
            } else if !since_sync.contains(&i) {
                since_sync.push(i);
            }
        }
        if fua {
            w.durable_acks += 1;
        }
    }
}

/// Read the whole LUN back and check every block against the record;
/// afterwards the record holds what is really there (durable).
async fn verify(addr: SocketAddr, writers: &mut [Writer]) -> (u64, u64) {
    let s = login(addr, 999).await.expect("login after restart");
    let (mut durable_held, mut later_held) = (0, 0);
    for w in writers.iter_mut() {
        let data = s
            .read16(0, w.first, REGION as u32, BS as u32)
            .await
            .unwrap();
        for (i, r) in w.blocks.iter_mut().enumerate() {
            let blk = w.first + i as u64;
            let got = version_of(blk, &data[i * BS..(i + 1) * BS]);
            let Some(v) = got else {
                panic!("block {blk}: neither a written version nor zeros (torn or garbage)")
            };
            assert!(
                v == r.durable || r.later.contains(&v),
                "block {blk}: holds version {v}, but {} was acknowledged durable \
                 (later versions sent: {:?})",
                r.durable,
                r.later
            );
            if v == r.durable {
                durable_held += 1;
            } else {
                later_held += 1;
            }
            *r = BlockRecord {
                durable: v,
                later: Vec::new(),
                acked: v,
            };
        }
    }
    s.logout().await.unwrap();
    (durable_held, later_held)
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    let rounds: u64 = std::env::var("DURABILITY_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(rand::random());
    let mut writers: Vec<Writer> = (0..WRITERS)
        .map(|i| Writer {
            first: i * REGION,
            blocks: vec![BlockRecord::default(); REGION as usize],
            // Versions unique per block across rounds: writer-disjoint
            // ranges of a shared number space.
            next_version: 1 + (i << 40),
            durable_acks: 0,
        })
        .collect();
    for round in 0..rounds {
        let serve = start_server(dir.path());
        let addr = serve.addr;
        let (held, later) = rt.block_on(verify(addr, &mut writers));
        let t0 = Instant::now();
        let acks_before: u64 = writers.iter().map(|w| w.durable_acks).sum();
        let stop_after = Duration::from_millis(rng.gen_range(300..1500));
        let seed: u64 = rng.r#gen();
        let handles: Vec<_> = rt.block_on(async {
            let mut hs = Vec::new();
            let mut ws = std::mem::take(&mut writers).into_iter();
            for sess in 0..SESSIONS {
                let s = Arc::new(login(addr, sess).await.expect("login"));
                for k in 0..PER_SESSION {
                    let w = ws.next().unwrap();
                    let seed = seed ^ (sess * PER_SESSION + k);
                    hs.push(tokio::spawn(write_until_killed(s.clone(), w, seed)));
                }
            }
            hs
        });
        std::thread::sleep(stop_after);
        drop(serve); // SIGKILL
        writers = rt.block_on(async {
            let mut out = Vec::new();
            for h in handles {
                out.push(
                    tokio::time::timeout(Duration::from_secs(15), h)
                        .await
                        .unwrap()
                        .unwrap(),
                );
            }
            out
        });
        let acks: u64 = writers.iter().map(|w| w.durable_acks).sum::<u64>() - acks_before;
        println!(
            "durability round {round}: start state {held} blocks durable + {later} newer; \
             killed after {:?} with {acks} durability acks this round",
            t0.elapsed()
        );
        assert!(
            acks > 0,
            "round {round}: nothing acknowledged before the kill"
        );
    }
    let serve = start_server(dir.path());
    let (held, later) = rt.block_on(verify(serve.addr, &mut writers));
    println!("durability final: {held} blocks at their durable version, {later} newer");
}
