//! Data-Out that disagrees with the CDB (issue 17). The rule, in
//! `sbc::arrived`: a command acts on the first min(EDTL, CDB length) bytes
//! and answers GOOD only when those are whole blocks, all of them written
//! (or compared); otherwise CHECK CONDITION, ILLEGAL REQUEST, INVALID
//! FIELD IN COMMAND INFORMATION UNIT (0Eh/03h, FCP-4 option b) and nothing
//! is written. Either way the transfer length is the CDB's, so the
//! transport reports the residual the initiator expects.

use super::thin::ws16;
use super::*;

const BAD_IU: (u8, u8, u8) = (key::ILLEGAL_REQUEST, 0x0e, 3);
const B: usize = BS as usize;

fn fill(h: &Harness, lba: u64, blocks: u32, byte: u8) {
    let data = vec![byte; blocks as usize * B];
    h.good(&rw16(0x8a, lba, blocks), &data, blocks * BS);
}

fn read(h: &Harness, lba: u64, blocks: u32) -> Vec<u8> {
    h.good(&rw16(0x88, lba, blocks), &[], blocks * BS).data_in
}

fn with_op(op: u8, flags: u8, lba: u64, blocks: u32) -> Vec<u8> {
    let mut c = rw16(op, lba, blocks);
    c[1] = flags;
    c
}

/// The case, for WRITE(10/12/16), WRITE AND VERIFY(16) and
/// ORWRITE(16): one block, EDTL 200.
#[test]
fn torn_block_is_refused_and_nothing_written() {
    let h = Harness::new();
    let cdbs = [
        write10(4, 1, false),
        rw12(0xaa, 4, 1),
        rw16(0x8a, 4, 1),
        with_op(0x8e, 0x02, 4, 1),
        with_op(0x8b, 0, 4, 1),
    ];
    for c in cdbs {
        fill(&h, 4, 1, b'a');
        let r = h.check(&c, &[b'b'; 200], 200, BAD_IU);
        assert_eq!(r.transfer_len, BS, "cdb {c:02x?}: overflow residual 312");
        assert_eq!(read(&h, 4, 1), vec![b'a'; B], "cdb {c:02x?} wrote");
    }
}

/// A torn last block refuses the whole command, even with whole blocks
/// before it: nothing is written.
#[test]
fn whole_blocks_then_a_torn_one_writes_nothing() {
    let h = Harness::new();
    fill(&h, 0, 3, b'a');
    let r = h.check(&rw16(0x8a, 0, 3), &[b'b'; B + 100], BS + 100, BAD_IU);
    assert_eq!(r.transfer_len, 3 * BS);
    assert_eq!(read(&h, 0, 3), vec![b'a'; 3 * B]);
}

/// EDTL a positive multiple of the block size below the CDB's length: the
/// blocks that arrived are written, GOOD, the overflow residual says how
/// much did not (what libiscsi's residual tests check).
#[test]
fn whole_blocks_that_arrived_are_written() {
    let h = Harness::new();
    fill(&h, 0, 2, b'a');
    let r = h.good(&rw16(0x8a, 0, 2), &[b'b'; B], BS);
    assert_eq!(r.transfer_len, 2 * BS);
    let d = read(&h, 0, 2);
    assert_eq!((&d[..B], &d[B..]), (&[b'b'; B][..], &[b'a'; B][..]));
}

/// EDTL above the CDB's length, whole or not: the CDB's blocks all
/// arrived; they are written and the rest ignored (underflow residual).
#[test]
fn extra_data_is_ignored() {
    let h = Harness::new();
    fill(&h, 0, 2, b'a');
    for extra in [B, 100] {
        let r = h.good(
            &rw16(0x8a, 0, 1),
            &vec![b'c'; B + extra],
            (B + extra) as u32,
        );
        assert_eq!(r.transfer_len, BS);
    }
    let d = read(&h, 0, 2);
    assert_eq!((&d[..B], &d[B..]), (&[b'c'; B][..], &[b'a'; B][..]));
}

/// VERIFY with BYTCHK 01b compares what arrived: GOOD after comparing
/// part of a block would claim a verification that did not happen. BYTCHK
/// 11b needs its one block.
#[test]
fn verify_with_torn_data_is_refused() {
    let h = Harness::new();
    fill(&h, 0, 2, b'a');
    h.check(
        &with_op(0x8f, 0x02, 0, 2),
        &[b'a'; B + 100],
        BS + 100,
        BAD_IU,
    );
    h.check(&with_op(0x8f, 0x06, 0, 2), &[b'a'; 200], 200, BAD_IU);
    h.good(&with_op(0x8f, 0x02, 0, 2), &[b'a'; B], BS);
}

/// WRITE SAME needs its one block of Data-Out: less is an EDTL mismatch
/// (0Eh/03h), and nothing is written.
#[test]
fn write_same_without_its_block_is_refused() {
    let h = Harness::new();
    fill(&h, 0, 4, b'a');
    let r = h.check(&ws16(0, 4, 0), &[b'b'; 200], 200, BAD_IU);
    assert_eq!(r.transfer_len, BS);
    assert_eq!(read(&h, 0, 4), vec![b'a'; 4 * B]);
}
