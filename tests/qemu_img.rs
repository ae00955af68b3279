//! qemu-img (with Debian's qemu-block-extra iSCSI driver) copies an image
//! into a file-backed LUN and back, byte for byte.

mod common;

use common::*;
use rand::RngCore;
use std::process::Command;

#[test]
fn qemu_img_convert_roundtrip() {
    require_tool("qemu-img");
    let dir = tempfile::tempdir().unwrap();
    let lun = dir.path().join("lun0.img");
    let size: u64 = 32 << 20;
    let t = TestTarget::start(
        &[LunSpec::File {
            path: &lun,
            size,
            block_size: 512,
        }],
        TargetOptions::default(),
    );
    // A source image with random data, some zero runs and a partial tail.
    let mut src = vec![0u8; 24 << 20];
    rand::thread_rng().fill_bytes(&mut src[..8 << 20]);
    rand::thread_rng().fill_bytes(&mut src[12 << 20..(20 << 20) + 4096]);
    let src_path = dir.path().join("src.raw");
    std::fs::write(&src_path, &src).unwrap();
    let url = t.url(0);
    let (ok, out, err) = run(
        Command::new("qemu-img")
            .args(["convert", "-n", "-f", "raw", "-O", "raw"])
            .arg(&src_path)
            .arg(&url),
        120,
    );
    assert!(ok, "qemu-img convert into the LUN failed: {out}\n{err}");
    let back = dir.path().join("back.raw");
    let (ok, out, err) = run(
        Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "raw"])
            .arg(&url)
            .arg(&back),
        120,
    );
    assert!(ok, "qemu-img convert out of the LUN failed: {out}\n{err}");
    let got = std::fs::read(&back).unwrap();
    assert_eq!(got.len() as u64, size);
    assert!(got[..src.len()] == src[..], "data read back differs");
    assert!(got[src.len()..].iter().all(|&b| b == 0), "tail not zero");
    // And the data really reached the backing file.
    t.stop();
    let file = std::fs::read(&lun).unwrap();
    assert!(file[..src.len()] == src[..], "backing file differs");
}
