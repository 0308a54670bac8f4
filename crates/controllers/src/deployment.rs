//! The Deployment controller: one ReplicaSet per distinct pod template
//! (named `<deployment>-<template hash>`), rolled over with RollingUpdate
//! (within maxSurge / maxUnavailable) or Recreate. Each ReplicaSet carries the
//! `deployment.kubernetes.io/revision` annotation that `kubectl rollout
//! history` lists and `kubectl rollout undo` goes back to; a template that
//! matches an old ReplicaSet reuses it under a new revision, as Kubernetes
//! does.

use crate::util::{controller_of, owner_ref, selector_string};
use crate::{Ctx, Error};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::{Client, ResourceExt};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

pub const REVISION: &str = "deployment.kubernetes.io/revision";
const HASH_LABEL: &str = "pod-template-hash";
const CHANGE_CAUSE: &str = "kubernetes.io/change-cause";

pub async fn run(
    client: Client,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    crate::run_controller::<Deployment, ReplicaSet, _>(client, shutdown, "deployment", reconcile)
        .await
}

/// JSON with object keys sorted, so equal templates hash equally.
fn canonical(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let sorted: BTreeMap<&String, Value> =
                m.iter().map(|(k, v)| (k, canonical(v))).collect();
            json!(sorted)
        }
        Value::Array(a) => Value::Array(a.iter().map(canonical).collect()),
        other => other.clone(),
    }
}

/// The pod-template hash: of the template without its own hash label,
/// written in Kubernetes' safe alphabet (no vowels, no look-alikes).
pub fn template_hash(template: &Value) -> String {
    use sha2::Digest;
    let mut t = template.clone();
    if let Some(l) = t
        .get_mut("metadata")
        .and_then(|m| m.get_mut("labels"))
        .and_then(Value::as_object_mut)
    {
        l.remove(HASH_LABEL);
    }
    let digest = sha2::Sha256::digest(canonical(&t).to_string().as_bytes());
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut n = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"));
    (0..10)
        .map(|_| {
            let c = ALPHABET[(n % ALPHABET.len() as u64) as usize] as char;
            n /= ALPHABET.len() as u64;
            c
        })
        .collect()
}

/// Resolve an int-or-percent against `total`, rounding up or down.
pub fn resolve(v: Option<&IntOrString>, total: i32, round_up: bool, default: &str) -> i32 {
    let s = match v {
        Some(IntOrString::Int(i)) => return (*i).max(0),
        Some(IntOrString::String(s)) => s.clone(),
        None => default.to_owned(),
    };
    match s.strip_suffix('%').and_then(|p| p.parse::<f64>().ok()) {
        Some(pct) => {
            let x = pct * total as f64 / 100.0;
            (if round_up { x.ceil() } else { x.floor() }) as i32
        }
        None => s.parse().unwrap_or(0),
    }
}

fn revision(rs: &ReplicaSet) -> i64 {
    rs.annotations()
        .get(REVISION)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn spec_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

/// The pods of `rs` that count as available. A ReplicaSet that was just
/// scaled down still reports its old count until its controller has deleted
/// the surplus and written status again; never more than `spec.replicas`
/// stay, so counting beyond that would let a rollout cut below
/// `maxUnavailable`.
fn available(rs: &ReplicaSet) -> i32 {
    rs.status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0)
        .min(spec_replicas(rs))
}

/// The rolling update's scale-down step, as Kubernetes'
/// `reconcileOldReplicaSets` does it: first the old pods that are not
/// available anyway, then available ones while `desired - maxUnavailable`
/// stay available. `olds` and `new` are (spec.replicas, available) pairs;
/// the answer is each old ReplicaSet's new size, or `None` when nothing
/// changes.
fn scale_down_olds(
    olds: &[(i32, i32)],
    new: (i32, i32),
    desired: i32,
    max_unavailable: i32,
) -> Option<Vec<i32>> {
    let min_available = desired - max_unavailable;
    let total: i32 = olds.iter().map(|o| o.0).sum::<i32>() + new.0;
    let new_unavailable = (new.0 - new.1).max(0);
    let mut sizes: Vec<i32> = olds.iter().map(|o| o.0).collect();
    let changed = |sizes: &[i32]| sizes.iter().zip(olds).any(|(s, o)| *s != o.0);
    let mut budget = total - min_available - new_unavailable;
    for (size, &(spec, avail)) in sizes.iter_mut().zip(olds) {
        if budget <= 0 {
            break;
        }
        let unhealthy = (spec - avail).max(0).min(budget);
        *size -= unhealthy;
        budget -= unhealthy;
    }
    if changed(&sizes) {
        return Some(sizes);
    }
    let mut budget = olds.iter().map(|o| o.1).sum::<i32>() + new.1 - min_available;
    for size in sizes.iter_mut() {
        if budget <= 0 {
            break;
        }
        let cut = (*size).min(budget);
        *size -= cut;
        budget -= cut;
    }
    changed(&sizes).then_some(sizes)
}

async fn scale(api: &Api<ReplicaSet>, rs: &ReplicaSet, to: i32, extra: Value) -> Result<(), Error> {
    let mut patch = json!({"spec": {"replicas": to}});
    if let Value::Object(m) = extra {
        patch["metadata"] = json!({"annotations": m});
    }
    api.patch(
        &rs.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(())
}

async fn reconcile(d: Arc<Deployment>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    if d.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = d.namespace().unwrap_or_default();
    let name = d.name_any();
    let uid = d.uid().unwrap_or_default();
    let spec = d.spec.clone().unwrap_or_default();
    let selector = selector_string(&spec.selector);
    if selector.is_empty() {
        return Err(Error::Malformed {
            kind: "Deployment",
            namespace: ns,
            name,
            reason: "empty selector".into(),
        });
    }
    let api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &ns);
    let mut all: Vec<ReplicaSet> = api
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
        .into_iter()
        .filter(|rs| {
            controller_of(rs.metadata.owner_references.as_ref()).is_some_and(|r| r.uid == uid)
        })
        .collect();
    all.sort_by_key(revision);
    let template = serde_json::to_value(&spec.template)?;
    let hash = template_hash(&template);
    let max_rev = all.iter().map(revision).max().unwrap_or(0);
    let desired = spec.replicas.unwrap_or(1).max(0);
    let change_cause = d.annotations().get(CHANGE_CAUSE).cloned();

    let new_rs = all.iter().find(|rs| {
        rs.spec
            .as_ref()
            .and_then(|s| serde_json::to_value(&s.template).ok())
            .map(|t| template_hash(&t))
            == Some(hash.clone())
    });
    let strategy = spec.strategy.clone().unwrap_or_default();
    let recreate = strategy.type_.as_deref() == Some("Recreate");
    let ru = strategy.rolling_update.clone().unwrap_or_default();
    let mut max_surge = resolve(ru.max_surge.as_ref(), desired, true, "25%");
    let mut max_unavailable = resolve(ru.max_unavailable.as_ref(), desired, false, "25%");
    if recreate {
        max_surge = 0;
        max_unavailable = desired;
    } else if max_surge == 0 && max_unavailable == 0 {
        max_unavailable = 1;
    }

    let new_rs = match new_rs {
        Some(rs) => {
            // A template that went back to an older ReplicaSet makes it the
            // newest revision again (what `kubectl rollout undo` relies on).
            if revision(rs) < max_rev {
                let mut ann = json!({REVISION: (max_rev + 1).to_string()});
                if let Some(c) = &change_cause {
                    ann[CHANGE_CAUSE] = json!(c);
                }
                api.patch(
                    &rs.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"annotations": ann}})),
                )
                .await?;
                return Ok(Action::requeue(Duration::from_millis(200)));
            }
            rs.clone()
        }
        None => {
            let old_total: i32 = all.iter().map(spec_replicas).sum();
            let initial = if recreate && old_total > 0 {
                0
            } else if recreate || all.is_empty() {
                desired
            } else {
                (desired + max_surge - old_total).clamp(0, desired)
            };
            let mut t = template.clone();
            t["metadata"]["labels"][HASH_LABEL] = json!(hash);
            let mut sel = serde_json::to_value(&spec.selector)?;
            sel["matchLabels"][HASH_LABEL] = json!(hash);
            let mut annotations = json!({REVISION: (max_rev + 1).to_string(),
                "deployment.kubernetes.io/desired-replicas": desired.to_string(),
                "deployment.kubernetes.io/max-replicas": (desired + max_surge).to_string()});
            if let Some(c) = &change_cause {
                annotations[CHANGE_CAUSE] = json!(c);
            }
            let rs: ReplicaSet = serde_json::from_value(json!({
                "apiVersion": "apps/v1", "kind": "ReplicaSet",
                "metadata": {"name": format!("{name}-{hash}"), "namespace": ns, "labels": t["metadata"]["labels"],
                    "annotations": annotations, "ownerReferences": [owner_ref("apps/v1", "Deployment", &name, &uid)]},
                "spec": {"replicas": initial, "minReadySeconds": spec.min_ready_seconds.unwrap_or(0), "selector": sel, "template": t},
            }))?;
            match api.create(&PostParams::default(), &rs).await {
                Ok(rs) => {
                    tracing::info!(deployment = %format!("{ns}/{name}"), replicaset = %rs.name_any(), "created new ReplicaSet");
                    let patch =
                        json!({"metadata": {"annotations": {REVISION: (max_rev + 1).to_string()}}});
                    let deps: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
                    deps.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await?;
                }
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
            return Ok(Action::requeue(Duration::from_millis(200)));
        }
    };
    let new_name = new_rs.name_any();
    let olds: Vec<&ReplicaSet> = all.iter().filter(|rs| rs.name_any() != new_name).collect();
    let old_total: i32 = olds.iter().map(|r| spec_replicas(r)).sum();
    let total: i32 = old_total + spec_replicas(&new_rs);
    let mut changed = false;

    // Keep the Deployment's revision annotation on the newest ReplicaSet.
    let new_rev = revision(&new_rs).to_string();
    if d.annotations().get(REVISION) != Some(&new_rev) {
        let deps: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
        deps.patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {REVISION: new_rev}}})),
        )
        .await?;
    }

    let annotations = json!({"deployment.kubernetes.io/desired-replicas": desired.to_string(),
        "deployment.kubernetes.io/max-replicas": (desired + max_surge).to_string()});
    if recreate {
        if old_total > 0 {
            for rs in olds.iter().filter(|r| spec_replicas(r) > 0) {
                scale(&api, rs, 0, annotations.clone()).await?;
            }
            changed = true;
        } else if olds
            .iter()
            .all(|r| r.status.as_ref().map(|s| s.replicas).unwrap_or(0) == 0)
            && spec_replicas(&new_rs) != desired
        {
            scale(&api, &new_rs, desired, annotations.clone()).await?;
            changed = true;
        }
    } else {
        // Scale the new ReplicaSet up within maxSurge (or down to desired).
        let new_count = spec_replicas(&new_rs);
        if new_count > desired {
            scale(&api, &new_rs, desired, annotations.clone()).await?;
            changed = true;
        } else if new_count < desired {
            let room = desired + max_surge - total;
            if room > 0 {
                scale(
                    &api,
                    &new_rs,
                    (new_count + room).min(desired),
                    annotations.clone(),
                )
                .await?;
                changed = true;
            }
        }
        // Scale old ReplicaSets down while keeping desired - maxUnavailable
        // pods available.
        if !changed && old_total > 0 {
            let pairs: Vec<(i32, i32)> = olds
                .iter()
                .map(|r| (spec_replicas(r), available(r)))
                .collect();
            let new_pair = (spec_replicas(&new_rs), available(&new_rs));
            if let Some(sizes) = scale_down_olds(&pairs, new_pair, desired, max_unavailable) {
                for (rs, to) in olds.iter().zip(sizes) {
                    if to != spec_replicas(rs) {
                        scale(&api, rs, to, annotations.clone()).await?;
                    }
                }
                changed = true;
            }
        }
    }

    // Old ReplicaSets beyond revisionHistoryLimit go once scaled to zero.
    let limit = spec.revision_history_limit.unwrap_or(10).max(0) as usize;
    let idle: Vec<&&ReplicaSet> = olds
        .iter()
        .filter(|r| {
            spec_replicas(r) == 0 && r.status.as_ref().map(|s| s.replicas).unwrap_or(0) == 0
        })
        .collect();
    if idle.len() > limit {
        for rs in idle.iter().take(idle.len() - limit) {
            let _ = api.delete(&rs.name_any(), &DeleteParams::default()).await;
        }
    }

    // Status, as `kubectl rollout status` and `kubectl get deploy` read it.
    let st = |r: &ReplicaSet,
              f: fn(&k8s_openapi::api::apps::v1::ReplicaSetStatus) -> Option<i32>| {
        r.status.as_ref().and_then(f).unwrap_or(0)
    };
    let replicas: i32 = all.iter().map(|r| st(r, |s| Some(s.replicas))).sum();
    let ready: i32 = all.iter().map(|r| st(r, |s| s.ready_replicas)).sum();
    let avail: i32 = all.iter().map(available).sum();
    let updated = st(&new_rs, |s| Some(s.replicas));
    let now = crate::util::now();
    let available_ok = avail >= desired - max_unavailable;
    let complete = updated == desired
        && replicas == desired
        && avail == desired
        && spec_replicas(&new_rs) == desired;
    let existing = d
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let transition = |ty: &str, status: &str| {
        existing
            .iter()
            .find(|c| c.type_ == ty && c.status == status)
            .and_then(|c| c.last_transition_time.clone())
            .map(|t| t.0.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
            .unwrap_or_else(|| now.clone())
    };
    let (a_status, a_reason, a_msg) = if available_ok {
        (
            "True",
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.",
        )
    } else {
        (
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.",
        )
    };
    let (p_reason, p_msg) = if complete {
        (
            "NewReplicaSetAvailable",
            format!("ReplicaSet \"{new_name}\" has successfully progressed."),
        )
    } else {
        (
            "ReplicaSetUpdated",
            format!("ReplicaSet \"{new_name}\" is progressing."),
        )
    };
    let status = json!({"status": {
        "observedGeneration": d.metadata.generation,
        "replicas": replicas, "updatedReplicas": updated, "readyReplicas": ready, "availableReplicas": avail,
        "unavailableReplicas": (replicas - avail).max(0),
        "conditions": [
            {"type": "Available", "status": a_status, "reason": a_reason, "message": a_msg,
             "lastUpdateTime": now, "lastTransitionTime": transition("Available", a_status)},
            {"type": "Progressing", "status": "True", "reason": p_reason, "message": p_msg,
             "lastUpdateTime": now, "lastTransitionTime": transition("Progressing", "True")},
        ],
    }});
    let deps: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    deps.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    if changed || !complete {
        return Ok(Action::requeue(Duration::from_millis(500)));
    }
    Ok(Action::requeue(Duration::from_secs(300)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_hash_ignores_key_order_and_its_own_label() {
        let a = json!({"metadata": {"labels": {"app": "web", "tier": "f"}}, "spec": {"containers": [{"name": "c", "image": "x"}]}});
        let b = json!({"spec": {"containers": [{"image": "x", "name": "c"}]}, "metadata": {"labels": {"tier": "f", "app": "web", HASH_LABEL: "zzz"}}});
        assert_eq!(template_hash(&a), template_hash(&b));
        assert_eq!(template_hash(&a).len(), 10);
        let c = json!({"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "y"}]}});
        assert_ne!(template_hash(&a), template_hash(&c));
    }

    #[test]
    fn surge_and_unavailable_round_as_kubernetes() {
        let pct = |s: &str| IntOrString::String(s.into());
        assert_eq!(resolve(Some(&pct("25%")), 3, true, "25%"), 1);
        assert_eq!(resolve(Some(&pct("25%")), 3, false, "25%"), 0);
        assert_eq!(resolve(Some(&IntOrString::Int(2)), 3, false, "25%"), 2);
        assert_eq!(resolve(None, 10, false, "25%"), 2);
    }

    #[test]
    fn rolling_scale_down_keeps_desired_minus_max_unavailable() {
        // 3 replicas, maxUnavailable 1: the first new pod is ready, so two
        // old pods may go.
        assert_eq!(scale_down_olds(&[(3, 3)], (1, 1), 3, 1), Some(vec![1]));
        // The new ReplicaSet grew to 3 with one ready: the last old pod
        // must stay.
        assert_eq!(scale_down_olds(&[(1, 1)], (3, 1), 3, 1), None);
        // Old pods that are not available go first, whatever the count.
        assert_eq!(scale_down_olds(&[(3, 1)], (1, 0), 3, 1), Some(vec![2]));
        assert_eq!(
            scale_down_olds(&[(0, 0), (2, 2)], (3, 3), 3, 1),
            Some(vec![0, 0])
        );
    }

    #[test]
    fn a_status_not_yet_written_after_a_scale_down_counts_no_more_than_spec() {
        // The old ReplicaSet was cut from 3 to 1, but its controller has not
        // written status yet: it still says 3 available. Counting those
        // would remove the last old pod with only one new pod ready.
        let rs: ReplicaSet = serde_json::from_value(json!({
            "metadata": {"name": "echo-old"},
            "spec": {"replicas": 1, "selector": {}},
            "status": {"replicas": 3, "availableReplicas": 3},
        }))
        .expect("rs");
        assert_eq!(available(&rs), 1);
        let olds = [(spec_replicas(&rs), available(&rs))];
        assert_eq!(scale_down_olds(&olds, (3, 1), 3, 1), None);
        assert_eq!(scale_down_olds(&[(1, 3)], (3, 1), 3, 1), Some(vec![0]));
    }
}
