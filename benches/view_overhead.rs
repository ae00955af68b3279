//! The load and view driver of `benches/view_overhead.sh` (not a test, no
//! harness): against a running target, 4 KiB random writes at `QD` on one
//! session (a single-threaded runtime, like `gentgt bench`) in three states,
//! printing one JSON line per state:
//!
//! - `none`: no view;
//! - `first_touch`: a view just opened, and every write a first touch: each
//!   write goes to a different extent (a random permutation of all
//!   extents, at a random 4 KiB block inside it); when every extent has
//!   been touched the view is released and opened again (not timed);
//! - `kept`: a view whose every extent is kept already (the whole LUN was
//!   written once with the view open), so no write copies anything;
//! - `none_after`: no view again, after releasing it (a second baseline).
//!
//! Before the states the LUN is filled with non-zero data, so every first
//! touch really copies 64 KiB (extents holding zeros stay holes).
//!
//! Usage: `view_overhead PORTAL TARGET SECONDS QD` (LUN 0, initiator
//! `iqn.2026-11.dev.gentgt:backup`). Without arguments (`cargo bench`
//! passes only `--bench`) it explains itself and exits.

use gentgt::initiator::{ConnectOptions, Initiator, Session};
use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

const INITIATOR: &str = "iqn.2026-11.dev.gentgt:backup";
const IO: u64 = 4096;

struct Lun {
    s: Rc<Session>,
    block: u64,
    blocks: u64,
    extent_blocks: u64,
}

fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

fn open_cdb() -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = 0xc0;
    c[1] = 0x06;
    c[2..6].copy_from_slice(&600_000u32.to_be_bytes());
    c
}

fn release_cdb(token: u64) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = 0xc0;
    c[1] = 0x08;
    c[2..10].copy_from_slice(&token.to_be_bytes());
    c
}

impl Lun {
    async fn open(&self) -> u64 {
        let d = self.s.cbt_raw(0, &open_cdb(), 32).await.expect("OPEN VIEW");
        u64::from_be_bytes(d[0..8].try_into().unwrap())
    }

    async fn release(&self, token: u64) {
        self.s
            .cbt_raw(0, &release_cdb(token), 32)
            .await
            .expect("RELEASE VIEW");
    }

    /// VIEW SPACE USED (REPORT TRACKING bytes 72-79).
    async fn used(&self) -> u64 {
        let d = self
            .s
            .cbt_raw(0, &gentgt::initiator::cbt::report_tracking_cdb(), 96)
            .await
            .expect("REPORT TRACKING");
        u64::from_be_bytes(d[72..80].try_into().unwrap())
    }

    /// Write the whole LUN once, 1 MiB at a time, 8 in flight.
    async fn fill(&self, byte: u8) {
        let step = (1u64 << 20) / self.block;
        let next = Rc::new(RefCell::new(0u64));
        let mut lanes = Vec::new();
        for _ in 0..8 {
            let (s, next) = (self.s.clone(), next.clone());
            let (blocks, bs) = (self.blocks, self.block as u32);
            lanes.push(tokio::task::spawn_local(async move {
                let data = vec![byte; (step * u64::from(bs)) as usize];
                loop {
                    let lba = {
                        let mut n = next.borrow_mut();
                        let l = *n;
                        *n += step;
                        l
                    };
                    if lba >= blocks {
                        break;
                    }
                    let n = step.min(blocks - lba) as usize * bs as usize;
                    s.write16(0, lba, &data[..n], bs, false)
                        .await
                        .expect("fill");
                }
            }));
        }
        for l in lanes {
            l.await.unwrap();
        }
    }

    /// `qd` writers for `secs`, LBAs from `pick` (None: stop early).
    /// Returns (ios, elapsed, latencies in ns).
    async fn load(
        &self,
        qd: usize,
        secs: f64,
        pick: Rc<RefCell<dyn FnMut() -> Option<u64>>>,
    ) -> (u64, Duration, Vec<u64>) {
        let until = Instant::now() + Duration::from_secs_f64(secs);
        let start = Instant::now();
        let lat = Rc::new(RefCell::new(Vec::new()));
        let mut lanes = Vec::new();
        for q in 0..qd {
            let (s, pick, lat) = (self.s.clone(), pick.clone(), lat.clone());
            let bs = self.block as u32;
            lanes.push(tokio::task::spawn_local(async move {
                let data = vec![0x5a ^ q as u8; IO as usize];
                while Instant::now() < until {
                    let Some(lba) = (pick.borrow_mut())() else {
                        break;
                    };
                    let t = Instant::now();
                    s.write16(0, lba, &data, bs, false).await.expect("write");
                    lat.borrow_mut().push(t.elapsed().as_nanos() as u64);
                }
            }));
        }
        for l in lanes {
            l.await.unwrap();
        }
        let elapsed = start.elapsed();
        let lat = Rc::try_unwrap(lat).unwrap().into_inner();
        (lat.len() as u64, elapsed, lat)
    }

    fn random_picker(&self, seed: u64) -> Rc<RefCell<dyn FnMut() -> Option<u64>>> {
        let mut x = seed | 1;
        let slots = self.blocks * self.block / IO;
        let per = IO / self.block;
        Rc::new(RefCell::new(move || Some(xorshift(&mut x) % slots * per)))
    }

    /// Each extent once, in random order, at a random 4 KiB inside it.
    fn first_touch_picker(&self, seed: u64) -> Rc<RefCell<dyn FnMut() -> Option<u64>>> {
        let mut x = seed | 1;
        let extents = self.blocks / self.extent_blocks;
        let mut order: Vec<u64> = (0..extents).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, (xorshift(&mut x) % (i as u64 + 1)) as usize);
        }
        let (eb, per) = (self.extent_blocks, IO / self.block);
        let ios_per_extent = eb / per;
        Rc::new(RefCell::new(move || {
            let e = order.pop()?;
            Some(e * eb + xorshift(&mut x) % ios_per_extent * per)
        }))
    }
}

fn quantile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i] as f64 / 1e3
}

fn print(state: &str, ios: u64, elapsed: Duration, mut lat: Vec<u64>, extra: &str) {
    lat.sort_unstable();
    println!(
        "{{\"state\":\"{state}\",\"iops\":{:.1},\"p50_us\":{:.1},\"p99_us\":{:.1},\"p999_us\":{:.1},\"ios\":{ios}{extra}}}",
        ios as f64 / elapsed.as_secs_f64(),
        quantile(&lat, 0.50),
        quantile(&lat, 0.99),
        quantile(&lat, 0.999),
    );
}

async fn run(portal: SocketAddr, target: &str, secs: f64, qd: usize) {
    let mut opts = ConnectOptions::new(portal, INITIATOR, Some(target));
    opts.timeout = Duration::from_secs(60);
    let s = Initiator::connect(&opts).await.expect("login");
    let _ = s.test_unit_ready(0).await;
    let (blocks, block) = s.read_capacity16(0).await.expect("READ CAPACITY");
    let d = s
        .cbt_raw(0, &gentgt::initiator::cbt::report_tracking_cdb(), 96)
        .await
        .expect("REPORT TRACKING");
    let extent_blocks = u64::from(u32::from_be_bytes(d[4..8].try_into().unwrap()));
    let lun = Lun {
        s: Rc::new(s),
        block: u64::from(block),
        blocks,
        extent_blocks,
    };
    lun.fill(0xa5).await;

    // No view (after a warm-up second).
    lun.load(qd, 1.0, lun.random_picker(1)).await;
    let (ios, el, lat) = lun.load(qd, secs, lun.random_picker(2)).await;
    print("none", ios, el, lat, "");

    // Every write a first touch: segments of one permutation each.
    let (mut ios, mut el, mut lat, mut opens) = (0, Duration::ZERO, Vec::new(), 0);
    let mut kept = 0;
    let mut seed = 3;
    while el.as_secs_f64() < secs {
        let token = lun.open().await;
        opens += 1;
        let (n, e, l) = lun
            .load(qd, secs - el.as_secs_f64(), lun.first_touch_picker(seed))
            .await;
        // Each write kept one piece of old data (4 KiB or an extent).
        kept += lun.used().await;
        lun.release(token).await;
        ios += n;
        el += e;
        lat.extend(l);
        seed += 1;
    }
    let extra = format!(
        ",\"opens\":{opens},\"kept_bytes_per_write\":{}",
        kept / ios.max(1)
    );
    print("first_touch", ios, el, lat, &extra);

    // Every extent kept already.
    let token = lun.open().await;
    lun.fill(0x3c).await;
    let used = lun.used().await;
    assert_eq!(used, blocks * lun.block, "the whole LUN should be kept");
    lun.load(qd, 1.0, lun.random_picker(4)).await;
    let (ios, el, lat) = lun.load(qd, secs, lun.random_picker(5)).await;
    assert_eq!(lun.used().await, used);
    lun.release(token).await;
    print("kept", ios, el, lat, &format!(",\"kept_bytes\":{used}"));

    // No view again: the cost is gone with the view, and a second baseline
    // shows how much the machine drifted meanwhile.
    let (ios, el, lat) = lun.load(qd, secs, lun.random_picker(6)).await;
    print("none_after", ios, el, lat, "");
    Rc::try_unwrap(lun.s)
        .unwrap_or_else(|_| panic!("session still shared"))
        .logout()
        .await
        .expect("logout");
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() != 4 {
        eprintln!("view_overhead PORTAL TARGET SECONDS QD: driven by benches/view_overhead.sh");
        return;
    }
    let portal: SocketAddr = args[0].parse().expect("PORTAL");
    let secs: f64 = args[2].parse().expect("SECONDS");
    let qd: usize = args[3].parse().expect("QD");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, run(portal, &args[1], secs, qd));
}
