//! `bench/apiserver`: mast's API server beside etcd, in one run.
//!
//! mast is driven the way client-go drives Kubernetes: HTTPS, HTTP/2, JSON,
//! bearer token. etcd, the store under every Kubernetes API server, is driven
//! through its JSON gateway over HTTP/1.1 keep-alive. The comparison is
//! deliberately unfair to mast (a whole API server against a bare key-value
//! store): mast doing a full create in the time etcd does a bare put is the
//! bar. Figures print as a table with ratios; nothing here asserts timings.

use anyhow::{bail, Context, Result};
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Opts {
    mast: String,
    quick: bool,
}

fn parse_opts() -> Result<Opts> {
    let mut mast = None;
    let mut quick = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--mast" => mast = args.next(),
            "--quick" => quick = true,
            "-h" | "--help" => {
                println!("bench-apiserver --mast PATH [--quick]");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}; use --mast PATH [--quick]"),
        }
    }
    Ok(Opts {
        mast: mast.context("--mast PATH is required")?,
        quick,
    })
}

/// A child process killed when dropped.
struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

mod common;
use common::rss_mb;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(23790)
}

struct Mast {
    proc: Proc,
    port: u16,
    token: String,
    ca: String,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp_dir(tag: &str) -> Result<TempDir> {
    let p = std::env::temp_dir().join(format!("mast-bench-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p)?;
    Ok(TempDir(p))
}

fn start_mast(bin: &str) -> Result<Mast> {
    let dir = temp_dir("mast")?;
    let mut child = Command::new(bin)
        .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&dir.0)
        .env("MAST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {bin}"))?;
    let out = child.stdout.take().context("mast stdout")?;
    let mut port = 0;
    for line in BufReader::new(out).lines() {
        let line = line?;
        if let Some(url) = line.strip_prefix("mast API server is up: ") {
            port = url.rsplit(':').next().unwrap_or_default().trim().parse()?;
        }
        if line.trim().starts_with("export KUBECONFIG=") {
            break;
        }
    }
    if port == 0 {
        bail!("mast did not report its port");
    }
    let token = std::fs::read_to_string(dir.0.join("pki/admin.token"))?
        .trim()
        .to_owned();
    let ca = std::fs::read_to_string(dir.0.join("pki/ca.crt"))?;
    Ok(Mast {
        proc: Proc(child),
        port,
        token,
        ca,
        _dir: dir,
    })
}

type Sender = SendRequest<Full<Bytes>>;

async fn connect(m: &Mast) -> Result<Sender> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut m.ca.as_bytes()) {
        roots.add(c?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", m.port)).await?;
    tcp.set_nodelay(true)?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(
            rustls::pki_types::ServerName::try_from("localhost")?.to_owned(),
            tcp,
        )
        .await?;
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn call(
    s: &mut Sender,
    token: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
    accept: &str,
) -> Result<(u16, Bytes)> {
    let req = http::Request::builder()
        .method(method)
        .uri(format!("https://localhost{path}"))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .header("accept", accept)
        .body(Full::new(
            body.map(|b| Bytes::from(b.to_string())).unwrap_or_default(),
        ))?;
    s.ready().await?;
    let resp = s.send_request(req).await?;
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await?.to_bytes();
    Ok((status, bytes))
}

fn pod(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": "bench", "tier": "web"}},
        "spec": {"containers": [{"name": "web", "image": "nginx:1.25", "ports": [{"containerPort": 80}],
            "env": [{"name": "MODE", "value": "bench"}], "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}})
}

#[derive(Default, Clone)]
struct Stats {
    lat: Vec<Duration>,
    errors: usize,
    elapsed: Duration,
}

impl Stats {
    fn pct(&self, p: f64) -> f64 {
        if self.lat.is_empty() {
            return f64::NAN;
        }
        let mut v = self.lat.clone();
        v.sort();
        let i = ((v.len() as f64 - 1.0) * p).round() as usize;
        v[i].as_secs_f64() * 1000.0
    }
    fn rate(&self) -> f64 {
        self.lat.len() as f64 / self.elapsed.as_secs_f64()
    }
}

/// Open loop: start one create every 1/rate seconds, whatever the answers.
/// Open loop: start request `i` at `i / rate` seconds, whatever the
/// answers; `send(i)` resolves to whether it succeeded.
async fn open_loop<F, Fut>(rate: u32, secs: u32, send: F) -> Stats
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = bool> + Send + 'static,
{
    let total = (rate * secs) as usize;
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(total);
    for i in 0..total {
        tokio::time::sleep_until((start + Duration::from_secs_f64(i as f64 / rate as f64)).into())
            .await;
        let fut = send(i);
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let ok = fut.await;
            (t.elapsed(), ok)
        }));
    }
    let mut st = Stats::default();
    for t in tasks {
        if let Ok((d, ok)) = t.await {
            if ok {
                st.lat.push(d);
            } else {
                st.errors += 1;
            }
        }
    }
    st.elapsed = start.elapsed();
    st
}

async fn mast_creates_at_rate(m: &Mast, conns: &[Sender], ns: &str, rate: u32, secs: u32) -> Stats {
    open_loop(rate, secs, |i| {
        let mut s = conns[i % conns.len()].clone();
        let token = m.token.clone();
        let path = format!("/api/v1/namespaces/{ns}/pods");
        let body = pod(&format!("rate-{i}"));
        async move {
            matches!(
                call(
                    &mut s,
                    &token,
                    "POST",
                    &path,
                    Some(&body),
                    "application/json"
                )
                .await,
                Ok((201, _))
            )
        }
    })
    .await
}

/// Closed loop: `workers` clients each sending as fast as answers come.
async fn mast_closed_loop<F>(
    m: &Mast,
    conns: &[Sender],
    workers: usize,
    secs: u64,
    make: F,
) -> Stats
where
    F: Fn(usize, usize) -> (String, String, Option<Value>) + Send + Sync + 'static,
{
    let make = Arc::new(make);
    let start = Instant::now();
    let deadline = start + Duration::from_secs(secs);
    let mut tasks = vec![];
    for w in 0..workers {
        let mut s = conns[w % conns.len()].clone();
        let token = m.token.clone();
        let make = make.clone();
        tasks.push(tokio::spawn(async move {
            let mut st = Stats::default();
            let mut i = 0;
            while Instant::now() < deadline {
                let (method, path, body) = make(w, i);
                let t = Instant::now();
                match call(
                    &mut s,
                    &token,
                    &method,
                    &path,
                    body.as_ref(),
                    "application/json",
                )
                .await
                {
                    Ok((200 | 201, _)) => st.lat.push(t.elapsed()),
                    _ => st.errors += 1,
                }
                i += 1;
            }
            st
        }));
    }
    let mut all = Stats::default();
    for t in tasks {
        if let Ok(st) = t.await {
            all.lat.extend(st.lat);
            all.errors += st.errors;
        }
    }
    all.elapsed = start.elapsed();
    all
}

struct Etcd {
    _proc: Proc,
    port: u16,
    _dir: TempDir,
}

fn start_etcd() -> Result<Option<Etcd>> {
    let Ok(path) = which("etcd") else {
        return Ok(None);
    };
    let dir = temp_dir("etcd")?;
    let (client, peer) = (free_port(), free_port());
    let child = Command::new(path)
        .args(["--name", "bench", "--data-dir"])
        .arg(dir.0.join("data"))
        .args([
            "--listen-client-urls",
            &format!("http://127.0.0.1:{client}"),
        ])
        .args([
            "--advertise-client-urls",
            &format!("http://127.0.0.1:{client}"),
        ])
        .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
        .args([
            "--initial-advertise-peer-urls",
            &format!("http://127.0.0.1:{peer}"),
        ])
        .args([
            "--initial-cluster",
            &format!("bench=http://127.0.0.1:{peer}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    Ok(Some(Etcd {
        _proc: Proc(child),
        port: client,
        _dir: dir,
    }))
}

/// Wait until etcd has a leader and answers writes, then warm it up.
async fn etcd_ready(c: &Http1, port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if etcd_call(
            c,
            port,
            "put",
            &json!({"key": b64("/warmup"), "value": b64("x")}),
        )
        .await
        .is_ok()
        {
            for i in 0..50 {
                etcd_call(
                    c,
                    port,
                    "put",
                    &json!({"key": b64(&format!("/warmup/{i}")), "value": b64("x")}),
                )
                .await?;
            }
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("etcd did not become ready within 30s")
}

fn which(name: &str) -> Result<String> {
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = format!("{dir}/{name}");
        if std::path::Path::new(&p).exists() {
            return Ok(p);
        }
    }
    bail!("{name} not found")
}

type Http1 = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

async fn etcd_call(c: &Http1, port: u16, op: &str, body: &Value) -> Result<Bytes> {
    let req = http::Request::post(format!("http://127.0.0.1:{port}/v3/kv/{op}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))?;
    let resp = c.request(req).await?;
    if !resp.status().is_success() {
        bail!("etcd answered {}", resp.status());
    }
    Ok(resp.into_body().collect().await?.to_bytes())
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

async fn etcd_puts_at_rate(c: &Http1, port: u16, rate: u32, secs: u32) -> Stats {
    let value = pod("x").to_string();
    open_loop(rate, secs, |i| {
        let c = c.clone();
        let body =
            json!({"key": b64(&format!("/registry/pods/bench/rate-{i}")), "value": b64(&value)});
        async move { etcd_call(&c, port, "put", &body).await.is_ok() }
    })
    .await
}

fn row(name: &str, mast: f64, peer: f64, unit: &str, target: &str) {
    let ratio = if peer.is_finite() && peer > 0.0 {
        format!("{:.2}x", mast / peer)
    } else {
        "-".into()
    };
    let peer = if peer.is_finite() {
        format!("{peer:.2}")
    } else {
        "-".into()
    };
    println!("{name:<44} {mast:>10.2} {peer:>10} {ratio:>8}  {unit:<6} {target}");
}

#[tokio::main]
async fn main() -> Result<()> {
    let opts = parse_opts()?;
    let (rate_secs, fill, watchers, events) = if opts.quick {
        (3, 1000, 20, 5)
    } else {
        (10, 10_000, 100, 20)
    };
    println!(
        "bench/apiserver: mast {} beside etcd, on {} cores",
        opts.mast,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );

    let m = start_mast(&opts.mast)?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_rss = rss_mb(&m.proc.0.id().to_string());
    let mut conns = vec![];
    for _ in 0..8 {
        conns.push(connect(&m).await?);
    }
    let ns = "bench";
    call(
        &mut conns[0],
        &m.token,
        "POST",
        "/api/v1/namespaces",
        Some(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})),
        "application/json",
    )
    .await?;

    eprintln!("creates at 200/s for {rate_secs}s...");
    let rate = mast_creates_at_rate(&m, &conns, ns, 200, rate_secs).await;
    eprintln!("closed-loop creates and gets...");
    let token_ns = ns.to_owned();
    let creates = mast_closed_loop(&m, &conns, 32, 5, move |w, i| {
        (
            "POST".into(),
            format!("/api/v1/namespaces/{token_ns}/pods"),
            Some(pod(&format!("burst-{w}-{i}"))),
        )
    })
    .await;
    let gets = mast_closed_loop(&m, &conns, 32, 5, move |w, i| {
        (
            "GET".into(),
            format!(
                "/api/v1/namespaces/bench/pods/rate-{}",
                (w * 131 + i * 7) % 400
            ),
            None,
        )
    })
    .await;

    // Fill to `fill` pods in a namespace of their own.
    eprintln!("filling {fill} pods...");
    call(
        &mut conns[0],
        &m.token,
        "POST",
        "/api/v1/namespaces",
        Some(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "fill"}})),
        "application/json",
    )
    .await?;
    let mut tasks = vec![];
    for w in 0..64 {
        let mut s = conns[w % conns.len()].clone();
        let token = m.token.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            while i < fill {
                let _ = call(
                    &mut s,
                    &token,
                    "POST",
                    "/api/v1/namespaces/fill/pods",
                    Some(&pod(&format!("p-{i:05}"))),
                    "application/json",
                )
                .await;
                i += 64;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let full_rss = rss_mb(&m.proc.0.id().to_string());
    let mut list_ms = vec![];
    let mut table_ms = vec![];
    let mut count = 0;
    for _ in 0..5 {
        let t = Instant::now();
        let (_, body) = call(
            &mut conns[0],
            &m.token,
            "GET",
            "/api/v1/namespaces/fill/pods",
            None,
            "application/json",
        )
        .await?;
        list_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        count = serde_json::from_slice::<Value>(&body)?["items"]
            .as_array()
            .map(Vec::len)
            .unwrap_or(0);
        let t = Instant::now();
        call(
            &mut conns[0],
            &m.token,
            "GET",
            "/api/v1/namespaces/fill/pods?limit=500",
            None,
            "application/json;as=Table;v=v1;g=meta.k8s.io",
        )
        .await?;
        table_ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    list_ms.sort_by(|a, b| a.total_cmp(b));
    table_ms.sort_by(|a, b| a.total_cmp(b));

    // Watch fan-out: `watchers` watches, then `events` creates; latency from
    // sending each create to each watcher receiving it.
    eprintln!("watch fan-out to {watchers} watchers...");
    call(
        &mut conns[0],
        &m.token,
        "POST",
        "/api/v1/namespaces",
        Some(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "watch"}})),
        "application/json",
    )
    .await?;
    let (_, body) = call(
        &mut conns[0],
        &m.token,
        "GET",
        "/api/v1/namespaces/watch/configmaps",
        None,
        "application/json",
    )
    .await?;
    let rv = serde_json::from_slice::<Value>(&body)?["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or("0")
        .to_owned();
    let sent: Arc<std::sync::Mutex<std::collections::HashMap<String, Instant>>> =
        Default::default();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Duration>();
    for w in 0..watchers {
        let mut s = conns[w % conns.len()].clone();
        let token = m.token.clone();
        let rv = rv.clone();
        let sent = sent.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let req = http::Request::get(format!("https://localhost/api/v1/namespaces/watch/configmaps?watch=true&resourceVersion={rv}&timeoutSeconds=120"))
                .header("authorization", format!("Bearer {token}"))
                .body(Full::new(Bytes::new()))
                .expect("request");
            if s.ready().await.is_err() {
                return;
            }
            let Ok(resp) = s.send_request(req).await else {
                return;
            };
            let mut body = resp.into_body();
            let mut buf = Vec::new();
            while let Some(Ok(frame)) = body.frame().await {
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                buf.extend_from_slice(&data);
                while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=nl).collect();
                    if let Ok(ev) = serde_json::from_slice::<Value>(&line) {
                        let name = ev["object"]["metadata"]["name"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned();
                        if let Some(t0) = sent.lock().expect("lock").get(&name) {
                            let _ = tx.send(t0.elapsed());
                        }
                    }
                }
            }
        });
    }
    drop(tx);
    tokio::time::sleep(Duration::from_secs(2)).await;
    for i in 0..events {
        let name = format!("ev-{i}");
        sent.lock()
            .expect("lock")
            .insert(name.clone(), Instant::now());
        call(
            &mut conns[0],
            &m.token,
            "POST",
            "/api/v1/namespaces/watch/configmaps",
            Some(&json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}})),
            "application/json",
        )
        .await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut fan = Stats::default();
    let deadline = Instant::now() + Duration::from_secs(10);
    while fan.lat.len() < watchers * events && Instant::now() < deadline {
        if let Ok(Some(d)) = tokio::time::timeout(Duration::from_millis(500), rx.recv()).await {
            fan.lat.push(d);
        }
    }
    let delivered = fan.lat.len();
    drop(conns);
    let final_rss = rss_mb(&m.proc.0.id().to_string());

    // The peer: etcd, with the same payloads.
    eprintln!("etcd...");
    let (mut e_rate, mut e_list) = (Stats::default(), f64::NAN);
    if let Some(etcd) = start_etcd()? {
        let c: Http1 =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
        etcd_ready(&c, etcd.port).await?;
        e_rate = etcd_puts_at_rate(&c, etcd.port, 200, rate_secs).await;
        let value = pod("x").to_string();
        let mut tasks = vec![];
        for w in 0..64 {
            let c = c.clone();
            let value = value.clone();
            let port = etcd.port;
            tasks.push(tokio::spawn(async move {
                let mut i = w;
                while i < fill {
                    let _ = etcd_call(&c, port, "put", &json!({"key": b64(&format!("/registry/pods/fill/p-{i:05}")), "value": b64(&value)})).await;
                    i += 64;
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        let mut ms = vec![];
        for _ in 0..5 {
            let t = Instant::now();
            etcd_call(&c, etcd.port, "range", &json!({"key": b64("/registry/pods/fill/"), "range_end": b64("/registry/pods/fill0")})).await?;
            ms.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        ms.sort_by(|a, b| a.total_cmp(b));
        e_list = ms[ms.len() / 2];
    } else {
        println!("(etcd not installed: peer columns are empty; bench/apiserver installs etcd-server when run as root)");
    }

    println!();
    println!(
        "{:<44} {:>10} {:>10} {:>8}  {:<6} target / reference",
        "measure", "mast", "etcd", "ratio", "unit"
    );
    row(
        "create p50 at 200/s (etcd: bare put)",
        rate.pct(0.5),
        e_rate.pct(0.5),
        "ms",
        "",
    );
    row(
        "create p99 at 200/s (etcd: bare put)",
        rate.pct(0.99),
        e_rate.pct(0.99),
        "ms",
        "< 10 ms (Kubernetes SLO: 1 s)",
    );
    row(
        "create rate achieved",
        rate.rate(),
        e_rate.rate(),
        "req/s",
        &format!("200 offered; mast errors {}", rate.errors),
    );
    row(
        "create throughput, 32 clients",
        creates.rate(),
        f64::NAN,
        "req/s",
        &format!(
            "p50 {:.2} ms, p99 {:.2} ms",
            creates.pct(0.5),
            creates.pct(0.99)
        ),
    );
    row(
        "get throughput, 32 clients",
        gets.rate(),
        f64::NAN,
        "req/s",
        &format!("p50 {:.2} ms, p99 {:.2} ms", gets.pct(0.5), gets.pct(0.99)),
    );
    row(
        &format!("LIST of {count} pods, median (etcd: range)"),
        list_ms[list_ms.len() / 2],
        e_list,
        "ms",
        "< 300 ms",
    );
    row(
        &format!("LIST of {count} pods, max"),
        list_ms[list_ms.len() - 1],
        f64::NAN,
        "ms",
        "",
    );
    row(
        "kubectl-style table page (500 rows), median",
        table_ms[table_ms.len() / 2],
        f64::NAN,
        "ms",
        "",
    );
    row(
        &format!("watch fan-out p50, {watchers} watchers"),
        fan.pct(0.5),
        f64::NAN,
        "ms",
        &format!("{delivered}/{} events delivered", watchers * events),
    );
    row(
        &format!("watch fan-out p99, {watchers} watchers"),
        fan.pct(0.99),
        f64::NAN,
        "ms",
        "",
    );
    row(
        "RSS idle",
        idle_rss,
        f64::NAN,
        "MB",
        "< 60 MB; k3s server ~1600 MB",
    );
    row(
        &format!("RSS holding {count} pods"),
        full_rss,
        f64::NAN,
        "MB",
        "",
    );
    row("RSS after the watch test", final_rss, f64::NAN, "MB", "");
    println!();
    println!(
        "ratio of idle RSS to a k3s server (1600 MB): {:.3}",
        idle_rss / 1600.0
    );
    Ok(())
}
