//! The only socket code: accept loop, connections, sessions, registry.

pub mod accept;
pub mod admin;
mod hung;
mod limit;
mod login;
mod poll;
pub mod registry;
pub mod reload;
mod session;
pub mod shared;
pub mod stats;
mod text;
mod wire;

pub use accept::{ReloadRequest, Server};
pub use registry::{Registry, TargetEntry};
pub use reload::ReloadSummary;
pub use shared::TargetSettings;
pub use stats::{ServerStats, StatsSnapshot};
