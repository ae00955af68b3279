//! The per-extent generation store: a lazily grown radix tree of chunks.
//!
//! Why a radix tree of `OnceLock`s rather than a hash map: lookups on the
//! write path are one acquire load per level and never take a lock; memory
//! follows what was written (untouched subtrees are never allocated); and the
//! tree is ordered, so a query walks only existing chunks in LBA order and
//! skips whole subtrees whose maximum generation is not above `since`.
//!
//! Every generation update is a monotonic `fetch_max`: two changes racing on
//! one extent can never make its generation go backwards.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};

/// Extents per chunk (one `u64` bitmap covers the deallocated hints).
pub(crate) const CHUNK_SHIFT: u32 = 6;
pub(crate) const CHUNK_EXTENTS: u64 = 1 << CHUNK_SHIFT;
/// Children per interior node.
const FAN_SHIFT: u32 = 8;
const FAN: usize = 1 << FAN_SHIFT;
/// Extents per write-ahead intent region (1024 = 64 MiB at 64 KiB extents).
pub(crate) const REGION_SHIFT: u32 = 10;
/// Regions per leaf node (a leaf covers FAN chunks).
const LEAF_REGIONS: usize = 1 << (CHUNK_SHIFT + FAN_SHIFT - REGION_SHIFT);

/// 64 extents: about 8.4 bytes per extent when writes are dense.
pub(crate) struct Chunk {
    pub(crate) gens: [AtomicU64; CHUNK_EXTENTS as usize],
    /// Largest generation in `gens`, so queries can skip the chunk.
    pub(crate) max: AtomicU64,
    /// Bit i: extent i has a non-zero generation (set before the first
    /// stamp), so sparse chunks are walked by their set bits only.
    touched: AtomicU64,
    /// Bit i: the latest change to extent i unmapped all of it.
    pub(crate) dealloc: AtomicU64,
    /// Bumped by every data write that touches the chunk; an unmap only
    /// sets its hint bits if no write started meanwhile (see tracker.rs).
    pub(crate) wseq: AtomicU64,
}

impl Chunk {
    fn new() -> Self {
        Chunk {
            gens: std::array::from_fn(|_| AtomicU64::new(0)),
            max: AtomicU64::new(0),
            touched: AtomicU64::new(0),
            dealloc: AtomicU64::new(0),
            wseq: AtomicU64::new(0),
        }
    }

    /// Raise extent `i` (within the chunk) to at least `g`.
    pub(crate) fn raise(&self, i: usize, g: u64) {
        if self.max.load(SeqCst) < g {
            self.max.fetch_max(g, SeqCst);
        }
        let cur = self.gens[i].load(SeqCst);
        if cur < g {
            if cur == 0 {
                self.touched.fetch_or(1 << i, SeqCst);
            }
            self.gens[i].fetch_max(g, SeqCst);
        }
    }
}

enum Kids {
    Inner(Box<[OnceLock<Box<Node>>]>),
    /// Chunks plus, per intent region, the intent epoch it was logged in.
    Leaf(Box<[OnceLock<Box<Chunk>>]>, Box<[AtomicU64]>),
}

struct Node {
    max: AtomicU64,
    /// Bit i (word i / 64): child slot i has been created. Set by the
    /// creating thread before the child is published, so a walk visits the
    /// set bits only instead of probing all FAN slots (a scattered 1 TiB
    /// map has ~16 of 256 chunks per leaf). Costs the write path nothing:
    /// only the thread that creates a child touches it.
    occupied: [AtomicU64; FAN / 64],
    kids: Kids,
}

impl Node {
    fn new(leaf: bool) -> Self {
        let kids = if leaf {
            Kids::Leaf(
                (0..FAN).map(|_| OnceLock::new()).collect(),
                (0..LEAF_REGIONS).map(|_| AtomicU64::new(0)).collect(),
            )
        } else {
            Kids::Inner((0..FAN).map(|_| OnceLock::new()).collect())
        };
        Node {
            max: AtomicU64::new(0),
            occupied: std::array::from_fn(|_| AtomicU64::new(0)),
            kids,
        }
    }

    /// Record that child `idx` is being created (before it is published).
    fn occupy(&self, idx: usize) {
        self.occupied[idx / 64].fetch_or(1 << (idx % 64), SeqCst);
    }

    /// Indices of created children, in increasing order, from `first` on.
    fn occupied_from(&self, first: usize) -> impl Iterator<Item = usize> + '_ {
        (first / 64..FAN / 64).flat_map(move |w| {
            let mut bits = self.occupied[w].load(SeqCst);
            if w == first / 64 {
                bits &= u64::MAX << (first % 64);
            }
            std::iter::from_fn(move || {
                if bits == 0 {
                    return None;
                }
                let i = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                Some(w * 64 + i)
            })
        })
    }

    fn raise(&self, g: u64) {
        if self.max.load(SeqCst) < g {
            self.max.fetch_max(g, SeqCst);
        }
    }
}

/// What a walk reports for one changed extent.
pub(crate) struct ExtentInfo {
    pub(crate) extent: u64,
    pub(crate) generation: u64,
    pub(crate) dealloc: bool,
}

pub(crate) struct ExtentMap {
    root: Node,
    /// Number of node levels; level 0 is the leaf level.
    levels: u32,
}

impl ExtentMap {
    /// A map able to address `max_extents` extents.
    pub(crate) fn new(max_extents: u64) -> Self {
        let mut levels = 1;
        // Capped at 7 levels (2^62 extents) so child shifts never overflow.
        while levels < 7 {
            if (max_extents.saturating_sub(1) >> (CHUNK_SHIFT + FAN_SHIFT * levels)) == 0 {
                break;
            }
            levels += 1;
        }
        ExtentMap {
            root: Node::new(levels == 1),
            levels,
        }
    }

    /// Extents this map can address (grow must stay below it).
    pub(crate) fn reach(&self) -> u64 {
        let bits = CHUNK_SHIFT + FAN_SHIFT * self.levels;
        if bits >= 64 { u64::MAX } else { 1 << bits }
    }

    /// The leaf node holding chunk `ci`, created on the way if needed;
    /// every node on the path is raised to `g` (pass 0 to only look).
    fn leaf(&self, ci: u64, g: u64) -> &Node {
        let mut node = &self.root;
        node.raise(g);
        for level in (1..self.levels).rev() {
            let idx = ((ci >> (FAN_SHIFT * level)) as usize) & (FAN - 1);
            let Kids::Inner(kids) = &node.kids else {
                unreachable!("interior level holds interior nodes")
            };
            let parent = node;
            node = kids[idx].get_or_init(|| {
                parent.occupy(idx);
                Box::new(Node::new(level == 1))
            });
            node.raise(g);
        }
        node
    }

    /// Chunk `ci`, created if missing, with the path raised to `g`.
    pub(crate) fn chunk(&self, ci: u64, g: u64) -> &Chunk {
        let leaf = self.leaf(ci, g);
        let Kids::Leaf(chunks, _) = &leaf.kids else {
            unreachable!("level 0 holds chunks")
        };
        let idx = (ci as usize) & (FAN - 1);
        chunks[idx].get_or_init(|| {
            leaf.occupy(idx);
            Box::new(Chunk::new())
        })
    }

    /// Chunk `ci` if it exists (never allocates chunks).
    pub(crate) fn chunk_if_present(&self, ci: u64) -> Option<&Chunk> {
        let mut node = &self.root;
        for level in (1..self.levels).rev() {
            let idx = ((ci >> (FAN_SHIFT * level)) as usize) & (FAN - 1);
            let Kids::Inner(kids) = &node.kids else {
                return None;
            };
            node = kids[idx].get()?;
        }
        let Kids::Leaf(chunks, _) = &node.kids else {
            return None;
        };
        chunks[(ci as usize) & (FAN - 1)].get().map(|b| &**b)
    }

    /// The intent epoch slot of region `r` (creates the leaf node).
    pub(crate) fn region_epoch(&self, r: u64) -> &AtomicU64 {
        let ci = r << (REGION_SHIFT - CHUNK_SHIFT);
        let Kids::Leaf(_, regions) = &self.leaf(ci, 0).kids else {
            unreachable!("level 0 holds chunks")
        };
        &regions[(r as usize) & (LEAF_REGIONS - 1)]
    }

    /// Raise extents `[first, end)` to generation `g`.
    pub(crate) fn stamp(&self, first: u64, end: u64, g: u64) {
        let mut x = first;
        while x < end {
            let ci = x >> CHUNK_SHIFT;
            let chunk_end = ((ci + 1) << CHUNK_SHIFT).min(end);
            let chunk = self.chunk(ci, g);
            for e in x..chunk_end {
                chunk.raise((e & (CHUNK_EXTENTS - 1)) as usize, g);
            }
            x = chunk_end;
        }
    }

    /// Visit, in increasing order, every extent `>= from` with generation
    /// `> since`. `f` returns false to stop. Skips subtrees by their max.
    pub(crate) fn walk(&self, since: u64, from: u64, f: &mut dyn FnMut(ExtentInfo) -> bool) {
        let top_bits = CHUNK_SHIFT + FAN_SHIFT * (self.levels - 1);
        walk_node(&self.root, 0, top_bits, since, from, f);
    }

    /// Visit every existing chunk in order (for snapshots).
    pub(crate) fn for_each_chunk(&self, f: &mut dyn FnMut(u64, &Chunk)) {
        chunks_node(&self.root, self.levels - 1, 0, f);
    }
}

/// `base` is the first extent the node covers; a child covers `1 << bits`.
fn walk_node(
    node: &Node,
    base: u64,
    child_bits: u32,
    since: u64,
    from: u64,
    f: &mut dyn FnMut(ExtentInfo) -> bool,
) -> bool {
    if node.max.load(SeqCst) <= since {
        return true;
    }
    match &node.kids {
        Kids::Inner(kids) => {
            for i in node.occupied_from(first_slot(base, child_bits, from)) {
                let child_base = base + ((i as u64) << child_bits);
                let Some(kid) = kids[i].get() else { continue };
                let bits = child_bits - FAN_SHIFT;
                if !walk_node(kid, child_base, bits, since, from, f) {
                    return false;
                }
            }
            true
        }
        Kids::Leaf(chunks, _) => {
            for i in node.occupied_from(first_slot(base, CHUNK_SHIFT, from)) {
                let chunk_base = base + ((i as u64) << CHUNK_SHIFT);
                let Some(chunk) = chunks[i].get() else {
                    continue;
                };
                if chunk.max.load(SeqCst) <= since {
                    continue;
                }
                if !walk_chunk(chunk, chunk_base, since, from, f) {
                    return false;
                }
            }
            true
        }
    }
}

/// First child slot of a node at `base` (children of `1 << child_bits`
/// extents) that can hold extents `>= from`; FAN if none can.
fn first_slot(base: u64, child_bits: u32, from: u64) -> usize {
    let slot = from.saturating_sub(base) >> child_bits;
    slot.min(FAN as u64) as usize
}

fn walk_chunk(
    chunk: &Chunk,
    base: u64,
    since: u64,
    from: u64,
    f: &mut dyn FnMut(ExtentInfo) -> bool,
) -> bool {
    let dealloc = chunk.dealloc.load(SeqCst);
    let start = from.saturating_sub(base);
    let mut bits = chunk.touched.load(SeqCst);
    if start >= CHUNK_EXTENTS {
        return true;
    }
    bits &= u64::MAX << start;
    while bits != 0 {
        let i = bits.trailing_zeros() as usize;
        bits &= bits - 1;
        let generation = chunk.gens[i].load(SeqCst);
        if generation > since {
            let info = ExtentInfo {
                extent: base + i as u64,
                generation,
                dealloc: dealloc & (1 << i) != 0,
            };
            if !f(info) {
                return false;
            }
        }
    }
    true
}

fn chunks_node(node: &Node, level: u32, base: u64, f: &mut dyn FnMut(u64, &Chunk)) {
    let child_bits = CHUNK_SHIFT + FAN_SHIFT * level;
    match &node.kids {
        Kids::Inner(kids) => {
            for i in node.occupied_from(0) {
                if let Some(kid) = kids[i].get() {
                    chunks_node(kid, level - 1, base + ((i as u64) << child_bits), f);
                }
            }
        }
        Kids::Leaf(chunks, _) => {
            let first_ci = base >> CHUNK_SHIFT;
            for i in node.occupied_from(0) {
                if let Some(chunk) = chunks[i].get() {
                    f(first_ci + i as u64, chunk);
                }
            }
        }
    }
}

impl ExtentMap {
    /// Generation and deallocated hint of one extent (0, false if it was
    /// never changed). Never allocates.
    pub(crate) fn get(&self, extent: u64) -> (u64, bool) {
        let Some(chunk) = self.chunk_if_present(extent >> CHUNK_SHIFT) else {
            return (0, false);
        };
        let i = (extent & (CHUNK_EXTENTS - 1)) as usize;
        (
            chunk.gens[i].load(SeqCst),
            chunk.dealloc.load(SeqCst) & (1 << i) != 0,
        )
    }
}
