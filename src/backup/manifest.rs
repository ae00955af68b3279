//! One backup's manifest (`backups/<id>/manifest.json`): the LUN it came
//! from, the generation its image equals, its parent, and a reference for
//! every extent of the WHOLE image, so restoring never walks the chain.

use serde::{Deserialize, Serialize};

/// Manifest format version (bump on incompatible change).
pub const MANIFEST_VERSION: u32 = 1;

/// What identifies the LUN and how it is cut into extents. Two backups
/// may only be chained when all of it is equal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LunId {
    /// NAA designator from VPD page 83h, hex ("" if the LUN has none).
    pub naa: String,
    /// Tracking UUID, hex.
    pub uuid: String,
    pub capacity_blocks: u64,
    pub block_size: u32,
    pub extent_blocks: u32,
}

impl LunId {
    pub fn extent_count(&self) -> u64 {
        let eb = u64::from(self.extent_blocks.max(1));
        self.capacity_blocks.div_ceil(eb)
    }

    /// (first LBA, blocks) of extent `i`; the last one may be short.
    pub fn extent_range(&self, i: u64) -> (u64, u32) {
        let eb = u64::from(self.extent_blocks);
        let lba = i * eb;
        let blocks = eb.min(self.capacity_blocks.saturating_sub(lba));
        (lba, blocks as u32)
    }

    pub fn extent_bytes(&self, i: u64) -> usize {
        self.extent_range(i).1 as usize * self.block_size as usize
    }

    pub fn logical_bytes(&self) -> u64 {
        self.capacity_blocks * u64::from(self.block_size)
    }
}

/// One extent of the image: all zeros (no chunk), or a chunk by digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExtentRef {
    Zero,
    Blake3(String),
}

/// How a backup got a consistent image.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// One pass over a point-in-time view (contract version 2).
    View,
    /// Converge passes, then a pass under the write lock. The default, so
    /// manifests written before views existed read as what they were.
    #[default]
    Lock,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::View => "view",
            Method::Lock => "lock",
        }
    }
}

/// What the run did. Fields added after the first release carry
/// `serde(default)` so older manifests still load.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub full: bool,
    #[serde(default)]
    pub method: Method,
    /// Why the lock method was used where a view was wanted (version-1
    /// target, views off, the view lost or taken), if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
    pub bytes_read: u64,
    pub extents_copied: u64,
    /// Passes including the final one under the lock.
    pub passes: u32,
    pub lock_held_ms: u64,
    pub duration_ms: u64,
    pub reconnects: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    pub id: String,
    pub parent: Option<String>,
    /// Milliseconds since the Unix epoch.
    pub created_ms: u64,
    pub lun: LunId,
    /// The generation the image equals: LOCK GENERATION of the final
    /// locked pass, or VIEW GENERATION for a view backup (the name is the
    /// version-1 one, kept for the format). The next backup asks for
    /// changes since it.
    pub lock_generation: u64,
    pub extents: Vec<ExtentRef>,
    pub stats: Stats,
}

impl Manifest {
    /// Structural checks a manifest must pass before anyone trusts it.
    pub fn check(&self) -> Result<(), String> {
        if self.version != MANIFEST_VERSION {
            return Err(format!("manifest version {}", self.version));
        }
        let need = self.lun.extent_count();
        if self.extents.len() as u64 != need {
            return Err(format!(
                "{} extent entries, the LUN has {need}",
                self.extents.len()
            ));
        }
        if self.lun.block_size == 0 || !self.lun.extent_blocks.is_power_of_two() {
            return Err("impossible block or extent size".into());
        }
        for e in &self.extents {
            if let ExtentRef::Blake3(h) = e
                && !is_digest(h)
            {
                return Err(format!("bad digest {h:?}"));
            }
        }
        Ok(())
    }
}

/// A BLAKE3 digest in lowercase hex (also keeps paths inside chunks/).
pub fn is_digest(h: &str) -> bool {
    h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}
