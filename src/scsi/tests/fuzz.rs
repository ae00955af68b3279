use super::*;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Arbitrary CDBs with arbitrary data never panic, never send more
    /// than the initiator expects, and always carry well-formed sense on
    /// CHECK CONDITION.
    #[test]
    fn random_cdbs_never_panic(
        cdb in proptest::collection::vec(any::<u8>(), 0..20),
        opcode in prop::sample::select(
            vec![0x00u8, 0x03, 0x08, 0x0a, 0x12, 0x1a, 0x1b, 0x1e, 0x25, 0x28, 0x2a,
                 0x35, 0x5a, 0x88, 0x8a, 0x91, 0x9e, 0xa0, 0xa3, 0xa8, 0xaa, 0xff]),
        use_known in any::<bool>(),
        data in proptest::collection::vec(any::<u8>(), 0..2048),
        expected_len in prop_oneof![Just(0u32), 0..4096u32, Just(u32::MAX)],
        lun in 0u64..3,
        ua in any::<bool>(),
    ) {
        let h = Harness::with_luns(vec![(0, mem_lu(64, false)), (1, mem_lu(64, true))]);
        if ua {
            h.srv.nexus_added(&h.nexus);
        }
        let mut cdb = cdb;
        if use_known && !cdb.is_empty() {
            cdb[0] = opcode;
        }
        let r = h.srv.execute(&ScsiCommand {
            lun,
            cdb: &cdb,
            data_out: &data,
            expected_len,
            nexus: &h.nexus,
        });
        prop_assert!(r.data_in.len() as u64 <= expected_len as u64);
        prop_assert!(r.data_in.len() as u64 <= r.transfer_len as u64);
        if r.status == status::CHECK_CONDITION {
            prop_assert_eq!(r.sense.as_ref().map(Vec::len), Some(18));
            prop_assert!(r.data_in.is_empty());
        } else {
            prop_assert_eq!(r.status, status::GOOD);
            prop_assert!(r.sense.is_none());
        }
    }
}
