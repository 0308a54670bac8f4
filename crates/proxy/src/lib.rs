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
pub mod config;
mod h1;
pub mod http;
pub mod stats;

use anyhow::{Context, Result};
use config::{Config, ListenerKind};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The command line, with Envoy's meanings.
#[derive(Debug, Clone)]
pub struct Options {
    pub config_path: std::path::PathBuf,
    /// Worker threads (Envoy's `--concurrency`); 0 means one per core.
    pub concurrency: usize,
    /// How long a drain waits for open requests (Envoy's `--drain-time-s`).
    pub drain_time: Duration,
}

/// State every worker shares.
struct Shared {
    cfg: Arc<Config>,
    listener_stats: Vec<Arc<stats::ListenerStats>>,
    draining: AtomicBool,
    drain: tokio::sync::watch::Sender<bool>,
    requests: AtomicUsize,
}

/// Read, check and compile a bootstrap file.
pub fn load(path: &std::path::Path) -> Result<Config> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the bootstrap {}", path.display()))?;
    let b = bootstrap::parse(&text)?;
    Config::compile(&b, text)
}

/// Run until SIGTERM or SIGINT (then drain) or `/quitquitquit`.
pub fn run(opts: Options) -> Result<i32> {
    let cfg = Arc::new(load(&opts.config_path)?);
    let workers = if opts.concurrency == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    } else {
        opts.concurrency
    };
    let (drain, _) = tokio::sync::watch::channel(false);
    let shared = Arc::new(Shared {
        listener_stats: cfg
            .listeners
            .iter()
            .map(|_| Arc::new(stats::ListenerStats::default()))
            .collect(),
        cfg: cfg.clone(),
        draining: AtomicBool::new(false),
        drain,
        requests: AtomicUsize::new(0),
    });
    // Bind every listener once per worker before serving, so a port in use
    // is an error at start-up.
    let mut sockets = vec![];
    for _ in 0..workers {
        let mut mine = vec![];
        for l in &cfg.listeners {
            mine.push(
                bind(l.address).with_context(|| {
                    format!("listener {} cannot listen on {}", l.name, l.address)
                })?,
            );
        }
        sockets.push(mine);
    }
    let mut threads = vec![];
    for (w, mine) in sockets.into_iter().enumerate() {
        let shared = shared.clone();
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
        if let Some(addr) = cfg.admin {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("the admin port cannot listen on {addr}"))?;
            tokio::spawn(admin(l, shared.clone()));
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
        while tokio::time::Instant::now() < deadline
            && shared
                .listener_stats
                .iter()
                .any(|s| s.downstream_cx_active.load(Ordering::Relaxed) > 0)
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::Ok(())
    })?;
    Ok(0)
}

/// The most request headers a connection may send: Envoy's default
/// (`max_request_headers_kb`, 60 KiB); more gets 431.
const MAX_HEADERS: usize = 60 * 1024;

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

fn worker(shared: Arc<Shared>, sockets: Vec<std::net::TcpListener>) {
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
    rt.block_on(async move {
        let pool = Arc::new(http::Pool::default());
        let mut tasks = vec![];
        for (i, s) in sockets.into_iter().enumerate() {
            let Ok(l) = tokio::net::TcpListener::from_std(s) else {
                continue;
            };
            tasks.push(tokio::spawn(serve(shared.clone(), i, l, pool.clone())));
        }
        for t in tasks {
            let _ = t.await;
        }
        // Let open connections finish within the drain time.
        drained(&mut shared.drain.subscribe()).await;
        loop {
            let open: u64 = shared
                .listener_stats
                .iter()
                .map(|s| s.downstream_cx_active.load(Ordering::Relaxed))
                .sum();
            if open == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
}

/// Accept on one listener until the drain starts.
async fn serve(shared: Arc<Shared>, i: usize, l: tokio::net::TcpListener, pool: Arc<http::Pool>) {
    let listener = shared.cfg.listeners[i].clone();
    let st = shared.listener_stats[i].clone();
    let mut drain = shared.drain.subscribe();
    loop {
        let (stream, _) = tokio::select! {
            a = l.accept() => match a {
                Ok(a) => a,
                Err(_) => continue,
            },
            _ = drained(&mut drain) => return,
        };
        let _ = stream.set_nodelay(true);
        st.downstream_cx_total.fetch_add(1, Ordering::Relaxed);
        st.downstream_cx_active.fetch_add(1, Ordering::Relaxed);
        let (shared, st, pool, listener) =
            (shared.clone(), st.clone(), pool.clone(), listener.clone());
        tokio::spawn(async move {
            match &listener.kind {
                ListenerKind::Tcp { cluster, .. } => tcp(stream, cluster, &pool).await,
                ListenerKind::Http(h) => {
                    let svc = {
                        let (shared, st, pool, listener) =
                            (shared.clone(), st.clone(), pool.clone(), listener.clone());
                        hyper::service::service_fn(move |req| {
                            let (shared, st, pool, listener) =
                                (shared.clone(), st.clone(), pool.clone(), listener.clone());
                            async move {
                                st.downstream_rq_total.fetch_add(1, Ordering::Relaxed);
                                let n = shared.requests.fetch_add(1, Ordering::Relaxed);
                                let ListenerKind::Http(h) = &listener.kind else {
                                    unreachable!()
                                };
                                let log = h.access_log.map(|out| (access::Entry::begin(&req), out));
                                let mut r = http::handle(h, &pool, req, n).await;
                                if let Some((entry, stdout)) = log {
                                    entry.end(&r, stdout);
                                }
                                if shared.draining.load(Ordering::Relaxed) {
                                    r.headers_mut().insert(
                                        ::http::header::CONNECTION,
                                        ::http::HeaderValue::from_static("close"),
                                    );
                                }
                                Ok::<_, std::convert::Infallible>(r)
                            }
                        })
                    };
                    // HTTP/2 with prior knowledge starts with its preface
                    // ("PRI * HTTP/2.0"); anything else is HTTP/1.1. A peek
                    // decides, so each connection gets the one codec it
                    // speaks without a sniffing layer in the way.
                    let h2 = !h.http1_only && {
                        let mut first = [0u8; 3];
                        matches!(stream.peek(&mut first).await, Ok(3) if &first == b"PRI")
                    };
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let mut drain = shared.drain.subscribe();
                    if h2 {
                        let conn = hyper::server::conn::http2::Builder::new(
                            hyper_util::rt::TokioExecutor::new(),
                        )
                        .max_header_list_size(MAX_HEADERS as u32)
                        .serve_connection(io, svc);
                        tokio::pin!(conn);
                        tokio::select! {
                            _ = conn.as_mut() => {}
                            _ = drained(&mut drain) => {
                                conn.as_mut().graceful_shutdown();
                                let _ = conn.await;
                            }
                        }
                    } else {
                        let conn = hyper::server::conn::http1::Builder::new()
                            .max_buf_size(MAX_HEADERS)
                            .serve_connection(io, svc)
                            .with_upgrades();
                        tokio::pin!(conn);
                        tokio::select! {
                            _ = conn.as_mut() => {}
                            _ = drained(&mut drain) => {
                                conn.as_mut().graceful_shutdown();
                                let _ = conn.await;
                            }
                        }
                    }
                }
            }
            st.downstream_cx_active.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// TCP proxying: one upstream connection per downstream one.
async fn tcp(mut down: tokio::net::TcpStream, cluster: &config::Cluster, pool: &http::Pool) {
    let Some(ep) = pool.pick_endpoint(cluster) else {
        return;
    };
    cluster
        .stats
        .upstream_cx_total
        .fetch_add(1, Ordering::Relaxed);
    let Ok(Ok(mut up)) =
        tokio::time::timeout(cluster.connect_timeout, tokio::net::TcpStream::connect(ep)).await
    else {
        cluster
            .stats
            .upstream_cx_connect_fail
            .fetch_add(1, Ordering::Relaxed);
        return;
    };
    let _ = up.set_nodelay(true);
    let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
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
                        let names: Vec<(String, &stats::ListenerStats)> = shared
                            .cfg
                            .listeners
                            .iter()
                            .zip(&shared.listener_stats)
                            .map(|(l, s)| (l.name.clone(), &**s))
                            .collect();
                        let (status, body) = match path.as_str() {
                        "/ready" if shared.draining.load(Ordering::Relaxed) => (503, "DRAINING\n".to_owned()),
                        "/ready" => (200, "LIVE\n".to_owned()),
                        "/stats" => (200, stats::text(&shared.cfg, &names)),
                        "/stats/prometheus" => (200, stats::prometheus(&shared.cfg)),
                        "/config_dump" => (200, serde_yaml_ng::from_str::<serde_json::Value>(&shared.cfg.raw).ok().and_then(|v| serde_json::to_string_pretty(&v).ok()).unwrap_or_default()),
                        "/server_info" => (200, serde_json::json!({"version": concat!("mast-proxy/", env!("CARGO_PKG_VERSION")), "state": if shared.draining.load(Ordering::Relaxed) { "DRAINING" } else { "LIVE" }}).to_string()),
                        "/drain_listeners" | "/quitquitquit" if req.method() == ::http::Method::POST => {
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
