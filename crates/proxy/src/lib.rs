//! mast proxy: a Rust data plane that runs Envoy's v3 bootstrap
//! (`mast proxy -c FILE`), so one file runs Envoy or mast proxy.
//!
//! Implemented so far (issue #6, first part): static listeners and
//! clusters from the bootstrap (YAML or JSON, strictly parsed: what mast
//! proxy does not implement is refused by name, see [`bootstrap`]), HTTP/1.1
//! and h2c downstream, HTTP/1.1 or HTTP/2 upstream over pooled keep-alive
//! connections, TCP proxying, Envoy's routing (domains, prefix/path/regex
//! and header matches, weighted clusters, direct responses, redirects,
//! prefix and host rewrites, timeouts, retries with back-off), round-robin,
//! random and least-request balancing, connection and request limits, an
//! admin port (`/ready`, `/stats`, `/stats/prometheus`, `/config_dump`,
//! `/drain_listeners`, `/quitquitquit`), access logs in Envoy's default
//! format, and a bounded drain on SIGTERM.
//!
//! Each worker (`--concurrency N`) is a thread with its own single-threaded
//! runtime, its own `SO_REUSEPORT` listening sockets and its own upstream
//! connections, so workers share nothing on the request path but counters.
//! Bodiless requests take an inline HTTP/1.1 client (`h1.rs`) that runs
//! in the downstream connection's task. ADS (the mesh), TLS and the rest of
//! the issue come next (docs/proxy.md).

mod access;
pub mod bootstrap;
mod coalesce;
pub mod config;
mod h1;
mod health;
pub mod http;
pub mod istio;
mod lifetime;
mod outlier;
pub mod retry;
pub mod stats;
mod streams;
pub mod tls;
mod transport;
pub mod xds;

use anyhow::{Context, Result};
use arc_swap::ArcSwap;
use config::{Config, Network, Routes};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The command line, with Envoy's meanings.
#[derive(Debug, Clone)]
pub struct Options {
    /// The bootstrap file (`-c`).
    pub config_path: Option<std::path::PathBuf>,
    /// The bootstrap inline (`--config-yaml`).
    pub config_yaml: Option<String>,
    /// Worker threads (Envoy's `--concurrency`); 0 means one per core.
    pub concurrency: usize,
    /// How long a drain waits for open requests (Envoy's `--drain-time-s`).
    pub drain_time: Duration,
}

/// State every worker shares.
struct Shared {
    /// The running configuration, swapped whole by updates.
    cfg: ArcSwap<Config>,
    /// Bumped on every swap, so workers bind and close listeners.
    version: tokio::sync::watch::Sender<u64>,
    /// Holds a whole first configuration (at once without ADS).
    initialized: AtomicBool,
    draining: AtomicBool,
    drain: tokio::sync::watch::Sender<bool>,
    requests: AtomicUsize,
    /// Open downstream connections, over all listeners.
    open: AtomicU64,
    /// Istio's metrics, for an Istio-shaped node.
    istio: Option<Arc<istio::Metrics>>,
}

/// Read, check and compile a bootstrap (a file, or inline text).
pub fn load(opts: &Options) -> Result<Config> {
    let text = match (&opts.config_yaml, &opts.config_path) {
        (Some(t), _) => t.clone(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .with_context(|| format!("reading the bootstrap {}", path.display()))?,
        (None, None) => anyhow::bail!("give the bootstrap with -c FILE or --config-yaml TEXT"),
    };
    let b = bootstrap::parse(&text)?;
    Config::compile(&b, text)
}

/// Start the active health checks of clusters that have them, once per
/// cluster (they end with it). Runs in the main thread's runtime.
fn start_health_checks(cfg: &Config) {
    for c in cfg.clusters.values() {
        for (i, h) in c.health.iter().enumerate() {
            if h.start() {
                tokio::spawn(health::run(Arc::downgrade(c), i));
            }
        }
    }
}

/// Applies what ADS delivers.
struct Updater(Arc<Shared>);

impl xds::Apply for Updater {
    fn static_secrets(&self) -> std::collections::BTreeSet<String> {
        let b = &self.0.cfg.load().bootstrap.static_resources;
        bootstrap::ads_secret_names(b.clusters.iter(), b.listeners.iter())
    }

    fn apply(&self, resources: &xds::Resources) -> Result<()> {
        let cur = self.0.cfg.load_full();
        if cur.dynamic == *resources {
            return Ok(());
        }
        let next = Config::build(&cur.bootstrap, cur.raw.clone(), resources, Some(&cur))?;
        start_health_checks(&next);
        self.0.cfg.store(Arc::new(next));
        self.0.version.send_modify(|v| *v += 1);
        Ok(())
    }

    fn initialized(&self) {
        if !self.0.initialized.swap(true, Ordering::SeqCst) {
            let cfg = self.0.cfg.load();
            eprintln!(
                "mast proxy: initialized from ADS: {} listener(s), {} route configuration(s), {} cluster(s)",
                cfg.listeners.len(),
                cfg.routes.len(),
                cfg.clusters.len()
            );
        }
    }
}

/// Run until SIGTERM or SIGINT (then drain) or `/quitquitquit`.
pub fn run(opts: Options) -> Result<i32> {
    let cfg = Arc::new(load(&opts)?);
    let workers = if opts.concurrency == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    } else {
        opts.concurrency
    };
    let (drain, _) = tokio::sync::watch::channel(false);
    let ads = cfg.ads_endpoint();
    if cfg.bootstrap.dynamic_resources.is_some() && ads.is_none() {
        anyhow::bail!("the ADS cluster has no endpoint");
    }
    let shared = Arc::new(Shared {
        cfg: ArcSwap::new(cfg.clone()),
        version: tokio::sync::watch::channel(0).0,
        initialized: AtomicBool::new(ads.is_none()),
        draining: AtomicBool::new(false),
        drain,
        requests: AtomicUsize::new(0),
        open: AtomicU64::new(0),
        istio: cfg
            .bootstrap
            .node
            .as_ref()
            .and_then(|n| istio::Workload::from_node(&n.metadata))
            .map(|w| Arc::new(istio::Metrics::new(w))),
    });
    // Bind every static listener once per worker before serving, so a port
    // in use is an error at start-up.
    let mut sockets = vec![];
    for _ in 0..workers {
        let mut mine = vec![];
        for l in cfg.listeners.iter().filter(|l| l.bind) {
            let s = bind(l.address)
                .with_context(|| format!("listener {} cannot listen on {}", l.name, l.address))?;
            mine.push((l.name.clone(), l.address, s));
        }
        sockets.push(mine);
    }
    // One worker runs on the main thread, beside ADS and the admin port:
    // a process of one thread, as HAProxy's `nbthread 1` is, whose file
    // descriptors the kernel looks up without reference counting, and
    // which wakes no other thread. More workers get a thread each.
    let mut on_main = None;
    let mut threads = vec![];
    for (w, mine) in sockets.into_iter().enumerate() {
        let shared = shared.clone();
        if workers == 1 {
            on_main = Some(mine);
            continue;
        }
        threads.push(
            std::thread::Builder::new()
                .name(format!("worker-{w}"))
                .spawn(move || worker(shared, mine))?,
        );
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        if let Some(mine) = on_main.take() {
            tokio::spawn(serve_worker(shared.clone(), mine));
        }
        if let Some(addr) = cfg.admin {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("the admin port cannot listen on {addr}"))?;
            tokio::spawn(admin(l, shared.clone()));
        }
        start_health_checks(&cfg);
        if let Some(ep) = ads {
            let node = serde_yaml_ng::from_str::<serde_json::Value>(&cfg.raw)
                .ok()
                .and_then(|v| v.get("node").cloned())
                .unwrap_or_else(|| serde_json::json!({}));
            eprintln!("mast proxy: configuration from ADS at {ep}");
            tokio::spawn(xds::run(ep, node, Arc::new(Updater(shared.clone()))));
        }
        eprintln!(
            "mast proxy: {} listener(s), {} cluster(s), {workers} worker(s)",
            cfg.listeners.len(),
            cfg.clusters.len()
        );
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut quit = shared.drain.subscribe();
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
            _ = quit.wait_for(|q| *q) => {}
        }
        eprintln!("mast proxy: draining for at most {:?}", opts.drain_time);
        shared.draining.store(true, Ordering::SeqCst);
        let _ = shared.drain.send(true);
        let deadline = tokio::time::Instant::now() + opts.drain_time;
        while tokio::time::Instant::now() < deadline && shared.open.load(Ordering::Relaxed) > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::Ok(())
    })?;
    Ok(0)
}

/// The most request headers a connection may send: Envoy's default
/// (`max_request_headers_kb`, 60 KiB); more gets 431.
pub(crate) const MAX_HEADERS: usize = 60 * 1024;

/// Resolves once the drain has started.
async fn drained(rx: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|d| *d).await;
}

/// A listening socket with `SO_REUSEPORT`, so each worker accepts its own
/// share of connections.
fn bind(addr: std::net::SocketAddr) -> Result<std::net::TcpListener> {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    Ok(s.into())
}

/// A worker thread: its own single-threaded runtime running [`serve_worker`].
fn worker(
    shared: Arc<Shared>,
    sockets: Vec<(String, std::net::SocketAddr, std::net::TcpListener)>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mast proxy: a worker could not start: {e}");
            return;
        }
    };
    rt.block_on(serve_worker(shared, sockets));
}

/// A worker's listeners and connections, until the drain ends.
async fn serve_worker(
    shared: Arc<Shared>,
    sockets: Vec<(String, std::net::SocketAddr, std::net::TcpListener)>,
) {
    {
        let pool = Arc::new(http::Pool::default());
        // tokio's timer wakes the event loop (a write to its eventfd)
        // whenever a new timer is due before every timer it knew of when
        // it last waited, which is every timer when it knew of none. A
        // steady one-second tick means it always knows of one that is
        // sooner than a request's timeout. Each tick also closes the
        // upstream connections idle too long or past their longest life.
        let (swept, config) = (pool.clone(), shared.clone());
        let tick = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                lifetime::tick();
                let cfg = config.cfg.load();
                swept.sweep(&|c| {
                    cfg.clusters
                        .get(&c.name)
                        .is_some_and(|now| Arc::ptr_eq(now, c))
                });
            }
        });
        type Bound =
            std::collections::HashMap<String, (std::net::SocketAddr, tokio::task::JoinHandle<()>)>;
        let mut bound: Bound = Default::default();
        for (name, addr, s) in sockets {
            if let Ok(l) = tokio::net::TcpListener::from_std(s) {
                let task = tokio::spawn(serve(shared.clone(), name.clone(), l, pool.clone()));
                bound.insert(name, (addr, task));
            }
        }
        let mut version = shared.version.subscribe();
        let mut drain = shared.drain.subscribe();
        loop {
            // Listeners come and go with the configuration; connections
            // they accepted stay until they end.
            let cfg = shared.cfg.load_full();
            bound.retain(|name, (addr, task)| {
                let keep = cfg
                    .listener(name)
                    .is_some_and(|l| l.bind && l.address == *addr);
                if !keep {
                    task.abort();
                }
                keep
            });
            for l in cfg.listeners.iter().filter(|l| l.bind) {
                if bound.contains_key(&l.name) {
                    continue;
                }
                match bind(l.address).and_then(|s| Ok(tokio::net::TcpListener::from_std(s)?)) {
                    Ok(s) => {
                        let task =
                            tokio::spawn(serve(shared.clone(), l.name.clone(), s, pool.clone()));
                        bound.insert(l.name.clone(), (l.address, task));
                    }
                    Err(e) => eprintln!(
                        "mast proxy: listener {} cannot listen on {}: {e:#}",
                        l.name, l.address
                    ),
                }
            }
            tokio::select! {
                r = version.changed() => if r.is_err() { break },
                _ = drained(&mut drain) => break,
            }
        }
        for (_, (_, task)) in bound {
            task.abort();
        }
        tick.abort();
        // Let open connections finish within the drain time.
        while shared.open.load(Ordering::Relaxed) > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Counts a connection as open until it ends.
struct Open(Arc<Shared>, Arc<stats::ListenerStats>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
        self.1.downstream_cx_active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The destination a capture (`REDIRECT`) rewrote: `SO_ORIGINAL_DST`.
fn original_dst(s: &tokio::net::TcpStream) -> Option<std::net::SocketAddr> {
    let r = socket2::SockRef::from(s);
    r.original_dst_v4()
        .or_else(|_| r.original_dst_v6())
        .ok()
        .and_then(|a| a.as_socket())
}

/// The TLS inspector: peek until the ClientHello is in, for at most 5 s.
async fn inspect_tls(s: &tokio::net::TcpStream) -> (Option<String>, bool) {
    let mut buf = vec![0u8; 16 * 1024 + 5];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let n = match tokio::time::timeout_at(deadline, s.peek(&mut buf)).await {
            Ok(Ok(n)) => n,
            _ => return (None, false),
        };
        match tls::client_hello(&buf[..n]) {
            tls::Hello::NotTls => return (None, false),
            tls::Hello::Tls(sni) => return (sni, true),
            tls::Hello::NeedMore if n == 0 || tokio::time::Instant::now() >= deadline => {
                return (None, false)
            }
            // More of the hello is on its way: look again shortly.
            tls::Hello::NeedMore => tokio::time::sleep(Duration::from_millis(2)).await,
        }
    }
}

/// Accept on one listener until the drain starts (or the listener goes).
async fn serve(
    shared: Arc<Shared>,
    name: String,
    l: tokio::net::TcpListener,
    pool: Arc<http::Pool>,
) {
    let mut drain = shared.drain.subscribe();
    loop {
        let (stream, _) = tokio::select! {
            a = l.accept() => match a {
                Ok(a) => a,
                Err(_) => continue,
            },
            _ = drained(&mut drain) => return,
        };
        let cfg = shared.cfg.load_full();
        let Some(listener) = cfg.listener(&name).cloned() else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let st = listener.stats.clone();
        st.downstream_cx_total.fetch_add(1, Ordering::Relaxed);
        st.downstream_cx_active.fetch_add(1, Ordering::Relaxed);
        shared.open.fetch_add(1, Ordering::Relaxed);
        let open = Open(shared.clone(), st);
        tokio::spawn(connection(
            shared.clone(),
            cfg,
            listener,
            stream,
            pool.clone(),
            open,
        ));
    }
}

/// One downstream connection: find its listener and filter chain, then
/// proxy TCP or serve HTTP.
async fn connection(
    shared: Arc<Shared>,
    cfg: Arc<Config>,
    mut listener: Arc<config::Listener>,
    stream: tokio::net::TcpStream,
    pool: Arc<http::Pool>,
    _open: Open,
) {
    let (Ok(mut dst), Ok(peer)) = (stream.local_addr(), stream.peer_addr()) else {
        return;
    };
    if listener.use_original_dst || listener.original_dst {
        if let Some(od) = original_dst(&stream) {
            dst = od;
        }
    }
    // `use_original_dst`: the listener of the original destination takes
    // the connection, if there is one; else this listener's chains do.
    if listener.use_original_dst {
        if let Some(target) = cfg.by_destination(dst) {
            listener = target.clone();
        }
    }
    let (sni, tls) = if listener.tls_inspector {
        inspect_tls(&stream).await
    } else {
        (None, false)
    };
    let Some(chain) = listener.chain(dst.port(), sni.as_deref(), tls) else {
        return; // No chain: Envoy closes the connection.
    };
    let mut ctx = http::Ctx {
        dst,
        peer,
        istio: None,
        clock: Default::default(),
        tls: chain.tls.is_some(),
        peer_principal: None,
    };
    let http2_ok = matches!(&chain.net, Network::Http(h) if !h.http1_only);
    let Some(tls) = &chain.tls else {
        // HTTP/2 with prior knowledge starts with its preface ("PRI *
        // HTTP/2.0"); anything else is HTTP/1.1. A peek decides, so each
        // connection gets the one codec it speaks without a sniffing
        // layer in the way.
        let h2 = http2_ok && {
            let mut first = [0u8; 3];
            matches!(stream.peek(&mut first).await, Ok(3) if &first == b"PRI")
        };
        let stream = tokio_util::either::Either::Left(stream);
        return serve_chain(shared, &listener, chain, stream, h2, pool, ctx).await;
    };
    let st = &listener.stats;
    let mut s = match tokio::time::timeout(TLS_HANDSHAKE, tls.accept(stream)).await {
        Ok(Ok(s)) => {
            st.ssl_handshake.fetch_add(1, Ordering::Relaxed);
            s
        }
        _ => {
            st.ssl_connection_error.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    ctx.peer_principal = s
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| transport::uri_san(c.first()?))
        .map(Arc::from);
    // ALPN says which HTTP; without it, the first bytes do, as Envoy's
    // codec AUTO sniffs them.
    let alpn = s.get_ref().1.alpn_protocol().map(|p| p == b"h2");
    let mut head = Vec::new();
    let h2 = match alpn {
        Some(h2) => http2_ok && h2,
        None if http2_ok => {
            use tokio::io::AsyncReadExt;
            let mut buf = [0u8; 64];
            while head.len() < 3 {
                match tokio::time::timeout(TLS_HANDSHAKE, s.read(&mut buf)).await {
                    Ok(Ok(n)) if n > 0 => head.extend_from_slice(&buf[..n]),
                    _ => break,
                }
            }
            head.starts_with(b"PRI")
        }
        None => false,
    };
    let s = tokio_util::either::Either::Right(Box::new(transport::Rewind::new(head.into(), s)));
    serve_chain(shared, &listener, chain, s, h2, pool, ctx).await
}

/// The longest a downstream TLS handshake (and, without ALPN, the first
/// bytes after it) may take. Envoy sets none by default; a bound keeps
/// connections that never finish one from piling up.
const TLS_HANDSHAKE: std::time::Duration = std::time::Duration::from_secs(10);

/// A connection's filter chain, over plain TCP or TLS.
async fn serve_chain(
    shared: Arc<Shared>,
    listener: &config::Listener,
    chain: &config::Chain,
    stream: transport::DownIo,
    h2: bool,
    pool: Arc<http::Pool>,
    mut ctx: http::Ctx,
) {
    match &chain.net {
        Network::Tcp {
            targets,
            total,
            outbound,
            ..
        } => {
            let n = shared.requests.fetch_add(1, Ordering::Relaxed);
            let cluster = http::pick_weighted(targets, *total, n).clone();
            let service = if *outbound {
                istio::service_of_cluster(&cluster.name).to_owned()
            } else {
                String::new()
            };
            if let Some(m) = &shared.istio {
                m.tcp(*outbound, &service, ctx.peer_principal.as_deref(), None);
            }
            let bytes = tcp(stream, &cluster, &pool, &ctx).await;
            if let Some(m) = &shared.istio {
                m.tcp(
                    *outbound,
                    &service,
                    ctx.peer_principal.as_deref(),
                    Some(bytes),
                );
            }
        }
        Network::Http(h) => {
            if let Some(m) = &shared.istio {
                ctx.istio = Some((m.clone(), h.outbound));
            }
            let st = listener.stats.clone();
            http_connection(shared, h.clone(), st, stream, h2, pool, ctx).await
        }
    }
}

/// What the requests of one downstream HTTP connection share, so that a
/// request takes one reference to it rather than one to each part.
struct Downstream {
    shared: Arc<Shared>,
    h: Arc<config::HttpListener>,
    st: Arc<stats::ListenerStats>,
    pool: Arc<http::Pool>,
    ctx: http::Ctx,
    /// HTTP/1.1 only: request heads read and responses finished, which the
    /// slowloris watch ([`HeadWatch`]) reads.
    watch: Option<Progress>,
}

#[derive(Default)]
struct Progress {
    heads: AtomicU64,
    done: AtomicU64,
}

/// A response body that counts as finished, for the slowloris watch, once
/// hyper is done with it (written whole, or dropped).
struct Watched<B> {
    inner: B,
    conn: Option<Arc<Downstream>>,
}

impl<B> Drop for Watched<B> {
    fn drop(&mut self) {
        if let Some(p) = self.conn.as_ref().and_then(|c| c.watch.as_ref()) {
            p.done.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for Watched<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<B::Data>, B::Error>>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Slowloris: resolves once an HTTP/1.1 connection has waited `limit` for
/// a request's head with no request in flight (idle keep-alive included,
/// as with hyper's own header timer).
///
/// hyper's `header_read_timeout` arms a timer for every request: an
/// allocation, a timer-wheel entry and its removal, about 6% of the
/// proxy's user-space instructions per request (`bench/proxy-instr`). This
/// watch is one timer per connection that looks at two counters every
/// quarter of the limit, so a connection is cut off between 1 and 1.25
/// times the limit after its last request, and never before. It shares
/// its task with the connection, so it is polled at every wake-up of the
/// connection; it polls its timer only once the timer has fired (an
/// atomic load), as the timer keeps the task's waker from its last poll.
struct HeadWatch<'a> {
    progress: &'a Progress,
    limit: Duration,
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
    armed: bool,
    seen: (u64, u64),
    quiet: tokio::time::Instant,
}

impl<'a> HeadWatch<'a> {
    fn new(progress: &'a Progress, limit: Duration) -> Self {
        let now = tokio::time::Instant::now();
        HeadWatch {
            progress,
            limit,
            sleep: Box::pin(tokio::time::sleep_until(now + Self::step(limit))),
            armed: false,
            seen: (0, 0),
            quiet: now,
        }
    }

    fn step(limit: Duration) -> Duration {
        (limit / 4).max(Duration::from_millis(1))
    }
}

impl std::future::Future for HeadWatch<'_> {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        let w = &mut *self;
        if w.armed && !w.sleep.is_elapsed() {
            return std::task::Poll::Pending;
        }
        loop {
            if w.sleep.as_mut().poll(cx).is_pending() {
                w.armed = true;
                return std::task::Poll::Pending;
            }
            let now = tokio::time::Instant::now();
            let p = (
                w.progress.heads.load(Ordering::Relaxed),
                w.progress.done.load(Ordering::Relaxed),
            );
            if p != w.seen || p.0 != p.1 {
                w.seen = p;
                w.quiet = now;
            } else if now.duration_since(w.quiet) >= w.limit {
                return std::task::Poll::Ready(());
            }
            w.sleep.as_mut().reset(now + Self::step(w.limit));
        }
    }
}

async fn http_connection(
    shared: Arc<Shared>,
    h: Arc<config::HttpListener>,
    st: Arc<stats::ListenerStats>,
    stream: transport::DownIo,
    h2: bool,
    pool: Arc<http::Pool>,
    ctx: http::Ctx,
) {
    let conn = Arc::new(Downstream {
        shared,
        h,
        st,
        pool,
        ctx,
        watch: (!h2).then(Progress::default),
    });
    let svc = {
        let conn = conn.clone();
        hyper::service::service_fn(move |mut req: ::http::Request<hyper::body::Incoming>| {
            let c = conn.clone();
            async move {
                let Downstream {
                    shared,
                    h,
                    st,
                    pool,
                    ctx,
                    watch,
                } = &*c;
                if let Some(p) = watch {
                    p.heads.fetch_add(1, Ordering::Relaxed);
                }
                st.downstream_rq_total.fetch_add(1, Ordering::Relaxed);
                let n = shared.requests.fetch_add(1, Ordering::Relaxed);
                let log = h.access_log.map(|out| (access::Entry::begin(&req), out));
                // Routes over RDS are looked up per request, so an update
                // reaches connections that are already open.
                let rds;
                let table = match &h.routes {
                    Routes::Inline(t) => Some(&**t),
                    Routes::Rds(name) => {
                        rds = shared.cfg.load().routes.get(name).cloned();
                        rds.as_deref()
                    }
                };
                // Istio's metrics: who the peer is (the source's header on
                // inbound requests), what was asked and how long it took.
                let seen = ctx.istio.as_ref().map(|_| {
                    let peer = if h.outbound {
                        None
                    } else {
                        req.headers_mut().remove(istio::PEER)
                    };
                    (peer, request_facts(&req), std::time::Instant::now())
                });
                let mut r = match table {
                    // Boxed: hyper moves the request's future (into its
                    // dispatcher, or into a task per HTTP/2 stream); a box
                    // moves as a pointer.
                    Some(t) => Box::pin(http::handle(h, t, pool, req, n, ctx)).await,
                    None => http::local(404, "NR", ""),
                };
                let mut pending = None;
                if let (Some((m, outbound)), Some((peer_in, facts, started))) = (&ctx.istio, seen) {
                    let peer = if *outbound {
                        r.headers_mut().remove(istio::PEER)
                    } else {
                        r.headers_mut().insert(istio::PEER, m.me_header.clone());
                        peer_in
                    };
                    let service = match r.extensions().get::<http::Upstream>() {
                        Some(u) if *outbound => istio::service_of_cluster(&u.0.name).to_owned(),
                        _ => facts.service(&m.me.namespace),
                    };
                    let flags = r
                        .headers()
                        .get("x-mast-response-flags")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned();
                    pending = Some(Box::new(istio::Pending::new(
                        m.clone(),
                        *outbound,
                        (peer, ctx.peer_principal.clone()),
                        service,
                        facts.grpc,
                        (r.status(), r.headers()),
                        flags,
                        facts.bytes,
                        started,
                    )));
                }
                if let Some((entry, stdout)) = log {
                    entry.end(&r, stdout);
                }
                if shared.draining.load(Ordering::Relaxed) {
                    r.headers_mut().insert(
                        ::http::header::CONNECTION,
                        ::http::HeaderValue::from_static("close"),
                    );
                }
                // Istio's metrics are recorded at the body's end.
                let body = |b| Watched {
                    inner: istio::Metered::new(b, pending),
                    conn: watch.is_some().then(|| c.clone()),
                };
                Ok::<_, std::convert::Infallible>(r.map(body))
            }
        })
    };
    let shared = &conn.shared;
    if h2 {
        // Responses of several streams leave in one write (see coalesce).
        let io = hyper_util::rt::TokioIo::new(coalesce::Coalesce::new(stream));
        // Its streams run in this task (see streams).
        let exec = streams::Local::default();
        let serve = hyper::server::conn::http2::Builder::new(exec.clone())
            .max_header_list_size(MAX_HEADERS as u32)
            .serve_connection(io, svc);
        let serve = streams::WithStreams::new(serve, &exec);
        until_drained(serve, |c| c.get_mut().conn().graceful_shutdown(), shared).await;
    } else {
        let io = hyper_util::rt::TokioIo::new(stream);
        let serve = hyper::server::conn::http1::Builder::new()
            .max_buf_size(MAX_HEADERS)
            .serve_connection(io, svc)
            .with_upgrades();
        // Slowloris: a connection whose headers take too long is closed.
        let limit = conn.h.headers_timeout;
        let watch = async {
            match &conn.watch {
                Some(p) => HeadWatch::new(p, limit).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = until_drained(serve, |c| c.graceful_shutdown(), shared) => {}
            _ = watch => {}
        }
    }
}

/// Serve a connection to its end; when the drain starts, shut it down
/// gracefully and let it finish.
async fn until_drained<C: std::future::Future>(
    conn: C,
    shutdown: impl FnOnce(std::pin::Pin<&mut C>),
    shared: &Shared,
) {
    tokio::pin!(conn);
    let mut drain = shared.drain.subscribe();
    let signal = Gate {
        inner: std::pin::pin!(drained(&mut drain)),
        open: &shared.draining,
        armed: false,
    };
    tokio::select! {
        biased;
        _ = conn.as_mut() => {}
        _ = signal => {
            shutdown(conn.as_mut());
            let _ = conn.await;
        }
    }
}

/// A future that is polled at every wake-up of its task but needs polling
/// only once `open` is set: after its first poll has left its waker
/// (registered until it fires), it costs one atomic load per wake-up.
/// For the drain signal, whose own poll takes a lock (tokio's `Notify`)
/// and would otherwise run for every request of every connection.
struct Gate<'a, F> {
    inner: F,
    open: &'a AtomicBool,
    armed: bool,
}

impl<F: std::future::Future + Unpin> std::future::Future for Gate<'_, F> {
    type Output = F::Output;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        if self.armed && !self.open.load(Ordering::Acquire) {
            return std::task::Poll::Pending;
        }
        self.armed = true;
        std::pin::Pin::new(&mut self.inner).poll(cx)
    }
}

/// What Istio's metrics need of a request before it is handed on.
struct Facts {
    host: String,
    grpc: bool,
    bytes: u64,
}

impl Facts {
    /// The Service asked for, as a full name (`reviews` from namespace
    /// `default` is `reviews.default.svc.cluster.local`).
    fn service(&self, ns: &str) -> String {
        let host = self
            .host
            .rsplit_once(':')
            .filter(|(_, p)| p.chars().all(|c| c.is_ascii_digit()))
            .map(|(h, _)| h)
            .unwrap_or(&self.host);
        match host.matches('.').count() {
            _ if host.is_empty() || host.parse::<std::net::IpAddr>().is_ok() => "unknown".into(),
            0 => format!("{host}.{ns}.svc.cluster.local"),
            1 => format!("{host}.svc.cluster.local"),
            _ => host.to_owned(),
        }
    }
}

fn request_facts<B>(req: &::http::Request<B>) -> Facts {
    Facts {
        host: req
            .headers()
            .get(::http::header::HOST)
            .and_then(|v| v.to_str().ok())
            .or_else(|| req.uri().authority().map(|a| a.as_str()))
            .unwrap_or("")
            .to_owned(),
        grpc: req
            .headers()
            .get(::http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc")),
        bytes: content_length(req.headers()),
    }
}

fn content_length(h: &::http::HeaderMap) -> u64 {
    h.get(::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// TCP proxying: one upstream connection per downstream one.
/// Returns the bytes received from and sent to the downstream side.
async fn tcp<D: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut down: D,
    cluster: &config::Cluster,
    pool: &http::Pool,
    ctx: &http::Ctx,
) -> (u64, u64) {
    let Some(ep) = pool.pick_endpoint(cluster, ctx, None) else {
        return (0, 0);
    };
    let Some(mut up) = cluster.open(ep).await else {
        return (0, 0);
    };
    tokio::io::copy_bidirectional(&mut down, &mut up)
        .await
        .unwrap_or((0, 0))
}

/// The bootstrap and what ADS delivered, as JSON.
fn config_dump(cfg: &Config) -> String {
    let bootstrap = serde_yaml_ng::from_str::<serde_json::Value>(&cfg.raw).unwrap_or_default();
    let d = |t: &str| -> Vec<serde_json::Value> {
        cfg.dynamic
            .raw
            .get(t)
            .into_iter()
            .flatten()
            .filter_map(|a| xds::to_json(a).ok())
            .collect()
    };
    let v = serde_json::json!({
        "bootstrap": bootstrap,
        "dynamic_listeners": d(xds::LISTENER),
        "dynamic_route_configs": d(xds::ROUTE),
        "dynamic_active_clusters": d(xds::CLUSTER),
        "dynamic_endpoint_configs": d(xds::ENDPOINT),
    });
    serde_json::to_string_pretty(&v).unwrap_or_default()
}

/// The admin port, with Envoy's paths.
async fn admin(l: tokio::net::TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = l.accept().await else {
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(
                move |req: ::http::Request<hyper::body::Incoming>| {
                    let shared = shared.clone();
                    async move {
                        let path = req.uri().path().to_owned();
                        let cfg = shared.cfg.load_full();
                        let (status, body) = match path.as_str() {
                        "/ready" if shared.draining.load(Ordering::Relaxed) => (503, "DRAINING\n".to_owned()),
                        "/ready" if !shared.initialized.load(Ordering::Relaxed) => (503, "PRE_INITIALIZING\n".to_owned()),
                        "/ready" => (200, "LIVE\n".to_owned()),
                        "/stats" => (200, stats::text(&cfg)),
                        "/stats/prometheus" => {
                            let mut text = stats::prometheus(&cfg);
                            if let Some(m) = &shared.istio {
                                m.prometheus(&mut text);
                            }
                            (200, text)
                        }
                        "/config_dump" => (200, config_dump(&cfg)),
                        "/server_info" => (200, serde_json::json!({"version": concat!("mast-proxy/", env!("CARGO_PKG_VERSION")), "state": if shared.draining.load(Ordering::Relaxed) { "DRAINING" } else { "LIVE" }}).to_string()),
                        "/drain_listeners" | "/quitquitquit" if req.method() == ::http::Method::POST => {
                            // The flag first: connections look at it before
                            // they look at the signal (see `Gate`).
                            shared.draining.store(true, Ordering::SeqCst);
                            let _ = shared.drain.send(true);
                            (200, "OK\n".to_owned())
                        }
                        _ => (404, "not found\n".to_owned()),
                    };
                        Ok::<_, std::convert::Infallible>(http::local(status, "", &body))
                    }
                },
            );
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
        });
    }
}
