//! Per-session metric handles. A session resolves its label sets once (at
//! login, or at a LUN's first command) and keeps clones of the counters,
//! which share their atomics with the registry: a command then costs a few
//! atomic adds and no map lookup in the registry.

use super::Metrics;
use super::labels::*;
use crate::scsi::status::GOOD;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

/// LUN label used for commands to LUNs the target does not have (their
/// ids come from the initiator, so they must not become labels).
const UNKNOWN_LUN: &str = "unknown";

/// The counters of one target+LUN.
#[derive(Clone, Debug)]
pub struct LunMetrics {
    commands: [Counter; 3],
    latency: [Histogram; 3],
    read_bytes: Counter,
    written_bytes: Counter,
    in_flight: Gauge,
}

impl LunMetrics {
    fn new(m: &Metrics, target: &str, lun: &str) -> LunMetrics {
        let cmd = |k: CommandKind| CommandLabels {
            target: target.to_string(),
            lun: lun.to_string(),
            kind: k.name(),
        };
        let lun_labels = LunLabels {
            target: target.to_string(),
            lun: lun.to_string(),
        };
        LunMetrics {
            commands: CommandKind::ALL.map(|k| m.commands.get_or_create_owned(&cmd(k))),
            latency: CommandKind::ALL.map(|k| m.latency.get_or_create_owned(&cmd(k))),
            read_bytes: m.read_bytes.get_or_create_owned(&lun_labels),
            written_bytes: m.written_bytes.get_or_create_owned(&lun_labels),
            in_flight: m.in_flight.get_or_create_owned(&lun_labels),
        }
    }
}

/// Counts a command as in flight until dropped (answered, aborted, or
/// its session gone), so the gauge cannot drift whichever path ends it.
#[derive(Debug)]
pub struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// One session's handles; dropping it ends the session in the gauge.
#[derive(Debug)]
pub struct SessionMetrics {
    metrics: Arc<Metrics>,
    target: String,
    known_luns: Vec<u64>,
    luns: HashMap<u64, LunMetrics>,
    unknown: Option<LunMetrics>,
    sessions: Gauge,
}

impl SessionMetrics {
    /// `target` is empty for discovery sessions; `known_luns` are the
    /// target's LUN ids.
    pub fn new(
        metrics: Arc<Metrics>,
        target: &str,
        discovery: bool,
        known_luns: Vec<u64>,
    ) -> SessionMetrics {
        let labels = SessionLabels {
            target: target.to_string(),
            session_type: if discovery { "discovery" } else { "normal" },
        };
        let sessions = metrics.sessions.get_or_create_owned(&labels);
        sessions.inc();
        SessionMetrics {
            metrics,
            target: target.to_string(),
            known_luns,
            luns: HashMap::new(),
            unknown: None,
            sessions,
        }
    }

    /// The handles of `lun`, resolved on first use.
    pub fn lun(&mut self, lun: u64) -> &LunMetrics {
        if !self.known_luns.contains(&lun) {
            let (m, t) = (&self.metrics, &self.target);
            return self
                .unknown
                .get_or_insert_with(|| LunMetrics::new(m, t, UNKNOWN_LUN));
        }
        let (m, t) = (&self.metrics, &self.target);
        self.luns
            .entry(lun)
            .or_insert_with(|| LunMetrics::new(m, t, &lun.to_string()))
    }

    /// A command arrived: in flight until the guard is dropped.
    pub fn command_started(&mut self, lun: u64) -> InFlight {
        let g = self.lun(lun).in_flight.clone();
        g.inc();
        InFlight(g)
    }

    /// A command was answered with `status` and `data_in` bytes of
    /// Data-In from the device. Read bytes are the Data-In a READ sent
    /// (cut to EDTL); written bytes the Data-Out of a WRITE that completed
    /// GOOD. Other commands' data (inquiries, CBT, UNMAP lists) is not I/O
    /// and is not counted.
    #[allow(clippy::too_many_arguments)]
    pub fn command_done(
        &mut self,
        lun: u64,
        cdb: &[u8],
        read: bool,
        edtl: u32,
        status: u8,
        data_in: usize,
        started: Instant,
    ) {
        let elapsed = started.elapsed();
        let kind = CommandKind::of(cdb);
        let (sent, got) = match kind {
            CommandKind::Read if read => (data_in.min(edtl as usize) as u64, 0),
            CommandKind::Write if !read && status == GOOD => (0, u64::from(edtl)),
            _ => (0, 0),
        };
        let kind = kind as usize;
        let l = self.lun(lun);
        l.commands[kind].inc();
        l.latency[kind].observe(elapsed.as_secs_f64());
        if sent > 0 {
            l.read_bytes.inc_by(sent);
        }
        if got > 0 {
            l.written_bytes.inc_by(got);
        }
    }

    pub fn tmf(&self, function: u8, response: u8) {
        let labels = TmfLabels {
            target: self.target.clone(),
            function: tmf_function(function),
            response: tmf_response(response),
        };
        self.metrics.tmf.get_or_create(&labels).inc();
    }

    /// `data` false for a header digest error.
    pub fn digest_error(&self, data: bool) {
        let labels = DigestLabels {
            target: self.target.clone(),
            digest: if data { "data" } else { "header" },
        };
        self.metrics.digest_errors.get_or_create(&labels).inc();
    }

    pub fn reject(&self, reason: u8) {
        let labels = RejectLabels {
            target: self.target.clone(),
            reason: reject_reason(reason),
        };
        self.metrics.rejects.get_or_create(&labels).inc();
    }
}

impl Drop for SessionMetrics {
    fn drop(&mut self) {
        self.sessions.dec();
    }
}
