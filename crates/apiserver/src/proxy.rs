//! The pod subresources that stream from the node: `log` and `exec`. The
//! API server finds the pod's node and proxies the request to that node's
//! agent over HTTPS, presenting the cluster's client certificate, as
//! kube-apiserver does with the kubelet. Exec is a WebSocket upgrade, so
//! once both sides have switched protocols the bytes are spliced through.

use crate::rest::Target;
use crate::server::Body;
use crate::state::ApiState;
use crate::status::ApiError;
use bytes::Bytes;
use futures::StreamExt;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use std::convert::Infallible;
use std::sync::Arc;

/// Accepts the agent's self-signed serving certificate, as kube-apiserver
/// accepts the kubelet's when no --kubelet-certificate-authority is set.
/// The agent, in turn, checks our client certificate against the cluster CA.
#[derive(Debug)]
struct AnyAgentCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyAgentCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The TLS client configuration for talking to agents.
pub fn agent_tls(cert_pem: &str, key_pem: &str) -> Result<rustls::ClientConfig, String> {
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
        .map_err(|e| e.to_string())?
        .ok_or("no private key")?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyAgentCert(provider)))
        .with_client_auth_cert(certs, key)
        .map_err(|e| e.to_string())
}

/// `/api/v1/namespaces/{ns}/pods/{name}/{sub}` → (ns, name, sub), for the
/// streaming subresources.
pub fn match_path(path: &str) -> Option<(String, String, String)> {
    let p: Vec<&str> = path.trim_matches('/').split('/').collect();
    match p.as_slice() {
        ["api", "v1", "namespaces", ns, "pods", name, sub @ ("log" | "exec" | "attach" | "portforward")] => {
            Some((ns.to_string(), name.to_string(), sub.to_string()))
        }
        _ => None,
    }
}

fn bad_request(msg: String) -> ApiError {
    ApiError::new(400, "BadRequest", msg)
}

/// Where the pod's agent listens.
async fn agent_of(state: &ApiState, ns: &str, name: &str) -> Result<(String, u16), ApiError> {
    let reg = state.registry();
    let target = |plural: &str, ns: Option<&str>| -> Result<Target, ApiError> {
        Ok(Target {
            res: reg
                .lookup("", "v1", plural)
                .cloned()
                .ok_or_else(ApiError::path_not_found)?,
            ns: ns.map(str::to_owned),
            name: None,
            sub: None,
        })
    };
    let (pod, _) = crate::rest::get(state, &target("pods", Some(ns))?, name).await?;
    let node = pod["spec"]["nodeName"].as_str().unwrap_or("");
    if node.is_empty() {
        return Err(bad_request(format!(
            "pod {name} does not have a host assigned"
        )));
    }
    let (node_obj, _) = crate::rest::get(state, &target("nodes", None)?, node).await?;
    let port = node_obj["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
        .as_u64()
        .unwrap_or(0);
    if port == 0 {
        return Err(bad_request(format!(
            "node {node} runs no containers (it is a hollow node), so pod {name} has no logs and cannot exec"
        )));
    }
    let ip = node_obj["status"]["addresses"]
        .as_array()
        .and_then(|a| a.iter().find(|a| a["type"] == "InternalIP"))
        .and_then(|a| a["address"].as_str())
        .unwrap_or("127.0.0.1")
        .to_owned();
    Ok((ip, port as u16))
}

type AgentConn = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

async fn connect(state: &ApiState, ip: &str, port: u16) -> Result<AgentConn, ApiError> {
    let tls = state.kubelet_tls.get().cloned().ok_or_else(|| {
        ApiError::new(
            503,
            "ServiceUnavailable",
            "the API server has no client certificate for agents",
        )
    })?;
    let unavailable = |e: String| {
        ApiError::new(
            502,
            "ServiceUnavailable",
            format!("error dialing the node agent at {ip}:{port}: {e}; is `mast agent` running on that node?"),
        )
    };
    let tcp = tokio::net::TcpStream::connect((ip, port))
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    let name = ServerName::try_from("localhost").map_err(|e| unavailable(e.to_string()))?;
    tokio_rustls::TlsConnector::from(tls)
        .connect(name.to_owned(), tcp)
        .await
        .map_err(|e| unavailable(e.to_string()))
}

/// Proxy one streaming pod subresource to the pod's agent.
pub async fn pod_subresource(
    state: Arc<ApiState>,
    mut req: http::Request<Incoming>,
    ns: &str,
    name: &str,
    sub: &str,
) -> Result<Response<Body>, ApiError> {
    if sub == "attach" {
        return Err(ApiError::new(
            501,
            "NotImplemented",
            "pods/attach is not implemented by mast yet; use `kubectl logs -f` and `kubectl exec`",
        ));
    }
    let (ip, port) = agent_of(&state, ns, name).await?;
    let conn = connect(&state, &ip, port).await?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(conn))
            .await
            .map_err(|e| {
                ApiError::new(
                    502,
                    "ServiceUnavailable",
                    format!("talking to the node agent: {e}"),
                )
            })?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    let query = req
        .uri()
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let mut out = http::Request::builder()
        .method(req.method().clone())
        .uri(format!("/pods/{ns}/{name}/{sub}{query}"))
        .header("host", format!("{ip}:{port}"));
    for h in [
        "upgrade",
        "connection",
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-protocol",
        "x-stream-protocol-version",
    ] {
        for v in req.headers().get_all(h) {
            out = out.header(h, v);
        }
    }
    let out = out
        .body(Full::new(Bytes::new()))
        .map_err(|e| ApiError::new(500, "InternalError", e.to_string()))?;
    let mut resp = sender.send_request(out).await.map_err(|e| {
        ApiError::new(
            502,
            "ServiceUnavailable",
            format!("talking to the node agent: {e}"),
        )
    })?;
    let code = resp.status();
    let mut builder = Response::builder().status(code);
    for (k, v) in resp.headers() {
        if k != "content-length" && k != "transfer-encoding" {
            builder = builder.header(k, v);
        }
    }
    if code == StatusCode::SWITCHING_PROTOCOLS {
        let agent_up = hyper::upgrade::on(&mut resp);
        let client_up = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let (Ok(a), Ok(c)) = (agent_up.await, client_up.await) {
                let mut a = hyper_util::rt::TokioIo::new(a);
                let mut c = hyper_util::rt::TokioIo::new(c);
                let _ = tokio::io::copy_bidirectional(&mut a, &mut c).await;
            }
        });
        return builder
            .body(Full::new(Bytes::new()).boxed())
            .map_err(|e| ApiError::new(500, "InternalError", e.to_string()));
    }
    // Stream the body through (`kubectl logs -f` keeps it open).
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    let mut body = resp.into_body();
    tokio::spawn(async move {
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(data) = frame.into_data() {
                if tx.send(data).await.is_err() {
                    return;
                }
            }
        }
    });
    let rx_stream = tokio_stream::wrappers::ReceiverStream::new(rx)
        .map(|b| Ok::<_, Infallible>(Frame::data(b)));
    builder
        .body(BodyExt::boxed(StreamBody::new(rx_stream)))
        .map_err(|e| ApiError::new(500, "InternalError", e.to_string()))
}
