//! Background upkeep of the device server: periodic CBT checkpoints, and
//! the tracker side of a clean shutdown. The transport calls
//! [`DeviceServer::maintenance`] from a blocking thread every few seconds.

use super::LogicalUnit;
use super::server::DeviceServer;
use std::time::{Duration, Instant};

/// A persistent tracker is checkpointed at least this often while it is
/// being written, so a crash replays at most this much intent log (and
/// over-reports only what was written in that window).
pub const CHECKPOINT_PERIOD: Duration = Duration::from_secs(30);

impl DeviceServer {
    /// Checkpoint every persistent tracker that asks for it
    /// (`needs_checkpoint`) or whose last checkpoint is older than
    /// [`CHECKPOINT_PERIOD`]. Blocking: fsyncs. The backend is flushed
    /// inside the checkpoint, after the old epoch's changes drained and
    /// before their intents are dropped.
    pub fn maintenance(&self) {
        let due = {
            let mut last = self
                .last_checkpoint
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let due = last.elapsed() >= CHECKPOINT_PERIOD;
            if due {
                *last = Instant::now();
            }
            due
        };
        for (id, lu) in &self.luns {
            let Some(t) = &lu.tracker else { continue };
            if !t.status().persistent || !(due || t.needs_checkpoint()) {
                continue;
            }
            if let Err(e) = t.checkpoint_with(|| super::io_fault::flush(lu)) {
                // The intent logs stay: a crash over-reports, never under.
                tracing::warn!(lun = id, error = %e, "CBT checkpoint failed");
            }
        }
    }

    /// Clean stop of one LUN's tracker, after its backend was flushed:
    /// refuses further changes, checkpoints and marks the tracking
    /// directory clean so the next start recovers nothing.
    pub(crate) fn shutdown_tracker(id: u64, lu: &LogicalUnit) -> std::io::Result<()> {
        let Some(t) = &lu.tracker else { return Ok(()) };
        t.shutdown().map_err(|e| {
            tracing::warn!(lun = id, error = %e, "CBT shutdown failed; next start recovers");
            std::io::Error::other(e)
        })
    }
}
