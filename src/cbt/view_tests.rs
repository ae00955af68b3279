//! Views against a plain model: random interleavings of the steps of
//! writes and unmaps (begin = copy-before-write and stamp, finish = the
//! data lands), opens, closes, releases, view reads and AS OF VIEW queries;
//! then threads racing first writes against view reads and OPEN.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::view::{ViewSource, ViewUnavailable};
use super::{ChangeGuard, ChangeKind, OpenRequest, Tracker, ViewError};

const BS: u32 = 512;
const EB: u32 = 16; // blocks per extent: 8 KiB, two 4 KiB pieces
const PB: u64 = 8; // blocks per piece (4 KiB: the view keeps pieces)
const PIECE: usize = (BS as u64 * PB) as usize;
const BLOCKS: u64 = 9 * 16 + 3; // 10 extents, the last one short

/// The LUN's data, shared by the test's "backend" and the view's source.
#[derive(Clone)]
struct Disk(Arc<RwLock<Vec<u8>>>);

impl Disk {
    fn new(len: usize) -> Disk {
        Disk(Arc::new(RwLock::new(vec![0; len])))
    }
    fn write(&self, off: usize, data: &[u8]) {
        self.0.write().unwrap()[off..off + data.len()].copy_from_slice(data);
    }
    fn snapshot(&self) -> Vec<u8> {
        self.0.read().unwrap().clone()
    }
}

impl ViewSource for Disk {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let d = self.0.read().unwrap();
        buf.copy_from_slice(&d[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }
}

fn request(disk: &Disk, owner: u64, limit: u64, drain_ms: u64) -> OpenRequest {
    OpenRequest {
        owner,
        lease: Duration::from_secs(60),
        drain: Duration::from_millis(drain_ms),
        limit,
        block_len: BS,
        source: Arc::new(disk.clone()),
        store_dir: std::env::temp_dir(),
    }
}

struct Pending<'a> {
    guard: ChangeGuard<&'a Tracker>,
    off: usize,
    data: Vec<u8>,
}

/// What the model knows of an open view.
struct ModelView {
    token: u64,
    generation: u64,
    data: Vec<u8>,
    gens: Vec<u64>,
    kept: HashSet<usize>,
    used: u64,
    limit: u64,
    lost: bool,
}

struct Model {
    data: Vec<u8>,
    gens: Vec<u64>,
    open: u64,
    view: Option<ModelView>,
}

fn extents() -> usize {
    BLOCKS.div_ceil(u64::from(EB)) as usize
}

fn piece_len(x: usize) -> usize {
    let end = ((x + 1) * PIECE).min(BLOCKS as usize * BS as usize);
    end - x * PIECE
}

impl Model {
    /// What `keep` does at a change's begin: runs of pieces not kept yet
    /// reserve their bytes, over the limit the view is lost, pieces that
    /// held only zeros give their bytes back.
    fn keep(&mut self, first: usize, end: usize) {
        let Some(v) = self.view.as_mut().filter(|v| !v.lost) else {
            return;
        };
        let mut x = first;
        while x < end {
            if v.kept.contains(&x) {
                x += 1;
                continue;
            }
            let run_end = (x..end).find(|e| v.kept.contains(e)).unwrap_or(end);
            let len: u64 = (x..run_end).map(|e| piece_len(e) as u64).sum();
            if v.used + len > v.limit {
                v.lost = true;
                return;
            }
            for e in x..run_end {
                let piece = &self.data[e * PIECE..e * PIECE + piece_len(e)];
                if piece.iter().any(|&b| b != 0) {
                    v.used += piece_len(e) as u64;
                }
                v.kept.insert(e);
            }
            x = run_end;
        }
    }

    fn begin(&mut self, lba: u64, blocks: u64) {
        let first = (lba / u64::from(EB)) as usize;
        let end = ((lba + blocks - 1) / u64::from(EB)) as usize + 1;
        if self.view.as_ref().is_some_and(|v| self.open > v.generation) {
            self.keep((lba / PB) as usize, ((lba + blocks - 1) / PB) as usize + 1);
        }
        for g in &mut self.gens[first..end] {
            *g = (*g).max(self.open);
        }
    }
}

/// Descriptors of an AS OF VIEW query, expanded to (extent, run max gen).
fn query_as_of(t: &Tracker, since: u64) -> Result<BTreeMap<usize, u64>, ViewUnavailable> {
    let v = t.view().ok_or(ViewUnavailable::NoView)?;
    if v.lost() {
        return Err(ViewUnavailable::Lost);
    }
    let mut out = BTreeMap::new();
    let mut lba = 0;
    loop {
        let page = t.view_changed_extents(&v, since, lba, 2).unwrap();
        for d in &page.descriptors {
            let first = d.lba / u64::from(EB);
            let last = (d.lba + d.blocks - 1) / u64::from(EB);
            for x in first..=last {
                out.insert(x as usize, d.generation);
            }
        }
        if page.complete {
            return Ok(out);
        }
        lba = page.next_lba;
    }
}

/// The same from the model: every extent whose generation at the open is
/// `> since` is covered, and a run's generation is its largest.
fn check_query(model: &ModelView, got: &BTreeMap<usize, u64>, since: u64) {
    let want: Vec<usize> = (0..extents()).filter(|&x| model.gens[x] > since).collect();
    let have: Vec<usize> = got.keys().copied().collect();
    assert_eq!(have, want, "extents listed as of the view since {since}");
    for (&x, &g) in got {
        assert!(
            g >= model.gens[x] && g <= model.generation,
            "run generation"
        );
    }
}

fn run_model(seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let disk = Disk::new(BLOCKS as usize * BS as usize);
    let t = Tracker::volatile(BLOCKS, EB).unwrap();
    let mut m = Model {
        data: disk.snapshot(),
        gens: vec![0; extents()],
        open: 1,
        view: None,
    };
    let mut pending: Vec<Pending> = Vec::new();
    for _ in 0..400 {
        match rng.gen_range(0..100) {
            0..30 => {
                let lba = rng.gen_range(0..BLOCKS);
                let blocks = rng.gen_range(1..=(BLOCKS - lba).min(20));
                let unmap = rng.gen_bool(0.2);
                let kind = if unmap {
                    ChangeKind::Unmap
                } else {
                    ChangeKind::Write
                };
                let fill = if unmap { 0 } else { rng.gen_range(1..=255u8) };
                let guard = t.begin_change(lba, blocks, kind).unwrap();
                m.begin(lba, blocks);
                let off = (lba * u64::from(BS)) as usize;
                let data = vec![fill; (blocks * u64::from(BS)) as usize];
                pending.push(Pending { guard, off, data });
            }
            30..55 if !pending.is_empty() => {
                let p = pending.swap_remove(rng.gen_range(0..pending.len()));
                disk.write(p.off, &p.data);
                m.data[p.off..p.off + p.data.len()].copy_from_slice(&p.data);
                drop(p.guard);
            }
            55..62 => {
                let limit = [3, 6, 100][rng.gen_range(0..3)] * PIECE as u64;
                match t.open_view(request(&disk, 1, limit, 1)) {
                    Ok(v) if m.view.is_some() => {
                        assert_eq!(v.generation, m.view.as_ref().unwrap().generation);
                    }
                    Ok(v) => {
                        assert!(pending.is_empty(), "opened with changes in flight");
                        assert_eq!(v.generation, m.open);
                        m.view = Some(ModelView {
                            token: v.token,
                            generation: m.open,
                            data: m.data.clone(),
                            gens: m.gens.clone(),
                            kept: HashSet::new(),
                            used: 0,
                            limit,
                            lost: false,
                        });
                        m.open += 1;
                    }
                    Err(ViewError::DrainTimeout) => {
                        assert!(!pending.is_empty() && m.view.is_none());
                    }
                    Err(e) => panic!("open: {e}"),
                }
                assert_eq!(t.open_generation(), m.open, "a failed open closes nothing");
            }
            62..65 => {
                // A second nexus never gets the view.
                let r = t.open_view(request(&disk, 2, 1 << 20, 1));
                match &m.view {
                    Some(_) => assert!(matches!(r, Err(ViewError::Conflict))),
                    None if pending.is_empty() => {
                        let v = r.unwrap();
                        t.release_view(v.token).unwrap();
                        m.open += 1;
                    }
                    None => assert!(matches!(r, Err(ViewError::DrainTimeout))),
                }
            }
            65..70 => {
                if let Some(v) = m.view.take() {
                    assert!(t.release_view(v.token ^ 1).is_err());
                    assert_eq!(t.release_view(v.token).unwrap(), v.generation);
                }
                assert!(t.view().is_none());
            }
            70..75 if pending.is_empty() => {
                assert_eq!(t.close().unwrap(), m.open);
                m.open += 1;
            }
            75..90 => {
                let lba = rng.gen_range(0..BLOCKS);
                let blocks = rng.gen_range(1..=BLOCKS - lba);
                let off = (lba * u64::from(BS)) as usize;
                let mut buf = vec![0xee; (blocks * u64::from(BS)) as usize];
                let got = match t.view() {
                    Some(v) => v.read(off as u64, &mut buf),
                    None => Err(ViewUnavailable::NoView.into_io()),
                };
                match &m.view {
                    Some(v) if !v.lost => {
                        got.unwrap();
                        assert!(buf == v.data[off..off + buf.len()], "view read differs");
                    }
                    Some(_) => assert_eq!(
                        got.map_err(|e| ViewUnavailable::of(&e)).unwrap_err(),
                        Some(ViewUnavailable::Lost)
                    ),
                    None => assert!(got.is_err()),
                }
            }
            _ => {
                let Some(v) = &m.view else { continue };
                let since = rng.gen_range(0..v.generation);
                match (query_as_of(&t, since), v.lost) {
                    (Ok(got), false) => check_query(v, &got, since),
                    (Err(ViewUnavailable::Lost), true) => {}
                    (other, lost) => panic!("query {other:?}, model lost {lost}"),
                }
                let live = t.view().unwrap();
                assert_eq!(live.lost(), v.lost, "lost exactly when over the limit");
                if !v.lost {
                    assert_eq!(live.used(), v.used, "VIEW SPACE USED");
                }
            }
        }
    }
}

#[test]
fn views_match_the_model() {
    for seed in 0..60 {
        run_model(seed);
    }
}

/// Writer threads hammer a LUN whose every block holds (block, version);
/// views open while they run. A view must read the same bytes every time,
/// and each block must hold a version that had started before OPEN
/// returned and is not older than the last one finished before OPEN began.
#[test]
fn racing_writers_readers_and_open() {
    const WRITERS: u64 = 4;
    let disk = Disk::new(BLOCKS as usize * BS as usize);
    let t = Arc::new(Tracker::volatile(BLOCKS, EB).unwrap());
    // Per block: last version finished, last version started.
    let done: Arc<Vec<AtomicU64>> = Arc::new((0..BLOCKS).map(|_| AtomicU64::new(0)).collect());
    let started: Arc<Vec<AtomicU64>> = Arc::new((0..BLOCKS).map(|_| AtomicU64::new(0)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (disk, t, done, started, stop) = (
                disk.clone(),
                t.clone(),
                done.clone(),
                started.clone(),
                stop.clone(),
            );
            std::thread::spawn(move || {
                let mut rng = StdRng::seed_from_u64(w);
                let mut version = 0u64;
                while !stop.load(SeqCst) {
                    // Writer w owns the blocks b with b % WRITERS == w.
                    let b = rng.gen_range(0..BLOCKS / WRITERS) * WRITERS + w;
                    version += 1;
                    started[b as usize].store(version, SeqCst);
                    let guard = t.begin_change(b, 1, ChangeKind::Write).unwrap();
                    let mut block = vec![0u8; BS as usize];
                    block[..8].copy_from_slice(&b.to_le_bytes());
                    block[8..16].copy_from_slice(&version.to_le_bytes());
                    disk.write((b * u64::from(BS)) as usize, &block);
                    drop(guard);
                    done[b as usize].store(version, SeqCst);
                }
            })
        })
        .collect();
    let version_in = |buf: &[u8], b: u64| {
        let at = (b * u64::from(BS)) as usize;
        u64::from_le_bytes(buf[at + 8..at + 16].try_into().unwrap())
    };
    for round in 0..40 {
        let floor: Vec<u64> = done.iter().map(|a| a.load(SeqCst)).collect();
        let v = t.open_view(request(&disk, 1, u64::MAX, 5_000)).unwrap();
        let ceiling: Vec<u64> = started.iter().map(|a| a.load(SeqCst)).collect();
        let mut first = vec![0u8; disk.snapshot().len()];
        v.read(0, &mut first).unwrap();
        for b in 0..BLOCKS {
            let got = version_in(&first, b);
            let (lo, hi) = (floor[b as usize], ceiling[b as usize]);
            assert!(
                lo <= got && got <= hi,
                "round {round} block {b}: {got} not in {lo}..={hi}"
            );
        }
        for _ in 0..5 {
            std::thread::sleep(Duration::from_millis(2));
            let mut again = vec![0u8; first.len()];
            // Odd pieces, so reads straddle kept and unkept extents.
            let mut at = 0;
            while at < again.len() {
                let n = (1 + (at / 512) % 7) * 512;
                let n = n.min(again.len() - at);
                v.read(at as u64, &mut again[at..at + n]).unwrap();
                at += n;
            }
            assert!(again == first, "round {round}: the view moved");
        }
        t.release_view(v.token).unwrap();
    }
    stop.store(true, SeqCst);
    for w in writers {
        w.join().unwrap();
    }
}

/// A change in flight when OPEN starts is part of the view (OPEN waits for
/// it); a change that arrives while OPEN drains waits, then keeps the old
/// data — which already includes the in-flight change.
#[test]
fn open_waits_for_changes_in_flight() {
    let disk = Disk::new(BLOCKS as usize * BS as usize);
    let t = Arc::new(Tracker::volatile(BLOCKS, EB).unwrap());
    let early = t.begin_change(0, 1, ChangeKind::Write).unwrap();
    let opener = {
        let (t, disk) = (t.clone(), disk.clone());
        std::thread::spawn(move || t.open_view(request(&disk, 1, u64::MAX, 10_000)).unwrap())
    };
    std::thread::sleep(Duration::from_millis(50));
    let late_started = Arc::new(Mutex::new(false));
    let late = {
        let (t, disk, flag) = (t.clone(), disk.clone(), late_started.clone());
        std::thread::spawn(move || {
            let g = t.begin_change(0, 1, ChangeKind::Write).unwrap();
            *flag.lock().unwrap() = true;
            disk.write(0, &[2u8; BS as usize]);
            drop(g);
        })
    };
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        !opener.is_finished(),
        "OPEN must wait for the change in flight"
    );
    assert!(
        !*late_started.lock().unwrap(),
        "a later change waits for OPEN"
    );
    disk.write(0, &[1u8; BS as usize]);
    drop(early);
    let v = opener.join().unwrap();
    late.join().unwrap();
    let mut buf = vec![0u8; BS as usize];
    v.read(0, &mut buf).unwrap();
    assert!(
        buf.iter().all(|&b| b == 1),
        "the view holds the in-flight change"
    );
    assert!(disk.snapshot()[..BS as usize].iter().all(|&b| b == 2));
    // The late change came after the open: as of the view it is absent.
    let page = t.view_changed_extents(&v, 0, 0, 16).unwrap();
    assert_eq!(page.descriptors.len(), 1);
    assert_eq!(page.descriptors[0].generation, v.generation);
}

/// A drain that times out: no view, no generation closed, and changes that
/// waited go on under the old generation.
#[test]
fn open_drain_timeout_closes_nothing() {
    let disk = Disk::new(BLOCKS as usize * BS as usize);
    let t = Tracker::volatile(BLOCKS, EB).unwrap();
    let stuck = t.begin_change(0, 1, ChangeKind::Write).unwrap();
    let r = t.open_view(request(&disk, 1, u64::MAX, 30));
    assert!(matches!(r, Err(ViewError::DrainTimeout)));
    assert_eq!(t.open_generation(), 1);
    assert!(t.view().is_none());
    drop(stuck);
    drop(t.begin_change(8, 1, ChangeKind::Write).unwrap());
    assert_eq!(t.close().unwrap(), 1);
}

#[test]
fn pieces_are_4k_unless_the_lun_is_huge() {
    use super::view::{ViewGeometry, piece_shift};
    let g = |block_len, capacity_blocks, extent_shift| ViewGeometry {
        block_len,
        capacity_blocks,
        extent_shift,
    };
    assert_eq!(
        piece_shift(&g(512, 2 << 20, 7)),
        3,
        "1 GiB, 512-byte blocks: 4 KiB"
    );
    assert_eq!(
        piece_shift(&g(4096, 1 << 18, 4)),
        0,
        "4 KiB blocks: one block"
    );
    // 16 TiB of 512-byte blocks (2^35): at most 2^24 pieces wants 2^11
    // blocks (1 MiB) per piece, but a piece is never more than an extent.
    assert_eq!(piece_shift(&g(512, 1 << 35, 7)), 7);
    assert_eq!(piece_shift(&g(512, 1 << 35, 12)), 11);
}
