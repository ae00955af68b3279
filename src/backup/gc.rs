//! `gentgt gc`: reclaim chunks no backup references.
//!
//! Under the exclusive lock: every manifest must load (a backup gc cannot
//! read is a backup whose chunks it cannot know, so it refuses). Packs
//! whose chunks are all dead are deleted; packs partly dead are repacked,
//! worst first, until dead bytes are at most `max_unused` of what stays.
//! The order makes every crash harmless:
//!
//! 1. live chunks of repacked packs are copied (checked) into new packs,
//!    fsynced;
//! 2. one new index segment lists every live chunk, published;
//! 3. the old segments are deleted, then the old packs.
//!
//! After 2 both old and new segments may be present; both name existing
//! packs. Files nothing indexes (packs and tmp files of a backup running
//! despite the lock, or of a crashed one) are deleted only once older
//! than the grace period; a backup that reused a chunk gc dropped notices
//! at commit (`Repo::check_still_indexed`) and publishes nothing.

use super::index::{self, Loc};
use super::manifest::ExtentRef;
use super::pack::{self, PackId, PackWriter};
use super::repo::{Repo, loc_of, parse_id};
use super::{BackupError, Result, fsio};
use serde::Serialize;
use std::collections::{BTreeSet, HashMap, HashSet};

#[derive(Debug, Clone)]
pub struct GcOptions {
    /// Dead bytes allowed to stay in packs, as a fraction of pack bytes.
    pub max_unused: f64,
    /// Files nothing indexes are kept this long (a running backup's).
    pub grace_secs: u64,
    pub dry_run: bool,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            max_unused: 0.05,
            grace_secs: 3600,
            dry_run: false,
        }
    }
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct GcReport {
    pub dry_run: bool,
    pub packs_before: usize,
    pub bytes_before: u64,
    pub packs_deleted: usize,
    pub packs_repacked: usize,
    pub packs_written: usize,
    pub unindexed_packs_deleted: usize,
    pub chunks_dropped: usize,
    pub temp_files_deleted: usize,
    pub packs_after: usize,
    pub bytes_after: u64,
    /// Bytes of chunks no backup references, still in packs after gc.
    pub unreferenced_bytes_after: u64,
}

/// Per indexed pack: its live and dead chunks.
#[derive(Default)]
struct PackUse {
    live: Vec<(blake3::Hash, Loc)>,
    live_bytes: u64,
    dead_bytes: u64,
    dead: usize,
}

pub fn gc(repo: &Repo, o: &GcOptions) -> Result<GcReport> {
    let mut rep = GcReport {
        dry_run: o.dry_run,
        ..Default::default()
    };
    let referenced = referenced(repo)?;
    let (segments, usage) = usage(repo, &referenced)?;
    let files = repo.pack_files()?;
    rep.packs_before = files.len();
    rep.bytes_before = files.iter().map(|f| f.2).sum();
    let unindexed: Vec<_> = files
        .iter()
        .filter(|(id, p, _)| !usage.contains_key(id) && fsio::age_secs(p) >= o.grace_secs)
        .collect();
    let repack = choose_repack(&usage, o.max_unused);
    let empty: Vec<PackId> = usage
        .iter()
        .filter(|(_, u)| u.live.is_empty())
        .map(|(id, _)| *id)
        .collect();
    rep.packs_deleted = empty.len();
    rep.packs_repacked = repack.len();
    rep.unindexed_packs_deleted = unindexed.len();
    rep.chunks_dropped = usage.values().map(|u| u.dead).sum();
    if o.dry_run {
        return Ok(rep);
    }
    let moved = copy_live(repo, &usage, &repack, &mut rep)?;
    let mut live: HashMap<blake3::Hash, Loc> = HashMap::new();
    for u in usage.values() {
        live.extend(u.live.iter().copied());
    }
    live.extend(moved);
    let entries: Vec<_> = live.iter().map(|(h, l)| (*h, *l)).collect();
    let name = index::write_segment(&repo.codec, &repo.dir("index"), &repo.dir("tmp"), &entries)?;
    for s in &segments {
        remove(&repo.dir("index").join(s))?;
    }
    fsio::fsync_dir(&repo.dir("index"))?;
    let packs = repo.dir("packs");
    for id in empty.iter().chain(&repack) {
        remove(&pack::pack_path(&packs, id))?;
    }
    for (_, p, _) in &unindexed {
        remove(p)?;
    }
    rep.temp_files_deleted = clean_tmp(repo, o.grace_secs)?;
    {
        let mut idx = repo.index.write().unwrap_or_else(|e| e.into_inner());
        idx.chunks = live;
        idx.segments = vec![name];
    }
    let after = repo.pack_files()?;
    rep.packs_after = after.len();
    rep.bytes_after = after.iter().map(|f| f.2).sum();
    rep.unreferenced_bytes_after = usage
        .iter()
        .filter(|(id, u)| !repack.contains(*id) && !u.live.is_empty())
        .map(|(_, u)| u.dead_bytes)
        .sum();
    Ok(rep)
}

fn remove(p: &std::path::Path) -> Result<()> {
    match std::fs::remove_file(p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(BackupError::Io {
            path: p.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// Every chunk any manifest names; refuses if one cannot be read.
fn referenced(repo: &Repo) -> Result<HashSet<blake3::Hash>> {
    let mut out = HashSet::new();
    for id in repo.ids()? {
        let m = repo.load(&id).map_err(|e| {
            BackupError::Invalid(format!(
                "gc refuses to run: backup {id} cannot be read ({e}); run verify"
            ))
        })?;
        for e in &m.extents {
            if let ExtentRef::Blake3(h) = e {
                out.insert(parse_id(h)?);
            }
        }
    }
    Ok(out)
}

fn usage(
    repo: &Repo,
    referenced: &HashSet<blake3::Hash>,
) -> Result<(Vec<String>, HashMap<PackId, PackUse>)> {
    let idx = repo.index();
    if let Some((seg, why)) = idx.damaged.first() {
        return Err(BackupError::Invalid(format!(
            "gc refuses to run: index segment {seg} is damaged ({why}); run verify"
        )));
    }
    let mut usage: HashMap<PackId, PackUse> = HashMap::new();
    for (id, l) in &idx.chunks {
        let u = usage.entry(l.pack).or_default();
        if referenced.contains(id) {
            u.live.push((*id, *l));
            u.live_bytes += u64::from(l.len);
        } else {
            u.dead += 1;
            u.dead_bytes += u64::from(l.len);
        }
    }
    Ok((idx.segments.clone(), usage))
}

/// Partly dead packs, lowest live fraction first, until what stays dead
/// is within `max_unused` of what stays.
fn choose_repack(usage: &HashMap<PackId, PackUse>, max_unused: f64) -> BTreeSet<PackId> {
    let mut partial: Vec<(&PackId, &PackUse)> = usage
        .iter()
        .filter(|(_, u)| !u.live.is_empty() && u.dead_bytes > 0)
        .collect();
    partial.sort_by(|a, b| {
        let f = |u: &PackUse| u.live_bytes as f64 / (u.live_bytes + u.dead_bytes) as f64;
        f(a.1).total_cmp(&f(b.1))
    });
    let mut dead: u64 = partial.iter().map(|(_, u)| u.dead_bytes).sum();
    let mut total: u64 = usage
        .values()
        .filter(|u| !u.live.is_empty())
        .map(|u| u.live_bytes + u.dead_bytes)
        .sum();
    let mut out = BTreeSet::new();
    for (id, u) in partial {
        if dead as f64 <= max_unused * total as f64 {
            break;
        }
        dead -= u.dead_bytes;
        total -= u.dead_bytes;
        out.insert(*id);
    }
    out
}

/// Copy the live chunks of `repack` into new packs, each read back and
/// checked first so a damaged chunk is never carried on as if whole.
fn copy_live(
    repo: &Repo,
    usage: &HashMap<PackId, PackUse>,
    repack: &BTreeSet<PackId>,
    rep: &mut GcReport,
) -> Result<HashMap<blake3::Hash, Loc>> {
    let mut moved = HashMap::new();
    let mut w: Option<PackWriter> = None;
    let mut dirs = BTreeSet::new();
    for id in repack {
        let mut live = usage[id].live.clone();
        live.sort_by_key(|(_, l)| l.offset);
        let path = pack::pack_path(&repo.dir("packs"), id);
        let f = std::fs::File::open(&path).map_err(BackupError::io(&path))?;
        for (h, l) in live {
            let blob = pack::read_blob(&f, l.offset, l.len).map_err(BackupError::io(&path))?;
            repo.codec
                .decode_chunk(&h, l.raw_len as usize, &blob)
                .map_err(|why| BackupError::Corrupt {
                    what: format!("chunk {} in pack {}", h.to_hex(), path.display()),
                    why: format!("{why}; gc stopped before changing anything"),
                })?;
            if w.is_none() {
                w = Some(PackWriter::create(&repo.dir("tmp"))?);
            }
            let p = w.as_mut().expect("just made");
            let e = p.append(h, &blob, l.raw_len as usize)?;
            moved.insert(h, loc_of(p.id, &e));
            if p.bytes() >= repo.cfg.pack_bytes
                && let Some(full) = w.take()
            {
                dirs.insert(full.finish(&repo.codec, &repo.dir("packs"))?.2);
                rep.packs_written += 1;
            }
        }
    }
    if let Some(p) = w {
        dirs.insert(p.finish(&repo.codec, &repo.dir("packs"))?.2);
        rep.packs_written += 1;
    }
    for d in &dirs {
        fsio::fsync_dir(d)?;
    }
    Ok(moved)
}

fn clean_tmp(repo: &Repo, grace_secs: u64) -> Result<usize> {
    let dir = repo.dir("tmp");
    let mut n = 0;
    for name in fsio::names(&dir)? {
        let p = dir.join(&name);
        if fsio::age_secs(&p) >= grace_secs && p.is_file() {
            remove(&p)?;
            n += 1;
        }
    }
    Ok(n)
}
