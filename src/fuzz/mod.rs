//! Fuzz targets: one function per parser or state machine an initiator can
//! reach. Each takes arbitrary bytes, must never panic, hang or allocate
//! without bound, and asserts cheap invariants (round trips, well-formed
//! sense). The same functions run under cargo-fuzz (`fuzz/`) and under
//! `cargo test` (`tests/fuzz_replay.rs` replays the committed corpus), so a
//! crash found once stays a regression test on stable Rust.

mod config;
mod input;
mod login;
mod pdus;
mod proto;
mod scsi;
mod seeds;
mod session;
mod session_sm;
mod session_wire;

pub use config::config;
pub use login::login;
pub use proto::{negotiation, pdu, text_keys};
pub use scsi::{cbt, cdb, param_lists};
pub use seeds::seeds;
pub use session::session;
pub use session_sm::session_sm;

/// A fuzz target: any bytes in, panics on a violated invariant.
pub type Target = fn(&[u8]);

/// Every target by name, for replay drivers.
pub const TARGETS: &[(&str, Target)] = &[
    ("pdu", pdu),
    ("text_keys", text_keys),
    ("negotiation", negotiation),
    ("login", login),
    ("session", session),
    ("session_sm", session_sm),
    ("cdb", cdb),
    ("cbt", cbt),
    ("param_lists", param_lists),
    ("config", config),
];
