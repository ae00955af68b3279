//! GET CHANGED EXTENTS cost and tracker memory (issue 4), as a plain
//! benchmark: `cargo bench --bench cbt_query`. No timed assertions: it
//! prints medians and the goals, and a reader compares.
//!
//! The LUN is 1 TiB of 512-byte blocks with 64 KiB extents (16 Mi extents).
//! "Changed" extents are distinct and scattered uniformly at random
//! (fixed seed, so every run sees the same layout).
//!
//! Memory is measured in child processes (this binary re-run with
//! `CBT_BENCH_MEM=<case>`), so memory freed by an earlier case cannot hide
//! the allocations of a later one: resident set size before and after
//! stamping, from /proc/self/statm.

use gentgt::backend::{Backend, MemoryBackend};
use gentgt::cbt::{ChangeKind, Tracker};
use gentgt::initiator::cbt::get_changed_extents_cdb;
use gentgt::scsi::{DeviceServer, LogicalUnit, LunIdentity, Nexus, ScsiCommand};
use rand::rngs::StdRng;
use rand::seq::index::sample;
use rand::{Rng, SeedableRng};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BLOCK: u32 = 512;
const LUN_BYTES: u64 = 1 << 40;
const CAPACITY: u64 = LUN_BYTES / BLOCK as u64;
/// 64 KiB of 512-byte blocks.
const EXTENT_BLOCKS: u32 = 128;
const EXTENTS: u64 = CAPACITY / EXTENT_BLOCKS as u64;
/// 0.1 % of the extents.
const CHANGED: usize = (EXTENTS / 1000) as usize;
/// Generations the 0.1 % are spread over before the "recent" one.
const HISTORY_GENS: u64 = 10;
/// Extents changed in the most recent generation (0.001 % of the LUN).
const RECENT: usize = (EXTENTS / 100_000) as usize;
/// Repetitions of each timed case; the median is reported.
const RUNS: usize = 21;
const HEADER_LEN: usize = 48;
const DESCRIPTOR_LEN: usize = 24;
const INITIATOR: &str = "iqn.2026-11.dev.gentgt:bench";

fn main() {
    if let Ok(case) = std::env::var("CBT_BENCH_MEM") {
        memory_child(&case);
        return;
    }
    if std::env::var_os("CBT_BENCH_PROFILE").is_some() {
        // For a profiler (callgrind): only the SINCE=0 query, a few times.
        let (t, _) = populated_tracker();
        let max_desc = ((1 << 20) - HEADER_LEN) / DESCRIPTOR_LEN;
        for _ in 0..5 {
            std::hint::black_box(tracker_query(&t, 0, max_desc));
        }
        return;
    }
    // `cargo bench` passes --bench; a filter argument is not supported.
    println!("CBT query benchmark: 1 TiB LUN, 512-byte blocks, 64 KiB extents");
    println!("({EXTENTS} extents; {CHANGED} changed = 0.1 %; {RUNS} runs per case, median)");
    queries();
    println!();
    memory();
}

/// Stamp `extents` (extent numbers) as written under the open generation.
fn stamp(t: &Tracker, extents: impl IntoIterator<Item = u64>) {
    let eb = u64::from(EXTENT_BLOCKS);
    for x in extents {
        let guard = t.begin_change(x * eb, eb, ChangeKind::Write);
        drop(guard.expect("stamp within capacity"));
    }
}

/// A tracker holding the 0.1 % over generations 1..=HISTORY_GENS, then
/// RECENT extents in one more generation; returns (tracker, recent SINCE).
fn populated_tracker() -> (Arc<Tracker>, u64) {
    let t = Arc::new(Tracker::volatile(CAPACITY, EXTENT_BLOCKS).expect("tracker"));
    let mut rng = StdRng::seed_from_u64(4);
    let changed = sample(&mut rng, EXTENTS as usize, CHANGED).into_vec();
    let per_gen = CHANGED.div_ceil(HISTORY_GENS as usize);
    for part in changed.chunks(per_gen) {
        stamp(&t, part.iter().map(|&x| x as u64));
        t.close().expect("close");
    }
    let recent_since = t.open_generation() - 1;
    stamp(&t, (0..RECENT).map(|_| rng.gen_range(0..EXTENTS)));
    t.close().expect("close");
    (t, recent_since)
}

fn device_server(t: Arc<Tracker>) -> DeviceServer {
    // The memory backend is sparse: nothing is written, nothing allocated
    // beyond its chunk table.
    let backend: Arc<dyn Backend> = Arc::new(MemoryBackend::new(LUN_BYTES));
    let identity = LunIdentity {
        serial: "BENCH0001".into(),
        naa: [0x60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
    };
    let mut lu = LogicalUnit::new(backend, BLOCK, identity, false).with_tracker(t);
    lu.cbt.allowed_initiators = vec![INITIATOR.into()];
    DeviceServer::new("iqn.2026-11.dev.gentgt:bench", vec![(0, Arc::new(lu))])
}

fn queries() {
    let build = Instant::now();
    let (t, recent) = populated_tracker();
    println!(
        "map built in {:.1} s; open generation {}",
        build.elapsed().as_secs_f64(),
        t.open_generation()
    );
    let srv = device_server(t.clone());
    let nexus = Nexus {
        id: 1,
        initiator_port: format!("{INITIATOR},i,0x1"),
        initiator_name: INITIATOR.into(),
        relative_port: 1,
    };
    println!();
    println!(
        "{:<44} {:>6} {:>6} {:>10} {:>10} {:>10}",
        "case (whole paged query until COMPLETE)", "pages", "descs", "median", "min", "max"
    );
    for (alloc, alloc_name) in [(1u32 << 20, "1 MiB"), (64 << 10, "64 KiB")] {
        for (since, since_name) in [
            (0, "SINCE=0".to_string()),
            (recent, format!("SINCE={recent}")),
        ] {
            let max_desc = (alloc as usize - HEADER_LEN) / DESCRIPTOR_LEN;
            let label = format!("tracker  {since_name:<9} pages of {alloc_name}");
            time_case(&label, || tracker_query(&t, since, max_desc));
            let label = format!("SCSI C0h {since_name:<9} alloc {alloc_name}");
            time_case(&label, || scsi_query(&srv, &nexus, since, alloc));
        }
    }
    println!("goal: <= 5 ms for the whole query. \"tracker\" is Tracker::changed_extents");
    println!("(walk + descriptors); \"SCSI C0h\" is DeviceServer::execute of the CDB");
    println!("(checks, walk, wire encoding, reply buffer): the difference is encoding.");
}

/// Run `f` RUNS times (after one warm-up) and print the median.
fn time_case(label: &str, mut f: impl FnMut() -> (usize, usize)) {
    let (pages, descs) = f();
    let mut times: Vec<Duration> = (0..RUNS)
        .map(|_| {
            let start = Instant::now();
            std::hint::black_box(f());
            start.elapsed()
        })
        .collect();
    times.sort();
    println!(
        "{label:<44} {pages:>6} {descs:>6} {:>10} {:>10} {:>10}",
        ms(times[RUNS / 2]),
        ms(times[0]),
        ms(times[RUNS - 1])
    );
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

/// Page through the tracker; returns (pages, descriptors).
fn tracker_query(t: &Tracker, since: u64, max_desc: usize) -> (usize, usize) {
    let (mut at, mut pages, mut descs) = (0, 0, 0);
    loop {
        let page = t.changed_extents(since, at, max_desc).expect("query");
        pages += 1;
        descs += page.descriptors.len();
        if page.complete {
            return (pages, descs);
        }
        at = page.next_lba;
    }
}

/// Page through the SCSI handler; reads only the header fields it needs.
fn scsi_query(srv: &DeviceServer, nexus: &Nexus, since: u64, alloc: u32) -> (usize, usize) {
    let (mut at, mut pages, mut descs) = (0u64, 0, 0);
    loop {
        let cdb = get_changed_extents_cdb(since, at).expect("cdb");
        let r = srv.execute(&ScsiCommand {
            lun: 0,
            cdb: &cdb,
            data_out: &[],
            expected_len: alloc,
            nexus,
        });
        let d = &r.data_in;
        assert!(
            r.status == 0 && d.len() >= HEADER_LEN,
            "GET CHANGED EXTENTS failed"
        );
        pages += 1;
        descs += u32::from_be_bytes(d[0..4].try_into().unwrap()) as usize / DESCRIPTOR_LEN;
        if d[4] & 1 != 0 {
            return (pages, descs);
        }
        at = u64::from_be_bytes(d[16..24].try_into().unwrap());
    }
}

/// Memory cases, each in a fresh child process.
fn memory() {
    println!("Memory per written extent (RSS delta, fresh process per case)");
    println!(
        "{:<40} {:>10} {:>12} {:>14}",
        "case", "extents", "RSS delta", "bytes/extent"
    );
    let exe = std::env::current_exe().expect("own path");
    for case in ["dense", "scattered-0.1%", "scattered-1%"] {
        let out = std::process::Command::new(&exe)
            .env("CBT_BENCH_MEM", case)
            .output()
            .expect("run memory case");
        print!("{}", String::from_utf8_lossy(&out.stdout));
        if !out.status.success() {
            eprint!("{}", String::from_utf8_lossy(&out.stderr));
        }
    }
    println!("goal: <= 16 bytes per written extent. The map allocates 64-extent");
    println!("chunks (~8.5 B/extent when full) under 256-way nodes, so a scattered");
    println!("write pays for a whole chunk; the last column of the scattered rows is");
    println!("dominated by that.");
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("resident pages");
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
    pages * page
}

fn memory_child(case: &str) {
    let mut rng = StdRng::seed_from_u64(7);
    let extents: Vec<u64> = match case {
        // 1 Mi extents = 64 GiB written front to back.
        "dense" => (0..EXTENTS / 16).collect(),
        "scattered-0.1%" => sample(&mut rng, EXTENTS as usize, CHANGED)
            .into_iter()
            .map(|x| x as u64)
            .collect(),
        "scattered-1%" => sample(&mut rng, EXTENTS as usize, CHANGED * 10)
            .into_iter()
            .map(|x| x as u64)
            .collect(),
        other => panic!("unknown memory case {other}"),
    };
    let t = Tracker::volatile(CAPACITY, EXTENT_BLOCKS).expect("tracker");
    let before = rss_bytes();
    stamp(&t, extents.iter().copied());
    let after = rss_bytes();
    let delta = after.saturating_sub(before);
    println!(
        "{case:<40} {:>10} {:>9} KiB {:>14.1}",
        extents.len(),
        delta / 1024,
        delta as f64 / extents.len() as f64
    );
    std::hint::black_box(&t);
}
