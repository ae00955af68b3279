//! Accept loop and graceful shutdown.

use super::Registry;
use super::login::login_phase;
use super::session;
use super::shared::{Shared, TargetSettings};
use super::stats::ServerStats;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

pub struct Server {
    registry: Arc<Registry>,
    listeners: Vec<TcpListener>,
    settings: TargetSettings,
    stats: Arc<ServerStats>,
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
            settings: TargetSettings::default(),
            stats: Arc::default(),
        })
    }

    /// Replace the transport tunables (tests shorten the timers).
    pub fn with_settings(mut self, settings: TargetSettings) -> Server {
        self.settings = settings;
        self
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

    /// Live counts of connections, sessions and tasks, valid once `run`
    /// starts and for as long as the caller keeps the handle.
    pub fn stats(&self) -> Arc<ServerStats> {
        self.stats.clone()
    }

    /// Serve until `shutdown` completes, then stop accepting, ask initiators
    /// to log out, finish or abort in-flight commands and flush backends.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> io::Result<()> {
        let portals = self.local_addrs();
        let mut shared = Shared::new(self.registry.clone(), self.settings, portals);
        shared.stats = self.stats.clone();
        let shared = Arc::new(shared);
        for t in shared.registry.targets.values() {
            // PREEMPT AND ABORT reaches the preempted initiators' sessions.
            let weak = Arc::downgrade(&shared);
            t.device.set_abort_hook(Box::new(move |nexus_ids, lun| {
                if let Some(s) = weak.upgrade() {
                    s.abort_for(nexus_ids, lun);
                }
            }));
        }
        let mut accept_tasks = JoinSet::new();
        for l in self.listeners {
            accept_tasks.spawn(accept_loop(l, shared.clone()));
        }
        accept_tasks.spawn(housekeeping(shared.clone()));
        let maintenance = tokio::spawn(maintenance_loop(self.registry.clone()));
        shutdown.await;
        maintenance.abort();
        info!("shutting down: no new connections; asking initiators to log out");
        accept_tasks.abort_all();
        while accept_tasks.join_next().await.is_some() {}
        shared.shutdown.cancel();
        let grace = shared.settings.logout_grace + Duration::from_secs(3);
        let deadline = tokio::time::Instant::now() + grace;
        while shared.session_count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for t in shared.registry.targets.values() {
            if let Err(e) = t.device.flush_all() {
                warn!(target = %t.name, error = %e, "flush at shutdown failed");
            }
        }
        info!("stopped");
        Ok(())
    }
}

/// Periodic work of the device servers: CBT write-lock leases end by
/// themselves even when no command arrives.
async fn housekeeping(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for t in shared.registry.targets.values() {
            t.device.tick();
        }
    }
}

/// Device-server upkeep (CBT checkpoints) on a blocking thread, every few
/// seconds; `DeviceServer::maintenance` decides what is due.
async fn maintenance_loop(registry: Arc<Registry>) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let r = registry.clone();
        let _ = tokio::task::spawn_blocking(move || {
            for t in r.targets.values() {
                t.device.maintenance();
            }
        })
        .await;
    }
}

/// Connections run detached from the accept loop, so that stopping to
/// accept at shutdown does not cut sessions that are logging out.
async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                debug!(%peer, "connection");
                tokio::spawn(connection(stream, shared.clone()));
            }
            Err(e) => {
                // Out of file descriptors and the like: back off, go on.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn connection(stream: TcpStream, shared: Arc<Shared>) {
    let _counted = shared.stats.connection();
    let _ = stream.set_nodelay(true);
    let peer = stream.peer_addr().ok();
    let local = stream.local_addr().ok();
    let (mut rd, mut wr) = stream.into_split();
    let login = tokio::time::timeout(
        shared.settings.login_timeout,
        login_phase(&mut rd, &mut wr, &shared),
    )
    .await;
    match login {
        Ok(Ok(Some(done))) => session::run(shared, rd, wr, done, local).await,
        Ok(Ok(None)) => debug!(?peer, "login ended without a session"),
        Ok(Err(e)) => debug!(?peer, error = %e, "login I/O error"),
        Err(_) => info!(?peer, "login timed out; connection dropped"),
    }
}
