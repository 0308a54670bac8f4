//! ADS: listeners, routes, clusters, endpoints and secrets (SDS) from a
//! control plane, over the same gRPC stream Envoy uses (state of the
//! world).
//!
//! Each resource arrives as a protobuf `Any`. It is decoded by its
//! descriptor (`build.rs` keeps those of the resources mast proxy reads)
//! into Envoy's JSON form, and then read by the same strict types as a
//! bootstrap file. So a field mast proxy does not implement is refused by
//! name, in the NACK's message, exactly as it would be in a file; nothing
//! is silently ignored. A refused response changes nothing: the proxy keeps
//! serving its last good configuration. When the stream breaks, it
//! reconnects with a growing, jittered back-off, again keeping what it has.

use crate::bootstrap;
use anyhow::{anyhow, bail, Context, Result};
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::protobuf::Any;
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::LazyLock;
use std::time::Duration;

pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
pub const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

static POOL: LazyLock<std::result::Result<DescriptorPool, String>> = LazyLock::new(|| {
    DescriptorPool::decode(include_bytes!(concat!(env!("OUT_DIR"), "/xds.bin")).as_slice())
        .map_err(|e| e.to_string())
});

/// A protobuf `Any` in Envoy's JSON form (field names as in the .proto
/// files, as Envoy's YAML writes them).
pub fn to_json(any: &Any) -> Result<serde_json::Value> {
    let pool = POOL
        .as_ref()
        .map_err(|e| anyhow!("the built-in descriptors do not load: {e}"))?;
    let name = any
        .type_url
        .rsplit_once('/')
        .map(|(_, n)| n)
        .unwrap_or(&any.type_url);
    let desc = pool
        .get_message_by_name(name)
        .ok_or_else(|| anyhow!("resource type {name} is not one mast proxy implements"))?;
    let msg = DynamicMessage::decode(desc, any.value.as_slice())
        .with_context(|| format!("a {name} does not decode"))?;
    let opts = SerializeOptions::new()
        .use_proto_field_name(true)
        .stringify_64_bit_integers(false);
    msg.serialize_with_options(serde_json::value::Serializer, &opts)
        .map_err(|e| anyhow!("a {name} cannot be read: {e}"))
}

/// A resource from Envoy's JSON form, as a control plane sends it: the
/// inverse of [`to_json`], for tests and tools that write resources as
/// JSON. Only the types mast proxy reads are known.
pub fn from_json(type_url: &str, v: &serde_json::Value) -> Result<Any> {
    use prost::Message;
    let pool = POOL
        .as_ref()
        .map_err(|e| anyhow!("the built-in descriptors do not load: {e}"))?;
    let name = type_url
        .rsplit_once('/')
        .map(|(_, n)| n)
        .unwrap_or(type_url);
    let desc = pool
        .get_message_by_name(name)
        .ok_or_else(|| anyhow!("resource type {name} is not one mast proxy implements"))?;
    let msg = DynamicMessage::deserialize(desc, v.clone())
        .map_err(|e| anyhow!("a {name} cannot be written: {e}"))?;
    Ok(Any {
        type_url: type_url.to_owned(),
        value: msg.encode_to_vec(),
    })
}

/// Read one resource (in its JSON form) into `T`, a bootstrap type.
fn read<T: serde::de::DeserializeOwned>(v: &serde_json::Value, what: &str) -> Result<T> {
    let name = v
        .get("name")
        .or_else(|| v.get("cluster_name"))
        .and_then(|n| n.as_str())
        .unwrap_or("");
    T::deserialize(v).map_err(|e| {
        anyhow!("{what} {name:?}: {e} (mast proxy refuses what it does not implement; see docs/proxy.md)")
    })
}

/// What ADS has delivered and the proxy accepted, by resource name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resources {
    pub listeners: BTreeMap<String, bootstrap::Listener>,
    pub routes: BTreeMap<String, bootstrap::RouteConfiguration>,
    pub clusters: BTreeMap<String, bootstrap::Cluster>,
    pub endpoints: BTreeMap<String, bootstrap::ClusterLoadAssignment>,
    pub secrets: BTreeMap<String, bootstrap::Secret>,
    /// The same resources as they came (protobuf, compact), by type, for
    /// `/config_dump`.
    pub raw: BTreeMap<String, Vec<Any>>,
}

impl Resources {
    /// These resources with one type replaced by a response's.
    pub fn with(&self, type_url: &str, resources: &[Any]) -> Result<Resources> {
        if let Some(r) = resources.iter().find(|r| r.type_url != type_url) {
            bail!("a {type_url} response carries a {}", r.type_url);
        }
        let json: Vec<serde_json::Value> = resources.iter().map(to_json).collect::<Result<_>>()?;
        let mut next = self.clone();
        match type_url {
            LISTENER => {
                next.listeners = json
                    .iter()
                    .map(|v| {
                        read::<bootstrap::Listener>(v, "listener").map(|l| (l.name.clone(), l))
                    })
                    .collect::<Result<_>>()?
            }
            ROUTE => {
                next.routes = json
                    .iter()
                    .map(|v| {
                        read::<bootstrap::RouteConfiguration>(v, "route configuration")
                            .map(|r| (r.name.clone(), r))
                    })
                    .collect::<Result<_>>()?
            }
            CLUSTER => {
                next.clusters = json
                    .iter()
                    .map(|v| read::<bootstrap::Cluster>(v, "cluster").map(|c| (c.name.clone(), c)))
                    .collect::<Result<_>>()?
            }
            ENDPOINT => {
                next.endpoints = json
                    .iter()
                    .map(|v| {
                        read::<bootstrap::ClusterLoadAssignment>(v, "endpoints")
                            .map(|e| (e.cluster_name.clone(), e))
                    })
                    .collect::<Result<_>>()?
            }
            SECRET => {
                next.secrets = json
                    .iter()
                    .map(|v| read::<bootstrap::Secret>(v, "secret").map(|s| (s.name.clone(), s)))
                    .collect::<Result<_>>()?
            }
            other => bail!("resource type {other} is not one mast proxy subscribes to"),
        }
        next.raw.insert(type_url.to_owned(), resources.to_vec());
        Ok(next)
    }

    /// The route configurations the listeners name (RDS subscriptions).
    pub fn route_names(&self) -> BTreeSet<String> {
        self.listeners
            .values()
            .flat_map(|l| l.filter_chains.iter().chain(&l.default_filter_chain))
            .flat_map(|c| &c.filters)
            .filter_map(|f| match &f.typed_config {
                bootstrap::NetworkFilter::HttpConnectionManager(h) => {
                    h.rds.as_ref().map(|r| r.route_config_name.clone())
                }
                _ => None,
            })
            .collect()
    }

    /// The endpoint resources the EDS clusters name (EDS subscriptions).
    pub fn endpoint_names(&self) -> BTreeSet<String> {
        self.clusters
            .values()
            .filter_map(|c| {
                let e = c.eds_cluster_config.as_ref()?;
                Some(if e.service_name.is_empty() {
                    c.name.clone()
                } else {
                    e.service_name.clone()
                })
            })
            .collect()
    }
}

impl Resources {
    /// The secrets that clusters and listeners take over ADS (SDS
    /// subscriptions), with `also`, those the static bootstrap names.
    pub fn secret_names(&self, also: &BTreeSet<String>) -> BTreeSet<String> {
        let mut names =
            bootstrap::ads_secret_names(self.clusters.values(), self.listeners.values());
        names.extend(also.iter().cloned());
        names
    }
}

/// What the ADS loop needs from the proxy.
pub trait Apply: Send + Sync + 'static {
    /// The secrets the static bootstrap takes over ADS.
    fn static_secrets(&self) -> BTreeSet<String>;
    /// Compile and run these resources, or say why not (the NACK).
    fn apply(&self, resources: &Resources) -> Result<()>;
    /// The proxy holds a whole first configuration.
    fn initialized(&self);
}

/// Per type: what was last accepted, and the last response's nonce.
#[derive(Default, Clone)]
struct TypeState {
    version: String,
    nonce: String,
    names: Vec<String>,
    received: bool,
}

/// Run the ADS client forever against `endpoint` (`host:port`).
pub async fn run(
    endpoint: std::net::SocketAddr,
    node: serde_json::Value,
    apply: std::sync::Arc<dyn Apply>,
) {
    let node = match node_proto(&node) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("mast proxy: the bootstrap's node cannot be sent: {e:#}");
            return;
        }
    };
    let mut accepted = Resources::default();
    let mut types: BTreeMap<&'static str, TypeState> = BTreeMap::new();
    let mut failures = 0u32;
    let mut announced = false;
    loop {
        let started = std::time::Instant::now();
        match stream(endpoint, &node, &mut accepted, &mut types, &apply, &mut announced).await {
            Ok(()) => eprintln!("mast proxy: the xDS stream to {endpoint} ended; reconnecting"),
            Err(e) => eprintln!("mast proxy: xDS from {endpoint}: {e:#}; keeping the last good configuration and reconnecting"),
        }
        if started.elapsed() > Duration::from_secs(30) {
            failures = 0;
        }
        failures += 1;
        // 0.5 s doubling to 30 s, with jitter, as Envoy's gRPC back-off.
        let base = (500u64 << failures.min(6)).min(30_000);
        let jitter = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() as u64)
            .unwrap_or(0)
            % (base / 2 + 1);
        tokio::time::sleep(Duration::from_millis(base / 2 + jitter)).await;
    }
}

fn node_proto(node: &serde_json::Value) -> Result<envoy_types::pb::envoy::config::core::v3::Node> {
    let pool = POOL
        .as_ref()
        .map_err(|e| anyhow!("the built-in descriptors do not load: {e}"))?;
    let desc = pool
        .get_message_by_name("envoy.config.core.v3.Node")
        .ok_or_else(|| anyhow!("no descriptor for envoy.config.core.v3.Node"))?;
    let mut n = node.clone();
    if let Some(o) = n.as_object_mut() {
        o.insert("user_agent_name".into(), "mast-proxy".into());
        o.insert(
            "user_agent_version".into(),
            env!("CARGO_PKG_VERSION").into(),
        );
    }
    let msg = DynamicMessage::deserialize(desc, n)?;
    Ok(msg.transcode_to()?)
}

async fn stream(
    endpoint: std::net::SocketAddr,
    node: &envoy_types::pb::envoy::config::core::v3::Node,
    accepted: &mut Resources,
    types: &mut BTreeMap<&'static str, TypeState>,
    apply: &std::sync::Arc<dyn Apply>,
    announced: &mut bool,
) -> Result<()> {
    use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{endpoint}"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("cannot connect to the control plane at {endpoint}"))?;
    let mut client =
        AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(64 << 20);
    let (tx, rx) = tokio::sync::mpsc::channel::<DiscoveryRequest>(16);
    let mut first = true;
    let mut request = |t: &'static str, st: &TypeState, error: Option<String>| {
        let r = DiscoveryRequest {
            version_info: st.version.clone(),
            node: first.then(|| node.clone()),
            resource_names: st.names.clone(),
            type_url: t.to_owned(),
            response_nonce: st.nonce.clone(),
            error_detail: error.map(|message| envoy_types::pb::google::rpc::Status {
                code: 3, // INVALID_ARGUMENT
                message,
                details: vec![],
            }),
            ..Default::default()
        };
        first = false;
        r
    };
    // Clusters and listeners (all of them); then routes and endpoints by
    // name, as the first two name them. A reconnect says what it holds.
    for t in [CLUSTER, LISTENER] {
        let st = types.entry(t).or_default().clone();
        tx.send(request(
            t,
            &TypeState {
                nonce: String::new(),
                ..st
            },
            None,
        ))
        .await?;
    }
    let also = apply.static_secrets();
    for (t, names) in [
        (ENDPOINT, accepted.endpoint_names()),
        (ROUTE, accepted.route_names()),
        (SECRET, accepted.secret_names(&also)),
    ] {
        if !names.is_empty() {
            let st = types.entry(t).or_default();
            st.names = names.into_iter().collect();
            let st = TypeState {
                nonce: String::new(),
                ..st.clone()
            };
            tx.send(request(t, &st, None)).await?;
        }
    }
    let mut responses = client
        .stream_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .with_context(|| format!("the control plane at {endpoint} refused the ADS stream"))?
        .into_inner();
    while let Some(resp) = responses.message().await? {
        let resp: DiscoveryResponse = resp;
        let Some(t) = [CLUSTER, LISTENER, ROUTE, ENDPOINT, SECRET]
            .into_iter()
            .find(|t| *t == resp.type_url)
        else {
            eprintln!(
                "mast proxy: the control plane sent type {:?}, which was not asked for; ignored",
                resp.type_url
            );
            continue;
        };
        // Decoding and compiling run on a blocking-pool thread, so a large
        // update does not hold up the connections of a worker that shares
        // this thread (`--concurrency 1`).
        let (current, resources, apply2) =
            (std::mem::take(accepted), resp.resources, apply.clone());
        let (current, outcome) = tokio::task::spawn_blocking(move || {
            let outcome = current
                .with(t, &resources)
                .and_then(|next| apply2.apply(&next).map(|()| next));
            (current, outcome)
        })
        .await
        .context("applying the configuration stopped")?;
        *accepted = current;
        let st = types.entry(t).or_default();
        st.nonce = resp.nonce.clone();
        match outcome {
            Ok(next) => {
                *accepted = next;
                st.version = resp.version_info.clone();
                st.received = true;
                let st = st.clone();
                tx.send(request(t, &st, None)).await?;
            }
            Err(e) => {
                let msg = format!("{e:#}");
                eprintln!(
                    "mast proxy: rejected {t} version {} (NACK): {msg}",
                    resp.version_info
                );
                let st = st.clone();
                tx.send(request(t, &st, Some(msg))).await?;
            }
        }
        // Follow what clusters and listeners name.
        for (dep, names) in [
            (ENDPOINT, accepted.endpoint_names()),
            (ROUTE, accepted.route_names()),
            (SECRET, accepted.secret_names(&also)),
        ] {
            let names: Vec<String> = names.into_iter().collect();
            let st = types.entry(dep).or_default();
            if st.names != names {
                st.names = names;
                let st = st.clone();
                tx.send(request(dep, &st, None)).await?;
            }
        }
        // Ready once clusters, listeners and whatever they name have come.
        let have = |t: &str| types.get(t).is_some_and(|s| s.received);
        let wants = |t: &str| types.get(t).is_some_and(|s| !s.names.is_empty());
        if !*announced
            && have(CLUSTER)
            && have(LISTENER)
            && (!wants(ENDPOINT) || have(ENDPOINT))
            && (!wants(ROUTE) || have(ROUTE))
            // A secret is waited for until it comes, even when a
            // response has come without it (as Envoy warms).
            && accepted
                .secret_names(&also)
                .iter()
                .all(|n| accepted.secrets.contains_key(n))
        {
            *announced = true;
            apply.initialized();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any(type_url: &str, value: Vec<u8>) -> Any {
        Any {
            type_url: type_url.to_owned(),
            value,
        }
    }

    #[test]
    fn resources_decode_into_the_bootstrap_types() {
        use prost::Message;
        let c = envoy_types::pb::envoy::config::cluster::v3::Cluster {
            name: "outbound|9080||reviews".into(),
            ..Default::default()
        };
        let r = Resources::default()
            .with(CLUSTER, &[any(CLUSTER, c.encode_to_vec())])
            .expect("a plain cluster reads");
        assert!(r.clusters.contains_key("outbound|9080||reviews"));
        assert_eq!(r.raw[CLUSTER].len(), 1);
    }

    #[test]
    fn garbage_and_unimplemented_fields_are_refused_by_name() {
        use prost::Message;
        // Bytes that are no Cluster.
        let e = Resources::default()
            .with(CLUSTER, &[any(CLUSTER, vec![0xff, 0xff, 0xff, 0x0f])])
            .unwrap_err();
        assert!(format!("{e:#}").contains("does not decode"), "{e:#}");
        // A type that was not asked for.
        let e = Resources::default()
            .with(CLUSTER, &[any(LISTENER, vec![])])
            .unwrap_err();
        assert!(format!("{e:#}").contains("carries"), "{e:#}");
        // A field mast proxy does not implement: named in the NACK.
        let c = envoy_types::pb::envoy::config::cluster::v3::Cluster {
            name: "c".into(),
            ignore_health_on_host_removal: true,
            ..Default::default()
        };
        let e = Resources::default()
            .with(CLUSTER, &[any(CLUSTER, c.encode_to_vec())])
            .unwrap_err();
        assert!(
            format!("{e:#}").contains("ignore_health_on_host_removal"),
            "{e:#}"
        );
    }
}
