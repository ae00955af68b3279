//! The admin endpoint: a deliberately tiny HTTP/1.1 responder for
//! `GET /metrics` and `GET /healthz`. One request per connection, the
//! request head bounded in size and time, every answer `Connection: close`;
//! anything unexpected gets a 4xx and the socket is closed. No framework:
//! two fixed routes do not need one, and every byte parsed here is checked.

use crate::metrics::Metrics;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{debug, warn};

/// Largest request head accepted (request line and headers).
pub const MAX_REQUEST: usize = 8 * 1024;
/// Time a client has to send its request head, and to take the reply.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more are closed at accept.
const MAX_CONNECTIONS: usize = 32;

const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
const PLAIN: &str = "text/plain; charset=utf-8";

/// Serve the admin endpoint until the task is aborted.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    serve_with(listener, metrics, REQUEST_TIMEOUT).await
}

/// [`serve`] with another request timeout (tests).
pub async fn serve_with(listener: TcpListener, metrics: Arc<Metrics>, timeout: Duration) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            debug!("admin endpoint busy; connection closed");
            continue;
        };
        let m = metrics.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, &m, timeout).await {
                debug!(error = %e, "admin request failed");
            }
            drop(permit);
        });
    }
}

/// What reading a request head produced.
enum Head {
    Complete(Vec<u8>),
    TooLarge,
    /// The peer closed before finishing its request.
    Closed,
}

async fn handle(
    mut stream: TcpStream,
    metrics: &Metrics,
    timeout: Duration,
) -> std::io::Result<()> {
    let reply = match tokio::time::timeout(timeout, read_head(&mut stream)).await {
        Err(_) => Reply::text(408, "request timeout\n"),
        Ok(head) => match head? {
            Head::Complete(h) => respond(&h, metrics),
            Head::TooLarge => Reply::text(431, "request too large\n"),
            Head::Closed => return Ok(()),
        },
    };
    let out = reply.encode();
    tokio::time::timeout(timeout, stream.write_all(&out))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    stream.shutdown().await
}

async fn read_head(stream: &mut TcpStream) -> std::io::Result<Head> {
    let mut buf = vec![0u8; MAX_REQUEST];
    let mut len = 0;
    loop {
        if len == buf.len() {
            return Ok(Head::TooLarge);
        }
        let n = stream.read(&mut buf[len..]).await?;
        if n == 0 {
            return Ok(Head::Closed);
        }
        len += n;
        if let Some(end) = head_end(&buf[..len]) {
            buf.truncate(end);
            return Ok(Head::Complete(buf));
        }
    }
}

/// Length of the head up to its blank line, if it is all there.
fn head_end(b: &[u8]) -> Option<usize> {
    b.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// A response, always closing the connection.
#[derive(Debug, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// HEAD: headers as for GET, no body.
    pub head_only: bool,
}

impl Reply {
    fn text(status: u16, body: &str) -> Reply {
        Reply {
            status,
            content_type: PLAIN,
            body: body.as_bytes().to_vec(),
            head_only: false,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            408 => "Request Timeout",
            431 => "Request Header Fields Too Large",
            505 => "HTTP Version Not Supported",
            _ => "Error",
        };
        let mut out = format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.status,
            self.content_type,
            self.body.len()
        );
        if self.status == 405 {
            out.push_str("Allow: GET, HEAD\r\n");
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        if !self.head_only {
            bytes.extend_from_slice(&self.body);
        }
        bytes
    }
}

/// Answer one complete request head.
pub fn respond(head: &[u8], metrics: &Metrics) -> Reply {
    let (method, path) = match parse_request_line(head) {
        Ok(r) => r,
        Err(status) => return Reply::text(status, "bad request\n"),
    };
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Reply::text(405, "method not allowed\n"),
    };
    let path = path.split('?').next().unwrap_or(path);
    let mut reply = match path {
        "/metrics" => Reply {
            status: 200,
            content_type: PROMETHEUS_TEXT,
            body: metrics.render().into_bytes(),
            head_only: false,
        },
        "/healthz" => Reply::text(200, "ok\n"),
        _ => Reply::text(404, "not found\n"),
    };
    reply.head_only = head_only;
    reply
}

/// Method and target of the request line, or the status refusing it.
fn parse_request_line(head: &[u8]) -> Result<(&str, &str), u16> {
    let end = head.windows(2).position(|w| w == b"\r\n").ok_or(400u16)?;
    let line = std::str::from_utf8(&head[..end]).map_err(|_| 400u16)?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(400);
    };
    let token = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_uppercase());
    if !token(method) || !target.starts_with('/') {
        return Err(400);
    }
    if !matches!(version, "HTTP/1.0" | "HTTP/1.1") {
        return Err(if version.starts_with("HTTP/") {
            505
        } else {
            400
        });
    }
    Ok((method, target))
}
