//! What `mast up` installs into its own cluster once it runs: the mesh's
//! ingress gateway (`examples/bookinfo/ingressgateway.yaml`) and, with
//! `--demo`, the Bookinfo demo app in the injected `default` namespace.
//! Manifests go in by server-side apply, so a restart re-applies them
//! without clobbering what users changed in other fields.

use anyhow::{Context, Result};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use serde::Deserialize;
use std::time::Duration;

pub const GATEWAY: &str = include_str!("../../../examples/bookinfo/ingressgateway.yaml");
pub const BOOKINFO: &str = include_str!("../../../examples/bookinfo/bookinfo.yaml");
pub const BOOKINFO_GATEWAY: &str = include_str!("../../../examples/bookinfo/bookinfo-gateway.yaml");

/// The plural and scope of the kinds these manifests use.
fn resource(api_version: &str, kind: &str) -> Option<(ApiResource, bool)> {
    let (plural, namespaced) = match kind {
        "Namespace" => ("namespaces", false),
        "Service" => ("services", true),
        "ServiceAccount" => ("serviceaccounts", true),
        "Deployment" => ("deployments", true),
        "Gateway" => ("gateways", true),
        "VirtualService" => ("virtualservices", true),
        "DestinationRule" => ("destinationrules", true),
        _ => return None,
    };
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let gvk = GroupVersionKind::gvk(group, version, kind);
    Some((ApiResource::from_gvk_with_plural(&gvk, plural), namespaced))
}

/// Server-side apply every document of `yaml`, with `${KEY}` replaced.
pub async fn apply(
    client: &kube::Client,
    yaml: &str,
    ns: &str,
    vars: &[(&str, &str)],
) -> Result<()> {
    let mut text = yaml.to_owned();
    for (k, v) in vars {
        text = text.replace(&format!("${{{k}}}"), v);
    }
    let pp = PatchParams::apply("mast").force();
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        let obj = serde_json::Value::deserialize(doc).context("a built-in manifest")?;
        if obj.is_null() {
            continue;
        }
        let (av, kind) = (
            obj["apiVersion"].as_str().unwrap_or_default(),
            obj["kind"].as_str().unwrap_or_default(),
        );
        let (ar, namespaced) =
            resource(av, kind).with_context(|| format!("no built-in mapping for {av} {kind}"))?;
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let obj_ns = obj["metadata"]["namespace"]
            .as_str()
            .unwrap_or(ns)
            .to_owned();
        let api: Api<DynamicObject> = if namespaced {
            Api::namespaced_with(client.clone(), &obj_ns, &ar)
        } else {
            Api::all_with(client.clone(), &ar)
        };
        api.patch(&name, &pp, &Patch::Apply(&obj))
            .await
            .with_context(|| format!("applying {kind} {name}"))?;
    }
    Ok(())
}

/// Label a namespace for injection (`istio-injection=enabled`).
pub async fn enable_injection(client: &kube::Client, ns: &str) -> Result<()> {
    let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let patch = serde_json::json!({"metadata": {"labels": {"istio-injection": "enabled"}}});
    api.patch(ns, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .with_context(|| format!("labelling namespace {ns} for injection"))?;
    Ok(())
}

/// The ingress gateway's EXTERNAL-IP, once the LoadBalancer has one.
pub async fn gateway_address(client: &kube::Client, within: Duration) -> Option<String> {
    let api: Api<k8s_openapi::api::core::v1::Service> =
        Api::namespaced(client.clone(), "istio-system");
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if let Ok(svc) = api.get("istio-ingressgateway").await {
            let ip = svc
                .status
                .and_then(|s| s.load_balancer)
                .and_then(|l| l.ingress)
                .and_then(|i| i.first().and_then(|i| i.ip.clone()));
            if ip.is_some() {
                return ip;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    None
}
