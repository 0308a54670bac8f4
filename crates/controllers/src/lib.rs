//! mast's controllers: idempotent reconcilers that drive the cluster toward
//! what its objects ask for, through the Kubernetes API only (kube-runtime's
//! `Controller`), so they run unchanged against any API server.
//!
//! - [`replicaset`]: keeps a ReplicaSet's pod count, adopting and releasing
//!   pods by selector and ownerReferences.
//! - [`deployment`]: rolls Deployments out through ReplicaSets
//!   (RollingUpdate with maxSurge/maxUnavailable, Recreate), with revision
//!   history for `kubectl rollout history|undo`.
//!
//! No reconciler assumes it saw every event: each reads the current state
//! (pods by a fresh consistent LIST) and acts on the difference.

pub mod deployment;
pub mod replicaset;
mod util;

use kube::Client;

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

/// Run every controller until `shutdown` turns true.
pub async fn run(
    client: Client,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    tracing::info!("controllers started");
    let rs = tokio::spawn(replicaset::run(client.clone(), shutdown.clone()));
    let dep = tokio::spawn(deployment::run(client, shutdown));
    let (a, b) = tokio::join!(rs, dep);
    a??;
    b??;
    Ok(())
}
