//! The HTTP path: route a request (virtual host by `Host`, then the first
//! route whose path and header matches fit), then answer it directly or
//! forward it to an endpoint of the chosen cluster over a pooled
//! keep-alive connection, with the route's timeout and retries. Bodies
//! stream through in both directions.
//!
//! Failures are answered as Envoy answers them, with its response flags in
//! `x-mast-response-flags`: no route 404 (`NR`), no endpoint 503 (`UH`),
//! connect failure 503 (`UF`), overflow 503 (`UO`), timeout 504 (`UT`).

use crate::config::{
    Action, Cluster, ClusterKind, Forward, HttpListener, Lb, PathMatch, Route, RouteTable,
    StringMatch,
};
use bytes::Bytes;
use http::{header, HeaderMap, Request, Response, StatusCode, Uri};
use http_body::Body as _;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub type ReqBody = Either<Incoming, Full<Bytes>>;
pub type RespBody = Either<Either<Tracked, crate::h1::UpBody>, Full<Bytes>>;

/// A response body from hyper's client. Over HTTP/2 it holds its
/// stream's place in the connection's count ([`Stream`]) until it ends or
/// is dropped.
pub struct Tracked {
    body: Incoming,
    stream: Option<Stream>,
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        let frame = Pin::new(&mut self.body).poll_frame(cx);
        if matches!(frame, std::task::Poll::Ready(None)) {
            self.stream = None;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// One stream in flight on an upstream HTTP/2 connection, counted while
/// it lives (`max_concurrent_streams`).
pub struct Stream(Arc<std::sync::atomic::AtomicUsize>);

impl Stream {
    fn new(count: &Arc<std::sync::atomic::AtomicUsize>) -> Stream {
        count.fetch_add(1, Ordering::Relaxed);
        Stream(count.clone())
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Hop-by-hop headers, which a proxy does not pass on (RFC 9110 7.6.1).
const HOP: [header::HeaderName; 7] = [
    header::CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

fn strip_hop(h: &mut HeaderMap) {
    // Most messages carry none of them: one pass over the names (a few
    // comparisons each) saves nine hashed look-ups (6% of the proxy's
    // instructions per request, bench/proxy-instr).
    let hop = |n: &header::HeaderName| {
        HOP.contains(n) || n.as_str() == "keep-alive" || n.as_str() == "proxy-connection"
    };
    if !h.keys().any(hop) {
        return;
    }
    if let Some(list) = h
        .get(header::CONNECTION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
    {
        for name in list.split(',') {
            h.remove(name.trim());
        }
    }
    for name in HOP {
        h.remove(name);
    }
    h.remove("keep-alive");
    h.remove("proxy-connection");
}

pub fn local(status: u16, flags: &str, body: &str) -> Response<RespBody> {
    let mut r = Response::new(Either::Right(Full::new(Bytes::from(body.to_owned()))));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain"),
    );
    if !flags.is_empty() {
        if let Ok(v) = flags.parse() {
            r.headers_mut().insert("x-mast-response-flags", v);
        }
    }
    r
}

/// A virtual host's `require_tls: ALL` for a plain-text request: 301 to
/// the same host and path over https, as Envoy answers it.
fn https_redirect(host: &str, path: &str) -> Response<RespBody> {
    let mut r = local(301, "", "");
    if let Ok(v) = format!("https://{host}{path}").parse() {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// What the data path knows of a downstream connection.
#[derive(Debug)]
pub struct Ctx {
    /// Where the connection was going: its original destination behind
    /// capture, else the listener's own address. ORIGINAL_DST clusters
    /// connect here.
    pub dst: SocketAddr,
    /// The downstream peer (for source-IP hashing).
    pub peer: SocketAddr,
    /// Istio's metrics, and whether this side is the source (outbound).
    pub istio: Option<(Arc<crate::istio::Metrics>, bool)>,
    /// The connection's request timers.
    pub clock: Clock,
    /// The downstream connection is TLS.
    pub tls: bool,
    /// The identity (a URI SAN, Istio's SPIFFE principal) of the client
    /// certificate that the downstream TLS handshake verified.
    pub peer_principal: Option<Arc<str>>,
}

/// A connection's request timers, reused by its requests.
///
/// A tokio timer per request takes the timer wheel's lock twice, to file
/// and to remove it, on every request, for a timeout that almost never
/// fires. Moving a filed timer's deadline later is one atomic exchange
/// instead; tokio re-files it only when the old deadline comes. HAProxy's
/// task timers work the same way. A request takes a timer for its
/// exchange and gives it back after: an HTTP/1.1 connection keeps one,
/// an HTTP/2 connection one per stream in flight, up to [`Clock::KEEP`].
#[derive(Debug, Default)]
pub struct Clock(Mutex<Vec<Pin<Box<tokio::time::Sleep>>>>);

impl Clock {
    /// How many idle timers a connection keeps.
    const KEEP: usize = 16;

    /// `work`, or [`Fail::Timeout`] if `at` comes first, counted in
    /// `timeouts`; no timer when there is no deadline.
    fn bound<'c, F>(
        &'c self,
        at: Option<tokio::time::Instant>,
        timeouts: &'c std::sync::atomic::AtomicU64,
        work: F,
    ) -> Bounded<'c, F> {
        let timer = at.map(|at| {
            let taken = self.0.lock().unwrap_or_else(|e| e.into_inner()).pop();
            match taken {
                Some(mut t) => {
                    t.as_mut().reset(at);
                    t
                }
                None => Box::pin(tokio::time::sleep_until(at)),
            }
        });
        Bounded {
            work,
            timer,
            clock: self,
            timeouts,
        }
    }
}

pin_project_lite::pin_project! {
    /// A future with a deadline on its connection's [`Clock`], which it
    /// gives back when it ends. A struct rather than an `async fn`, which
    /// would hold `work` twice (rust-lang/rust#62958) and copy it.
    struct Bounded<'c, F> {
        #[pin]
        work: F,
        timer: Option<Pin<Box<tokio::time::Sleep>>>,
        clock: &'c Clock,
        timeouts: &'c std::sync::atomic::AtomicU64,
    }
    impl<F> PinnedDrop for Bounded<'_, F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(t) = this.timer.take() {
                let mut idle = this.clock.0.lock().unwrap_or_else(|e| e.into_inner());
                if idle.len() < Clock::KEEP {
                    idle.push(t);
                }
            }
        }
    }
}

impl<T, F: std::future::Future<Output = Result<T, Fail>>> std::future::Future for Bounded<'_, F> {
    type Output = Result<T, Fail>;

    fn poll(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = self.project();
        if let std::task::Poll::Ready(r) = this.work.poll(cx) {
            return std::task::Poll::Ready(r);
        }
        match this.timer {
            Some(t) => t.as_mut().poll(cx).map(|()| {
                this.timeouts.fetch_add(1, Ordering::Relaxed);
                Err(Fail::Timeout)
            }),
            None => std::task::Poll::Pending,
        }
    }
}

/// The cluster that answered, on responses (for Istio's metrics).
#[derive(Clone)]
pub struct Upstream(pub Arc<Cluster>);

/// Envoy's domain matching: exact, then `*.suffix`, then `prefix.*`, then `*`.
fn vhost<'a>(l: &'a RouteTable, host: &str) -> Option<&'a crate::config::VirtualHost> {
    // One catch-all virtual host, the common case: nothing to compare.
    if let [only] = l.vhosts.as_slice() {
        if only.domains.iter().any(|d| d == "*") {
            return Some(only);
        }
    }
    let host = host.to_ascii_lowercase();
    let bare = host
        .rsplit_once(':')
        .filter(|(_, p)| p.chars().all(|c| c.is_ascii_digit()))
        .map(|(h, _)| h.to_owned());
    let candidates = [Some(host.as_str()), bare.as_deref()];
    for h in candidates.into_iter().flatten() {
        if let Some(v) = l.vhosts.iter().find(|v| v.domains.iter().any(|d| d == h)) {
            return Some(v);
        }
    }
    let mut best: Option<(usize, &crate::config::VirtualHost)> = None;
    for v in &l.vhosts {
        for d in &v.domains {
            let ok = if let Some(sfx) = d.strip_prefix('*') {
                !sfx.is_empty()
                    && candidates
                        .iter()
                        .flatten()
                        .any(|h| h.ends_with(sfx) && h.len() > sfx.len())
            } else if let Some(pfx) = d.strip_suffix('*') {
                candidates
                    .iter()
                    .flatten()
                    .any(|h| h.starts_with(pfx) && h.len() > pfx.len())
            } else {
                false
            };
            if ok && best.is_none_or(|(n, _)| d.len() > n) {
                best = Some((d.len(), v));
            }
        }
    }
    best.map(|(_, v)| v)
        .or_else(|| l.vhosts.iter().find(|v| v.domains.iter().any(|d| d == "*")))
}

pub(crate) fn string_match(m: &StringMatch, v: Option<&str>) -> bool {
    match (m, v) {
        (StringMatch::Present, v) => v.is_some(),
        (_, None) => false,
        (StringMatch::Exact(e), Some(v)) => v == e,
        (StringMatch::Prefix(p), Some(v)) => v.starts_with(p.as_str()),
        (StringMatch::Suffix(s), Some(v)) => v.ends_with(s.as_str()),
        (StringMatch::Contains(s), Some(v)) => v.contains(s.as_str()),
        (StringMatch::Regex(r), Some(v)) => r.is_match(v),
    }
}

/// The value of a query parameter (undecoded, as Envoy compares it).
fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then_some(v)
    })
}

fn route_matches(r: &Route, connect: bool, path: &str, headers: &HeaderMap) -> bool {
    if connect != matches!(r.path, PathMatch::Connect) {
        return false;
    }
    if !r.query.is_empty() {
        let q = path.split_once('?').map(|(_, q)| q).unwrap_or("");
        if !r
            .query
            .iter()
            .all(|(name, m)| string_match(m, query_param(q, name)))
        {
            return false;
        }
    }
    let path_only = path.split('?').next().unwrap_or(path);
    let ok = match &r.path {
        PathMatch::Prefix(p) if r.case_sensitive => path_only.starts_with(p.as_str()),
        PathMatch::Prefix(p) => path_only
            .to_ascii_lowercase()
            .starts_with(&p.to_ascii_lowercase()),
        PathMatch::Exact(p) if r.case_sensitive => path_only == p,
        PathMatch::Exact(p) => path_only.eq_ignore_ascii_case(p),
        PathMatch::Regex(re) => re.is_match(path_only),
        PathMatch::Connect => true,
    };
    ok && r.headers.iter().all(|h| {
        let v = headers.get(&h.name).and_then(|v| v.to_str().ok());
        string_match(&h.m, v) != h.invert
    })
}

fn cheap_random(seed: usize) -> usize {
    // A splitmix step over a counter: enough spread for weights and
    // random balancing, without a lock or a syscall.
    let mut z = (seed as u64).wrapping_add(0x9e3779b97f4a7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
    (z ^ (z >> 31)) as usize
}

/// One of weighted targets (there is at least one), by relative weight.
pub fn pick_weighted(targets: &[(Arc<Cluster>, u32)], total: u32, n: usize) -> &Arc<Cluster> {
    if targets.len() == 1 {
        return &targets[0].0;
    }
    let mut x = (cheap_random(n) % total.max(1) as usize) as u32;
    for (c, w) in targets {
        if x < *w {
            return c;
        }
        x -= w;
    }
    &targets[0].0
}

/// A hash that is the same in every worker and every run.
fn stable_hash<T: std::hash::Hash>(v: &T) -> u64 {
    use std::hash::BuildHasher;
    foldhash::quality::FixedState::with_seed(0x6d61_7374).hash_one(v)
}

/// A request's key for hashing clusters: the first hash policy that gives
/// one. With a cookie policy that has a TTL and no cookie yet, a cookie is
/// made; its `Set-Cookie` goes on the answer.
fn request_hash(
    f: &Forward,
    parts: &http::request::Parts,
    ctx: &Ctx,
    n: usize,
) -> (Option<u64>, Option<http::HeaderValue>) {
    use crate::config::HashOn;
    for h in &f.hash {
        match h {
            HashOn::Header(name) => {
                if let Some(v) = parts.headers.get(name) {
                    return (Some(stable_hash(&v.as_bytes())), None);
                }
            }
            HashOn::Cookie { name, ttl, path } => {
                let found = parts
                    .headers
                    .get_all(header::COOKIE)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(|v| v.split(';'))
                    .find_map(|kv| {
                        let (k, v) = kv.trim().split_once('=')?;
                        (k == name).then(|| v.to_owned())
                    });
                if let Some(v) = found {
                    return (Some(stable_hash(&v.as_bytes())), None);
                }
                if let Some(ttl) = ttl {
                    let v = format!("{:016x}", cheap_random(n) as u64 ^ stable_hash(&ctx.peer));
                    let mut set = format!("{name}=\"{v}\"; Max-Age={}", ttl.as_secs());
                    if let Some(p) = path {
                        set.push_str(&format!("; Path={p}"));
                    }
                    set.push_str("; HttpOnly");
                    return (Some(stable_hash(&v.as_bytes())), set.parse().ok());
                }
            }
            HashOn::SourceIp => return (Some(stable_hash(&ctx.peer.ip())), None),
            HashOn::Query(q) => {
                let found = parts.uri.query().and_then(|qs| query_param(qs, q));
                if let Some(v) = found {
                    return (Some(stable_hash(&v.as_bytes())), None);
                }
            }
        }
    }
    (None, None)
}

/// Take a place on the cluster's connections (`max_connections`), waiting
/// as one of at most `max_pending` requests when all are in use.
async fn admit(c: &Cluster) -> Result<tokio::sync::SemaphorePermit<'_>, Fail> {
    if let Ok(p) = c.conns.try_acquire() {
        return Ok(p);
    }
    if c.pending.fetch_add(1, Ordering::Relaxed) >= c.max_pending {
        c.pending.fetch_sub(1, Ordering::Relaxed);
        c.stats
            .upstream_rq_pending_overflow
            .fetch_add(1, Ordering::Relaxed);
        return Err(Fail::Overflow);
    }
    let p = c.conns.acquire().await;
    c.pending.fetch_sub(1, Ordering::Relaxed);
    p.map_err(|_| Fail::Overflow)
}

/// An HTTP/2 upstream's failure: a refused stream, or a reset.
fn h2_failure(e: &hyper::Error) -> Fail {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(h) = s.downcast_ref::<h2::Error>() {
            if h.reason() == Some(h2::Reason::REFUSED_STREAM) {
                return Fail::Refused;
            }
        }
        source = s.source();
    }
    Fail::Reset
}

/// Tell outlier detection how an attempt went.
fn report(c: &Cluster, ep: SocketAddr, outcome: &Result<u16, &Fail>) {
    if let Some(o) = &c.outlier {
        let oc = match outcome {
            Ok(s) => crate::outlier::Outcome::Status(*s),
            Err(Fail::Overflow) => return,
            Err(_) => crate::outlier::Outcome::LocalFailure,
        };
        o.report(ep, oc, c.endpoints.load().len());
    }
}

/// Per-worker upstream connections, by endpoint. Each worker has its own,
/// so the lock is never contended; it exists because hyper's connection
/// tasks must be `Send`.
#[derive(Default)]
pub struct Pool {
    http1: Mutex<ByKey<Vec<Pooled<H1Send>>>>,
    http2: Mutex<ByKey<H2Conns>>,
    /// Requests in flight per endpoint, for LEAST_REQUEST.
    active: Mutex<ByEndpoint<usize>>,
    /// Idle connections of the inline HTTP/1.1 client.
    idle: Arc<crate::h1::Idle>,
}

/// A map by endpoint with a fast hash (looked up twice per request).
type ByEndpoint<V> = HashMap<SocketAddr, V, foldhash::fast::RandomState>;
/// Connections by endpoint and cluster ([`crate::lifetime::key`]).
type ByKey<V> = HashMap<crate::lifetime::Key, V, foldhash::fast::RandomState>;
type H1Send = hyper::client::conn::http1::SendRequest<ReqBody>;
type H2Send = hyper::client::conn::http2::SendRequest<ReqBody>;

/// A hyper connection's handle and its age and use. hyper does not say
/// when a connection went idle, so its idle time runs from its last
/// request.
struct Pooled<S> {
    s: S,
    life: crate::lifetime::Life,
}

/// An upstream HTTP/2 connection and its streams in flight. A cluster may
/// cap them (`max_concurrent_streams`); beyond the cap another
/// connection opens, as in Envoy.
struct H2Conn {
    p: Pooled<H2Send>,
    streams: Arc<std::sync::atomic::AtomicUsize>,
}

/// A cluster's HTTP/2 connections to one endpoint. One request at a time
/// opens a new one, and the requests waiting meanwhile take its streams
/// first, as Envoy counts a connecting connection's streams.
#[derive(Default)]
struct H2Conns {
    conns: Vec<H2Conn>,
    connecting: Arc<tokio::sync::Mutex<()>>,
}

impl H2Conns {
    /// A stream on a connection with room, dropping those closed or past
    /// their life.
    fn stream(&mut self, c: &Cluster) -> Option<(H2Send, Stream)> {
        self.conns
            .retain(|h| !h.p.s.is_closed() && h.p.life.fresh(h.idle()));
        let i = self
            .conns
            .iter()
            .position(|h| h.streams.load(Ordering::Relaxed) < c.h2_streams)?;
        let got = self.conns[i].stream();
        // Its streams finish; new ones go to a new connection.
        if self.conns[i].p.life.spent() {
            self.conns.swap_remove(i);
        }
        Some(got)
    }
}

impl H2Conn {
    fn stream(&mut self) -> (H2Send, Stream) {
        self.p.life.carry();
        (self.p.s.clone(), Stream::new(&self.streams))
    }

    fn idle(&self) -> bool {
        self.streams.load(Ordering::Relaxed) == 0
    }
}

enum Sender {
    H1(Pooled<H1Send>),
    H2(H2Send, Stream),
}

/// Why forwarding failed, with Envoy's response flag.
#[derive(Debug)]
pub enum Fail {
    /// No connection to the upstream (`UF`).
    Connect,
    /// The upstream closed or reset before it answered (`UR`).
    Reset,
    /// An HTTP/2 upstream refused the stream, so it did not process the
    /// request (`UR`).
    Refused,
    /// The route's or the attempt's time ran out (`UT`).
    Timeout,
    /// A circuit breaker was full (`UO`).
    Overflow,
}

impl Pool {
    /// An endpoint of `c` by its balancing policy, skipping ejected ones.
    /// `hash` is the request's key for hashing clusters.
    pub fn pick_endpoint(&self, c: &Cluster, ctx: &Ctx, hash: Option<u64>) -> Option<SocketAddr> {
        if c.kind == ClusterKind::OriginalDst {
            return Some(ctx.dst);
        }
        let all = c.endpoints.load();
        let healthy;
        let endpoints: &[SocketAddr] = if c.outlier.is_none() && c.health.is_empty() {
            &all
        } else {
            let mut up = all.to_vec();
            for h in &c.health {
                up = h.healthy(&up);
            }
            if let Some(o) = &c.outlier {
                up = o.healthy(&up);
            }
            // Envoy's panic mode: with too few healthy endpoints, use all.
            if (up.len() as f64) * 100.0 < c.panic_threshold * all.len() as f64 {
                &all
            } else {
                healthy = up;
                &healthy
            }
        };
        let n = endpoints.len();
        if n == 0 {
            return None;
        }
        let i = c.next.fetch_add(1, Ordering::Relaxed);
        Some(match c.lb {
            Lb::RoundRobin => endpoints[i % n],
            Lb::Random => endpoints[cheap_random(i) % n],
            Lb::Hash => match hash {
                // Rendezvous hashing: the endpoint that scores highest for
                // this key.
                Some(key) => *endpoints
                    .iter()
                    .max_by_key(|e| stable_hash(&(key, e)))
                    .unwrap_or(&endpoints[0]),
                None => endpoints[cheap_random(i) % n],
            },
            Lb::LeastRequest => {
                // Power of two choices, as Envoy's LEAST_REQUEST does.
                let a = endpoints[cheap_random(i) % n];
                let b = endpoints[cheap_random(i.wrapping_add(7)) % n];
                let act = self.active.lock().unwrap_or_else(|e| e.into_inner());
                if act.get(&b).unwrap_or(&0) < act.get(&a).unwrap_or(&0) {
                    b
                } else {
                    a
                }
            }
        })
    }

    /// A connection to `ep` for a request, counted as carrying it: over
    /// HTTP/2 if `h2`.
    async fn sender(&self, c: &Arc<Cluster>, ep: SocketAddr, h2: bool) -> Result<Sender, Fail> {
        let key = crate::lifetime::key(ep, c);
        // Held while this request opens an HTTP/2 connection.
        let mut _connecting = None;
        if h2 {
            let connecting = {
                let mut map = self.http2.lock().unwrap_or_else(|e| e.into_inner());
                let conns = map.entry(key).or_default();
                if let Some((s, stream)) = conns.stream(c) {
                    return Ok(Sender::H2(s, stream));
                }
                conns.connecting.clone()
            };
            _connecting = Some(connecting.lock_owned().await);
            let mut map = self.http2.lock().unwrap_or_else(|e| e.into_inner());
            let conns = map.entry(key).or_default();
            // A connection opened while this request waited.
            if let Some((s, stream)) = conns.stream(c) {
                return Ok(Sender::H2(s, stream));
            }
            if conns.conns.len() >= c.max_connections {
                return Err(Fail::Overflow);
            }
        } else {
            let mut map = self.http1.lock().unwrap_or_else(|e| e.into_inner());
            let list = map.entry(key).or_default();
            list.retain(|p| !p.s.is_closed());
            while let Some(i) = list.iter().position(|p| p.s.is_ready()) {
                let mut p = list.swap_remove(i);
                if p.life.reuse() {
                    return Ok(Sender::H1(p));
                }
            }
            if list.len() >= c.max_connections {
                return Err(Fail::Overflow);
            }
        }
        let stream = c.open(ep).await.ok_or(Fail::Connect)?;
        let io = hyper_util::rt::TokioIo::new(stream);
        let mut life = crate::lifetime::Life::new(c);
        if h2 {
            let (s, conn) =
                hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                    .await
                    .map_err(|_| Fail::Connect)?;
            tokio::spawn(conn);
            let mut h = H2Conn {
                p: Pooled { s, life },
                streams: Default::default(),
            };
            let (s, stream) = h.stream();
            if !h.p.life.spent() {
                self.http2
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(key)
                    .or_default()
                    .conns
                    .push(h);
            }
            Ok(Sender::H2(s, stream))
        } else {
            life.carry();
            let (s, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(|_| Fail::Connect)?;
            tokio::spawn(conn);
            Ok(Sender::H1(Pooled { s, life }))
        }
    }

    async fn send(
        &self,
        c: &Arc<Cluster>,
        ep: SocketAddr,
        req: Request<ReqBody>,
        h2: bool,
    ) -> Result<Response<Tracked>, Fail> {
        let sender = self.sender(c, ep, h2).await?;
        // As Envoy, a request counts once it has a connection.
        c.stats.upstream_rq_total.fetch_add(1, Ordering::Relaxed);
        match sender {
            Sender::H2(mut s, stream) => s
                .send_request(req)
                .await
                .map(|r| {
                    r.map(|body| Tracked {
                        body,
                        stream: Some(stream),
                    })
                })
                .map_err(|e| h2_failure(&e)),
            Sender::H1(mut p) => {
                let fut = p.s.send_request(req);
                // Back in the pool at once: it is ready again when this
                // response's body is done. Its last request closes it
                // when the response is done.
                if !p.life.spent() {
                    self.http1
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .entry(crate::lifetime::key(ep, c))
                        .or_default()
                        .push(p);
                }
                fut.await
                    .map(|r| r.map(|body| Tracked { body, stream: None }))
                    .map_err(|_| Fail::Reset)
            }
        }
    }

    /// Close the connections idle too long or past their longest life,
    /// and the idle ones of clusters no longer `current` (run every
    /// second).
    pub fn sweep(&self, current: &dyn Fn(&Arc<Cluster>) -> bool) {
        self.idle.sweep(current);
        self.http1
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, list| {
                list.retain(|p| {
                    !p.s.is_closed()
                        && (!p.s.is_ready() || (current(p.life.cluster()) && p.life.fresh(true)))
                });
                !list.is_empty()
            });
        // An HTTP/2 connection's streams go on without the pool's handle.
        self.http2
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, list| {
                list.conns.retain(|h| {
                    !h.p.s.is_closed() && current(h.p.life.cluster()) && h.p.life.fresh(h.idle())
                });
                !list.conns.is_empty() || Arc::strong_count(&list.connecting) > 1
            });
    }
}

/// Handle one request on an HTTP listener, routed by `table`.
///
/// Everything up to the upstream exchange is decided here, synchronously
/// ([`plan`]), and the future returned holds only what the exchange
/// needs. hyper moves each request's future into place, and an `async fn`
/// keeps its arguments twice (rust-lang/rust#62958) at every level of
/// nesting: routing as nested `async fn`s made a 6.6 KB future, copied on
/// every request. The rare paths (tunnels, bodies, HTTP/2 upstreams,
/// delays) are boxed futures of their own.
pub fn handle<'a>(
    l: &'a HttpListener,
    table: &'a RouteTable,
    pool: &'a Pool,
    req: Request<Incoming>,
    n: usize,
    ctx: &'a Ctx,
) -> impl std::future::Future<Output = Response<RespBody>> + Send + 'a {
    let planned = plan(l, table, pool, req, n, ctx);
    async move {
        match planned {
            Planned::Answered(r) => r,
            Planned::Routed {
                route,
                origin,
                work,
            } => {
                let mut work = work;
                let mut resp = loop {
                    match work {
                        Work::Ready(r) => break r,
                        Work::Inline(job) => break forward_inline(job, pool, n, ctx).await,
                        Work::Boxed(fut) => break fut.await,
                        Work::Delayed(fut) => work = fut.await,
                    }
                };
                finish(route, origin, &mut resp);
                resp
            }
        }
    }
}

/// A request's routing decision.
enum Planned<'a> {
    /// Answered before a route applied (no route, a CORS preflight).
    Answered(Response<RespBody>),
    /// A route applied: its `work`, then its response edits.
    Routed {
        route: &'a Route,
        origin: Option<(&'a crate::config::Cors, header::HeaderValue)>,
        work: Work<'a>,
    },
}

/// What remains to be done for a routed request.
enum Work<'a> {
    Ready(Response<RespBody>),
    Inline(Inline<'a>),
    Boxed(Pin<Box<dyn std::future::Future<Output = Response<RespBody>> + Send + 'a>>),
    /// A fault delay, then the rest of the work.
    Delayed(Pin<Box<dyn std::future::Future<Output = Work<'a>> + Send + 'a>>),
}

/// A bodiless request to an HTTP/1.1 upstream, ready to send.
struct Inline<'a> {
    f: &'a Forward,
    cluster: Arc<Cluster>,
    head: Vec<u8>,
    is_head: bool,
    attempts: u32,
    hash: Option<u64>,
    cookie: Option<header::HeaderValue>,
}

fn plan<'a>(
    l: &'a HttpListener,
    table: &'a RouteTable,
    pool: &'a Pool,
    req: Request<Incoming>,
    n: usize,
    ctx: &'a Ctx,
) -> Planned<'a> {
    let route = {
        let connect = req.method() == http::Method::CONNECT;
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri().authority().map(|a| a.as_str()))
            .unwrap_or_default();
        let path = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let v = vhost(table, host);
        if v.is_some_and(|v| v.require_tls) && !ctx.tls {
            return Planned::Answered(https_redirect(host, path));
        }
        v.and_then(|v| {
            v.routes
                .iter()
                .find(|r| route_matches(r, connect, path, req.headers()))
        })
    };
    let Some(route) = route else {
        return Planned::Answered(local(404, "NR", ""));
    };
    // The CORS filter: preflights are answered here, others get the
    // allow headers on their response.
    let origin = match (&route.cors, l.cors) {
        (Some(c), true) => req
            .headers()
            .get(header::ORIGIN)
            .filter(|o| {
                let o = o.to_str().ok();
                c.origins.iter().any(|m| string_match(m, o))
            })
            .cloned()
            .map(|o| (c, o)),
        _ => None,
    };
    if let Some((c, o)) = &origin {
        if req.method() == http::Method::OPTIONS
            && req
                .headers()
                .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
        {
            return Planned::Answered(preflight(c, o));
        }
    }
    // The fault filter: a delay, then an abort, each for its share.
    let (mut delay, mut abort) = (None, None);
    if let (Some(f), true) = (&route.fault, l.faults) {
        delay = f
            .delay
            .filter(|(_, share)| chance(*share, n))
            .map(|(d, _)| d);
        abort = f
            .abort
            .filter(|(_, share)| chance(*share, n.wrapping_add(1)))
            .map(|(status, _)| status);
    }
    let work = match (delay, abort) {
        (None, None) => route_action(l, route, pool, req, n, ctx),
        (None, Some(status)) => Work::Ready(local(status, "FI", "fault filter abort")),
        (Some(d), abort) => Work::Delayed(Box::pin(async move {
            tokio::time::sleep(d).await;
            match abort {
                Some(status) => Work::Ready(local(status, "FI", "fault filter abort")),
                None => route_action(l, route, pool, req, n, ctx),
            }
        })),
    };
    Planned::Routed {
        route,
        origin,
        work,
    }
}

/// The answer to a CORS preflight the route allows.
fn preflight(c: &crate::config::Cors, origin: &header::HeaderValue) -> Response<RespBody> {
    let mut r = local(200, "", "");
    r.headers_mut().remove(header::CONTENT_TYPE);
    let h = r.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    for (k, v) in [
        (header::ACCESS_CONTROL_ALLOW_METHODS, &c.allow_methods),
        (header::ACCESS_CONTROL_ALLOW_HEADERS, &c.allow_headers),
        (header::ACCESS_CONTROL_MAX_AGE, &c.max_age),
    ] {
        if let Some(v) = v {
            h.insert(k, v.clone());
        }
    }
    if c.allow_credentials {
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            header::HeaderValue::from_static("true"),
        );
    }
    r
}

/// The route's response edits, and CORS headers for an allowed origin.
fn finish(
    route: &Route,
    origin: Option<(&crate::config::Cors, header::HeaderValue)>,
    resp: &mut Response<RespBody>,
) {
    route.response_headers.apply(resp.headers_mut());
    if let Some((c, o)) = origin {
        let h = resp.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o);
        if let Some(v) = &c.expose_headers {
            h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, v.clone());
        }
        if c.allow_credentials {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                header::HeaderValue::from_static("true"),
            );
        }
    }
}

/// True for `share` parts per million of calls.
fn chance(share: crate::config::PerMillion, n: usize) -> bool {
    share >= 1_000_000 || (cheap_random(n ^ 0x5eed) % 1_000_000) < share as usize
}

fn route_action<'a>(
    l: &'a HttpListener,
    route: &'a Route,
    pool: &'a Pool,
    mut req: Request<Incoming>,
    n: usize,
    ctx: &'a Ctx,
) -> Work<'a> {
    route.request_headers.apply(req.headers_mut());
    let path = |req: &Request<Incoming>| {
        req.uri()
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "/".into())
    };
    match &route.action {
        Action::Direct { status, body } => {
            let mut r = Response::new(Either::Right(Full::new(body.clone())));
            *r.status_mut() = StatusCode::from_u16(*status).unwrap_or(StatusCode::OK);
            Work::Ready(r)
        }
        Action::Redirect { location, status } => {
            let mut r = local(*status, "", "");
            let loc = if location.starts_with("http") {
                location.clone()
            } else {
                let host = req
                    .headers()
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or_default();
                let p = path(&req);
                format!(
                    "http://{host}{}",
                    if location.is_empty() { &p } else { location }
                )
            };
            if let Ok(v) = loc.parse() {
                r.headers_mut().insert(header::LOCATION, v);
            }
            Work::Ready(r)
        }
        Action::Forward(f) => {
            // `prefix_rewrite` replaces the prefix the route matched.
            let rewritten = f.prefix_rewrite.as_ref().map(|rw| {
                let path = path(&req);
                match &route.path {
                    PathMatch::Prefix(p) if path.len() >= p.len() => {
                        format!("{rw}{}", &path[p.len()..])
                    }
                    _ => rw.clone(),
                }
            });
            // An upgrade the listener allows (`upgrade_configs`) becomes a
            // tunnel once the upstream agrees.
            let upgrade = req
                .headers()
                .get(header::UPGRADE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_ascii_lowercase)
                .filter(|u| l.upgrades.contains(u));
            match upgrade {
                _ if req.method() == http::Method::CONNECT => {
                    if !l.upgrades.iter().any(|u| u == "connect") {
                        Work::Ready(local(404, "NR", ""))
                    } else if f.connect_terminate {
                        Work::Boxed(Box::pin(forward_connect(f, pool, req, n, ctx)))
                    } else {
                        Work::Boxed(Box::pin(forward_upgrade(
                            f, pool, req, rewritten, None, n, ctx,
                        )))
                    }
                }
                Some(proto) => Work::Boxed(Box::pin(forward_upgrade(
                    f,
                    pool,
                    req,
                    rewritten,
                    Some(proto),
                    n,
                    ctx,
                ))),
                None => forward(f, pool, req, rewritten, n, ctx),
            }
        }
    }
}

fn forward<'a>(
    f: &'a Forward,
    pool: &'a Pool,
    req: Request<Incoming>,
    rewritten: Option<String>,
    n: usize,
    ctx: &'a Ctx,
) -> Work<'a> {
    let cluster = pick_weighted(&f.targets, f.total, n).clone();
    if cluster.kind == ClusterKind::Missing {
        return Work::Ready(local(503, "NC", "no cluster"));
    }
    let (mut parts, body) = req.into_parts();
    // Before the parts become HTTP/1.1's: the downstream's version may
    // choose the upstream's (`use_downstream_protocol_config`).
    let h2 = cluster.h2_for(parts.version);
    upstream_parts(f, &mut parts, rewritten);
    // A request without a body can be sent again; others get one attempt.
    let bodiless = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .is_none_or(|v| v == "0")
        && !parts.headers.contains_key(header::TRANSFER_ENCODING)
        && matches!(
            parts.method,
            http::Method::GET | http::Method::HEAD | http::Method::DELETE | http::Method::OPTIONS
        );
    let attempts = if bodiless { f.retry.retries + 1 } else { 1 };
    if bodiless && body.is_end_stream() {
        mirror(f, pool, &parts, n, ctx);
    }
    // Tell an in-mesh destination who the source is (Istio's metrics).
    if let Some((m, true)) = &ctx.istio {
        if cluster.name.starts_with("outbound|") {
            parts
                .headers
                .insert(crate::istio::PEER, m.me_header.clone());
        }
    }
    let (hash, cookie) = if cluster.lb == Lb::Hash {
        request_hash(f, &parts, ctx, n)
    } else {
        (None, None)
    };
    if bodiless && !h2 && body.is_end_stream() {
        return Work::Inline(Inline {
            f,
            head: crate::h1::request_head(&parts),
            is_head: parts.method == http::Method::HEAD,
            cluster,
            attempts,
            hash,
            cookie,
        });
    }
    Work::Boxed(Box::pin(async move {
        let resp = forward_hyper(f, pool, &cluster, h2, parts, body, attempts, n, ctx, hash).await;
        upstream_answered(resp, cluster, cookie, ctx)
    }))
}

/// A forwarded request's response: the hashing cookie to set, and, for
/// Istio's metrics, the cluster that answered.
fn upstream_answered(
    mut resp: Response<RespBody>,
    cluster: Arc<Cluster>,
    cookie: Option<header::HeaderValue>,
    ctx: &Ctx,
) -> Response<RespBody> {
    if let Some(c) = cookie {
        resp.headers_mut().append(header::SET_COOKIE, c);
    }
    if ctx.istio.is_some() {
        resp.extensions_mut().insert(Upstream(cluster));
    }
    resp
}

/// An upgrade (WebSocket), or a CONNECT forwarded upstream (`proto`
/// None): the request goes to the upstream as HTTP/1.1, with its `Upgrade`
/// or as `CONNECT host:port`; a `101` answer (a `2xx` to CONNECT) makes the
/// two connections one tunnel, copied both ways until either side closes.
/// Other answers are passed back as they are.
async fn forward_upgrade(
    f: &Forward,
    pool: &Pool,
    mut req: Request<Incoming>,
    rewritten: Option<String>,
    proto: Option<String>,
    n: usize,
    ctx: &Ctx,
) -> Response<RespBody> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let cluster = pick_weighted(&f.targets, f.total, n).clone();
    if cluster.kind == ClusterKind::Missing {
        return local(503, "NC", "no cluster");
    }
    let downstream = hyper::upgrade::on(&mut req);
    let (mut parts, _) = req.into_parts();
    match &proto {
        Some(proto) => {
            upstream_parts(f, &mut parts, rewritten);
            parts.headers.insert(
                header::CONNECTION,
                header::HeaderValue::from_static("upgrade"),
            );
            if let Ok(v) = proto.parse() {
                parts.headers.insert(header::UPGRADE, v);
            }
        }
        // CONNECT keeps its authority-form target.
        None => strip_hop(&mut parts.headers),
    }
    let Some(ep) = pool.pick_endpoint(&cluster, ctx, None) else {
        return local(503, "UH", "no healthy upstream");
    };
    let Some(mut up) = cluster.open(ep).await else {
        return fail_response(Fail::Connect);
    };
    cluster
        .stats
        .upstream_rq_total
        .fetch_add(1, Ordering::Relaxed);
    if up
        .write_all(&crate::h1::request_head(&parts))
        .await
        .is_err()
    {
        return fail_response(Fail::Reset);
    }
    // The answer's head, then whatever already followed it.
    let mut buf = Vec::with_capacity(4096);
    let head = loop {
        let mut chunk = [0u8; 4096];
        let read = match f.timeout {
            Some(t) => match tokio::time::timeout(t, up.read(&mut chunk)).await {
                Ok(r) => r,
                Err(_) => return fail_response(Fail::Timeout),
            },
            None => up.read(&mut chunk).await,
        };
        match read {
            Ok(0) | Err(_) => return fail_response(Fail::Reset),
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
        }
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut r = httparse::Response::new(&mut headers);
        match r.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let mut resp = Response::new(());
                *resp.status_mut() =
                    StatusCode::from_u16(r.code.unwrap_or(502)).unwrap_or(StatusCode::BAD_GATEWAY);
                for h in r.headers.iter() {
                    if let (Ok(k), Ok(v)) = (
                        header::HeaderName::from_bytes(h.name.as_bytes()),
                        header::HeaderValue::from_bytes(h.value),
                    ) {
                        resp.headers_mut().append(k, v);
                    }
                }
                break (resp, len);
            }
            Ok(httparse::Status::Partial) if buf.len() < crate::MAX_HEADERS => {}
            _ => return fail_response(Fail::Reset),
        }
    };
    let (resp, len) = head;
    let rest = buf.split_off(len);
    cluster.stats.status(resp.status().as_u16());
    let (p, ()) = resp.into_parts();
    let tunnel = match proto {
        Some(_) => p.status == StatusCode::SWITCHING_PROTOCOLS,
        None => p.status.is_success(),
    };
    if !tunnel {
        // Not upgraded: the answer and what of its body had come (the
        // connection is not reused).
        return Response::from_parts(p, Either::Right(Full::new(Bytes::from(rest))));
    }
    tokio::spawn(async move {
        let Ok(upgraded) = downstream.await else {
            return;
        };
        let mut down = hyper_util::rt::TokioIo::new(upgraded);
        if !rest.is_empty() && down.write_all(&rest).await.is_err() {
            return;
        }
        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
    });
    Response::from_parts(p, Either::Right(Full::new(Bytes::new())))
}

/// CONNECT (`upgrade_type: CONNECT` and a `connect_matcher` route): a TCP
/// connection to an endpoint of the route's cluster, answered 200, then a
/// tunnel copied both ways, as Envoy terminates CONNECT.
async fn forward_connect(
    f: &Forward,
    pool: &Pool,
    mut req: Request<Incoming>,
    n: usize,
    ctx: &Ctx,
) -> Response<RespBody> {
    let cluster = pick_weighted(&f.targets, f.total, n).clone();
    if cluster.kind == ClusterKind::Missing {
        return local(503, "NC", "no cluster");
    }
    let Some(ep) = pool.pick_endpoint(&cluster, ctx, None) else {
        return local(503, "UH", "no healthy upstream");
    };
    let Some(mut up) = cluster.open(ep).await else {
        return fail_response(Fail::Connect);
    };
    let downstream = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = downstream.await else {
            return;
        };
        let mut down = hyper_util::rt::TokioIo::new(upgraded);
        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
    });
    Response::new(Either::Right(Full::new(Bytes::new())))
}

/// A downstream request's head made ready for the upstream: hop-by-hop
/// headers off, `Host` (rewritten), origin-form target (rewritten).
fn upstream_parts(f: &Forward, parts: &mut http::request::Parts, rewritten: Option<String>) {
    strip_hop(&mut parts.headers);
    if let Some(h) = &f.host_rewrite {
        parts.headers.insert(header::HOST, h.clone());
    } else if !parts.headers.contains_key(header::HOST) {
        if let Some(a) = parts.uri.authority() {
            if let Ok(v) = a.as_str().parse() {
                parts.headers.insert(header::HOST, v);
            }
        }
    }
    // Upstream requests are origin-form (`/path?query`).
    if let Some(p) = rewritten {
        parts.uri = p.parse::<Uri>().unwrap_or_else(|_| Uri::from_static("/"));
    } else if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        let p = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        parts.uri = p.parse::<Uri>().unwrap_or_else(|_| Uri::from_static("/"));
    }
    parts.version = http::Version::HTTP_11;
}

/// A request over hyper's client: with a body, or to an HTTP/2 upstream.
#[allow(clippy::too_many_arguments)]
async fn forward_hyper(
    f: &Forward,
    pool: &Pool,
    cluster: &Arc<Cluster>,
    h2: bool,
    mut parts: http::request::Parts,
    body: Incoming,
    attempts: u32,
    n: usize,
    ctx: &Ctx,
    hash: Option<u64>,
) -> Response<RespBody> {
    let stats = &cluster.stats;
    let active = stats.upstream_rq_active.fetch_add(1, Ordering::Relaxed);
    if active as usize >= cluster.max_requests {
        stats.upstream_rq_active.fetch_sub(1, Ordering::Relaxed);
        stats
            .upstream_rq_pending_overflow
            .fetch_add(1, Ordering::Relaxed);
        return fail_response(Fail::Overflow);
    }
    let mut body = Some(body);
    let deadline = f.timeout.map(|t| tokio::time::Instant::now() + t);
    let _permit = if h2 {
        None
    } else {
        match admit(cluster).await {
            Ok(p) => Some(p),
            Err(e) => {
                stats.upstream_rq_active.fetch_sub(1, Ordering::Relaxed);
                return fail_response(e);
            }
        }
    };
    let mut result: Result<Response<Tracked>, Fail> = Err(Fail::Connect);
    let mut tries = Attempts::new(f, cluster, deadline);
    for attempt in 0..attempts {
        if attempt > 0 {
            tries.back_off(attempt, n).await;
        }
        let Some(ep) = tries.pick(|| pool.pick_endpoint(cluster, ctx, hash)) else {
            stats.upstream_rq_active.fetch_sub(1, Ordering::Relaxed);
            return local(503, "UH", "no healthy upstream");
        };
        let b = match body.take() {
            Some(b) => Either::Left(b),
            None => Either::Right(Full::new(Bytes::new())),
        };
        // The last attempt takes the parts; earlier ones send a copy.
        let r = if attempt + 1 == attempts {
            Request::from_parts(
                std::mem::replace(&mut parts, Request::new(()).into_parts().0),
                b,
            )
        } else {
            Request::from_parts(parts.clone(), b)
        };
        if cluster.lb == Lb::LeastRequest {
            *pool
                .active
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(ep)
                .or_default() += 1;
        }
        let limit = attempt_limit(deadline, f.retry.per_try_timeout);
        let sent = pool.send(cluster, ep, r, h2);
        result = ctx
            .clock
            .bound(limit, &stats.upstream_rq_timeout, sent)
            .await;
        if cluster.lb == Lb::LeastRequest {
            if let Some(v) = pool
                .active
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_mut(&ep)
            {
                *v = v.saturating_sub(1);
            }
        }
        if tries.retry(ep, attempt + 1 < attempts, &result) {
            continue;
        }
        break;
    }
    stats.upstream_rq_active.fetch_sub(1, Ordering::Relaxed);
    match result {
        Ok(resp) => {
            let (mut p, b) = resp.into_parts();
            strip_hop(&mut p.headers);
            Response::from_parts(p, Either::Left(Either::Left(b)))
        }
        Err(e) => fail_response(e),
    }
}

fn fail_response(f: Fail) -> Response<RespBody> {
    match f {
        Fail::Timeout => local(504, "UT", "upstream request timeout"),
        Fail::Overflow => {
            let mut r = local(503, "UO", "upstream connect error or disconnect/reset before headers. reset reason: overflow");
            r.headers_mut().insert("x-envoy-overloaded", header::HeaderValue::from_static("true"));
            r
        }
        Fail::Reset => local(503, "UR", "upstream connect error or disconnect/reset before headers. reset reason: connection termination"),
        Fail::Refused => local(503, "UR", "upstream connect error or disconnect/reset before headers. reset reason: remote refused stream reset"),
        Fail::Connect => local(503, "UF", "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure"),
    }
}

/// A bodiless request over the inline HTTP/1.1 client (see [`crate::h1`]).
async fn forward_inline(job: Inline<'_>, pool: &Pool, n: usize, ctx: &Ctx) -> Response<RespBody> {
    let resp = exchange_inline(&job, pool, n, ctx).await;
    upstream_answered(resp, job.cluster, job.cookie, ctx)
}

async fn exchange_inline(job: &Inline<'_>, pool: &Pool, n: usize, ctx: &Ctx) -> Response<RespBody> {
    let Inline {
        f,
        cluster,
        head,
        is_head,
        attempts,
        hash,
        ..
    } = job;
    let (f, is_head, attempts, hash) = (*f, *is_head, *attempts, *hash);
    let stats = &cluster.stats;
    let active = stats.upstream_rq_active.fetch_add(1, Ordering::Relaxed);
    let _done = Done(&stats.upstream_rq_active);
    if active as usize >= cluster.max_requests {
        stats
            .upstream_rq_pending_overflow
            .fetch_add(1, Ordering::Relaxed);
        return fail_response(Fail::Overflow);
    }
    let deadline = f.timeout.map(|t| tokio::time::Instant::now() + t);
    // The common case takes a free place at once, with no timer.
    let _permit = match cluster.conns.try_acquire() {
        Ok(p) => Ok(p),
        Err(_) => match deadline {
            Some(d) => tokio::time::timeout_at(d, admit(cluster))
                .await
                .unwrap_or(Err(Fail::Timeout)),
            None => admit(cluster).await,
        },
    };
    let _permit = match _permit {
        Ok(p) => p,
        Err(e) => return fail_response(e),
    };
    let mut last = Fail::Connect;
    let mut tries = Attempts::new(f, cluster, deadline);
    for attempt in 0..attempts {
        if attempt > 0 {
            tries.back_off(attempt, n).await;
        }
        let Some(ep) = tries.pick(|| pool.pick_endpoint(cluster, ctx, hash)) else {
            return local(503, "UH", "no healthy upstream");
        };
        stats.upstream_rq_total.fetch_add(1, Ordering::Relaxed);
        let limit = attempt_limit(deadline, f.retry.per_try_timeout);
        let once = async {
            // A pooled connection the upstream has closed meanwhile is
            // retried on a fresh one, at once.
            if let Some(c) = pool.idle.take(ep, cluster) {
                match crate::h1::exchange(c, head, is_head, pool.idle.clone()).await {
                    Err(crate::h1::Error::Stale) => {}
                    Err(_) => return Err(Fail::Reset),
                    Ok(r) => return Ok(r),
                }
            }
            // Boxed: a TLS handshake's future is large, and this one is
            // only taken for a new connection; held inline, it would grow
            // (and make every request move) the whole request's future.
            let Some(stream) = Box::pin(cluster.open(ep)).await else {
                // As Envoy, a request counts once it has a connection
                // (taken back here, off the path of the requests that do).
                stats.upstream_rq_total.fetch_sub(1, Ordering::Relaxed);
                return Err(Fail::Connect);
            };
            crate::h1::exchange(
                crate::h1::Conn::new(ep, stream, cluster),
                head,
                is_head,
                pool.idle.clone(),
            )
            .await
            .map_err(|_| Fail::Reset)
        };
        let result = ctx
            .clock
            .bound(limit, &stats.upstream_rq_timeout, once)
            .await;
        if tries.retry(ep, attempt + 1 < attempts, &result) {
            if let Err(e) = result {
                last = e;
            }
            continue;
        }
        return match result {
            Ok(r) => {
                let (p, b) = r.into_parts();
                Response::from_parts(p, Either::Left(Either::Right(b)))
            }
            Err(e) => fail_response(e),
        };
    }
    fail_response(last)
}

/// Send copies of a bodiless request to the route's mirror clusters, as
/// Envoy does: `Host` gets `-shadow`, and the answers are dropped.
fn mirror(f: &Forward, pool: &Pool, parts: &http::request::Parts, n: usize, ctx: &Ctx) {
    for (i, (cluster, share)) in f.mirrors.iter().enumerate() {
        if !chance(*share, n.wrapping_add(7 + i)) {
            continue;
        }
        let Some(ep) = pool.pick_endpoint(cluster, ctx, None) else {
            continue;
        };
        let mut p = parts.clone();
        if let Some(h) = p.headers.get(header::HOST).and_then(|h| h.to_str().ok()) {
            let shadow = match h.rsplit_once(':') {
                Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => {
                    format!("{host}-shadow:{port}")
                }
                _ => format!("{h}-shadow"),
            };
            if let Ok(v) = shadow.parse() {
                p.headers.insert(header::HOST, v);
            }
        }
        let (cluster, idle) = (cluster.clone(), pool.idle.clone());
        tokio::spawn(async move {
            let Some(stream) = cluster.open(ep).await else {
                return;
            };
            cluster
                .stats
                .upstream_rq_total
                .fetch_add(1, Ordering::Relaxed);
            // The inline client, over plain TCP or TLS alike. The answer
            // is read to its end, so the connection can be reused.
            let head = crate::h1::request_head(&p);
            let is_head = p.method == http::Method::HEAD;
            let conn = crate::h1::Conn::new(ep, stream, &cluster);
            if let Ok(r) = crate::h1::exchange(conn, &head, is_head, idle).await {
                cluster.stats.status(r.status().as_u16());
                let _ = http_body_util::BodyExt::collect(r.into_body()).await;
            }
        });
    }
}

/// Takes one off a count of what is in flight (a cluster's
/// `upstream_rq_active`, its retries) however it ends.
struct Done<'a>(&'a std::sync::atomic::AtomicU64);

impl Drop for Done<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a request's attempts have come to: the endpoints they went to
/// (with `previous_hosts`, a retry picks again, up to `reselect` times,
/// while it draws one of them) and the cluster's retry in flight it holds.
struct Attempts<'c> {
    f: &'c Forward,
    cluster: &'c Cluster,
    deadline: Option<tokio::time::Instant>,
    /// Before the last attempt; filled only when a retry comes.
    before: Vec<SocketAddr>,
    last: Option<SocketAddr>,
    slot: Option<Done<'c>>,
}

impl<'c> Attempts<'c> {
    fn new(f: &'c Forward, cluster: &'c Cluster, deadline: Option<tokio::time::Instant>) -> Self {
        Attempts {
            f,
            cluster,
            deadline,
            before: Vec::new(),
            last: None,
            slot: None,
        }
    }

    /// Wait before retry number `attempt` as the route's policy says, and
    /// count the retry.
    async fn back_off(&self, attempt: u32, n: usize) {
        self.cluster
            .stats
            .upstream_rq_retry
            .fetch_add(1, Ordering::Relaxed);
        let random = cheap_random(n + attempt as usize) as u64;
        let wait = self.f.retry.back_off(attempt, random);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// The endpoint for the next attempt, from `draw` (the cluster's
    /// balancing).
    fn pick(&mut self, mut draw: impl FnMut() -> Option<SocketAddr>) -> Option<SocketAddr> {
        let mut ep = draw()?;
        if let Some(last) = self.last {
            ep = self.again(ep, last, &mut draw)?;
        }
        self.last = Some(ep);
        Some(ep)
    }

    /// A retry's pick: `ep`, or another while it is one already tried.
    #[cold]
    fn again(
        &mut self,
        mut ep: SocketAddr,
        last: SocketAddr,
        draw: &mut impl FnMut() -> Option<SocketAddr>,
    ) -> Option<SocketAddr> {
        self.before.push(last);
        for _ in 0..self.f.retry.reselect {
            if !self.before.contains(&ep) {
                break;
            }
            ep = draw()?;
        }
        Some(ep)
    }

    /// Count the answer of the attempt to `ep` and tell outlier detection;
    /// then whether it is retried: attempts are left (`more`), the policy
    /// retries it, the route's time is not up, and the cluster has room
    /// for one more retry in flight, held through the back-off and the
    /// retry. The clock is read last, as few requests get that far.
    fn retry<B>(&mut self, ep: SocketAddr, more: bool, result: &Result<Response<B>, Fail>) -> bool {
        let cluster = self.cluster;
        let outcome = result.as_ref().map(|r| r.status().as_u16());
        if let Ok(s) = &outcome {
            cluster.stats.status(*s);
        }
        report(cluster, ep, &outcome);
        let retry = more
            && self
                .f
                .retry
                .retriable(result.as_ref().map(|r| (r.status(), r.headers())))
            && self
                .deadline
                .is_none_or(|d| tokio::time::Instant::now() < d);
        if !retry {
            return false;
        }
        // The retry before this one has ended.
        drop(self.slot.take());
        if cluster.retries.fetch_add(1, Ordering::Relaxed) >= cluster.max_retries {
            cluster.retries.fetch_sub(1, Ordering::Relaxed);
            cluster
                .stats
                .upstream_rq_retry_overflow
                .fetch_add(1, Ordering::Relaxed);
            return false;
        }
        self.slot = Some(Done(&cluster.retries));
        true
    }
}

/// When one attempt must end: the route's deadline or the per-try timeout.
fn attempt_limit(
    deadline: Option<tokio::time::Instant>,
    per_try: Option<Duration>,
) -> Option<tokio::time::Instant> {
    // The clock is read only for a per-try timeout.
    match per_try.map(|p| tokio::time::Instant::now() + p) {
        Some(t) => Some(deadline.map_or(t, |d| d.min(t))),
        None => deadline,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(list: &[(&str, &str)]) -> HeaderMap {
        list.iter()
            .map(|(k, v)| {
                (
                    header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    header::HeaderValue::from_str(v).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn hop_by_hop_headers_are_stripped_with_those_connection_names() {
        let mut h = headers(&[
            ("host", "a"),
            ("connection", "close, x-private"),
            ("x-private", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("x-kept", "2"),
        ]);
        strip_hop(&mut h);
        let mut names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(names, ["host", "x-kept"]);
        // Only `keep-alive`, without `connection`, is stripped too.
        let mut h = headers(&[("host", "a"), ("keep-alive", "timeout=5")]);
        strip_hop(&mut h);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["host"]);
    }

    #[test]
    fn end_to_end_headers_pass_untouched() {
        let before = headers(&[("host", "a"), ("accept", "*/*"), ("x-b3-traceid", "1")]);
        let mut h = before.clone();
        strip_hop(&mut h);
        assert_eq!(h, before);
    }
}
