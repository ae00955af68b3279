//! `gentgt verify`: every manifest loads and passes its checks, every
//! parent exists and describes the same LUN, every referenced chunk exists,
//! has its extent's length and still hashes to its name. Chunks no backup
//! references (left by interrupted runs) are reported, not problems.

use super::Result;
use super::manifest::{ExtentRef, Manifest};
use super::repo::Repo;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};

#[derive(Debug, Default, Clone, Serialize)]
pub struct VerifyReport {
    pub backups: usize,
    pub chunks_checked: usize,
    pub bytes_hashed: u64,
    pub orphan_chunks: usize,
    pub temp_files: usize,
    pub problems: Vec<String>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

pub fn verify(repo: &Repo) -> Result<VerifyReport> {
    let mut rep = VerifyReport::default();
    let mut manifests = BTreeMap::new();
    for id in repo.ids()? {
        match repo.load(&id) {
            Ok(m) => {
                manifests.insert(id, m);
            }
            Err(e) => rep.problems.push(format!("backup {id}: {e}")),
        }
    }
    rep.backups = manifests.len();
    for m in manifests.values() {
        check_chain(m, &manifests, &mut rep.problems);
    }
    // digest -> expected length (from the first extent naming it)
    let mut wanted: HashMap<String, (usize, String)> = HashMap::new();
    for m in manifests.values() {
        for (i, e) in m.extents.iter().enumerate() {
            if let ExtentRef::Blake3(h) = e {
                let len = m.lun.extent_bytes(i as u64);
                let prev = wanted.entry(h.clone()).or_insert((len, m.id.clone()));
                if prev.0 != len {
                    rep.problems.push(format!(
                        "backup {}: chunk {h} used for extents of {} and {len} bytes",
                        m.id, prev.0
                    ));
                }
            }
        }
    }
    for (h, (len, id)) in &wanted {
        match repo.get_chunk(h) {
            Ok(d) if d.len() == *len => {
                rep.chunks_checked += 1;
                rep.bytes_hashed += d.len() as u64;
            }
            Ok(d) => rep.problems.push(format!(
                "chunk {h} (backup {id}) is {} bytes, expected {len}",
                d.len()
            )),
            Err(e) => rep.problems.push(format!("chunk {h} (backup {id}): {e}")),
        }
    }
    let present: HashSet<String> = repo.chunk_files()?.into_iter().map(|c| c.0).collect();
    rep.orphan_chunks = present.iter().filter(|h| !wanted.contains_key(*h)).count();
    rep.temp_files = repo.leftovers()?;
    Ok(rep)
}

/// Parents exist, describe the same LUN (identity and geometry), and are
/// older generations; no cycles.
fn check_chain(m: &Manifest, all: &BTreeMap<String, Manifest>, problems: &mut Vec<String>) {
    let mut seen = HashSet::new();
    let mut cur = m;
    while let Some(pid) = &cur.parent {
        if !seen.insert(pid.clone()) {
            problems.push(format!("backup {}: parent chain has a cycle", m.id));
            return;
        }
        let Some(p) = all.get(pid) else {
            problems.push(format!("backup {}: parent {pid} is missing", cur.id));
            return;
        };
        if p.lun != cur.lun {
            problems.push(format!(
                "backup {}: parent {pid} is of another LUN identity",
                cur.id
            ));
        }
        if p.lock_generation >= cur.lock_generation {
            problems.push(format!(
                "backup {}: generation {} not above parent's {}",
                cur.id, cur.lock_generation, p.lock_generation
            ));
        }
        cur = p;
    }
}
