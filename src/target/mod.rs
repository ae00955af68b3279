//! The only socket code: accept loop, connections, sessions, registry.

pub mod admin;
mod hung;
mod limit;
mod login;
mod poll;
pub mod registry;
pub mod reload;
pub mod server;
mod session;
pub mod shared;
pub mod stats;
mod task;
mod text;
mod tmf;
mod wire;

pub use registry::{Registry, TargetEntry};
pub use reload::ReloadSummary;
pub use server::{ReloadRequest, Server};
pub use shared::TargetSettings;
pub use stats::{ServerStats, StatsSnapshot};
