//! Subcommands of the `gentgt` binary beyond `serve`.

pub mod backup;
pub mod bench;
pub mod cbt;
pub mod reload;
pub mod repo;

use anyhow::{Context, Result};
use gentgt::initiator::{ConnectOptions, Initiator, Session};
use std::net::SocketAddr;

/// Log in to `target` at `portal` as `initiator` and take the power-on
/// unit attention a fresh session sees first, so the caller's first real
/// command is not refused with it.
pub async fn login(portal: SocketAddr, target: &str, initiator: &str, lun: u64) -> Result<Session> {
    let opts = ConnectOptions::new(portal, initiator, Some(target));
    let session = Initiator::connect(&opts)
        .await
        .with_context(|| format!("logging in to {target} at {portal}"))?;
    let _ = session.test_unit_ready(lun).await;
    Ok(session)
}
