//! The per-LUN `io` and `direct` keys (and the transport's `busy_poll_us`):
//! parsing, validation, and the backend they build.

use super::{Config, ConfigError, IoEngine, build_registry};

fn config(extra: &str, backend: &str) -> String {
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
fn defaults_are_buffered_without_direct() {
    let c = Config::from_toml(&config("", "file"), "t").unwrap();
    let lun = &c.targets[0].luns[0];
    assert_eq!((lun.io, lun.direct), (IoEngine::Buffered, false));
    let c = Config::from_toml(&config("io = \"uring\"\ndirect = true", "file"), "t").unwrap();
    let lun = &c.targets[0].luns[0];
    assert_eq!((lun.io, lun.direct), (IoEngine::Uring, true));
}

#[test]
fn bad_io_settings_are_named() {
    let e = errors(&config("direct = true", "file"));
    assert!(e[0].contains("needs io = \"uring\""), "{e:?}");
    let e = errors(&config("io = \"uring\"", "memory"));
    assert!(e[0].contains("file LUNs only"), "{e:?}");
    let e = errors(&config("direct = true", "memory"));
    assert!(e[0].contains("file LUNs only"), "{e:?}");
    let parse = Config::from_toml(&config("io = \"aio\"", "file"), "t").unwrap_err();
    assert!(parse.to_string().contains("io"), "{parse}");
}

#[test]
fn uring_lun_is_built_with_io_uring() {
    let dir = tempfile::tempdir().unwrap();
    for (extra, want) in [
        ("io = \"uring\"\ndirect = true", "io_uring"),
        ("io = \"uring\"", "io_uring"),
        ("", ""),
    ] {
        let c = Config::from_toml(&config(extra, "file"), "t").unwrap();
        let reg = build_registry(&c, dir.path()).unwrap();
        let device = &reg.targets["iqn.2026-11.dev.gentgt:t"].device;
        let desc = device.luns[&0].backend.describe();
        assert!(desc.starts_with("file:"), "{desc}");
        assert_eq!(
            desc.contains("io_uring"),
            !want.is_empty(),
            "{extra}: {desc}"
        );
    }
}

/// `busy_poll_us` (a top-level key): absent means the default, 0 turns
/// polling off, more than 10 ms is refused by name.
#[test]
fn busy_poll_is_bounded() {
    let c = Config::from_toml(&config("", "memory"), "t").unwrap();
    assert_eq!(c.busy_poll_us, None);
    let c = Config::from_toml(&format!("busy_poll_us = 0\n{}", config("", "memory")), "t").unwrap();
    assert_eq!(c.busy_poll_us, Some(0));
    let e = errors(&format!("busy_poll_us = 20000\n{}", config("", "memory")));
    assert!(e.iter().any(|m| m.contains("busy_poll_us")), "{e:?}");
}
