//! The appliance's loop (`shared/specs/cbt-scsi.md`):
//!
//! ```text
//! full:        G0 = CLOSE; copy every extent; since = G0
//! incremental: since = parent's lock generation
//! repeat: G = CLOSE; copy changes since `since`; since = G
//! until a pass copied fewer than the threshold (or the pass limit)
//! ACQUIRE WRITE LOCK (Gf); copy changes since `since`; RELEASE
//! ```
//!
//! The image then equals the LUN at lock time. With a version-2 target
//! the run uses a point-in-time view instead ([`super::view`]) and comes
//! back to this loop only when it cannot. Retrying a pass after a
//! dropped connection is always safe: `since` only advances once a pass
//! completed, so a retried pass lists a superset of what is missing.
//! The lock is released on every path out of the locked pass (errors and
//! cancellation included); if the connection itself is gone, the target
//! ended the lock with the session.

use super::manifest::{ExtentRef, LunId, MANIFEST_VERSION, Manifest, Stats};
use super::pass::{self, PassCtx};
use super::repo::{Repo, new_id, now_ms};
use super::view::{MethodChoice, ViewHook};
use super::{BackupError, Result};
use crate::initiator::cbt::{LockGrant, TrackingReport};
use crate::initiator::{ConnectOptions, Initiator, Session};
use serde::Serialize;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Called while the write lock is held, after the final pass copied
/// everything (tests read the LUN here to know what the image must be).
pub type LockHook = Arc<dyn Fn(LockInfo) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

#[derive(Debug, Clone, Copy)]
pub struct LockInfo {
    pub token: u64,
    pub generation: u64,
}

#[derive(Clone)]
pub struct BackupOptions {
    pub connect: ConnectOptions,
    pub lun: u64,
    /// Go to the locked pass once a pass copied fewer extents than this.
    pub threshold_extents: u64,
    /// Passes before the lock at most (the full copy counts as one).
    pub max_passes: u32,
    /// Lease asked for (0 = the target's default); renewed at a third.
    pub lease_ms: u32,
    /// READs in flight.
    pub parallel: usize,
    /// Bytes per READ at most (runs of consecutive extents; at least one
    /// extent; the LUN's maximum transfer length lowers it).
    pub max_read_bytes: u32,
    pub progress: bool,
    pub max_reconnects: u32,
    pub lock_hook: Option<LockHook>,
    /// View or lock (default: a view where the target offers one).
    pub method: MethodChoice,
    /// View lease asked for (0 = the target's default); renewed at a
    /// third. A crashed appliance's view holds view space this long.
    pub view_lease_ms: u32,
    /// Called around OPEN VIEW (tests capture the LUN there).
    pub view_hook: Option<ViewHook>,
    /// Cancelled by Ctrl-C (the CLI) or a test: the run stops, releasing
    /// the lock if it holds it, and publishes nothing.
    pub cancel: CancellationToken,
}

impl BackupOptions {
    pub fn new(connect: ConnectOptions, lun: u64) -> Self {
        BackupOptions {
            connect,
            lun,
            threshold_extents: 64,
            max_passes: 5,
            lease_ms: 20_000,
            parallel: 8,
            max_read_bytes: pass::READ_BYTES,
            progress: false,
            max_reconnects: 5,
            lock_hook: None,
            method: MethodChoice::Auto,
            view_lease_ms: 60_000,
            view_hook: None,
            cancel: CancellationToken::new(),
        }
    }
}

/// What `gentgt backup --json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct BackupSummary {
    pub id: String,
    pub parent: Option<String>,
    /// Why a full pass was done, if it was.
    pub full_reason: Option<String>,
    /// "view" or "lock".
    pub method: super::Method,
    /// Why the lock method was used where a view was wanted.
    pub fallback_reason: Option<String>,
    /// The generation the image equals (VIEW or LOCK GENERATION); the
    /// same as `lock_generation`, which keeps its version-1 name.
    pub generation: u64,
    pub lock_generation: u64,
    pub logical_bytes: u64,
    /// bytes_read / logical_bytes.
    pub read_ratio: f64,
    pub throughput_bytes_per_s: f64,
    pub stats: Stats,
}

pub(super) struct Run {
    pub(super) opts: BackupOptions,
    pub(super) ctx: PassCtx,
    pub(super) image: Vec<Option<ExtentRef>>,
    pub(super) stats: Stats,
    /// G0 of the full pass once closed (a retried full pass keeps it); a
    /// fallback from a view sets it to the view's generation.
    pub(super) full_g0: Option<u64>,
    pub(super) last_pass_extents: u64,
    /// The view pass's list of (extent, deallocated), once known.
    pub(super) view_todo: Option<super::view::ViewTodo>,
}

pub async fn backup(repo: Arc<Repo>, opts: &BackupOptions) -> Result<BackupSummary> {
    let started = Instant::now();
    let session = cancellable(&opts.cancel, connect(opts)).await?;
    let (id, report) = cancellable(&opts.cancel, identify(&session, opts.lun)).await?;
    let parent = repo.latest_for(&id.naa)?;
    let (base, full_reason) = choose_base(parent, &id, report.open_generation);
    let image = match &base {
        Some(p) => p.extents.iter().cloned().map(Some).collect(),
        None => vec![None; id.extent_count() as usize],
    };
    let read_extents = pass::read_extents(&session, opts.lun, &id, opts.max_read_bytes).await;
    let ctx = PassCtx {
        session,
        lun: opts.lun,
        repo: repo.clone(),
        id: id.clone(),
        parallel: opts.parallel,
        progress: opts.progress,
        read_extents,
    };
    let mut run = Run {
        opts: opts.clone(),
        ctx,
        image,
        stats: Stats {
            full: base.is_none(),
            ..Stats::default()
        },
        full_g0: None,
        last_pass_extents: 0,
        view_todo: None,
    };
    if let Some(r) = &full_reason {
        tracing::info!("full pass: {r}");
    }
    let base_gen = base.as_ref().map(|p| p.lock_generation);
    let result = run.drive_any(base_gen, &report).await;
    let session = run.ctx.session.clone();
    drop(run.ctx.session);
    if let Ok(s) = Arc::try_unwrap(session) {
        let _ = tokio::time::timeout(Duration::from_secs(5), s.logout()).await;
    }
    let gf = result?;
    let created_ms = now_ms();
    run.stats.duration_ms = started.elapsed().as_millis() as u64;
    let m = Manifest {
        version: MANIFEST_VERSION,
        id: new_id(created_ms),
        parent: base.map(|p| p.id),
        created_ms,
        lun: id,
        lock_generation: gf,
        extents: run
            .image
            .into_iter()
            .map(|e| e.ok_or_else(|| BackupError::Invalid("an extent was never copied".into())))
            .collect::<Result<_>>()?,
        stats: run.stats,
    };
    repo.commit(&m)?;
    Ok(summary(m, full_reason))
}

fn summary(m: Manifest, full_reason: Option<String>) -> BackupSummary {
    let logical = m.lun.logical_bytes();
    let secs = (m.stats.duration_ms as f64 / 1000.0).max(1e-3);
    BackupSummary {
        id: m.id,
        parent: m.parent,
        full_reason,
        method: m.stats.method,
        fallback_reason: m.stats.fallback.clone(),
        generation: m.lock_generation,
        lock_generation: m.lock_generation,
        logical_bytes: logical,
        read_ratio: m.stats.bytes_read as f64 / (logical.max(1)) as f64,
        throughput_bytes_per_s: m.stats.bytes_read as f64 / secs,
        stats: m.stats,
    }
}

/// Incremental from the newest backup of this LUN when its tracking
/// identity still holds and its generation is one the target handed out;
/// otherwise a full pass, with the reason.
fn choose_base(
    parent: Option<Manifest>,
    id: &LunId,
    open_gen: u64,
) -> (Option<Manifest>, Option<String>) {
    let Some(p) = parent else {
        return (None, Some("no earlier backup of this LUN".into()));
    };
    let why = if p.lun.uuid != id.uuid {
        format!(
            "tracking UUID changed ({} -> {}): tracking was restarted",
            p.lun.uuid, id.uuid
        )
    } else if p.lun != *id {
        "the LUN's capacity, block size or extent size changed".into()
    } else if p.lock_generation >= open_gen {
        format!(
            "the last backup's generation {} is unknown to the target (open generation {open_gen})",
            p.lock_generation
        )
    } else {
        return (Some(p), None);
    };
    (None, Some(why))
}

pub(super) async fn cancellable<T>(
    cancel: &CancellationToken,
    f: impl Future<Output = Result<T>>,
) -> Result<T> {
    tokio::select! {
        r = f => r,
        _ = cancel.cancelled() => Err(BackupError::Interrupted),
    }
}

pub(super) async fn connect(opts: &BackupOptions) -> Result<Arc<Session>> {
    let s = Initiator::connect(&opts.connect).await?;
    // A new session first sees a unit attention (power on / reset): take it.
    let _ = s.test_unit_ready(opts.lun).await;
    Ok(Arc::new(s))
}

/// The LUN's identity from VPD 83h, and its REPORT TRACKING (open
/// generation, whether views are on).
async fn identify(s: &Session, lun: u64) -> Result<(LunId, TrackingReport)> {
    let vpd = s.inquiry_vpd(lun, 0x83).await?;
    let naa = pass::naa_from_vpd83(&vpd).unwrap_or_default();
    let r = s.cbt_report(lun).await?;
    if !r.flags.tracking_on || r.block_len == 0 {
        return Err(BackupError::Invalid(
            "changed-block tracking is off for this LUN".into(),
        ));
    }
    let id = LunId {
        naa,
        uuid: hex::encode(r.uuid),
        capacity_blocks: r.capacity_blocks,
        block_size: r.block_len,
        extent_blocks: r.extent_blocks,
    };
    Ok((id, r))
}

impl Run {
    /// Every pass, the lock, and retries; returns the lock generation.
    pub(super) async fn drive(&mut self, base: Option<u64>) -> Result<u64> {
        let mut since = match base {
            Some(g) => g,
            None => self.retrying(|r| Box::pin(r.full_pass())).await?,
        };
        while !self.converged() {
            let s = since;
            since = self.retrying(move |r| Box::pin(r.converge_pass(s))).await?;
        }
        let s = since;
        self.retrying(move |r| Box::pin(r.locked_pass(s))).await
    }

    fn converged(&self) -> bool {
        if self.stats.passes >= self.opts.max_passes.max(1) {
            return true;
        }
        self.stats.passes > 0 && self.last_pass_extents < self.opts.threshold_extents
    }

    /// Run a step; on a dropped connection reconnect with back-off and run
    /// it again.
    pub(super) async fn retrying<'a, F>(&'a mut self, step: F) -> Result<u64>
    where
        F: for<'b> Fn(&'b mut Run) -> Pin<Box<dyn Future<Output = Result<u64>> + Send + 'b>>,
    {
        let mut attempt = 0u32;
        loop {
            match step(self).await {
                Err(e) if e.connection_lost() && attempt < self.opts.max_reconnects => {
                    attempt += 1;
                    tracing::warn!("connection lost ({e}); reconnecting (attempt {attempt})");
                    self.reconnect(attempt).await?;
                }
                r => return r,
            }
        }
    }

    pub(super) async fn reconnect(&mut self, attempt: u32) -> Result<()> {
        let delay = Duration::from_millis(250u64 << attempt.min(5)).min(Duration::from_secs(5));
        cancellable(&self.opts.cancel, async {
            tokio::time::sleep(delay).await;
            Ok(())
        })
        .await?;
        let s = cancellable(&self.opts.cancel, connect(&self.opts)).await?;
        let (id, _) = cancellable(&self.opts.cancel, identify(&s, self.opts.lun)).await?;
        if id != self.ctx.id {
            return Err(BackupError::UuidChanged);
        }
        self.ctx.session = s;
        self.stats.reconnects += 1;
        Ok(())
    }

    async fn close(&self) -> Result<u64> {
        let c = self.ctx.session.cbt_close(self.ctx.lun).await?;
        if hex::encode(c.uuid) != self.ctx.id.uuid {
            return Err(BackupError::UuidChanged);
        }
        Ok(c.generation)
    }

    /// CLOSE first (G0), then read every extent not yet copied: each read
    /// happens after G0 closed, so changes since G0 cover any it missed.
    async fn full_pass(&mut self) -> Result<u64> {
        let g0 = match self.full_g0 {
            Some(g) => g,
            None => {
                let g = cancellable(&self.opts.cancel, self.close()).await?;
                self.full_g0 = Some(g);
                g
            }
        };
        let todo: Vec<(u64, bool)> = (0..self.ctx.id.extent_count())
            .filter(|&i| self.image[i as usize].is_none())
            .map(|i| (i, false))
            .collect();
        self.copy(&todo, "full").await?;
        Ok(g0)
    }

    async fn converge_pass(&mut self, since: u64) -> Result<u64> {
        let g = cancellable(&self.opts.cancel, self.close()).await?;
        let list = cancellable(&self.opts.cancel, pass::changed_extents(&self.ctx, since)).await?;
        self.copy(&list, &format!("pass {}", self.stats.passes + 1))
            .await?;
        Ok(g)
    }

    async fn copy(&mut self, list: &[(u64, bool)], what: &str) -> Result<()> {
        let ctx = self.ctx.clone();
        let cancel = self.opts.cancel.clone();
        let r = cancellable(&cancel, pass::copy(&ctx, list, &mut self.image, what)).await?;
        self.stats.passes += 1;
        self.stats.extents_copied += r.extents;
        self.stats.bytes_read += r.bytes_read;
        self.last_pass_extents = r.extents;
        Ok(())
    }

    /// ACQUIRE, copy the last changes while renewing the lease, run the
    /// hook, and RELEASE on every way out.
    async fn locked_pass(&mut self, since: u64) -> Result<u64> {
        let (s, lun) = (self.ctx.session.clone(), self.ctx.lun);
        let acquire = async { Ok(s.cbt_acquire(lun, self.opts.lease_ms, 0).await?) };
        let grant = cancellable(&self.opts.cancel, acquire).await?;
        let t0 = Instant::now();
        let r = self.under_lock(grant, since).await;
        let released =
            tokio::time::timeout(self.opts.connect.timeout, s.cbt_release(lun, grant.token)).await;
        self.stats.lock_held_ms += t0.elapsed().as_millis() as u64;
        let r = r?;
        match released {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                let e = BackupError::from(e);
                // The connection is gone, so is the session and the lock.
                if !e.connection_lost() {
                    return Err(e);
                }
            }
            Err(_) => tracing::warn!("RELEASE timed out; the lease will end the lock"),
        }
        self.stats.passes += 1;
        self.stats.extents_copied += r.extents;
        self.stats.bytes_read += r.bytes_read;
        Ok(grant.generation)
    }

    async fn under_lock(&mut self, grant: LockGrant, since: u64) -> Result<pass::PassResult> {
        let lease = if grant.lease_ms == 0 {
            30_000
        } else {
            grant.lease_ms
        };
        let period = Duration::from_millis(u64::from(lease / 3).max(20));
        let Run {
            ctx, image, opts, ..
        } = self;
        let hook = opts.lock_hook.clone();
        let work = async {
            let list = pass::changed_extents(ctx, since).await?;
            let r = pass::copy(ctx, &list, image, "locked").await?;
            if let Some(h) = hook {
                h(LockInfo {
                    token: grant.token,
                    generation: grant.generation,
                })
                .await;
            }
            Ok(r)
        };
        tokio::pin!(work);
        let start = tokio::time::Instant::now() + period;
        let mut tick = tokio::time::interval_at(start, period);
        loop {
            tokio::select! {
                r = &mut work => return r,
                _ = tick.tick() => {
                    ctx.session.cbt_renew(ctx.lun, grant.token, opts.lease_ms).await?;
                }
                _ = opts.cancel.cancelled() => return Err(BackupError::Interrupted),
            }
        }
    }
}
