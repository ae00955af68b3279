//! Durable file operations shared by the repository's writers.

use super::{BackupError, Result};
use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

pub fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(BackupError::io(dir))
}

/// Write `data` to `tmp`, fsync it, rename it to `dest`, fsync `dest`'s
/// directory: after this returns the file is there whole, or (on a crash
/// before) not at all.
pub fn write_atomic(tmp: &Path, dest: &Path, data: &[u8]) -> Result<()> {
    let written = File::create(tmp)
        .and_then(|mut f| f.write_all(data).and_then(|()| f.sync_all()))
        .map_err(BackupError::io(tmp));
    if let Err(e) = written {
        let _ = fs::remove_file(tmp);
        return Err(e);
    }
    fs::rename(tmp, dest).map_err(BackupError::io(dest))?;
    fsync_dir(dest.parent().unwrap_or(Path::new(".")))
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
