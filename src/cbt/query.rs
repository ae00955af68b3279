//! GET CHANGED EXTENTS: one page of descriptors, built by walking only the
//! parts of the map whose maximum generation is above `since`.

use std::sync::atomic::Ordering::SeqCst;

use super::map::ExtentInfo;
use super::{CbtError, ChangedPage, Descriptor, Tracker, View};

/// A run of adjacent extents being merged into one descriptor.
struct Run {
    first: u64,
    end: u64,
    dealloc: bool,
    generation: u64,
}

impl Tracker {
    /// Changed extents since `since`, from `start_lba`, at most
    /// `max_descriptors` descriptors (spec: GET CHANGED EXTENTS). Runs are
    /// merged greedily: adjacent extents with the same hint form one
    /// descriptor carrying the largest generation of the run.
    pub fn changed_extents(
        &self,
        since: u64,
        start_lba: u64,
        max_descriptors: usize,
    ) -> Result<ChangedPage, CbtError> {
        if since >= self.open.load(SeqCst) {
            return Err(CbtError::InvalidField("SINCE >= OPEN GENERATION"));
        }
        let capacity = self.capacity_blocks();
        self.page(since, start_lba, capacity, max_descriptors, &|x| Some(x))
    }

    /// GET CHANGED EXTENTS AS OF VIEW: each extent with the generation it
    /// had at the open, within the view's capacity. Every extent whose
    /// generation at the open is `> since` has a current generation
    /// `> since` too (generations only grow), so the walk for `since`
    /// visits a superset; extents changed after the open are replaced by
    /// what the view recorded and dropped if that is not `> since`.
    pub fn view_changed_extents(
        &self,
        view: &View,
        since: u64,
        start_lba: u64,
        max_descriptors: usize,
    ) -> Result<ChangedPage, CbtError> {
        if since >= view.generation {
            return Err(CbtError::InvalidField("SINCE >= VIEW GENERATION"));
        }
        let adjust = |x: ExtentInfo| {
            let (generation, dealloc) = view.at_open(x.extent, (x.generation, x.dealloc));
            (generation > since).then_some(ExtentInfo {
                extent: x.extent,
                generation,
                dealloc,
            })
        };
        self.page(
            since,
            start_lba,
            view.capacity_blocks,
            max_descriptors,
            &adjust,
        )
    }

    fn page(
        &self,
        since: u64,
        start_lba: u64,
        capacity: u64,
        max_descriptors: usize,
        adjust: &dyn Fn(ExtentInfo) -> Option<ExtentInfo>,
    ) -> Result<ChangedPage, CbtError> {
        if start_lba >= capacity {
            return Err(CbtError::InvalidField("STARTING LBA >= CAPACITY"));
        }
        let eb = u64::from(self.extent_blocks());
        let cap_extents = capacity.div_ceil(eb);
        let from = start_lba >> self.extent_shift;
        // NUMBER OF BLOCKS is a u32 on the wire: longer runs are split.
        let max_run = (u64::from(u32::MAX) / eb).max(1);
        // Reserved up front (bounded: the page limit is peer-controlled) so a
        // large page does not pay for repeated growth and copying.
        let mut runs: Vec<Run> = Vec::with_capacity(max_descriptors.min(1 << 16));
        // First extent that did not fit: where the next page starts.
        let mut cut: Option<u64> = None;
        let mut visit = |x: ExtentInfo| {
            if x.extent >= cap_extents {
                return false;
            }
            let Some(x) = adjust(x) else {
                return true;
            };
            if let Some(run) = runs.last_mut()
                && run.end == x.extent
                && run.dealloc == x.dealloc
                && run.end - run.first < max_run
            {
                run.end += 1;
                run.generation = run.generation.max(x.generation);
                return true;
            }
            if runs.len() >= max_descriptors {
                cut = Some(x.extent);
                return false;
            }
            runs.push(Run {
                first: x.extent,
                end: x.extent + 1,
                dealloc: x.dealloc,
                generation: x.generation,
            });
            true
        };
        self.map.walk(since, from, &mut visit);
        // Read after the walk: every generation seen is <= this value.
        let open_generation = self.open.load(SeqCst);
        let next_lba = match cut {
            Some(extent) => (extent * eb).max(start_lba),
            None => capacity,
        };
        let descriptors = runs
            .iter()
            .map(|r| {
                let lba = (r.first * eb).max(start_lba);
                Descriptor {
                    lba,
                    blocks: (r.end * eb).min(capacity) - lba,
                    deallocated: r.dealloc,
                    generation: r.generation,
                }
            })
            .collect();
        Ok(ChangedPage {
            descriptors,
            next_lba,
            complete: next_lba == capacity,
            open_generation,
        })
    }
}
