//! Concurrency: writers racing with closes and queries, checked against an
//! oracle clock (one global SeqCst counter gives every event a place in a
//! single real-time order).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};

use super::{ChangeKind, Tracker};

const EB: u64 = 8;
const EXTENTS: u64 = 512;

struct Change {
    first: u64,
    end: u64,
    /// When the (simulated) data write became visible.
    data_at: u64,
    /// When the guard had been dropped.
    done_at: u64,
}

struct Query {
    since: u64,
    close_at: u64,
    built_from: u64,
    listed: Vec<bool>,
}

fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

fn writer(t: &Tracker, clock: &AtomicU64, stop: &AtomicBool, seed: u64) -> Vec<Change> {
    let mut rng = seed;
    let mut out = Vec::new();
    while !stop.load(SeqCst) && out.len() < 20_000 {
        let lba = xorshift(&mut rng) % (EXTENTS * EB);
        let blocks = (xorshift(&mut rng) % 20 + 1).min(EXTENTS * EB - lba);
        let kind = if rng.is_multiple_of(5) {
            ChangeKind::Unmap
        } else {
            ChangeKind::Write
        };
        let guard = t.begin_change(lba, blocks, kind).unwrap();
        if rng.is_multiple_of(3) {
            std::thread::yield_now();
        }
        let data_at = clock.fetch_add(1, SeqCst);
        if rng.is_multiple_of(7) {
            std::thread::yield_now();
        }
        drop(guard);
        let done_at = clock.fetch_add(1, SeqCst);
        out.push(Change {
            first: lba / EB,
            end: (lba + blocks).div_ceil(EB),
            data_at,
            done_at,
        });
    }
    out
}

fn closer(t: &Tracker, clock: &AtomicU64, rounds: usize) -> Vec<Query> {
    let mut closes: Vec<(u64, u64)> = Vec::new();
    let mut queries = Vec::new();
    let mut rng = 99u64;
    for _ in 0..rounds {
        let g = t.close().unwrap();
        closes.push((g, clock.fetch_add(1, SeqCst)));
        std::thread::yield_now();
        let (since, close_at) = closes[(xorshift(&mut rng) as usize) % closes.len()];
        let built_from = clock.fetch_add(1, SeqCst);
        let mut listed = vec![false; EXTENTS as usize];
        let mut start = 0;
        loop {
            let page = t.changed_extents(since, start, 7).unwrap();
            for d in &page.descriptors {
                assert!(d.generation > since && d.generation <= page.open_generation);
                for x in d.lba / EB..(d.lba + d.blocks).div_ceil(EB) {
                    listed[x as usize] = true;
                }
            }
            if page.complete {
                break;
            }
            start = page.next_lba;
        }
        queries.push(Query {
            since,
            close_at,
            built_from,
            listed,
        });
    }
    queries
}

/// Guarantees 1 and 2: a change whose data became visible after CLOSE
/// returned `G`, and which completed before a query since `G` started, is
/// listed by that query (i.e. it was stamped `> G`).
fn check(changes: &[Change], queries: &[Query]) -> usize {
    let mut checked = 0;
    for q in queries {
        for c in changes
            .iter()
            .filter(|c| c.data_at > q.close_at && c.done_at < q.built_from)
        {
            for x in c.first..c.end {
                assert!(
                    q.listed[x as usize],
                    "extent {x} changed after close({}) returned but not listed",
                    q.since
                );
            }
            checked += 1;
        }
    }
    checked
}

#[test]
fn closes_and_queries_never_miss_a_racing_change() {
    // How many changes race a close depends on scheduling (a loaded CI
    // machine may run the writers in bursts), so run rounds until enough
    // were checked; every round checks every reply it got.
    let mut checked = 0;
    for _ in 0..20 {
        checked += racing_round();
        if checked > 1000 {
            break;
        }
    }
    assert!(
        checked > 1000,
        "too few racing changes exercised: {checked}"
    );
}

fn racing_round() -> usize {
    let t = Tracker::volatile(EXTENTS * EB, EB as u32).unwrap();
    let clock = AtomicU64::new(1);
    let stop = AtomicBool::new(false);
    let (changes, queries) = std::thread::scope(|s| {
        let writers: Vec<_> = (0..3u64)
            .map(|i| {
                let (t, clock, stop) = (&t, &clock, &stop);
                s.spawn(move || writer(t, clock, stop, 0x9E37_79B9_7F4A_7C15 ^ (i + 1)))
            })
            .collect();
        let queries = closer(&t, &clock, 300);
        stop.store(true, SeqCst);
        let changes: Vec<Change> = writers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect();
        (changes, queries)
    });
    let checked = check(&changes, &queries);
    assert_eq!(t.in_flight(), 0);
    checked
}

#[test]
fn persistent_tracker_under_concurrency_recovers_everything_it_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let t = Tracker::open(dir.path(), EXTENTS * EB * 1024, EB as u32).unwrap();
    let g = t.close().unwrap();
    let written = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for i in 0..3u64 {
            let (t, written) = (&t, &written);
            s.spawn(move || {
                let mut rng = i + 7;
                for n in 0..200 {
                    let lba = xorshift(&mut rng) % (EXTENTS * EB * 1024 - 8);
                    drop(t.begin_change(lba, 8, ChangeKind::Write).unwrap());
                    written.lock().unwrap().extend([lba / EB, (lba + 7) / EB]);
                    if n % 50 == 0 {
                        t.checkpoint().unwrap();
                    }
                }
            });
        }
    });
    drop(t); // crash
    let t = Tracker::open(dir.path(), EXTENTS * EB * 1024, EB as u32).unwrap();
    assert!(t.status().recovered);
    let mut listed = std::collections::HashSet::new();
    let mut start = 0;
    loop {
        let page = t.changed_extents(g, start, 100).unwrap();
        for d in &page.descriptors {
            listed.extend(d.lba / EB..(d.lba + d.blocks).div_ceil(EB));
        }
        if page.complete {
            break;
        }
        start = page.next_lba;
    }
    for x in written.into_inner().unwrap() {
        assert!(listed.contains(&x), "extent {x} lost by checkpoint/crash");
    }
}
