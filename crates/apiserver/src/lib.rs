//! mast's API server: the Kubernetes REST API over a [`mast_store::Store`].
//!
//! It serves what the real kubectl and client libraries expect: discovery
//! (legacy and aggregated), OpenAPI v2 (protobuf) and v3, CRUD with
//! optimistic concurrency, patches (JSON, merge, strategic, server-side
//! apply), watches, server-side tables, and `Status` errors. Every other
//! component of mast talks to the cluster only through this API.

pub mod alloc;
pub mod apply;
pub mod auth;
pub mod discovery;
pub mod fields;
pub mod hooks;
pub mod pki;
mod proxy;
pub mod request;
pub mod rest;
pub mod server;
pub mod state;
pub mod status;
pub mod watch;

use mast_store::{object_key, RangeRequest, Store};
use serde_json::{json, Value};
use state::{ApiState, ServerSettings};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Everything the API server needs to start, parsed once by the caller.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// Address written into the kubeconfig and discovery.
    pub advertise_address: String,
    pub service_cidr: String,
    pub node_port_range: (u16, u16),
    /// Extra names or IPs for the serving certificate.
    pub extra_sans: Vec<String>,
    /// How often history older than `compaction_retention` is compacted.
    pub compaction_interval: Duration,
    pub compaction_retention: Duration,
    /// Sidecar injection (Istio's mutating webhook), when a mesh runs.
    pub injection: Option<mast_api::istio::inject::Template>,
}

impl Config {
    pub fn new(data_dir: PathBuf) -> Self {
        Self {
            data_dir,
            listen: "127.0.0.1:6443".parse().expect("a valid address"),
            advertise_address: "127.0.0.1".into(),
            service_cidr: "10.43.0.0/16".into(),
            node_port_range: (30000, 32767),
            extra_sans: vec![],
            compaction_interval: Duration::from_secs(300),
            compaction_retention: Duration::from_secs(300),
            injection: None,
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    #[error("cannot listen on {addr}: {source}; is another API server (or mast) already running there? Pick another address with --listen")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS setup failed: {0}")]
    Tls(String),
    #[error("store: {0}")]
    Store(#[from] mast_store::StoreError),
    #[error("{0}")]
    Config(String),
}

/// A running API server.
#[derive(Debug)]
pub struct Handle {
    pub addr: SocketAddr,
    pub kubeconfig: PathBuf,
    pub state: Arc<ApiState>,
    shutdown: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Handle {
    /// Stop accepting, let in-flight requests finish (bounded), and return.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
    }

    /// Wait until the server stops.
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

fn tls_config(p: &pki::Pki) -> Result<rustls::ServerConfig, StartError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = rustls_pemfile::certs(&mut p.server_cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| StartError::Tls(e.to_string()))?;
    let key = rustls_pemfile::private_key(&mut p.server_key_pem.as_bytes())
        .map_err(|e| StartError::Tls(e.to_string()))?
        .ok_or_else(|| StartError::Tls("the server key file holds no key".into()))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut p.ca_pem.as_bytes()) {
        roots
            .add(c.map_err(|e| StartError::Tls(e.to_string()))?)
            .map_err(|e| StartError::Tls(e.to_string()))?;
    }
    // Client certificates are optional: bearer tokens authenticate too, and
    // requests with neither are refused per request with 401.
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| StartError::Tls(e.to_string()))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StartError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| StartError::Tls(e.to_string()))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

/// Install the CRDs mast serves from the start (Istio's), or bring them up
/// to this version's definitions.
async fn install_crds(state: &ApiState) -> Result<(), mast_store::StoreError> {
    for mut crd in mast_api::istio::crds() {
        let name = crd["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let key = object_key(
            "apiextensions.k8s.io/customresourcedefinitions",
            None,
            &name,
        );
        match state.store.get(&key).await? {
            None => {
                crd["metadata"]["uid"] = json!(uuid::Uuid::new_v4().to_string());
                crd["metadata"]["creationTimestamp"] = json!(rest::now());
                crd["metadata"]["generation"] = json!(1);
                hooks::crd_status(&mut crd);
                state
                    .store
                    .create(&key, bytes::Bytes::from(crd.to_string()))
                    .await?;
            }
            Some(kv) => {
                let mut have: Value = serde_json::from_slice(&kv.value).unwrap_or_default();
                if have["spec"] == crd["spec"] {
                    continue;
                }
                have["spec"] = crd["spec"].take();
                let generation = have["metadata"]["generation"].as_i64().unwrap_or(1) + 1;
                have["metadata"]["generation"] = json!(generation);
                hooks::crd_status(&mut have);
                state
                    .store
                    .update(&key, bytes::Bytes::from(have.to_string()), kv.mod_revision)
                    .await?;
            }
        }
    }
    Ok(())
}

/// Create what a new cluster starts with (idempotent, so restarts are safe).
async fn bootstrap(state: &ApiState) -> Result<(), mast_store::StoreError> {
    let now = rest::now();
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        let key = object_key("namespaces", None, ns);
        if state.store.get(&key).await?.is_none() {
            let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns,
                "uid": uuid::Uuid::new_v4().to_string(), "creationTimestamp": now,
                "labels": {"kubernetes.io/metadata.name": ns}},
                "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}});
            state
                .store
                .create(&key, bytes::Bytes::from(obj.to_string()))
                .await?;
        }
    }
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        let t = rest::Target {
            res: state
                .registry()
                .lookup("", "v1", "namespaces")
                .cloned()
                .expect("namespaces are built in"),
            ns: None,
            name: None,
            sub: None,
        };
        hooks::after_write(state, &t, &json!({"metadata": {"name": ns}})).await;
    }
    // Re-claim every allocated ClusterIP and NodePort.
    let svcs = state
        .store
        .range(RangeRequest {
            prefix: "/registry/services/specs/".into(),
            ..Default::default()
        })
        .await?;
    for kv in &svcs.kvs {
        let svc: Value = serde_json::from_slice(&kv.value).unwrap_or_default();
        if let Some(ip) = svc["spec"]["clusterIP"].as_str() {
            let _ = state.alloc.claim_ip(ip);
        }
        for p in svc["spec"]["ports"].as_array().into_iter().flatten() {
            if let Some(np) = p["nodePort"].as_i64() {
                let _ = state.alloc.claim_port(np);
            }
        }
    }
    // The `kubernetes` Service, at the first address of the service range.
    let key = object_key("services/specs", Some("default"), "kubernetes");
    if state.store.get(&key).await?.is_none() {
        let ip = state.alloc.first_ip();
        let _ = state.alloc.claim_ip(&ip);
        let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "kubernetes", "namespace": "default",
            "uid": uuid::Uuid::new_v4().to_string(), "creationTimestamp": now,
            "labels": {"component": "apiserver", "provider": "kubernetes"}},
            "spec": {"type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip], "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
                "internalTrafficPolicy": "Cluster", "sessionAffinity": "None",
                "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": state.settings.port}]},
            "status": {"loadBalancer": {}}});
        state
            .store
            .create(&key, bytes::Bytes::from(svc.to_string()))
            .await?;
    }
    let key = object_key("services/endpoints", Some("default"), "kubernetes");
    let eps = json!({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "kubernetes", "namespace": "default",
        "uid": uuid::Uuid::new_v4().to_string(), "creationTimestamp": now, "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
        "subsets": [{"addresses": [{"ip": state.settings.advertise_address}], "ports": [{"name": "https", "port": state.settings.port, "protocol": "TCP"}]}]});
    if state.store.get(&key).await?.is_none() {
        state
            .store
            .create(&key, bytes::Bytes::from(eps.to_string()))
            .await?;
    }
    Ok(())
}

/// Start the API server on `store`. Returns once it is listening.
pub async fn start(config: Config, store: Arc<dyn Store>) -> Result<Handle, StartError> {
    let mut sans = config.extra_sans.clone();
    sans.push(config.advertise_address.clone());
    sans.push(config.listen.ip().to_string());
    let pki = pki::Pki::load_or_create(&config.data_dir, &sans)?;
    let tokens =
        auth::load_tokens(&pki.dir.join("tokens.csv"), &pki.admin_token).map_err(|source| {
            StartError::Pki(pki::PkiError::Io {
                path: pki.dir.join("tokens.csv"),
                source,
            })
        })?;
    let tls = Arc::new(tls_config(&pki)?);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: config.listen,
        source,
    })?;
    let settings = ServerSettings {
        advertise_address: config.advertise_address.clone(),
        port: addr.port(),
        service_cidr: config.service_cidr.clone(),
        node_port_range: config.node_port_range,
        injection: config.injection.clone(),
    };
    let state = Arc::new(
        ApiState::new(store, settings, tokens, pki.ca_pem.clone()).map_err(StartError::Config)?,
    );
    match proxy::agent_tls(&pki.admin_cert_pem, &pki.admin_key_pem) {
        Ok(c) => {
            let _ = state.kubelet_tls.set(Arc::new(c));
        }
        Err(e) => {
            tracing::warn!(error = %e, "no client certificate for node agents: logs and exec will fail")
        }
    }
    install_crds(&state).await?;
    state.reload_crds().await?;
    bootstrap(&state).await?;
    let server_url = format!("https://{}:{}", config.advertise_address, addr.port());
    let kubeconfig = pki.write_kubeconfig(&config.data_dir, &server_url)?;

    tokio::spawn(run_compactor(
        state.clone(),
        config.compaction_interval,
        config.compaction_retention,
    ));

    let (tx, rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(server::serve_tls(state.clone(), listener, tls, rx));
    Ok(Handle {
        addr,
        kubeconfig,
        state,
        shutdown: tx,
        task,
    })
}

/// Compact history periodically, keeping about `retention` of it, as the
/// Kubernetes API server asks etcd to every five minutes.
async fn run_compactor(state: Arc<ApiState>, interval: Duration, retention: Duration) {
    let mut marks: std::collections::VecDeque<(std::time::Instant, i64)> = Default::default();
    let mut tick = tokio::time::interval(interval.min(retention).max(Duration::from_millis(100)));
    loop {
        tick.tick().await;
        let now = std::time::Instant::now();
        marks.push_back((now, state.store.revision()));
        let mut target = None;
        while let Some((t, rev)) = marks.front().copied() {
            if now.duration_since(t) >= retention {
                target = Some(rev);
                marks.pop_front();
            } else {
                break;
            }
        }
        if let Some(rev) = target {
            if rev > state.store.compacted_revision() {
                if let Err(e) = state.store.compact(rev).await {
                    tracing::warn!(error = %e, revision = rev, "compaction failed");
                }
            }
        }
    }
}
