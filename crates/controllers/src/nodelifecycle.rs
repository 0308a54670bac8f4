//! Node lifecycle: a node whose agent stops renewing its Lease for longer
//! than the grace period (40 s by default, as kube-controller-manager's
//! `--node-monitor-grace-period`) gets `Ready=Unknown` and the
//! `node.kubernetes.io/unreachable` taints; pods on it that do not tolerate
//! the NoExecute taint are evicted, at once or after their
//! `tolerationSeconds` (300 s by default, added at admission). Their
//! ReplicaSets then replace them on the nodes that are left.

use chrono::{DateTime, Utc};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, Taint, Toleration};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use std::collections::HashMap;
use std::time::Duration;

pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";

fn jiff_to_chrono(ts: &k8s_openapi::jiff::Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(ts.as_second(), ts.subsec_nanosecond().max(0) as u32)
}

/// When the node was last heard from: its Lease renewal or its Ready
/// heartbeat, whichever is later.
fn last_heard(node: &Node, lease: Option<&Lease>) -> Option<DateTime<Utc>> {
    let renew = lease
        .and_then(|l| l.spec.as_ref())
        .and_then(|s| s.renew_time.as_ref())
        .and_then(|t| jiff_to_chrono(&t.0));
    let beat = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .and_then(|c| c.last_heartbeat_time.as_ref())
        .and_then(|t| jiff_to_chrono(&t.0));
    renew.max(beat)
}

fn taints(node: &Node) -> Vec<Taint> {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default()
}

/// When `pod` must leave a node with NoExecute `taint`: `None` if it
/// tolerates it forever, else the deadline.
pub fn eviction_deadline(
    tolerations: &[Toleration],
    taint: &Taint,
    added: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let matching: Vec<&Toleration> = tolerations
        .iter()
        .filter(|t| mast_api::taints::tolerates(t, taint))
        .collect();
    if matching.is_empty() {
        return Some(added);
    }
    // Tolerated forever if any matching toleration has no time limit.
    if matching.iter().any(|t| t.toleration_seconds.is_none()) {
        return None;
    }
    let secs = matching
        .iter()
        .filter_map(|t| t.toleration_seconds)
        .min()
        .unwrap_or(0)
        .max(0);
    Some(added + chrono::Duration::seconds(secs))
}

pub async fn run(
    client: Client,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    grace: Duration,
) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let pods: Api<Pod> = Api::all(client.clone());
    let grace = chrono::Duration::from_std(grace)?;
    loop {
        tokio::select! {
            _ = shutdown.changed() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let (Ok(node_list), Ok(lease_list)) = (
            nodes.list(&ListParams::default()).await,
            leases.list(&ListParams::default()).await,
        ) else {
            continue;
        };
        let by_name: HashMap<String, Lease> = lease_list
            .items
            .into_iter()
            .map(|l| (l.name_any(), l))
            .collect();
        let now = Utc::now();
        let mut tainted: HashMap<String, Vec<Taint>> = HashMap::new();
        for node in &node_list.items {
            let name = node.name_any();
            let heard = last_heard(node, by_name.get(&name));
            let silent = heard.is_none_or(|h| now - h > grace);
            let mut ts = taints(node);
            let has = ts.iter().any(|t| t.key == UNREACHABLE);
            if silent && !has {
                let stamp = now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
                let conds: Vec<_> = ["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"]
                    .iter()
                    .map(|ty| json!({"type": ty, "status": "Unknown", "reason": "NodeStatusUnknown",
                        "message": "Kubelet stopped posting node status.", "lastTransitionTime": stamp}))
                    .collect();
                let _ = nodes
                    .patch_status(
                        &name,
                        &PatchParams::default(),
                        &Patch::Strategic(json!({"status": {"conditions": conds}})),
                    )
                    .await;
                let mut new_taints: Vec<serde_json::Value> = ts
                    .iter()
                    .map(|t| serde_json::to_value(t).unwrap_or_default())
                    .collect();
                new_taints
                    .push(json!({"key": UNREACHABLE, "effect": "NoSchedule", "timeAdded": stamp}));
                new_taints
                    .push(json!({"key": UNREACHABLE, "effect": "NoExecute", "timeAdded": stamp}));
                match nodes
                    .patch(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"spec": {"taints": new_taints}})),
                    )
                    .await
                {
                    Ok(n) => {
                        tracing::warn!(node = %name, "node stopped reporting; marked unreachable");
                        ts = taints(&n);
                    }
                    Err(e) => tracing::debug!(node = %name, error = %e, "could not taint the node"),
                }
            } else if !silent && has {
                let kept: Vec<&Taint> = ts.iter().filter(|t| t.key != UNREACHABLE).collect();
                let kept = if kept.is_empty() {
                    json!(null)
                } else {
                    json!(kept)
                };
                if nodes
                    .patch(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"spec": {"taints": kept}})),
                    )
                    .await
                    .is_ok()
                {
                    tracing::info!(node = %name, "node is reporting again; taints removed");
                    ts.retain(|t| t.key != UNREACHABLE);
                }
            }
            let no_exec: Vec<Taint> = ts.into_iter().filter(|t| t.effect == "NoExecute").collect();
            if !no_exec.is_empty() {
                tainted.insert(name, no_exec);
            }
        }
        if tainted.is_empty() {
            continue;
        }
        // Taint-based eviction of pods on NoExecute-tainted nodes.
        let Ok(all) = pods.list(&ListParams::default()).await else {
            continue;
        };
        for pod in all.items {
            if pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
                continue;
            };
            let Some(node_taints) = tainted.get(&node) else {
                continue;
            };
            let tolerations = pod
                .spec
                .as_ref()
                .and_then(|s| s.tolerations.clone())
                .unwrap_or_default();
            let due = node_taints.iter().any(|t| {
                let added = t
                    .time_added
                    .as_ref()
                    .and_then(|x| jiff_to_chrono(&x.0))
                    .unwrap_or(now);
                eviction_deadline(&tolerations, t, added).is_some_and(|d| d <= now)
            });
            if due {
                let api: Api<Pod> =
                    Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
                match api.delete(&pod.name_any(), &DeleteParams::default()).await {
                    Ok(_) => {
                        tracing::info!(pod = %pod.name_any(), node = %node, "evicted from an unreachable node")
                    }
                    Err(e) => tracing::debug!(error = %e, "eviction failed"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tol(key: Option<&str>, op: &str, secs: Option<i64>) -> Toleration {
        Toleration {
            key: key.map(str::to_owned),
            operator: Some(op.into()),
            effect: Some("NoExecute".into()),
            toleration_seconds: secs,
            value: None,
        }
    }

    #[test]
    fn eviction_follows_toleration_seconds() {
        let taint = Taint {
            key: UNREACHABLE.into(),
            effect: "NoExecute".into(),
            value: None,
            time_added: None,
        };
        let t0 = Utc::now();
        assert_eq!(eviction_deadline(&[], &taint, t0), Some(t0));
        assert_eq!(
            eviction_deadline(&[tol(Some(UNREACHABLE), "Exists", Some(300))], &taint, t0),
            Some(t0 + chrono::Duration::seconds(300))
        );
        assert_eq!(
            eviction_deadline(&[tol(Some(UNREACHABLE), "Exists", None)], &taint, t0),
            None
        );
        assert_eq!(
            eviction_deadline(&[tol(None, "Exists", None)], &taint, t0),
            None
        );
        assert_eq!(
            eviction_deadline(&[tol(Some("other"), "Exists", None)], &taint, t0),
            Some(t0)
        );
    }
}
