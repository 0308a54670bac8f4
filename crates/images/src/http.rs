//! The small HTTP/1.1 server and client the built-in images share.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use std::future::Future;
use std::time::Duration;

pub type Reply = Response<Full<Bytes>>;

/// A reply with a status, a content type and a body.
pub fn reply(status: u16, content_type: &str, body: impl Into<Bytes>) -> Reply {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::OK);
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

/// Where a server listens: `$POD_IP:port`, else every address.
pub fn listen_addr(port: u16) -> String {
    let ip = std::env::var("POD_IP").unwrap_or_else(|_| "0.0.0.0".into());
    format!("{ip}:{port}")
}

/// Serve HTTP/1.1 on `listener` until SIGTERM, then serve what is already
/// queued, stop accepting and give open connections up to 5 s to finish, as
/// a well-behaved server does during a rolling update.
pub async fn serve<F, Fut>(
    name: &str,
    listener: tokio::net::TcpListener,
    handler: F,
) -> anyhow::Result<i32>
where
    F: Fn(Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Reply> + Send + 'static,
{
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut conns = tokio::task::JoinSet::new();
    let mut draining: Option<tokio::time::Instant> = None;
    loop {
        let (stream, _) = if let Some(until) = draining {
            // Connections the kernel completed before the node's rules let
            // go of this pod still wait in the listen backlog: serve them
            // too (closing the listener would reset them). Stop once none
            // came for 100 ms, and after 2 s at most.
            let quiet = (tokio::time::Instant::now() + Duration::from_millis(100)).min(until);
            match tokio::time::timeout_at(quiet, listener.accept()).await {
                Ok(a) => a?,
                Err(_) => break,
            }
        } else {
            tokio::select! {
                a = listener.accept() => a?,
                _ = term.recv() => {
                    draining = Some(tokio::time::Instant::now() + Duration::from_secs(2));
                    continue;
                }
                Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            }
        };
        let h = handler.clone();
        conns.spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let h = h.clone();
                async move { Ok::<_, std::convert::Infallible>(h(req).await) }
            });
            // HTTP/1.1, or HTTP/2 with prior knowledge (h2c, as gRPC
            // speaks it).
            let builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
            // Idle keep-alive connections close after a while, so a
            // draining server is not held open by them.
            let _ = tokio::time::timeout(Duration::from_secs(30), conn).await;
        });
    }
    drop(listener);
    println!(
        "{name}: SIGTERM; finishing {} open connection(s)",
        conns.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    Ok(0)
}

/// A response as a client sees it.
#[derive(Debug)]
pub struct Got {
    pub status: u16,
    pub body: Bytes,
}

/// One HTTP/1.1 request to `authority` (`host:port`, resolved through the
/// system resolver, so the pod's DNS search path applies), within `timeout`.
pub async fn request(
    method: &str,
    authority: &str,
    path: &str,
    headers: &[(String, String)],
    timeout: Duration,
) -> anyhow::Result<Got> {
    request_from(None, method, authority, path, headers, timeout).await
}

/// [`request`], from a socket bound to `local` when given (`authority` is
/// then an address, not a name).
pub async fn request_from(
    local: Option<std::net::SocketAddr>,
    method: &str,
    authority: &str,
    path: &str,
    headers: &[(String, String)],
    timeout: Duration,
) -> anyhow::Result<Got> {
    let go = async {
        let stream = match local {
            None => tokio::net::TcpStream::connect(authority).await?,
            Some(local) => {
                let to: std::net::SocketAddr = authority.parse()?;
                let socket = tokio::net::TcpSocket::new_v4()?;
                socket.bind(local)?;
                socket.connect(to).await?
            }
        };
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, authority);
        for (k, v) in headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let resp = send
            .send_request(req.body(Full::new(Bytes::new()))?)
            .await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        anyhow::Ok(Got { status, body })
    };
    tokio::time::timeout(timeout, go)
        .await
        .map_err(|_| anyhow::anyhow!("{authority}{path}: no answer within {timeout:?}"))?
}
