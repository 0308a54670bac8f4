//! The ADS server (state of the world, Envoy xDS v3 over gRPC).
//!
//! Every connected proxy gets, per resource type it asks for, the resources
//! the current [`Snapshot`] holds for it (all of them for LDS and CDS, the
//! named ones for RDS and EDS). Each response carries the snapshot version
//! and a fresh nonce; a request that echoes the nonce is an ACK, or, with
//! `error_detail`, a NACK. A new snapshot is pushed, per type, only to the
//! proxies whose resources it changes. A NACK is logged and recorded in [`Proxies`]
//! (`mast mesh proxy-config` shows it) and is not answered by resending the
//! same configuration: the proxy keeps its last good one until the snapshot
//! changes.

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::Any;
use futures::StreamExt;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status, Streaming};

pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
pub const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

/// What a proxy is: its id and the metadata it announced.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ProxyInfo {
    pub id: String,
    /// `sidecar` or `router`, from Istio's node id
    /// (`<kind>~<ip>~<pod>.<ns>~<domain>`); `router` if the id is not one.
    pub kind: String,
    /// The workload's IP, from the node id.
    pub ip: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    /// The workload's service account (node metadata
    /// `SERVICE_ACCOUNT`): its identity for mutual TLS.
    #[serde(default)]
    pub service_account: String,
    /// The proxy program, as it names itself (`envoy/1.40.0`,
    /// `mast-proxy/0.1.0`).
    #[serde(default)]
    pub agent: String,
}

/// The configuration of one proxy: resources by type URL, by name.
#[derive(Debug, Clone, Default)]
pub struct Resources(pub HashMap<&'static str, BTreeMap<String, Any>>);

/// Builds a proxy's resources from the current state of the mesh.
pub trait Generator: Send + Sync + 'static {
    fn generate(&self, proxy: &ProxyInfo) -> Resources;
}

/// The version of the mesh's state: bumped on every change; a proxy gets
/// new resources when it changes.
pub type Version = watch::Receiver<u64>;

/// Per proxy and type: what it was last sent and what it made of it.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct TypeStatus {
    pub sent_version: String,
    pub acked_version: String,
    /// The last NACK's message, if the last response was refused.
    pub nack: Option<String>,
    pub resources: usize,
}

/// A connected proxy: what it is, and per type URL what it was sent.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ProxyStatus {
    pub info: ProxyInfo,
    pub types: BTreeMap<String, TypeStatus>,
}

/// Every connected proxy's status, by proxy id.
#[derive(Debug, Clone, Default)]
pub struct Proxies(pub Arc<Mutex<BTreeMap<String, ProxyStatus>>>);

pub struct Ads<G> {
    gen: Arc<G>,
    version: Version,
    proxies: Proxies,
}

impl<G: Generator> Ads<G> {
    pub fn server(
        gen: Arc<G>,
        version: Version,
        proxies: Proxies,
    ) -> AggregatedDiscoveryServiceServer<Self> {
        AggregatedDiscoveryServiceServer::new(Self {
            gen,
            version,
            proxies,
        })
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
    }
}

fn proxy_info(req: &DiscoveryRequest) -> Option<ProxyInfo> {
    let node = req.node.as_ref()?;
    let parts: Vec<&str> = node.id.split('~').collect();
    let mut info = ProxyInfo {
        id: node.id.clone(),
        kind: match parts.as_slice() {
            ["sidecar", ..] => "sidecar".into(),
            _ => "router".into(),
        },
        ip: parts.get(1).map(|s| s.to_string()).unwrap_or_default(),
        agent: agent(node),
        ..Default::default()
    };
    if let Some(md) = &node.metadata {
        use envoy_types::pb::google::protobuf::value::Kind;
        let string = |k: &str| match md.fields.get(k).and_then(|v| v.kind.clone()) {
            Some(Kind::StringValue(s)) => Some(s),
            _ => None,
        };
        if let Some(ns) = string("NAMESPACE") {
            info.namespace = ns;
        }
        if let Some(sa) = string("SERVICE_ACCOUNT") {
            info.service_account = sa;
        }
        if let Some(Kind::StructValue(labels)) =
            md.fields.get("LABELS").and_then(|v| v.kind.clone())
        {
            for (k, v) in labels.fields {
                if let Some(Kind::StringValue(s)) = v.kind {
                    info.labels.insert(k, s);
                }
            }
        }
    }
    Some(info)
}

/// `user_agent_name/version` from a node.
fn agent(node: &envoy_types::pb::envoy::config::core::v3::Node) -> String {
    use envoy_types::pb::envoy::config::core::v3::node::UserAgentVersionType;
    let version = match &node.user_agent_version_type {
        Some(UserAgentVersionType::UserAgentVersion(v)) => v.clone(),
        Some(UserAgentVersionType::UserAgentBuildVersion(b)) => b
            .version
            .as_ref()
            .map(|v| format!("{}.{}.{}", v.major_number, v.minor_number, v.patch))
            .unwrap_or_default(),
        None => String::new(),
    };
    match (node.user_agent_name.as_str(), version.as_str()) {
        ("", _) => "unknown".into(),
        (name, "") => name.to_owned(),
        (name, v) => format!("{name}/{v}"),
    }
}

/// One stream's state for one type.
#[derive(Default)]
struct Watch {
    names: Vec<String>,
    nonce: String,
    /// The snapshot version last sent, if any.
    sent: Option<u64>,
    /// A digest of what was last sent: a new snapshot that leaves this
    /// proxy's resources as they were is not pushed to it.
    digest: Option<u64>,
}

fn digest(resources: &[Any]) -> u64 {
    use std::hash::{BuildHasher, Hash, Hasher};
    let mut h = foldhash::quality::FixedState::with_seed(0x6d617374).build_hasher();
    for r in resources {
        r.type_url.hash(&mut h);
        r.value.hash(&mut h);
    }
    h.finish()
}

#[tonic::async_trait]
impl<G: Generator> AggregatedDiscoveryService for Ads<G> {
    type StreamAggregatedResourcesStream =
        tokio_stream::wrappers::ReceiverStream<Result<DiscoveryResponse, Status>>;
    type DeltaAggregatedResourcesStream =
        tokio_stream::wrappers::ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let mut requests = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let (gen, mut version, proxies) =
            (self.gen.clone(), self.version.clone(), self.proxies.clone());
        tokio::spawn(async move {
            let mut info: Option<ProxyInfo> = None;
            let mut watches: HashMap<String, Watch> = HashMap::new();
            let mut nonce = 0u64;
            loop {
                let mut changed = false;
                tokio::select! {
                    r = requests.next() => {
                        let req = match r {
                            Some(Ok(req)) => req,
                            Some(Err(e)) => { tracing::debug!(error = %e, "xDS stream failed"); break }
                            None => break,
                        };
                        if info.is_none() {
                            info = proxy_info(&req);
                            if let Some(i) = &info {
                                tracing::info!(proxy = %i.id, "proxy connected");
                            }
                        }
                        let Some(id) = info.as_ref().map(|i| i.id.clone()) else {
                            let _ = tx.send(Err(Status::invalid_argument("the first request must carry the node"))).await;
                            break;
                        };
                        let w = watches.entry(req.type_url.clone()).or_default();
                        let is_reply = !req.response_nonce.is_empty();
                        if is_reply && req.response_nonce != w.nonce {
                            continue; // a reply to an older response
                        }
                        let mut p = proxies.0.lock().unwrap_or_else(|e| e.into_inner());
                        let entry = p.entry(id.clone()).or_default();
                        if entry.info.id.is_empty() {
                            entry.info = info.clone().unwrap_or_default();
                        }
                        let st = entry.types.entry(req.type_url.clone()).or_default();
                        if let Some(err) = &req.error_detail {
                            tracing::warn!(proxy = %id, type_url = %req.type_url, version = %st.sent_version, error = %err.message, "proxy rejected its configuration (NACK)");
                            st.nack = Some(err.message.clone());
                            // Keep the names; do not resend what was refused.
                            w.names = req.resource_names.clone();
                            continue;
                        }
                        if is_reply {
                            st.acked_version = req.version_info.clone();
                            st.nack = None;
                        }
                        drop(p);
                        let names_changed = w.names != req.resource_names;
                        w.names = req.resource_names.clone();
                        if !is_reply || names_changed {
                            w.sent = None; // send (again)
                            w.digest = None;
                            changed = true;
                        }
                    }
                    r = version.changed() => {
                        if r.is_err() { break }
                        changed = true;
                    }
                }
                if !changed {
                    continue;
                }
                let Some(i) = &info else { continue };
                let current = *version.borrow();
                let resources = gen.generate(i);
                let mut pending = vec![];
                for (type_url, w) in watches.iter_mut() {
                    if w.sent == Some(current) {
                        continue;
                    }
                    let all = resources
                        .0
                        .get(type_url.as_str())
                        .cloned()
                        .unwrap_or_default();
                    let wanted: Vec<Any> =
                        if w.names.is_empty() || type_url == LISTENER || type_url == CLUSTER {
                            all.into_values().collect()
                        } else {
                            w.names.iter().filter_map(|n| all.get(n).cloned()).collect()
                        };
                    w.sent = Some(current);
                    pending.push((type_url.clone(), digest(&wanted), wanted));
                }
                // Only the proxies a change affects get a push; those get
                // every type again (a changed cluster needs its endpoints
                // resent before Envoy uses it).
                if pending
                    .iter()
                    .all(|(t, d, _)| watches.get(t).is_some_and(|w| w.digest == Some(*d)))
                {
                    continue;
                }
                // In the order Envoy's ADS guidance asks: CDS, EDS, LDS, RDS.
                let rank = |t: &str| {
                    [CLUSTER, ENDPOINT, LISTENER, ROUTE]
                        .iter()
                        .position(|x| *x == t)
                };
                pending.sort_by_key(|(t, _, _)| rank(t));
                for (type_url, d, wanted) in pending {
                    let Some(w) = watches.get_mut(&type_url) else {
                        continue;
                    };
                    w.digest = Some(d);
                    nonce += 1;
                    w.nonce = nonce.to_string();
                    {
                        let mut p = proxies.0.lock().unwrap_or_else(|e| e.into_inner());
                        let entry = p.entry(i.id.clone()).or_default();
                        entry.info = i.clone();
                        let st = entry.types.entry(type_url.clone()).or_default();
                        st.sent_version = current.to_string();
                        st.resources = wanted.len();
                    }
                    let resp = DiscoveryResponse {
                        version_info: current.to_string(),
                        resources: wanted,
                        type_url: type_url.clone(),
                        nonce: w.nonce.clone(),
                        ..Default::default()
                    };
                    if tx.send(Ok(resp)).await.is_err() {
                        return;
                    }
                }
            }
            if let Some(i) = info {
                tracing::info!(proxy = %i.id, "proxy disconnected");
                proxies
                    .0
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&i.id);
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }

    async fn delta_aggregated_resources(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented(
            "mast serves state-of-the-world ADS; configure the proxy with api_type GRPC",
        ))
    }
}

impl TypeStatus {
    /// As istioctl proxy-status shows it.
    pub fn state(&self) -> &'static str {
        if self.nack.is_some() {
            "NACK"
        } else if self.sent_version.is_empty() {
            "NOT SENT"
        } else if self.acked_version == self.sent_version {
            "SYNCED"
        } else {
            "STALE"
        }
    }
}
