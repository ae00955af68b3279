//! The states a power cut can leave, built from a trace.
//!
//! The rules are the POSIX minimum, the weakest any Linux file system
//! gives (ext4 data=ordered, xfs and btrfs all give at least this):
//!
//! * A write, truncate or hole punch to a file is durable once an fsync
//!   or fdatasync of that file was *called* after it had completed.
//!   Before that it may be lost, kept, or (writes) torn: kept for some
//!   sectors and not others. Each such operation is chosen independently,
//!   so unsynced writes to one file, or to different files, land in any
//!   combination (reordering).
//! * Creating, renaming and unlinking a name are changes to the
//!   directory, durable once that directory was fsynced after them —
//!   fsyncing the file does not make its name durable. Before that, a
//!   *prefix* of the directory's changes survives, of any length: a
//!   journal commits one directory's changes in order, so a later rename
//!   never lands without an earlier one (states no file system makes would
//!   only produce false alarms). Across directories anything goes.
//! * Sectors are atomic; a rename is atomic (the old or the new name).

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::hash::{Hash, Hasher};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use rand::Rng;

use super::trace::{Event, Ino, Op, ROOT, SECTOR, Trace};

/// How the undecided (unsynced) operations of one cut are chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Choice {
    /// Everything not synced is lost.
    NoneKept,
    /// Everything issued landed (what kill -9 leaves).
    AllKept,
    /// Each undecided operation kept or lost by the seeded coin; writes
    /// kept are sometimes torn.
    Random(u64),
}

/// One crash state: everything up to trace line `cut` was issued.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub cut: usize,
    pub choice: Choice,
}

/// A file's content, sparse by sector.
#[derive(Default, Clone)]
struct FileData {
    len: u64,
    sectors: BTreeMap<u64, Vec<u8>>,
}

impl FileData {
    fn write(&mut self, off: u64, data: &[u8], keep: &dyn Fn(u64) -> bool) {
        let mut at = 0usize;
        while at < data.len() {
            let pos = off + at as u64;
            let (sec, inner) = (pos / SECTOR, (pos % SECTOR) as usize);
            let n = (SECTOR as usize - inner).min(data.len() - at);
            if keep(sec) {
                let s = self
                    .sectors
                    .entry(sec)
                    .or_insert_with(|| vec![0; SECTOR as usize]);
                s[inner..inner + n].copy_from_slice(&data[at..at + n]);
                self.len = self.len.max(pos + n as u64);
            }
            at += n;
        }
    }

    fn set_len(&mut self, len: u64) {
        let keep_sectors = len.div_ceil(SECTOR);
        self.sectors.retain(|&s, _| s < keep_sectors);
        if let Some(last) = self.sectors.get_mut(&(len / SECTOR)) {
            last[(len % SECTOR) as usize..].fill(0);
        }
        self.len = len;
    }

    fn zero(&mut self, off: u64, len: u64) {
        let zeros = vec![0u8; len as usize];
        let old_len = self.len;
        self.write(off, &zeros, &|_| true);
        self.len = old_len; // punch keeps the size
        self.sectors.retain(|_, s| s.iter().any(|&b| b != 0));
    }
}

#[derive(Default)]
struct Fs {
    files: HashMap<Ino, FileData>,
    dirs: HashMap<Ino, BTreeMap<String, Ino>>,
}

impl Fs {
    fn apply(&mut self, op: &Op, keep: &dyn Fn(u64) -> bool) {
        match op {
            Op::Link {
                dir,
                name,
                ino,
                is_dir,
            } => {
                self.dirs
                    .entry(*dir)
                    .or_default()
                    .insert(name.clone(), *ino);
                if *is_dir {
                    self.dirs.entry(*ino).or_default();
                }
            }
            Op::Rename { dir, from, to } => {
                let d = self.dirs.entry(*dir).or_default();
                if let Some(ino) = d.remove(from) {
                    d.insert(to.clone(), ino);
                }
            }
            Op::Unlink { dir, name } => {
                self.dirs.entry(*dir).or_default().remove(name);
            }
            Op::Write { ino, off, data } => {
                self.files.entry(*ino).or_default().write(*off, data, keep)
            }
            Op::SetLen { ino, len } => self.files.entry(*ino).or_default().set_len(*len),
            Op::Zero { ino, off, len } => self.files.entry(*ino).or_default().zero(*off, *len),
            Op::Sync { .. } => {}
        }
    }

    /// Write the tree under the data directory into `out`, hashing names
    /// and contents into `h` (equal hashes: the same state).
    fn materialize(&self, dir: Ino, out: &Path, h: &mut impl Hasher) -> io::Result<()> {
        fs::create_dir_all(out)?;
        for (name, ino) in self.dirs.get(&dir).into_iter().flatten() {
            let p = out.join(name);
            name.hash(h);
            if self.dirs.contains_key(ino) {
                self.materialize(*ino, &p, h)?;
                continue;
            }
            let f = fs::File::create(&p)?;
            let Some(data) = self.files.get(ino) else {
                continue; // created, nothing written: empty
            };
            f.set_len(data.len)?;
            data.len.hash(h);
            data.sectors.hash(h);
            for (s, bytes) in &data.sectors {
                let at = s * SECTOR;
                let n = (data.len.saturating_sub(at)).min(SECTOR) as usize;
                f.write_all_at(&bytes[..n], at)?;
            }
        }
        Ok(())
    }
}

/// For each inode, the entry line of its latest sync that completed by
/// `cut`: operations on it that completed before that line are durable.
fn synced_before(events: &[&Event]) -> HashMap<Ino, usize> {
    let mut m = HashMap::new();
    for e in events {
        if let Op::Sync { ino, .. } = e.op {
            let v = m.entry(ino).or_insert(0);
            *v = (*v).max(e.entry);
        }
    }
    m
}

/// Completed before a sync of its owner was called: survives any cut.
fn durable(synced: &HashMap<Ino, usize>, e: &Event) -> bool {
    synced.get(&e.op.owner()).is_some_and(|&s| e.exit < s)
}

/// Build the state of `plan` from `trace` into directory `out` (the data
/// directory of the restarted target). Returns how many operations were
/// undecided at this cut (0: the state is fully determined) and a hash
/// of the state built.
pub fn build(trace: &Trace, plan: Plan, out: &Path) -> io::Result<(usize, u64)> {
    let issued: Vec<&Event> = trace.events.iter().filter(|e| e.exit <= plan.cut).collect();
    let synced = synced_before(&issued);
    let durable = |e: &Event| durable(&synced, e);
    let mut rng: rand::rngs::StdRng = rand::SeedableRng::seed_from_u64(match plan.choice {
        Choice::Random(s) => s,
        _ => 0,
    });
    // Per directory: how many of its undecided changes survive (a prefix).
    let mut dir_pending: HashMap<Ino, usize> = HashMap::new();
    for e in issued.iter().filter(|e| e.op.is_dir_op() && !durable(e)) {
        *dir_pending.entry(e.op.owner()).or_default() += 1;
    }
    let mut dir_keep: HashMap<Ino, usize> = HashMap::new();
    for (&dir, &n) in &dir_pending {
        let k = match plan.choice {
            Choice::NoneKept => 0,
            Choice::AllKept => n,
            Choice::Random(_) => rng.gen_range(0..=n),
        };
        dir_keep.insert(dir, k);
    }
    let mut fs = Fs::default();
    fs.dirs.insert(ROOT, BTreeMap::new());
    let mut undecided = 0;
    for e in issued {
        if matches!(e.op, Op::Sync { .. }) {
            continue;
        }
        if durable(e) {
            fs.apply(&e.op, &|_| true);
            continue;
        }
        undecided += 1;
        if e.op.is_dir_op() {
            let left = dir_keep.get_mut(&e.op.owner()).expect("counted above");
            if *left > 0 {
                *left -= 1;
                fs.apply(&e.op, &|_| true);
            }
            continue;
        }
        match plan.choice {
            Choice::NoneKept => {}
            Choice::AllKept => fs.apply(&e.op, &|_| true),
            Choice::Random(_) => {
                if rng.gen_bool(0.5) {
                    continue;
                }
                if matches!(e.op, Op::Write { .. }) && rng.gen_bool(0.25) {
                    // Torn: each sector of the write lands or not.
                    let seed: u64 = rng.r#gen();
                    fs.apply(&e.op, &|s| torn_keeps(seed, s));
                } else {
                    fs.apply(&e.op, &|_| true);
                }
            }
        }
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    fs.materialize(ROOT, out, &mut h)?;
    Ok((undecided, h.finish()))
}

/// A deterministic per-sector coin for a torn write.
fn torn_keeps(seed: u64, sector: u64) -> bool {
    let x = (seed ^ sector.wrapping_mul(0x9E37_79B9_7F4A_7C15)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    (x >> 33) & 1 == 1
}

/// How many operations a cut at `cut` leaves undecided (issued, not
/// yet durable): 0 means one state only, whatever the choice.
pub fn undecided(trace: &Trace, cut: usize) -> usize {
    let issued: Vec<&Event> = trace.events.iter().filter(|e| e.exit <= cut).collect();
    let synced = synced_before(&issued);
    issued
        .iter()
        .filter(|e| !matches!(e.op, Op::Sync { .. }))
        .filter(|e| !durable(&synced, e))
        .count()
}

/// Remove from `trace` every sync matching `pred` (the broken variant:
/// what the disk would hold if the code skipped that fsync). Returns how
/// many were removed.
pub fn drop_syncs(trace: &mut Trace, pred: impl Fn(&Event) -> bool) -> usize {
    let before = trace.events.len();
    trace
        .events
        .retain(|e| !(matches!(e.op, Op::Sync { .. }) && pred(e)));
    before - trace.events.len()
}

/// The cut points worth checking: just before and just after every sync
/// (the moments durability changes), and the end of the trace.
pub fn cuts(trace: &Trace) -> Vec<usize> {
    let mut v = Vec::new();
    for e in &trace.events {
        if matches!(e.op, Op::Sync { .. }) {
            v.push(e.exit.saturating_sub(1));
            v.push(e.exit);
        }
    }
    v.push(trace.times.len().saturating_sub(1));
    v.sort_unstable();
    v.dedup();
    v
}
