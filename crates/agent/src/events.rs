//! Pod events from the agent, as the kubelet records them (`source.component:
//! kubelet`, `source.host: <node>`), so `kubectl describe pod` reads the same.
//! A repeat of the same event about the same pod (a crash loop's `BackOff`,
//! say) bumps the existing Event's `count` and `lastTimestamp` instead of
//! adding another, as client-go's event correlator does; `kubectl describe`
//! then shows `(x5 over 2m)`.

use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use std::collections::HashMap;
use std::sync::Mutex;

/// (pod uid, type, reason, message) → (event name, count so far).
type Seen = HashMap<(String, String, String, String), (String, i32)>;

fn seen() -> &'static Mutex<Seen> {
    static SEEN: std::sync::OnceLock<Mutex<Seen>> = std::sync::OnceLock::new();
    SEEN.get_or_init(Default::default)
}

pub async fn record(client: &Client, pod: &Pod, node: &str, ty: &str, reason: &str, msg: &str) {
    let ns = pod.namespace().unwrap_or_default();
    let api: Api<Event> = Api::namespaced(client.clone(), &ns);
    let uid = pod.uid().unwrap_or_default();
    let key = (
        uid.clone(),
        ty.to_owned(),
        reason.to_owned(),
        msg.to_owned(),
    );
    let earlier = seen().lock().ok().and_then(|s| s.get(&key).cloned());
    if let Some((name, count)) = earlier {
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let patch = json!({"count": count + 1, "lastTimestamp": now});
        if api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .is_ok()
        {
            if let Ok(mut s) = seen().lock() {
                s.insert(key, (name, count + 1));
            }
            return;
        }
    }
    let src = mast_api::events::Source {
        component: "kubelet",
        host: Some(node),
    };
    let ev = mast_api::events::event("Pod", &ns, &pod.name_any(), &uid, src, ty, reason, msg);
    match serde_json::from_value::<Event>(ev) {
        Ok(ev) => match api.create(&PostParams::default(), &ev).await {
            Ok(created) => {
                if let Ok(mut s) = seen().lock() {
                    // Bounded: forget everything now and then rather than grow.
                    if s.len() > 4096 {
                        s.clear();
                    }
                    s.insert(key, (created.name_any(), 1));
                }
            }
            Err(e) => tracing::debug!(error = %e, "could not record an event"),
        },
        Err(e) => tracing::warn!(error = %e, "could not build an event"),
    }
}
