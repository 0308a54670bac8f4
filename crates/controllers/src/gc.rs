//! The garbage collector: deletes objects whose owners are all gone, and
//! carries out the `foregroundDeletion` and `orphan` finalizers that a
//! delete with `propagationPolicy` Foreground or Orphan leaves on an owner.
//!
//! Every served resource (found through discovery, custom resources
//! included) is read each pass, so the collector needs no per-kind code.
//! A pass is a full scan; it is simple and correct, and fine at the scale
//! mast targets on one machine. Watch-driven collection can replace it when
//! a benchmark asks for it.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{
    Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PropagationPolicy,
};
use kube::discovery::{verbs, ApiResource, Discovery, Scope};
use kube::{Client, ResourceExt};
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

const FOREGROUND: &str = "foregroundDeletion";
const ORPHAN: &str = "orphan";

/// The API of `ar`, in namespace `ns` when the kind is namespaced.
fn api_in(
    client: &Client,
    ar: &ApiResource,
    namespaced: bool,
    ns: Option<String>,
) -> Api<DynamicObject> {
    match (namespaced, ns) {
        (true, Some(ns)) => Api::namespaced_with(client.clone(), &ns, ar),
        _ => Api::all_with(client.clone(), ar),
    }
}

/// One object and where it is served.
struct Item {
    ar: ApiResource,
    namespaced: bool,
    obj: DynamicObject,
}

impl Item {
    fn api(&self, client: &Client) -> Api<DynamicObject> {
        api_in(client, &self.ar, self.namespaced, self.obj.namespace())
    }
    fn uid(&self) -> String {
        self.obj.uid().unwrap_or_default()
    }
    fn owners(&self) -> &[OwnerReference] {
        self.obj
            .metadata
            .owner_references
            .as_deref()
            .unwrap_or_default()
    }
    fn has_finalizer(&self, f: &str) -> bool {
        self.obj.finalizers().iter().any(|x| x == f)
    }
}

pub async fn run(
    client: Client,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut resources: Vec<(ApiResource, bool)> = vec![];
    let mut discovered = Instant::now() - Duration::from_secs(3600);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        if discovered.elapsed() > Duration::from_secs(30) {
            match Discovery::new(client.clone()).run().await {
                Ok(d) => {
                    resources = d
                        .groups()
                        .flat_map(|g| g.recommended_resources())
                        .filter(|(ar, caps)| {
                            caps.supports_operation(verbs::LIST)
                                && caps.supports_operation(verbs::DELETE)
                                && ar.kind != "Event"
                        })
                        .map(|(ar, caps)| (ar, caps.scope == Scope::Namespaced))
                        .collect();
                    discovered = Instant::now();
                }
                Err(e) => {
                    tracing::warn!(error = %e, "garbage collector: discovery failed");
                    continue;
                }
            }
        }
        if let Err(e) = pass(&client, &resources).await {
            tracing::debug!(error = %e, "garbage collection pass");
        }
    }
}

async fn pass(client: &Client, resources: &[(ApiResource, bool)]) -> anyhow::Result<()> {
    let mut items = vec![];
    for (ar, namespaced) in resources {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), ar);
        match api.list(&ListParams::default()).await {
            Ok(list) => items.extend(list.items.into_iter().map(|obj| Item {
                ar: ar.clone(),
                namespaced: *namespaced,
                obj,
            })),
            Err(e) => {
                tracing::debug!(kind = %ar.kind, error = %e, "garbage collector could not list")
            }
        }
    }
    let by_uid: HashMap<String, &Item> = items.iter().map(|i| (i.uid(), i)).collect();
    let mut dependents: HashMap<String, Vec<&Item>> = HashMap::new();
    for i in &items {
        for o in i.owners() {
            dependents.entry(o.uid.clone()).or_default().push(i);
        }
    }

    for i in &items {
        if i.owners().is_empty() || i.obj.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let live: Vec<&&Item> = i
            .owners()
            .iter()
            .filter_map(|o| by_uid.get(&o.uid))
            .collect();
        // All owners gone: the dependent goes too (in the background).
        let orphaned = live.is_empty();
        // An owner being deleted in the foreground takes its dependents first.
        let foreground = live
            .iter()
            .any(|o| o.obj.metadata.deletion_timestamp.is_some() && o.has_finalizer(FOREGROUND));
        let all_orphaning = !live.is_empty()
            && live
                .iter()
                .all(|o| o.obj.metadata.deletion_timestamp.is_some() && o.has_finalizer(ORPHAN));
        // The pass lists one kind after another, so an owner created after
        // its kind was listed (a Service, then its EndpointSlice) looks
        // gone. Ask the API server before collecting, as Kubernetes' GC does.
        if orphaned && owners_live(client, resources, i).await {
            continue;
        }
        if (orphaned || foreground) && !all_orphaning {
            let policy = if foreground {
                PropagationPolicy::Foreground
            } else {
                PropagationPolicy::Background
            };
            let dp = DeleteParams {
                propagation_policy: Some(policy),
                ..Default::default()
            };
            match i.api(client).delete(&i.obj.name_any(), &dp).await {
                Ok(_) => {
                    tracing::info!(kind = %i.ar.kind, name = %i.obj.name_any(), "garbage collected")
                }
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => tracing::debug!(kind = %i.ar.kind, error = %e, "could not collect"),
            }
        }
    }

    // Owners waiting on their finalizers.
    for owner in &items {
        if owner.obj.metadata.deletion_timestamp.is_none() {
            continue;
        }
        let uid = owner.uid();
        let deps = dependents.get(&uid).cloned().unwrap_or_default();
        if owner.has_finalizer(ORPHAN) {
            // Release every dependent, then let the owner go.
            let released: HashSet<String> = deps.iter().map(|d| d.uid()).collect();
            for d in &deps {
                let refs: Vec<&OwnerReference> =
                    d.owners().iter().filter(|o| o.uid != uid).collect();
                let patch = json!({"metadata": {"ownerReferences": refs, "resourceVersion": d.obj.resource_version()}});
                if let Err(e) = d
                    .api(client)
                    .patch(
                        &d.obj.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(&patch),
                    )
                    .await
                {
                    tracing::debug!(error = %e, "could not orphan a dependent");
                }
            }
            if released.len() == deps.len() {
                remove_finalizer(client, owner, ORPHAN).await;
            }
        } else if owner.has_finalizer(FOREGROUND) && deps.is_empty() {
            remove_finalizer(client, owner, FOREGROUND).await;
        }
    }
    Ok(())
}

/// Whether any owner of `i` exists now, with the uid its reference names.
/// An owner of a kind that is not served counts as gone; an error reading
/// it counts as live (collect nothing on a doubt).
async fn owners_live(client: &Client, resources: &[(ApiResource, bool)], i: &Item) -> bool {
    for o in i.owners() {
        let Some((ar, namespaced)) = resources
            .iter()
            .find(|(ar, _)| ar.api_version == o.api_version && ar.kind == o.kind)
        else {
            continue;
        };
        match api_in(client, ar, *namespaced, i.obj.namespace())
            .get_opt(&o.name)
            .await
        {
            Ok(Some(owner)) if owner.uid().as_deref() == Some(o.uid.as_str()) => return true,
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(kind = %o.kind, name = %o.name, error = %e, "could not read an owner");
                return true;
            }
        }
    }
    false
}

async fn remove_finalizer(client: &Client, item: &Item, f: &str) {
    let rest: Vec<&String> = item
        .obj
        .finalizers()
        .iter()
        .filter(|x| x.as_str() != f)
        .collect();
    let patch =
        json!({"metadata": {"finalizers": rest, "resourceVersion": item.obj.resource_version()}});
    match item
        .api(client)
        .patch(
            &item.obj.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => {
            tracing::info!(kind = %item.ar.kind, name = %item.obj.name_any(), finalizer = f, "finalizer done")
        }
        Err(e) => tracing::debug!(error = %e, "could not remove a finalizer"),
    }
}
