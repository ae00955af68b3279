//! Subcommands of the `gentgt` binary beyond `serve`.

pub mod bench;
pub mod cbt;
