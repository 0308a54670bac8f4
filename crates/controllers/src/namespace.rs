//! The namespace controller: a deleted namespace is emptied — every
//! namespaced object of every served resource, custom ones included, is
//! deleted the normal way (pods terminate gracefully) — and once nothing is
//! left, its `kubernetes` finalizer is removed through the `finalize`
//! subresource, after which the API server removes the namespace.

use crate::{Ctx, Error};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, PostParams};
use kube::discovery::{verbs, Discovery, Scope};
use kube::runtime::controller::Action;
use kube::{Client, ResourceExt};
use std::sync::Arc;
use std::time::Duration;

const FINALIZER: &str = "kubernetes";

pub async fn run(
    client: Client,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    crate::run_controller::<Namespace, Namespace, _>(client, shutdown, "namespace", reconcile).await
}

async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let pending = ns
        .spec
        .as_ref()
        .and_then(|s| s.finalizers.as_ref())
        .is_some_and(|f| f.iter().any(|x| x == FINALIZER));
    if ns.metadata.deletion_timestamp.is_none() || !pending {
        return Ok(Action::await_change());
    }
    let name = ns.name_any();
    let discovery = Discovery::new(ctx.client.clone()).run().await?;
    let mut remaining = 0usize;
    for (ar, caps) in discovery.groups().flat_map(|g| g.recommended_resources()) {
        if caps.scope != Scope::Namespaced
            || !caps.supports_operation(verbs::LIST)
            || !caps.supports_operation(verbs::DELETE)
        {
            continue;
        }
        let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &name, &ar);
        let items = match api.list_metadata(&ListParams::default()).await {
            Ok(l) => l.items,
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 405 => continue,
            Err(e) => return Err(e.into()),
        };
        for it in items {
            remaining += 1;
            if it.metadata.deletion_timestamp.is_none() {
                match api.delete(&it.name_any(), &DeleteParams::default()).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    if remaining > 0 {
        tracing::debug!(namespace = %name, remaining, "waiting for the namespace to empty");
        return Ok(Action::requeue(Duration::from_millis(500)));
    }
    let mut done = (*ns).clone();
    if let Some(spec) = done.spec.as_mut() {
        spec.finalizers = spec
            .finalizers
            .take()
            .map(|f| f.into_iter().filter(|x| x != FINALIZER).collect());
    }
    done.metadata.managed_fields = None;
    let api: Api<Namespace> = Api::all(ctx.client.clone());
    match api
        .replace_subresource("finalize", &name, &PostParams::default(), &done)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => return Err(e.into()),
    }
    Ok(Action::await_change())
}
