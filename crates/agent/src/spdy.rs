//! The server side of SPDY/3.1, as Kubernetes' streaming protocols use it
//! (`kubectl port-forward`, and `kubectl exec` from kubectl 1.29 and older):
//! the client opens streams with SYN_STREAM, each tagged by headers such as
//! `streamtype`; the server replies, then both sides exchange DATA frames
//! and half-close with FIN.
//!
//! No maintained Rust crate speaks SPDY/3.1 (it was superseded by HTTP/2
//! everywhere but here), so the few frames this needs are written by hand;
//! header blocks use zlib with SPDY/3's preset dictionary, through flate2.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use std::collections::HashMap;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const FLAG_FIN: u8 = 0x01;
/// Largest frame accepted; kubectl's are far smaller.
const MAX_FRAME: usize = 1 << 20;

/// SPDY/3's header-compression dictionary (draft-mbelshe-httpbis-spdy-00,
/// section 2.6.10.1): length-prefixed header names and values, then text.
pub fn dictionary() -> Vec<u8> {
    const WORDS: &[&str] = &[
        "options",
        "head",
        "post",
        "put",
        "delete",
        "trace",
        "accept",
        "accept-charset",
        "accept-encoding",
        "accept-language",
        "accept-ranges",
        "age",
        "allow",
        "authorization",
        "cache-control",
        "connection",
        "content-base",
        "content-encoding",
        "content-language",
        "content-length",
        "content-location",
        "content-md5",
        "content-range",
        "content-type",
        "date",
        "etag",
        "expect",
        "expires",
        "from",
        "host",
        "if-match",
        "if-modified-since",
        "if-none-match",
        "if-range",
        "if-unmodified-since",
        "last-modified",
        "location",
        "max-forwards",
        "pragma",
        "proxy-authenticate",
        "proxy-authorization",
        "range",
        "referer",
        "retry-after",
        "server",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "vary",
        "via",
        "warning",
        "www-authenticate",
        "method",
        "get",
        "status",
        "200 OK",
        "version",
        "HTTP/1.1",
        "url",
        "public",
        "set-cookie",
        "keep-alive",
        "origin",
    ];
    const TAIL: &str = concat!(
        "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505",
        "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request",
        "401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented",
        "503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 ",
        "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,",
        "application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age=",
        "gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
    );
    let mut d = Vec::with_capacity(1500);
    for w in WORDS {
        d.extend_from_slice(&(w.len() as u32).to_be_bytes());
        d.extend_from_slice(w.as_bytes());
    }
    d.extend_from_slice(TAIL.as_bytes());
    d
}

/// One direction's header-block codec state (a zlib stream per connection).
struct Headers {
    inflate: Decompress,
    deflate: Compress,
    dict: Vec<u8>,
    deflate_primed: bool,
}

impl Headers {
    fn new() -> Self {
        Self {
            inflate: Decompress::new(true),
            deflate: Compress::new(Compression::default(), true),
            dict: dictionary(),
            deflate_primed: false,
        }
    }

    fn decode(&mut self, block: &[u8]) -> Result<HashMap<String, String>, String> {
        let mut out = Vec::with_capacity(block.len() * 4 + 64);
        let mut input = block;
        loop {
            out.reserve(1024);
            let before_in = self.inflate.total_in();
            let res = self
                .inflate
                .decompress_vec(input, &mut out, FlushDecompress::Sync);
            let used = (self.inflate.total_in() - before_in) as usize;
            input = &input[used..];
            match res {
                Ok(Status::Ok) | Ok(Status::BufError) if input.is_empty() => break,
                Ok(Status::StreamEnd) => break,
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate
                        .set_dictionary(&self.dict)
                        .map_err(|e| e.to_string())?;
                }
                Err(e) => return Err(format!("bad SPDY header block: {e}")),
            }
            if out.len() > MAX_FRAME {
                return Err("SPDY header block too large".into());
            }
        }
        parse_block(&out)
    }

    fn encode(&mut self, headers: &[(&str, &str)]) -> Vec<u8> {
        if !self.deflate_primed {
            let _ = self.deflate.set_dictionary(&self.dict);
            self.deflate_primed = true;
        }
        let mut raw = Vec::new();
        raw.extend_from_slice(&(headers.len() as u32).to_be_bytes());
        for (k, v) in headers {
            raw.extend_from_slice(&(k.len() as u32).to_be_bytes());
            raw.extend_from_slice(k.as_bytes());
            raw.extend_from_slice(&(v.len() as u32).to_be_bytes());
            raw.extend_from_slice(v.as_bytes());
        }
        let mut out = Vec::with_capacity(raw.len() + 64);
        let mut input = &raw[..];
        loop {
            out.reserve(256);
            let before = self.deflate.total_in();
            let _ = self
                .deflate
                .compress_vec(input, &mut out, FlushCompress::Sync);
            input = &input[(self.deflate.total_in() - before) as usize..];
            if input.is_empty() && out.capacity() > out.len() {
                break;
            }
        }
        out
    }
}

fn parse_block(b: &[u8]) -> Result<HashMap<String, String>, String> {
    let bad = || "malformed SPDY header block".to_owned();
    let mut at = 0usize;
    let u32_at = |at: &mut usize| -> Result<usize, String> {
        let v = b.get(*at..*at + 4).ok_or_else(bad)?;
        *at += 4;
        Ok(u32::from_be_bytes([v[0], v[1], v[2], v[3]]) as usize)
    };
    let n = u32_at(&mut at)?;
    let mut out = HashMap::new();
    for _ in 0..n.min(1024) {
        let kl = u32_at(&mut at)?;
        let k = b.get(at..at + kl).ok_or_else(bad)?;
        at += kl;
        let vl = u32_at(&mut at)?;
        let v = b.get(at..at + vl).ok_or_else(bad)?;
        at += vl;
        out.insert(
            String::from_utf8_lossy(k).to_ascii_lowercase(),
            String::from_utf8_lossy(v).into_owned(),
        );
    }
    Ok(out)
}

fn control(ty: u16, flags: u8, body: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + body.len());
    f.extend_from_slice(&(0x8000u16 | 3).to_be_bytes());
    f.extend_from_slice(&ty.to_be_bytes());
    let len = body.len() as u32;
    f.push(flags);
    f.extend_from_slice(&len.to_be_bytes()[1..]);
    f.extend_from_slice(body);
    f
}

fn data(stream: u32, flags: u8, body: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + body.len());
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.push(flags);
    f.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    f.extend_from_slice(body);
    f
}

/// Decode one compressed header block on a fresh connection (for fuzzing:
/// any input must give headers or an error, never a panic).
pub fn decode_header_block(block: &[u8]) -> Result<HashMap<String, String>, String> {
    let _ = parse_block(block);
    Headers::new().decode(block)
}

/// What the client did.
#[derive(Debug)]
pub enum Event {
    /// A new stream and its headers (names lowercased).
    Stream {
        id: u32,
        headers: HashMap<String, String>,
    },
    Data {
        id: u32,
        data: Vec<u8>,
    },
    /// The client will send no more on this stream.
    Fin {
        id: u32,
    },
    Reset {
        id: u32,
    },
}

/// Sends frames to the client; cheap to clone.
#[derive(Clone)]
pub struct Sender(mpsc::Sender<Vec<u8>>);

impl Sender {
    /// Send bytes on a stream; false once the connection is gone.
    pub async fn data(&self, id: u32, bytes: &[u8]) -> bool {
        self.0.send(data(id, 0, bytes)).await.is_ok()
    }

    /// Half-close a stream.
    pub async fn fin(&self, id: u32) -> bool {
        self.0.send(data(id, FLAG_FIN, &[])).await.is_ok()
    }
}

/// Serve SPDY on `io`: every stream the client opens is accepted (SYN_REPLY)
/// and reported, pings are answered. The events end when the client goes
/// away; the connection closes once every [`Sender`] is dropped.
pub fn serve<S>(io: S) -> (Sender, mpsc::Receiver<Event>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(io);
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(64);
    let (ev_tx, ev_rx) = mpsc::channel::<Event>(64);
    tokio::spawn(async move {
        while let Some(f) = rx.recv().await {
            if wr.write_all(&f).await.is_err() {
                return;
            }
            let _ = wr.flush().await;
        }
        let _ = wr.shutdown().await;
    });
    // The reader holds only a weak handle: once the application drops its
    // senders, the writer ends and the connection closes.
    let weak = tx.downgrade();
    tokio::spawn(async move {
        let mut hdr = Headers::new();
        let mut head = [0u8; 8];
        loop {
            if rd.read_exact(&mut head).await.is_err() {
                return;
            }
            let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
            if len > MAX_FRAME {
                return;
            }
            let flags = head[4];
            let mut body = vec![0u8; len];
            if rd.read_exact(&mut body).await.is_err() {
                return;
            }
            let id_of = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) & 0x7fff_ffff;
            let mut events = vec![];
            if head[0] & 0x80 == 0 {
                let id = id_of(&head);
                if !body.is_empty() {
                    events.push(Event::Data { id, data: body });
                }
                if flags & FLAG_FIN != 0 {
                    events.push(Event::Fin { id });
                }
            } else {
                match u16::from_be_bytes([head[2], head[3]]) {
                    SYN_STREAM if body.len() >= 10 => {
                        let id = id_of(&body);
                        let headers = match hdr.decode(&body[10..]) {
                            Ok(h) => h,
                            Err(e) => {
                                tracing::debug!(error = %e, "SPDY: bad header block");
                                return;
                            }
                        };
                        let mut reply = id.to_be_bytes().to_vec();
                        reply.extend_from_slice(&hdr.encode(&[]));
                        let Some(tx) = weak.upgrade() else { return };
                        if tx.send(control(SYN_REPLY, 0, &reply)).await.is_err() {
                            return;
                        }
                        events.push(Event::Stream { id, headers });
                        if flags & FLAG_FIN != 0 {
                            events.push(Event::Fin { id });
                        }
                    }
                    PING => {
                        let Some(tx) = weak.upgrade() else { return };
                        if tx.send(control(PING, 0, &body)).await.is_err() {
                            return;
                        }
                    }
                    RST_STREAM if body.len() >= 4 => events.push(Event::Reset { id: id_of(&body) }),
                    GOAWAY => return,
                    _ => {}
                }
            }
            for e in events {
                if ev_tx.send(e).await.is_err() {
                    return;
                }
            }
        }
    });
    (Sender(tx), ev_rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dictionary_is_spdy3s() {
        let d = dictionary();
        // Its Adler-32, which zlib streams name in their FDICT field.
        let (mut a, mut b) = (1u32, 0u32);
        for x in &d {
            a = (a + *x as u32) % 65521;
            b = (b + a) % 65521;
        }
        assert_eq!(d.len(), 1423);
        assert_eq!((b << 16) | a, 0xe3c6_a7c2);
    }

    #[test]
    fn header_blocks_round_trip() {
        let mut client = Headers::new();
        let mut server = Headers::new();
        for i in 0..3 {
            let port = format!("80{i}");
            let block =
                client.encode(&[("streamtype", "data"), ("port", &port), ("requestid", "0")]);
            let h = server.decode(&block).unwrap();
            assert_eq!(h["streamtype"], "data");
            assert_eq!(h["port"], port);
        }
        assert!(parse_block(&[0, 0, 0, 1, 0, 0, 0, 9]).is_err());
    }
}
