//! Watch caches over the Kubernetes API, and the loop that turns their
//! changes into syncs, shared by the parts of mast that derive state from
//! many kinds of objects at once (the node's service proxy and DNS, the
//! Ingress controller, the mesh control plane).
//!
//! [`cache`] gives a kube-runtime reflector store and a stream that ticks on
//! each of its changes; [`next_burst`] waits for the next change and lets
//! the burst it starts settle, so that a burst costs one sync;
//! [`read_slice`] reads an EndpointSlice the one way they all need it.

use futures::stream::BoxStream;
use futures::StreamExt;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Resource;
use std::fmt::Debug;
use std::hash::Hash;
use std::time::Duration;
use tokio::sync::watch;

/// A cache of every object `api` lists (with `cfg`), kept current by a
/// watch, and a stream that ticks whenever it changes.
pub fn cache<K>(
    api: Api<K>,
    cfg: watcher::Config,
    dyntype: K::DynamicType,
) -> (Store<K>, BoxStream<'static, ()>)
where
    K: Resource + Clone + Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Send + Sync,
{
    let writer = reflector::store::Writer::<K>::new(dyntype);
    let store = writer.as_reader();
    let ticks = reflector::reflector(writer, watcher(api, cfg))
        .default_backoff()
        .map(|_| ())
        .boxed();
    (store, ticks)
}

/// Wait for the next change on `changes`, then until `quiet` passes without
/// one. With `retry`, also return after that long without any change (to
/// retry a failed sync). False when `shutdown` turns or the changes end.
pub async fn next_burst(
    changes: &mut (impl futures::Stream<Item = ()> + Unpin),
    shutdown: &mut watch::Receiver<bool>,
    quiet: Duration,
    retry: Option<Duration>,
) -> bool {
    let retry = async {
        match retry {
            Some(d) => tokio::time::sleep(d).await,
            None => futures::future::pending().await,
        }
    };
    tokio::select! {
        _ = shutdown.changed() => return false,
        ev = changes.next() => if ev.is_none() { return false },
        _ = retry => {}
    }
    let deadline = tokio::time::sleep(quiet);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => return true,
            ev = changes.next() => if ev.is_none() { return false },
        }
    }
}

/// An EndpointSlice as the consumers of Services read it.
#[derive(Debug, Clone)]
pub struct Slice {
    pub namespace: String,
    /// The Service it belongs to (`kubernetes.io/service-name`).
    pub service: String,
    /// Port numbers by port name (`""` for an unnamed port).
    pub ports: std::collections::BTreeMap<String, u16>,
    pub endpoints: Vec<SliceEndpoint>,
}

/// One address of an EndpointSlice.
#[derive(Debug, Clone)]
pub struct SliceEndpoint {
    pub ip: std::net::IpAddr,
    /// Not ready means: out of rotation (a missing condition is ready).
    pub ready: bool,
    pub hostname: Option<String>,
    /// The name of the pod behind it, if the slice says.
    pub pod: Option<String>,
}

/// Read an EndpointSlice; `None` when it belongs to no Service.
pub fn read_slice(s: &k8s_openapi::api::discovery::v1::EndpointSlice) -> Option<Slice> {
    use kube::ResourceExt;
    let service = s.labels().get("kubernetes.io/service-name")?.clone();
    let ports = s
        .ports
        .iter()
        .flatten()
        .filter_map(|p| {
            Some((
                p.name.clone().unwrap_or_default(),
                u16::try_from(p.port?).ok()?,
            ))
        })
        .collect();
    let endpoints = s
        .endpoints
        .iter()
        .flat_map(|e| {
            let ready = e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            let pod = e
                .target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .and_then(|r| r.name.clone());
            e.addresses.iter().filter_map(move |a| {
                Some(SliceEndpoint {
                    ip: a.parse().ok()?,
                    ready,
                    hostname: e.hostname.clone(),
                    pod: pod.clone(),
                })
            })
        })
        .collect();
    Some(Slice {
        namespace: s.namespace().unwrap_or_default(),
        service,
        ports,
        endpoints,
    })
}
