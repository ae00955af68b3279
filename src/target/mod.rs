//! The only socket code: accept loop, connections, sessions, registry.

pub mod registry;

pub use registry::{Registry, TargetEntry};
pub mod server;

pub use server::Server;
