//! Writing a backup's image back, fast: to a file or block device here,
//! onto a LUN over iSCSI in [`super::restore_lun`]. Both cut the image
//! into runs of extents of one kind (data or zeros), keep several runs in
//! flight (chunks fetched, decrypted, decompressed and checked by
//! workers, written at their offsets), skip or deallocate zero runs, and
//! can resume: each extent already present is read and compared with the
//! backup's chunk id (the repository's own, keyed when encrypted), and
//! only those that differ are written.
//!
//! Everything that can be known to be wrong (no such backup, a chunk not
//! indexed, a destination smaller than the image) fails before the first
//! write. A failure midway names the byte (or LBA) from which the
//! destination is not known to be restored.

use super::manifest::{ExtentRef, Manifest};
use super::merge;
use super::progress::Progress;
use super::repo::Repo;
use super::{BackupError, Result};
use crate::backend::overlay::OverlayImage;
use serde::Serialize;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Runs in flight by default. Why 32 one-MiB WRITEs: at 16 a LUN
/// restore waited on round trips (0.80 of a plain write on 2 cores, 0.84
/// at 32; docs/restore.md). The target's per-session write budget
/// (16 MiB by default) holds the R2Ts of the rest until earlier writes
/// finish, so its memory stays bounded while the wire stays busy.
pub const DEFAULT_PARALLEL: usize = 32;

/// How a restore runs.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// Runs in flight: commands for a LUN, worker threads for a block
    /// device; a regular file takes at most one thread per core (see
    /// [`file_threads`]).
    pub parallel: usize,
    /// Largest data run (bytes per write; several extents per WRITE).
    pub max_write_bytes: usize,
    /// Print a progress line on stderr.
    pub progress: bool,
    /// Read what is there and write only extents that differ (files
    /// resume by themselves when their `.restoring` marker is present).
    pub resume: bool,
    /// Merge a writable instant-restore LUN's overlay back: its extents
    /// replace the backup's (merge.rs).
    pub overlay: Option<PathBuf>,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        RestoreOptions {
            parallel: DEFAULT_PARALLEL,
            max_write_bytes: 1 << 20,
            progress: false,
            resume: false,
            overlay: None,
        }
    }
}

/// What a restore did, in bytes of the image.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RestoreReport {
    pub backup: String,
    pub logical_bytes: u64,
    /// Data written.
    pub written_bytes: u64,
    /// Zero extents left as holes, deallocated or zeroed.
    pub zero_bytes: u64,
    /// Extents found already right (resume) and not written.
    pub skipped_bytes: u64,
    pub resumed: bool,
    /// Extents taken from a merged overlay instead of the backup.
    pub overlay_extents: u64,
    pub seconds: f64,
}

impl RestoreReport {
    pub(super) fn add(&mut self, c: Counts) {
        self.written_bytes += c.written;
        self.zero_bytes += c.zeroed;
        self.skipped_bytes += c.skipped;
    }
}

/// Bytes of one run by what happened to them.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Counts {
    pub written: u64,
    pub zeroed: u64,
    pub skipped: u64,
}

impl Counts {
    pub fn total(&self) -> u64 {
        self.written + self.zeroed + self.skipped
    }

    pub fn plus(self, o: Counts) -> Counts {
        Counts {
            written: self.written + o.written,
            zeroed: self.zeroed + o.zeroed,
            skipped: self.skipped + o.skipped,
        }
    }
}

/// Consecutive extents of one kind: `count` extents from `first`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Run {
    pub first: u64,
    pub count: u64,
    pub zero: bool,
}

/// The manifest of `id`, with every chunk it names indexed.
pub(super) fn prepare(repo: &Repo, id: &str) -> Result<Manifest> {
    let m = repo.load(id)?;
    repo.check_indexed(&m)?;
    Ok(m)
}

/// Runs over `extents` (ascending): a data run holds at most `max_bytes`,
/// a zero run at most `max_zero_blocks` blocks.
pub(super) fn runs(
    m: &Manifest,
    extents: impl IntoIterator<Item = u64>,
    max_bytes: usize,
    max_zero_blocks: u64,
) -> Vec<Run> {
    let mut out: Vec<Run> = Vec::new();
    let eb = u64::from(m.lun.extent_blocks);
    for i in extents {
        let zero = m.extents[i as usize] == ExtentRef::Zero;
        if let Some(r) = out.last_mut()
            && r.zero == zero
            && r.first + r.count == i
        {
            let fits = if zero {
                (r.count + 1) * eb <= max_zero_blocks
            } else {
                (r.count + 1) as usize * m.lun.extent_bytes(i) <= max_bytes
            };
            if fits {
                r.count += 1;
                continue;
            }
        }
        out.push(Run {
            first: i,
            count: 1,
            zero,
        });
    }
    out
}

impl Manifest {
    /// Byte offset and length of `count` extents from `first`.
    pub(super) fn byte_range(&self, first: u64, count: u64) -> (u64, usize) {
        let bs = u64::from(self.lun.block_size);
        let (lba, _) = self.lun.extent_range(first);
        let len = (first..first + count)
            .map(|i| self.lun.extent_bytes(i))
            .sum();
        (lba * bs, len)
    }
}

/// True when `data` is what extent `i` of the backup holds.
pub(super) fn extent_matches(repo: &Repo, m: &Manifest, i: u64, data: &[u8]) -> bool {
    match &m.extents[i as usize] {
        ExtentRef::Zero => data.iter().all(|&b| b == 0),
        ExtentRef::Blake3(h) => repo.chunk_id(data).to_hex().as_str() == h,
    }
}

/// The sub-runs of `run` whose extents differ from `current` (the
/// destination's bytes of the run).
pub(super) fn differing(repo: &Repo, m: &Manifest, run: Run, current: &[u8]) -> Vec<Run> {
    let mut out: Vec<Run> = Vec::new();
    let mut at = 0;
    for i in run.first..run.first + run.count {
        let len = m.lun.extent_bytes(i);
        let same = current
            .get(at..at + len)
            .is_some_and(|d| extent_matches(repo, m, i, d));
        at += len;
        if same {
            continue;
        }
        match out.last_mut() {
            Some(r) if r.first + r.count == i => r.count += 1,
            _ => out.push(Run {
                first: i,
                count: 1,
                zero: run.zero,
            }),
        }
    }
    out
}

/// Which runs completed, to name what a failure leaves behind.
pub(super) struct Done(Vec<AtomicBool>);

impl Done {
    pub fn new(n: usize) -> Done {
        Done((0..n).map(|_| AtomicBool::new(false)).collect())
    }

    pub fn mark(&self, k: usize) {
        self.0[k].store(true, Ordering::Relaxed);
    }

    /// The first run not completed.
    pub fn first_missing(&self) -> Option<usize> {
        self.0.iter().position(|d| !d.load(Ordering::Relaxed))
    }
}

/// `PATH.restoring`: present while a restore to PATH is incomplete.
pub fn marker_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".restoring");
    PathBuf::from(s)
}

/// Restore to a file (sparse: zero extents are holes) or a block device.
/// A file is marked incomplete by `PATH.restoring` until done; with the
/// marker present (an interrupted restore) or `o.resume`, extents already
/// right are kept. Returns the bytes of data written.
pub fn restore_to_file(repo: &Repo, id: &str, path: &Path) -> Result<u64> {
    Ok(restore_to_path(repo, id, path, &RestoreOptions::default())?.written_bytes)
}

/// [`restore_to_file`] with options and the full report.
pub fn restore_to_path(
    repo: &Repo,
    id: &str,
    path: &Path,
    o: &RestoreOptions,
) -> Result<RestoreReport> {
    let m = prepare(repo, id)?;
    let ov = o
        .overlay
        .as_deref()
        .map(|p| merge::open(repo, &m, p))
        .transpose()?;
    let started = std::time::Instant::now();
    let dest = Dest::open(path, &m, o.resume)?;
    let runs = runs(
        &m,
        merge::from_backup(ov.as_ref(), &m),
        o.max_write_bytes,
        u64::MAX,
    );
    let mut report = RestoreReport {
        backup: m.id.clone(),
        logical_bytes: m.lun.logical_bytes(),
        resumed: dest.check,
        overlay_extents: ov.as_ref().map_or(0, |o| o.extents()),
        ..Default::default()
    };
    let progress = Progress::new(o.progress, m.lun.logical_bytes(), "restore");
    let done = Done::new(runs.len());
    let r = run_workers(
        repo,
        &m,
        &dest,
        &runs,
        dest.workers(o.parallel),
        &progress,
        &done,
    );
    let counts = r
        .and_then(|c| match &ov {
            Some(ov) => dest.merge(ov, &m, &progress).map(|more| c.plus(more)),
            None => Ok(c),
        })
        .and_then(|c| dest.finish().map(|()| c));
    drop(progress);
    match counts {
        Ok(c) => report.add(c),
        Err(e) => {
            // The overlay's extents are written last: from the first of
            // them nothing is known either.
            let first_overlay = ov
                .as_ref()
                .and_then(|ov| merge::from_overlay(ov, &m).first().copied());
            let from = done
                .first_missing()
                .map(|k| runs[k].first)
                .into_iter()
                .chain(first_overlay)
                .min()
                .map_or(0, |i| m.byte_range(i, 0).0);
            return Err(BackupError::Invalid(format!(
                "restore of backup {id} to {} failed: {e}; bytes {from} to {} are not known to be restored (the rest is); run the same command again to resume{}",
                path.display(),
                m.lun.logical_bytes(),
                if dest.marker.is_some() {
                    " (the .restoring marker stays until it completes)"
                } else {
                    " with --resume"
                }
            )));
        }
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// The destination file and how to treat what it holds.
struct Dest {
    file: File,
    path: PathBuf,
    /// Read before writing, keep what is right.
    check: bool,
    /// The file is new and sparse: zero runs need nothing.
    fresh: bool,
    marker: Option<PathBuf>,
}

impl Dest {
    fn open(path: &Path, m: &Manifest, resume: bool) -> Result<Dest> {
        let size = m.lun.logical_bytes();
        let io = BackupError::io(path);
        let meta = std::fs::metadata(path).ok();
        if meta
            .as_ref()
            .is_some_and(|md| md.file_type().is_block_device())
        {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .map_err(io)?;
            let have = device_size(&file).map_err(BackupError::io(path))?;
            if have < size {
                return Err(BackupError::Invalid(format!(
                    "{} holds {have} bytes; backup {} needs {size}: nothing written",
                    path.display(),
                    m.id
                )));
            }
            return Ok(Dest {
                file,
                path: path.into(),
                check: resume,
                fresh: false,
                marker: None,
            });
        }
        let marker = marker_path(path);
        let check = resume || (marker.exists() && meta.is_some());
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(!check)
            .open(path)
            .map_err(io)?;
        std::fs::write(&marker, format!("{}\n", m.id)).map_err(BackupError::io(&marker))?;
        file.set_len(size).map_err(BackupError::io(path))?;
        Ok(Dest {
            file,
            path: path.into(),
            check,
            fresh: !check,
            marker: Some(marker),
        })
    }

    /// Worker threads: `parallel` for a block device (its queue wants
    /// depth), [`file_threads`] for a regular file (the one with a
    /// `.restoring` marker).
    fn workers(&self, parallel: usize) -> usize {
        match self.marker {
            Some(_) => file_threads(parallel),
            None => parallel,
        }
    }

    /// Everything durable, then the marker removed.
    fn finish(&self) -> Result<()> {
        self.file.sync_all().map_err(BackupError::io(&self.path))?;
        if let Some(mk) = &self.marker {
            std::fs::remove_file(mk).map_err(BackupError::io(mk))?;
        }
        Ok(())
    }

    /// The overlay's extents on top (after every run from the backup).
    fn merge(&self, ov: &OverlayImage, m: &Manifest, progress: &Progress) -> Result<Counts> {
        let zero = |off, len| zero_range(&self.file, off, len);
        let c = merge::apply_to_file(ov, m, &self.file, zero, self.fresh)
            .map_err(BackupError::io(&self.path))?;
        progress.add(c.total());
        Ok(c)
    }

    /// One run; `buf` is the worker's buffer, reused run after run.
    fn run(&self, repo: &Repo, m: &Manifest, run: Run, buf: &mut Vec<u8>) -> Result<Counts> {
        let (off, len) = m.byte_range(run.first, run.count);
        let mut c = Counts::default();
        let todo = if self.check {
            let mut cur = vec![0u8; len];
            read_at_most(&self.file, &mut cur, off).map_err(BackupError::io(&self.path))?;
            differing(repo, m, run, &cur)
        } else {
            vec![run]
        };
        for r in todo {
            let (o, l) = m.byte_range(r.first, r.count);
            if r.zero {
                if !self.fresh {
                    zero_range(&self.file, o, l as u64).map_err(BackupError::io(&self.path))?;
                }
                c.zeroed += l as u64;
            } else {
                // In as few calls and copies as the repository allows.
                super::fetch::fetch_run(repo, m, r.first, r.count, buf)?;
                self.file
                    .write_all_at(buf, o)
                    .map_err(BackupError::io(&self.path))?;
                c.written += l as u64;
            }
        }
        c.skipped = len as u64 - c.written - c.zeroed;
        Ok(c)
    }
}

/// Worker threads for a regular file. Why not `parallel`: buffered
/// writes to one file take its inode lock in turn and the work is
/// CPU-bound (read the pack, hash, copy into the page cache), so threads
/// beyond the cores only contend: on 2 cores 16 threads restored at 0.76
/// to 0.84 of a plain write, 2 to 4 at 0.84 to 0.90 (docs/restore.md).
fn file_threads(parallel: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    parallel.clamp(1, cores.max(2))
}

/// `parallel` threads take runs in order until done or one fails.
fn run_workers(
    repo: &Repo,
    m: &Manifest,
    dest: &Dest,
    runs: &[Run],
    parallel: usize,
    progress: &Progress,
    done: &Done,
) -> Result<Counts> {
    let next = AtomicUsize::new(0);
    let failed: Mutex<Option<BackupError>> = Mutex::new(None);
    let total = Mutex::new(Counts::default());
    std::thread::scope(|s| {
        for _ in 0..parallel.max(1) {
            s.spawn(|| {
                let mut buf = Vec::new();
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    if k >= runs.len() || failed.lock().is_ok_and(|f| f.is_some()) {
                        return;
                    }
                    match dest.run(repo, m, runs[k], &mut buf) {
                        Ok(c) => {
                            done.mark(k);
                            progress.add(c.total());
                            let mut t = total.lock().unwrap_or_else(|e| e.into_inner());
                            t.written += c.written;
                            t.zeroed += c.zeroed;
                            t.skipped += c.skipped;
                        }
                        Err(e) => {
                            let mut f = failed.lock().unwrap_or_else(|e| e.into_inner());
                            f.get_or_insert(e);
                            return;
                        }
                    }
                }
            });
        }
    });
    match failed.into_inner().unwrap_or_else(|e| e.into_inner()) {
        Some(e) => Err(e),
        None => Ok(total.into_inner().unwrap_or_else(|e| e.into_inner())),
    }
}

/// Read up to `buf.len()` bytes at `off`; past the end reads as zeros.
fn read_at_most(f: &File, buf: &mut [u8], off: u64) -> std::io::Result<()> {
    let mut at = 0;
    while at < buf.len() {
        match f.read_at(&mut buf[at..], off + at as u64) {
            Ok(0) => break,
            Ok(n) => at += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf[at..].fill(0);
    Ok(())
}

/// Make `[off, off + len)` read as zeros: punch a hole (files, and block
/// devices that support it), else zero the range, else write zeros.
fn zero_range(f: &File, off: u64, len: u64) -> std::io::Result<()> {
    for mode in [
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
        libc::FALLOC_FL_ZERO_RANGE,
    ] {
        // SAFETY: fallocate(2) on an open descriptor; no memory involved.
        let r = unsafe { libc::fallocate(f.as_raw_fd(), mode, off as i64, len as i64) };
        if r == 0 {
            return Ok(());
        }
    }
    let zeros = vec![0u8; len.min(1 << 20) as usize];
    let mut at = 0;
    while at < len {
        let n = (len - at).min(zeros.len() as u64) as usize;
        f.write_all_at(&zeros[..n], off + at)?;
        at += n as u64;
    }
    Ok(())
}

/// Size of a block device (seek to its end).
fn device_size(f: &File) -> std::io::Result<u64> {
    use std::io::Seek;
    let mut f = f;
    f.seek(std::io::SeekFrom::End(0))
}
