//! CBT against a plain reference model: random writes, unmaps, closes,
//! grows, paged queries, checkpoints, clean restarts and crashes.
//!
//! The model keeps, per extent, the time of its last change (the truth the
//! spec's guarantee 1 speaks about) and, separately, the generation and hint
//! the tracker should hold. Every query checks: the spec's layout rules,
//! exact equality with the model's greedy runs, never under-reporting
//! against the *time* truth, and that every over-reported extent is one a
//! recovery marked after the close that produced `since`.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use gentgt::cbt::{ChangeKind, ChangedPage, Tracker};
use proptest::prelude::*;

const REGION_EXTENTS: u64 = 1024;

#[derive(Clone, Debug)]
enum Op {
    Change {
        unmap: bool,
        lba_frac: f64,
        blocks: u64,
    },
    Close,
    Query {
        since_pick: usize,
        start_frac: f64,
        max: usize,
    },
    Checkpoint,
    Grow {
        add: u64,
    },
    Restart,
    Crash {
        mid_checkpoint: bool,
        stray_tmp: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (any::<bool>(), 0.0..1.0f64, 1u64..40)
            .prop_map(|(unmap, lba_frac, blocks)| Op::Change { unmap, lba_frac, blocks }),
        2 => Just(Op::Close),
        4 => (any::<usize>(), 0.0..1.0f64, 1usize..5)
            .prop_map(|(since_pick, start_frac, max)| Op::Query { since_pick, start_frac, max }),
        1 => Just(Op::Checkpoint),
        1 => (1u64..600).prop_map(|add| Op::Grow { add }),
        1 => Just(Op::Restart),
        1 => (any::<bool>(), any::<bool>())
            .prop_map(|(mid_checkpoint, stray_tmp)| Op::Crash { mid_checkpoint, stray_tmp }),
    ]
}

struct Model {
    eb: u64,
    cap: u64,
    time: u64,
    open: u64,
    /// Per extent: time of the last change (0 = never).
    changed_at: Vec<u64>,
    gen_: Vec<u64>,
    dealloc: Vec<bool>,
    /// (G, time CLOSE returned).
    closes: Vec<(u64, u64)>,
    /// Regions changed since the last durable snapshot.
    dirty: BTreeSet<u64>,
    /// (time, extents stamped by a recovery).
    recoveries: Vec<(u64, Vec<bool>)>,
    over_reported: usize,
}

impl Model {
    fn extents(&self) -> u64 {
        self.cap.div_ceil(self.eb)
    }

    fn resize(&mut self) {
        let n = self.extents() as usize;
        self.changed_at.resize(n, 0);
        self.gen_.resize(n, 0);
        self.dealloc.resize(n, false);
    }

    fn change(&mut self, lba: u64, blocks: u64, unmap: bool) {
        for x in lba / self.eb..(lba + blocks).div_ceil(self.eb) {
            let whole = lba <= x * self.eb && ((x + 1) * self.eb).min(self.cap) <= lba + blocks;
            let i = x as usize;
            self.changed_at[i] = self.time;
            self.gen_[i] = self.open;
            self.dealloc[i] = unmap && whole;
            self.dirty.insert(x / REGION_EXTENTS);
        }
    }

    fn crash_recovered(&mut self, r: u64) {
        let mut marked = vec![false; self.extents() as usize];
        for &region in &self.dirty {
            let end = ((region + 1) * REGION_EXTENTS).min(self.extents());
            for x in region * REGION_EXTENTS..end {
                let i = x as usize;
                self.gen_[i] = r;
                self.dealloc[i] = false;
                marked[i] = true;
            }
        }
        self.recoveries.push((self.time, marked));
        self.dirty.clear();
        self.open = r;
    }

    /// The page the tracker must return: greedy runs of the model.
    fn expected(&self, since: u64, start: u64, max: usize) -> ChangedPage {
        let mut runs: Vec<(u64, u64, bool, u64)> = Vec::new();
        let mut next = self.cap;
        for x in start / self.eb..self.extents() {
            let i = x as usize;
            if self.gen_[i] <= since {
                continue;
            }
            let full = runs.len() == max;
            match runs.last_mut() {
                Some(run) if run.1 == x && run.2 == self.dealloc[i] => {
                    run.1 += 1;
                    run.3 = run.3.max(self.gen_[i]);
                }
                _ if full => {
                    next = (x * self.eb).max(start);
                    break;
                }
                _ => runs.push((x, x + 1, self.dealloc[i], self.gen_[i])),
            }
        }
        let descriptors = runs
            .iter()
            .map(|&(a, b, deallocated, generation)| {
                let lba = (a * self.eb).max(start);
                gentgt::cbt::Descriptor {
                    lba,
                    blocks: (b * self.eb).min(self.cap) - lba,
                    deallocated,
                    generation,
                }
            })
            .collect();
        ChangedPage {
            descriptors,
            next_lba: next,
            complete: next == self.cap,
            open_generation: self.open,
        }
    }
}

/// The spec's layout rules, checked independently of the model.
fn check_layout(p: &ChangedPage, since: u64, start: u64, max: usize, eb: u64, cap: u64) {
    let mut pos = start;
    for d in &p.descriptors {
        assert!(d.lba >= pos && d.blocks > 0, "order/overlap: {p:?}");
        assert!(d.lba == start || d.lba % eb == 0, "start boundary: {d:?}");
        let end = d.lba + d.blocks;
        assert!(end == cap || end % eb == 0, "end boundary: {d:?}");
        assert!(end <= p.next_lba, "descriptor past NEXT LBA: {p:?}");
        assert!(since < d.generation && d.generation <= p.open_generation);
        pos = end;
    }
    assert!(p.next_lba == cap || p.next_lba.is_multiple_of(eb));
    assert_eq!(p.complete, p.next_lba == cap);
    assert!(p.descriptors.len() <= max);
    assert!(p.next_lba > start, "no progress");
}

fn query_all(t: &Tracker, m: &mut Model, since: u64, close_time: u64, start0: u64, max: usize) {
    let mut start = start0;
    let mut covered = BTreeSet::new();
    loop {
        let page = t.changed_extents(since, start, max).unwrap();
        check_layout(&page, since, start, max, m.eb, m.cap);
        assert_eq!(
            page,
            m.expected(since, start, max),
            "since {since} start {start} max {max}"
        );
        for d in &page.descriptors {
            covered.extend(d.lba / m.eb..(d.lba + d.blocks).div_ceil(m.eb));
        }
        if page.complete {
            break;
        }
        start = page.next_lba;
    }
    for x in start0 / m.eb..m.extents() {
        let changed = m.changed_at[x as usize] > close_time;
        let listed = covered.contains(&x);
        assert!(!changed || listed, "under-report: extent {x} since {since}");
        if listed && !changed {
            let marked = m
                .recoveries
                .iter()
                .any(|(t, v)| *t > close_time && v[x as usize]);
            assert!(
                marked,
                "over-report of extent {x} not explained by a recovery"
            );
            m.over_reported += 1;
        }
    }
}

/// A crash in the middle of a checkpoint: the new snapshot never became
/// durable and the old logs were not deleted yet.
fn checkpoint_then_undo(t: &Tracker, dir: &Path) {
    let saved: Vec<(std::path::PathBuf, Vec<u8>)> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !p.ends_with("meta"))
        .map(|p| {
            let b = fs::read(&p).unwrap();
            (p, b)
        })
        .collect();
    t.checkpoint().unwrap();
    for (p, b) in saved {
        fs::write(p, b).unwrap();
    }
}

fn run(eb: u32, cap: u64, ops: Vec<Op>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lun0.cbt");
    let mut t = Tracker::open(&path, cap, eb).unwrap();
    let uuid = t.status().uuid;
    let mut m = Model {
        eb: u64::from(eb),
        cap,
        time: 0,
        open: 1,
        changed_at: Vec::new(),
        gen_: Vec::new(),
        dealloc: Vec::new(),
        closes: Vec::new(),
        dirty: BTreeSet::new(),
        recoveries: Vec::new(),
        over_reported: 0,
    };
    m.resize();
    for op in ops {
        m.time += 1;
        match op {
            Op::Change {
                unmap,
                lba_frac,
                blocks,
            } => {
                let lba = ((m.cap as f64 * lba_frac) as u64).min(m.cap - 1);
                let blocks = blocks.min(m.cap - lba);
                let kind = if unmap {
                    ChangeKind::Unmap
                } else {
                    ChangeKind::Write
                };
                drop(t.begin_change(lba, blocks, kind).unwrap());
                m.change(lba, blocks, unmap);
            }
            Op::Close => {
                let g = t.close().unwrap();
                assert_eq!(g, m.open);
                m.closes.push((g, m.time));
                m.open += 1;
            }
            Op::Query {
                since_pick,
                start_frac,
                max,
            } => {
                let pick = since_pick % (m.closes.len() + 1);
                let (since, close_time) = if pick == 0 {
                    (0, 0)
                } else {
                    m.closes[pick - 1]
                };
                let start = ((m.cap as f64 * start_frac) as u64).min(m.cap - 1);
                query_all(&t, &mut m, since, close_time, start, max);
            }
            Op::Checkpoint => {
                t.checkpoint().unwrap();
                m.dirty.clear();
            }
            Op::Grow { add } => {
                let old = m.cap;
                t.grow(old + add).unwrap();
                m.cap = old + add;
                m.resize();
                m.change(old, add, false);
            }
            Op::Restart => {
                t.shutdown().unwrap();
                drop(t);
                t = Tracker::open(&path, m.cap, eb).unwrap();
                let s = t.status();
                assert_eq!(
                    (s.uuid, s.open_generation, s.recovered),
                    (uuid, m.open, false)
                );
                m.dirty.clear();
            }
            Op::Crash {
                mid_checkpoint,
                stray_tmp,
            } => {
                if mid_checkpoint {
                    checkpoint_then_undo(&t, &path);
                }
                drop(t);
                if stray_tmp {
                    fs::write(path.join("snapshot.tmp"), b"half a snapshot").unwrap();
                }
                t = Tracker::open(&path, m.cap, eb).unwrap();
                let s = t.status();
                assert_eq!(s.uuid, uuid, "a crash must keep the UUID");
                assert!(s.recovered && s.recovery_generation > m.open);
                assert_eq!(s.open_generation, s.recovery_generation);
                m.crash_recovered(s.recovery_generation);
            }
        }
    }
    let full = m.closes.last().map_or((0, 0), |c| *c);
    query_all(&t, &mut m, full.0, full.1, 0, usize::MAX);
    if m.recoveries.is_empty() {
        assert_eq!(m.over_reported, 0);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn tracker_matches_reference_model(
        eb in prop::sample::select(vec![1u32, 2, 4]),
        cap in 20u64..3000,
        ops in prop::collection::vec(op(), 1..60),
    ) {
        run(eb, cap, ops);
    }
}
