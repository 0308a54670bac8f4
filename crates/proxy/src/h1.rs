//! An inline HTTP/1.1 upstream client for requests without a body.
//!
//! hyper's client runs every upstream connection as a task of its own and
//! passes the response and its body across channels, which costs two task
//! wake-ups per request. Here the downstream connection's task writes the
//! request and reads the response itself; the response body is a type that
//! reads the upstream socket when the downstream side polls it, and hands
//! the connection back to the worker's pool when the body is complete. It
//! is written by hand because no maintained crate offers a client that
//! runs inside the caller's task; `httparse` (hyper's own parser) reads the
//! response head.

use crate::config::Cluster;
use crate::lifetime::Life;
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Response, StatusCode};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use tokio::io::AsyncWriteExt;

/// The head of a bodiless HTTP/1.1 request (origin-form target, or
/// authority-form for CONNECT).
pub fn request_head(parts: &http::request::Parts) -> Vec<u8> {
    let mut head = Vec::with_capacity(512);
    head.extend_from_slice(parts.method.as_str().as_bytes());
    head.push(b' ');
    let target = match (&parts.method, parts.uri.authority()) {
        // CONNECT's target is authority-form (`host:port`).
        (&http::Method::CONNECT, Some(a)) => a.as_str(),
        _ => parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/"),
    };
    head.extend_from_slice(target.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    for (k, v) in &parts.headers {
        if k == http::header::CONTENT_LENGTH {
            continue;
        }
        head.extend_from_slice(k.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(v.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// Idle upstream connections of one worker, by endpoint and cluster (see
/// [`crate::lifetime`]).
#[derive(Default)]
pub struct Idle(pub Mutex<IdleMap>);

/// Boxed connections: a connection leaves the pool as the box it lives in
/// for its whole life (see [`Conn::new`]).
type IdleMap =
    std::collections::HashMap<crate::lifetime::Key, Vec<Box<Conn>>, foldhash::fast::RandomState>;

impl Idle {
    /// An idle connection to `ep` for `cluster`, if one is still fresh,
    /// counted as carrying a request.
    pub fn take(&self, ep: SocketAddr, cluster: &Arc<Cluster>) -> Option<Box<Conn>> {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let list = m.get_mut(&crate::lifetime::key(ep, cluster))?;
        while let Some(mut c) = list.pop() {
            if c.life.reuse() {
                return Some(c);
            }
        }
        None
    }

    fn put(&self, mut c: Box<Conn>) {
        if c.life.spent() || !c.life.fresh(false) {
            return;
        }
        c.life.rest();
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let list = m
            .entry(crate::lifetime::key(c.ep, c.life.cluster()))
            .or_default();
        if list.len() < 256 {
            list.push(c);
        }
    }

    /// Close the connections idle too long or past their longest life,
    /// and those of clusters no longer `current`.
    pub fn sweep(&self, current: &dyn Fn(&Arc<Cluster>) -> bool) {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        m.retain(|_, list| {
            list.retain(|c| current(c.life.cluster()) && c.life.fresh(true));
            !list.is_empty()
        });
    }
}

/// One upstream connection and what was read past the last response.
pub struct Conn {
    pub ep: SocketAddr,
    /// Plain TCP, or TLS when the cluster originates it.
    stream: crate::transport::UpIo,
    buf: BytesMut,
    life: Life,
}

impl Conn {
    /// A new connection, for a request it carries at once. Boxed once
    /// for the connection's life: a request's futures and its response
    /// body then move a pointer, not the socket and its buffer.
    pub fn new(
        ep: SocketAddr,
        stream: crate::transport::UpIo,
        cluster: &Arc<Cluster>,
    ) -> Box<Self> {
        let mut life = Life::new(cluster);
        life.carry();
        Box::new(Conn {
            ep,
            stream,
            buf: BytesMut::with_capacity(8192),
            life,
        })
    }
}

/// Why an exchange failed; `Stale` means the connection had been closed by
/// the upstream before anything was read, so the request may be sent again
/// on a fresh connection.
#[derive(Debug)]
pub enum Error {
    Stale,
    Io,
    Parse,
}

const MAX_HEAD: usize = 64 * 1024;

/// Write a bodiless request and read the response head. The body follows
/// through [`UpBody`].
pub async fn exchange(
    mut c: Box<Conn>,
    head: &[u8],
    head_request: bool,
    idle: Arc<Idle>,
) -> Result<Response<UpBody>, Error> {
    if c.stream.write_all(head).await.is_err() {
        return Err(Error::Stale);
    }
    loop {
        if !c.buf.is_empty() {
            // Left uninitialised: zeroing 96 headers (3 KB) cost more than
            // parsing the few an upstream sends.
            let mut headers = [const { std::mem::MaybeUninit::uninit() }; 96];
            let mut resp = httparse::Response::new(&mut []);
            match httparse::ParserConfig::default().parse_response_with_uninit_headers(
                &mut resp,
                &c.buf,
                &mut headers,
            ) {
                Ok(httparse::Status::Complete(n)) => {
                    let status =
                        StatusCode::from_u16(resp.code.unwrap_or(502)).map_err(|_| Error::Parse)?;
                    // Values are kept as offsets into the head, which then
                    // becomes shared `Bytes` the values point into: no copy
                    // and no allocation per header.
                    let base = c.buf.as_ptr() as usize;
                    let mut fields = Vec::with_capacity(resp.headers.len());
                    let mut framing = Framing::Close;
                    let mut keep = resp.version == Some(1);
                    let mut chunked = false;
                    let mut length = None;
                    for h in resp.headers.iter() {
                        let name = http::HeaderName::from_bytes(h.name.as_bytes())
                            .map_err(|_| Error::Parse)?;
                        if name == http::header::TRANSFER_ENCODING {
                            chunked = h.value.eq_ignore_ascii_case(b"chunked");
                            continue;
                        }
                        if name == http::header::CONTENT_LENGTH {
                            length = std::str::from_utf8(h.value)
                                .ok()
                                .and_then(|v| v.trim().parse::<u64>().ok());
                            if length.is_none() {
                                return Err(Error::Parse);
                            }
                        }
                        if name == http::header::CONNECTION {
                            if h.value.eq_ignore_ascii_case(b"close") {
                                keep = false;
                            }
                            continue;
                        }
                        if name.as_str() == "keep-alive" {
                            continue;
                        }
                        let start = h.value.as_ptr() as usize - base;
                        fields.push((name, start..start + h.value.len()));
                    }
                    if head_request
                        || status.is_informational()
                        || status == StatusCode::NO_CONTENT
                        || status == StatusCode::NOT_MODIFIED
                    {
                        framing = Framing::Length(0);
                    } else if chunked {
                        framing = Framing::Chunked(ChunkState::Size);
                    } else if let Some(l) = length {
                        framing = Framing::Length(l);
                    }
                    if matches!(framing, Framing::Close) {
                        keep = false;
                    }
                    let head = c.buf.split_to(n).freeze();
                    let mut map = HeaderMap::with_capacity(fields.len());
                    for (name, at) in fields {
                        let v = http::HeaderValue::from_maybe_shared(head.slice(at))
                            .map_err(|_| Error::Parse)?;
                        map.append(name, v);
                    }
                    let mut r = Response::new(UpBody {
                        conn: Some(c),
                        framing,
                        keep,
                        idle,
                    });
                    *r.status_mut() = status;
                    *r.headers_mut() = map;
                    r.body_mut().finish_if_done();
                    return Ok(r);
                }
                Ok(httparse::Status::Partial) if c.buf.len() < MAX_HEAD => {}
                _ => return Err(Error::Parse),
            }
        }
        let before = c.buf.len();
        c.buf.reserve(8192);
        let n = match tokio::io::AsyncReadExt::read_buf(&mut c.stream, &mut c.buf).await {
            Ok(n) => n,
            // A TLS upstream that closed a pooled connection without
            // close_notify: as stale as a plain one that closed.
            Err(e) if before == 0 && e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Err(Error::Stale)
            }
            Err(_) => return Err(Error::Io),
        };
        if n == 0 {
            return Err(if before == 0 { Error::Stale } else { Error::Io });
        }
    }
}

enum ChunkState {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

enum Framing {
    Length(u64),
    Chunked(ChunkState),
    /// Until the upstream closes.
    Close,
    Done,
}

/// A response body read from the upstream connection by whoever polls it.
pub struct UpBody {
    conn: Option<Box<Conn>>,
    framing: Framing,
    keep: bool,
    idle: Arc<Idle>,
}

impl UpBody {
    /// At the end of the body, the connection goes back to the pool (or is
    /// closed, if it cannot be reused).
    fn finish_if_done(&mut self) {
        if matches!(self.framing, Framing::Length(0)) {
            self.framing = Framing::Done;
        }
        if matches!(self.framing, Framing::Done) {
            if let Some(c) = self.conn.take() {
                if self.keep && c.buf.is_empty() {
                    self.idle.put(c);
                }
            }
        }
    }
}

/// Read what the upstream has sent into the connection's buffer, straight
/// into its spare capacity.
fn fill(conn: &mut Conn, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
    conn.buf.reserve(16 * 1024);
    tokio_util::io::poll_read_buf(Pin::new(&mut conn.stream), cx, &mut conn.buf)
}

impl http_body::Body for UpBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        let this = &mut *self;
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match &mut this.framing {
                Framing::Done => {
                    this.finish_if_done();
                    return Poll::Ready(None);
                }
                Framing::Length(left) => {
                    if *left == 0 {
                        this.framing = Framing::Done;
                        continue;
                    }
                    if conn.buf.is_empty() {
                        let n = ready!(fill(conn, cx))?;
                        if n == 0 {
                            return Poll::Ready(Some(
                                Err(std::io::ErrorKind::UnexpectedEof.into()),
                            ));
                        }
                    }
                    let take = (*left).min(conn.buf.len() as u64) as usize;
                    *left -= take as u64;
                    let data = conn.buf.split_to(take).freeze();
                    if *left == 0 {
                        this.framing = Framing::Done;
                        this.finish_if_done();
                    }
                    return Poll::Ready(Some(Ok(http_body::Frame::data(data))));
                }
                Framing::Close => {
                    if conn.buf.is_empty() {
                        let n = ready!(fill(conn, cx))?;
                        if n == 0 {
                            this.framing = Framing::Done;
                            this.keep = false;
                            continue;
                        }
                    }
                    let data = conn.buf.split().freeze();
                    return Poll::Ready(Some(Ok(http_body::Frame::data(data))));
                }
                Framing::Chunked(state) => match state {
                    ChunkState::Size | ChunkState::DataEnd | ChunkState::Trailers => {
                        let Some(eol) = conn.buf.windows(2).position(|w| w == b"\r\n") else {
                            if conn.buf.len() > 4096 {
                                return Poll::Ready(Some(Err(
                                    std::io::ErrorKind::InvalidData.into()
                                )));
                            }
                            let n = ready!(fill(conn, cx))?;
                            if n == 0 {
                                return Poll::Ready(Some(Err(
                                    std::io::ErrorKind::UnexpectedEof.into()
                                )));
                            }
                            continue;
                        };
                        let line = conn.buf.split_to(eol + 2);
                        match state {
                            ChunkState::DataEnd => {
                                if eol != 0 {
                                    return Poll::Ready(Some(Err(
                                        std::io::ErrorKind::InvalidData.into()
                                    )));
                                }
                                *state = ChunkState::Size;
                            }
                            ChunkState::Trailers => {
                                // Trailers are dropped; an empty line ends the body.
                                if eol == 0 {
                                    this.framing = Framing::Done;
                                }
                            }
                            _ => {
                                let text = std::str::from_utf8(&line[..eol]).unwrap_or("");
                                let hex = text.split(';').next().unwrap_or("").trim();
                                let Ok(size) = u64::from_str_radix(hex, 16) else {
                                    return Poll::Ready(Some(Err(
                                        std::io::ErrorKind::InvalidData.into()
                                    )));
                                };
                                *state = if size == 0 {
                                    ChunkState::Trailers
                                } else {
                                    ChunkState::Data(size)
                                };
                            }
                        }
                    }
                    ChunkState::Data(left) => {
                        if conn.buf.is_empty() {
                            let n = ready!(fill(conn, cx))?;
                            if n == 0 {
                                return Poll::Ready(Some(Err(
                                    std::io::ErrorKind::UnexpectedEof.into()
                                )));
                            }
                        }
                        let take = (*left).min(conn.buf.len() as u64) as usize;
                        *left -= take as u64;
                        if *left == 0 {
                            *state = ChunkState::DataEnd;
                        }
                        let data = conn.buf.split_to(take).freeze();
                        return Poll::Ready(Some(Ok(http_body::Frame::data(data))));
                    }
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.conn.is_none() || matches!(self.framing, Framing::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// A one-shot upstream that answers with `reply`, split in pieces.
    async fn upstream(reply: &'static [&'static [u8]]) -> SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.expect("accept");
            let mut buf = [0u8; 1024];
            let _ = tokio::io::AsyncReadExt::read(&mut s, &mut buf).await;
            for piece in reply {
                let _ = s.write_all(piece).await;
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        });
        addr
    }

    async fn get(reply: &'static [&'static [u8]]) -> (u16, Bytes, usize) {
        let ep = upstream(reply).await;
        let idle = Arc::new(Idle::default());
        let c = Conn::new(
            ep,
            tokio_util::either::Either::Left(
                tokio::net::TcpStream::connect(ep).await.expect("connect"),
            ),
            &Arc::new(Cluster::missing("c")),
        );
        let r = exchange(c, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n", false, idle.clone())
            .await
            .expect("a response");
        let status = r.status().as_u16();
        let body = r.into_body().collect().await.expect("body").to_bytes();
        let pooled = idle
            .0
            .lock()
            .map(|m| m.values().map(Vec::len).sum())
            .unwrap_or(0);
        (status, body, pooled)
    }

    #[tokio::test]
    async fn chunked_bodies_are_decoded_and_the_connection_reused() {
        let (s, b, pooled) = get(&[
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhel",
            b"lo\r\n6;ext=1\r\n world\r\n0\r\n",
            b"x-trailer: 1\r\n\r\n",
        ])
        .await;
        assert_eq!((s, &b[..], pooled), (200, &b"hello world"[..], 1));
    }

    #[tokio::test]
    async fn length_and_close_delimited_bodies() {
        let (s, b, pooled) = get(&[
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 3\r\n\r\nn",
            b"o!",
        ])
        .await;
        assert_eq!((s, &b[..], pooled), (404, &b"no!"[..], 1));
        let (s, b, pooled) = get(&[b"HTTP/1.0 200 OK\r\n\r\nuntil ", b"close"]).await;
        assert_eq!((s, &b[..], pooled), (200, &b"until close"[..], 0));
    }

    #[tokio::test]
    async fn a_bad_chunk_size_is_an_error() {
        let ep = upstream(&[b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n"]).await;
        let idle = Arc::new(Idle::default());
        let c = Conn::new(
            ep,
            tokio_util::either::Either::Left(
                tokio::net::TcpStream::connect(ep).await.expect("connect"),
            ),
            &Arc::new(Cluster::missing("c")),
        );
        let r = exchange(c, b"GET / HTTP/1.1\r\n\r\n", false, idle)
            .await
            .expect("head");
        assert!(r.into_body().collect().await.is_err());
    }
}
