//! Per-kind work the API server itself does around writes, as the real one
//! does in its registry strategies: Service IP and NodePort allocation, CRD
//! establishment, protected namespaces. (Emptying a deleted namespace is the
//! namespace controller's job, in mast-controllers.)

use crate::rest::{self, ApiResult, Target};
use crate::state::ApiState;
use crate::status::ApiError;
use mast_api::validation::FieldError;
use mast_store::{object_key, RangeRequest};
use serde_json::{json, Value};

/// Addresses and ports claimed for an object not yet stored; released if
/// the write fails, so a rejected request leaves nothing behind.
#[derive(Debug, Default)]
pub struct Allocated {
    ips: Vec<String>,
    ports: Vec<i64>,
}

impl Allocated {
    pub fn release(&self, state: &ApiState) {
        for ip in &self.ips {
            state.alloc.release_ip(ip);
        }
        for p in &self.ports {
            state.alloc.release_port(*p);
        }
    }
}

fn is(t: &Target, group: &str, kind: &str) -> bool {
    t.res.custom.is_none()
        && t.res.kind == kind
        && (t.res.group == group || (kind == "Ingress" && t.res.storage_version.is_some()))
}

fn needs_node_ports(spec: &Value) -> bool {
    matches!(spec["type"].as_str(), Some("NodePort" | "LoadBalancer"))
}

fn alloc_service(state: &ApiState, svc: &mut Value, got: &mut Allocated) -> Result<(), FieldError> {
    let spec = &mut svc["spec"];
    if spec["type"].as_str() == Some("ExternalName") {
        return Ok(());
    }
    match spec["clusterIP"].as_str() {
        Some("None") => spec["clusterIPs"] = json!(["None"]),
        Some(ip) if !ip.is_empty() => {
            let ip = ip.to_owned();
            state.alloc.claim_ip(&ip).map_err(|e| {
                FieldError::invalid("spec.clusterIPs", &json!([ip]), &e.to_string())
            })?;
            got.ips.push(ip.clone());
            spec["clusterIPs"] = json!([ip]);
        }
        _ => {
            let ip = state
                .alloc
                .next_ip()
                .map_err(|e| FieldError::invalid("spec.clusterIPs", &json!([]), &e.to_string()))?;
            got.ips.push(ip.clone());
            spec["clusterIP"] = json!(ip);
            spec["clusterIPs"] = json!([ip]);
        }
    }
    if needs_node_ports(spec) {
        alloc_node_ports(state, spec, got)?;
    }
    Ok(())
}

/// Claim port `i`'s explicit NodePort, or allocate one if it has none.
fn alloc_node_port(
    state: &ApiState,
    i: usize,
    p: &mut Value,
    got: &mut Allocated,
) -> Result<(), FieldError> {
    let field = format!("spec.ports[{i}].nodePort");
    match p["nodePort"].as_i64().filter(|n| *n != 0) {
        Some(np) => {
            state
                .alloc
                .claim_port(np)
                .map_err(|e| FieldError::invalid(&field, &json!(np), &e.to_string()))?;
            got.ports.push(np);
        }
        None => {
            let np = state
                .alloc
                .next_port()
                .map_err(|e| FieldError::invalid(&field, &json!(0), &e.to_string()))?;
            got.ports.push(np as i64);
            p["nodePort"] = json!(np);
        }
    }
    Ok(())
}

fn alloc_node_ports(
    state: &ApiState,
    spec: &mut Value,
    got: &mut Allocated,
) -> Result<(), FieldError> {
    for (i, p) in mast_api::json::items_mut(spec, "ports").enumerate() {
        alloc_node_port(state, i, p, got)?;
    }
    Ok(())
}

pub(crate) fn crd_status(crd: &mut Value) {
    let storage: Vec<Value> = crd["spec"]["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["storage"] == true)
        .map(|v| v["name"].clone())
        .collect();
    let now = rest::now();
    let cond = |ty: &str, reason: &str, msg: &str| json!({"type": ty, "status": "True", "lastTransitionTime": now, "reason": reason, "message": msg});
    let mut stored: Vec<Value> = crd["status"]["storedVersions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for s in storage {
        if !stored.contains(&s) {
            stored.push(s);
        }
    }
    crd["status"] = json!({
        "conditions": [
            cond("NamesAccepted", "NoConflicts", "no conflicts found"),
            cond("Established", "InitialNamesAccepted", "the initial names have been accepted"),
        ],
        "acceptedNames": crd["spec"]["names"],
        "storedVersions": stored,
    });
}

/// Istio's resources are checked as Istio's validating webhook checks them,
/// and refused in its words.
fn check_istio(t: &Target, obj: &Value) -> ApiResult<()> {
    if t.res.custom.is_none() || t.sub.is_some() {
        return Ok(());
    }
    let Some(k) = mast_api::istio::lookup(&t.res.group, &t.res.kind) else {
        return Ok(());
    };
    let errs = mast_api::istio::validate(k, &obj["spec"]);
    if errs.is_empty() {
        return Ok(());
    }
    Err(ApiError::bad_request(format!(
        "admission webhook \"validation.istio.io\" denied the request: configuration is invalid: {}",
        errs.join(", ")
    )))
}

/// Mutating admission, before defaults and validation: Istio's sidecar
/// injection, when the server was given a proxy template.
pub fn mutate(state: &ApiState, t: &Target, obj: &mut Value, namespace: &Value) {
    use mast_api::istio::inject;
    let Some(tpl) = &state.settings.injection else {
        return;
    };
    if is(t, "", "Pod") && t.sub.is_none() && inject::wanted(obj, &namespace["metadata"]["labels"])
    {
        inject::inject(obj, tpl);
    }
}

/// Work before a new object is stored.
pub async fn before_create(state: &ApiState, t: &Target, obj: &mut Value) -> ApiResult<Allocated> {
    check_istio(t, obj)?;
    let mut got = Allocated::default();
    if is(t, "", "Service") {
        if let Err(e) = alloc_service(state, obj, &mut got) {
            got.release(state);
            let name = obj["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            return Err(ApiError::invalid("Service", "", &name, &[e]));
        }
    }
    if is(t, "apiextensions.k8s.io", "CustomResourceDefinition") {
        crd_status(obj);
    }
    Ok(got)
}

/// Work before an update is stored: keep allocated values the client did
/// not repeat (as Kubernetes' `patchAllocatedValues` does), allocate or free
/// NodePorts when the type changes.
pub fn before_update(state: &ApiState, t: &Target, new: &mut Value, old: &Value) -> ApiResult<()> {
    check_istio(t, new)?;
    if is(t, "", "Service") {
        let name = new["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if new["spec"]["type"].as_str() != Some("ExternalName")
            && old["spec"]["type"].as_str() != Some("ExternalName")
        {
            if new["spec"]["clusterIP"].as_str().is_none_or(str::is_empty) {
                new["spec"]["clusterIP"] = old["spec"]["clusterIP"].clone();
                new["spec"]["clusterIPs"] = old["spec"]["clusterIPs"].clone();
            }
            if new["spec"]["clusterIPs"].is_null() {
                new["spec"]["clusterIPs"] = old["spec"]["clusterIPs"].clone();
            }
        }
        let old_ports: Vec<i64> = old["spec"]["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["nodePort"].as_i64())
            .collect();
        let mut got = Allocated::default();
        if needs_node_ports(&new["spec"]) {
            let olds = old["spec"]["ports"].as_array().cloned().unwrap_or_default();
            let mut kept = vec![];
            for (i, p) in mast_api::json::items_mut(&mut new["spec"], "ports").enumerate() {
                // A port without a NodePort keeps the one its number had.
                if p["nodePort"].as_i64().unwrap_or(0) == 0 {
                    if let Some(o) = olds
                        .iter()
                        .find(|o| o["port"] == p["port"] && o["nodePort"].as_i64().is_some())
                    {
                        p["nodePort"] = o["nodePort"].clone();
                    }
                }
                match p["nodePort"].as_i64() {
                    // Already held by this Service.
                    Some(np) if old_ports.contains(&np) => kept.push(np),
                    _ => {
                        if let Err(e) = alloc_node_port(state, i, p, &mut got) {
                            got.release(state);
                            return Err(ApiError::invalid("Service", "", &name, &[e]));
                        }
                    }
                }
            }
            for p in old_ports.iter().filter(|p| !kept.contains(p)) {
                state.alloc.release_port(*p);
            }
        } else {
            for p in mast_api::json::items_mut(&mut new["spec"], "ports") {
                if let Some(m) = p.as_object_mut() {
                    m.remove("nodePort");
                }
            }
            for p in old_ports {
                state.alloc.release_port(p);
            }
        }
    }
    if is(t, "apiextensions.k8s.io", "CustomResourceDefinition") {
        crd_status(new);
    }
    Ok(())
}

/// Namespaces that may never be deleted.
const PROTECTED_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public"];

/// Checks before a delete is even attempted.
pub fn before_delete(t: &Target, name: &str) -> ApiResult<()> {
    if is(t, "", "Namespace") && PROTECTED_NAMESPACES.contains(&name) {
        return Err(ApiError::forbidden(format!(
            "namespaces {name:?} is forbidden: this namespace may not be deleted"
        )));
    }
    Ok(())
}

/// Work after an object was created or updated.
pub async fn after_write(state: &ApiState, t: &Target, obj: &Value) {
    if is(t, "apiextensions.k8s.io", "CustomResourceDefinition") {
        if let Err(e) = state.reload_crds().await {
            tracing::warn!(error = %e, "could not reload CRDs");
        }
    }
    if is(t, "", "Namespace") {
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if obj["metadata"]["deletionTimestamp"].is_null() {
            ensure_default_service_account(state, &name).await;
        }
    }
}

/// Work after an object was deleted from the store.
pub async fn after_delete(state: &ApiState, t: &Target, obj: &Value) {
    if is(t, "", "Service") {
        if let Some(ip) = obj["spec"]["clusterIP"].as_str() {
            state.alloc.release_ip(ip);
        }
        for p in obj["spec"]["ports"].as_array().into_iter().flatten() {
            if let Some(np) = p["nodePort"].as_i64() {
                state.alloc.release_port(np);
            }
        }
    }
    if is(t, "apiextensions.k8s.io", "CustomResourceDefinition") {
        // Its custom resources go with it.
        let group = obj["spec"]["group"].as_str().unwrap_or_default();
        let plural = obj["spec"]["names"]["plural"].as_str().unwrap_or_default();
        if !group.is_empty() && !plural.is_empty() {
            delete_prefix(state, &format!("/registry/{group}/{plural}/")).await;
        }
        if let Err(e) = state.reload_crds().await {
            tracing::warn!(error = %e, "could not reload CRDs");
        }
    }
}

async fn delete_prefix(state: &ApiState, prefix: &str) {
    if let Ok(r) = state
        .store
        .range(RangeRequest {
            prefix: prefix.into(),
            ..Default::default()
        })
        .await
    {
        for kv in r.kvs {
            let _ = state.store.delete(&kv.key, None).await;
        }
    }
}

async fn ensure_default_service_account(state: &ApiState, ns: &str) {
    let key = object_key("serviceaccounts", Some(ns), "default");
    if matches!(state.store.get(&key).await, Ok(Some(_))) {
        return;
    }
    let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {
        "name": "default", "namespace": ns, "uid": uuid::Uuid::new_v4().to_string(), "creationTimestamp": rest::now()}});
    let _ = state
        .store
        .create(&key, bytes::Bytes::from(sa.to_string()))
        .await;
}
