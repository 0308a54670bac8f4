//! `kubectl port-forward`: the `portforward.k8s.io` protocol over SPDY/3.1
//! ([`crate::spdy`]), either upgraded directly or tunneled in a WebSocket
//! (`SPDY/3.1+portforward.k8s.io`, kubectl 1.31 and newer).
//!
//! kubectl opens two streams per forwarded connection, `error` and `data`,
//! tagged with the port and a request id; the data stream is spliced to the
//! pod's port, and a failure is reported on the error stream.

use crate::spdy::{self, Event};
use std::collections::HashMap;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// A forwarded connection's two streams.
#[derive(Default)]
struct Pair {
    error: Option<u32>,
    data: Option<u32>,
}

/// Serve port-forward streams on `io` until the client goes away. Each data
/// stream connects to `pod_ip:port`.
pub async fn serve<S>(io: S, pod_ip: String, pod_name: String)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (out, mut events) = spdy::serve(io);
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    // Writers into each pod connection, by data stream id.
    let mut to_pod: HashMap<u32, mpsc::Sender<Option<Vec<u8>>>> = HashMap::new();
    while let Some(ev) = events.recv().await {
        match ev {
            Event::Stream { id, headers } => {
                let request = headers.get("requestid").cloned().unwrap_or_default();
                let port: u16 = headers
                    .get("port")
                    .and_then(|p| p.parse().ok())
                    .unwrap_or(0);
                let pair = pairs.entry(request.clone()).or_default();
                match headers.get("streamtype").map(String::as_str) {
                    Some("error") => pair.error = Some(id),
                    Some("data") => pair.data = Some(id),
                    _ => {}
                }
                if let (Some(err), Some(dat)) = (pair.error, pair.data) {
                    pairs.remove(&request);
                    let (ptx, prx) = mpsc::channel(64);
                    to_pod.insert(dat, ptx);
                    let conn = Forward {
                        ip: pod_ip.clone(),
                        pod: pod_name.clone(),
                        port,
                        error_stream: err,
                        data_stream: dat,
                    };
                    tokio::spawn(conn.run(prx, out.clone()));
                }
            }
            Event::Data { id, data } => {
                if let Some(sink) = to_pod.get(&id) {
                    let _ = sink.send(Some(data)).await;
                }
            }
            Event::Fin { id } | Event::Reset { id } => {
                if let Some(sink) = to_pod.get(&id) {
                    let _ = sink.send(None).await;
                }
            }
        }
        to_pod.retain(|_, s| !s.is_closed());
    }
}

/// One forwarded connection: the pod's port spliced to a data stream.
struct Forward {
    ip: String,
    pod: String,
    port: u16,
    error_stream: u32,
    data_stream: u32,
}

impl Forward {
    async fn run(self, mut from_client: mpsc::Receiver<Option<Vec<u8>>>, out: spdy::Sender) {
        let (ip, port) = (self.ip.as_str(), self.port);
        let conn = match tokio::net::TcpStream::connect((ip, port)).await {
            Ok(c) => c,
            Err(e) => {
                let msg = format!(
                    "error forwarding port {port} to pod {}: dial tcp {ip}:{port}: {e}",
                    self.pod
                );
                out.data(self.error_stream, msg.as_bytes()).await;
                out.fin(self.error_stream).await;
                out.fin(self.data_stream).await;
                return;
            }
        };
        out.fin(self.error_stream).await;
        let (mut prd, mut pwr) = conn.into_split();
        let up = async move {
            while let Some(chunk) = from_client.recv().await {
                match chunk {
                    Some(b) => {
                        if pwr.write_all(&b).await.is_err() {
                            return;
                        }
                    }
                    None => {
                        let _ = pwr.shutdown().await;
                        return;
                    }
                }
            }
        };
        let data_stream = self.data_stream;
        let down = async move {
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match prd.read(&mut buf).await {
                    Ok(0) | Err(_) => {
                        out.fin(data_stream).await;
                        return;
                    }
                    Ok(n) => {
                        if !out.data(data_stream, &buf[..n]).await {
                            return;
                        }
                    }
                }
            }
        };
        tokio::join!(up, down);
    }
}
