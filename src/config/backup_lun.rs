//! Backup LUNs (`backend = "backup"`, instant restore): their keys'
//! validation and opening them (src/backend/backup.rs serves them).
//!
//! ```toml
//! [[target.lun]]
//! id = 1
//! backend = "backup"
//! repository = "/backups/lun0"       # relative paths: under data_dir
//! backup = "1764651600000-3fa2"
//! key_file = "/etc/gentgt/repo.key"  # or passphrase_env = "VAR"; encrypted repositories
//! cache_size = "64MiB"               # decoded chunks kept in memory
//! writable = false                   # true: writes go to the overlay
//! overlay = "lun1.overlay"           # default: <target>-lun<id>-<backup>.overlay
//! ```

use super::ConfigError;
use super::schema::{BackendKind, IoEngine, LunConfig};
use super::validate::Findings;
use crate::backend::Backend;
use crate::backend::backup::{BackupBackend, InstantOptions};
use crate::backup::crypto::KeySource;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Default `cache_size`.
pub const DEFAULT_CACHE_BYTES: u64 = 64 << 20;
/// Smallest `cache_size`: a few extents in flight and the read-ahead.
const MIN_CACHE_BYTES: u64 = 1 << 20;

/// The keys only backup LUNs take, with whether `lun` sets each.
fn backup_keys(lun: &LunConfig) -> [(&'static str, bool); 7] {
    [
        ("repository", lun.repository.is_some()),
        ("backup", lun.backup.is_some()),
        ("key_file", lun.key_file.is_some()),
        ("passphrase_env", lun.passphrase_env.is_some()),
        ("cache_size", lun.cache_size.is_some()),
        ("writable", lun.writable),
        ("overlay", lun.overlay.is_some()),
    ]
}

/// Every check of a LUN's backup keys that needs no disk.
pub(super) fn check(what: &str, lun: &LunConfig, f: &mut Findings) {
    if lun.backend != BackendKind::Backup {
        for (key, _) in backup_keys(lun).iter().filter(|(_, set)| *set) {
            f.errors.push(format!(
                "{what}: {key} is for backend = \"backup\" LUNs only"
            ));
        }
        return;
    }
    let mut err = |m: String| f.errors.push(format!("{what}: {m}"));
    if lun
        .repository
        .as_ref()
        .is_none_or(|p| p.as_os_str().is_empty())
    {
        err("a backup LUN needs repository = \"DIR\"".into());
    }
    match lun.backup.as_deref() {
        None | Some("") => err("a backup LUN needs backup = \"ID\" (see gentgt backups)".into()),
        Some(id)
            if !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b)) =>
        {
            err(format!("backup {id:?} is not a backup id"))
        }
        _ => {}
    }
    if lun.path.is_some() {
        err("a backup LUN takes repository and backup, not path".into());
    }
    if lun.key_file.is_some() && lun.passphrase_env.is_some() {
        err("give key_file or passphrase_env, not both".into());
    }
    if lun.read_only && lun.writable {
        err("read_only = true and writable = true contradict each other".into());
    }
    if lun.overlay.is_some() && !lun.writable {
        err("overlay is only used with writable = true".into());
    }
    if lun.cache_size.is_some_and(|c| c.0 < MIN_CACHE_BYTES) {
        err(format!(
            "cache_size must be at least {MIN_CACHE_BYTES} bytes"
        ));
    }
    if lun.tracking.is_some_and(|t| t != super::TrackingMode::Off) {
        err("backup LUNs do not track changes (leave tracking out or set \"off\")".into());
    }
    if lun.io != IoEngine::Buffered || lun.direct {
        err("io and direct apply to file LUNs only".into());
    }
}

/// The overlay file of a writable backup LUN of `target`.
pub fn overlay_path(target: &str, lun: &LunConfig, data_dir: &Path) -> Option<PathBuf> {
    if lun.backend != BackendKind::Backup || !lun.writable {
        return None;
    }
    let default = || {
        let backup = lun.backup.as_deref().unwrap_or_default();
        PathBuf::from(format!("{target}-lun{}-{backup}.overlay", lun.id))
    };
    Some(data_dir.join(lun.overlay.clone().unwrap_or_else(default)))
}

/// Open the backup LUN `lun` of `target`: repository (shared lock), the
/// backup's manifest and index, and the overlay when writable. Its size
/// and block size must match the configuration's, where given.
pub(super) fn open(
    target: &str,
    lun: &LunConfig,
    data_dir: &Path,
) -> Result<Arc<dyn Backend>, ConfigError> {
    let what = format!("target {target:?} LUN {} (backup LUN)", lun.id);
    let invalid = |m: String| ConfigError::Invalid(vec![format!("{what}: {m}")]);
    let key = match (&lun.key_file, &lun.passphrase_env) {
        (Some(k), _) => Some(KeySource::File(data_dir.join(k))),
        (None, Some(var)) => match std::env::var(var) {
            Ok(p) if !p.is_empty() => Some(KeySource::Passphrase(p)),
            _ => return Err(invalid(format!("environment variable {var} is not set"))),
        },
        (None, None) => None,
    };
    let options = InstantOptions {
        repository: data_dir.join(lun.repository.clone().unwrap_or_default()),
        backup: lun.backup.clone().unwrap_or_default(),
        key,
        cache_bytes: lun.cache_size.map_or(DEFAULT_CACHE_BYTES, |c| c.0),
        overlay: overlay_path(target, lun, data_dir),
    };
    let b = BackupBackend::open(&options).map_err(|source| ConfigError::Backup {
        what: what.clone(),
        source,
    })?;
    if b.block_size() != lun.block_size {
        return Err(invalid(format!(
            "block_size {} differs from the backup's {} (set block_size = {})",
            lun.block_size,
            b.block_size(),
            b.block_size()
        )));
    }
    if lun.size.is_some_and(|s| s.0 != b.size()) {
        return Err(invalid(format!(
            "size {} differs from the backup's {} bytes (leave size out)",
            lun.size_bytes(),
            b.size()
        )));
    }
    Ok(Arc::new(b))
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigError};

    fn errors(lun_keys: &str) -> Vec<String> {
        let text = format!(
            "[[target]]\nname = \"iqn.2026-11.dev.gentgt:t\"\n[[target.lun]]\nid = 0\n{lun_keys}\n"
        );
        match Config::from_toml(&text, "test") {
            Err(ConfigError::Invalid(e)) => e,
            Ok(_) => vec![],
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn backup_keys_are_checked() {
        let ok = "backend = \"backup\"\nrepository = \"/r\"\nbackup = \"17-ab\"";
        assert_eq!(errors(ok), Vec::<String>::new());
        let cases = [
            ("backend = \"backup\"\nbackup = \"1\"", "needs repository"),
            ("backend = \"backup\"\nrepository = \"/r\"", "needs backup"),
            (&format!("{ok}\npath = \"a.img\""), "not path"),
            (&format!("{ok}\noverlay = \"o\""), "only used with writable"),
            (
                &format!("{ok}\nwritable = true\nread_only = true"),
                "contradict",
            ),
            (&format!("{ok}\ncache_size = 4096"), "cache_size"),
            (&format!("{ok}\ntracking = \"volatile\""), "do not track"),
            (
                &format!("{ok}\nkey_file = \"k\"\npassphrase_env = \"P\""),
                "not both",
            ),
            (
                "backend = \"backup\"\nrepository = \"/r\"\nbackup = \"../x\"",
                "not a backup id",
            ),
            (
                "backend = \"memory\"\nsize = 4096\nwritable = true",
                "writable is for backend = \"backup\" LUNs only",
            ),
            ("backend = \"memory\"", "size is required"),
        ];
        for (keys, needle) in cases {
            let e = errors(keys);
            assert!(e.iter().any(|m| m.contains(needle)), "{keys}: {e:?}");
        }
    }

    #[test]
    fn two_writable_luns_on_one_overlay_are_refused() {
        let lun = |id| {
            format!(
                "[[target.lun]]\nid = {id}\nbackend = \"backup\"\nrepository = \"/r\"\n\
                 backup = \"b\"\nwritable = true\noverlay = \"o\"\n"
            )
        };
        let text = format!(
            "[[target]]\nname = \"iqn.2026-11.dev.gentgt:t\"\n{}{}",
            lun(0),
            lun(1)
        );
        let e = Config::from_toml(&text, "t").unwrap_err().to_string();
        assert!(e.contains("already used"), "{e}");
    }
}
