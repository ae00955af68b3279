//! libiscsi's command-line tools against a real gentgt on loopback:
//! discovery, inquiry, header digests, CHAP (one-way and mutual), ACLs.

mod common;

use common::*;
use gentgt::proto::login::ChapSecrets;
use std::process::Command;

fn inq(url: &str, extra: &[&str]) -> (bool, String, String) {
    require_tool("iscsi-inq");
    run(
        Command::new("iscsi-inq")
            .args(["-i", INITIATOR])
            .args(extra)
            .arg(url),
        30,
    )
}

#[test]
fn iscsi_ls_lists_target_and_lun() {
    require_tool("iscsi-ls");
    let t = TestTarget::memory(64 << 20);
    let (ok, out, err) = run(
        Command::new("iscsi-ls")
            .args(["-i", INITIATOR, "-s"])
            .arg(t.portal_url()),
        30,
    );
    assert!(ok, "iscsi-ls failed: {out}\n{err}");
    assert!(out.contains(TARGET), "target missing from: {out}");
    assert!(out.contains("Lun:0"), "LUN 0 missing from: {out}");
    // iscsi-ls multiplies the *last* LBA by the block size, so 64 MiB
    // shows as 63M.
    assert!(out.contains("Size:63M"), "capacity missing from: {out}");
}

#[test]
fn iscsi_inq_standard_and_vpd() {
    let t = TestTarget::memory(16 << 20);
    let (ok, out, err) = inq(&t.url(0), &[]);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("GENTGT"), "vendor missing: {out}");
    let (ok, out, err) = inq(&t.url(0), &["-e", "1", "-c", "128"]);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("TESTSERIAL0000"), "serial missing: {out}");
    let (ok, out, err) = inq(&t.url(0), &["-e", "1", "-c", "131"]);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("NAA"), "NAA designator missing: {out}");
}

#[test]
fn header_digest_crc32c() {
    let t = TestTarget::memory(16 << 20);
    let url = format!("{}?header_digest=crc32c", t.url(0));
    let (ok, out, err) = inq(&url, &[]);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("GENTGT"));
}

fn chap(user: &str, secret: &str, mutual: Option<(&str, &str)>) -> ChapSecrets {
    ChapSecrets {
        user: user.into(),
        secret: secret.into(),
        mutual: mutual.map(|(u, s)| (u.into(), s.into())),
    }
}

#[test]
fn one_way_chap() {
    let opts = TargetOptions {
        chap: Some(chap("alice", "secret-alice-12", None)),
        ..Default::default()
    };
    let t = TestTarget::start(
        &[LunSpec::Memory {
            size: 16 << 20,
            block_size: 512,
        }],
        opts,
    );
    let good = format!("iscsi://alice%secret-alice-12@{}/{}/0", t.addr, t.name);
    let (ok, out, err) = inq(&good, &[]);
    assert!(ok, "good CHAP refused: {out}\n{err}");
    let bad = format!("iscsi://alice%wrong-secret-99@{}/{}/0", t.addr, t.name);
    let (ok, _, _) = inq(&bad, &[]);
    assert!(!ok, "wrong CHAP secret was accepted");
    let (ok, _, _) = inq(&t.url(0), &[]);
    assert!(!ok, "login without CHAP was accepted");
}

#[test]
fn mutual_chap() {
    let opts = TargetOptions {
        chap: Some(chap(
            "bob",
            "secret-bob-1234",
            Some(("tgt", "secret-tgt-5678")),
        )),
        ..Default::default()
    };
    let t = TestTarget::start(
        &[LunSpec::Memory {
            size: 16 << 20,
            block_size: 512,
        }],
        opts,
    );
    let good = format!(
        "iscsi://bob%secret-bob-1234@{}/{}/0?target_user=tgt&target_password=secret-tgt-5678",
        t.addr, t.name
    );
    let (ok, out, err) = inq(&good, &[]);
    assert!(ok, "mutual CHAP refused: {out}\n{err}");
    let wrong = format!(
        "iscsi://bob%secret-bob-1234@{}/{}/0?target_user=tgt&target_password=not-the-secret",
        t.addr, t.name
    );
    let (ok, _, _) = inq(&wrong, &[]);
    assert!(
        !ok,
        "initiator accepted a target that proved the wrong secret"
    );
}

#[test]
fn acl_refuses_other_initiators() {
    let opts = TargetOptions {
        allowed: Some(vec!["iqn.2026-11.dev.gentgt:only-me".into()]),
        ..Default::default()
    };
    let t = TestTarget::start(
        &[LunSpec::Memory {
            size: 16 << 20,
            block_size: 512,
        }],
        opts,
    );
    let (ok, _, _) = inq(&t.url(0), &[]);
    assert!(!ok, "initiator outside the ACL logged in");
    let (ok, out, err) = run(
        Command::new("iscsi-inq")
            .args(["-i", "iqn.2026-11.dev.gentgt:only-me"])
            .arg(t.url(0)),
        30,
    );
    assert!(ok, "allowed initiator refused: {out}\n{err}");
}
