//! One copy pass: which extents to read (from GET CHANGED EXTENTS, or all
//! of them), reading runs of consecutive extents with one READ each (up to
//! [`READ_BYTES`] or the LUN's maximum transfer) and several READs in
//! flight, storing each extent as a chunk sliced out of the READ's buffer
//! without a copy, with a progress bar.

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
    /// Consecutive extents read by one READ at most (>= 1).
    pub read_extents: u32,
}

/// Bytes per READ by default: large enough that per-command costs (task
/// set-up, a blocking-pool hop, a writer wake-up) vanish next to the
/// copying and hashing, small enough to keep several in flight in a few
/// MiB. Measured (`BENCH_READ_SWEEP=2 cargo bench --bench backup_repo`,
/// docs/backup.md): 64 KiB is clearly the slowest; from 128 KiB to 1 MiB
/// the medians of repeated sweeps trade places within the noise of a
/// loaded 2-core machine, and 512 KiB sits in the middle of that range.
pub const READ_BYTES: u32 = 512 << 10;

/// Extents per READ for this LUN: `max_bytes`, lowered to the MAXIMUM
/// TRANSFER LENGTH of its Block Limits page (0 there means no limit);
/// one extent if the page is missing or says less.
pub async fn read_extents(session: &Session, lun: u64, id: &LunId, max_bytes: u32) -> u32 {
    let extent = u64::from(id.extent_blocks.max(1)) * u64::from(id.block_size.max(1));
    let mut max = u64::from(max_bytes);
    if let Ok(d) = session.inquiry_vpd(lun, 0xb0).await
        && let Some(b) = d.get(8..12)
    {
        let blocks = u64::from(u32::from_be_bytes(b.try_into().expect("4 bytes")));
        if blocks != 0 {
            max = max.min(blocks * u64::from(id.block_size));
        }
    }
    (max / extent).clamp(1, u64::from(u32::MAX)) as u32
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

/// Copy the listed extents into `image`, up to `ctx.parallel` READs in
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
    let mut set: JoinSet<Result<ReadDone>> = JoinSet::new();
    let parallel = ctx.parallel.max(1);
    for run in runs(list, ctx.read_extents) {
        let (first, count) = match run {
            Run::Read(first, count) => (first, count),
            Run::Zero(i) => {
                let slot = image
                    .get_mut(i as usize)
                    .ok_or_else(|| BackupError::Invalid(format!("extent {i} beyond the LUN")))?;
                *slot = Some(ExtentRef::Zero);
                res.extents += 1;
                pb.inc(ctx.id.extent_bytes(i) as u64);
                continue;
            }
        };
        if first + count > image.len() as u64 {
            return Err(BackupError::Invalid(format!(
                "extent {} beyond the LUN",
                first + count - 1
            )));
        }
        while set.len() >= parallel {
            finish(&mut set, image, &mut res, &pb).await?;
        }
        set.spawn(read_run(ctx.clone(), first, count));
    }
    while !set.is_empty() {
        finish(&mut set, image, &mut res, &pb).await?;
    }
    pb.finish_and_clear();
    Ok(res)
}

/// One step of a pass: a deallocated extent, or `count` consecutive
/// extents from `first` read with one command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Run {
    Zero(u64),
    Read(u64, u64),
}

/// `list` (ascending or not) as runs of at most `max` consecutive
/// extents to read, and the deallocated ones on their own.
fn runs(list: &[(u64, bool)], max: u32) -> Vec<Run> {
    let max = u64::from(max.max(1));
    let mut out = Vec::new();
    let mut open: Option<(u64, u64)> = None;
    for &(i, dealloc) in list {
        if dealloc {
            out.extend(open.take().map(|(f, n)| Run::Read(f, n)));
            out.push(Run::Zero(i));
            continue;
        }
        open = match open {
            Some((f, n)) if f + n == i && n < max => Some((f, n + 1)),
            Some((f, n)) => {
                out.push(Run::Read(f, n));
                Some((i, 1))
            }
            None => Some((i, 1)),
        };
    }
    out.extend(open.map(|(f, n)| Run::Read(f, n)));
    out
}

/// Extents `first..` and their refs, and the bytes read.
type ReadDone = (u64, Vec<ExtentRef>, usize);

async fn finish(
    set: &mut JoinSet<Result<ReadDone>>,
    image: &mut [Option<ExtentRef>],
    res: &mut PassResult,
    pb: &ProgressBar,
) -> Result<()> {
    let Some(joined) = set.join_next().await else {
        return Ok(());
    };
    let (first, refs, n) =
        joined.map_err(|e| BackupError::Invalid(format!("copy task failed: {e}")))??;
    for (k, r) in refs.into_iter().enumerate() {
        if let Some(slot) = image.get_mut(first as usize + k) {
            *slot = Some(r);
            res.extents += 1;
        }
    }
    res.bytes_read += n as u64;
    pb.inc(n as u64);
    Ok(())
}

/// Read extents `first..first + count` with one READ and store each,
/// sliced out of the one buffer; the hashing runs on the blocking pool
/// so it does not stall the session's reader.
async fn read_run(ctx: PassCtx, first: u64, count: u64) -> Result<ReadDone> {
    let (lba, _) = ctx.id.extent_range(first);
    let sizes: Vec<usize> = (first..first + count)
        .map(|i| ctx.id.extent_bytes(i))
        .collect();
    let blocks = (sizes.iter().sum::<usize>() / ctx.id.block_size.max(1) as usize) as u32;
    let data = bytes::Bytes::from(
        ctx.session
            .read16(ctx.lun, lba, blocks, ctx.id.block_size)
            .await?,
    );
    let n = data.len();
    let mut at = 0;
    let chunks = sizes
        .iter()
        .map(|&len| {
            at += len;
            data.slice(at - len..at)
        })
        .collect();
    let repo = ctx.repo.clone();
    let refs = tokio::task::spawn_blocking(move || repo.put_chunks(chunks))
        .await
        .map_err(|e| BackupError::Invalid(format!("store task failed: {e}")))??;
    Ok((first, refs, n))
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

#[cfg(test)]
mod run_tests {
    use super::{Run, runs};

    #[test]
    fn runs_join_consecutive_extents_up_to_the_limit() {
        let list = [
            (0, false),
            (1, false),
            (2, false),
            (3, true),
            (4, false),
            (6, false),
            (7, false),
        ];
        assert_eq!(
            runs(&list, 2),
            vec![
                Run::Read(0, 2),
                Run::Read(2, 1),
                Run::Zero(3),
                Run::Read(4, 1),
                Run::Read(6, 2)
            ]
        );
        assert_eq!(runs(&list[..3], 16), vec![Run::Read(0, 3)]);
        assert_eq!(
            runs(&[(5, false), (4, false)], 16),
            vec![Run::Read(5, 1), Run::Read(4, 1)]
        );
        assert!(runs(&[], 16).is_empty());
    }
}
