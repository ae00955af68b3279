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
    let mut buf = vec![0u8; tail];
    r.read_exact(&mut buf).await?;
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

/// Reads PDUs for the full feature phase into one growing buffer, so the
/// session task reads the socket itself (no reader task, no channel hop)
/// and a burst of small PDUs costs one syscall. `fill` is cancel-safe:
/// it can sit in a `select!` beside completions and timers.
pub struct PduReader<R> {
    rd: R,
    buf: bytes::BytesMut,
    framing: Framing,
    /// Framing was lost: nothing after it can be trusted.
    dead: bool,
}

/// Spare room kept for the next read: a burst of 4 KiB writes.
const READ_CHUNK: usize = 64 * 1024;

impl<R: AsyncRead + Unpin> PduReader<R> {
    pub fn new(rd: R, framing: Framing) -> PduReader<R> {
        PduReader {
            rd,
            buf: bytes::BytesMut::with_capacity(READ_CHUNK),
            framing,
            dead: false,
        }
    }

    /// Wait for more bytes. `Ok(false)`: the peer closed the connection
    /// (cleanly or mid-PDU: either way nothing more will come).
    pub async fn fill(&mut self) -> io::Result<bool> {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
            self.buf.reserve(READ_CHUNK);
        }
        Ok(self.rd.read_buf(&mut self.buf).await? > 0)
    }

    /// The next complete PDU in the buffer, if there is one. A header that
    /// announces an oversized or malformed tail ends the stream at once,
    /// before any of that tail is buffered beyond the normal read size.
    pub fn next(&mut self) -> Option<ReadOutcome> {
        if self.dead || self.buf.len() < BHS_LEN {
            return None;
        }
        let bhs = Bhs(self.buf[..BHS_LEN].try_into().expect("checked length"));
        let tail = match pdu::tail_len(&bhs, &self.framing) {
            Ok(t) => t,
            Err(e) => {
                self.dead = true;
                return Some(ReadOutcome::Fatal(bhs, e));
            }
        };
        let whole = BHS_LEN + tail;
        if self.buf.len() < whole {
            // Room for the rest of this PDU (bounded by tail_len's limit).
            self.buf.reserve(whole - self.buf.len());
            return None;
        }
        let decoded = pdu::decode_tail(bhs.clone(), &self.buf[BHS_LEN..whole], &self.framing);
        bytes::Buf::advance(&mut self.buf, whole);
        Some(match decoded {
            Ok(p) => ReadOutcome::Pdu(p),
            Err(PduError::DataDigest) => ReadOutcome::DataDigest(bhs),
            Err(e) => {
                self.dead = true;
                ReadOutcome::Fatal(bhs, e)
            }
        })
    }

    /// Is a complete PDU (or a framing error) waiting in the buffer?
    pub fn has_complete(&self) -> bool {
        if self.dead || self.buf.len() < BHS_LEN {
            return false;
        }
        let bhs = Bhs(self.buf[..BHS_LEN].try_into().expect("checked length"));
        match pdu::tail_len(&bhs, &self.framing) {
            Ok(t) => self.buf.len() >= BHS_LEN + t,
            Err(_) => true,
        }
    }
}
