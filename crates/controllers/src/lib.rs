//! mast's controllers: idempotent reconcilers that drive the cluster toward
//! what its objects ask for, through the Kubernetes API only (kube-runtime's
//! `Controller`), so they run unchanged against any API server.
//!
//! - [`replicaset`]: keeps a ReplicaSet's pod count, adopting and releasing
//!   pods by selector and ownerReferences.
//! - [`deployment`]: rolls Deployments out through ReplicaSets
//!   (RollingUpdate with maxSurge/maxUnavailable, Recreate), with revision
//!   history for `kubectl rollout history|undo`.
//! - [`endpoints`]: Endpoints and EndpointSlices from Service selectors and
//!   pod readiness, named targetPorts resolved per pod.
//! - [`gc`]: the garbage collector (ownerReferences; background, foreground
//!   and orphan propagation).
//! - [`namespace`]: empties a deleted namespace, then lets it go.
//! - [`nodeipam`]: a pod CIDR for every node, from the cluster CIDR.
//! - [`servicelb`]: LoadBalancer Services get an address from a pool, as
//!   k3s's ServiceLB gives them.
//! - [`nodelifecycle`]: silent nodes turn NotReady, get the unreachable
//!   taints, and their pods are evicted per their tolerations.
//!
//! No reconciler assumes it saw every event: each reads the current state
//! (pods by a fresh consistent LIST) and acts on the difference.

pub mod deployment;
pub mod endpoints;
pub mod gc;
pub mod namespace;
pub mod nodeipam;
pub mod nodelifecycle;
pub mod replicaset;
pub mod servicelb;
mod util;

use futures::StreamExt;
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use std::sync::Arc;
use std::time::Duration;

/// What every reconciler is given.
pub(crate) struct Ctx {
    pub client: Client,
}

/// What a controller can watch: a built-in, typed Kubernetes object.
pub(crate) trait Object:
    kube::Resource<DynamicType = ()>
    + Clone
    + serde::de::DeserializeOwned
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
}

impl<T> Object for T where
    T: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static
{
}

/// Run one kube-runtime `Controller` for `K`, woken by changes to the `C`
/// objects it owns, until `shutdown` turns true.
pub(crate) async fn run_controller<K: Object, C: Object, Fut>(
    client: Client,
    shutdown: tokio::sync::watch::Receiver<bool>,
    what: &'static str,
    reconcile: fn(Arc<K>, Arc<Ctx>) -> Fut,
) -> anyhow::Result<()>
where
    Fut: std::future::Future<Output = Result<Action, Error>> + Send + 'static,
{
    let ctx = Arc::new(Ctx {
        client: client.clone(),
    });
    let controller = Controller::new(Api::<K>::all(client.clone()), watcher::Config::default())
        .owns(Api::<C>::all(client), watcher::Config::default());
    drive(controller, shutdown, what, reconcile, ctx).await;
    Ok(())
}

/// Run a configured `Controller` until `shutdown` turns true. A failed
/// reconcile is logged and retried after 5 s.
pub(crate) async fn drive<K: Object, T: Send + Sync + 'static, Fut>(
    controller: Controller<K>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    what: &'static str,
    reconcile: fn(Arc<K>, Arc<T>) -> Fut,
    ctx: Arc<T>,
) where
    Fut: std::future::Future<Output = Result<Action, Error>> + Send + 'static,
{
    let error_policy = move |obj: Arc<K>, e: &Error, _: Arc<T>| {
        tracing::warn!(controller = what, name = %obj.name_any(), error = %e, "reconcile failed; retrying in 5s");
        Action::requeue(Duration::from_secs(5))
    };
    controller
        .graceful_shutdown_on(async move {
            let _ = shutdown.changed().await;
        })
        .run(reconcile, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(controller = what, error = %e, "reconcile");
            }
        })
        .await;
}

/// Why a reconcile failed; the error policy requeues with a delay.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API call failed: {0}")]
    Kube(#[from] kube::Error),
    #[error("{kind} {namespace}/{name} is malformed: {reason}")]
    Malformed {
        kind: &'static str,
        namespace: String,
        name: String,
        reason: String,
    },
    #[error("could not build an object: {0}")]
    Json(#[from] serde_json::Error),
}

/// Settings of the controllers, parsed once by the caller.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How long a node may stay silent before it is marked unreachable.
    pub node_monitor_grace_period: Duration,
    /// Where nodes' pod CIDRs come from.
    pub pod_ranges: nodeipam::Ranges,
    /// Where LoadBalancer Services' addresses come from.
    pub lb_pool: nodeipam::Cidr,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            node_monitor_grace_period: Duration::from_secs(40),
            pod_ranges: nodeipam::Ranges {
                cluster: nodeipam::Cidr {
                    base: std::net::Ipv4Addr::new(10, 42, 0, 0),
                    bits: 16,
                },
                node_mask: 24,
            },
            lb_pool: nodeipam::Cidr {
                base: std::net::Ipv4Addr::new(10, 44, 0, 0),
                bits: 24,
            },
        }
    }
}

/// Run every controller until `shutdown` turns true.
pub async fn run(
    client: Client,
    shutdown: tokio::sync::watch::Receiver<bool>,
    settings: Settings,
) -> anyhow::Result<()> {
    tracing::info!("controllers started");
    let rs = tokio::spawn(replicaset::run(client.clone(), shutdown.clone()));
    let dep = tokio::spawn(deployment::run(client.clone(), shutdown.clone()));
    let gc = tokio::spawn(gc::run(client.clone(), shutdown.clone()));
    let eps = tokio::spawn(endpoints::run(client.clone(), shutdown.clone()));
    let nss = tokio::spawn(namespace::run(client.clone(), shutdown.clone()));
    let ipam = tokio::spawn(nodeipam::run(
        client.clone(),
        shutdown.clone(),
        settings.pod_ranges,
    ));
    let lb = tokio::spawn(servicelb::run(
        client.clone(),
        shutdown.clone(),
        settings.lb_pool,
    ));
    let nodes = tokio::spawn(nodelifecycle::run(
        client,
        shutdown,
        settings.node_monitor_grace_period,
    ));
    let (a, b, c, d, e, f, g, h) = tokio::join!(rs, dep, gc, nodes, eps, nss, ipam, lb);
    h??;
    e??;
    f??;
    g??;
    a??;
    b??;
    c??;
    d??;
    Ok(())
}
