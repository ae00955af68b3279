//! Every check that can be made without touching the disk. Run before
//! anything is created so a bad configuration leaves no trace.

use super::schema::{BackendKind, ChapConfig, Config, IoEngine, LunConfig, TrackingMode};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};

/// SAM flat addressing reaches 14 bits of LUN.
pub const MAX_LUN_ID: u64 = 16384;
/// RFC 7143 4.2.7.1: iSCSI names are at most 223 bytes.
const MAX_NAME_LEN: usize = 223;
/// RFC 7143 12.1.3 wants 96-bit secrets unless IPsec protects the link.
const MIN_GOOD_SECRET: usize = 12;
/// Our CHAP_N/CHAP_R handling caps values at 255 bytes.
const MAX_CHAP_FIELD: usize = 255;

/// Problems found in a configuration: errors refuse to start, warnings don't.
#[derive(Debug, Default)]
pub struct Findings {
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
}

/// Check `cfg`; LUN paths are resolved against `data_dir` to spot two LUNs
/// sharing a file (pass "" when the data directory is not known yet).
pub fn check(cfg: &Config, data_dir: &Path) -> Findings {
    let mut f = Findings::default();
    check_listen(&cfg.listen, &mut f);
    super::portals::check(cfg, &mut f);
    if let Some(a) = &cfg.admin
        && let Err(e) = a.listen.parse::<SocketAddr>()
    {
        f.errors
            .push(format!("[admin] listen {:?}: {e} (want IP:PORT)", a.listen));
    }
    check_lease("max_lock_lease_ms", cfg.max_lock_lease_ms, &mut f);
    check_view_lease("max_view_lease_ms", cfg.max_view_lease_ms, &mut f);
    if cfg.busy_poll_us.is_some_and(|us| us > 10_000) {
        f.errors
            .push("busy_poll_us must be at most 10000 (10 ms)".into());
    }
    for (key, v) in [
        ("login_timeout_ms", cfg.login_timeout_ms),
        ("nop_interval_ms", cfg.nop_interval_ms),
        ("nop_timeout_ms", cfg.nop_timeout_ms),
        ("hung_io_timeout_ms", cfg.hung_io_timeout_ms),
        ("abort_timeout_ms", cfg.abort_timeout_ms),
        ("send_stall_timeout_ms", cfg.send_stall_timeout_ms),
    ] {
        if let Some(ms) = v.filter(|ms| !(MIN_TIMER_MS..=MAX_TIMER_MS).contains(ms)) {
            f.errors.push(format!(
                "{key} = {ms}: must be {MIN_TIMER_MS}..={MAX_TIMER_MS} ms"
            ));
        }
    }
    if cfg.max_connections == Some(0) {
        f.errors.push("max_connections must be at least 1".into());
    }
    if let Some(chap) = cfg.discovery.as_ref().and_then(|d| d.chap.as_ref()) {
        check_chap("[discovery] chap", chap, &mut f);
    }
    if cfg.targets.is_empty() {
        f.errors.push("no [[target]] is configured".into());
    }
    let mut names = BTreeSet::new();
    for t in &cfg.targets {
        let what = format!("target {:?}", t.name);
        if let Err(e) = check_iscsi_name(&t.name) {
            f.errors.push(format!("{what}: {e}"));
        }
        if !names.insert(t.name.as_str()) {
            f.errors.push(format!("{what} is defined twice"));
        }
        if t.alias
            .as_ref()
            .is_some_and(|a| a.is_empty() || a.len() > 255)
        {
            f.errors
                .push(format!("{what}: alias must be 1..=255 bytes"));
        }
        for name in t.allow.iter().flatten() {
            if let Err(e) = check_iscsi_name(name) {
                f.errors
                    .push(format!("{what}: allowed initiator {name:?}: {e}"));
            }
        }
        if t.allow.as_ref().is_some_and(|a| a.is_empty()) {
            f.warnings
                .push(format!("{what}: empty allow list, no initiator can log in"));
        }
        if let Some(chap) = &t.chap {
            check_chap(&format!("{what} chap"), chap, &mut f);
        }
        check_lease(
            &format!("{what}: max_lock_lease_ms"),
            t.max_lock_lease_ms,
            &mut f,
        );
        check_view_lease(
            &format!("{what}: max_view_lease_ms"),
            t.max_view_lease_ms,
            &mut f,
        );
        if t.luns.is_empty() {
            f.errors.push(format!("{what} has no [[target.lun]]"));
        }
        let mut ids = BTreeSet::new();
        for lun in &t.luns {
            let what = format!("{what} LUN {}", lun.id);
            if !ids.insert(lun.id) {
                f.errors.push(format!("{what} is defined twice"));
            }
            check_lun(&what, lun, &mut f);
            check_tracking(&what, lun, &mut f);
            check_views(&what, lun, &mut f);
        }
        check_view_luns(&what, t, &mut f);
    }
    check_shared_files(cfg, data_dir, &mut f);
    f
}

fn check_listen(listen: &[String], f: &mut Findings) {
    if listen.is_empty() {
        f.errors.push("listen: no portal address given".into());
    }
    for a in listen {
        if let Err(e) = a.parse::<SocketAddr>() {
            f.errors
                .push(format!("listen address {a:?}: {e} (want IP:PORT)"));
        }
    }
}

fn check_lun(what: &str, lun: &LunConfig, f: &mut Findings) {
    let bs = lun.block_size;
    if lun.id >= MAX_LUN_ID {
        f.errors
            .push(format!("{what}: id must be below {MAX_LUN_ID}"));
    }
    if bs != 512 && bs != 4096 {
        f.errors
            .push(format!("{what}: block_size {bs} is not 512 or 4096"));
    } else if lun.size.is_none() && matches!(lun.backend, BackendKind::File | BackendKind::Memory) {
        f.errors.push(format!("{what}: size is required"));
    } else if lun.size.is_some()
        && (lun.size_bytes() == 0 || !lun.size_bytes().is_multiple_of(u64::from(bs)))
    {
        f.errors.push(format!(
            "{what}: size {} is not a positive multiple of the block size {bs}",
            lun.size_bytes()
        ));
    }
    match (lun.backend, &lun.path) {
        (BackendKind::File, None) => f.errors.push(format!("{what}: file backend needs a path")),
        (BackendKind::File, Some(p)) if p.as_os_str().is_empty() => {
            f.errors.push(format!("{what}: path is empty"))
        }
        (BackendKind::Memory, Some(_)) => f
            .errors
            .push(format!("{what}: memory backend takes no path")),
        _ => {}
    }
    match (lun.soft_threshold, lun.backend) {
        (Some(p), _) if !(1..=99).contains(&p) => f.errors.push(format!(
            "{what}: soft_threshold {p} is not a percentage from 1 to 99"
        )),
        (Some(_), BackendKind::Memory | BackendKind::Backup | BackendKind::Rbd) => {
            f.errors.push(format!(
                "{what}: soft_threshold needs a file backend (space is measured on its filesystem)"
            ))
        }
        _ => {}
    }
    super::backup_lun::check(what, lun, f);
    super::rbd_lun::check(what, lun, f);
    if matches!(lun.backend, BackendKind::File | BackendKind::Memory) {
        check_io(what, lun, f);
    }
    for name in lun.initiators.iter().flatten() {
        if let Err(e) = check_iscsi_name(name) {
            f.errors.push(format!("{what}: initiators {name:?}: {e}"));
        }
    }
    if lun.initiators.as_ref().is_some_and(|v| v.is_empty()) {
        f.warnings.push(format!(
            "{what}: empty initiators list, no initiator sees this LUN"
        ));
    }
}

/// `io` and `direct` only mean something for file LUNs, and O_DIRECT
/// only exists on the io_uring path.
fn check_io(what: &str, lun: &LunConfig, f: &mut Findings) {
    let tuned = lun.io != IoEngine::Buffered || lun.direct;
    if lun.backend == BackendKind::Memory && tuned {
        f.errors
            .push(format!("{what}: io and direct apply to file LUNs only"));
    } else if lun.direct && lun.io != IoEngine::Uring {
        f.errors
            .push(format!("{what}: direct = true needs io = \"uring\""));
    }
}

/// Longest write-lock lease allowed in the configuration: an hour. Longer
/// leases would let a dead appliance hold every write for that long.
const MAX_LEASE_MS: u64 = 3_600_000;

/// Bounds of the transport timers: a ping every few milliseconds would be
/// a flood, one a day no keep-alive at all.
const MIN_TIMER_MS: u64 = 100;
const MAX_TIMER_MS: u64 = 3_600_000;

fn check_lease(what: &str, ms: Option<u64>, f: &mut Findings) {
    if let Some(ms) = ms.filter(|&ms| ms == 0 || ms > MAX_LEASE_MS) {
        f.errors
            .push(format!("{what} = {ms}: must be 1..={MAX_LEASE_MS} ms"));
    }
}

/// Views hold a backup window open: up to an hour.
const MAX_VIEW_LEASE_MS: u64 = 3_600_000;

fn check_view_lease(what: &str, ms: Option<u64>, f: &mut Findings) {
    if let Some(ms) = ms.filter(|&ms| ms == 0 || ms > MAX_VIEW_LEASE_MS) {
        f.errors
            .push(format!("{what} = {ms}: must be 1..={MAX_VIEW_LEASE_MS} ms"));
    }
}

fn check_views(what: &str, lun: &LunConfig, f: &mut Findings) {
    let set = lun.view_lun.is_some() || lun.view_space.is_some();
    if lun.views == Some(true) && lun.tracking_mode() == TrackingMode::Off {
        f.errors
            .push(format!("{what}: views = true needs tracking"));
    }
    if !lun.views_on() {
        if set && lun.tracking_mode() != TrackingMode::Off {
            f.warnings.push(format!(
                "{what}: view_lun/view_space ignored, views are off"
            ));
        }
        return;
    }
    if lun.view_lun_id() >= MAX_LUN_ID {
        f.errors.push(format!(
            "{what}: view_lun {} must be below {MAX_LUN_ID} (set view_lun)",
            lun.view_lun_id()
        ));
    }
    // Without a size (RBD, backup LUNs) the default is the storage's.
    if lun.view_space.is_some_and(|s| s.0 == 0) {
        f.errors.push(format!(
            "{what}: view_space must be more than 0 (or views = false)"
        ));
    }
}

/// A view LUN number must not be any LUN's or another view LUN's.
fn check_view_luns(what: &str, t: &crate::config::schema::TargetConfig, f: &mut Findings) {
    let mut taken: BTreeSet<u64> = t.luns.iter().map(|l| l.id).collect();
    for lun in t.luns.iter().filter(|l| l.views_on()) {
        if !taken.insert(lun.view_lun_id()) {
            f.errors.push(format!(
                "{what} LUN {}: view_lun {} is already a LUN or view LUN of the target (set view_lun)",
                lun.id,
                lun.view_lun_id()
            ));
        }
    }
}

fn check_tracking(what: &str, lun: &LunConfig, f: &mut Findings) {
    let mode = lun.tracking_mode();
    if mode == TrackingMode::Persistent && lun.backend == BackendKind::Memory {
        f.errors.push(format!(
            "{what}: tracking = \"persistent\" needs a file backend (use \"volatile\")"
        ));
    }
    let bytes = lun.extent_bytes();
    let bs = u64::from(lun.block_size.max(1));
    let blocks = bytes / bs;
    if bytes == 0
        || !bytes.is_multiple_of(bs)
        || !blocks.is_power_of_two()
        || blocks > u64::from(u32::MAX)
    {
        f.errors.push(format!(
            "{what}: extent_size {bytes} is not a power-of-two number of {bs}-byte blocks"
        ));
    }
    for name in lun.cbt_initiators.iter().flatten() {
        if let Err(e) = check_iscsi_name(name) {
            f.errors
                .push(format!("{what}: cbt_initiators {name:?}: {e}"));
        }
    }
    if mode != TrackingMode::Off && lun.cbt_initiators.as_ref().is_some_and(|v| v.is_empty()) {
        f.warnings.push(format!(
            "{what}: empty cbt_initiators, no initiator can use changed-block tracking"
        ));
    }
}

fn check_chap(what: &str, c: &ChapConfig, f: &mut Findings) {
    let mut pair = |kind: &str, user: &str, secret: &str| {
        if user.is_empty() || user.len() > MAX_CHAP_FIELD {
            f.errors.push(format!(
                "{what}: {kind}user must be 1..={MAX_CHAP_FIELD} bytes"
            ));
        }
        if secret.is_empty() || secret.len() > MAX_CHAP_FIELD {
            f.errors.push(format!(
                "{what}: {kind}secret must be 1..={MAX_CHAP_FIELD} bytes"
            ));
        } else if secret.len() < MIN_GOOD_SECRET {
            f.warnings.push(format!(
                "{what}: {kind}secret is {} bytes; RFC 7143 recommends at least {MIN_GOOD_SECRET}",
                secret.len()
            ));
        }
    };
    pair("", &c.user, &c.secret);
    match (&c.mutual_user, &c.mutual_secret) {
        (Some(u), Some(s)) => {
            pair("mutual_", u, s);
            // RFC 7143 12.1.3: a secret must not authenticate both directions.
            if *s == c.secret {
                f.errors
                    .push(format!("{what}: mutual_secret must differ from secret"));
            }
        }
        (None, None) => {}
        _ => f.errors.push(format!(
            "{what}: mutual CHAP needs both mutual_user and mutual_secret"
        )),
    }
}

/// Two LUNs writing one file would corrupt each other; compare the paths
/// after resolving them against the data directory (lexically: the files
/// may not exist yet).
fn check_shared_files(cfg: &Config, data_dir: &Path, f: &mut Findings) {
    let mut seen: BTreeMap<PathBuf, String> = BTreeMap::new();
    for t in &cfg.targets {
        for lun in &t.luns {
            let overlay = super::backup_lun::overlay_path(&t.name, lun, Path::new(""));
            let Some(path) = lun.path.as_ref().or(overlay.as_ref()) else {
                continue;
            };
            let what = format!("target {:?} LUN {}", t.name, lun.id);
            match seen.get(&normalize(&data_dir.join(path))) {
                Some(first) => f.errors.push(format!(
                    "{what}: file {} is already used by {first}",
                    path.display()
                )),
                None => {
                    seen.insert(normalize(&data_dir.join(path)), what);
                }
            }
        }
    }
}

fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir if out.file_name().is_some() => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out
}

/// RFC 7143 4.2.7: "iqn." date "." reversed domain [":" anything],
/// "eui." 16 hex digits, or "naa." 16 or 32 hex digits. We accept the
/// ASCII subset of the stringprep'd form: lowercase letters, digits, '-',
/// '.', ':' (hex digits in eui./naa. may be upper case, as RFC examples are).
pub fn check_iscsi_name(name: &str) -> Result<(), String> {
    if name.len() > MAX_NAME_LEN {
        return Err(format!("longer than {MAX_NAME_LEN} bytes"));
    }
    if let Some(rest) = name.strip_prefix("iqn.") {
        return check_iqn(rest);
    }
    let hex_len = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit()).then_some(s.len());
    if let Some(rest) = name.strip_prefix("eui.") {
        return match hex_len(rest) {
            Some(16) => Ok(()),
            _ => Err("eui. names need exactly 16 hex digits".into()),
        };
    }
    if let Some(rest) = name.strip_prefix("naa.") {
        return match hex_len(rest) {
            Some(16 | 32) => Ok(()),
            _ => Err("naa. names need 16 or 32 hex digits".into()),
        };
    }
    Err("not an iSCSI name (must start with iqn., eui. or naa.)".into())
}

fn check_iqn(rest: &str) -> Result<(), String> {
    if let Some(bad) = rest
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || "-.:".contains(*c)))
    {
        return Err(format!(
            "character {bad:?} not allowed (use lowercase a-z, 0-9, '-', '.', ':')"
        ));
    }
    let b = rest.as_bytes();
    let date_ok = b.len() >= 7
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[5..7].iter().all(u8::is_ascii_digit)
        && (1..=12).contains(&rest[5..7].parse::<u8>().unwrap_or(0));
    if !date_ok {
        return Err("iqn. must be followed by a yyyy-mm date".into());
    }
    let authority = rest[7..].strip_prefix('.').unwrap_or("");
    let domain = authority.split(':').next().unwrap_or("");
    if domain.is_empty() || domain.starts_with('.') || domain.ends_with('.') {
        return Err(
            "iqn. needs a reversed domain name after the date (iqn.yyyy-mm.com.example)".into(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iscsi_names() {
        for ok in [
            "iqn.2026-11.dev.gentgt:default",
            "iqn.1993-08.org.debian:01:abcdef",
            "iqn.2001-04.com.example",
            "eui.02004567A425678D",
            "naa.52004567BA64678D",
            "naa.62004567BA64678D0123456789ABCDEF",
        ] {
            assert_eq!(check_iscsi_name(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "iqn.",
            "iqn.2026-11",
            "iqn.2026-11.",
            "iqn.2026-13.dev.x",
            "iqn.26-11.dev.x",
            "iqn.2026-11.Dev.gentgt",
            "iqn.2026-11.dev.gentgt:my disk",
            "iqn.2026-11.dev_x",
            "eui.0200",
            "eui.02004567A425678Z",
            "naa.1234",
            "target0",
        ] {
            assert!(check_iscsi_name(bad).is_err(), "{bad}");
        }
        assert!(check_iscsi_name(&format!("iqn.2026-11.dev.x:{}", "a".repeat(220))).is_err());
    }

    #[test]
    fn normalizes_paths() {
        assert_eq!(
            normalize(Path::new("d/./a/../b.img")),
            PathBuf::from("d/b.img")
        );
        assert_eq!(normalize(Path::new("./b.img")), PathBuf::from("b.img"));
    }
}

#[cfg(test)]
mod cbt_tests {
    use crate::config::{Config, ConfigError, TrackingMode};

    fn lun(extra: &str, backend: &str) -> String {
        let path = if backend == "file" {
            "path = \"a.img\"\n"
        } else {
            ""
        };
        format!(
            "[[target]]\nname = \"iqn.2026-11.dev.gentgt:t\"\n[[target.lun]]\nid = 0\n\
             backend = \"{backend}\"\n{path}size = \"1MiB\"\n{extra}"
        )
    }

    fn errors(text: &str) -> Vec<String> {
        match Config::from_toml(text, "test") {
            Err(ConfigError::Invalid(e)) => e,
            other => panic!("expected validation errors, got {other:?}"),
        }
    }

    #[test]
    fn soft_threshold_is_a_percentage_of_a_file_lun() {
        let c = Config::from_toml(&lun("soft_threshold = 80", "file"), "t").unwrap();
        assert_eq!(c.targets[0].luns[0].soft_threshold, Some(80));
        for bad in ["soft_threshold = 0", "soft_threshold = 100"] {
            let e = errors(&lun(bad, "file"));
            assert!(e[0].contains("soft_threshold"), "{e:?}");
        }
        let e = errors(&lun("soft_threshold = 50", "memory"));
        assert!(e[0].contains("file backend"), "{e:?}");
    }

    #[test]
    fn tracking_defaults_by_backend() {
        let c = Config::from_toml(&lun("", "file"), "t").unwrap();
        assert_eq!(
            c.targets[0].luns[0].tracking_mode(),
            TrackingMode::Persistent
        );
        let c = Config::from_toml(&lun("", "memory"), "t").unwrap();
        assert_eq!(c.targets[0].luns[0].tracking_mode(), TrackingMode::Volatile);
        assert_eq!(c.targets[0].luns[0].extent_bytes(), 64 * 1024);
    }

    #[test]
    fn bad_tracking_settings_are_named() {
        let e = errors(&lun("tracking = \"persistent\"", "memory"));
        assert!(e[0].contains("needs a file backend"), "{e:?}");
        let e = errors(&lun("extent_size = \"48KiB\"", "file"));
        assert!(e[0].contains("power-of-two"), "{e:?}");
        let e = errors(&lun("extent_size = 256", "file"));
        assert!(e[0].contains("extent_size"), "{e:?}");
        let e = errors(&lun("initiators = [\"Bad Name\"]", "memory"));
        assert!(e[0].contains("initiators \"Bad Name\""), "{e:?}");
        let e = errors(&lun("cbt_initiators = [\"Bad Name\"]", "file"));
        assert!(e[0].contains("cbt_initiators"), "{e:?}");
        let e = errors(&format!("max_lock_lease_ms = 0\n{}", lun("", "file")));
        assert!(e[0].contains("max_lock_lease_ms"), "{e:?}");
        assert!(Config::from_toml(&lun("tracking = \"maybe\"", "file"), "t").is_err());
    }
}
