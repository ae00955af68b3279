//! The TOML configuration: parse and validate (nothing is created; building
//! the registry is what touches the disk, and it is not called here).

use crate::config::{Config, check_iscsi_name, format_size, parse_size};

/// The input as TOML text; short inputs also go through the size and name
/// parsers directly.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if text.len() <= 64 {
        if let Ok(n) = parse_size(text) {
            assert!(n > 0 || text.trim().starts_with('0'));
            assert_eq!(parse_size(&format_size(n)), Ok(n), "size round trip");
        }
        let _ = check_iscsi_name(text);
    }
    let Ok(cfg) = Config::from_toml(text, "fuzz") else {
        return;
    };
    // A configuration that validated must stay valid and its portals parse.
    cfg.validate().expect("validated config validates again");
    cfg.listen_addrs()
        .expect("validated listen addresses parse");
    for t in &cfg.targets {
        assert!(check_iscsi_name(&t.name).is_ok());
        for lun in &t.luns {
            let _ = (lun.tracking_mode(), lun.extent_bytes());
        }
    }
}
