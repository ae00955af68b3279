//! The per-LUN `io` and `direct` keys and the transport's top-level keys
//! (busy_poll_us, timers): parsing, validation, what they build.

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

/// The transport timers reach the server's settings; absent keys keep the
/// defaults; values outside 100 ms..1 h are refused by name.
#[test]
fn transport_timers_are_configurable_and_bounded() {
    use std::time::Duration;
    let base = config("", "memory");
    let d = Config::from_toml(&base, "t").unwrap().transport_settings();
    let defaults = crate::server::TargetSettings::default();
    assert_eq!(d.login_timeout, defaults.login_timeout);
    assert_eq!(d.nop_interval, defaults.nop_interval);
    assert_eq!(d.busy_poll, Duration::from_micros(50));
    let text = format!(
        "login_timeout_ms = 2500\nnop_interval_ms = 1000\nnop_timeout_ms = 700\n\
         busy_poll_us = 0\nmax_connections = 7\nhung_io_timeout_ms = 4000\n\
         abort_timeout_ms = 300\nsend_stall_timeout_ms = 900\n{base}"
    );
    let s = Config::from_toml(&text, "t").unwrap().transport_settings();
    assert_eq!(s.login_timeout, Duration::from_millis(2500));
    assert_eq!(s.nop_interval, Duration::from_secs(1));
    assert_eq!(s.nop_timeout, Duration::from_millis(700));
    assert_eq!(s.busy_poll, Duration::ZERO);
    assert_eq!(s.max_connections, 7);
    assert_eq!(s.hung_io_timeout, Duration::from_secs(4));
    assert_eq!(s.abort_timeout, Duration::from_millis(300));
    assert_eq!(s.send_stall_timeout, Duration::from_millis(900));
    assert_eq!(d.hung_io_timeout, defaults.hung_io_timeout);
    let e = errors(&format!(
        "nop_interval_ms = 0\nlogin_timeout_ms = 7200000\nabort_timeout_ms = 5\n{base}"
    ));
    assert!(e.iter().any(|m| m.contains("abort_timeout_ms")), "{e:?}");
    assert!(e.iter().any(|m| m.contains("nop_interval_ms")), "{e:?}");
    assert!(e.iter().any(|m| m.contains("login_timeout_ms")), "{e:?}");
}
