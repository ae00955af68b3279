//! The CBT view LUN: a read-only LU with its source LUN's geometry whose
//! reads return the open view's data (`shared/specs/cbt-scsi.md`, Views).
//!
//! It is an ordinary [`LogicalUnit`] whose backend reads through the
//! tracker's view, so every read path of the device server (READ of every
//! size, VERIFY, the inline/pool choice) works unchanged. What is special
//! is decided in one place each: visibility (only C0h-allowed initiators,
//! `LogicalUnit::visible`), NOT READY without a view ([`not_ready`], called
//! by the server), DATA PROTECT on changes (`read_only`), and the sense of
//! a failed view read ([`unavailable`]).

use std::io;
use std::sync::Arc;

use super::lun::{LogicalUnit, LunIdentity};
use super::sense::{Sense, SenseReason};
use crate::backend::Backend;
use crate::cbt::{Tracker, ViewSource, ViewUnavailable};

/// The source LUN's backend as the view's source of current data.
pub struct BackendSource(pub Arc<dyn Backend>);

impl ViewSource for BackendSource {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.0.read_at(offset, buf)
    }
}

/// Reads the view of `tracker`; refuses every change.
struct ViewBackend {
    tracker: Arc<Tracker>,
    size: u64,
}

impl Backend for ViewBackend {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        crate::backend::check_range(offset, buf.len() as u64, self.size)?;
        match self.tracker.view() {
            Some(v) => v.read(offset, buf),
            None => Err(ViewUnavailable::NoView.into_io()),
        }
    }

    fn write_at(&self, _: u64, _: &[u8], _: bool) -> io::Result<()> {
        crate::backend::check_writable(true)
    }

    fn flush(&self) -> io::Result<()> {
        Ok(())
    }

    fn unmap(&self, _: u64, _: u64) -> io::Result<()> {
        crate::backend::check_writable(true)
    }

    fn write_zeroes(&self, _: u64, _: u64) -> io::Result<()> {
        crate::backend::check_writable(true)
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn describe(&self) -> String {
        "cbt-view".into()
    }
}

/// Attach the view LUN to `source` when its views are on (tracking on and
/// `cbt.view` set). Its identity is the source's, marked as another LU.
pub fn attach(source: &mut LogicalUnit) {
    let (Some(tracker), Some(settings)) = (&source.tracker, &source.cbt.view) else {
        return;
    };
    let backend = Arc::new(ViewBackend {
        tracker: tracker.clone(),
        size: source.backend.size(),
    });
    let mut unit = LogicalUnit::new(backend, source.block_size, view_identity(source), true);
    unit.view_of = Some(tracker.clone());
    // The view is for the CBT initiators the source LUN is mapped for.
    let names = source.cbt.allowed_initiators.iter();
    unit.visible_to = Some(names.filter(|n| source.visible(n)).cloned().collect());
    source.view_unit = Some((settings.lun, Arc::new(unit)));
}

/// A different LU must have different designators: the NAA's last byte is
/// flipped and the serial gets a `V` (kept within 20 bytes).
fn view_identity(source: &LogicalUnit) -> LunIdentity {
    let mut naa = source.identity.naa;
    naa[15] ^= 0x80;
    let mut serial: String = source.identity.serial.chars().take(19).collect();
    serial.push('V');
    LunIdentity { serial, naa }
}

/// Commands that read the medium get NOT READY on a view LUN without a
/// view (spec: TEST UNIT READY, READ, VERIFY, PRE-FETCH, GET LBA STATUS).
pub fn not_ready(lu: &LogicalUnit, cdb: &[u8]) -> Option<Sense> {
    let tracker = lu.view_of.as_ref()?;
    let reads_medium = match cdb.first().copied()? {
        0x00 | 0x08 | 0x28 | 0xa8 | 0x88 | 0x2f | 0xaf | 0x8f | 0x34 | 0x90 => true,
        0x9e => cdb.get(1).is_some_and(|b| b & 0x1f == 0x12),
        _ => false,
    };
    (reads_medium && tracker.view().is_none()).then(|| Sense::new(SenseReason::NotReadyNoView))
}

/// The sense for a read the view LUN could not serve because of the view
/// (none open, or lost); `None` for any other error.
pub fn unavailable(e: &io::Error) -> Option<Sense> {
    Some(match ViewUnavailable::of(e)? {
        ViewUnavailable::Lost => Sense::new(SenseReason::ViewLost),
        ViewUnavailable::NoView => Sense::new(SenseReason::NotReadyNoView),
    })
}
