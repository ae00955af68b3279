//! Configuration: the TOML schema, its validation, and building the
//! [`Registry`](crate::server::Registry) the target serves from it.
//!
//! Loading and validating never touch the disk; [`build_registry`] validates
//! again and reads every stored LUN identity before it creates anything, so
//! a bad configuration leaves no file or directory behind.

mod backup_lun;
mod build;
pub mod identity;
#[cfg(test)]
mod io_tests;
#[cfg(test)]
mod lun_map_tests;
pub mod portals;
mod rbd_lun;
mod reload;
mod schema;
mod validate;
#[cfg(test)]
mod view_tests;

pub use build::build_registry;
pub use reload::{keep_restart_settings, needs_restart, rebuild_registry};
pub use schema::{
    AdminConfig, BackendKind, ChapConfig, Config, DiscoveryConfig, IoEngine, LunConfig,
    PortalGroupConfig, Size, TargetConfig, TrackingMode, format_size, parse_size,
};
pub use validate::{MAX_LUN_ID, check_iscsi_name};

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Data directory used when neither `--data-dir` nor `data_dir` is given.
pub const DEFAULT_DATA_DIR: &str = "./gentgt-data";
/// Name of the built-in default target.
pub const DEFAULT_TARGET: &str = "iqn.2026-11.dev.gentgt:default";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    /// TOML syntax or schema error; `message` carries line, column and key.
    #[error("{origin}: {message}")]
    Parse { origin: String, message: String },
    /// Every validation problem found, one per entry.
    #[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
    /// A stored LUN identity cannot be used; we refuse to invent a new one.
    #[error("LUN identity file {}: {reason}", path.display())]
    Identity { path: PathBuf, reason: String },
    /// A backup LUN's repository, backup or overlay cannot be used.
    #[error("{what}: {source}")]
    Backup {
        what: String,
        source: crate::backend::backup::InstantError,
    },
    /// An RBD LUN's library, cluster, pool or image cannot be used.
    #[error("{what}: {source}")]
    Rbd { what: String, source: io::Error },
    /// Creating the data directory or opening a backend failed.
    #[error("{what} {}: {source}", path.display())]
    Storage {
        what: String,
        path: PathBuf,
        source: io::Error,
    },
}

impl Config {
    /// Read, parse and validate a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_toml(&text, &path.display().to_string())
    }

    /// Parse and validate TOML text; `origin` names it in error messages.
    pub fn from_toml(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_string(),
            message: e.to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Check everything that can be checked without the disk; log warnings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let f = validate::check(self, Path::new(""));
        for w in &f.warnings {
            tracing::warn!("{w}");
        }
        if f.errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(f.errors))
        }
    }

    /// The portal addresses.
    pub fn listen_addrs(&self) -> Result<Vec<SocketAddr>, ConfigError> {
        self.listen
            .iter()
            .map(|a| {
                a.parse()
                    .map_err(|e| ConfigError::Invalid(vec![format!("listen address {a:?}: {e}")]))
            })
            .collect()
    }

    /// The built-in default (same as configs/default.toml): one target open
    /// to every initiator, no authentication, LUN 0 a 1 GiB sparse file.
    pub fn default_config() -> Config {
        Config {
            data_dir: None,
            listen: vec!["127.0.0.1:3260".to_string()],
            discovery: None,
            portal_groups: Vec::new(),
            targets: vec![TargetConfig {
                name: DEFAULT_TARGET.to_string(),
                alias: Some("default".to_string()),
                allow: None,
                chap: None,
                luns: vec![LunConfig {
                    id: 0,
                    backend: BackendKind::File,
                    path: Some(PathBuf::from("lun0.img")),
                    size: Some(Size(1 << 30)),
                    block_size: 512,
                    read_only: false,
                    removable: false,
                    initiators: None,
                    tracking: None,
                    extent_size: None,
                    cbt_initiators: None,
                    views: None,
                    view_lun: None,
                    view_space: None,
                    soft_threshold: None,
                    io: Default::default(),
                    direct: false,
                    repository: None,
                    backup: None,
                    key_file: None,
                    passphrase_env: None,
                    cache_size: None,
                    writable: false,
                    overlay: None,
                    pool: None,
                    image: None,
                    namespace: None,
                    ceph_conf: None,
                    client: None,
                    create: false,
                }],
                max_lock_lease_ms: None,
                max_view_lease_ms: None,
            }],
            max_lock_lease_ms: None,
            max_view_lease_ms: None,
            admin: None,
            max_connections: None,
            busy_poll_us: None,
            login_timeout_ms: None,
            nop_interval_ms: None,
            nop_timeout_ms: None,
            hung_io_timeout_ms: None,
            abort_timeout_ms: None,
            send_stall_timeout_ms: None,
            pid_file: None,
        }
    }

    /// The transport's tunables: the configured ones over the defaults.
    pub fn transport_settings(&self) -> crate::server::TargetSettings {
        use std::time::Duration;
        let d = crate::server::TargetSettings::default();
        let ms = |v: Option<u64>, default: Duration| v.map_or(default, Duration::from_millis);
        crate::server::TargetSettings {
            max_connections: self
                .max_connections
                .unwrap_or(crate::server::shared::DEFAULT_MAX_CONNECTIONS),
            busy_poll: Duration::from_micros(
                self.busy_poll_us
                    .unwrap_or(crate::server::shared::DEFAULT_BUSY_POLL_US),
            ),
            login_timeout: ms(self.login_timeout_ms, d.login_timeout),
            nop_interval: ms(self.nop_interval_ms, d.nop_interval),
            nop_timeout: ms(self.nop_timeout_ms, d.nop_timeout),
            hung_io_timeout: ms(self.hung_io_timeout_ms, d.hung_io_timeout),
            abort_timeout: ms(self.abort_timeout_ms, d.abort_timeout),
            send_stall_timeout: ms(self.send_stall_timeout_ms, d.send_stall_timeout),
            ..d
        }
    }

    /// The admin endpoint's address, if one is configured.
    pub fn admin_addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        let Some(a) = &self.admin else {
            return Ok(None);
        };
        a.listen
            .parse()
            .map(Some)
            .map_err(|e| ConfigError::Invalid(vec![format!("[admin] listen {:?}: {e}", a.listen)]))
    }
}
