//! Pod events from the agent, as the kubelet records them (`source.component:
//! kubelet`, `source.host: <node>`), so `kubectl describe pod` reads the same.

use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};

pub async fn record(client: &Client, pod: &Pod, node: &str, ty: &str, reason: &str, msg: &str) {
    let ns = pod.namespace().unwrap_or_default();
    let api: Api<Event> = Api::namespaced(client.clone(), &ns);
    let src = mast_api::events::Source {
        component: "kubelet",
        host: Some(node),
    };
    let uid = pod.uid().unwrap_or_default();
    let ev = mast_api::events::pod_event(&ns, &pod.name_any(), &uid, src, ty, reason, msg);
    match serde_json::from_value::<Event>(ev) {
        Ok(ev) => {
            if let Err(e) = api.create(&PostParams::default(), &ev).await {
                tracing::debug!(error = %e, "could not record an event");
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not build an event"),
    }
}
