//! The agent's HTTPS endpoint, the kubelet API's role: the API server
//! proxies `kubectl logs` and `kubectl exec` here. Callers must present a
//! client certificate signed by the cluster CA (the API server's).
//!
//! - `GET /pods/{ns}/{name}/log?container=&follow=&previous=&tailLines=&timestamps=&sinceSeconds=&limitBytes=`
//! - `GET|POST /pods/{ns}/{name}/exec?container=&command=...&stdin=&stdout=&stderr=&tty=`,
//!   a WebSocket speaking `v5.channel.k8s.io` or `v4.channel.k8s.io`.
//! - `GET|POST /pods/{ns}/{name}/portforward`: SPDY/3.1, plain or tunneled
//!   in a WebSocket (see [`crate::portforward`]).

use crate::pods::{PodShared, Runtime};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::{Request, Response, StatusCode};
use serde_json::json;
use std::convert::Infallible;
use std::io::{BufRead, Seek, SeekFrom};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

type Body = BoxBody<Bytes, std::io::Error>;

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

/// A Kubernetes Status answer that kubectl prints.
fn status(code: StatusCode, reason: &str, msg: &str) -> Response<Body> {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": msg, "reason": reason, "code": code.as_u16()});
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(full(body.to_string()))
        .unwrap_or_default()
}

fn tls_config(ca_der: &[Vec<u8>]) -> anyhow::Result<rustls::ServerConfig> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for c in ca_der {
        roots.add(CertificateDer::from(c.clone()))?;
    }
    if roots.is_empty() {
        anyhow::bail!("the agent needs the cluster CA to check who calls it: pass --certificate-authority, or a kubeconfig with certificate-authority-data");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()?;
    // The serving certificate is self-signed, as the kubelet's is by
    // default; the API server does not check it (like kube-apiserver
    // without --kubelet-certificate-authority).
    let key = rcgen::KeyPair::generate()?;
    let cert = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])?
        .self_signed(&key)?;
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )?;
    Ok(cfg)
}

/// Bind the agent's endpoint; returns the port it listens on.
pub async fn start(
    rt: Arc<Runtime>,
    listen: SocketAddr,
    ca_der: &[Vec<u8>],
) -> anyhow::Result<u16> {
    let tls = tokio_rustls::TlsAcceptor::from(Arc::new(tls_config(ca_der)?));
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| {
        anyhow::anyhow!("the agent cannot listen on {listen}: {e}; pick another --port")
    })?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let (tls, rt) = (tls.clone(), rt.clone());
            tokio::spawn(async move {
                let Ok(stream) = tls.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(move |req| {
                    let rt = rt.clone();
                    async move { Ok::<_, Infallible>(route(rt, req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    Ok(port)
}

fn params(query: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect()
}

fn param<'a>(p: &'a [(String, String)], k: &str) -> Option<&'a str> {
    p.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str())
}

fn flag(p: &[(String, String)], k: &str) -> bool {
    matches!(param(p, k), Some("1" | "true" | "True"))
}

async fn route(rt: Arc<Runtime>, req: Request<hyper::body::Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let q = params(req.uri().query().unwrap_or(""));
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match parts.as_slice() {
        ["healthz"] => Response::new(full("ok")),
        ["pods", ns, name, op @ ("log" | "exec" | "portforward")] => {
            let key = format!("{ns}/{name}");
            let pod = rt
                .pods
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&key)
                .cloned();
            let Some(pod) = pod else {
                return status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    &format!("pod {name:?} is not running on this node"),
                );
            };
            if *op == "portforward" {
                return port_forward(req, pod, name);
            }
            let container = match pick_container(&pod, param(&q, "container"), name) {
                Ok(c) => c,
                Err(r) => return *r,
            };
            if *op == "log" {
                logs(pod, &container, &q, name).await
            } else {
                exec(rt, req, pod, &container, &q, name).await
            }
        }
        _ => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("no such agent endpoint {path}"),
        ),
    }
}

fn pick_container(
    pod: &PodShared,
    want: Option<&str>,
    pod_name: &str,
) -> Result<String, Box<Response<Body>>> {
    let cs = pod.containers.lock().unwrap_or_else(|e| e.into_inner());
    match want.filter(|w| !w.is_empty()) {
        Some(w) if cs.contains_key(w) => Ok(w.to_owned()),
        Some(w) => Err(Box::new(status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &format!("container {w} is not valid for pod {pod_name}"),
        ))),
        None => {
            let apps: Vec<&String> = cs.iter().filter(|(_, c)| !c.init).map(|(n, _)| n).collect();
            match apps.as_slice() {
                [one] => Ok((*one).clone()),
                [] => Err(Box::new(status(StatusCode::BAD_REQUEST, "BadRequest", &format!("pod {pod_name} has no running containers yet")))),
                many => Err(Box::new(status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    &format!(
                        "a container name must be specified for pod {pod_name}, choose one of: [{}]",
                        many.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" ")
                    ),
                ))),
            }
        }
    }
}

/// One record of a CRI log file.
struct LogLine<'a> {
    ts: &'a str,
    partial: bool,
    text: &'a [u8],
}

fn parse_line(l: &[u8]) -> Option<LogLine<'_>> {
    let mut it = l.splitn(4, |b| *b == b' ');
    let ts = std::str::from_utf8(it.next()?).ok()?;
    let _stream = it.next()?;
    let tag = it.next()?;
    let text = it.next().unwrap_or(b"");
    Some(LogLine {
        ts,
        partial: tag == b"P",
        text,
    })
}

fn render(l: &LogLine, timestamps: bool, out: &mut Vec<u8>) {
    if timestamps {
        out.extend_from_slice(l.ts.as_bytes());
        out.push(b' ');
    }
    out.extend_from_slice(l.text);
    if !l.partial {
        out.push(b'\n');
    }
}

/// Read the records of a container's log files (rotated one first).
fn read_records(path: &Path) -> Vec<Vec<u8>> {
    let mut out = vec![];
    for p in [crate::sys::rotated(path), path.to_owned()] {
        if let Ok(f) = std::fs::File::open(&p) {
            out.extend(
                std::io::BufReader::new(f)
                    .split(b'\n')
                    .map_while(Result::ok),
            );
        }
    }
    out
}

async fn logs(
    pod: Arc<PodShared>,
    container: &str,
    q: &[(String, String)],
    pod_name: &str,
) -> Response<Body> {
    let info = pod
        .containers
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(container)
        .cloned()
        .unwrap_or_default();
    let previous = flag(q, "previous");
    let restart = if previous {
        if info.restart_count == 0 {
            return status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                &format!(
                    "previous terminated container {container:?} in pod {pod_name:?} not found"
                ),
            );
        }
        info.restart_count - 1
    } else {
        info.restart_count
    };
    let path = pod.log_path(container, restart);
    // (Just after a rotation the current file may not exist yet.)
    if !path.exists() && !crate::sys::rotated(&path).exists() {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &format!("container {container:?} in pod {pod_name:?} is waiting to start: ContainerCreating"),
        );
    }
    let timestamps = flag(q, "timestamps");
    let tail: Option<usize> = param(q, "tailLines")
        .and_then(|t| t.parse::<i64>().ok())
        .filter(|t| *t >= 0)
        .map(|t| t as usize);
    let limit: Option<usize> = param(q, "limitBytes").and_then(|t| t.parse().ok());
    let since = param(q, "sinceSeconds")
        .and_then(|s| s.parse::<i64>().ok())
        .map(|s| chrono::Utc::now() - chrono::Duration::seconds(s))
        .or_else(|| {
            param(q, "sinceTime")
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.to_utc())
        });
    let keep = |l: &LogLine| {
        since.is_none_or(|s| {
            chrono::DateTime::parse_from_rfc3339(l.ts)
                .map(|t| t >= s)
                .unwrap_or(true)
        })
    };
    let records = read_records(&path);
    let mut lines: Vec<LogLine> = records
        .iter()
        .filter_map(|r| parse_line(r))
        .filter(|l| keep(l))
        .collect();
    if let Some(n) = tail {
        // Count whole lines: a partial record belongs to the line after it.
        let mut full_lines = 0;
        let mut start = lines.len();
        while start > 0 {
            if !lines[start - 1].partial {
                if full_lines == n {
                    break;
                }
                full_lines += 1;
            }
            start -= 1;
        }
        lines.drain(..start);
    }
    let mut out = Vec::new();
    for l in &lines {
        render(l, timestamps, &mut out);
    }
    if let Some(max) = limit {
        out.truncate(max);
    }
    let follow = flag(q, "follow") && !previous;
    if !follow {
        return Response::builder()
            .header("content-type", "text/plain")
            .body(full(out))
            .unwrap_or_default();
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(16);
    let container = container.to_owned();
    tokio::spawn(async move {
        if !out.is_empty() && tx.send(Ok(Frame::data(Bytes::from(out)))).await.is_err() {
            return;
        }
        let _ = follow_file(&pod, &container, restart, &path, timestamps, &tx).await;
    });
    let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    Response::builder()
        .header("content-type", "text/plain")
        .body(BodyExt::boxed(body))
        .unwrap_or_default()
}

/// Stream what is appended to a log file until its container instance ends.
async fn follow_file(
    pod: &PodShared,
    container: &str,
    restart: u32,
    path: &Path,
    timestamps: bool,
    tx: &tokio::sync::mpsc::Sender<Result<Frame<Bytes>, std::io::Error>>,
) -> std::io::Result<()> {
    let mut f = std::fs::File::open(path)?;
    let mut pos = f.seek(SeekFrom::End(0))?;
    let mut pending: Vec<u8> = vec![];
    let mut idle_after_exit = 0;
    loop {
        let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        if len < pos {
            // Rotated: the rest of the old file is in `.1`; start the new one.
            f = std::fs::File::open(path)?;
            pos = 0;
        }
        let mut buf = vec![];
        f.seek(SeekFrom::Start(pos))?;
        let n = std::io::Read::read_to_end(&mut f, &mut buf)?;
        pos += n as u64;
        if n > 0 {
            pending.extend_from_slice(&buf);
            let mut out = vec![];
            while let Some(i) = pending.iter().position(|b| *b == b'\n') {
                let rec: Vec<u8> = pending.drain(..=i).collect();
                if let Some(l) = parse_line(&rec[..rec.len() - 1]) {
                    render(&l, timestamps, &mut out);
                }
            }
            if !out.is_empty() && tx.send(Ok(Frame::data(Bytes::from(out)))).await.is_err() {
                return Ok(());
            }
            idle_after_exit = 0;
            continue;
        }
        if tx.is_closed() {
            return Ok(());
        }
        let info = pod
            .containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(container)
            .cloned();
        let ended =
            info.is_none_or(|i| i.restart_count != restart || i.pid.is_none_or(|p| !p.alive()));
        if ended {
            idle_after_exit += 1;
            if idle_after_exit > 3 {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];

async fn exec(
    rt: Arc<Runtime>,
    mut req: Request<hyper::body::Incoming>,
    pod: Arc<PodShared>,
    container: &str,
    q: &[(String, String)],
    pod_name: &str,
) -> Response<Body> {
    let command: Vec<String> = q
        .iter()
        .filter(|(k, _)| k == "command")
        .map(|(_, v)| v.clone())
        .collect();
    if command.is_empty() {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "you must specify at least 1 command",
        );
    }
    let pid = pod
        .containers
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(container)
        .and_then(|c| c.pid)
        .filter(|p| p.alive());
    let Some(pid) = pid else {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &format!("unable to upgrade connection: container not found ({container:?} in pod {pod_name:?} is not running)"),
        );
    };
    let opts = ExecOpts {
        stdin: flag(q, "stdin"),
        stdout: flag(q, "stdout"),
        stderr: flag(q, "stderr"),
        tty: flag(q, "tty"),
    };
    let exe = rt.exe.clone();
    let upgrade = upgrade_of(&req);
    let h = req.headers();
    if upgrade == "spdy/3.1" {
        // kubectl 1.29 and older: SPDY, protocol offered in X-Stream-Protocol-Version.
        let offered: Vec<String> = h
            .get_all("x-stream-protocol-version")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|s| s.trim().to_owned())
            .collect();
        if !offered.iter().any(|p| p == SPDY_EXEC) {
            return status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                &format!("none of the offered stream protocols {offered:?} is supported; mast speaks {SPDY_EXEC} over SPDY"),
            );
        }
        return accept_spdy(&mut req, SPDY_EXEC, move |io| {
            spdy_session(io, exe, pid.pid, opts, command)
        });
    }
    let Some(key) = h
        .get("sec-websocket-key")
        .cloned()
        .filter(|_| upgrade == "websocket")
    else {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "exec needs an upgrade to a WebSocket (v5.channel.k8s.io) or to SPDY/3.1",
        );
    };
    let offered = offered_protocols(h);
    let Some(proto) = PROTOCOLS
        .iter()
        .find(|p| offered.iter().any(|o| o == *p))
        .copied()
    else {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &format!("none of the offered subprotocols {offered:?} is supported; mast speaks {PROTOCOLS:?}"),
        );
    };
    accept_websocket(&mut req, key.as_bytes(), proto, move |ws| async move {
        let v5 = proto == PROTOCOLS[0];
        let p = match ExecProc::spawn(&exe, pid.pid, opts.tty, opts.stdin, command) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "could not start an exec");
                return;
            }
        };
        if let Err(e) = session(ws, p, v5).await {
            tracing::debug!(error = %e, "exec session ended with an error");
        }
    })
}

/// The stream protocol of exec over SPDY.
const SPDY_EXEC: &str = "v4.channel.k8s.io";

type Ws = tokio_tungstenite::WebSocketStream<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>>;

/// The WebSocket subprotocols a client offers.
fn offered_protocols(h: &hyper::HeaderMap) -> Vec<String> {
    h.get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_owned())
        .collect()
}

/// Finish a WebSocket upgrade in the background, then run `session` on it.
/// Returns the 101 answer.
fn accept_websocket<F, Fut>(
    req: &mut Request<hyper::body::Incoming>,
    key: &[u8],
    protocol: &str,
    session: F,
) -> Response<Body>
where
    F: FnOnce(Ws) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key);
    let upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            hyper_util::rt::TokioIo::new(upgraded),
            tokio_tungstenite::tungstenite::protocol::Role::Server,
            None,
        )
        .await;
        session(ws).await;
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("upgrade", "websocket")
        .header("connection", "Upgrade")
        .header("sec-websocket-accept", accept)
        .header("sec-websocket-protocol", protocol)
        .body(full(""))
        .unwrap_or_default()
}

/// A command running inside a container for `kubectl exec`: its output as
/// (channel, bytes) with 1 = stdout and 2 = stderr, its stdin, and with a
/// TTY the terminal to resize.
struct ExecProc {
    child: tokio::process::Child,
    output: tokio::sync::mpsc::Receiver<(u8, Vec<u8>)>,
    stdin: Option<Box<dyn tokio::io::AsyncWrite + Unpin + Send>>,
    pty: Option<std::os::fd::OwnedFd>,
    readers: Vec<tokio::task::JoinHandle<()>>,
    command: Vec<String>,
}

impl ExecProc {
    fn spawn(
        exe: &Path,
        pid: i32,
        tty: bool,
        want_stdin: bool,
        command: Vec<String>,
    ) -> anyhow::Result<Self> {
        let mut cmd = tokio::process::Command::new(exe);
        cmd.arg("nsexec").arg(format!("--target={pid}"));
        if tty {
            cmd.arg("--tty");
        }
        cmd.arg("--").args(&command).kill_on_drop(true);
        let (tx, output) = tokio::sync::mpsc::channel::<(u8, Vec<u8>)>(32);
        let reader = |mut r: Box<dyn tokio::io::AsyncRead + Unpin + Send>, ch: u8| {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 32 * 1024];
                loop {
                    match r.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if tx.send((ch, buf[..n].to_vec())).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            })
        };
        let mut p = if tty {
            let pty = nix::pty::openpty(None, None)?;
            let slave = std::fs::File::from(pty.slave);
            cmd.stdin(slave.try_clone()?)
                .stdout(slave.try_clone()?)
                .stderr(slave);
            let child = cmd.spawn()?;
            drop(cmd);
            let master = std::fs::File::from(pty.master);
            let readers = vec![reader(
                Box::new(tokio::fs::File::from_std(master.try_clone()?)),
                1,
            )];
            ExecProc {
                child,
                output,
                pty: Some(master.try_clone()?.into()),
                stdin: None,
                readers,
                command,
            }
            .with_stdin(want_stdin.then(|| Box::new(tokio::fs::File::from_std(master)) as _))
        } else {
            cmd.stdin(if want_stdin {
                std::process::Stdio::piped()
            } else {
                std::process::Stdio::null()
            })
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
            let mut child = cmd.spawn()?;
            let mut readers = vec![];
            if let Some(o) = child.stdout.take() {
                readers.push(reader(Box::new(o), 1));
            }
            if let Some(e) = child.stderr.take() {
                readers.push(reader(Box::new(e), 2));
            }
            let stdin = child.stdin.take().map(|i| Box::new(i) as _);
            ExecProc {
                child,
                output,
                pty: None,
                stdin,
                readers,
                command,
            }
        };
        drop(tx);
        p.readers.shrink_to_fit();
        Ok(p)
    }

    fn with_stdin(mut self, stdin: Option<Box<dyn tokio::io::AsyncWrite + Unpin + Send>>) -> Self {
        self.stdin = stdin;
        self
    }

    async fn write_stdin(&mut self, data: &[u8]) {
        if let Some(w) = self.stdin.as_mut() {
            if w.write_all(data).await.is_err() || w.flush().await.is_err() {
                self.stdin = None;
            }
        }
    }

    /// Apply a terminal size message, `{"Width": 80, "Height": 24}`.
    fn resize(&self, msg: &[u8]) {
        let Some(m) = &self.pty else { return };
        // Several messages may arrive in one read.
        for size in serde_json::Deserializer::from_slice(msg)
            .into_iter::<serde_json::Value>()
            .flatten()
        {
            let cols = size["Width"].as_u64().unwrap_or(80) as u16;
            let rows = size["Height"].as_u64().unwrap_or(24) as u16;
            crate::sys::set_winsize(m, cols, rows);
        }
    }

    /// What the command wrote after it ended, for up to 2 s.
    async fn drain(
        &mut self,
        mut send: impl FnMut(u8, Vec<u8>) -> futures::future::BoxFuture<'static, bool>,
    ) {
        self.stdin = None;
        let output = &mut self.output;
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some((ch, data)) = output.recv().await {
                if !send(ch, data).await {
                    break;
                }
            }
        })
        .await;
        for r in &self.readers {
            r.abort();
        }
    }

    /// The exit as the Status kubectl reads from the error stream.
    fn status(&self, exit: std::process::ExitStatus) -> serde_json::Value {
        let code = exit.code().unwrap_or(137);
        if code == 0 {
            return json!({"metadata": {}, "status": "Success"});
        }
        json!({"metadata": {}, "status": "Failure",
            "message": format!("command terminated with non-zero exit code: error executing command {:?}, exit code {code}", self.command),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]}})
    }
}

/// `kubectl exec` over a WebSocket (`v5.channel.k8s.io`/`v4.channel.k8s.io`):
/// each binary message is a channel byte and data.
async fn session(ws: Ws, mut p: ExecProc, v5: bool) -> anyhow::Result<()> {
    let (sink, mut stream) = ws.split();
    let sink = std::sync::Arc::new(tokio::sync::Mutex::new(sink));
    let frame = |ch: u8, data: &[u8]| {
        let mut v = Vec::with_capacity(data.len() + 1);
        v.push(ch);
        v.extend_from_slice(data);
        Message::Binary(v.into())
    };
    let exit = loop {
        tokio::select! {
            msg = stream.next() => match msg {
                Some(Ok(Message::Binary(b))) if !b.is_empty() => match b[0] {
                    0 => p.write_stdin(&b[1..]).await,
                    4 => p.resize(&b[1..]),
                    255 if v5 && b.get(1) == Some(&0) => p.stdin = None,
                    _ => {}
                },
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                    let _ = p.child.start_kill();
                    return Ok(());
                }
                _ => {}
            },
            Some((ch, data)) = p.output.recv() => sink.lock().await.send(frame(ch, &data)).await?,
            st = p.child.wait() => break st?,
        }
    };
    let s2 = sink.clone();
    p.drain(move |ch, data| {
        let s = s2.clone();
        let m = frame(ch, &data);
        Box::pin(async move { s.lock().await.send(m).await.is_ok() })
    })
    .await;
    let mut sink = sink.lock().await;
    sink.send(frame(3, p.status(exit).to_string().as_bytes()))
        .await?;
    // A normal-closure code: kubectl reads it as the end of the streams
    // (no code reads as an error).
    let close = tokio_tungstenite::tungstenite::protocol::CloseFrame {
        code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Normal,
        reason: "".into(),
    };
    let _ = sink.send(Message::Close(Some(close))).await;
    Ok(())
}

/// `kubectl exec` over SPDY/3.1 (`v4.channel.k8s.io`, kubectl 1.29 and
/// older): kubectl opens one stream per channel, tagged `streamtype`.
async fn spdy_session<S>(
    io: S,
    exe: std::path::PathBuf,
    pid: i32,
    opts: ExecOpts,
    command: Vec<String>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use crate::spdy::Event;
    let (out, mut events) = crate::spdy::serve(io);
    let mut ids: std::collections::HashMap<String, u32> = Default::default();
    let mut early: Vec<Event> = vec![];
    let wanted = |ids: &std::collections::HashMap<String, u32>| {
        ids.contains_key("error")
            && (!opts.stdin || ids.contains_key("stdin"))
            && (!opts.stdout || ids.contains_key("stdout"))
            && (!opts.stderr || opts.tty || ids.contains_key("stderr"))
            && (!opts.tty || ids.contains_key("resize"))
    };
    let ready = tokio::time::timeout(Duration::from_secs(10), async {
        while !wanted(&ids) {
            match events.recv().await {
                Some(Event::Stream { id, headers }) => {
                    ids.insert(headers.get("streamtype").cloned().unwrap_or_default(), id);
                }
                Some(e) => early.push(e),
                None => return false,
            }
        }
        true
    })
    .await;
    if ready != Ok(true) {
        return;
    }
    let id = |name: &str| ids.get(name).copied();
    let (stdin_id, resize_id, err_id) = (id("stdin"), id("resize"), id("error"));
    let mut p = match ExecProc::spawn(&exe, pid, opts.tty, opts.stdin, command) {
        Ok(p) => p,
        Err(e) => {
            if let Some(err) = err_id {
                out.data(err, format!("starting the command: {e}").as_bytes())
                    .await;
            }
            return;
        }
    };
    let stream_of = |ch: u8| {
        if ch == 2 && !opts.tty {
            id("stderr")
        } else {
            id("stdout")
        }
    };
    let apply = |p: &mut ExecProc, e: Event| -> Option<Vec<u8>> {
        match e {
            Event::Data { id, data } if Some(id) == stdin_id => Some(data),
            Event::Data { id, data } if Some(id) == resize_id => {
                p.resize(&data);
                None
            }
            Event::Fin { id } | Event::Reset { id } if Some(id) == stdin_id => {
                p.stdin = None;
                None
            }
            _ => None,
        }
    };
    for e in std::mem::take(&mut early) {
        if let Some(d) = apply(&mut p, e) {
            p.write_stdin(&d).await;
        }
    }
    let exit = loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Some(e) => if let Some(d) = apply(&mut p, e) { p.write_stdin(&d).await },
                None => {
                    let _ = p.child.start_kill();
                    return;
                }
            },
            Some((ch, data)) = p.output.recv() => {
                if let Some(s) = stream_of(ch) {
                    out.data(s, &data).await;
                }
            }
            st = p.child.wait() => match st {
                Ok(st) => break st,
                Err(_) => return,
            },
        }
    };
    let o2 = out.clone();
    p.drain(move |ch, data| {
        let o = o2.clone();
        let s = stream_of(ch);
        Box::pin(async move {
            match s {
                Some(s) => o.data(s, &data).await,
                None => true,
            }
        })
    })
    .await;
    let status = p.status(exit);
    if let Some(err) = err_id {
        out.data(err, status.to_string().as_bytes()).await;
    }
    for s in ids.values() {
        out.fin(*s).await;
    }
}

/// What an exec asks for.
#[derive(Debug, Clone, Copy)]
struct ExecOpts {
    stdin: bool,
    stdout: bool,
    stderr: bool,
    tty: bool,
}

const PF_TUNNEL: &str = "SPDY/3.1+portforward.k8s.io";

/// Accept a port-forward: a WebSocket tunnel (kubectl 1.31+) or a plain
/// SPDY/3.1 upgrade.
fn port_forward(
    mut req: Request<hyper::body::Incoming>,
    pod: Arc<PodShared>,
    pod_name: &str,
) -> Response<Body> {
    let upgrade = upgrade_of(&req);
    let ip = pod.ip.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let name = pod_name.to_owned();
    if upgrade == "websocket" {
        let offered = offered_protocols(req.headers())
            .iter()
            .any(|p| p == PF_TUNNEL);
        let Some(key) = req
            .headers()
            .get("sec-websocket-key")
            .cloned()
            .filter(|_| offered)
        else {
            return status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                &format!("port-forward over WebSocket needs the {PF_TUNNEL} subprotocol"),
            );
        };
        return accept_websocket(&mut req, key.as_bytes(), PF_TUNNEL, move |ws| async move {
            crate::portforward::serve(ws_bytes(ws), ip, name).await;
        });
    }
    if upgrade != "spdy/3.1" {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "port-forward needs an Upgrade to SPDY/3.1 or a WebSocket",
        );
    }
    accept_spdy(&mut req, "portforward.k8s.io", move |io| {
        crate::portforward::serve(io, ip, name)
    })
}

type Upgraded = hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>;

/// Finish an `Upgrade: SPDY/3.1` in the background, then run `session` on
/// the connection. Returns the 101 answer naming the stream protocol.
fn accept_spdy<F, Fut>(
    req: &mut Request<hyper::body::Incoming>,
    protocol: &str,
    session: F,
) -> Response<Body>
where
    F: FnOnce(Upgraded) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let Ok(up) = upgrade.await else { return };
        session(hyper_util::rt::TokioIo::new(up)).await;
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("upgrade", "SPDY/3.1")
        .header("connection", "Upgrade")
        .header("x-stream-protocol-version", protocol)
        .body(full(""))
        .unwrap_or_default()
}

/// The protocol a request asks to upgrade to, lowercased ("" if none).
fn upgrade_of(req: &Request<hyper::body::Incoming>) -> String {
    req.headers()
        .get("upgrade")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase()
}

/// A WebSocket as a byte stream: each binary message is the next chunk.
fn ws_bytes(ws: Ws) -> tokio::io::DuplexStream {
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    let (mut rd, mut wr) = tokio::io::split(theirs);
    let (mut sink, mut stream) = ws.split();
    tokio::spawn(async move {
        while let Some(Ok(m)) = stream.next().await {
            match m {
                Message::Binary(b) if wr.write_all(&b).await.is_err() => return,
                Message::Close(_) => return,
                _ => {}
            }
        }
    });
    tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    let _ = sink.send(Message::Close(None)).await;
                    return;
                }
                Ok(n) => {
                    if sink
                        .send(Message::Binary(buf[..n].to_vec().into()))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    });
    ours
}
