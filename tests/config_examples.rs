//! The shipped configurations load and build; bad ones fail with a message
//! naming the problem and leave nothing on disk; LUN identity is stable.

use gentgt::config::{Config, ConfigError, build_registry};
use gentgt::server::Registry;
use std::fs;
use std::path::{Path, PathBuf};

fn configs() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let mut v: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    v.sort();
    v
}

fn shipped(name: &str) -> Config {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("configs")
        .join(name);
    Config::load(&path).unwrap_or_else(|e| panic!("{e}"))
}

/// Read-only file LUNs must exist before a build; make them (sparse).
fn precreate_read_only(cfg: &Config, data_dir: &Path) {
    for lun in cfg.targets.iter().flat_map(|t| &t.luns) {
        if let (true, Some(p)) = (lun.read_only, &lun.path) {
            let p = data_dir.join(p);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::File::create(&p)
                .unwrap()
                .set_len(lun.size_bytes())
                .unwrap();
        }
    }
}

fn build(cfg: &Config, data_dir: &Path) -> Registry {
    precreate_read_only(cfg, data_dir);
    build_registry(cfg, data_dir).unwrap_or_else(|e| panic!("{e}"))
}

fn serves_a_backup(cfg: &Config) -> bool {
    serves(cfg, gentgt::config::BackendKind::Backup)
}

fn serves(cfg: &Config, kind: gentgt::config::BackendKind) -> bool {
    let luns = cfg.targets.iter().flat_map(|t| &t.luns);
    luns.into_iter().any(|l| l.backend == kind)
}

type Ident = (String, u64, String, [u8; 16]);

fn identities(r: &Registry) -> Vec<Ident> {
    let mut v = Vec::new();
    for t in r.targets.values() {
        for (id, lun) in &t.device.luns {
            let i = &lun.identity;
            v.push((t.name.clone(), *id, i.serial.clone(), i.naa));
        }
    }
    v
}

#[test]
fn every_shipped_config_loads_and_builds() {
    let files = configs();
    assert!(files.len() >= 3, "{files:?}");
    for path in files {
        let cfg = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        if serves_a_backup(&cfg) {
            // Needs a repository with that backup: tests/restore_instant.rs
            // builds and serves it on one.
            continue;
        }
        if serves(&cfg, gentgt::config::BackendKind::Rbd) {
            // Needs a Ceph cluster: tests/rbd.rs builds and serves it on
            // the one-node cluster.
            continue;
        }
        let dir = tempfile::tempdir().unwrap();
        let reg = build(&cfg, dir.path());
        // Every portal has a tag, and each tag is a target port group.
        assert_eq!(reg.portal_tags.len(), cfg.listen.len());
        for (_, tag) in &reg.portal_tags {
            assert!(reg.port_groups.ids().contains(tag), "{}", path.display());
        }
        assert_eq!(reg.targets.len(), cfg.targets.len(), "{}", path.display());
        for t in &cfg.targets {
            let entry = reg.target(&t.name).unwrap();
            // Each LUN with views has its view LUN beside it.
            let views = t.luns.iter().filter(|l| l.views_on()).count();
            assert_eq!(entry.device.luns.len(), t.luns.len() + views);
            for lun in t.luns.iter().filter(|l| l.views_on()) {
                let view = &entry.device.luns[&lun.view_lun_id()];
                assert!(view.read_only && view.view_of.is_some());
                assert_eq!(view.backend.size(), lun.size_bytes());
            }
            for lun in &t.luns {
                let unit = &entry.device.luns[&lun.id];
                assert_eq!(unit.backend.size(), lun.size_bytes());
                assert_eq!(unit.block_size, lun.block_size);
                assert_eq!(unit.read_only, lun.write_protected());
                if let Some(p) = &lun.path {
                    assert!(dir.path().join(p).is_file());
                }
            }
        }
    }
}

#[test]
fn default_toml_is_the_builtin_default() {
    assert_eq!(shipped("default.toml"), Config::default_config());
    let d = Config::default_config();
    d.validate().unwrap();
    let want: std::net::SocketAddr = "127.0.0.1:3260".parse().unwrap();
    assert_eq!(d.listen_addrs().unwrap(), vec![want]);
}

#[test]
fn example_full_maps_acl_chap_and_luns() {
    let cfg = shipped("example-full.toml");
    let dir = tempfile::tempdir().unwrap();
    let reg = build(&cfg, dir.path());
    let chap = reg.discovery_chap.as_ref().unwrap();
    assert_eq!(
        (chap.user.as_str(), chap.mutual.is_none()),
        ("discover", true)
    );
    let vm = reg.target("iqn.2026-11.dev.gentgt:vm-disks").unwrap();
    assert_eq!(vm.alias.as_deref(), Some("vm-disks"));
    assert_eq!(vm.allowed_initiators.as_ref().unwrap().len(), 2);
    let mutual = vm.chap.as_ref().unwrap().mutual.clone().unwrap();
    assert_eq!(mutual.0, "iqn.2026-11.dev.gentgt:vm-disks");
    assert_eq!(mutual.1, "initiator-secret");
    // LUN 1 is mapped for host-a only.
    let golden = &vm.device.luns[&1];
    assert!(golden.visible("iqn.1993-08.org.debian:01:host-a"));
    assert!(!golden.visible("iqn.2026-11.dev.gentgt:backup-host"));
    let scratch = reg.target("iqn.2026-11.dev.gentgt:scratch").unwrap();
    assert!(scratch.allowed_initiators.is_none() && scratch.chap.is_none());
    assert_eq!(scratch.device.luns[&7].backend.describe(), "memory");
    assert!(dir.path().join("vm1.img.id").is_file());
    assert!(dir.path().join("images/golden.img.id").is_file());
}

const GOOD: &str = r#"
[[target]]
name = "iqn.2026-11.dev.gentgt:t"
[[target.lun]]
id = 0
backend = "file"
path = "sub/lun0.img"
size = "1MiB"
"#;

/// Parsing-and-validating must fail with a message containing `needle`;
/// building from the same text (if it parses at all) must fail the same
/// way and create nothing.
fn assert_rejected(text: &str, needle: &str) {
    let err = Config::from_toml(text, "test.toml")
        .unwrap_err()
        .to_string();
    assert!(err.contains(needle), "expected {needle:?} in:\n{err}");
    if let Ok(cfg) = toml::from_str::<Config>(text) {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let err = build_registry(&cfg, &data).err().unwrap().to_string();
        assert!(err.contains(needle), "expected {needle:?} in:\n{err}");
        assert!(
            !data.exists(),
            "a rejected config created {}",
            data.display()
        );
    }
}

fn with_lun(extra: &str) -> String {
    format!("{GOOD}[[target.lun]]\n{extra}\n")
}

#[test]
fn good_base_is_good() {
    Config::from_toml(GOOD, "good").unwrap();
}

#[test]
fn unknown_key_is_named_with_its_line() {
    let text = GOOD.replace("size = ", "sise = \"1M\"\nsize = ");
    assert_rejected(&text, "unknown field `sise`");
    assert_rejected(&text, "line 8");
    assert_rejected(&text, "test.toml");
    assert_rejected(&format!("colour = 1\n{GOOD}"), "colour");
    assert_rejected(&GOOD.replace("name =", "nmae ="), "unknown field `nmae`");
    assert_rejected(&format!("[discovery]\nchapp = 1\n{GOOD}"), "chapp");
}

#[test]
fn duplicate_lun_id() {
    let text = with_lun("id = 0\nbackend = \"memory\"\nsize = 4096");
    assert_rejected(&text, "LUN 0 is defined twice");
}

#[test]
fn duplicate_target_name() {
    let second = GOOD.replace("sub/lun0.img", "other.img");
    assert_rejected(&format!("{GOOD}{second}"), "defined twice");
}

#[test]
fn bad_block_size_and_sizes() {
    let bs = GOOD.replace("size = \"1MiB\"", "size = \"1MiB\"\nblock_size = 1024");
    assert_rejected(&bs, "block_size 1024 is not 512 or 4096");
    assert_rejected(&GOOD.replace("\"1MiB\"", "1000"), "not a positive multiple");
    assert_rejected(&GOOD.replace("\"1MiB\"", "0"), "not a positive multiple");
    let bs4k = GOOD.replace("size = \"1MiB\"", "size = 1536\nblock_size = 4096");
    assert_rejected(&bs4k, "not a positive multiple of the block size 4096");
    assert_rejected(&GOOD.replace("\"1MiB\"", "\"1 furlong\""), "unknown unit");
}

#[test]
fn bad_names() {
    assert_rejected(&GOOD.replace("gentgt:t", "Gentgt:t"), "not allowed");
    let plain = GOOD.replace("iqn.2026-11.dev.gentgt:t", "mytarget");
    assert_rejected(&plain, "not an iSCSI name");
    let acl = GOOD.replace("[[target.lun]]", "allow = [\"bogus\"]\n[[target.lun]]");
    assert_rejected(&acl, "allowed initiator \"bogus\"");
}

#[test]
fn backend_path_rules() {
    assert_rejected(
        &GOOD.replace("path = \"sub/lun0.img\"\n", ""),
        "needs a path",
    );
    assert_rejected(&GOOD.replace("\"file\"", "\"memory\""), "takes no path");
    assert_rejected(
        &GOOD.replace("\"file\"", "\"tape\""),
        "unknown variant `tape`",
    );
    let shared =
        with_lun("id = 1\nbackend = \"file\"\npath = \"./sub/x/../lun0.img\"\nsize = 4096");
    assert_rejected(&shared, "already used by");
    assert_rejected(&GOOD.replace("id = 0", "id = 16384"), "below 16384");
}

#[test]
fn chap_rules() {
    let chap = |c: &str| GOOD.replace("[[target.lun]]", &format!("chap = {c}\n[[target.lun]]"));
    assert_rejected(
        &chap(r#"{ user = "u", secret = "0123456789abc", mutual_user = "t" }"#),
        "needs both mutual_user and mutual_secret",
    );
    let same = r#"{ user = "u", secret = "0123456789abc", mutual_user = "t", mutual_secret = "0123456789abc" }"#;
    assert_rejected(&chap(same), "must differ");
    assert_rejected(
        &chap(r#"{ user = "u", secret = "" }"#),
        "secret must be 1..=255 bytes",
    );
    let long = format!("{{ user = \"u\", secret = \"{}\" }}", "s".repeat(256));
    assert_rejected(&chap(&long), "1..=255");
    // Short secrets are allowed (with a warning).
    Config::from_toml(&chap(r#"{ user = "u", secret = "short" }"#), "t").unwrap();
}

#[test]
fn listen_and_target_presence() {
    let bad = format!("listen = [\"localhost\"]\n{GOOD}");
    assert_rejected(&bad, "listen address \"localhost\"");
    assert_rejected(&format!("listen = []\n{GOOD}"), "no portal");
    assert_rejected("listen = [\"127.0.0.1:0\"]\n", "no [[target]]");
    let v6 = format!("listen = [\"[::1]:0\", \"0.0.0.0:3260\"]\n{GOOD}");
    let cfg = Config::from_toml(&v6, "t").unwrap();
    assert_eq!(cfg.listen_addrs().unwrap().len(), 2);
}

#[test]
fn several_problems_are_reported_together() {
    let text = GOOD.replace("\"1MiB\"", "1000").replace("gentgt:t", "X");
    let err = Config::from_toml(&text, "t").unwrap_err();
    let ConfigError::Invalid(problems) = err else {
        panic!("{err}")
    };
    assert_eq!(problems.len(), 2, "{problems:?}");
}

#[test]
fn read_only_file_must_exist_and_is_not_created() {
    let text = GOOD.replace("size = \"1MiB\"", "size = \"1MiB\"\nread_only = true");
    let cfg = Config::from_toml(&text, "t").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let err = build_registry(&cfg, &data).err().unwrap().to_string();
    assert!(
        err.contains("read-only file") && err.contains("lun0.img"),
        "{err}"
    );
    assert!(!data.exists());
}

#[test]
fn identity_is_stable_across_builds() {
    let cfg =
        Config::from_toml(&with_lun("id = 3\nbackend = \"memory\"\nsize = 4096"), "t").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let first = identities(&build(&cfg, dir.path()));
    let second = identities(&build(&cfg, dir.path()));
    assert_eq!(first, second);
    assert_ne!(
        first[0].2, first[1].2,
        "file and memory LUNs share a serial"
    );
    // Another data directory: the file LUN gets a new random identity; the
    // memory LUN's derives from target name and LUN id, so it stays.
    let other = tempfile::tempdir().unwrap();
    let third = identities(&build(&cfg, other.path()));
    assert_ne!(first[0], third[0]);
    assert_eq!(first[1], third[1]);
}

#[test]
fn corrupt_identity_file_fails_and_is_kept() {
    let cfg = Config::from_toml(GOOD, "t").unwrap();
    let dir = tempfile::tempdir().unwrap();
    build(&cfg, dir.path());
    let id_file = dir.path().join("sub/lun0.img.id");
    fs::write(&id_file, "serial=\nnaa=zz\n").unwrap();
    let err = build_registry(&cfg, dir.path()).err().unwrap();
    assert!(matches!(err, ConfigError::Identity { .. }), "{err}");
    assert!(err.to_string().contains("lun0.img.id"), "{err}");
    assert_eq!(fs::read_to_string(&id_file).unwrap(), "serial=\nnaa=zz\n");

    // A corrupt identity stops the build before any other LUN's file is made.
    let more = with_lun("id = 1\nbackend = \"file\"\npath = \"new.img\"\nsize = 4096");
    let cfg = Config::from_toml(&more, "t").unwrap();
    assert!(build_registry(&cfg, dir.path()).is_err());
    assert!(!dir.path().join("new.img").exists());
}
