//! mast's scheduler: binds pending pods to nodes.
//!
//! It watches Nodes and Pods through the Kubernetes API (kube-rs reflectors),
//! so it runs unchanged against any API server. For each pending pod, in
//! creation order, the filters in [`rules`] pick the nodes that can take it
//! and the score picks the best; the pod is bound through the `binding`
//! subresource, as kube-scheduler does. A pod that fits nowhere gets
//! `PodScheduled=False` with reason `Unschedulable` and a `FailedScheduling`
//! event naming why each node failed.

pub mod rules;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::{Client, ResourceExt};
use serde_json::json;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The scheduler's name, matched against `spec.schedulerName`.
pub const DEFAULT_SCHEDULER: &str = "default-scheduler";

/// Run the scheduler until `shutdown` turns true.
pub async fn run(
    client: Client,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let (nodes, nodes_w) = reflector::store::<Node>();
    let (pods, pods_w) = reflector::store::<Pod>();
    let (tick_tx, mut tick) = tokio::sync::mpsc::channel::<()>(1);
    let node_stream = reflector(
        nodes_w,
        watcher(Api::<Node>::all(client.clone()), watcher::Config::default()),
    )
    .default_backoff()
    .touched_objects();
    let pod_stream = reflector(
        pods_w,
        watcher(Api::<Pod>::all(client.clone()), watcher::Config::default()),
    )
    .default_backoff()
    .touched_objects();
    let t1 = tick_tx.clone();
    tokio::spawn(async move {
        let mut s = std::pin::pin!(node_stream);
        while s.next().await.is_some() {
            let _ = t1.try_send(());
        }
    });
    let t2 = tick_tx.clone();
    tokio::spawn(async move {
        let mut s = std::pin::pin!(pod_stream);
        while s.next().await.is_some() {
            let _ = t2.try_send(());
        }
    });
    nodes.wait_until_ready().await?;
    pods.wait_until_ready().await?;
    tracing::info!("scheduler started");
    let mut state = State::default();
    loop {
        tokio::select! {
            _ = shutdown.changed() => return Ok(()),
            _ = tick.recv() => {}
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
        let node_list: Vec<Node> = nodes.state().iter().map(|n| (**n).clone()).collect();
        let pod_list: Vec<Pod> = pods.state().iter().map(|p| (**p).clone()).collect();
        state.round(&client, &node_list, pod_list).await;
    }
}

/// What the scheduler remembers between rounds.
#[derive(Default)]
struct State {
    /// Pods bound by us whose binding the watch has not shown yet:
    /// uid → (node, when). Like kube-scheduler's assume cache.
    assumed: HashMap<String, (String, Instant)>,
    /// The last unschedulable message written per pod uid.
    reported: HashMap<String, String>,
}

fn is_pending(p: &Pod) -> bool {
    let spec = p.spec.as_ref();
    spec.is_some_and(|s| s.node_name.as_deref().is_none_or(str::is_empty))
        && spec
            .and_then(|s| s.scheduler_name.as_deref())
            .is_none_or(|n| n == DEFAULT_SCHEDULER)
        && p.metadata.deletion_timestamp.is_none()
}

fn is_finished(p: &Pod) -> bool {
    matches!(
        p.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

impl State {
    async fn round(&mut self, client: &Client, nodes: &[Node], pods: Vec<Pod>) {
        self.assumed
            .retain(|_, (_, at)| at.elapsed() < Duration::from_secs(30));
        let mut bound: Vec<Pod> = vec![];
        let mut pending: Vec<Pod> = vec![];
        for mut p in pods {
            let uid = p.uid().unwrap_or_default();
            if is_pending(&p) {
                if let Some((node, _)) = self.assumed.get(&uid) {
                    if let Some(s) = p.spec.as_mut() {
                        s.node_name = Some(node.clone());
                    }
                    bound.push(p);
                } else {
                    pending.push(p);
                }
            } else {
                self.assumed.remove(&uid);
                if !is_finished(&p) && p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some()
                {
                    bound.push(p);
                }
            }
        }
        if pending.is_empty() {
            return;
        }
        pending.sort_by_key(|p| p.metadata.creation_timestamp.clone().map(|t| t.0));
        // Decide every pod in memory first, accounting each placement in
        // the snapshot, then bind them all concurrently.
        let mut snap = rules::Snapshot::new(nodes, bound);
        let mut decisions = vec![];
        for pod in pending {
            let mut best: Option<(&Node, i64)> = None;
            let mut reasons = vec![];
            for n in nodes {
                match rules::filter(&pod, n, &snap) {
                    Ok(()) => {
                        let s = rules::score(&pod, n, &snap);
                        if best.is_none_or(|(_, b)| s > b) {
                            best = Some((n, s));
                        }
                    }
                    Err(r) => reasons.push(r),
                }
            }
            let uid = pod.uid().unwrap_or_default();
            match best {
                Some((node, _)) => {
                    let node_name = node.name_any();
                    self.assumed
                        .insert(uid.clone(), (node_name.clone(), Instant::now()));
                    self.reported.remove(&uid);
                    let mut placed = pod.clone();
                    if let Some(s) = placed.spec.as_mut() {
                        s.node_name = Some(node_name.clone());
                    }
                    snap.add(placed);
                    decisions.push((pod, node_name));
                }
                None => {
                    let msg = rules::unschedulable_message(nodes.len(), &reasons);
                    if self.reported.get(&uid) != Some(&msg) {
                        mark_unschedulable(client, &pod, &msg).await;
                        spawn_event(client, &pod, "Warning", "FailedScheduling", msg.clone());
                        self.reported.insert(uid, msg);
                    }
                }
            }
        }
        let results: Vec<(String, bool)> = futures::stream::iter(decisions)
            .map(|(pod, node)| async move {
                let ok = match bind(client, &pod, &node).await {
                    Ok(()) => {
                        let msg = format!("Successfully assigned {}/{} to {node}", pod.namespace().unwrap_or_default(), pod.name_any());
                        spawn_event(client, &pod, "Normal", "Scheduled", msg);
                        true
                    }
                    Err(e) => {
                        tracing::debug!(pod = %pod.name_any(), error = %e, "binding failed; will retry");
                        false
                    }
                };
                (pod.uid().unwrap_or_default(), ok)
            })
            .buffer_unordered(BIND_CONCURRENCY)
            .collect()
            .await;
        for (uid, ok) in results {
            if !ok {
                self.assumed.remove(&uid);
            }
        }
    }
}

/// Bindings in flight at once.
const BIND_CONCURRENCY: usize = 32;

fn spawn_event(client: &Client, pod: &Pod, ty: &'static str, reason: &'static str, msg: String) {
    let (client, pod) = (client.clone(), pod.clone());
    tokio::spawn(async move { event(&client, &pod, ty, reason, &msg).await });
}

async fn bind(client: &Client, pod: &Pod, node: &str) -> anyhow::Result<()> {
    let ns = pod.namespace().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let binding = json!({"apiVersion": "v1", "kind": "Binding",
        "metadata": {"name": pod.name_any(), "namespace": ns, "uid": pod.uid()},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node}});
    api.create_subresource::<_, serde_json::Value>(
        "binding",
        &pod.name_any(),
        &PostParams::default(),
        &binding,
    )
    .await?;
    Ok(())
}

async fn mark_unschedulable(client: &Client, pod: &Pod, msg: &str) {
    let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
    let patch = json!({"status": {"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
        "message": msg, "lastProbeTime": null, "lastTransitionTime": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)}]}});
    if let Err(e) = api
        .patch_status(
            &pod.name_any(),
            &PatchParams::default(),
            &Patch::Strategic(patch),
        )
        .await
    {
        tracing::debug!(pod = %pod.name_any(), error = %e, "could not mark the pod unschedulable");
    }
}

/// Record a core/v1 Event about a pod, from `default-scheduler`.
async fn event(client: &Client, pod: &Pod, ty: &str, reason: &str, msg: &str) {
    let ns = pod.namespace().unwrap_or_default();
    let api: Api<Event> = Api::namespaced(client.clone(), &ns);
    let src = mast_api::events::Source {
        component: DEFAULT_SCHEDULER,
        host: None,
    };
    let uid = pod.uid().unwrap_or_default();
    let ev = mast_api::events::event("Pod", &ns, &pod.name_any(), &uid, src, ty, reason, msg);
    match serde_json::from_value::<Event>(ev) {
        Ok(ev) => {
            if let Err(e) = api.create(&PostParams::default(), &ev).await {
                tracing::debug!(error = %e, "could not record an event");
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not build an event"),
    }
}
