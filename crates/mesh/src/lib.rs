//! mast's mesh control plane (istiod's role): it watches Services,
//! EndpointSlices, Pods and Istio's configuration through the Kubernetes
//! API (so it runs against any API server), builds a [`model::Mesh`], and
//! serves every proxy its Envoy v3 configuration over ADS ([`xds`]).
//!
//! Sidecars get theirs from [`sidecar`]. A gateway (a proxy whose node
//! metadata `LABELS` match a Gateway's selector) gets, here, a listener
//! `0.0.0.0_<port>` per server port: HTTP servers routed by the bound
//! VirtualServices' `http` routes (`http.<port>`, [`envoy`]), HTTPS
//! servers terminating TLS by SNI ([`tls`]), TCP and TLS passthrough
//! servers ([`gateway`]); and a cluster with endpoints for every Service
//! port and DestinationRule subset (`outbound|<port>|<subset>|<host>`),
//! and ServiceEntry hosts as clusters of their own. Every proxy also gets
//! its workload identity from the mesh CA ([`ca`]) for mutual TLS, which
//! PeerAuthentications shape. docs/mesh.md says what is done and what is
//! not.

pub mod analyze;
pub mod ca;
pub mod debug;
pub mod envoy;
pub mod gateway;
pub mod model;
pub mod sidecar;
pub mod tls;
pub mod xds;

use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use model::{Endpoint, Mesh, ServiceKey, ServicePort};
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use xds::{Generator, ProxyInfo, Resources};

/// Where the control plane serves xDS.
#[derive(Debug, Clone)]
pub struct MeshConfig {
    pub xds_listen: std::net::SocketAddr,
    /// Where `/debug/syncz` and `/debug/config` answer (for
    /// `mast mesh proxy-config`).
    pub debug_listen: Option<std::net::SocketAddr>,
    /// A Unix socket that serves xDS too: proxy agents in pods reach the
    /// control plane through it, whatever the pod network.
    pub xds_socket: Option<std::path::PathBuf>,
    pub domain: String,
    /// Where the mesh CA keeps its root (`ca-cert.pem`, `ca-key.pem`);
    /// in memory only when none.
    pub ca_dir: Option<std::path::PathBuf>,
}

/// The generator: the current mesh, turned into each proxy's resources,
/// with its identity from the mesh CA.
pub struct Current(RwLock<Arc<Mesh>>, ca::Ca);

impl Current {
    pub fn new(ca: ca::Ca) -> Self {
        Self(RwLock::default(), ca)
    }
}

impl Generator for Current {
    fn generate(&self, proxy: &ProxyInfo) -> Resources {
        let mesh = self.0.read().unwrap_or_else(|e| e.into_inner()).clone();
        let mut out = configuration(&mesh, proxy);
        // Every proxy's identity, for mutual TLS: what it subscribes to
        // is sent.
        let id = ca::identity(&mesh.domain, &proxy.namespace, &proxy.service_account);
        out.0
            .entry(xds::SECRET)
            .or_default()
            .extend(tls::identity_secrets(&self.1, &id));
        out
    }
}

/// A proxy's listeners, routes, clusters, endpoints and the secrets its
/// configuration names.
fn configuration(mesh: &Mesh, proxy: &ProxyInfo) -> Resources {
    if proxy.kind == "sidecar" {
        return sidecar::generate(mesh, proxy);
    }
    let mut out = Resources::default();
    let mut listeners = BTreeMap::new();
    let mut routes = BTreeMap::new();
    // Gateway servers by port, then the VirtualServices bound to them.
    let mut by_port: BTreeMap<u16, Vec<(String, &mast_api::istio::types::VirtualService)>> =
        BTreeMap::new();
    // Servers that terminate TLS, by port, and what is bound to them.
    type Bound<'a> = Vec<(String, &'a mast_api::istio::types::VirtualService)>;
    let mut https: BTreeMap<u16, (Vec<&mast_api::istio::types::Server>, Bound)> = BTreeMap::new();
    // HTTP ports whose server redirects to https (`tls.httpsRedirect`).
    let mut redirect = std::collections::BTreeSet::new();
    // TCP and TLS servers' filter chains by port, and the SNI names
    // each port's chains claimed (HTTPS servers' first).
    let mut l4: BTreeMap<u16, Vec<_>> = BTreeMap::new();
    let mut sni: BTreeMap<u16, std::collections::BTreeSet<String>> = BTreeMap::new();
    // Servers whose certificates the proxy needs.
    let mut terminating = vec![];
    let gateways = mesh.gateways_for(&proxy.labels);
    for (key, gw) in &gateways {
        for s in &gw.servers {
            let port = s.port.number as u16;
            match gateway::kind(s) {
                gateway::Kind::Https => {
                    let e = https.entry(port).or_default();
                    e.0.push(s);
                    e.1.extend(mesh.bound_to(key));
                    gateway::claim(sni.entry(port).or_default(), &tls::server_names(s));
                    terminating.push(s);
                }
                gateway::Kind::Http => {
                    by_port.entry(port).or_default().extend(mesh.bound_to(key));
                    if s.tls.as_ref().and_then(|t| t.https_redirect) == Some(true) {
                        redirect.insert(port);
                    }
                }
                gateway::Kind::Tcp | gateway::Kind::Passthrough | gateway::Kind::Unsupported => {}
            }
        }
    }
    for (key, gw) in &gateways {
        let bound = mesh.bound_to(key);
        for s in &gw.servers {
            if let gateway::Kind::Tcp | gateway::Kind::Passthrough = gateway::kind(s) {
                let port = s.port.number as u16;
                let chains = gateway::chains(mesh, key, s, &bound, sni.entry(port).or_default());
                if !chains.is_empty() && tls::terminates(s).is_some() {
                    terminating.push(s);
                }
                l4.entry(port).or_default().extend(chains);
            }
        }
    }
    for (port, vss) in by_port {
        let name = format!("http.{port}");
        let mut rc = envoy::gateway_routes(mesh, &name, &vss);
        if redirect.contains(&port) {
            // As istiod: every virtual host answers plain text with a
            // 301 to https.
            for vh in &mut rc.virtual_hosts {
                vh.require_tls =
                    envoy_types::pb::envoy::config::route::v3::virtual_host::TlsRequirementType::All
                        as i32;
            }
        }
        routes.insert(name.clone(), envoy::any(&rc));
        let l = envoy::http_listener(port, &name);
        listeners.insert(l.name.clone(), envoy::any(&l));
    }
    // Secrets for servers and for DestinationRules' client TLS.
    let mut credentials = mesh.client_credentials();
    for (port, (servers, vss)) in https {
        if listeners.contains_key(&format!("0.0.0.0_{port}")) {
            continue; // Plain HTTP took the port.
        }
        let name = format!("https.{port}");
        routes.insert(
            name.clone(),
            envoy::any(&envoy::gateway_routes(mesh, &name, &vss)),
        );
        let mut l = tls::https_listener(port, &name, &servers);
        gateway::add(&mut l, l4.remove(&port).unwrap_or_default());
        listeners.insert(l.name.clone(), envoy::any(&l));
    }
    for (port, chains) in l4 {
        if chains.is_empty() || listeners.contains_key(&format!("0.0.0.0_{port}")) {
            continue; // No route, or plain HTTP took the port.
        }
        let l = gateway::listener(port, chains);
        listeners.insert(l.name.clone(), envoy::any(&l));
    }
    credentials.extend(tls::server_credentials(&terminating).map(str::to_owned));
    let names = credentials.iter().map(String::as_str);
    out.0
        .insert(xds::SECRET, tls::secrets(mesh, &proxy.namespace, names));
    out.0.insert(xds::LISTENER, listeners);
    out.0.insert(xds::ROUTE, routes);
    out.0.insert(
        xds::CLUSTER,
        envoy::clusters(mesh)
            .into_iter()
            .chain(envoy::external_clusters(mesh))
            .collect(),
    );
    out.0
        .insert(xds::ENDPOINT, envoy::endpoints(mesh).into_iter().collect());
    out
}

fn peer_authentication() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("security.istio.io", "v1", "PeerAuthentication"),
        "peerauthentications",
    )
}

fn istio(kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("networking.istio.io", "v1", kind),
        plural,
    )
}

/// Istio objects' specs by (namespace, name); objects whose spec does not
/// decode (which validation keeps out) are left out.
fn specs<T, O>(objs: impl IntoIterator<Item = O>) -> BTreeMap<(String, String), T>
where
    T: serde::de::DeserializeOwned,
    O: std::borrow::Borrow<DynamicObject>,
{
    objs.into_iter()
        .filter_map(|o| {
            let o = o.borrow();
            let spec =
                serde_json::from_value(o.data.get("spec").cloned().unwrap_or_default()).ok()?;
            Some(((o.namespace().unwrap_or_default(), o.name_any()), spec))
        })
        .collect()
}

/// A Service in the model (without endpoints yet).
fn service_of(svc: &Service, domain: &str) -> (ServiceKey, model::Service) {
    let key = ServiceKey {
        namespace: svc.namespace().unwrap_or_default(),
        name: svc.name_any(),
        domain: domain.to_owned(),
    };
    let ports = svc
        .spec
        .iter()
        .flat_map(|s| s.ports.iter().flatten())
        .map(|p| ServicePort {
            name: p.name.clone().unwrap_or_default(),
            port: p.port as u16,
            protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
            app_protocol: p.app_protocol.clone(),
        })
        .collect();
    let cluster_ip = svc
        .spec
        .as_ref()
        .and_then(|s| s.cluster_ip.as_deref())
        .and_then(|ip| ip.parse().ok());
    (
        key,
        model::Service {
            cluster_ip,
            ports,
            endpoints: vec![],
        },
    )
}

struct Stores {
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    pods: Store<Pod>,
    vs: Store<DynamicObject>,
    dr: Store<DynamicObject>,
    gw: Store<DynamicObject>,
    se: Store<DynamicObject>,
    pa: Store<DynamicObject>,
    secrets: Store<Secret>,
}

fn build(s: &Stores, domain: &str) -> Mesh {
    let mut mesh = Mesh {
        domain: domain.to_owned(),
        ..Default::default()
    };
    let pod_labels: BTreeMap<(String, String), BTreeMap<String, String>> = s
        .pods
        .state()
        .iter()
        .map(|p| {
            (
                (p.namespace().unwrap_or_default(), p.name_any()),
                p.labels().clone(),
            )
        })
        .collect();
    mesh.services = s
        .services
        .state()
        .iter()
        .map(|svc| service_of(svc, domain))
        .collect();
    for slice in s.slices.state() {
        let Some(slice) = mast_watch::read_slice(&slice) else {
            continue;
        };
        let key = ServiceKey {
            namespace: slice.namespace,
            name: slice.service,
            domain: domain.to_owned(),
        };
        let Some(svc) = mesh.services.get_mut(&key) else {
            continue;
        };
        for e in slice.endpoints.into_iter().filter(|e| e.ready) {
            let labels = e
                .pod
                .and_then(|pod| pod_labels.get(&(key.namespace.clone(), pod)))
                .cloned()
                .unwrap_or_default();
            svc.endpoints.push(Endpoint {
                ip: e.ip,
                ports: slice.ports.clone(),
                labels,
            });
        }
    }
    mesh.virtual_services = specs(s.vs.state());
    mesh.destination_rules = specs(s.dr.state());
    mesh.gateways = specs(s.gw.state());
    mesh.service_entries = specs(s.se.state());
    mesh.credentials = credentials(s.secrets.state());
    mesh.peer_authentications = specs(s.pa.state());
    mesh
}

/// The TLS credentials among Secrets, by (namespace, name).
fn credentials<S: std::borrow::Borrow<Secret>>(
    secrets: impl IntoIterator<Item = S>,
) -> BTreeMap<(String, String), model::Credential> {
    secrets
        .into_iter()
        .filter_map(|s| {
            let s = s.borrow();
            let data: BTreeMap<String, Vec<u8>> = s
                .data
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.0.clone()))
                .collect();
            let c = model::Credential::from_data(&data)?;
            Some(((s.namespace().unwrap_or_default(), s.name_any()), c))
        })
        .collect()
}

/// Read the configuration once (for `mast mesh analyze`): the model and
/// the Services' ports.
pub async fn snapshot(client: &Client, domain: &str) -> anyhow::Result<(Mesh, analyze::Ports)> {
    use kube::api::ListParams;
    let lp = ListParams::default();
    let mut mesh = Mesh {
        domain: domain.to_owned(),
        ..Default::default()
    };
    let mut ports = analyze::Ports::new();
    for svc in Api::<Service>::all(client.clone()).list(&lp).await? {
        let (key, model) = service_of(&svc, domain);
        use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
        ports.insert(
            key.clone(),
            svc.spec
                .iter()
                .flat_map(|s| s.ports.iter().flatten())
                .map(|p| {
                    let target = match &p.target_port {
                        Some(IntOrString::Int(i)) => i.to_string(),
                        Some(IntOrString::String(s)) => s.clone(),
                        None => p.port.to_string(),
                    };
                    (
                        p.name.clone().unwrap_or_default(),
                        p.port,
                        target,
                        p.app_protocol.clone(),
                    )
                })
                .collect(),
        );
        mesh.services.insert(key, model);
    }
    let lp = &lp;
    let list = |kind: &str, plural: &str| {
        let api = Api::<DynamicObject>::all_with(client.clone(), &istio(kind, plural));
        async move { api.list(lp).await.map(|l| l.items) }
    };
    mesh.virtual_services = specs(list("VirtualService", "virtualservices").await?);
    mesh.destination_rules = specs(list("DestinationRule", "destinationrules").await?);
    mesh.gateways = specs(list("Gateway", "gateways").await?);
    mesh.service_entries = specs(list("ServiceEntry", "serviceentries").await?);
    mesh.credentials = credentials(Api::<Secret>::all(client.clone()).list(lp).await?);
    let pa = Api::<DynamicObject>::all_with(client.clone(), &peer_authentication());
    mesh.peer_authentications = specs(pa.list(lp).await?.items);
    Ok((mesh, ports))
}

/// Watch the cluster and serve xDS until `shutdown`.
pub async fn run(
    client: Client,
    cfg: MeshConfig,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let (vs_ar, dr_ar, gw_ar) = (
        istio("VirtualService", "virtualservices"),
        istio("DestinationRule", "destinationrules"),
        istio("Gateway", "gateways"),
    );
    let all = watcher::Config::default;
    let (services, c1) = mast_watch::cache(Api::<Service>::all(client.clone()), all(), ());
    let (slices, c2) = mast_watch::cache(Api::<EndpointSlice>::all(client.clone()), all(), ());
    let (pods, c3) = mast_watch::cache(Api::<Pod>::all(client.clone()), all(), ());
    let (vs, c4) = mast_watch::cache(
        Api::<DynamicObject>::all_with(client.clone(), &vs_ar),
        all(),
        vs_ar,
    );
    let (dr, c5) = mast_watch::cache(
        Api::<DynamicObject>::all_with(client.clone(), &dr_ar),
        all(),
        dr_ar,
    );
    let (gw, c6) = mast_watch::cache(
        Api::<DynamicObject>::all_with(client.clone(), &gw_ar),
        all(),
        gw_ar,
    );
    let se_ar = istio("ServiceEntry", "serviceentries");
    let (se, c7) = mast_watch::cache(
        Api::<DynamicObject>::all_with(client.clone(), &se_ar),
        all(),
        se_ar,
    );
    // Secrets, for Gateway servers' credentialName (as istiod reads them).
    let (secrets, c8) = mast_watch::cache(Api::<Secret>::all(client.clone()), all(), ());
    let pa_ar = peer_authentication();
    let (pa, c9) = mast_watch::cache(
        Api::<DynamicObject>::all_with(client.clone(), &pa_ar),
        all(),
        pa_ar,
    );
    let mut events = futures::stream::select_all([c1, c2, c3, c4, c5, c6, c7, c8, c9]);
    let stores = Stores {
        services,
        slices,
        pods,
        vs,
        dr,
        gw,
        se,
        pa,
        secrets,
    };
    let ca = match &cfg.ca_dir {
        Some(dir) => ca::Ca::load_or_create(dir)?,
        None => ca::Ca::ephemeral()?,
    };
    let current = Arc::new(Current::new(ca));
    let (version_tx, version_rx) = tokio::sync::watch::channel(0u64);
    let proxies = xds::Proxies::default();
    let debug = match cfg.debug_listen {
        Some(addr) => Some(debug::serve(addr, current.clone(), proxies.clone()).await?),
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(cfg.xds_listen).await.map_err(|e| {
        anyhow::anyhow!("the mesh control plane cannot serve xDS on {}: {e}; choose another address with --xds-listen", cfg.xds_listen)
    })?;
    tracing::info!(address = %cfg.xds_listen, "serving xDS (ADS)");
    let on_socket = match &cfg.xds_socket {
        Some(path) => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let _ = std::fs::remove_file(path);
            let l = tokio::net::UnixListener::bind(path).map_err(|e| {
                anyhow::anyhow!(
                    "the mesh control plane cannot serve xDS on {}: {e}",
                    path.display()
                )
            })?;
            tracing::info!(socket = %path.display(), "serving xDS (ADS)");
            let server = tonic::transport::Server::builder()
                .add_service(xds::Ads::server(
                    current.clone(),
                    version_rx.clone(),
                    proxies.clone(),
                ))
                .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(l));
            Some(tokio::spawn(server))
        }
        None => None,
    };
    let server = tonic::transport::Server::builder()
        .add_service(xds::Ads::server(current.clone(), version_rx, proxies))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    let serving = tokio::spawn(server);
    // Workload certificates are signed again, once half their life has
    // passed, when a proxy's configuration is generated: a push every
    // ca::RENEW_CHECK makes that happen in a mesh where nothing else
    // changes (a proxy is sent only what changed for it).
    let version_tx = Arc::new(version_tx);
    let renew = {
        let tx = version_tx.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(ca::RENEW_CHECK);
            tick.tick().await;
            loop {
                tick.tick().await;
                tx.send_modify(|v| *v += 1);
            }
        })
    };
    // A burst of changes (settled for 50 ms) is one push.
    while mast_watch::next_burst(&mut events, &mut shutdown, Duration::from_millis(50), None).await
    {
        let mesh = build(&stores, &cfg.domain);
        // Only a real change is pushed.
        if **current.0.read().unwrap_or_else(|e| e.into_inner()) == mesh {
            continue;
        }
        *current.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(mesh);
        version_tx.send_modify(|v| *v += 1);
    }
    serving.abort();
    renew.abort();
    if let Some(s) = on_socket {
        s.abort();
    }
    if let Some(d) = debug {
        d.abort();
    }
    Ok(())
}
