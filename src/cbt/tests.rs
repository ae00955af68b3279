//! Unit tests of the tracker's building blocks.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::map::{self, ExtentMap};
use super::*;

fn write(t: &Tracker, lba: u64, blocks: u64) {
    drop(t.begin_change(lba, blocks, ChangeKind::Write).unwrap());
}

fn unmap(t: &Tracker, lba: u64, blocks: u64) {
    drop(t.begin_change(lba, blocks, ChangeKind::Unmap).unwrap());
}

fn all(t: &Tracker, since: u64) -> Vec<Descriptor> {
    t.changed_extents(since, 0, usize::MAX).unwrap().descriptors
}

fn d(lba: u64, blocks: u64, deallocated: bool, generation: u64) -> Descriptor {
    Descriptor {
        lba,
        blocks,
        deallocated,
        generation,
    }
}

#[test]
fn map_levels_cover_reach_and_walk_in_order() {
    let map = ExtentMap::new(1 << 33);
    assert!(map.reach() >= 1 << 33);
    for x in [5u64, 1 << 32, 64, 63, (1 << 20) + 7] {
        map.stamp(x, x + 1, x % 7 + 1);
    }
    let mut seen = Vec::new();
    map.walk(0, 64, &mut |i| {
        seen.push((i.extent, i.generation));
        true
    });
    assert_eq!(
        seen,
        vec![
            (64, 2),
            ((1 << 20) + 7, ((1 << 20) + 7) % 7 + 1),
            (1 << 32, (1u64 << 32) % 7 + 1)
        ]
    );
}

/// The walk visits only created children (occupancy bits): every `from`,
/// including ones inside, before and after occupied slots at every level,
/// must see exactly the stamped extents at or above it, in order.
#[test]
fn walk_from_any_start_matches_a_reference_across_levels() {
    let map = ExtentMap::new(1 << 30);
    let mut want = std::collections::BTreeMap::new();
    let mut x: u64 = 12345;
    for g in 1..=300u64 {
        // A cheap LCG: scattered over the whole reach, some clustered.
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let e = if g % 3 == 0 {
            (x >> 40) % 4096
        } else {
            (x >> 34) % (1 << 30)
        };
        map.stamp(e, e + 1, g);
        want.insert(e, g);
    }
    let mut froms: Vec<u64> = vec![0, 1, 63, 64, 1 << 14, (1 << 22) + 1, (1 << 30) - 1];
    froms.extend(want.keys().flat_map(|&e| [e.saturating_sub(1), e, e + 1]));
    for from in froms {
        for since in [0, 150] {
            let mut seen = Vec::new();
            map.walk(since, from, &mut |i| {
                seen.push((i.extent, i.generation));
                true
            });
            let expect: Vec<(u64, u64)> = want
                .range(from..)
                .filter(|&(_, &g)| g > since)
                .map(|(&e, &g)| (e, g))
                .collect();
            assert_eq!(seen, expect, "from {from} since {since}");
        }
    }
    let mut chunks = Vec::new();
    map.for_each_chunk(&mut |ci, _| chunks.push(ci));
    let expect: Vec<u64> = want.keys().map(|e| e >> map::CHUNK_SHIFT).collect();
    let mut expect_dedup = expect.clone();
    expect_dedup.dedup();
    assert_eq!(chunks, expect_dedup);
}

#[test]
fn writes_merge_and_clip_to_start_and_capacity() {
    // 8-block extents, capacity 100: the last extent (96..100) is short.
    let t = Tracker::volatile(100, 8).unwrap();
    write(&t, 3, 2); // extent 0
    write(&t, 8, 1); // extent 1, adjacent: merged
    write(&t, 99, 1); // extent 12, short
    assert_eq!(all(&t, 0), vec![d(0, 16, false, 1), d(96, 4, false, 1)]);
    let page = t.changed_extents(0, 5, 10).unwrap();
    assert_eq!(
        page.descriptors,
        vec![d(5, 11, false, 1), d(96, 4, false, 1)]
    );
    assert!(page.complete);
    assert_eq!(page.next_lba, 100);
    assert_eq!(page.open_generation, 1);
}

#[test]
fn paging_progresses_and_stops_on_extent_boundaries() {
    let t = Tracker::volatile(100, 8).unwrap();
    write(&t, 0, 1);
    write(&t, 40, 1);
    write(&t, 80, 1);
    let p1 = t.changed_extents(0, 1, 1).unwrap();
    assert_eq!(p1.descriptors, vec![d(1, 7, false, 1)]);
    assert_eq!((p1.next_lba, p1.complete), (40, false));
    let p2 = t.changed_extents(0, p1.next_lba, 1).unwrap();
    assert_eq!(p2.descriptors, vec![d(40, 8, false, 1)]);
    assert_eq!(p2.next_lba, 80);
    let p3 = t.changed_extents(0, p2.next_lba, 1).unwrap();
    assert_eq!(p3.descriptors, vec![d(80, 8, false, 1)]);
    assert!(p3.complete);
}

#[test]
fn close_separates_generations_and_errors_are_invalid_fields() {
    let t = Tracker::volatile(64, 8).unwrap();
    write(&t, 0, 8);
    assert_eq!(t.close().unwrap(), 1);
    assert!(all(&t, 1).is_empty(), "nothing changed since G=1");
    write(&t, 16, 8);
    assert_eq!(all(&t, 1), vec![d(16, 8, false, 2)]);
    assert_eq!(all(&t, 0), vec![d(0, 8, false, 1), d(16, 8, false, 2)]);
    assert!(matches!(
        t.changed_extents(2, 0, 1),
        Err(CbtError::InvalidField(_))
    ));
    assert!(matches!(
        t.changed_extents(0, 64, 1),
        Err(CbtError::InvalidField(_))
    ));
    assert!(matches!(
        t.begin_change(60, 5, ChangeKind::Write),
        Err(CbtError::OutOfRange { .. })
    ));
}

#[test]
fn dealloc_hint_only_for_whole_extents_and_cleared_by_writes() {
    let t = Tracker::volatile(100, 8).unwrap();
    unmap(&t, 4, 30); // extents 0 and 4 partial, 1..=3 whole
    assert_eq!(
        all(&t, 0),
        vec![d(0, 8, false, 1), d(8, 24, true, 1), d(32, 8, false, 1)]
    );
    write(&t, 17, 1); // extent 2 gets data again
    assert_eq!(
        all(&t, 0),
        vec![
            d(0, 8, false, 1),
            d(8, 8, true, 1),
            d(16, 8, false, 1),
            d(24, 8, true, 1),
            d(32, 8, false, 1)
        ]
    );
    unmap(&t, 96, 4); // the short last extent counts as whole
    assert_eq!(all(&t, 0).last(), Some(&d(96, 4, true, 1)));
}

#[test]
fn unmap_racing_with_a_write_does_not_claim_deallocated() {
    let t = Tracker::volatile(64, 8).unwrap();
    let u = t.begin_change(0, 8, ChangeKind::Unmap).unwrap();
    let w = t.begin_change(0, 8, ChangeKind::Write).unwrap();
    drop(u); // the write may land after the unmap: no hint
    drop(w);
    assert_eq!(all(&t, 0), vec![d(0, 8, false, 1)]);
}

#[test]
fn close_waits_for_changes_stamped_with_the_closed_generation() {
    let t = Tracker::volatile(64, 8).unwrap();
    let guard = t.begin_change(0, 8, ChangeKind::Write).unwrap();
    let closed = AtomicBool::new(false);
    std::thread::scope(|s| {
        let h = s.spawn(|| {
            let g = t.close().unwrap();
            closed.store(true, Ordering::SeqCst);
            g
        });
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            !closed.load(Ordering::SeqCst),
            "close returned while a G write was in flight"
        );
        assert!(!t.wait_idle(Duration::from_millis(5)));
        drop(guard);
        assert_eq!(h.join().unwrap(), 1);
    });
    assert!(t.wait_idle(Duration::from_millis(5)));
    // A change beginning now is stamped with the new generation.
    write(&t, 8, 1);
    assert_eq!(all(&t, 1), vec![d(8, 8, false, 2)]);
}

#[test]
fn grow_marks_new_extents_changed() {
    let t = Tracker::volatile(20, 8).unwrap();
    let g = t.close().unwrap();
    t.grow(40).unwrap();
    // Extent 2 (16..24) gained blocks; 3 and 4 are new.
    assert_eq!(all(&t, g), vec![d(16, 24, false, 2)]);
    assert!(t.grow(30).is_err());
    assert_eq!(t.status().capacity_blocks, 40);
}

#[test]
fn status_flags() {
    let t = Tracker::volatile(20, 8).unwrap();
    let s = t.status();
    assert_eq!(s.flags(), 1);
    assert_eq!(
        (s.open_generation, s.recovery_generation, s.extent_blocks),
        (1, 0, 8)
    );
    assert_eq!(default_extent_blocks(512), 128);
    assert_eq!(default_extent_blocks(4096), 16);
}

#[test]
fn shutdown_refuses_new_changes_and_closes() {
    let t = Tracker::volatile(20, 8).unwrap();
    t.shutdown().unwrap();
    assert!(matches!(
        t.begin_change(0, 1, ChangeKind::Write),
        Err(CbtError::ShutDown)
    ));
    assert!(matches!(t.close(), Err(CbtError::ShutDown)));
    assert_eq!(t.in_flight(), 0);
}

/// 1 TiB of 512-byte blocks, 64 KiB extents (16M extents), 16k scattered
/// changed extents: the query walks only what changed. Prints the time.
#[test]
fn query_on_a_terabyte_lun_follows_what_changed() {
    let capacity = (1u64 << 40) / 512;
    let t = Tracker::volatile(capacity, 128).unwrap();
    let extents = capacity / 128;
    let mut x = 12345u64;
    for _ in 0..16_384 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        write(&t, ((x >> 20) % extents) * 128, 1);
    }
    let g = t.close().unwrap();
    write(&t, 0, 1);
    let start = Instant::now();
    let page = t.changed_extents(0, 0, usize::MAX).unwrap();
    let full = start.elapsed();
    let start = Instant::now();
    let since = t.changed_extents(g, 0, usize::MAX).unwrap();
    let incremental = start.elapsed();
    assert!(page.complete && page.descriptors.len() > 16_000);
    assert_eq!(since.descriptors, vec![d(0, 128, false, 2)]);
    println!(
        "1 TiB LUN: since=0 query {full:?} ({} descriptors), since=G query {incremental:?}",
        page.descriptors.len()
    );
}

#[test]
fn tracker_is_shareable_and_owned_guards_move_across_threads() {
    fn shareable<T: Send + Sync>() {}
    shareable::<Tracker>();
    let t = std::sync::Arc::new(Tracker::volatile(64, 8).unwrap());
    let guard = t.begin_change_owned(0, 8, ChangeKind::Write).unwrap();
    let closer = {
        let t = t.clone();
        std::thread::spawn(move || t.close().unwrap())
    };
    std::thread::spawn(move || drop(guard)).join().unwrap();
    assert_eq!(closer.join().unwrap(), 1);
    assert_eq!(t.in_flight(), 0);
}

#[test]
fn dense_writes_cost_at_most_16_bytes_per_extent() {
    let per_extent = std::mem::size_of::<map::Chunk>() as u64 / map::CHUNK_EXTENTS;
    assert!(per_extent <= 16, "{per_extent} bytes per extent");
}

#[test]
fn needs_checkpoint_after_many_logged_regions() {
    let dir = tempfile::tempdir().unwrap();
    let regions = 4096u64;
    let cap = regions << map::REGION_SHIFT;
    let t = Tracker::open(dir.path(), cap, 1).unwrap();
    write(&t, 0, cap / 2);
    assert!(!t.needs_checkpoint());
    write(&t, cap / 2, cap / 2); // one group commit for 2048 more regions
    assert!(t.needs_checkpoint());
    t.checkpoint().unwrap();
    assert!(!t.needs_checkpoint());
    assert_eq!(all(&t, 0), vec![d(0, cap, false, 1)]);
}

#[test]
fn runs_are_split_to_fit_the_u32_block_count() {
    let eb = 1u64 << 31;
    let t = Tracker::volatile(3 * eb - 5, 1 << 31).unwrap();
    write(&t, 0, 3 * eb - 5);
    let got = all(&t, 0);
    assert_eq!(
        got,
        vec![
            d(0, eb, false, 1),
            d(eb, eb, false, 1),
            d(2 * eb, eb - 5, false, 1)
        ]
    );
    assert!(got.iter().all(|x| x.blocks <= u64::from(u32::MAX)));
}
