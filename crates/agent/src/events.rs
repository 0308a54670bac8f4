//! Pod events from the agent, as the kubelet records them (`source.component:
//! kubelet`, `source.host: <node>`), so `kubectl describe pod` reads the same.

use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

pub async fn record(client: &Client, pod: &Pod, node: &str, ty: &str, reason: &str, msg: &str) {
    let ns = pod.namespace().unwrap_or_default();
    let api: Api<Event> = Api::namespaced(client.clone(), &ns);
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let ev = json!({"apiVersion": "v1", "kind": "Event",
        "metadata": {"generateName": format!("{}.", pod.name_any()), "namespace": ns},
        "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": pod.name_any(), "namespace": ns, "uid": pod.uid()},
        "reason": reason, "message": msg, "type": ty, "count": 1,
        "firstTimestamp": now, "lastTimestamp": now,
        "source": {"component": "kubelet", "host": node}, "reportingComponent": "kubelet", "reportingInstance": node});
    match serde_json::from_value::<Event>(ev) {
        Ok(ev) => {
            if let Err(e) = api.create(&PostParams::default(), &ev).await {
                tracing::debug!(error = %e, "could not record an event");
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not build an event"),
    }
}
