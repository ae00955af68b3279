//! Reading and writing PDUs on a socket: the only place bytes meet the
//! codec. Reading is two-phase (header, then exactly the tail it
//! announces), so a peer's declared length is checked against the
//! negotiated limit before a single byte of its data is buffered.

use crate::proto::pdu::{self, BHS_LEN, Bhs, Framing, Pdu, PduError};
use std::io::{self, IoSlice};
use std::ops::Range;
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

/// The PDUs to send: the protocol core's type (no I/O in it), written out
/// here.
pub use crate::proto::conn::Reply;

/// Data segments at least this long go to the socket by reference; shorter
/// ones are cheaper to copy next to their header.
const BY_REFERENCE: usize = 2048;
/// iovecs per writev (Linux allows 1024).
const MAX_IOVECS: usize = 512;

/// Write replies in as few syscalls as possible: headers, trailers and
/// small segments are packed into one buffer, large data segments are
/// written from where they are (writev).
pub async fn write_replies<W: AsyncWrite + Unpin>(
    w: &mut W,
    replies: &[Reply],
    framing: &Framing,
    stall: std::time::Duration,
) -> io::Result<()> {
    enum Piece<'a> {
        Packed(Range<usize>),
        Referenced(&'a [u8]),
    }
    let mut packed = Vec::with_capacity(1024);
    let mut pieces = Vec::new();
    let mut start = 0;
    for r in replies {
        for (i, p) in r.pdus.iter().enumerate() {
            let data = match r.spans.get(i) {
                Some(span) => &r.body[span.clone()],
                None => &p.data[..],
            };
            pdu::encode_header(p, data.len(), framing, &mut packed);
            if data.len() >= BY_REFERENCE {
                pieces.push(Piece::Packed(start..packed.len()));
                pieces.push(Piece::Referenced(data));
                start = packed.len();
            } else {
                packed.extend_from_slice(data);
            }
            pdu::encode_trailer(data, framing, &mut packed);
        }
    }
    pieces.push(Piece::Packed(start..packed.len()));
    let mut slices: Vec<IoSlice> = pieces
        .iter()
        .map(|p| match p {
            Piece::Packed(r) => IoSlice::new(&packed[r.clone()]),
            Piece::Referenced(d) => IoSlice::new(d),
        })
        .filter(|s| !s.is_empty())
        .collect();
    let mut bufs = &mut slices[..];
    while !bufs.is_empty() {
        let n = bufs.len().min(MAX_IOVECS);
        let written = write_or_stall(w, &bufs[..n], stall).await?;
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut bufs, written);
    }
    Ok(())
}

/// One vectored write. A peer that takes nothing for `stall` (zero window:
/// it stopped reading, or vanished without a FIN) is dead: otherwise the
/// session would sit in this write forever, deaf to its timers. The timer
/// is armed only when the socket is full, not on every write.
async fn write_or_stall<W: AsyncWrite + Unpin>(
    w: &mut W,
    bufs: &[IoSlice<'_>],
    stall: std::time::Duration,
) -> io::Result<usize> {
    use std::task::Poll;
    let mut write = std::pin::pin!(w.write_vectored(bufs));
    let first = std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await;
    match first {
        Poll::Ready(r) => r,
        Poll::Pending => tokio::time::timeout(stall, write)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "initiator stopped reading"))?,
    }
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

impl PduReader<tokio::net::tcp::OwnedReadHalf> {
    /// Take whatever bytes the socket has right now, without waiting and
    /// without the runtime's readiness bookkeeping (which only learns of
    /// new bytes when the thread polls for events): `Some(true)` bytes
    /// were added, `Some(false)` the peer closed, `None` nothing yet.
    pub fn try_fill(&mut self) -> io::Result<Option<bool>> {
        use std::os::fd::AsRawFd;
        self.make_room();
        let fd = self.rd.as_ref().as_raw_fd();
        let spare = self.buf.spare_capacity_mut();
        // SAFETY: recv writes at most spare.len() bytes into memory the
        // buffer owns and reserves; MSG_DONTWAIT never blocks.
        let n = unsafe {
            libc::recv(
                fd,
                spare.as_mut_ptr().cast::<libc::c_void>(),
                spare.len(),
                libc::MSG_DONTWAIT,
            )
        };
        match n {
            0 => Ok(Some(false)),
            n if n > 0 => {
                // SAFETY: the kernel initialised the first n spare bytes.
                unsafe { self.buf.set_len(self.buf.len() + n as usize) };
                Ok(Some(true))
            }
            _ => {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(None),
                    _ => Err(e),
                }
            }
        }
    }
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

    /// Keep room for one more read of a burst.
    fn make_room(&mut self) {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
            self.buf.reserve(READ_CHUNK);
        }
    }

    /// Bytes read but not yet handed out (the start of a PDU).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Wait for more bytes. `Ok(false)`: the peer closed the connection
    /// (cleanly or mid-PDU: either way nothing more will come).
    pub async fn fill(&mut self) -> io::Result<bool> {
        self.make_room();
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
            // Room for more of this PDU, grown as its bytes arrive: a
            // declared length the peer never sends costs nothing.
            self.buf
                .reserve((whole - self.buf.len()).min(4 * READ_CHUNK));
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::pdu::Opcode;
    use crate::proto::response::{DataInPlan, Residual, data_in_headers, data_in_pdus};

    /// Referenced and packed segments, with both digests, produce exactly
    /// the bytes of the copying encoder.
    #[tokio::test]
    async fn vectored_replies_match_the_copying_encoder() {
        for (hd, dd) in [(false, false), (true, true), (true, false)] {
            let framing = Framing {
                header_digest: hd,
                data_digest: dd,
                max_data_segment: 1 << 20,
            };
            let data: Vec<u8> = (0..70_001u32).map(|i| (i * 7) as u8).collect();
            let plan = DataInPlan {
                itt: 9,
                lun: [0; 8],
                max_segment: 8191,
                max_burst: 65_536,
                status: Some((0, Residual::compute(70_001, 70_001))),
            };
            let expected_pdus = data_in_pdus(&data, &plan);
            let mut nop = Pdu::new(Opcode::NopIn);
            nop.data = vec![1, 2, 3];
            let mut expected = Vec::new();
            for p in expected_pdus.iter().chain([&nop]) {
                pdu::encode_into(p, &framing, &mut expected);
            }
            let (pdus, spans) = data_in_headers(data.len(), &plan);
            let replies = [
                Reply {
                    pdus,
                    body: data.clone(),
                    spans,
                },
                Reply::plain(vec![nop.clone()]),
            ];
            let mut got = Vec::new();
            write_replies(
                &mut got,
                &replies,
                &framing,
                std::time::Duration::from_secs(5),
            )
            .await
            .unwrap();
            assert_eq!(got, expected, "digests {hd}/{dd}");
        }
    }

    /// try_fill takes bytes without waiting, reports an empty socket as
    /// None and a closed one as Some(false); next() then decodes what came.
    #[tokio::test]
    async fn try_fill_polls_without_waiting() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (rd, _wr) = server.into_split();
        let framing = Framing {
            header_digest: false,
            data_digest: false,
            max_data_segment: 8192,
        };
        let mut reader = PduReader::new(rd, framing);
        assert!(reader.try_fill().unwrap().is_none());
        let mut nop = Pdu::new(Opcode::NopOut);
        nop.data = vec![9; 5];
        let mut bytes = Vec::new();
        pdu::encode_into(&nop, &framing, &mut bytes);
        client.write_all(&bytes).await.unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while reader.buf.len() < bytes.len() {
            assert!(std::time::Instant::now() < deadline, "bytes never arrived");
            if reader.try_fill().unwrap().is_none() {
                tokio::task::yield_now().await;
            }
        }
        assert!(matches!(reader.next(), Some(ReadOutcome::Pdu(p)) if p.data == vec![9; 5]));
        drop(client);
        loop {
            assert!(std::time::Instant::now() < deadline, "close never seen");
            match reader.try_fill().unwrap() {
                Some(false) => break,
                Some(true) => panic!("no bytes were sent"),
                None => tokio::task::yield_now().await,
            }
        }
    }
}
