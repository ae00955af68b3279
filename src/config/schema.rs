//! The configuration file's shape. Every table denies unknown keys so a
//! typo fails loudly (the TOML error names the key, line and column) instead
//! of silently falling back to a default.

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use std::fmt;
use std::path::PathBuf;

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where relative LUN paths live; `--data-dir` overrides it.
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// Portal addresses ("ip:port"); `--listen` overrides them.
    #[serde(default = "default_listen")]
    pub listen: Vec<String>,
    #[serde(default)]
    pub discovery: Option<DiscoveryConfig>,
    #[serde(default, rename = "target")]
    pub targets: Vec<TargetConfig>,
    /// Target portal groups (each one ALUA target port group); portals
    /// not listed form tag 1, active/optimized.
    #[serde(default, rename = "portal_group")]
    pub portal_groups: Vec<PortalGroupConfig>,
    /// Longest CBT write-lock lease in milliseconds, for every target that
    /// does not set its own. Optional; default 30000.
    #[serde(default)]
    pub max_lock_lease_ms: Option<u64>,
    /// Longest CBT view lease in milliseconds, for every target that does
    /// not set its own. Optional; default 300000 (the spec's).
    #[serde(default)]
    pub max_view_lease_ms: Option<u64>,
    /// Open connections (logged in or logging in) beyond which logins are
    /// refused with "out of resources". Default 1024; a reload applies it.
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// Microseconds a session polls its socket after answering before it
    /// sleeps; 0 turns polling off. Default 50; needs a restart.
    #[serde(default)]
    pub busy_poll_us: Option<u64>,
    /// Milliseconds a connection has to reach full feature phase.
    /// Default 15000; needs a restart.
    #[serde(default)]
    pub login_timeout_ms: Option<u64>,
    /// Milliseconds of silence from an initiator before the target pings
    /// it with a NOP-In. Default 30000; needs a restart.
    #[serde(default)]
    pub nop_interval_ms: Option<u64>,
    /// Milliseconds the initiator has to answer that ping before the
    /// connection is dropped. Default 30000; needs a restart.
    #[serde(default)]
    pub nop_timeout_ms: Option<u64>,
    /// Milliseconds a backend call may run before it counts as hung: it
    /// is logged and its LUN fenced (NOT READY) until it returns.
    /// Default 30000; needs a restart.
    #[serde(default)]
    pub hung_io_timeout_ms: Option<u64>,
    /// Milliseconds task management waits for an executing command before
    /// abandoning it as hung. Default 5000; needs a restart.
    #[serde(default)]
    pub abort_timeout_ms: Option<u64>,
    /// Milliseconds a send to an initiator may make no progress (it
    /// stopped reading) before the connection is dropped. Default 30000;
    /// needs a restart.
    #[serde(default)]
    pub send_stall_timeout_ms: Option<u64>,
    /// Where `serve` writes its process id (`--pid-file` overrides it);
    /// `gentgt reload` finds the server through it.
    #[serde(default)]
    pub pid_file: Option<PathBuf>,
    /// Admin HTTP endpoint (metrics, health); absent = none.
    #[serde(default)]
    pub admin: Option<AdminConfig>,
}

/// One target portal group: its tag (also its target port group id and
/// relative target port identifier), its portals and its ALUA state.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PortalGroupConfig {
    pub tag: u16,
    /// Listen addresses ("ip:port"), each one of the `listen` portals.
    pub portals: Vec<String>,
    /// Applied by a reload; default active/optimized.
    #[serde(default)]
    pub alua_state: crate::scsi::alua::AccessState,
    /// PREF bit in REPORT TARGET PORT GROUPS.
    #[serde(default)]
    pub preferred: bool,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// "ip:port" serving GET /metrics and GET /healthz.
    pub listen: String,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DiscoveryConfig {
    #[serde(default)]
    pub chap: Option<ChapConfig>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ChapConfig {
    /// Name and secret the initiator must prove.
    pub user: String,
    pub secret: String,
    /// Name and secret the target answers with (mutual CHAP); both or none.
    #[serde(default)]
    pub mutual_user: Option<String>,
    #[serde(default)]
    pub mutual_secret: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    pub name: String,
    #[serde(default)]
    pub alias: Option<String>,
    /// Initiator names allowed to log in; absent = everyone.
    #[serde(default)]
    pub allow: Option<Vec<String>>,
    #[serde(default)]
    pub chap: Option<ChapConfig>,
    #[serde(default, rename = "lun")]
    pub luns: Vec<LunConfig>,
    /// Longest CBT write-lock lease in milliseconds for this target's LUNs
    /// (overrides the global value).
    #[serde(default)]
    pub max_lock_lease_ms: Option<u64>,
    /// Longest CBT view lease in milliseconds for this target's LUNs
    /// (overrides the global value).
    #[serde(default)]
    pub max_view_lease_ms: Option<u64>,
}

/// Changed-block tracking for one LUN.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TrackingMode {
    /// Kept in `<path>.cbt/` and recovered after a crash (file LUNs).
    Persistent,
    /// In memory only: a new tracking UUID at every start.
    Volatile,
    Off,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    File,
    Memory,
    /// A backup served from its repository (instant restore).
    Backup,
    /// A Ceph RBD image (see rbd_lun.rs).
    Rbd,
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::File => "file",
            BackendKind::Memory => "memory",
            BackendKind::Backup => "backup",
            BackendKind::Rbd => "rbd",
        })
    }
}

/// How a file LUN does its reads and writes.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum IoEngine {
    /// pread/pwrite through the page cache.
    #[default]
    Buffered,
    /// io_uring (falls back to buffered where the kernel refuses it).
    Uring,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LunConfig {
    pub id: u64,
    pub backend: BackendKind,
    /// File backend only; relative paths are under the data directory.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Needed by file and memory LUNs; a backup LUN's comes from the
    /// backup (and must match it when given).
    #[serde(default)]
    pub size: Option<Size>,
    #[serde(default = "default_block_size")]
    pub block_size: u32,
    #[serde(default)]
    pub read_only: bool,
    /// Removable medium: INQUIRY RMB=1, START STOP UNIT LOEJ ejects and
    /// loads it, PREVENT ALLOW MEDIUM REMOVAL can lock it in.
    #[serde(default)]
    pub removable: bool,
    /// Initiator names this LUN is mapped for (REPORT LUNS, commands,
    /// task management); to any other it does not exist. Default: every
    /// initiator the target admits.
    #[serde(default)]
    pub initiators: Option<Vec<String>>,
    /// Default: persistent for file LUNs, volatile for memory LUNs.
    #[serde(default)]
    pub tracking: Option<TrackingMode>,
    /// CBT extent size in bytes; a power-of-two number of blocks.
    /// Default 64 KiB.
    #[serde(default)]
    pub extent_size: Option<Size>,
    /// Initiator names allowed to use the CBT command (opcode C0h).
    /// Default: [DEFAULT_CBT_INITIATOR].
    #[serde(default)]
    pub cbt_initiators: Option<Vec<String>>,
    /// CBT point-in-time views (OPEN VIEW, the view LUN). Default: on
    /// wherever tracking is on.
    #[serde(default)]
    pub views: Option<bool>,
    /// The LUN number that reads this LUN's view. Default 128 + id.
    #[serde(default)]
    pub view_lun: Option<u64>,
    /// Most data a view may keep (VIEW SPACE LIMIT). Default: the LUN's
    /// size, so a view is never lost for space (see README).
    #[serde(default)]
    pub view_space: Option<Size>,
    /// File LUNs: percent of the thin provisioning resources in use
    /// (allocated / (allocated + still allocatable)) that raises the THIN
    /// PROVISIONING SOFT THRESHOLD REACHED unit attention. Default: none.
    #[serde(default)]
    pub soft_threshold: Option<u8>,
    /// File LUNs: "buffered" (default) or "uring".
    #[serde(default)]
    pub io: IoEngine,
    /// File LUNs with io = "uring": O_DIRECT, bypassing the page cache
    /// (buffered, with a warning, where the filesystem refuses it).
    #[serde(default)]
    pub direct: bool,
    /// Backup LUNs (backend = "backup", see backup_lun.rs): the
    /// repository directory.
    #[serde(default)]
    pub repository: Option<PathBuf>,
    /// Backup LUNs: the id of the backup to serve.
    #[serde(default)]
    pub backup: Option<String>,
    /// Backup LUNs of an encrypted repository: its key file...
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// ...or the environment variable holding its passphrase.
    #[serde(default)]
    pub passphrase_env: Option<String>,
    /// Backup LUNs: most memory for decoded chunks. Default 64 MiB.
    #[serde(default)]
    pub cache_size: Option<Size>,
    /// Backup LUNs: accept writes (into the overlay). Default false.
    #[serde(default)]
    pub writable: bool,
    /// Writable backup LUNs: the copy-on-write overlay file (and
    /// `<overlay>.map`). Default in the data directory.
    #[serde(default)]
    pub overlay: Option<PathBuf>,
    /// RBD LUNs (backend = "rbd", see rbd_lun.rs): the pool.
    #[serde(default)]
    pub pool: Option<String>,
    /// RBD LUNs: the image.
    #[serde(default)]
    pub image: Option<String>,
    /// RBD LUNs: the RADOS namespace of the image. Default: none.
    #[serde(default)]
    pub namespace: Option<String>,
    /// RBD LUNs: the Ceph configuration file. Default: Ceph's own search
    /// ($CEPH_CONF, /etc/ceph/ceph.conf).
    #[serde(default)]
    pub ceph_conf: Option<PathBuf>,
    /// RBD LUNs: the cephx user id (without "client."). Default "admin".
    #[serde(default)]
    pub client: Option<String>,
    /// RBD LUNs: create the image with `size` when it does not exist.
    #[serde(default)]
    pub create: bool,
}

impl LunConfig {
    /// The tracking mode after defaults.
    pub fn tracking_mode(&self) -> TrackingMode {
        self.tracking.unwrap_or(match self.backend {
            BackendKind::File => TrackingMode::Persistent,
            BackendKind::Memory => TrackingMode::Volatile,
            BackendKind::Backup => TrackingMode::Off,
            // Tracking state in RADOS is not there yet (issue 18).
            BackendKind::Rbd => TrackingMode::Volatile,
        })
    }

    /// Are views on (after defaults)?
    pub fn views_on(&self) -> bool {
        self.tracking_mode() != TrackingMode::Off && self.views.unwrap_or(true)
    }

    /// The view LUN number after defaults.
    pub fn view_lun_id(&self) -> u64 {
        self.view_lun.unwrap_or(DEFAULT_VIEW_LUN_BASE + self.id)
    }

    /// VIEW SPACE LIMIT in bytes after defaults, for a LUN of
    /// `lun_bytes` (its storage's size: an RBD LUN's is the image's).
    pub fn view_space_bytes(&self, lun_bytes: u64) -> u64 {
        self.view_space.map_or(lun_bytes, |s| s.0)
    }

    /// The configured size in bytes (0 when not given).
    pub fn size_bytes(&self) -> u64 {
        self.size.map_or(0, |s| s.0)
    }

    /// Do the SCSI commands that change the medium get DATA PROTECT?
    /// Backup LUNs are read-only unless `writable`.
    pub fn write_protected(&self) -> bool {
        self.read_only || (self.backend == BackendKind::Backup && !self.writable)
    }

    /// Extent size in bytes after defaults.
    pub fn extent_bytes(&self) -> u64 {
        self.extent_size
            .map_or(crate::cbt::DEFAULT_EXTENT_BYTES, |s| s.0)
    }
}

/// A LUN's view LUN is `128 + id` unless configured: LUNs 0-127 keep their
/// numbers, and the view stays below 256, which every initiator can
/// address (libiscsi's URLs only take single-level LUNs below 256).
pub const DEFAULT_VIEW_LUN_BASE: u64 = 128;

fn default_listen() -> Vec<String> {
    vec!["127.0.0.1:3260".to_string()]
}

fn default_block_size() -> u32 {
    512
}

/// A byte count, written as an integer or as a string with a unit suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Size(pub u64);

/// Parse "1GiB", "512 MiB", "4k", "1000000", "1GB".
///
/// K/M/G/T alone or with "iB" are binary (1024-based), as in qemu-img and
/// dd; "KB"/"MB"/"GB"/"TB" are decimal. Case does not matter; a space between
/// number and unit is allowed. No fractions: sizes are exact.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    if digits.is_empty() {
        return Err(format!("size {text:?} does not start with a number"));
    }
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("size {text:?} is too large"))?;
    let mult: u64 = match unit.trim_start().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => {
            return Err(format!(
                "size {text:?} has unknown unit {unit:?} (use K, M, G, T, KiB.., KB..)"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {text:?} is too large"))
}

/// Render a byte count for humans: exact binary unit when it divides evenly.
pub fn format_size(bytes: u64) -> String {
    for (shift, unit) in [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{} {unit}", bytes >> shift);
        }
    }
    format!("{bytes} B")
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Size, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Size;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a byte count: an integer or a string like \"1GiB\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Size, E> {
                Ok(Size(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Size, E> {
                u64::try_from(v)
                    .map(Size)
                    .map_err(|_| E::custom(format!("size {v} is negative")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Size, E> {
                parse_size(v).map(Size).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_with_units() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("512B"), Ok(512));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("4KiB"), Ok(4096));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("1 G"), Ok(1 << 30));
        assert_eq!(parse_size(" 64 MiB "), Ok(64 << 20));
        assert_eq!(parse_size("2T"), Ok(2 << 40));
        assert_eq!(parse_size("1GB"), Ok(1_000_000_000));
        assert_eq!(parse_size("3mb"), Ok(3_000_000));
    }

    #[test]
    fn bad_sizes_say_why() {
        assert!(parse_size("").unwrap_err().contains("number"));
        assert!(parse_size("GiB").unwrap_err().contains("number"));
        assert!(parse_size("-1").unwrap_err().contains("number"));
        assert!(parse_size("1.5G").unwrap_err().contains("unit"));
        assert!(parse_size("1PiB").unwrap_err().contains("unit"));
        assert!(
            parse_size("99999999999999999999")
                .unwrap_err()
                .contains("large")
        );
        assert!(parse_size("16777216T").unwrap_err().contains("large"));
    }

    #[test]
    fn sizes_from_toml_integer_or_string() {
        #[derive(Deserialize)]
        struct T {
            a: Size,
            b: Size,
        }
        let t: T = toml::from_str("a = 1048576\nb = \"1MiB\"").unwrap();
        assert_eq!((t.a, t.b), (Size(1 << 20), Size(1 << 20)));
        let e = toml::from_str::<T>("a = -5\nb = 1")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("negative"), "{e}");
        let e = toml::from_str::<T>("a = 1\nb = \"1 XB\"")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("unknown unit") && e.contains("line 2"), "{e}");
    }

    #[test]
    fn formats_sizes() {
        assert_eq!(format_size(1 << 30), "1 GiB");
        assert_eq!(format_size(3 << 20), "3 MiB");
        assert_eq!(format_size(1536), "1536 B");
        assert_eq!(format_size(4096), "4 KiB");
        assert_eq!(format_size(1000), "1000 B");
    }
}
