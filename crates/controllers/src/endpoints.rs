//! The Endpoints and EndpointSlice controllers: for every Service with a
//! selector, the addresses of the pods it selects, split into ready and
//! not-ready, with named `targetPort`s resolved per pod. Both objects are
//! written, as Kubernetes does: Endpoints for older clients, EndpointSlices
//! (`kubernetes.io/service-name`) for kube-proxy-style consumers and the mesh.

use crate::util::{is_ready, owner_ref};
use crate::{Ctx, Error};
use k8s_openapi::api::core::v1::{Endpoints, Pod, Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

const MANAGED_BY: &str = "endpointslice-controller.k8s.io";

pub async fn run(
    client: Client,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let ctx = Arc::new(Ctx {
        client: client.clone(),
    });
    let controller = Controller::new(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    );
    let services = controller.store();
    let controller = controller.watches(
        Api::<Pod>::all(client),
        watcher::Config::default(),
        move |pod: Pod| {
            let ns = pod.namespace();
            let labels = pod.labels().clone();
            services
                .state()
                .into_iter()
                .filter(|s| s.namespace() == ns && selects(s, &labels))
                .map(|s| ObjectRef::from_obj(&*s))
                .collect::<Vec<_>>()
        },
    );
    crate::drive(controller, shutdown, "endpoints", reconcile, ctx).await;
    Ok(())
}

fn selector_of(svc: &Service) -> Option<&BTreeMap<String, String>> {
    svc.spec
        .as_ref()?
        .selector
        .as_ref()
        .filter(|s| !s.is_empty())
}

fn selects(svc: &Service, labels: &BTreeMap<String, String>) -> bool {
    selector_of(svc).is_some_and(|sel| sel.iter().all(|(k, v)| labels.get(k) == Some(v)))
}

/// The port a Service port reaches on one pod; `None` if a named
/// targetPort names no port of the pod.
pub fn resolve_target_port(sp: &ServicePort, pod: &Pod) -> Option<i32> {
    match &sp.target_port {
        None => Some(sp.port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => {
            if let Ok(n) = name.parse() {
                return Some(n);
            }
            let proto = sp.protocol.as_deref().unwrap_or("TCP");
            pod.spec
                .as_ref()?
                .containers
                .iter()
                .flat_map(|c| c.ports.iter().flatten())
                .find_map(|p| {
                    (p.name.as_deref() == Some(name.as_str())
                        && p.protocol.as_deref().unwrap_or("TCP") == proto)
                        .then_some(p.container_port)
                })
        }
    }
}

/// One pod's place in the Service: its address, and its ports resolved.
struct Member {
    ip: String,
    ready: bool,
    serving: bool,
    terminating: bool,
    node: Option<String>,
    target: Value,
    ports: Vec<(Option<String>, i32, String)>,
}

fn members(svc: &Service, pods: &[Pod]) -> Vec<Member> {
    let spec = svc.spec.clone().unwrap_or_default();
    let publish_not_ready = spec.publish_not_ready_addresses.unwrap_or(false);
    let mut out = vec![];
    for p in pods {
        let st = p.status.clone().unwrap_or_default();
        let Some(ip) = st.pod_ip.clone().filter(|ip| !ip.is_empty()) else {
            continue;
        };
        let phase = st.phase.as_deref().unwrap_or("");
        if phase == "Succeeded" || phase == "Failed" {
            continue;
        }
        let mut ports = vec![];
        let mut complete = true;
        for sp in spec.ports.iter().flatten() {
            match resolve_target_port(sp, p) {
                Some(n) => ports.push((
                    sp.name.clone(),
                    n,
                    sp.protocol.clone().unwrap_or_else(|| "TCP".into()),
                )),
                None => complete = false,
            }
        }
        if !complete {
            continue;
        }
        let terminating = p.metadata.deletion_timestamp.is_some();
        let serving = is_ready(p);
        out.push(Member {
            ip,
            ready: (serving && !terminating) || publish_not_ready,
            serving: serving || publish_not_ready,
            terminating,
            node: p.spec.as_ref().and_then(|s| s.node_name.clone()),
            target: json!({"kind": "Pod", "name": p.name_any(), "namespace": p.namespace(), "uid": p.uid()}),
            ports,
        });
    }
    out.sort_by(|a, b| a.ip.cmp(&b.ip));
    out
}

/// Ports as Endpoints list them (an unnamed port has no `name`), or, with
/// `slice`, as EndpointSlices do: there `name` is always set, `""` for an
/// unnamed port, and clients (kubectl describe) rely on it.
fn ports_json(ports: &[(Option<String>, i32, String)], slice: bool) -> Value {
    Value::Array(
        ports
            .iter()
            .map(|(name, port, proto)| {
                let mut v = json!({"port": port, "protocol": proto});
                match name {
                    Some(n) => v["name"] = json!(n),
                    None if slice => v["name"] = json!(""),
                    None => {}
                }
                v
            })
            .collect(),
    )
}

/// Endpoints subsets: addresses grouped by their resolved ports.
fn subsets(ms: &[Member]) -> Value {
    let mut groups: BTreeMap<String, (Value, Vec<Value>, Vec<Value>)> = BTreeMap::new();
    for m in ms.iter().filter(|m| !m.terminating) {
        let ports = ports_json(&m.ports, false);
        let g = groups
            .entry(ports.to_string())
            .or_insert_with(|| (ports, vec![], vec![]));
        let mut addr = json!({"ip": m.ip, "targetRef": m.target});
        if let Some(n) = &m.node {
            addr["nodeName"] = json!(n);
        }
        if m.ready {
            g.1.push(addr);
        } else {
            g.2.push(addr);
        }
    }
    Value::Array(
        groups
            .into_values()
            .map(|(ports, ready, not_ready)| {
                let mut s = json!({"ports": ports});
                if !ready.is_empty() {
                    s["addresses"] = json!(ready);
                }
                if !not_ready.is_empty() {
                    s["notReadyAddresses"] = json!(not_ready);
                }
                s
            })
            .collect(),
    )
}

fn short_hash(s: &str) -> String {
    // FNV-1a: a stable, dependency-free name suffix.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{:05x}", h & 0xfffff)
}

async fn reconcile(svc: Arc<Service>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let resync = Action::requeue(Duration::from_secs(60));
    let Some(selector) = selector_of(&svc) else {
        return Ok(resync);
    };
    if svc.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = svc.namespace().unwrap_or_default();
    let name = svc.name_any();
    let uid = svc.uid().unwrap_or_default();
    let sel: Vec<String> = selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let pods = Api::<Pod>::namespaced(ctx.client.clone(), &ns)
        .list(&ListParams::default().labels(&sel.join(",")))
        .await?
        .items;
    let ms = members(&svc, &pods);
    let owner = owner_ref("v1", "Service", &name, &uid);
    let mut labels = svc.labels().clone();
    labels.insert(
        "endpoints.kubernetes.io/managed-by".into(),
        "endpoint-controller".into(),
    );

    // Endpoints.
    let eps_api: Api<Endpoints> = Api::namespaced(ctx.client.clone(), &ns);
    let subsets = subsets(&ms);
    let mut want = json!({"apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": name, "namespace": ns, "labels": labels, "ownerReferences": [owner]}});
    if subsets.as_array().is_some_and(|a| !a.is_empty()) {
        want["subsets"] = subsets;
    }
    upsert(
        &eps_api,
        &name,
        want,
        |cur| json!({"subsets": cur.get("subsets"), "labels": cur["metadata"].get("labels")}),
    )
    .await?;

    // EndpointSlices: one per distinct port set.
    let es_api: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), &ns);
    let mut by_ports: BTreeMap<String, (Value, Vec<Value>)> = BTreeMap::new();
    for m in &ms {
        let ports = ports_json(&m.ports, true);
        let mut ep = json!({"addresses": [m.ip], "conditions": {"ready": m.ready, "serving": m.serving, "terminating": m.terminating}, "targetRef": m.target});
        if let Some(n) = &m.node {
            ep["nodeName"] = json!(n);
        }
        by_ports
            .entry(ports.to_string())
            .or_insert_with(|| (ports, vec![]))
            .1
            .push(ep);
    }
    if by_ports.is_empty() {
        // A Service that selects nothing still gets an (empty) slice.
        let ports: Vec<(Option<String>, i32, String)> = vec![];
        by_ports.insert(String::new(), (ports_json(&ports, true), vec![]));
    }
    let mut slice_labels = svc.labels().clone();
    slice_labels.insert("kubernetes.io/service-name".into(), name.clone());
    slice_labels.insert(
        "endpointslice.kubernetes.io/managed-by".into(),
        MANAGED_BY.into(),
    );
    let mut keep = vec![];
    for (key, (ports, endpoints)) in by_ports {
        let slice_name = format!("{name}-{}", short_hash(&key));
        let want = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": slice_name, "namespace": ns, "labels": slice_labels, "ownerReferences": [owner]},
            "addressType": "IPv4", "endpoints": endpoints, "ports": ports});
        upsert(&es_api, &slice_name, want, |cur| json!({"endpoints": cur.get("endpoints"), "ports": cur.get("ports"), "labels": cur["metadata"].get("labels")})).await?;
        keep.push(slice_name);
    }
    let lp = ListParams::default().labels(&format!(
        "kubernetes.io/service-name={name},endpointslice.kubernetes.io/managed-by={MANAGED_BY}"
    ));
    for old in es_api.list(&lp).await?.items {
        if !keep.contains(&old.name_any()) {
            let _ = es_api
                .delete(&old.name_any(), &DeleteParams::default())
                .await;
        }
    }
    Ok(resync)
}

/// Create the object, or replace it when the parts `view` picks differ.
/// A conflict (someone wrote it between our read and our write) reads it
/// again and retries: accepting it would leave what the other writer
/// wrote, possibly stale, until the next resync.
async fn upsert<K>(
    api: &Api<K>,
    name: &str,
    want: Value,
    view: impl Fn(&Value) -> Value,
) -> Result<(), Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let want_obj: K = serde_json::from_value(want)?;
    let want_v = serde_json::to_value(&want_obj)?;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let written = match api.get_opt(name).await? {
            None => api
                .create(&PostParams::default(), &want_obj)
                .await
                .map(drop),
            Some(cur) => {
                let cur_v = serde_json::to_value(&cur)?;
                if view(&cur_v) == view(&want_v) {
                    return Ok(());
                }
                let mut next = want_v.clone();
                next["metadata"]["resourceVersion"] = cur_v["metadata"]["resourceVersion"].clone();
                let obj: K = serde_json::from_value(next)?;
                api.replace(name, &PostParams::default(), &obj)
                    .await
                    .map(drop)
            }
        };
        match written {
            Err(kube::Error::Api(e)) if e.code == 409 && attempt < 5 => continue,
            other => return Ok(other?),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, ip: &str, ready: bool, ports: Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": "d", "uid": name, "labels": {"app": "a"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "ports": ports}]},
            "status": {"phase": "Running", "podIP": ip, "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}}))
        .unwrap()
    }

    #[test]
    fn named_ports_and_readiness() {
        let svc: Service = serde_json::from_value(json!({"metadata": {"name": "s", "namespace": "d"},
            "spec": {"selector": {"app": "a"}, "ports": [{"name": "http", "port": 80, "targetPort": "web"}]}}))
        .unwrap();
        let pods = vec![
            pod(
                "p1",
                "10.0.0.2",
                true,
                json!([{"name": "web", "containerPort": 8080}]),
            ),
            pod(
                "p2",
                "10.0.0.1",
                false,
                json!([{"name": "web", "containerPort": 9090}]),
            ),
            pod(
                "p3",
                "10.0.0.3",
                true,
                json!([{"name": "other", "containerPort": 1}]),
            ),
        ];
        let ms = members(&svc, &pods);
        assert_eq!(ms.len(), 2, "p3 has no port named web");
        let subs = subsets(&ms);
        let subs = subs.as_array().unwrap();
        assert_eq!(subs.len(), 2, "two port sets: {subs:?}");
        let p8080 = subs.iter().find(|s| s["ports"][0]["port"] == 8080).unwrap();
        assert_eq!(p8080["addresses"][0]["ip"], "10.0.0.2");
        let p9090 = subs.iter().find(|s| s["ports"][0]["port"] == 9090).unwrap();
        assert_eq!(p9090["notReadyAddresses"][0]["ip"], "10.0.0.1");
        assert!(p9090.get("addresses").is_none());
    }
}
