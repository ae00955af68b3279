//! Accept loop and graceful shutdown.

use super::Registry;
use super::limit;
use super::login::login_phase;
use super::reload::{self, ReloadSummary};
use super::session;
use super::shared::{Shared, TargetSettings};
use super::stats::ServerStats;
use crate::metrics::Metrics;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tracing::{Instrument, debug, info, info_span, warn};

pub struct Server {
    registry: Arc<Registry>,
    listeners: Vec<TcpListener>,
    /// Each listener's address as configured (what portal groups name).
    configured: Vec<SocketAddr>,
    settings: TargetSettings,
    metrics: Arc<Metrics>,
    admin: Option<TcpListener>,
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
            configured: addrs.to_vec(),
            settings: TargetSettings::default(),
            metrics: Arc::default(),
            admin: None,
            stats: Arc::default(),
        })
    }

    /// Also serve `/metrics` and `/healthz` over HTTP on `addr`.
    pub async fn bind_admin(mut self, addr: SocketAddr) -> io::Result<Server> {
        self.admin = Some(TcpListener::bind(addr).await?);
        Ok(self)
    }

    /// The admin address actually bound, if any.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// This server's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
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
        let (_none, reloads) = mpsc::channel(1);
        self.run_with_reloads(shutdown, reloads).await
    }

    /// [`run`](Server::run), also applying each registry that arrives on
    /// `reloads` (see [`super::reload`]); the summary goes back on `reply`.
    pub async fn run_with_reloads(
        self,
        shutdown: impl Future<Output = ()>,
        mut reloads: mpsc::Receiver<ReloadRequest>,
    ) -> io::Result<()> {
        let portals = self.local_addrs();
        let mut shared = Shared::new(self.registry.clone(), self.settings, portals);
        shared.metrics = self.metrics.clone();
        shared.stats = self.stats.clone();
        shared.portal_keys = self.configured.clone();
        self.metrics.watch_targets(self.registry.clone());
        let shared = Arc::new(shared);
        for t in shared.registry.load().targets.values() {
            // PREEMPT AND ABORT reaches the preempted initiators' sessions.
            reload::wire_abort_hook(&shared, &t.device);
        }
        let mut accept_tasks = JoinSet::new();
        for (l, key) in self.listeners.into_iter().zip(self.configured) {
            accept_tasks.spawn(accept_loop(l, shared.clone(), key));
        }
        accept_tasks.spawn(housekeeping(shared.clone()));
        if let Some(l) = self.admin {
            accept_tasks.spawn(super::admin::serve(l, self.metrics.clone()));
        }
        let maintenance = tokio::spawn(maintenance_loop(shared.clone()));
        let mut retiring = JoinSet::new();
        let retire_limit = shared.settings.logout_grace + Duration::from_secs(5);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                Some(req) = reloads.recv() => {
                    shared.metrics.watch_targets(req.registry.clone());
                    let (summary, retired) =
                        reload::apply(&shared, req.registry, req.max_connections);
                    info!("reload applied: {summary}");
                    for r in retired {
                        retiring.spawn(r.close(retire_limit));
                    }
                    let _ = req.reply.send(summary);
                }
            }
        }
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
        // LUNs removed by a reload are closed before we go.
        while retiring.join_next().await.is_some() {}
        for t in shared.registry.load().targets.values() {
            if let Err(e) = t.device.flush_all() {
                warn!(target = %t.name, error = %e, "flush at shutdown failed");
            }
        }
        info!("stopped");
        Ok(())
    }
}

/// A new registry for a running server (built by the caller, who has
/// already checked everything that can fail).
pub struct ReloadRequest {
    pub registry: Arc<Registry>,
    /// New connection limit, if it changes.
    pub max_connections: Option<usize>,
    pub reply: oneshot::Sender<ReloadSummary>,
}

/// Periodic work of the device servers: CBT write-lock leases end by
/// themselves even when no command arrives.
async fn housekeeping(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for t in shared.registry.load().targets.values() {
            t.device.tick();
        }
    }
}

/// Device-server upkeep (CBT checkpoints) on a blocking thread, every few
/// seconds; `DeviceServer::maintenance` decides what is due.
async fn maintenance_loop(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let r = shared.registry.load();
        let _ = tokio::task::spawn_blocking(move || {
            for t in r.targets.values() {
                t.device.maintenance();
            }
        })
        .await;
    }
}

/// Connections run detached from the accept loop, so that stopping to
/// accept at shutdown does not cut sessions that are logging out. `key`
/// is the listener's configured address: it names its portal group.
async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, key: SocketAddr) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                debug!(%peer, "connection");
                shared.metrics.connection_accepted();
                match limit::admit(&shared) {
                    Some(slot) => tokio::spawn(connection(stream, shared.clone(), slot, key)),
                    None => tokio::spawn(limit::refuse(stream, shared.clone(), peer)),
                };
            }
            Err(e) => {
                // Out of file descriptors and the like: back off, go on.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// One connection through the portal configured as `key`; `_slot` holds
/// its place under the connection limit until the connection ends.
async fn connection(stream: TcpStream, shared: Arc<Shared>, _slot: limit::Slot, key: SocketAddr) {
    let _counted = shared.stats.connection();
    let _ = stream.set_nodelay(true);
    let peer = stream.peer_addr().ok();
    let local = stream.local_addr().ok();
    let (mut rd, mut wr) = stream.into_split();
    let peer_text = peer.map(|p| p.to_string()).unwrap_or_default();
    let conn_span = info_span!("conn", peer = %peer_text);
    let tag = shared.registry.load().tag_of(key);
    let login = tokio::time::timeout(
        shared.settings.login_timeout,
        login_phase(&mut rd, &mut wr, &shared, tag),
    )
    .instrument(conn_span.clone())
    .await;
    match login {
        Ok(Ok(Some(done))) => {
            let span = crate::metrics::log::session_span(&conn_span, &done.result, done.tsih);
            session::run(shared, rd, wr, done, local)
                .instrument(span)
                .await
        }
        Ok(Ok(None)) => debug!(parent: &conn_span, "login ended without a session"),
        Ok(Err(e)) => {
            shared.metrics.login("", "io_error");
            debug!(parent: &conn_span, error = %e, "login I/O error")
        }
        Err(_) => {
            shared.metrics.login("", "timeout");
            info!(parent: &conn_span, "login timed out; connection dropped")
        }
    }
}
