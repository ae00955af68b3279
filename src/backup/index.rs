//! The repository index: which pack, offset and length hold each chunk.
//!
//! It is a set of immutable segments `index/<ms>-<8 hex>`, each a sealed
//! list of 64-byte records (chunk id, pack id, offset, stored length,
//! plain length). A backup adds one segment for the packs it wrote; gc
//! writes one consolidated segment and then deletes the ones it replaces.
//! Loaded, the segments are merged into one map; when a chunk is listed
//! twice (a gc interrupted between its two steps) the later segment wins
//! and either location is valid, because packs are deleted only after the
//! segments naming them.

use super::Result;
use super::format::{Codec, Kind, Reader};
use super::fsio;
use super::pack::PackId;
use std::collections::HashMap;
use std::path::Path;

const RECORD: usize = 32 + 16 + 8 + 4 + 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loc {
    pub pack: PackId,
    pub offset: u64,
    pub len: u32,
    pub raw_len: u32,
}

/// The merged index and what could not be read of it.
#[derive(Debug, Default)]
pub struct Index {
    pub chunks: HashMap<blake3::Hash, Loc>,
    /// Segment names loaded, sorted.
    pub segments: Vec<String>,
    /// (segment, why) for segments that failed their check.
    pub damaged: Vec<(String, String)>,
}

pub fn new_segment_name() -> String {
    format!(
        "{:013}-{}",
        super::repo::now_ms(),
        hex::encode(rand::random::<[u8; 4]>())
    )
}

pub fn encode(entries: &[(blake3::Hash, Loc)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * RECORD);
    for (id, l) in entries {
        out.extend_from_slice(id.as_bytes());
        out.extend_from_slice(&l.pack);
        out.extend_from_slice(&l.offset.to_le_bytes());
        out.extend_from_slice(&l.len.to_le_bytes());
        out.extend_from_slice(&l.raw_len.to_le_bytes());
    }
    out
}

pub fn decode(b: &[u8]) -> std::result::Result<Vec<(blake3::Hash, Loc)>, String> {
    if !b.len().is_multiple_of(RECORD) {
        return Err("length is not a whole number of records".into());
    }
    let mut r = Reader { buf: b };
    let mut out = Vec::with_capacity(b.len() / RECORD);
    while !r.buf.is_empty() {
        let id = blake3::Hash::from_bytes(r.arr()?);
        out.push((
            id,
            Loc {
                pack: r.arr()?,
                offset: r.u64()?,
                len: r.u32()?,
                raw_len: r.u32()?,
            },
        ));
    }
    Ok(out)
}

/// Read one segment, checked.
pub fn read_segment(
    codec: &Codec,
    dir: &Path,
    name: &str,
) -> std::result::Result<Vec<(blake3::Hash, Loc)>, String> {
    let bytes = std::fs::read(dir.join(name)).map_err(|e| e.to_string())?;
    decode(&codec.open(Kind::Index, name.as_bytes(), &bytes)?)
}

/// Every segment of `dir`, merged.
pub fn load(codec: &Codec, dir: &Path) -> Result<Index> {
    let mut idx = Index::default();
    for name in fsio::names(dir)? {
        match read_segment(codec, dir, &name) {
            Ok(entries) => idx.chunks.extend(entries),
            Err(why) => idx.damaged.push((name.clone(), why)),
        }
        idx.segments.push(name);
    }
    Ok(idx)
}

/// Publish a segment durably; returns its name.
pub fn write_segment(
    codec: &Codec,
    dir: &Path,
    tmp: &Path,
    entries: &[(blake3::Hash, Loc)],
) -> Result<String> {
    let name = new_segment_name();
    let sealed = codec.seal(Kind::Index, name.as_bytes(), &encode(entries));
    fsio::write_atomic(
        &tmp.join(format!("index-{name}")),
        &dir.join(&name),
        &sealed,
    )?;
    Ok(name)
}
