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
        ["pods", ns, name, "portforward"] => {
            let key = format!("{ns}/{name}");
            let pod = rt
                .pods
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&key)
                .cloned();
            match pod {
                Some(pod) => port_forward(req, pod, name),
                None => status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    &format!("pod {name:?} is not running on this node"),
                ),
            }
        }
        ["pods", ns, name, op @ ("log" | "exec")] => {
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
    let h = req.headers();
    let is_ws = h
        .get("upgrade")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let Some(key) = h.get("sec-websocket-key").cloned().filter(|_| is_ws) else {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "exec needs a WebSocket upgrade (v5.channel.k8s.io); SPDY is not supported: use kubectl 1.30 or newer, or set KUBECTL_REMOTE_COMMAND_WEBSOCKETS=true",
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
    let tty = flag(q, "tty");
    let stdin = flag(q, "stdin");
    let exe = rt.exe.clone();
    accept_websocket(&mut req, key.as_bytes(), proto, move |ws| async move {
        let v5 = proto == PROTOCOLS[0];
        if let Err(e) = session(ws, &exe, pid.pid, tty, stdin, v5, command).await {
            tracing::debug!(error = %e, "exec session ended with an error");
        }
    })
}

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

async fn session(
    ws: Ws,
    exe: &Path,
    pid: i32,
    tty: bool,
    want_stdin: bool,
    v5: bool,
    command: Vec<String>,
) -> anyhow::Result<()> {
    let (mut sink, mut stream) = ws.split();
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg("nsexec").arg(format!("--target={pid}"));
    if tty {
        cmd.arg("--tty");
    }
    cmd.arg("--").args(&command).kill_on_drop(true);
    let (out_tx, mut out_rx) = tokio::sync::mpsc::channel::<(u8, Vec<u8>)>(32);
    let mut stdin_w: Option<Box<dyn tokio::io::AsyncWrite + Unpin + Send>> = None;
    let mut pty_master: Option<std::os::fd::OwnedFd> = None;
    let spawn_reader = |mut r: Box<dyn tokio::io::AsyncRead + Unpin + Send>,
                        ch: u8,
                        tx: tokio::sync::mpsc::Sender<(u8, Vec<u8>)>| {
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
    let mut readers = vec![];
    let mut child = if tty {
        let p = nix::pty::openpty(None, None)?;
        let slave = std::fs::File::from(p.slave);
        cmd.stdin(slave.try_clone()?)
            .stdout(slave.try_clone()?)
            .stderr(slave);
        let child = cmd.spawn()?;
        drop(cmd);
        let master = std::fs::File::from(p.master);
        pty_master = Some(master.try_clone()?.into());
        let reader = tokio::fs::File::from_std(master.try_clone()?);
        readers.push(spawn_reader(Box::new(reader), 1, out_tx.clone()));
        if want_stdin {
            stdin_w = Some(Box::new(tokio::fs::File::from_std(master)));
        }
        child
    } else {
        cmd.stdin(if want_stdin {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn()?;
        if let Some(o) = child.stdout.take() {
            readers.push(spawn_reader(Box::new(o), 1, out_tx.clone()));
        }
        if let Some(e) = child.stderr.take() {
            readers.push(spawn_reader(Box::new(e), 2, out_tx.clone()));
        }
        if let Some(i) = child.stdin.take() {
            stdin_w = Some(Box::new(i));
        }
        child
    };
    drop(out_tx);
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
                    0 => if let Some(w) = stdin_w.as_mut() {
                        if w.write_all(&b[1..]).await.is_err() { stdin_w = None; }
                        let _ = w_flush(&mut stdin_w).await;
                    },
                    4 => if let (Some(m), Ok(size)) = (&pty_master, serde_json::from_slice::<serde_json::Value>(&b[1..])) {
                        let cols = size["Width"].as_u64().unwrap_or(80) as u16;
                        let rows = size["Height"].as_u64().unwrap_or(24) as u16;
                        crate::sys::set_winsize(m, cols, rows);
                    },
                    255 if v5 && b.get(1) == Some(&0) => stdin_w = None,
                    _ => {}
                },
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                    let _ = child.start_kill();
                    return Ok(());
                }
                _ => {}
            },
            Some((ch, data)) = out_rx.recv() => sink.send(frame(ch, &data)).await?,
            st = child.wait() => break st?,
        }
    };
    // Drain what the command wrote before it ended.
    drop(stdin_w);
    let drain = async {
        while let Some((ch, data)) = out_rx.recv().await {
            if sink.send(frame(ch, &data)).await.is_err() {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
    for r in readers {
        r.abort();
    }
    let code = exit.code().unwrap_or(137);
    let st = if code == 0 {
        json!({"metadata": {}, "status": "Success"})
    } else {
        json!({"metadata": {}, "status": "Failure",
            "message": format!("command terminated with non-zero exit code: error executing command {command:?}, exit code {code}"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]}})
    };
    sink.send(frame(3, st.to_string().as_bytes())).await?;
    // A normal-closure code: kubectl reads it as the end of the streams
    // (no code reads as an error).
    let close = tokio_tungstenite::tungstenite::protocol::CloseFrame {
        code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Normal,
        reason: "".into(),
    };
    let _ = sink.send(Message::Close(Some(close))).await;
    Ok(())
}

async fn w_flush(
    w: &mut Option<Box<dyn tokio::io::AsyncWrite + Unpin + Send>>,
) -> std::io::Result<()> {
    if let Some(w) = w.as_mut() {
        w.flush().await?;
    }
    Ok(())
}

const PF_TUNNEL: &str = "SPDY/3.1+portforward.k8s.io";

/// Accept a port-forward: a WebSocket tunnel (kubectl 1.31+) or a plain
/// SPDY/3.1 upgrade.
fn port_forward(
    mut req: Request<hyper::body::Incoming>,
    pod: Arc<PodShared>,
    pod_name: &str,
) -> Response<Body> {
    let h = req.headers();
    let upgrade = h
        .get("upgrade")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
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
    let on_upgrade = hyper::upgrade::on(&mut req);
    if upgrade != "spdy/3.1" {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "port-forward needs an Upgrade to SPDY/3.1 or a WebSocket",
        );
    }
    tokio::spawn(async move {
        let Ok(up) = on_upgrade.await else { return };
        crate::portforward::serve(hyper_util::rt::TokioIo::new(up), ip, name).await;
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("upgrade", "SPDY/3.1")
        .header("connection", "Upgrade")
        .header("x-stream-protocol-version", "portforward.k8s.io")
        .body(full(""))
        .unwrap_or_default()
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
