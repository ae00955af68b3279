//! The version-2 backup: one pass over a point-in-time view
//! (`shared/specs/cbt-scsi.md`, "With views"):
//!
//! ```text
//! OPEN VIEW (Gv, VIEW LUN)
//! copy every extent listed by GET CHANGED EXTENTS(SINCE = parent, AS OF VIEW)
//!     (a full backup: every extent), reading it from the VIEW LUN
//! RENEW VIEW (proof that the view lived through the copy); RELEASE VIEW
//! store (uuid, Gv)
//! ```
//!
//! Writers are never held. When the view ends early (lost, expired, the
//! target restarted, another appliance holds one) the run releases it and
//! falls back to the write-lock loop of [`super::run`], keeping what the
//! view gave: every extent copied from it equals the LUN at Gv, so the
//! loop resumes with `since = Gv` after reading the extents the view pass
//! had left from the live LUN (see [`Run::fall_back`]).

use super::manifest::Method;
use super::pass::{self, PassResult};
use super::run::{Run, cancellable, connect};
use super::{BackupError, Result};
use crate::initiator::cbt::{CbtClientError, TrackingReport, VIEW_LOST_SENSE, ViewGrant};
use crate::initiator::{InitiatorError, Session};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// `--method`: what the operator asked for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MethodChoice {
    /// A view where the target offers one, else the lock loop.
    #[default]
    Auto,
    /// A view or an error: never hold a writer.
    View,
    /// The converge-then-lock loop even where views exist.
    Lock,
}

/// Where the run is around OPEN VIEW, for [`ViewHook`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ViewPhase {
    /// Just before OPEN VIEW is sent (a test pauses its writers, waits for
    /// their writes in flight and reads the LUN: the view must equal it).
    BeforeOpen,
    /// OPEN VIEW succeeded.
    Opened {
        token: u64,
        generation: u64,
        view_lun: u16,
    },
    /// The view's list is known (`extents` to copy) and its slots marked;
    /// the copy from the view LUN starts after this returns. (A test can
    /// make the view be lost here to drive the fallback that keeps them.
    /// No renewal runs while a hook is awaited: stay well inside the lease.)
    Listed { extents: u64 },
    /// OPEN VIEW gave no view (the run falls back or fails).
    NotOpened,
}

/// Awaited at each [`ViewPhase`], like `LockHook`.
pub type ViewHook =
    Arc<dyn Fn(ViewPhase) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// What the view pass has to copy: every (extent, deallocated) of the
/// list; the image slots of those not yet copied are `None`.
pub(super) struct ViewTodo {
    pub(super) generation: u64,
    pub(super) list: Vec<(u64, bool)>,
}

/// The method to use for `choice` on a LUN that reported `r`, and why not
/// a view when a view was wanted but the lock loop is used.
pub(super) fn pick(choice: MethodChoice, r: &TrackingReport) -> Result<(Method, Option<String>)> {
    let no_view = match (r.views_supported(), r.version) {
        (true, _) => None,
        (false, 1) => Some("the target speaks CBT contract version 1 (no views)"),
        (false, _) => Some("views are off for this LUN"),
    };
    match (choice, no_view) {
        (MethodChoice::Lock, _) => Ok((Method::Lock, None)),
        (_, None) => Ok((Method::View, None)),
        (MethodChoice::View, Some(why)) => {
            Err(BackupError::Invalid(format!("--method view: {why}")))
        }
        (MethodChoice::Auto, Some(why)) => Ok((Method::Lock, Some(why.into()))),
    }
}

/// The sense of a failed command, wherever it sits in the error.
fn sense(e: &BackupError) -> Option<(u8, u8, u8)> {
    match e {
        BackupError::Initiator(i) | BackupError::Cbt(CbtClientError::Initiator(i)) => {
            i.sense_code()
        }
        BackupError::Cbt(c) => c.sense_code(),
        _ => None,
    }
}

/// Why the view is gone, if `e` says it is. Every one of these means the
/// view LUN can no longer be trusted to read the LUN at Gv.
fn view_end_reason(e: &BackupError) -> Option<&'static str> {
    Some(match sense(e)? {
        VIEW_LOST_SENSE => "the view was lost: keeping its data would exceed the LUN's view space",
        (0x02, 0x04, _) => "the view LUN is not ready: the view ended (lease or target restart)",
        (0x05, 0x24, 0x00) => "the target no longer knows the view (its lease ran out?)",
        (0x05, 0x25, 0x00) => "the view LUN does not exist for this initiator",
        _ => return None,
    })
}

/// Turn an error that means "the view ended" into `ViewGone`.
fn gone(e: BackupError) -> BackupError {
    match view_end_reason(&e) {
        Some(why) => BackupError::ViewGone(why.into()),
        None => e,
    }
}

fn reservation_conflict(e: &BackupError) -> bool {
    matches!(
        e,
        BackupError::Cbt(CbtClientError::Initiator(InitiatorError::ScsiCheck {
            status: 0x18,
            ..
        }))
    )
}

/// Renew at about a third of the granted lease (0 is not a lease a live
/// view can have: assume a short one).
fn renew_period(granted_ms: u32) -> Duration {
    let lease = if granted_ms == 0 { 30_000 } else { granted_ms };
    Duration::from_millis(u64::from(lease / 3).max(20))
}

/// RELEASE VIEW if the run is dropped while the view is open (the caller
/// gave up on the whole future): the lease would end it too, but holding
/// view space for that long is a cost on the target.
struct ReleaseOnDrop(Option<(Arc<Session>, u64, u64)>);

impl ReleaseOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        if let Some((s, lun, token)) = self.0.take()
            && let Ok(h) = tokio::runtime::Handle::try_current()
        {
            h.spawn(async move {
                let _ = s.cbt_release_view(lun, token).await;
            });
        }
    }
}

impl Run {
    /// Pick the method, run it, and fall back from a view that ended.
    pub(super) async fn drive_any(
        &mut self,
        base: Option<u64>,
        report: &TrackingReport,
    ) -> Result<u64> {
        let (method, why) = pick(self.opts.method, report)?;
        if let Some(w) = &why {
            tracing::info!("backup without a view: {w}");
        }
        self.stats.method = method;
        self.stats.fallback = why;
        if method == Method::Lock {
            return self.drive(base).await;
        }
        match self.view_run(base).await {
            Err(BackupError::ViewGone(why)) if self.opts.method == MethodChoice::Auto => {
                tracing::warn!("{why}; falling back to the write-lock loop");
                self.stats.method = Method::Lock;
                self.stats.fallback = Some(why);
                self.fall_back(base).await
            }
            r => r,
        }
    }

    /// The lock loop after a view ended. With the view's list known, every
    /// image slot either equals the LUN at Gv (copied from the view, or not
    /// changed between the parent and Gv) or is `None`; reading the `None`
    /// ones from the live LUN after Gv closed makes every slot equal the LUN
    /// at some moment after Gv, which is what the loop needs of a pass
    /// that returns Gv (the full pass's code does exactly that). Without
    /// the list nothing was touched: start from the parent.
    async fn fall_back(&mut self, base: Option<u64>) -> Result<u64> {
        match self.view_todo.take() {
            Some(todo) => {
                self.full_g0 = Some(todo.generation);
                self.drive(None).await
            }
            None => self.drive(base).await,
        }
    }

    async fn hook(&self, p: ViewPhase) {
        if let Some(h) = self.opts.view_hook.clone() {
            h(p).await;
        }
    }

    /// OPEN, copy (retried over reconnects: the token outlives sessions),
    /// RELEASE on every way out.
    async fn view_run(&mut self, base: Option<u64>) -> Result<u64> {
        self.hook(ViewPhase::BeforeOpen).await;
        let grant = match self.open_view().await {
            Ok(g) => g,
            Err(e) => {
                self.hook(ViewPhase::NotOpened).await;
                return Err(e);
            }
        };
        let guard = ReleaseOnDrop(Some((self.ctx.session.clone(), self.ctx.lun, grant.token)));
        self.hook(ViewPhase::Opened {
            token: grant.token,
            generation: grant.generation,
            view_lun: grant.view_lun,
        })
        .await;
        let copied = self
            .retrying(move |r| Box::pin(r.view_pass(grant, base)))
            .await;
        guard.disarm();
        self.release_view(grant).await;
        copied
    }

    /// OPEN VIEW, reconnecting if the connection drops. A view held by
    /// another nexus (which is what a retried OPEN meets if the first one
    /// did open) cannot be used: `ViewGone`, so the run falls back.
    async fn open_view(&mut self) -> Result<ViewGrant> {
        let mut attempt = 0;
        loop {
            let (s, lun, lease) = (
                self.ctx.session.clone(),
                self.ctx.lun,
                self.opts.view_lease_ms,
            );
            let open = async move { Ok(s.cbt_open_view(lun, lease, 0).await?) };
            match cancellable(&self.opts.cancel, open).await {
                Err(e) if reservation_conflict(&e) => {
                    return Err(BackupError::ViewGone(
                        "another session holds this LUN's view (another appliance, or an \
                         earlier run whose lease has not run out)"
                            .into(),
                    ));
                }
                Err(e) if e.connection_lost() && attempt < self.opts.max_reconnects => {
                    attempt += 1;
                    tracing::warn!("connection lost at OPEN VIEW ({e}); reconnecting");
                    self.reconnect(attempt).await?;
                }
                r => return r,
            }
        }
    }

    /// List (once), copy what is left from the view LUN, then prove the
    /// view outlived the copy. Safe to run again after a reconnect.
    async fn view_pass(&mut self, g: ViewGrant, base: Option<u64>) -> Result<u64> {
        take_unit_attentions(&self.ctx.session, u64::from(g.view_lun)).await;
        if self.view_todo.is_none() {
            let list = self.view_list(g, base).await.map_err(gone)?;
            let extents = list.len() as u64;
            self.start_todo(g.generation, list)?;
            self.hook(ViewPhase::Listed { extents }).await;
        }
        let todo: Vec<(u64, bool)> = self
            .view_todo
            .as_ref()
            .map(|t| t.list.clone())
            .unwrap_or_default()
            .into_iter()
            .filter(|&(i, _)| self.image[i as usize].is_none())
            .collect();
        let r = match self.copy_renewing(g, &todo).await {
            Ok(r) => r,
            Err(e) => {
                // What a failed copy did read still counts (and is kept).
                let r = self.copied_of(&todo);
                self.stats.extents_copied += r.extents;
                self.stats.bytes_read += r.bytes_read;
                return Err(gone(e));
            }
        };
        self.stats.passes = self.stats.passes.max(1);
        self.stats.extents_copied += r.extents;
        self.stats.bytes_read += r.bytes_read;
        // A renew that works shows the view never ended: had its lease run
        // out, the token would be unknown (and the view LUN could since
        // have read someone else's view).
        let (s, lun) = (self.ctx.session.clone(), self.ctx.lun);
        let lease = self.opts.view_lease_ms;
        let renew = async { Ok(s.cbt_renew_view(lun, g.token, lease).await?) };
        let now = cancellable(&self.opts.cancel, renew).await.map_err(gone)?;
        if now.generation != g.generation {
            return Err(BackupError::ViewGone(format!(
                "RENEW VIEW names generation {}, the view opened as {}",
                now.generation, g.generation
            )));
        }
        Ok(g.generation)
    }

    /// Every extent for a full backup, else the changes since the parent
    /// as the view holds them.
    async fn view_list(&self, g: ViewGrant, base: Option<u64>) -> Result<Vec<(u64, bool)>> {
        let Some(since) = base else {
            return Ok((0..self.ctx.id.extent_count())
                .map(|i| (i, false))
                .collect());
        };
        let list = pass::changed_extents_as_of_view(&self.ctx, since, g.generation);
        cancellable(&self.opts.cancel, list).await
    }

    /// Record the list and mark its extents "to copy" in one step, so a
    /// fallback always sees both or neither.
    fn start_todo(&mut self, generation: u64, list: Vec<(u64, bool)>) -> Result<()> {
        mark_todo(&mut self.image, &list)?;
        self.view_todo = Some(ViewTodo { generation, list });
        Ok(())
    }

    /// The extents of `todo` that are in the image now, and the bytes
    /// read for them (deallocated ones take no read).
    fn copied_of(&self, todo: &[(u64, bool)]) -> PassResult {
        let mut r = PassResult::default();
        for &(i, dealloc) in todo {
            if self.image[i as usize].is_some() {
                r.extents += 1;
                if !dealloc {
                    r.bytes_read += self.ctx.id.extent_bytes(i) as u64;
                }
            }
        }
        r
    }

    /// Copy `todo` from the view LUN, renewing the lease meanwhile.
    async fn copy_renewing(&mut self, g: ViewGrant, todo: &[(u64, bool)]) -> Result<PassResult> {
        let mut from_view = self.ctx.clone();
        from_view.lun = u64::from(g.view_lun);
        let period = renew_period(g.lease_ms);
        let Run {
            ctx, image, opts, ..
        } = self;
        let work = pass::copy(&from_view, todo, image, "view");
        tokio::pin!(work);
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        loop {
            tokio::select! {
                r = &mut work => return r,
                _ = tick.tick() => {
                    ctx.session.cbt_renew_view(ctx.lun, g.token, opts.view_lease_ms).await?;
                }
                _ = opts.cancel.cancelled() => return Err(BackupError::Interrupted),
            }
        }
    }

    /// Best effort, bounded; on a dead connection once more over a new
    /// one. A view left behind only costs view space until its lease ends.
    async fn release_view(&self, g: ViewGrant) {
        let t = self.opts.connect.timeout;
        let (lun, token) = (self.ctx.lun, g.token);
        let first = tokio::time::timeout(t, self.ctx.session.cbt_release_view(lun, token)).await;
        let retry = match first {
            Ok(Ok(_)) => return,
            Ok(Err(e)) => BackupError::from(e).connection_lost(),
            Err(_) => true,
        };
        let again = async {
            let s = connect(&self.opts).await?;
            Ok::<_, BackupError>(s.cbt_release_view(lun, token).await?)
        };
        if !retry || !matches!(tokio::time::timeout(t, again).await, Ok(Ok(_))) {
            tracing::warn!(
                "RELEASE VIEW failed; the view ends when its lease ({} ms) runs out",
                g.lease_ms
            );
        }
    }
}

/// The view LUN is a new LU to this session: its unit attentions (power
/// on, LUN inventory changed...) would fail the first READs. TEST UNIT
/// READY takes one per call; anything but UNIT ATTENTION ends the loop.
async fn take_unit_attentions(s: &Session, lun: u64) {
    for _ in 0..4 {
        match s.test_unit_ready(lun).await {
            Err(e) if e.sense_code().is_some_and(|(k, _, _)| k == 0x06) => continue,
            _ => return,
        }
    }
}

/// Set the image slots of `list` to `None` ("copy from the view").
fn mark_todo(image: &mut [Option<super::ExtentRef>], list: &[(u64, bool)]) -> Result<()> {
    for &(i, _) in list {
        let slot = image
            .get_mut(i as usize)
            .ok_or_else(|| BackupError::Invalid(format!("extent {i} beyond the LUN")))?;
        *slot = None;
    }
    Ok(())
}

#[cfg(test)]
#[path = "view_tests.rs"]
mod tests;
