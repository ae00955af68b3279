//! What must hold after a power cut at time `T`, checked over iSCSI on
//! the restarted target against the client's log (never against the
//! trace: the promises are what the initiator was told).
//!
//! * Data: every block holds the latest write promised durable by `T`
//!   (FUA acknowledged, or acknowledged before a SYNCHRONIZE CACHE that
//!   was) or a write sent after it; never written blocks hold zeros or
//!   writes sent by `T`; nothing else.
//! * CBT guarantee 3: if the UUID was shown by `T` it is unchanged; the
//!   open generation is above every generation handed out; for every
//!   CLOSE (and OPEN VIEW) acknowledged by `T`, and for 0, GET CHANGED
//!   EXTENTS since it lists every extent holding anything but what it
//!   held at that close; and nothing is listed in a region no write ever
//!   touched (a forced full pass).
//! * APTPL registration and reservation acknowledged by `T` are there;
//!   the LUN identity (VPD 80h and 83h) shown by `T` is unchanged; no view
//!   survives a restart.

use std::collections::{BTreeMap, BTreeSet};

use gentgt::initiator::Session;

use super::workload::{
    BS, Cmd, EXTENT_BLOCKS, Kind, LUN_BLOCKS, Log, PR_KEY, REGION_BLOCKS, block_seq,
};

/// Violations of one state: kind -> (count, first example).
pub type Found = BTreeMap<&'static str, (usize, String)>;

fn note(found: &mut Found, kind: &'static str, what: String) {
    let e = found.entry(kind).or_insert((0, what));
    e.0 += 1;
}

/// The per-block view of the log at cut time `t`.
struct Book<'a> {
    log: &'a Log,
    t: f64,
    /// Writes covering each written block, in order (indexes into cmds).
    by_block: BTreeMap<u64, Vec<usize>>,
}

impl<'a> Book<'a> {
    fn new(log: &'a Log, t: f64) -> Book<'a> {
        let mut by_block: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
        for (i, c) in log.cmds.iter().enumerate() {
            if let Kind::Write { lba, blocks, .. } = c.kind {
                for b in lba..lba + u64::from(blocks) {
                    by_block.entry(b).or_default().push(i);
                }
            }
        }
        Book { log, t, by_block }
    }

    fn seq(&self, i: usize) -> u32 {
        match self.log.cmds[i].kind {
            Kind::Write { seq, .. } => seq,
            _ => 0,
        }
    }

    /// Acknowledged by `t` and made durable by FUA or a later SYNC.
    fn promised(&self, i: usize) -> bool {
        let c = &self.log.cmds[i];
        let Some(acked) = c.acked.filter(|&a| a < self.t) else {
            return false;
        };
        matches!(c.kind, Kind::Write { fua: true, .. })
            || self
                .log
                .cmds
                .iter()
                .any(|s| s.kind == Kind::Sync && s.sent > acked && s.acked_before(self.t))
    }

    /// The write sequence numbers block `b` may hold (0: zeros).
    fn allowed(&self, b: u64) -> BTreeSet<u32> {
        let writes = self.by_block.get(&b).map_or(&[][..], Vec::as_slice);
        let last_promised = writes.iter().rposition(|&i| self.promised(i));
        let mut set = BTreeSet::new();
        let later = match last_promised {
            Some(p) => {
                set.insert(self.seq(writes[p]));
                &writes[p + 1..]
            }
            None => {
                set.insert(0);
                writes
            }
        };
        for &i in later {
            if self.log.cmds[i].sent < self.t {
                set.insert(self.seq(i));
            }
        }
        set
    }

    /// What block `b` held when the command sent at `at` started (the
    /// script is sequential: every earlier write was acknowledged).
    fn held_at(&self, b: u64, at: f64) -> u32 {
        let writes = self.by_block.get(&b).map_or(&[][..], Vec::as_slice);
        writes
            .iter()
            .rev()
            .find(|&&i| self.log.cmds[i].acked.is_some_and(|a| a < at))
            .map_or(0, |&i| self.seq(i))
    }

    fn shown(&self, pred: impl Fn(&Cmd) -> bool) -> bool {
        self.log
            .cmds
            .iter()
            .any(|c| pred(c) && c.acked_before(self.t))
    }
}

/// Read the whole LUN: per block, the write it holds (`None`: garbage).
async fn read_all(s: &Session) -> Result<Vec<Option<u32>>, String> {
    const STEP: u32 = 256;
    let mut out = Vec::with_capacity(LUN_BLOCKS as usize);
    let mut lba = 0;
    while lba < LUN_BLOCKS {
        let d = s
            .read16(0, lba, STEP, BS)
            .await
            .map_err(|e| format!("READ {lba}: {e}"))?;
        for (i, b) in d.chunks(BS as usize).enumerate() {
            out.push(block_seq(b, lba + i as u64));
        }
        lba += u64::from(STEP);
    }
    Ok(out)
}

async fn listed_since(s: &Session, g: u64) -> Result<BTreeSet<u64>, String> {
    let list = s
        .cbt_all_changes(0, g, 0)
        .await
        .map_err(|e| format!("GET CHANGED EXTENTS since {g}: {e}"))?;
    Ok(list
        .iter()
        .flat_map(|d| d.lba / EXTENT_BLOCKS..(d.lba + u64::from(d.blocks)).div_ceil(EXTENT_BLOCKS))
        .collect())
}

/// Check the restarted target behind `s` for a cut at time `t`.
pub async fn check(s: &Session, log: &Log, t: f64, found: &mut Found) -> Result<(), String> {
    let book = Book::new(log, t);
    if book.shown(|c| c.kind == Kind::Identity) {
        let serial = s.inquiry_vpd(0, 0x80).await.map_err(|e| e.to_string())?;
        let naa = s.inquiry_vpd(0, 0x83).await.map_err(|e| e.to_string())?;
        if serial != log.serial_page || naa != log.naa_page {
            note(found, "identity changed", format!("VPD 80h {serial:02x?}"));
        }
    }
    let data = read_all(s).await?;
    for (b, got) in data.iter().enumerate() {
        let allowed = book.allowed(b as u64);
        match got {
            None => note(found, "data: garbage block", format!("LBA {b}")),
            Some(v) if !allowed.contains(v) => note(
                found,
                "data: acknowledged write lost",
                format!("LBA {b} holds write {v}, allowed {allowed:?}"),
            ),
            Some(_) => {}
        }
    }
    check_cbt(s, &book, &data, found).await?;
    check_pr(s, &book, found).await
}

async fn check_cbt(
    s: &Session,
    book: &Book<'_>,
    data: &[Option<u32>],
    found: &mut Found,
) -> Result<(), String> {
    let r = s.cbt_report(0).await.map_err(|e| e.to_string())?;
    let shown = book.shown(|c| matches!(c.kind, Kind::Report | Kind::Close { .. }));
    if r.uuid != book.log.uuid {
        if shown {
            note(
                found,
                "cbt: uuid changed (forced full backup)",
                format!("{:02x?}", r.uuid),
            );
        }
        return Ok(()); // a UUID nobody saw: appliances start afresh anyway
    }
    if r.views.as_ref().is_some_and(|v| v.generation != 0) {
        note(
            found,
            "cbt: view survived restart",
            format!("{:?}", r.views),
        );
    }
    let closes: Vec<(u64, f64)> = book
        .log
        .cmds
        .iter()
        .filter(|c| c.acked_before(book.t))
        .filter_map(|c| match c.kind {
            Kind::Close { g } => Some((g, c.sent)),
            _ => None,
        })
        .collect();
    if let Some(&(g, _)) = closes.iter().max_by_key(|c| c.0)
        && r.open_generation <= g
    {
        note(
            found,
            "cbt: open generation not above a closed one",
            format!("open {} <= {g}", r.open_generation),
        );
    }
    let written_regions: BTreeSet<u64> = book
        .log
        .cmds
        .iter()
        .filter(|c| c.sent < book.t)
        .filter_map(|c| match c.kind {
            Kind::Write { lba, blocks, .. } => Some([
                lba / REGION_BLOCKS,
                (lba + u64::from(blocks) - 1) / REGION_BLOCKS,
            ]),
            _ => None,
        })
        .flatten()
        .collect();
    for (g, at) in std::iter::once((0, 0.0)).chain(closes) {
        let listed = listed_since(s, g).await?;
        for (b, got) in data.iter().enumerate() {
            let b = b as u64;
            if *got != Some(book.held_at(b, at)) && !listed.contains(&(b / EXTENT_BLOCKS)) {
                note(
                    found,
                    "cbt: changed extent not listed (under-report)",
                    format!(
                        "since {g}: LBA {b} holds {got:?}, extent {} unlisted",
                        b / EXTENT_BLOCKS
                    ),
                );
            }
        }
        if let Some(x) = listed
            .iter()
            .find(|&&x| !written_regions.contains(&(x * EXTENT_BLOCKS / REGION_BLOCKS)))
        {
            note(
                found,
                "cbt: unwritten region listed (forced full pass)",
                format!("since {g}: extent {x}"),
            );
        }
    }
    Ok(())
}

async fn check_pr(s: &Session, book: &Book<'_>, found: &mut Found) -> Result<(), String> {
    if book.shown(|c| c.kind == Kind::PrRegister) {
        let keys = s.pr_read_keys(0).await.map_err(|e| e.to_string())?;
        if !keys.contains(&PR_KEY) {
            note(found, "aptpl: registration lost", format!("keys {keys:x?}"));
        }
    }
    if book.shown(|c| c.kind == Kind::PrReserve) {
        let res = s.pr_read_reservation(0).await.map_err(|e| e.to_string())?;
        if res.is_none_or(|r| r.key != PR_KEY || r.kind != 1) {
            note(found, "aptpl: reservation lost", format!("{res:?}"));
        }
    }
    Ok(())
}
