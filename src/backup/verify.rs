//! `gentgt verify`: by default the structure, quickly: every index
//! segment and manifest opens and passes its check, chains are sound,
//! every referenced chunk is indexed with its extent's length, every pack
//! holding one exists, is long enough, and its own trailer agrees with the
//! index. `--read-data` (or a subset of the packs) also reads, decodes and
//! re-hashes every referenced chunk. Every problem names the backups it
//! damages; chunks no backup references are counted, not problems.

use super::Result;
use super::index::Loc;
use super::manifest::{ExtentRef, Manifest};
use super::pack::{self, PackId};
use super::repo::{Repo, parse_id};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

/// Which packs `--read-data-subset` reads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Subset {
    /// Part n of t (1-based), by pack id: t runs read everything once.
    Part(u64, u64),
    /// About this fraction (0..=1) of the packs.
    Fraction(f64),
}

impl Subset {
    pub fn parse(s: &str) -> std::result::Result<Subset, String> {
        if let Some(p) = s.strip_suffix('%') {
            let f: f64 = p.parse().map_err(|_| format!("bad percentage {s:?}"))?;
            return Ok(Subset::Fraction((f / 100.0).clamp(0.0, 1.0)));
        }
        let (n, t) = s
            .split_once('/')
            .ok_or(format!("give N/T or P% (not {s:?})"))?;
        let (n, t): (u64, u64) = (
            n.parse().map_err(|_| format!("bad {n:?}"))?,
            t.parse().map_err(|_| format!("bad {t:?}"))?,
        );
        if n == 0 || n > t {
            return Err(format!("{s}: need 1 <= N <= T"));
        }
        Ok(Subset::Part(n, t))
    }

    fn selects(&self, pack: &PackId) -> bool {
        let v = u64::from_le_bytes(pack[..8].try_into().expect("8 bytes"));
        match *self {
            Subset::Part(n, t) => v % t == n - 1,
            Subset::Fraction(f) => (v as f64) < f * u64::MAX as f64,
        }
    }
}

#[derive(Debug, Default, Clone)]
pub struct VerifyOptions {
    pub read_data: bool,
    pub subset: Option<Subset>,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct VerifyReport {
    pub backups: usize,
    pub packs: usize,
    pub chunks_referenced: usize,
    /// Chunks read back and re-hashed.
    pub chunks_checked: usize,
    pub bytes_hashed: u64,
    /// Indexed chunks no backup references (gc reclaims them).
    pub orphan_chunks: usize,
    pub orphan_bytes: u64,
    pub temp_files: usize,
    pub problems: Vec<String>,
    /// Backups that cannot be restored whole.
    pub damaged_backups: Vec<String>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// The quick structural check.
pub fn verify(repo: &Repo) -> Result<VerifyReport> {
    verify_with(repo, &VerifyOptions::default())
}

/// What one referenced chunk must be, and who needs it.
struct Wanted {
    raw_len: usize,
    backups: BTreeSet<String>,
}

struct Check<'a> {
    repo: &'a Repo,
    rep: VerifyReport,
    damaged: BTreeSet<String>,
}

impl Check<'_> {
    fn problem(&mut self, p: String, affected: impl IntoIterator<Item = String>) {
        let ids: Vec<String> = affected.into_iter().collect();
        if ids.is_empty() {
            self.rep.problems.push(p);
        } else {
            self.rep
                .problems
                .push(format!("{p} (damages backups {})", ids.join(", ")));
        }
        self.damaged.extend(ids);
    }
}

pub fn verify_with(repo: &Repo, o: &VerifyOptions) -> Result<VerifyReport> {
    let mut c = Check {
        repo,
        rep: VerifyReport::default(),
        damaged: BTreeSet::new(),
    };
    for (seg, why) in repo.index().damaged.clone() {
        c.problem(format!("index segment {seg}: {why}"), []);
    }
    let manifests = load_all(&mut c)?;
    let pruned = repo.pruned_ids()?;
    for m in manifests.values() {
        check_chain(&mut c, m, &manifests, &pruned);
    }
    let wanted = wanted_chunks(&mut c, &manifests);
    c.rep.chunks_referenced = wanted.len();
    let by_pack = locate(&mut c, &wanted);
    c.rep.packs = by_pack.len();
    for (pack, chunks) in &by_pack {
        check_pack(&mut c, pack, chunks, &wanted);
        let read = o.read_data && o.subset.is_none_or(|s| s.selects(pack));
        if read {
            read_chunks(&mut c, chunks, &wanted);
        }
    }
    for (id, l) in &repo.index().chunks {
        if !wanted.contains_key(id) {
            c.rep.orphan_chunks += 1;
            c.rep.orphan_bytes += u64::from(l.len);
        }
    }
    c.rep.temp_files = repo.leftovers()?;
    c.rep.damaged_backups = c.damaged.into_iter().collect();
    Ok(c.rep)
}

fn load_all(c: &mut Check) -> Result<BTreeMap<String, Manifest>> {
    let mut manifests = BTreeMap::new();
    for id in c.repo.ids()? {
        match c.repo.load(&id) {
            Ok(m) => {
                manifests.insert(id, m);
            }
            Err(e) => c.problem(format!("backup {id}: {e}"), [id.clone()]),
        }
    }
    c.rep.backups = manifests.len();
    Ok(manifests)
}

/// Parents exist (or were pruned: every manifest holds the whole image,
/// so a child never needs its parent's data), describe the same LUN and
/// are older generations; no cycles.
fn check_chain(
    c: &mut Check,
    m: &Manifest,
    all: &BTreeMap<String, Manifest>,
    pruned: &BTreeSet<String>,
) {
    let mut seen = HashSet::new();
    let mut cur = m;
    while let Some(pid) = &cur.parent {
        if !seen.insert(pid.clone()) {
            c.problem(format!("backup {}: parent chain has a cycle", m.id), []);
            return;
        }
        let Some(p) = all.get(pid) else {
            if !pruned.contains(pid) {
                c.problem(format!("backup {}: parent {pid} is missing", cur.id), []);
            }
            return;
        };
        if p.lun != cur.lun {
            let msg = format!("backup {}: parent {pid} is of another LUN identity", cur.id);
            c.problem(msg, []);
        }
        if p.lock_generation >= cur.lock_generation {
            let msg = format!(
                "backup {}: generation {} not above parent's {}",
                cur.id, cur.lock_generation, p.lock_generation
            );
            c.problem(msg, []);
        }
        cur = p;
    }
}

fn wanted_chunks(
    c: &mut Check,
    manifests: &BTreeMap<String, Manifest>,
) -> HashMap<blake3::Hash, Wanted> {
    let mut wanted: HashMap<blake3::Hash, Wanted> = HashMap::new();
    for m in manifests.values() {
        for (i, e) in m.extents.iter().enumerate() {
            let ExtentRef::Blake3(h) = e else { continue };
            let Ok(id) = parse_id(h) else {
                c.problem(
                    format!("backup {}: bad chunk id {h:?}", m.id),
                    [m.id.clone()],
                );
                continue;
            };
            let len = m.lun.extent_bytes(i as u64);
            let w = wanted.entry(id).or_insert(Wanted {
                raw_len: len,
                backups: BTreeSet::new(),
            });
            w.backups.insert(m.id.clone());
            if w.raw_len != len {
                let msg = format!(
                    "chunk {h} used for extents of {} and {len} bytes",
                    w.raw_len
                );
                c.problem(msg, [m.id.clone()]);
            }
        }
    }
    wanted
}

/// Referenced chunks grouped by pack; unindexed ones are problems.
fn locate(
    c: &mut Check,
    wanted: &HashMap<blake3::Hash, Wanted>,
) -> BTreeMap<PackId, Vec<(blake3::Hash, Loc)>> {
    let mut by_pack: BTreeMap<PackId, Vec<(blake3::Hash, Loc)>> = BTreeMap::new();
    let idx = c.repo.index();
    let mut missing = Vec::new();
    for (id, w) in wanted {
        match idx.chunks.get(id) {
            Some(l) if l.raw_len as usize != w.raw_len => {
                missing.push((*id, "indexed with another length"))
            }
            Some(l) => by_pack.entry(l.pack).or_default().push((*id, *l)),
            None => missing.push((*id, "not in the index")),
        }
    }
    drop(idx);
    for (id, why) in missing {
        c.problem(
            format!("chunk {}: {why}", id.to_hex()),
            wanted[&id].backups.clone(),
        );
    }
    by_pack
}

fn affected<'a>(
    chunks: impl IntoIterator<Item = &'a blake3::Hash>,
    wanted: &HashMap<blake3::Hash, Wanted>,
) -> BTreeSet<String> {
    chunks
        .into_iter()
        .filter_map(|id| wanted.get(id))
        .flat_map(|w| w.backups.iter().cloned())
        .collect()
}

/// The pack exists, covers every referenced blob, and its trailer lists
/// them where the index says.
fn check_pack(
    c: &mut Check,
    pack: &PackId,
    chunks: &[(blake3::Hash, Loc)],
    wanted: &HashMap<blake3::Hash, Wanted>,
) {
    let path = pack::pack_path(&c.repo.dir("packs"), pack);
    let name = hex::encode(pack);
    let size = match std::fs::metadata(&path) {
        Ok(m) => m.len(),
        Err(e) => {
            let ids = affected(chunks.iter().map(|x| &x.0), wanted);
            return c.problem(format!("pack {name}: {e}"), ids);
        }
    };
    let short: Vec<_> = chunks
        .iter()
        .filter(|(_, l)| l.offset + u64::from(l.len) > size)
        .map(|x| &x.0)
        .collect();
    if !short.is_empty() {
        let msg = format!(
            "pack {name}: {size} bytes, truncated ({} chunks beyond its end)",
            short.len()
        );
        let ids = affected(short, wanted);
        c.problem(msg, ids);
    }
    match pack::read_trailer(&c.repo.codec, &path, pack) {
        Err(why) => {
            let ids = affected(chunks.iter().map(|x| &x.0), wanted);
            c.problem(format!("pack {name}: trailer: {why}"), ids);
        }
        Ok(entries) => {
            let listed: HashSet<(blake3::Hash, u64, u32)> =
                entries.iter().map(|e| (e.id, e.offset, e.len)).collect();
            let bad: Vec<_> = chunks
                .iter()
                .filter(|(id, l)| !listed.contains(&(*id, l.offset, l.len)))
                .map(|x| &x.0)
                .collect();
            if !bad.is_empty() {
                let msg = format!(
                    "pack {name}: {} chunks where its trailer does not list them",
                    bad.len()
                );
                let ids = affected(bad, wanted);
                c.problem(msg, ids);
            }
        }
    }
}

fn read_chunks(
    c: &mut Check,
    chunks: &[(blake3::Hash, Loc)],
    wanted: &HashMap<blake3::Hash, Wanted>,
) {
    let mut sorted = chunks.to_vec();
    sorted.sort_by_key(|(_, l)| l.offset);
    for (id, l) in &sorted {
        match c.repo.read_chunk(id, l) {
            Ok(d) => {
                c.rep.chunks_checked += 1;
                c.rep.bytes_hashed += d.len() as u64;
            }
            Err(e) => {
                let ids = affected([id], wanted);
                c.problem(e.to_string(), ids);
            }
        }
    }
}
