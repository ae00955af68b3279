//! Raw PDUs for tests that speak iSCSI past the initiator's rules (hostile
//! or faulty peers): a Data-Out built by hand, and waiting for one answer.

use gentgt::initiator::Session;
use gentgt::proto::pdu::{Opcode, Pdu};
use std::time::Duration;

/// A Data-Out PDU for `itt`/`ttt` carrying `data` at `offset`.
pub fn data_out(itt: u32, ttt: u32, data_sn: u32, offset: u32, data: Vec<u8>, fin: bool) -> Pdu {
    let mut p = Pdu::new(Opcode::DataOut).with_data(data);
    p.bhs.set_final(fin);
    p.bhs.set_itt(itt);
    p.bhs.set_ttt(ttt);
    p.bhs.set_data_sn(data_sn);
    p.bhs.set_buffer_offset(offset);
    p
}

/// The next PDU the target sends, within `within`.
pub async fn recv(s: &Session, within: Duration) -> Pdu {
    s.recv_raw_within(within).await.expect("no answer")
}

/// The next PDU, which must be an R2T for `itt`.
pub async fn expect_r2t(s: &Session, itt: u32, within: Duration) -> Pdu {
    let r = recv(s, within).await;
    assert_eq!(r.opcode(), Opcode::R2t, "{:?}", r.bhs);
    assert_eq!(r.bhs.itt(), itt);
    r
}
