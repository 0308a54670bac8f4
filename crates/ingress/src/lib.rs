//! mast's Ingress controller, run by every node agent (as k3s runs Traefik
//! on every node): an HTTP and an HTTPS listener that serve the
//! networking.k8s.io/v1 Ingresses of mast's class.
//!
//! - Routing: host and wildcard rules, Exact/Prefix/ImplementationSpecific
//!   paths, a default backend ([`routes`]); requests go straight to the
//!   backend Service's ready endpoints (from EndpointSlices), round-robin,
//!   as ingress-nginx does, so no extra hop through the Service's VIP.
//! - TLS from `kubernetes.io/tls` Secrets named in `spec.tls`, chosen by
//!   SNI; other names get a self-signed default certificate.
//! - The IngressClass `mast` is created as the default class; Ingresses
//!   naming no class are served too. Each served Ingress gets the node's
//!   address in `status.loadBalancer.ingress`.
//!
//! No route: 404; no ready endpoint: 503; an endpoint that fails: 502.
//! The mesh's gateway will later take over these listeners.

pub mod routes;

use anyhow::Context;
use bytes::Bytes;
use futures::FutureExt;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use routes::{Backend, Port, Table};
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// The class this controller serves, and the controller name in it.
pub const CLASS: &str = "mast";
pub const CONTROLLER: &str = "mast.dev/ingress";

/// Where the controller listens and what it reports.
#[derive(Debug, Clone)]
pub struct IngressConfig {
    pub http: Option<SocketAddr>,
    pub https: Option<SocketAddr>,
    /// The address written into served Ingresses' status.
    pub status_address: IpAddr,
}

type Body = BoxBody<Bytes, hyper::Error>;

/// What requests are served from: the routes and certificates, rebuilt on
/// every change, and the caches backends are resolved from.
struct State {
    table: RwLock<Arc<Table>>,
    certs: RwLock<Arc<HashMap<String, Arc<CertifiedKey>>>>,
    fallback: Arc<CertifiedKey>,
    services: Store<Service>,
    /// EndpointSlices by (namespace, Service), indexed once per change
    /// rather than searched on every request.
    slices: RwLock<Arc<SliceIndex>>,
    next: AtomicUsize,
    client: HttpClient<hyper_util::client::legacy::connect::HttpConnector, Incoming>,
}

type SliceIndex = HashMap<(String, String), Vec<mast_watch::Slice>>;

fn index_slices(store: &Store<EndpointSlice>) -> SliceIndex {
    let mut out = SliceIndex::new();
    for s in store
        .state()
        .iter()
        .filter_map(|s| mast_watch::read_slice(s))
    {
        out.entry((s.namespace.clone(), s.service.clone()))
            .or_default()
            .push(s);
    }
    out
}

fn text(status: StatusCode, msg: &str) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from(format!("{msg}\n")))
            .map_err(|e| match e {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

impl State {
    /// The ready endpoints of a backend, as socket addresses.
    fn endpoints(&self, b: &Backend) -> Result<Vec<SocketAddr>, String> {
        let svc = self
            .services
            .get(&ObjectRef::new(&b.service).within(&b.namespace))
            .ok_or_else(|| format!("service \"{}/{}\" not found", b.namespace, b.service))?;
        let ports = svc
            .spec
            .as_ref()
            .and_then(|s| s.ports.clone())
            .unwrap_or_default();
        let port = ports
            .iter()
            .find(|p| match &b.port {
                Port::Number(n) => p.port == *n,
                Port::Name(name) => p.name.as_deref() == Some(name),
            })
            .ok_or_else(|| {
                format!(
                    "service \"{}/{}\" has no port {:?}",
                    b.namespace, b.service, b.port
                )
            })?;
        let port_name = port.name.clone().unwrap_or_default();
        let mut out = vec![];
        let index = self
            .slices
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let key = (b.namespace.clone(), b.service.clone());
        for s in index.get(&key).into_iter().flatten() {
            let Some(number) = s.ports.get(&port_name) else {
                continue;
            };
            out.extend(
                s.endpoints
                    .iter()
                    .filter(|e| e.ready)
                    .map(|e| SocketAddr::new(e.ip, *number)),
            );
        }
        Ok(out)
    }

    async fn serve(
        self: Arc<Self>,
        mut req: Request<Incoming>,
        peer: SocketAddr,
        scheme: &'static str,
    ) -> Response<Body> {
        let host = req
            .headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned)
            .or_else(|| req.uri().host().map(str::to_owned))
            .unwrap_or_default();
        let bare = host
            .rsplit_once(':')
            .filter(|(_, p)| p.chars().all(|c| c.is_ascii_digit()))
            .map_or(host.as_str(), |(h, _)| h);
        let table = self.table.read().unwrap_or_else(|e| e.into_inner()).clone();
        let Some(backend) = table.route(bare, req.uri().path()).cloned() else {
            return text(
                StatusCode::NOT_FOUND,
                "404 page not found: no Ingress rule matches this host and path",
            );
        };
        let eps = match self.endpoints(&backend) {
            Ok(eps) if !eps.is_empty() => eps,
            Ok(_) => {
                return text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!(
                        "503 service unavailable: service \"{}/{}\" has no ready endpoints",
                        backend.namespace, backend.service
                    ),
                )
            }
            Err(msg) => {
                return text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("503 service unavailable: {msg}"),
                )
            }
        };
        let ep = eps[self.next.fetch_add(1, Ordering::Relaxed) % eps.len()];
        let path = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "/".into());
        let Ok(uri) = format!("http://{ep}{path}").parse::<hyper::Uri>() else {
            return text(StatusCode::BAD_REQUEST, "400 bad request: unusable path");
        };
        *req.uri_mut() = uri;
        *req.version_mut() = http::Version::HTTP_11;
        let h = req.headers_mut();
        let client_ip = peer.ip().to_string();
        let xff = match h.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(prev) => format!("{prev}, {client_ip}"),
            None => client_ip.clone(),
        };
        for (k, v) in [
            ("x-forwarded-for", xff),
            ("x-forwarded-proto", scheme.to_owned()),
            ("x-forwarded-host", host.clone()),
            ("x-real-ip", client_ip),
        ] {
            if let Ok(v) = http::HeaderValue::from_str(&v) {
                h.insert(k, v);
            }
        }
        if let Ok(v) = http::HeaderValue::from_str(&host) {
            h.insert(http::header::HOST, v);
        }
        match self.client.request(req).await {
            Ok(resp) => resp.map(|b| b.boxed()),
            Err(e) => {
                tracing::debug!(endpoint = %ep, error = %e, "ingress backend failed");
                text(
                    StatusCode::BAD_GATEWAY,
                    &format!("502 bad gateway: {ep} did not answer"),
                )
            }
        }
    }
}

/// Certificates by SNI name (exact, then `*.` wildcard), or the default.
#[derive(Debug)]
struct Certs(Arc<StateCerts>);

struct StateCerts {
    state: std::sync::Weak<State>,
    fallback: Arc<CertifiedKey>,
}

impl std::fmt::Debug for StateCerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ingress certificates")
    }
}

impl rustls::server::ResolvesServerCert for Certs {
    fn resolve(&self, hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(state) = self.0.state.upgrade() else {
            return Some(self.0.fallback.clone());
        };
        let certs = state
            .certs
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let name = hello.server_name().unwrap_or_default().to_ascii_lowercase();
        let wildcard = name.split_once('.').map(|(_, rest)| format!("*.{rest}"));
        certs
            .get(&name)
            .or_else(|| wildcard.and_then(|w| certs.get(&w)))
            .cloned()
            .or_else(|| Some(state.fallback.clone()))
    }
}

fn certified_key(cert_pem: &[u8], key_pem: &[u8]) -> anyhow::Result<Arc<CertifiedKey>> {
    let chain: Vec<_> = rustls_pemfile::certs(&mut &cert_pem[..]).collect::<Result<_, _>>()?;
    anyhow::ensure!(!chain.is_empty(), "tls.crt holds no certificate");
    let key =
        rustls_pemfile::private_key(&mut &key_pem[..])?.context("tls.key holds no private key")?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)?;
    Ok(Arc::new(CertifiedKey::new(chain, signer)))
}

fn self_signed() -> anyhow::Result<Arc<CertifiedKey>> {
    let ck = rcgen::generate_simple_self_signed(vec!["mast-ingress.local".to_owned()])?;
    certified_key(
        ck.cert.pem().as_bytes(),
        ck.signing_key.serialize_pem().as_bytes(),
    )
}

/// Whether this controller serves `ing`: its class is ours, or it names
/// none (ours is the default class).
fn ours(ing: &Ingress) -> bool {
    match ing
        .spec
        .as_ref()
        .and_then(|s| s.ingress_class_name.as_deref())
    {
        Some(c) => c == CLASS,
        None => ing
            .annotations()
            .get("kubernetes.io/ingress.class")
            .is_none_or(|c| c == CLASS),
    }
}

async fn ensure_class(client: &Client) {
    let api: Api<IngressClass> = Api::all(client.clone());
    let Ok(class) = serde_json::from_value::<IngressClass>(serde_json::json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
        "metadata": {"name": CLASS, "annotations": {"ingressclass.kubernetes.io/is-default-class": "true"}},
        "spec": {"controller": CONTROLLER},
    })) else {
        return;
    };
    match api.create(&Default::default(), &class).await {
        Ok(_) => tracing::info!("created the default IngressClass {CLASS}"),
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => tracing::warn!(error = %e, "could not create the IngressClass {CLASS}"),
    }
}

async fn listen(
    state: Arc<State>,
    addr: SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("the ingress cannot listen on {addr} ({scheme}); free the port or choose another with --ingress-{scheme}"))?;
    tracing::info!(%addr, scheme, "the ingress is listening");
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                continue;
            };
            let (state, tls) = (state.clone(), tls.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let state = state.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(state.serve(req, peer, scheme).await)
                    }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let _ = match tls {
                    Some(acceptor) => match acceptor.accept(stream).await {
                        Ok(s) => {
                            builder
                                .serve_connection_with_upgrades(TokioIo::new(s), svc)
                                .await
                        }
                        Err(_) => return,
                    },
                    None => {
                        builder
                            .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                            .await
                    }
                };
            });
        }
    }))
}

/// Serve Ingresses until `shutdown`.
pub async fn run(
    client: Client,
    cfg: IngressConfig,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    ensure_class(&client).await;
    let all = watcher::Config::default;
    let tls_secrets = all().fields("type=kubernetes.io/tls");
    let (ing_store, c1) = mast_watch::cache(Api::<Ingress>::all(client.clone()), all(), ());
    let (svc_store, c2) = mast_watch::cache(Api::<Service>::all(client.clone()), all(), ());
    let (eps_store, c3) = mast_watch::cache(Api::<EndpointSlice>::all(client.clone()), all(), ());
    let (sec_store, c4) = mast_watch::cache(Api::<Secret>::all(client.clone()), tls_secrets, ());
    let events = futures::stream::select_all([c1, c2, c3, c4]);
    let mut events = std::pin::pin!(events);
    let fallback = self_signed()?;
    let state = Arc::new(State {
        table: RwLock::new(Arc::new(Table::default())),
        certs: RwLock::new(Arc::new(HashMap::new())),
        fallback: fallback.clone(),
        services: svc_store,
        slices: RwLock::new(Arc::default()),
        next: AtomicUsize::new(0),
        client: HttpClient::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build_http(),
    });
    let mut tasks = vec![];
    if let Some(addr) = cfg.http {
        tasks.push(listen(state.clone(), addr, None).await?);
    }
    if let Some(addr) = cfg.https {
        let resolver = Certs(Arc::new(StateCerts {
            state: Arc::downgrade(&state),
            fallback,
        }));
        let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        tasks.push(
            listen(
                state.clone(),
                addr,
                Some(tokio_rustls::TlsAcceptor::from(Arc::new(tls))),
            )
            .await?,
        );
    }
    let status =
        serde_json::json!({"loadBalancer": {"ingress": [{"ip": cfg.status_address.to_string()}]}});
    while mast_watch::next_burst(&mut events, &mut shutdown, Duration::from_millis(20), None).await
    {
        if ing_store.wait_until_ready().now_or_never().is_none() {
            continue;
        }
        let all = ing_store.state();
        let served: Vec<&Ingress> = all.iter().map(|i| &**i).filter(|i| ours(i)).collect();
        *state.table.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(Table::build(&served));
        *state.slices.write().unwrap_or_else(|e| e.into_inner()) =
            Arc::new(index_slices(&eps_store));
        let mut certs = HashMap::new();
        for ing in &served {
            let ns = ing.namespace().unwrap_or_default();
            for tls in ing.spec.iter().flat_map(|s| s.tls.iter().flatten()) {
                let Some(name) = &tls.secret_name else {
                    continue;
                };
                let Some(secret) = sec_store.get(&ObjectRef::new(name).within(&ns)) else {
                    continue;
                };
                let data = secret.data.clone().unwrap_or_default();
                let (Some(crt), Some(key)) = (data.get("tls.crt"), data.get("tls.key")) else {
                    continue;
                };
                match certified_key(&crt.0, &key.0) {
                    Ok(ck) => {
                        for h in tls.hosts.iter().flatten() {
                            certs.insert(h.to_ascii_lowercase(), ck.clone());
                        }
                    }
                    Err(e) => {
                        tracing::warn!(secret = %name, namespace = %ns, error = %e, "unusable TLS secret")
                    }
                }
            }
        }
        *state.certs.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(certs);
        for ing in &served {
            let have =
                serde_json::to_value(ing.status.clone().unwrap_or_default()).unwrap_or_default();
            if have.get("loadBalancer") == status.get("loadBalancer") {
                continue;
            }
            // Written on the side, so that the caches keep following the
            // API (they move only while this loop polls them).
            let api: Api<Ingress> =
                Api::namespaced(client.clone(), &ing.namespace().unwrap_or_default());
            let (name, patch) = (ing.name_any(), serde_json::json!({"status": status}));
            tokio::spawn(async move {
                if let Err(e) = api
                    .patch_status(&name, &PatchParams::default(), &Patch::Merge(patch))
                    .await
                {
                    tracing::debug!(ingress = %name, error = %e, "could not set the Ingress status");
                }
            });
        }
    }
    for t in tasks {
        t.abort();
    }
    Ok(())
}
