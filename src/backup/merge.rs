//! Merging a writable instant-restore LUN's overlay back:
//! `gentgt restore --overlay FILE` restores the backup with the extents
//! the overlay holds taken from the overlay instead, so the result is
//! what the instant LUN showed (docs/restore.md "Merging an overlay
//! back").
//!
//! The overlay must belong to this repository and backup (its map's
//! header says so) and no server may have it open (it holds an exclusive
//! flock while served; the merge takes a shared one). Only extents its
//! map names count, which is what the LUN shows after a restart: every
//! write acknowledged after SYNCHRONIZE CACHE or with FUA, and at a clean
//! stop all of them.
//!
//! The restore writes the extents from the backup first (every one the
//! overlay does not hold, resumable as usual), then the overlay's, in
//! order; a resumed merge writes the overlay's again (there is no chunk
//! id to compare them with, and they are few).

use super::manifest::Manifest;
use super::repo::Repo;
use super::restore::Counts;
use super::{BackupError, Result};
use crate::backend::overlay::{OverlayImage, OverlayOwner};
use std::path::Path;

/// The overlay at `path`, checked to belong to backup `m` of `repo`.
pub(super) fn open(repo: &Repo, m: &Manifest, path: &Path) -> Result<OverlayImage> {
    let owner = OverlayOwner {
        backup: format!("{}/{}", repo.config().id, m.id),
        size: m.lun.logical_bytes(),
        extent: u64::from(m.lun.extent_blocks) * u64::from(m.lun.block_size),
    };
    OverlayImage::open(path, &owner).map_err(|e| {
        BackupError::Invalid(format!("overlay {}: {e}: nothing written", path.display()))
    })
}

/// The extents to take from the backup: all of them but the overlay's.
pub(super) fn from_backup(ov: Option<&OverlayImage>, m: &Manifest) -> Vec<u64> {
    (0..m.lun.extent_count())
        .filter(|&i| ov.is_none_or(|o| !o.present(i)))
        .collect()
}

/// The overlay's extents, ascending.
pub(super) fn from_overlay(ov: &OverlayImage, m: &Manifest) -> Vec<u64> {
    (0..m.lun.extent_count())
        .filter(|&i| ov.present(i))
        .collect()
}

/// Write the overlay's extents into `file` at their offsets (a zero one
/// as a hole or zeros, via `zero`). `fresh`: the file is new and sparse,
/// so zeros need nothing.
pub(super) fn apply_to_file(
    ov: &OverlayImage,
    m: &Manifest,
    file: &std::fs::File,
    zero: impl Fn(u64, u64) -> std::io::Result<()>,
    fresh: bool,
) -> std::io::Result<Counts> {
    use std::os::unix::fs::FileExt;
    let mut c = Counts::default();
    for i in from_overlay(ov, m) {
        let data = ov.read_extent(i)?;
        let (off, len) = m.byte_range(i, 1);
        if data.iter().all(|&b| b == 0) {
            if !fresh {
                zero(off, len as u64)?;
            }
            c.zeroed += len as u64;
        } else {
            file.write_all_at(&data, off)?;
            c.written += len as u64;
        }
    }
    Ok(c)
}
