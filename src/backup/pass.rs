//! One copy pass: which extents to read (from GET CHANGED EXTENTS, or all
//! of them), reading them with several commands in flight, storing each as
//! a chunk, with a progress bar.

use super::manifest::{ExtentRef, LunId};
use super::repo::Repo;
use super::{BackupError, Result};
use crate::initiator::Session;
use crate::initiator::cbt::ExtentDescriptor;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::task::JoinSet;

/// What a pass needs besides the image being built.
#[derive(Clone)]
pub struct PassCtx {
    pub session: Arc<Session>,
    pub lun: u64,
    pub repo: Arc<Repo>,
    pub id: LunId,
    pub parallel: usize,
    pub progress: bool,
}

/// The outcome of one pass.
#[derive(Debug, Default, Clone, Copy)]
pub struct PassResult {
    pub extents: u64,
    pub bytes_read: u64,
}

/// Descriptors per GET CHANGED EXTENTS page.
const PAGE_DESCRIPTORS: u32 = 4096;

/// Every extent changed since `since`, as (index, deallocated), paging to
/// the end of the LUN. A page from another tracking UUID ends the run:
/// its generations mean nothing against ours.
pub async fn changed_extents(ctx: &PassCtx, since: u64) -> Result<Vec<(u64, bool)>> {
    changed_extents_with(ctx, since, None).await
}

/// [`changed_extents`] AS OF VIEW for the open view of generation `view`:
/// what changed between `since` and the open. A generation above the
/// view's would mean the target mixed in later changes: refused.
pub async fn changed_extents_as_of_view(
    ctx: &PassCtx,
    since: u64,
    view: u64,
) -> Result<Vec<(u64, bool)>> {
    changed_extents_with(ctx, since, Some(view)).await
}

async fn changed_extents_with(
    ctx: &PassCtx,
    since: u64,
    view: Option<u64>,
) -> Result<Vec<(u64, bool)>> {
    let mut out = BTreeMap::new();
    let mut at = 0u64;
    loop {
        let page = ctx
            .session
            .cbt_changes_as_of(ctx.lun, since, at, PAGE_DESCRIPTORS, view.is_some())
            .await?;
        if hex::encode(page.uuid) != ctx.id.uuid {
            return Err(BackupError::UuidChanged);
        }
        for d in &page.descriptors {
            if let Some(gv) = view
                && d.generation > gv
            {
                return Err(BackupError::Invalid(format!(
                    "GET CHANGED EXTENTS AS OF VIEW: generation {} above the view's {gv}",
                    d.generation
                )));
            }
            add_descriptor(&mut out, &ctx.id, d);
        }
        if page.complete || page.next_lba >= ctx.id.capacity_blocks {
            return Ok(out.into_iter().collect());
        }
        if page.next_lba <= at {
            return Err(BackupError::Invalid(format!(
                "GET CHANGED EXTENTS: NEXT LBA {} does not progress",
                page.next_lba
            )));
        }
        at = page.next_lba;
    }
}

/// The extents a descriptor touches. An extent is deallocated only if
/// every descriptor covering it says so (a partial descriptor at a page
/// start may cover it twice).
fn add_descriptor(out: &mut BTreeMap<u64, bool>, id: &LunId, d: &ExtentDescriptor) {
    let eb = u64::from(id.extent_blocks);
    let first = d.lba / eb;
    let end = d
        .lba
        .saturating_add(u64::from(d.blocks))
        .div_ceil(eb)
        .min(id.extent_count());
    for i in first..end {
        let e = out.entry(i).or_insert(d.deallocated);
        *e &= d.deallocated;
    }
}

/// A bar for `bytes` bytes, hidden when quiet or not on a terminal.
pub fn bar(progress: bool, bytes: u64, what: &str) -> ProgressBar {
    if !progress {
        return ProgressBar::with_draw_target(Some(bytes), ProgressDrawTarget::hidden());
    }
    let b = ProgressBar::new(bytes);
    let style = ProgressStyle::with_template(
        "{msg:>12} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    b.set_style(style);
    b.set_message(what.to_string());
    b
}

/// Copy the listed extents into `image`, up to `ctx.parallel` reads in
/// flight. Deallocated extents become zero markers without a read.
/// On error the extents copied so far stay in `image`: the caller retries
/// the pass against the same base generation, so they are never trusted
/// beyond what that generation promises.
pub async fn copy(
    ctx: &PassCtx,
    list: &[(u64, bool)],
    image: &mut [Option<ExtentRef>],
    what: &str,
) -> Result<PassResult> {
    let total: u64 = list
        .iter()
        .map(|&(i, _)| ctx.id.extent_bytes(i) as u64)
        .sum();
    let pb = bar(ctx.progress, total, what);
    let mut res = PassResult::default();
    let mut set: JoinSet<Result<(u64, ExtentRef, usize)>> = JoinSet::new();
    let parallel = ctx.parallel.max(1);
    for &(i, dealloc) in list {
        let slot = image
            .get_mut(i as usize)
            .ok_or_else(|| BackupError::Invalid(format!("extent {i} beyond the LUN")))?;
        if dealloc {
            *slot = Some(ExtentRef::Zero);
            res.extents += 1;
            pb.inc(ctx.id.extent_bytes(i) as u64);
            continue;
        }
        while set.len() >= parallel {
            finish(&mut set, image, &mut res, &pb).await?;
        }
        set.spawn(read_one(ctx.clone(), i));
    }
    while !set.is_empty() {
        finish(&mut set, image, &mut res, &pb).await?;
    }
    pb.finish_and_clear();
    Ok(res)
}

async fn finish(
    set: &mut JoinSet<Result<(u64, ExtentRef, usize)>>,
    image: &mut [Option<ExtentRef>],
    res: &mut PassResult,
    pb: &ProgressBar,
) -> Result<()> {
    let Some(joined) = set.join_next().await else {
        return Ok(());
    };
    let (i, r, n) =
        joined.map_err(|e| BackupError::Invalid(format!("copy task failed: {e}")))??;
    if let Some(slot) = image.get_mut(i as usize) {
        *slot = Some(r);
    }
    res.extents += 1;
    res.bytes_read += n as u64;
    pb.inc(n as u64);
    Ok(())
}

/// Read extent `i` and store it; the hashing and file writes run on the
/// blocking pool so they do not stall the session's reader.
async fn read_one(ctx: PassCtx, i: u64) -> Result<(u64, ExtentRef, usize)> {
    let (lba, blocks) = ctx.id.extent_range(i);
    let data = ctx
        .session
        .read16(ctx.lun, lba, blocks, ctx.id.block_size)
        .await?;
    let n = data.len();
    let repo = ctx.repo.clone();
    let r = tokio::task::spawn_blocking(move || repo.put_extent(&data))
        .await
        .map_err(|e| BackupError::Invalid(format!("store task failed: {e}")))??;
    Ok((i, r, n))
}

/// The NAA designator of the logical unit from VPD page 83h, hex.
pub fn naa_from_vpd83(d: &[u8]) -> Option<String> {
    let len = usize::from(u16::from_be_bytes([*d.get(2)?, *d.get(3)?]));
    let body = d.get(4..4 + len.min(d.len().saturating_sub(4)))?;
    let mut at = 0;
    while at + 4 <= body.len() {
        let (assoc, kind) = ((body[at + 1] >> 4) & 3, body[at + 1] & 0xf);
        let n = usize::from(body[at + 3]);
        let des = body.get(at + 4..at + 4 + n)?;
        if assoc == 0 && kind == 3 {
            return Some(hex::encode(des));
        }
        at += 4 + n;
    }
    None
}
