//! CBT state per LUN, read from the logical units at scrape time rather
//! than mirrored into counters: the units already hold it, and a scrape is
//! rare next to the writes that change it.

use super::labels::LunLabels;
use crate::target::Registry as TargetRegistry;
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
            for (id, lu) in &t.device.luns {
                out.push(Sample {
                    labels: LunLabels {
                        target: t.name.clone(),
                        lun: id.to_string(),
                    },
                    tracking: lu.tracker.is_some(),
                    open_generation: lu.tracker.as_ref().map_or(0, |t| t.open_generation()),
                    locked: lu.cbt_lock.status().is_some(),
                    held_writes: lu.cbt_lock.held_count() as u64,
                });
            }
        }
        out
    }
}

/// (name, help, value of a sample)
type Gauge = (&'static str, &'static str, fn(&Sample) -> u64);

const GAUGES: [Gauge; 4] = [
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
];

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
        Ok(())
    }
}
