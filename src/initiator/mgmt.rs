//! Non-SCSI requests: NOP-Out ping, task management, logout, and the
//! SendTargets text exchange.

use super::command::encode_lun;
use super::error::{InitiatorError, Result};
use super::session::{RESERVED_TAG, Session};
use crate::proto::text::{MAX_TEXT_BYTES, TextPairs};
use crate::proto::{Opcode, Pdu};

use crate::proto::pdu::C_BIT;

/// Task management functions (RFC 7143 §11.5.1).
pub mod tmf {
    pub const ABORT_TASK: u8 = 1;
    pub const ABORT_TASK_SET: u8 = 2;
    pub const CLEAR_ACA: u8 = 3;
    pub const CLEAR_TASK_SET: u8 = 4;
    pub const LOGICAL_UNIT_RESET: u8 = 5;
    pub const TARGET_WARM_RESET: u8 = 6;
    pub const TARGET_COLD_RESET: u8 = 7;
    pub const TASK_REASSIGN: u8 = 8;
}

/// Group a SendTargets answer: each TargetName starts an entry that
/// collects the TargetAddress keys after it.
pub fn parse_send_targets(t: &TextPairs) -> Result<Vec<(String, Vec<String>)>> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for (k, v) in t.iter() {
        match k {
            "TargetName" => out.push((v.to_string(), Vec::new())),
            "TargetAddress" => match out.last_mut() {
                Some(last) => last.1.push(v.to_string()),
                None => {
                    return Err(InitiatorError::Protocol(
                        "TargetAddress before any TargetName".into(),
                    ));
                }
            },
            _ => {}
        }
    }
    Ok(out)
}

fn expect(p: &Pdu, op: Opcode) -> Result<()> {
    if p.opcode() == op {
        Ok(())
    } else {
        Err(InitiatorError::Protocol(format!(
            "expected {op:?}, got {:?}",
            p.opcode()
        )))
    }
}

impl Session {
    /// Ping the target with a NOP-Out and wait for the NOP-In echo.
    pub async fn nop(&self) -> Result<()> {
        let mut task = self.shared.new_task();
        let payload = b"gentgt-ping".to_vec();
        let mut p = Pdu::new(Opcode::NopOut).with_data(payload.clone());
        p.bhs.set_immediate(true);
        p.bhs.set_final(true);
        p.bhs.set_itt(task.itt);
        p.bhs.set_ttt(RESERVED_TAG);
        self.shared.send_command(Some(task.itt), p).await?;
        let r = task.next().await?;
        expect(&r, Opcode::NopIn)?;
        if r.data != payload {
            return Err(InitiatorError::Protocol(
                "NOP-In did not echo the ping data".into(),
            ));
        }
        Ok(())
    }

    /// Send a Task Management Function request (immediate) and return the
    /// response code (0 = function complete). For ABORT TASK the RefCmdSN
    /// is taken from the referenced task when it is one of ours.
    pub async fn task_mgmt(&self, function: u8, lun: u64, referenced_itt: u32) -> Result<u8> {
        let mut task = self.shared.new_task();
        let mut p = Pdu::new(Opcode::TaskMgmtRequest);
        p.bhs.set_immediate(true);
        p.bhs.set_flags(0x80 | (function & 0x7f));
        p.bhs.set_lun(encode_lun(lun));
        p.bhs.set_itt(task.itt);
        p.bhs.set_ref_task_tag(referenced_itt);
        let (next_sn, ..) = self.sequence_numbers();
        let ref_sn = self.shared.task_cmd_sn(referenced_itt).unwrap_or(next_sn);
        p.bhs.set_ref_cmd_sn(ref_sn);
        self.shared.send_command(Some(task.itt), p).await?;
        let r = task.next().await?;
        expect(&r, Opcode::TaskMgmtResponse)?;
        Ok(r.bhs.0[2])
    }

    /// SendTargets=`what` ("All", or a target name) on this session,
    /// following C-bit continuations. Returns (target name, addresses).
    pub async fn send_targets(&self, what: &str) -> Result<Vec<(String, Vec<String>)>> {
        let mut req = TextPairs::new();
        req.push("SendTargets", what);
        let text = self.text_exchange(req.encode()).await?;
        parse_send_targets(&TextPairs::parse(&text)?)
    }

    /// One text exchange; returns the joined data of all response PDUs.
    pub async fn text_exchange(&self, first: Vec<u8>) -> Result<Vec<u8>> {
        let mut task = self.shared.new_task();
        let mut data = first;
        let mut ttt = RESERVED_TAG;
        let mut joined = Vec::new();
        loop {
            let mut p = Pdu::new(Opcode::TextRequest).with_data(std::mem::take(&mut data));
            p.bhs.set_final(true);
            p.bhs.set_itt(task.itt);
            p.bhs.set_ttt(ttt);
            self.shared.send_command(Some(task.itt), p).await?;
            let r = task.next().await?;
            expect(&r, Opcode::TextResponse)?;
            if joined.len() + r.data.len() > MAX_TEXT_BYTES {
                return Err(InitiatorError::Protocol("text response too large".into()));
            }
            joined.extend_from_slice(&r.data);
            let more = r.bhs.flags() & C_BIT != 0 || !r.bhs.final_bit();
            if !more {
                return Ok(joined);
            }
            // Ask for the rest with an empty request echoing the TTT.
            ttt = r.bhs.ttt();
        }
    }

    /// Logout with reason "close the session" and close the connection.
    pub async fn logout(self) -> Result<()> {
        let r = {
            let mut task = self.shared.new_task();
            let mut p = Pdu::new(Opcode::LogoutRequest);
            p.bhs.set_immediate(true);
            p.bhs.set_flags(0x80); // reason 0: close the session
            p.bhs.set_itt(task.itt);
            p.bhs.set_cid(0);
            self.shared.send_command(Some(task.itt), p).await?;
            task.next().await?
        };
        expect(&r, Opcode::LogoutResponse)?;
        self.shared.shutdown_writer().await;
        match r.bhs.0[2] {
            0 => Ok(()),
            code => Err(InitiatorError::Protocol(format!("logout response {code}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_targets_grouping() {
        let t = TextPairs::parse(
            b"TargetName=iqn.a\0TargetAddress=1.2.3.4:3260,1\0TargetAddress=[::1]:3260,1\0\
              TargetName=iqn.b\0",
        )
        .unwrap();
        let got = parse_send_targets(&t).unwrap();
        assert_eq!(
            got,
            vec![
                (
                    "iqn.a".to_string(),
                    vec!["1.2.3.4:3260,1".to_string(), "[::1]:3260,1".to_string()]
                ),
                ("iqn.b".to_string(), vec![]),
            ]
        );
        let bad = TextPairs::parse(b"TargetAddress=x\0").unwrap();
        assert!(parse_send_targets(&bad).is_err());
    }
}
