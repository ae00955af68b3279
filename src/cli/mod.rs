//! Subcommands of the `gentgt` binary beyond `serve`.

pub mod backup;
pub mod bench;
pub mod cbt;
