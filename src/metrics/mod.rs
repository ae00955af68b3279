//! Operator metrics: one [`Metrics`] per server, reachable from every
//! connection through `Shared`, rendered in the Prometheus text format by
//! the admin endpoint ([`http`]).
//!
//! The hot path only touches atomics: a session looks its per-LUN handles
//! up once ([`SessionMetrics`]) and then bumps counters it owns clones of.
//! CBT state is not mirrored at all; it is read from the logical units at
//! scrape time ([`cbt`]).

mod cbt;
pub mod labels;
pub mod log;
mod session;

pub use labels::CommandKind;
pub use session::{InFlight, LunMetrics, SessionMetrics};

use crate::server::Registry as TargetRegistry;
use labels::*;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::Arc;

type HistogramFamily = Family<CommandLabels, Histogram, fn() -> Histogram>;

/// Command latency buckets: 25 µs doubling up to ~13 s.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(25e-6, 2.0, 20))
}

/// The metric families of one server.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    logins: Family<LoginLabels, Counter>,
    sessions: Family<SessionLabels, Gauge>,
    connections: Counter,
    commands: Family<CommandLabels, Counter>,
    read_bytes: Family<LunLabels, Counter>,
    written_bytes: Family<LunLabels, Counter>,
    latency: HistogramFamily,
    in_flight: Family<LunLabels, Gauge>,
    tmf: Family<TmfLabels, Counter>,
    digest_errors: Family<DigestLabels, Counter>,
    rejects: Family<RejectLabels, Counter>,
    reloads: Family<ReloadLabels, Counter>,
    /// 1 when the last reload was applied (or none was tried), 0 after a
    /// rejected one.
    reload_ok: Gauge,
    /// The targets whose CBT state is read at scrape time.
    targets: Arc<cbt::Watched>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let m = Metrics {
            registry: Registry::with_prefix("gentgt"),
            logins: Family::default(),
            sessions: Family::default(),
            connections: Counter::default(),
            commands: Family::default(),
            read_bytes: Family::default(),
            written_bytes: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            in_flight: Family::default(),
            tmf: Family::default(),
            digest_errors: Family::default(),
            rejects: Family::default(),
            reloads: Family::default(),
            reload_ok: Gauge::default(),
            targets: Arc::default(),
        };
        m.register()
    }

    fn register(mut self) -> Metrics {
        let r = &mut self.registry;
        r.register(
            "iscsi_logins",
            "Login attempts by target and result (success or failure reason)",
            self.logins.clone(),
        );
        r.register(
            "iscsi_sessions",
            "Sessions in full feature phase",
            self.sessions.clone(),
        );
        r.register(
            "iscsi_connections_accepted",
            "TCP connections accepted on the portals",
            self.connections.clone(),
        );
        r.register(
            "scsi_commands",
            "SCSI commands completed, by kind",
            self.commands.clone(),
        );
        r.register(
            "scsi_read_bytes",
            "Data-In payload bytes sent by READ commands",
            self.read_bytes.clone(),
        );
        r.register(
            "scsi_written_bytes",
            "Data-Out payload bytes of WRITE commands that completed with GOOD status",
            self.written_bytes.clone(),
        );
        r.register(
            "scsi_command_duration_seconds",
            "Time from command arrival to its response, by kind",
            self.latency.clone(),
        );
        r.register(
            "scsi_commands_in_flight",
            "Commands received and not yet answered",
            self.in_flight.clone(),
        );
        r.register(
            "iscsi_task_management",
            "Task management requests by function and response",
            self.tmf.clone(),
        );
        r.register(
            "iscsi_digest_errors",
            "PDUs that failed their header or data digest",
            self.digest_errors.clone(),
        );
        r.register(
            "iscsi_rejects",
            "Reject PDUs sent, by reason",
            self.rejects.clone(),
        );
        r.register(
            "config_reloads",
            "Configuration reloads (SIGHUP, gentgt reload) by result",
            self.reloads.clone(),
        );
        self.reload_ok.set(1);
        r.register(
            "config_last_reload_successful",
            "1 if the last reload was applied (or none was tried), 0 if it was rejected",
            self.reload_ok.clone(),
        );
        r.register_collector(Box::new(cbt::CbtCollector::new(self.targets.clone())));
        self
    }

    /// Read CBT state from these targets at scrape time (call again after
    /// a configuration reload replaces the registry).
    pub fn watch_targets(&self, targets: Arc<TargetRegistry>) {
        *self.targets.0.write().unwrap_or_else(|e| e.into_inner()) = Some(targets);
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail; a collector error would only
        // truncate the page.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }

    /// A configuration reload was applied (`true`) or rejected whole.
    pub fn reload(&self, applied: bool) {
        let result = if applied { "applied" } else { "rejected" };
        self.reloads.get_or_create(&ReloadLabels { result }).inc();
        self.reload_ok.set(i64::from(applied));
    }

    pub fn connection_accepted(&self) {
        self.connections.inc();
    }

    /// A login ended: `result` is "success" or a failure reason
    /// ([`LoginFailure::label`](crate::proto::login::LoginFailure::label), "timeout", "closed", ...). `target` is
    /// empty for discovery and for names the registry does not know.
    pub fn login(&self, target: &str, result: &'static str) {
        let labels = LoginLabels {
            target: target.to_string(),
            result,
        };
        self.logins.get_or_create(&labels).inc();
    }
}

#[cfg(test)]
mod tests;

/// The target a login request names, if this server has it: the label of
/// the login's outcome (unknown names are the initiator's, not labels).
pub fn named_target(text: &[u8], targets: &TargetRegistry) -> Option<String> {
    let pairs = crate::proto::text::TextPairs::parse(text).ok()?;
    let name = pairs.get("TargetName")?;
    targets.target(name).map(|t| t.name.clone())
}
