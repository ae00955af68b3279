//! CBT and fault state per LUN, read from the logical units at scrape time rather
//! than mirrored into counters: the units already hold it, and a scrape is
//! rare next to the writes that change it.

use super::labels::LunLabels;
use crate::server::Registry as TargetRegistry;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;
use std::sync::{Arc, RwLock};

/// The registry whose LUNs are sampled; replaced on reload.
#[derive(Default)]
pub(super) struct Watched(pub(super) RwLock<Option<Arc<TargetRegistry>>>);

impl std::fmt::Debug for Watched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Watched")
    }
}

type Source = Arc<Watched>;

#[derive(Debug)]
pub(super) struct CbtCollector {
    targets: Source,
}

/// One LUN's CBT state at one instant.
struct Sample {
    labels: LunLabels,
    tracking: bool,
    open_generation: u64,
    locked: bool,
    held_writes: u64,
    /// A point-in-time view is open (lost or not).
    view_open: bool,
    /// Bytes the open view keeps (VIEW SPACE USED).
    view_kept: u64,
    /// VIEW SPACE LIMIT (0 with views off).
    view_limit: u64,
    /// Views lost since the tracker started.
    views_lost: u64,
    /// A sync failed: SYNCHRONIZE CACHE and FUA writes fail until reopened.
    sync_lost: bool,
    /// The thin provisioning soft threshold is reached.
    threshold_reached: bool,
    /// Backend calls hung now (not CBT, but LU state read the same way).
    hung_ios: u64,
}

impl CbtCollector {
    pub(super) fn new(targets: Source) -> CbtCollector {
        CbtCollector { targets }
    }

    fn samples(&self) -> Vec<Sample> {
        let guard = self.targets.0.read().unwrap_or_else(|e| e.into_inner());
        let Some(reg) = guard.as_ref() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for t in reg.targets.values() {
            // A view LUN is not a tracked LUN: its view is reported under
            // the LUN it is a view of.
            for (id, lu) in t.device.luns.iter().filter(|(_, l)| l.view_of.is_none()) {
                let view = lu.tracker.as_ref().and_then(|t| t.view());
                out.push(Sample {
                    labels: LunLabels {
                        target: t.name.clone(),
                        lun: id.to_string(),
                    },
                    tracking: lu.tracker.is_some(),
                    open_generation: lu.tracker.as_ref().map_or(0, |t| t.open_generation()),
                    locked: lu.cbt_lock.status().is_some(),
                    held_writes: lu.cbt_lock.held_count() as u64,
                    view_open: view.is_some(),
                    view_kept: view.as_ref().map_or(0, |v| v.used()),
                    view_limit: match (&view, &lu.cbt.view) {
                        (Some(v), _) => v.limit(),
                        (None, Some(s)) if lu.tracker.is_some() => s.space,
                        _ => 0,
                    },
                    views_lost: lu.tracker.as_ref().map_or(0, |t| t.views_lost()),
                    sync_lost: lu.sync_lost.load(std::sync::atomic::Ordering::Relaxed),
                    threshold_reached: lu.space.reached(),
                    hung_ios: u64::from(lu.hung.hung_calls()),
                });
            }
        }
        out
    }
}

/// (name, help, value of a sample)
type Gauge = (&'static str, &'static str, fn(&Sample) -> u64);

const GAUGES: [Gauge; 10] = [
    (
        "cbt_tracking_enabled",
        "1 if changed-block tracking is on for the LUN",
        |s| u64::from(s.tracking),
    ),
    (
        "cbt_open_generation",
        "The LUN's open CBT generation (0 without tracking)",
        |s| s.open_generation,
    ),
    (
        "cbt_write_lock_held",
        "1 while a CBT write lock is held on the LUN",
        |s| u64::from(s.locked),
    ),
    (
        "cbt_held_writes",
        "Changes queued behind the CBT write lock",
        |s| s.held_writes,
    ),
    (
        "cbt_view_open",
        "1 while a CBT point-in-time view of the LUN is open (also once lost)",
        |s| u64::from(s.view_open),
    ),
    (
        "cbt_view_kept_bytes",
        "Old data the open view keeps (VIEW SPACE USED; 0 without a view)",
        |s| s.view_kept,
    ),
    (
        "cbt_view_space_limit_bytes",
        "Most data a view of the LUN may keep (0 with views off)",
        |s| s.view_limit,
    ),
    (
        "lun_sync_failed",
        "1 once a flush or FUA sync of the LUN failed (later syncs fail until it is reopened)",
        |s| u64::from(s.sync_lost),
    ),
    (
        "lun_soft_threshold_reached",
        "1 while the LUN's thin provisioning use is at or above its soft_threshold",
        |s| u64::from(s.threshold_reached),
    ),
    (
        "backend_hung_ios",
        "Backend calls of the LUN running past hung_io_timeout or abandoned; \
         while above 0 the LUN is fenced (NOT READY)",
        |s| s.hung_ios,
    ),
];

/// (name without `_total`, help, value of a sample)
const COUNTERS: [Gauge; 1] = [(
    "cbt_views_lost",
    "CBT views of the LUN lost (view space exhausted or I/O error) since start",
    |s| s.views_lost,
)];

impl Collector for CbtCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let samples = self.samples();
        if samples.is_empty() {
            return Ok(());
        }
        for (name, help, value) in GAUGES {
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for s in &samples {
                metric.encode_family(&s.labels)?.encode_gauge(&value(s))?;
            }
        }
        for (name, help, value) in COUNTERS {
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for s in &samples {
                metric
                    .encode_family(&s.labels)?
                    .encode_counter::<prometheus_client::encoding::NoLabelSet, _, u64>(
                        &value(s),
                        None,
                    )?;
            }
        }
        Ok(())
    }
}
