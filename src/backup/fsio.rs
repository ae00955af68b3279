//! Durable file operations shared by the repository's writers.

use super::{BackupError, Result};
use crate::durable;
use std::fs;
use std::path::Path;

pub fn fsync_dir(dir: &Path) -> Result<()> {
    durable::sync_dir(dir).map_err(BackupError::io(dir))
}

/// Write `data` to `tmp` (in the repository's `tmp/`, same filesystem),
/// fsync it, rename it to `dest`, fsync `dest`'s directory: after this
/// returns the file is there whole, or (on a crash before) not at all.
pub fn write_atomic(tmp: &Path, dest: &Path, data: &[u8]) -> Result<()> {
    durable::replace_via(tmp, dest, |w| w.write_all(data)).map_err(BackupError::io(dest))
}

/// Names of the entries of `dir` (none if it does not exist).
pub fn names(dir: &Path) -> Result<Vec<String>> {
    let rd = match fs::read_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        r => r.map_err(BackupError::io(dir))?,
    };
    let mut out = Vec::new();
    for e in rd {
        let e = e.map_err(BackupError::io(dir))?;
        out.push(e.file_name().to_string_lossy().into_owned());
    }
    out.sort();
    Ok(out)
}

/// Seconds since `path` was last modified (0 if unknown or in the future).
pub fn age_secs(path: &Path) -> u64 {
    fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
