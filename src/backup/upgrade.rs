//! `gentgt repo-upgrade`: convert a format-1 repository (one file per
//! chunk under `chunks/`, `backups/<id>/manifest.json`) to format 2 in
//! place. Each old backup is re-stored chunk by chunk (every old chunk
//! re-hashed on the way, so corruption is not carried over) and committed
//! under its old id; `chunks/` and then `backups/` are removed at the end.
//! Interrupted, it resumes: backups already converted are skipped.

use super::lock::LockMode;
use super::manifest::{ExtentRef, Manifest};
use super::repo::{CreateOptions, Repo, RepoOptions, init, is_old_format};
use super::{BackupError, Result, fsio};
use std::fs;
use std::path::Path;

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct UpgradeReport {
    pub backups_converted: usize,
    pub backups_skipped: usize,
    pub chunks_read: usize,
}

fn old_chunk(root: &Path, h: &str) -> Result<Vec<u8>> {
    let p = root.join("chunks").join(&h[..2.min(h.len())]).join(h);
    let data = fs::read(&p).map_err(BackupError::io(&p))?;
    if blake3::hash(&data).to_hex().as_str() != h {
        return Err(BackupError::Corrupt {
            what: format!("old chunk {}", p.display()),
            why: "content does not match its digest".into(),
        });
    }
    Ok(data)
}

pub fn upgrade(
    root: &Path,
    create: &CreateOptions,
    key: Option<super::crypto::KeySource>,
) -> Result<UpgradeReport> {
    if !is_old_format(root) {
        return Err(BackupError::Invalid(format!(
            "{} is not a format-1 repository",
            root.display()
        )));
    }
    if !root.join("config").exists() {
        init(root, create)?;
    }
    let repo = Repo::open_with(
        root,
        &RepoOptions {
            lock: Some(LockMode::Exclusive),
            command: "repo-upgrade".into(),
            key: key.or(create.encrypt.clone()),
            upgrading: true,
            ..Default::default()
        },
    )?;
    let mut rep = UpgradeReport::default();
    let done: std::collections::HashSet<String> = repo.ids()?.into_iter().collect();
    for id in fsio::names(&root.join("backups"))? {
        if done.contains(&id) {
            rep.backups_skipped += 1;
            continue;
        }
        let p = root.join("backups").join(&id).join("manifest.json");
        let bytes = fs::read(&p).map_err(BackupError::io(&p))?;
        let mut m: Manifest = serde_json::from_slice(&bytes)
            .map_err(|source| BackupError::Json { path: p, source })?;
        for e in m.extents.iter_mut() {
            if let ExtentRef::Blake3(h) = e {
                *e = repo.put_extent(&old_chunk(root, h)?)?;
                rep.chunks_read += 1;
            }
        }
        repo.commit(&m)?;
        rep.backups_converted += 1;
    }
    for old in ["chunks", "backups"] {
        let p = root.join(old);
        if p.exists() {
            fs::remove_dir_all(&p).map_err(BackupError::io(&p))?;
        }
    }
    fsio::fsync_dir(root)?;
    Ok(rep)
}
