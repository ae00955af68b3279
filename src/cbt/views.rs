//! A tracker's view slot: OPEN / RENEW / RELEASE / expiry, and the hook on
//! the write path (`Tracker::start`).
//!
//! # Why a view holds exactly the LUN at its open
//!
//! OPEN (holding `phase_lock`, so no close or checkpoint interleaves) marks
//! the slot `OPENING`, then waits until no change is in flight. A change
//! registers, *then* loads the slot state (both SeqCst); if it sees
//! `OPENING` it deregisters, waits for the open to finish and retries. So
//! either the change's load came first — then OPEN's wait sees it
//! registered and waits for it, and it reads `O = Gv` (raised only after
//! the wait) and keeps nothing: its data is part of the view — or it sees
//! `OPENING` and stays out of the drain. When the drain is done OPEN
//! installs the view with `Gv = O`, stores `O = Gv + 1`, then marks the
//! slot `OPEN`: every later change reads a generation `> Gv` and keeps old
//! data before it stamps. On a drain timeout the slot goes back to `NONE`;
//! `O` and the phase were never touched, so no generation was closed.
//!
//! (Why not the phase protocol of `close`: a drain that may time out would
//! leave a change behind in a parity slot that a later phase reuses.)

use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use super::store::ViewStore;
use super::tracker::wait_until;
use super::view::{View, ViewGeometry, ViewParts, ViewSource};
use super::{CbtError, Tracker};

const NONE: u8 = 0;
const OPENING: u8 = 1;
const OPEN: u8 = 2;

#[derive(Default)]
pub(crate) struct ViewSlot {
    state: AtomicU8,
    current: RwLock<Option<Arc<View>>>,
    /// Views lost since the tracker started (metrics).
    pub(crate) lost_total: Arc<AtomicU64>,
}

impl ViewSlot {
    fn get(&self) -> Option<Arc<View>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set(&self, v: Option<Arc<View>>) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = v;
    }
}

/// What OPEN VIEW needs besides the tracker.
pub struct OpenRequest {
    /// The I_T nexus asking.
    pub owner: u64,
    pub lease: Duration,
    pub drain: Duration,
    /// VIEW SPACE LIMIT in bytes.
    pub limit: u64,
    pub block_len: u32,
    pub source: Arc<dyn ViewSource>,
    /// Directory for the view's anonymous store.
    pub store_dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    /// Another nexus holds the view: RESERVATION CONFLICT.
    #[error("another nexus holds the view")]
    Conflict,
    /// OPEN's drain timed out: no view, no generation closed.
    #[error("changes still in flight after the drain timeout")]
    DrainTimeout,
    /// RENEW/RELEASE with a token that is not the current view's.
    #[error("no view with that token")]
    InvalidToken,
    #[error("cannot create the view's store: {0}")]
    Store(std::io::Error),
    #[error(transparent)]
    Cbt(#[from] CbtError),
}

impl Tracker {
    /// The write-path hook, right after registering: true if an OPEN is
    /// draining, in which case the caller must deregister and call
    /// [`wait_view_opened`](Self::wait_view_opened) before retrying.
    pub(crate) fn view_opening(&self) -> bool {
        self.views.state.load(SeqCst) == OPENING
    }

    /// Wait (at most OPEN's drain) until no OPEN is draining.
    pub(crate) fn wait_view_opened(&self) {
        wait_until(None, || self.views.state.load(SeqCst) != OPENING);
    }

    /// The write-path hook, after reading generation `g` and before
    /// stamping: keep the old data of blocks `[lba, lba + blocks)`.
    pub(crate) fn keep_for_view(&self, g: u64, lba: u64, blocks: u64) {
        if self.views.state.load(SeqCst) == NONE {
            return;
        }
        if let Some(v) = self.views.get()
            && g > v.generation
            && !v.lost()
        {
            v.keep(&self.map, lba, blocks);
        }
    }

    /// Would a change to these blocks have old data to copy first?
    pub(crate) fn view_needs_copy(&self, lba: u64, blocks: u64) -> bool {
        self.views.state.load(SeqCst) != NONE
            && self.views.get().is_none_or(|v| !v.all_kept(lba, blocks))
    }

    /// The open view, after ending it if its lease ran out.
    pub fn view(&self) -> Option<Arc<View>> {
        self.expire_view(Instant::now());
        self.views.get()
    }

    /// Views lost since start (metrics).
    pub fn views_lost(&self) -> u64 {
        self.views.lost_total.load(SeqCst)
    }

    /// End the view if its lease ran out; true if one ended.
    pub fn expire_view(&self, now: Instant) -> bool {
        // Every view-LUN read asks: look first, take the write lock only to
        // end one.
        if self.views.get().is_none_or(|v| v.expires() > now) {
            return false;
        }
        let mut cur = self
            .views
            .current
            .write()
            .unwrap_or_else(|e| e.into_inner());
        if cur.as_ref().is_some_and(|v| v.expires() <= now) {
            *cur = None;
            self.views.state.store(NONE, SeqCst);
            return true;
        }
        false
    }

    /// OPEN VIEW (see the module docs). From the nexus that holds the
    /// view already: the same view, lease renewed, nothing closed.
    pub fn open_view(&self, req: OpenRequest) -> Result<Arc<View>, ViewError> {
        let _phase = self.phase_lock.lock().unwrap_or_else(|e| e.into_inner());
        if self.shut.load(SeqCst) {
            return Err(CbtError::ShutDown.into());
        }
        if let Some(v) = self.view() {
            if v.owner != req.owner {
                return Err(ViewError::Conflict);
            }
            v.renew(req.lease);
            return Ok(v);
        }
        let store = ViewStore::anonymous(&req.store_dir).map_err(ViewError::Store)?;
        let g = self.open.load(SeqCst);
        if let Some(durable) = &self.durable {
            durable.ensure_high_water(g + 1).map_err(CbtError::Io)?;
        }
        let views = &self.views;
        views.state.store(OPENING, SeqCst);
        if !wait_until(Some(req.drain), || self.in_flight() == 0) {
            views.state.store(NONE, SeqCst);
            return Err(ViewError::DrainTimeout);
        }
        let view = Arc::new(View::new(ViewParts {
            generation: g,
            token: new_token(),
            owner: req.owner,
            geometry: ViewGeometry {
                block_len: req.block_len,
                capacity_blocks: self.capacity_blocks(),
                extent_shift: self.extent_shift,
            },
            limit: req.limit,
            lease: req.lease,
            source: req.source,
            store,
            lost_total: views.lost_total.clone(),
        }));
        views.set(Some(view.clone()));
        self.open.store(g + 1, SeqCst);
        views.state.store(OPEN, SeqCst);
        Ok(view)
    }

    /// RENEW VIEW: works from any nexus with the right token, lost or not.
    pub fn renew_view(&self, token: u64, lease: Duration) -> Result<Arc<View>, ViewError> {
        match self.view() {
            Some(v) if v.token == token => {
                v.renew(lease);
                Ok(v)
            }
            _ => Err(ViewError::InvalidToken),
        }
    }

    /// RELEASE VIEW: the view ends now; returns its generation.
    pub fn release_view(&self, token: u64) -> Result<u64, ViewError> {
        self.expire_view(Instant::now());
        let mut cur = self
            .views
            .current
            .write()
            .unwrap_or_else(|e| e.into_inner());
        match cur.as_ref() {
            Some(v) if v.token == token => {
                let g = v.generation;
                *cur = None;
                self.views.state.store(NONE, SeqCst);
                Ok(g)
            }
            _ => Err(ViewError::InvalidToken),
        }
    }
}

fn new_token() -> u64 {
    loop {
        let t: u64 = rand::random();
        if t != 0 {
            return t;
        }
    }
}
