//! How a write's data is cut into PDUs (RFC 7143 §4.2.5.2, §11.7-8): the
//! immediate part rides in the command, an unsolicited burst follows as
//! Data-Out, and each R2T is answered with its own Data-Out sequence.
//! Pure arithmetic, so it is tested without a target.

use super::error::{InitiatorError, Result};

/// One Data-Out PDU: a slice of the write buffer and its header fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataOutSeg {
    pub offset: u32,
    pub len: u32,
    /// DataSN within its sequence (each sequence starts at 0).
    pub data_sn: u32,
    /// F bit: last PDU of the sequence.
    pub final_bit: bool,
}

/// The unsolicited part of a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WritePlan {
    /// Bytes sent in the SCSI Command's own data segment.
    pub immediate: u32,
    /// Unsolicited Data-Out PDUs (TTT 0xffffffff) right after the command.
    pub unsolicited: Vec<DataOutSeg>,
}

/// Plan the unsolicited data of a `total`-byte write under the negotiated
/// ImmediateData / InitialR2T / FirstBurstLength and the target's
/// MaxRecvDataSegmentLength. The rest goes out only when solicited.
pub fn plan_unsolicited(
    total: u32,
    immediate_data: bool,
    initial_r2t: bool,
    first_burst: u32,
    target_mrdsl: u32,
) -> WritePlan {
    let burst = first_burst.min(total);
    let immediate = if immediate_data {
        burst.min(target_mrdsl)
    } else {
        0
    };
    let unsolicited = if !initial_r2t && immediate < burst {
        split_sequence(immediate, burst - immediate, target_mrdsl)
    } else {
        Vec::new()
    };
    WritePlan {
        immediate,
        unsolicited,
    }
}

/// One Data-Out sequence of `len` bytes from `offset`, in PDUs of at most
/// `mrdsl` bytes, DataSN from 0, F on the last.
pub fn split_sequence(offset: u32, len: u32, mrdsl: u32) -> Vec<DataOutSeg> {
    let step = mrdsl.max(1);
    let mut out = Vec::new();
    let mut done = 0u32;
    while done < len {
        let n = step.min(len - done);
        out.push(DataOutSeg {
            offset: offset + done,
            len: n,
            data_sn: out.len() as u32,
            final_bit: done + n == len,
        });
        done += n;
    }
    out
}

/// Check an R2T against the write it solicits for, and plan its answer.
pub fn plan_r2t(offset: u32, desired: u32, total: u32, mrdsl: u32) -> Result<Vec<DataOutSeg>> {
    let end = offset as u64 + desired as u64;
    if desired == 0 || end > total as u64 {
        return Err(InitiatorError::Protocol(format!(
            "R2T for {desired} bytes at {offset} outside the {total}-byte write"
        )));
    }
    Ok(split_sequence(offset, desired, mrdsl))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn covered(segs: &[DataOutSeg]) -> u32 {
        segs.iter().map(|s| s.len).sum()
    }

    #[test]
    fn immediate_only_when_it_fits() {
        let p = plan_unsolicited(4096, true, true, 65536, 8192);
        assert_eq!(p.immediate, 4096);
        assert!(p.unsolicited.is_empty());
    }

    #[test]
    fn immediate_capped_by_target_mrdsl_then_unsolicited_burst() {
        let p = plan_unsolicited(100_000, true, false, 65536, 8192);
        assert_eq!(p.immediate, 8192);
        assert_eq!(covered(&p.unsolicited), 65536 - 8192);
        assert_eq!(p.unsolicited[0].offset, 8192);
        assert_eq!(p.unsolicited[0].data_sn, 0);
        assert!(p.unsolicited.iter().all(|s| s.len <= 8192));
        let last = p.unsolicited.last().unwrap();
        assert!(last.final_bit && last.offset + last.len == 65536);
        assert_eq!(p.unsolicited.iter().filter(|s| s.final_bit).count(), 1);
    }

    #[test]
    fn initial_r2t_means_no_data_out_without_r2t() {
        let p = plan_unsolicited(100_000, false, true, 65536, 8192);
        assert_eq!(p.immediate, 0);
        assert!(p.unsolicited.is_empty());
        let p = plan_unsolicited(100_000, false, false, 65536, 8192);
        assert_eq!(p.immediate, 0);
        assert_eq!(covered(&p.unsolicited), 65536);
    }

    #[test]
    fn r2t_sequences_restart_datasn() {
        let s = plan_r2t(65536, 20000, 100_000, 8192).unwrap();
        assert_eq!(
            s.iter()
                .map(|x| (x.offset, x.len, x.data_sn))
                .collect::<Vec<_>>(),
            vec![(65536, 8192, 0), (73728, 8192, 1), (81920, 3616, 2)]
        );
        assert!(s[2].final_bit && !s[0].final_bit);
        assert!(plan_r2t(90_000, 20_000, 100_000, 8192).is_err());
        assert!(plan_r2t(0, 0, 100_000, 8192).is_err());
        assert!(plan_r2t(u32::MAX, 2, 100, 8192).is_err());
    }
}
