//! Reading PDUs from a byte stream, and serial number arithmetic.

use super::error::{InitiatorError, Result};
use crate::proto::pdu::{decode_owned, tail_len};
use crate::proto::{BHS_LEN, Bhs, Framing, Pdu, PduError};
use bytes::BufMut;
use tokio::io::{AsyncRead, AsyncReadExt};

/// One PDU off the wire. The inner `Err` is a PDU-local problem (a data
/// digest mismatch) that leaves the stream usable; the outer one is not.
pub(crate) async fn read_pdu<R: AsyncRead + Unpin>(
    r: &mut R,
    framing: &Framing,
) -> Result<std::result::Result<Pdu, (Bhs, PduError)>> {
    let mut head = [0u8; BHS_LEN];
    read_full(r, &mut head).await?;
    let bhs = Bhs(head);
    let n = tail_len(&bhs, framing)?;
    let tail = read_tail(r, n).await?;
    match decode_owned(bhs.clone(), tail, framing) {
        Ok(p) => Ok(Ok(p)),
        Err(e) if !e.is_fatal() => Ok(Err((bhs, e))),
        Err(e) => Err(e.into()),
    }
}

/// `n` bytes into a buffer of their own (pooled when large), without
/// zeroing it first (the tail becomes the PDU's data: `decode_owned`).
async fn read_tail<R: AsyncRead + Unpin>(r: &mut R, n: usize) -> Result<Vec<u8>> {
    let mut tail = crate::buffers::room_for(n);
    while tail.len() < n {
        // Limited: the buffer may have room beyond `n`, and what follows
        // belongs to the next PDU.
        let want = n - tail.len();
        if r.read_buf(&mut (&mut tail).limit(want)).await? == 0 {
            return Err(InitiatorError::ConnectionClosed);
        }
    }
    Ok(tail)
}

async fn read_full<R: AsyncRead + Unpin>(r: &mut R, buf: &mut [u8]) -> Result<()> {
    match r.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            Err(InitiatorError::ConnectionClosed)
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_one_pdu_and_reports_eof() {
        let mut p = Pdu::new(crate::proto::Opcode::NopIn);
        p.data = vec![9; 5];
        let f = Framing {
            header_digest: true,
            data_digest: true,
            max_data_segment: 8192,
        };
        let wire = crate::proto::pdu::encode(&p, &f);
        let mut r = &wire[..];
        let got = read_pdu(&mut r, &f).await.unwrap().unwrap();
        assert_eq!(got.data, vec![9; 5]);
        assert!(matches!(
            read_pdu(&mut r, &f).await,
            Err(InitiatorError::ConnectionClosed)
        ));
    }
}
