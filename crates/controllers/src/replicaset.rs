//! The ReplicaSet controller: keeps `spec.replicas` pods matching the
//! selector, adopts orphans that match, releases pods that stop matching,
//! and reports status (replicas, ready, available).

use crate::util::{controller_of, deletion_rank, is_active, is_ready, owner_ref, selector_string};
use crate::{Ctx, Error};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::{Client, ResourceExt};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// Pods created or deleted per reconcile at most (Kubernetes' burst).
const BURST: usize = 500;

pub async fn run(
    client: Client,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    crate::run_controller::<ReplicaSet, Pod, _>(client, shutdown, "replicaset", reconcile).await
}

async fn reconcile(rs: Arc<ReplicaSet>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    if rs.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = rs.namespace().unwrap_or_default();
    let name = rs.name_any();
    let uid = rs.uid().unwrap_or_default();
    let spec = rs.spec.clone().unwrap_or_default();
    let selector = selector_string(&spec.selector);
    if selector.is_empty() {
        return Err(Error::Malformed {
            kind: "ReplicaSet",
            namespace: ns,
            name,
            reason: "empty selector".into(),
        });
    }
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let matching = pods
        .list(&ListParams::default().labels(&selector))
        .await?
        .items;

    // Adopt orphans that match; owned pods that stop matching are released
    // by the garbage collector's rules (their ownerReference stays).
    let mut owned = vec![];
    for p in matching {
        match controller_of(p.metadata.owner_references.as_ref()) {
            Some(r) if r.uid == uid => owned.push(p),
            Some(_) => {}
            None if is_active(&p) => {
                let patch = json!({"metadata": {"ownerReferences": [owner_ref("apps/v1", "ReplicaSet", &name, &uid)]}});
                if pods
                    .patch(
                        &p.name_any(),
                        &PatchParams::default(),
                        &Patch::Strategic(&patch),
                    )
                    .await
                    .is_ok()
                {
                    owned.push(p);
                }
            }
            None => {}
        }
    }
    let active: Vec<&Pod> = owned.iter().filter(|p| is_active(p)).collect();
    let want = spec.replicas.unwrap_or(1).max(0) as usize;
    if active.len() < want {
        let template = spec.template.clone().unwrap_or_default();
        let n = (want - active.len()).min(BURST);
        for _ in 0..n {
            let mut meta = template.metadata.clone().unwrap_or_default();
            meta.generate_name = Some(format!("{name}-"));
            meta.name = None;
            meta.namespace = Some(ns.clone());
            meta.owner_references = Some(vec![owner_ref("apps/v1", "ReplicaSet", &name, &uid)]);
            let pod = Pod {
                metadata: meta,
                spec: template.spec.clone(),
                status: None,
            };
            pods.create(&PostParams::default(), &pod).await?;
        }
        tracing::info!(replicaset = %format!("{ns}/{name}"), created = n, "scaled up");
    } else if active.len() > want {
        let mut victims: Vec<&&Pod> = active.iter().collect();
        victims.sort_by_key(|p| deletion_rank(p));
        let n = (active.len() - want).min(BURST);
        for p in victims.into_iter().take(n) {
            match pods.delete(&p.name_any(), &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
        tracing::info!(replicaset = %format!("{ns}/{name}"), deleted = n, "scaled down");
    }

    // Status from what is observed now.
    let current = pods
        .list(&ListParams::default().labels(&selector))
        .await?
        .items;
    let mine: Vec<&Pod> = current
        .iter()
        .filter(|p| {
            controller_of(p.metadata.owner_references.as_ref()).is_some_and(|r| r.uid == uid)
                && is_active(p)
        })
        .collect();
    let ready = mine.iter().filter(|p| is_ready(p)).count();
    let labels = spec
        .template
        .as_ref()
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let fully = mine
        .iter()
        .filter(|p| labels.iter().all(|(k, v)| p.labels().get(k) == Some(v)))
        .count();
    let status = json!({"status": {
        "replicas": mine.len(), "fullyLabeledReplicas": fully, "readyReplicas": ready, "availableReplicas": ready,
        "observedGeneration": rs.metadata.generation,
    }});
    let rss: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &ns);
    rss.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    if mine.len() != want {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    Ok(Action::requeue(Duration::from_secs(300)))
}
