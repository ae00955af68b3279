//! The view method's decisions, without a target: which method, which
//! errors end a view, what a fallback keeps, old manifests.

use super::*;
use crate::backup::{ExtentRef, Manifest};
use crate::initiator::cbt::{TrackingFlags, ViewStatus};

fn report(version: u8, views: bool) -> TrackingReport {
    TrackingReport {
        version,
        flags: TrackingFlags {
            tracking_on: true,
            ..TrackingFlags::default()
        },
        extent_blocks: 128,
        block_len: 512,
        capacity_blocks: 1 << 20,
        uuid: [1; 16],
        open_generation: 5,
        recovery_generation: 0,
        lease_remaining_ms: 0,
        views: views.then_some(ViewStatus {
            generation: 0,
            lease_remaining_ms: 0,
            space_used: 0,
            space_limit: 1 << 30,
            view_lun: 128,
        }),
    }
}

#[test]
fn the_method_follows_the_target_and_the_choice() {
    use MethodChoice::*;
    let v2 = report(2, true);
    assert_eq!(pick(Auto, &v2).unwrap(), (Method::View, None));
    assert_eq!(pick(View, &v2).unwrap(), (Method::View, None));
    assert_eq!(pick(Lock, &v2).unwrap(), (Method::Lock, None));
    for (r, why) in [(report(1, false), "version 1"), (report(2, false), "off")] {
        let (m, reason) = pick(Auto, &r).unwrap();
        assert_eq!(m, Method::Lock);
        assert!(reason.unwrap().contains(why));
        let e = pick(View, &r).unwrap_err();
        assert!(e.to_string().contains(why), "{e}");
        assert_eq!(pick(Lock, &r).unwrap(), (Method::Lock, None));
    }
}

fn check(status: u8, key: u8, asc: u8, ascq: u8) -> InitiatorError {
    let mut s = vec![0u8; 18];
    s[0] = 0x70;
    s[2] = key;
    s[7] = 10;
    s[12] = asc;
    s[13] = ascq;
    InitiatorError::ScsiCheck { status, sense: s }
}

#[test]
fn errors_that_end_a_view_become_view_gone() {
    let read_lost = BackupError::Initiator(check(2, 0x0b, 0x55, 0x03));
    assert!(matches!(gone(read_lost), BackupError::ViewGone(w) if w.contains("view space")));
    let typed = BackupError::Cbt(CbtClientError::ViewLost);
    assert!(matches!(gone(typed), BackupError::ViewGone(_)));
    let not_ready = BackupError::Initiator(check(2, 0x02, 0x04, 0x00));
    assert!(matches!(gone(not_ready), BackupError::ViewGone(_)));
    let expired = BackupError::Cbt(CbtClientError::Initiator(check(2, 0x05, 0x24, 0)));
    assert!(matches!(gone(expired), BackupError::ViewGone(_)));
    // Anything else stays what it was (a medium error is not a fallback).
    let medium = BackupError::Initiator(check(2, 0x03, 0x11, 0x00));
    assert!(matches!(gone(medium), BackupError::Initiator(_)));
    assert!(matches!(
        gone(BackupError::Interrupted),
        BackupError::Interrupted
    ));
    let conflict = BackupError::Cbt(CbtClientError::Initiator(InitiatorError::ScsiCheck {
        status: 0x18,
        sense: vec![],
    }));
    assert!(reservation_conflict(&conflict));
    assert!(!reservation_conflict(&BackupError::Interrupted));
}

#[test]
fn marking_the_list_leaves_the_rest_of_the_parent() {
    let d = "a".repeat(64);
    let mut image = vec![Some(ExtentRef::Blake3(d.clone())); 4];
    mark_todo(&mut image, &[(1, false), (3, true)]).unwrap();
    assert_eq!(
        image,
        vec![
            Some(ExtentRef::Blake3(d.clone())),
            None,
            Some(ExtentRef::Blake3(d)),
            None
        ]
    );
    assert!(mark_todo(&mut image, &[(4, false)]).is_err());
}

#[test]
fn renewal_is_at_a_third_of_the_lease() {
    assert_eq!(renew_period(30_000), Duration::from_secs(10));
    assert_eq!(renew_period(0), Duration::from_secs(10));
    assert_eq!(renew_period(30), Duration::from_millis(20));
}

#[test]
fn manifests_without_a_method_read_as_lock() {
    let old = r#"{"version":1,"id":"b1","parent":null,"created_ms":1,
        "lun":{"naa":"","uuid":"u","capacity_blocks":16,"block_size":512,"extent_blocks":16},
        "lock_generation":3,"extents":["zero"],
        "stats":{"full":true,"bytes_read":0,"extents_copied":1,"passes":1,
                 "lock_held_ms":0,"duration_ms":1,"reconnects":0}}"#;
    let m: Manifest = serde_json::from_str(old).unwrap();
    assert_eq!(m.stats.method, Method::Lock);
    assert_eq!(m.stats.fallback, None);
    m.check().unwrap();
    let mut v = m.clone();
    v.stats.method = Method::View;
    let json = serde_json::to_string(&v).unwrap();
    assert!(json.contains(r#""method":"view""#), "{json}");
    assert!(!json.contains("fallback"), "{json}");
    assert_eq!(serde_json::from_str::<Manifest>(&json).unwrap(), v);
}
