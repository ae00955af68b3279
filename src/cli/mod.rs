//! Subcommands of the `gentgt` binary beyond `serve`.

pub mod cbt;
pub mod backup;
