//! Writing a backup's image back: to a (sparse) file, or onto a LUN.

use super::manifest::{ExtentRef, Manifest};
use super::repo::Repo;
use super::{BackupError, Result};
use crate::initiator::{ConnectOptions, Initiator};
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use tokio::task::JoinSet;

/// Restore to `path`: the file is truncated to the image's size, zero
/// extents are left as holes, every chunk is checked against its digest.
/// Returns the bytes written.
pub fn restore_to_file(repo: &Repo, id: &str, path: &Path) -> Result<u64> {
    let m = repo.load(id)?;
    repo.check_indexed(&m)?;
    let r = write_image(repo, &m, path);
    if r.is_err() {
        // Never leave a partial image that could pass for the backup.
        let _ = std::fs::remove_file(path);
    }
    r
}

fn write_image(repo: &Repo, m: &Manifest, path: &Path) -> Result<u64> {
    let f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(BackupError::io(path))?;
    f.set_len(m.lun.logical_bytes())
        .map_err(BackupError::io(path))?;
    let mut written = 0u64;
    for (i, e) in m.extents.iter().enumerate() {
        let ExtentRef::Blake3(h) = e else { continue };
        let data = chunk_for(repo, m, i as u64, h)?;
        let off = m.extents_offset(i as u64);
        f.write_all_at(&data, off).map_err(BackupError::io(path))?;
        written += data.len() as u64;
    }
    f.sync_all().map_err(BackupError::io(path))?;
    Ok(written)
}

fn chunk_for(repo: &Repo, m: &Manifest, i: u64, h: &str) -> Result<Vec<u8>> {
    let data = repo.get_chunk(h)?;
    if data.len() != m.lun.extent_bytes(i) {
        return Err(BackupError::Invalid(format!(
            "chunk {h} is {} bytes, extent {i} is {}",
            data.len(),
            m.lun.extent_bytes(i)
        )));
    }
    Ok(data)
}

impl Manifest {
    fn extents_offset(&self, i: u64) -> u64 {
        self.lun.extent_range(i).0 * u64::from(self.lun.block_size)
    }
}

/// Restore onto a LUN over iSCSI (zero extents are written as zeros).
/// The LUN must have the image's block size and at least its capacity.
pub async fn restore_to_lun(
    repo: Arc<Repo>,
    id: &str,
    connect: &ConnectOptions,
    lun: u64,
    parallel: usize,
) -> Result<u64> {
    let m = Arc::new(repo.load(id)?);
    repo.check_indexed(&m)?;
    let s = Arc::new(Initiator::connect(connect).await?);
    let _ = s.test_unit_ready(lun).await;
    let (blocks, bs) = s.read_capacity16(lun).await?;
    if bs != m.lun.block_size || blocks < m.lun.capacity_blocks {
        return Err(BackupError::Invalid(format!(
            "LUN has {blocks} blocks of {bs} bytes; the image needs {} of {}",
            m.lun.capacity_blocks, m.lun.block_size
        )));
    }
    let mut set: JoinSet<Result<u64>> = JoinSet::new();
    let mut written = 0;
    for i in 0..m.lun.extent_count() {
        while set.len() >= parallel.max(1) {
            written += joined(set.join_next().await)?;
        }
        let (s, m, repo) = (s.clone(), m.clone(), repo.clone());
        set.spawn(async move {
            let (lba, _) = m.lun.extent_range(i);
            let data = match &m.extents[i as usize] {
                ExtentRef::Zero => vec![0; m.lun.extent_bytes(i)],
                ExtentRef::Blake3(h) => chunk_for(&repo, &m, i, h)?,
            };
            s.write16(lun, lba, &data, m.lun.block_size, false).await?;
            Ok(data.len() as u64)
        });
    }
    while let Some(r) = set.join_next().await {
        written += joined(Some(r))?;
    }
    s.sync_cache(lun).await?;
    if let Ok(s) = Arc::try_unwrap(s) {
        let _ = s.logout().await;
    }
    Ok(written)
}

fn joined(r: Option<std::result::Result<Result<u64>, tokio::task::JoinError>>) -> Result<u64> {
    match r {
        None => Ok(0),
        Some(r) => r.map_err(|e| BackupError::Invalid(format!("restore task failed: {e}")))?,
    }
}
