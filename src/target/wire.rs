//! Reading and writing PDUs on a socket: the only place bytes meet the
//! codec. Reading is two-phase (header, then exactly the tail it
//! announces), so a peer's declared length is checked against the
//! negotiated limit before a single byte of its data is buffered.

use crate::proto::pdu::{self, BHS_LEN, Bhs, Framing, Pdu, PduError};
use std::io;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// One read attempt's outcome.
#[derive(Debug)]
pub enum ReadOutcome {
    Pdu(Pdu),
    /// The data digest failed: the header is trustworthy, the data is not.
    DataDigest(Bhs),
    /// Framing is lost (bad header digest, oversized segment, bad AHS).
    Fatal(Bhs, PduError),
    /// The peer closed the connection cleanly between PDUs.
    Closed,
}

/// What a PDU's tail buffer starts with before its bytes arrive.
const TAIL_FIRST_CHUNK: usize = 64 * 1024;

/// Read one PDU.
pub async fn read_pdu<R: AsyncRead + Unpin>(
    r: &mut R,
    framing: &Framing,
) -> io::Result<ReadOutcome> {
    let mut hdr = [0u8; BHS_LEN];
    // A clean EOF before any header byte is a normal close.
    let n = r.read(&mut hdr).await?;
    if n == 0 {
        return Ok(ReadOutcome::Closed);
    }
    r.read_exact(&mut hdr[n..]).await?;
    let bhs = Bhs(hdr);
    let tail = match pdu::tail_len(&bhs, framing) {
        Ok(t) => t,
        Err(e) => return Ok(ReadOutcome::Fatal(bhs, e)),
    };
    // The buffer grows with the bytes that arrive, not with what the header
    // declares: a peer that announces a full segment and stalls holds only
    // what it sent (plus the first chunk), not MaxRecvDataSegmentLength.
    let mut buf = Vec::with_capacity(tail.min(TAIL_FIRST_CHUNK));
    (&mut *r).take(tail as u64).read_to_end(&mut buf).await?;
    if buf.len() != tail {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(match pdu::decode_tail(bhs.clone(), &buf, framing) {
        Ok(p) => ReadOutcome::Pdu(p),
        Err(PduError::DataDigest) => ReadOutcome::DataDigest(bhs),
        Err(e) => ReadOutcome::Fatal(bhs, e),
    })
}

/// Encode and write PDUs in one go (one syscall for a batch).
pub async fn write_pdus<W: AsyncWrite + Unpin>(
    w: &mut W,
    pdus: &[Pdu],
    framing: &Framing,
) -> io::Result<()> {
    let mut out = Vec::with_capacity(pdus.iter().map(|p| 64 + p.data.len()).sum());
    for p in pdus {
        pdu::encode_into(p, framing, &mut out);
    }
    w.write_all(&out).await
}
