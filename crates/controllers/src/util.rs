//! Helpers shared by the controllers: selectors, ownership, pod state.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, OwnerReference};
use kube::ResourceExt;

/// A LabelSelector in `?labelSelector=` syntax.
pub fn selector_string(sel: &LabelSelector) -> String {
    let mut parts: Vec<String> = sel
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for e in sel.match_expressions.iter().flatten() {
        let vals = e.values.clone().unwrap_or_default().join(",");
        parts.push(match e.operator.as_str() {
            "In" => format!("{} in ({vals})", e.key),
            "NotIn" => format!("{} notin ({vals})", e.key),
            "Exists" => e.key.clone(),
            "DoesNotExist" => format!("!{}", e.key),
            _ => e.key.clone(),
        });
    }
    parts.join(",")
}

/// The controller owner reference of an object, if any.
pub fn controller_of(refs: Option<&Vec<OwnerReference>>) -> Option<&OwnerReference> {
    refs.into_iter()
        .flatten()
        .find(|r| r.controller == Some(true))
}

/// An owner reference that makes `kind`/`name`/`uid` the controller.
pub fn owner_ref(api_version: &str, kind: &str, name: &str, uid: &str) -> OwnerReference {
    OwnerReference {
        api_version: api_version.into(),
        kind: kind.into(),
        name: name.into(),
        uid: uid.into(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Pods that count toward a ReplicaSet: not terminating, not finished.
pub fn is_active(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && !matches!(
            p.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        )
}

pub fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Order in which surplus pods are deleted, as Kubernetes ranks them:
/// unscheduled before scheduled, pending before running, not ready before
/// ready, then the youngest first.
pub fn deletion_rank(p: &Pod) -> (u8, u8, u8, std::cmp::Reverse<String>) {
    let scheduled = p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some();
    let running = p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
    let created = p
        .creation_timestamp()
        .map(|t| t.0.to_string())
        .unwrap_or_default();
    (
        scheduled as u8,
        running as u8,
        is_ready(p) as u8,
        std::cmp::Reverse(created),
    )
}

pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}
