//! UNMAP over iSCSI really frees space in the backing file, and GET LBA
//! STATUS then reports the range deallocated; the blocks read as zeros.

mod common;

use common::*;
use gentgt::initiator::{ConnectOptions, Initiator};
use std::os::unix::fs::MetadataExt;

fn allocated(path: &std::path::Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

#[tokio::test]
async fn unmap_punches_holes_in_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let lun = dir.path().join("lun0.img");
    let t = TestTarget::start(
        &[LunSpec::File {
            path: &lun,
            size: 64 << 20,
            block_size: 512,
        }],
        TargetOptions::default(),
    );
    let s = Initiator::connect(&ConnectOptions::new(t.addr, INITIATOR, Some(TARGET)))
        .await
        .unwrap();
    let _ = s.test_unit_ready(0).await;
    let data = vec![0xa5u8; 4 << 20];
    for i in 0..4u64 {
        s.write16(0, i * 8192, &data, 512, false).await.unwrap();
    }
    s.sync_cache(0).await.unwrap();
    let before = allocated(&lun);
    assert!(before >= 16 << 20, "write did not allocate: {before}");

    // UNMAP the first 12 MiB (24576 blocks) in one descriptor.
    let mut param = vec![0u8; 24];
    param[0..2].copy_from_slice(&22u16.to_be_bytes());
    param[2..4].copy_from_slice(&16u16.to_be_bytes());
    param[8..16].copy_from_slice(&0u64.to_be_bytes());
    param[16..20].copy_from_slice(&24576u32.to_be_bytes());
    let mut cdb = [0u8; 10];
    cdb[0] = 0x42;
    cdb[7..9].copy_from_slice(&24u16.to_be_bytes());
    let r = s.scsi(0, &cdb, Some(&param), 0).await.unwrap();
    assert_eq!(r.status, 0, "UNMAP failed: {:?}", r.sense_code());

    let after = allocated(&lun);
    assert!(
        before - after >= 12 << 20,
        "UNMAP freed only {} bytes (before {before}, after {after})",
        before - after
    );
    assert!(
        s.read16(0, 0, 64, 512)
            .await
            .unwrap()
            .iter()
            .all(|&b| b == 0)
    );
    assert_eq!(s.read16(0, 24576, 1, 512).await.unwrap(), vec![0xa5u8; 512]);

    // GET LBA STATUS at LBA 0: the first descriptor is deallocated and
    // covers the unmapped range.
    let mut cdb = [0u8; 16];
    cdb[0] = 0x9e;
    cdb[1] = 0x12;
    cdb[10..14].copy_from_slice(&64u32.to_be_bytes());
    let r = s.scsi(0, &cdb, None, 64).await.unwrap().good().unwrap();
    let d = &r.data[8..24];
    assert_eq!(u64::from_be_bytes(d[0..8].try_into().unwrap()), 0);
    assert_eq!(u32::from_be_bytes(d[8..12].try_into().unwrap()), 24576);
    assert_eq!(d[12] & 0x0f, 1, "first run should be deallocated");
    s.logout().await.unwrap();
}
