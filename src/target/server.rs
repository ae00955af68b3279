//! Accept loop and graceful shutdown. SKELETON — interface fixed.

use super::Registry;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;

pub struct Server {
    registry: Arc<Registry>,
    listeners: Vec<TcpListener>,
}

impl Server {
    /// Bind every portal address (port 0 picks a free port).
    pub async fn bind(registry: Arc<Registry>, addrs: &[SocketAddr]) -> io::Result<Server> {
        let mut listeners = Vec::new();
        for a in addrs {
            listeners.push(TcpListener::bind(a).await?);
        }
        Ok(Server {
            registry,
            listeners,
        })
    }

    /// The addresses actually bound.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Serve until `shutdown` completes, then stop accepting, ask initiators
    /// to log out, finish or abort in-flight commands and flush backends.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> io::Result<()> {
        shutdown.await;
        Ok(())
    }
}
