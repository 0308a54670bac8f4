//! Server-side printing: the `meta.k8s.io/v1` Table columns Kubernetes
//! returns for each kind, so `kubectl get` prints the columns users know.

use crate::registry::Resource;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

/// One column: name, type, and priority (1 = shown only with `-o wide`).
type Col = (&'static str, &'static str, u8);

/// Column definitions of a resource, in kubectl's order.
pub fn columns(r: &Resource) -> Vec<Value> {
    let mut cols: Vec<Value> = base_columns(r)
        .iter()
        .map(|(name, ty, prio)| {
            let mut c = json!({"name": name, "type": ty, "format": "", "description": "", "priority": prio});
            if *name == "Name" {
                c["format"] = json!("name");
            }
            c
        })
        .collect();
    if let Some(custom) = &r.custom {
        if !custom.printer_columns.is_empty() {
            cols = vec![
                json!({"name": "Name", "type": "string", "format": "name", "description": "", "priority": 0}),
            ];
            for pc in &custom.printer_columns {
                cols.push(json!({
                    "name": pc["name"], "type": pc["type"], "format": pc.get("format").cloned().unwrap_or(json!("")),
                    "description": pc.get("description").cloned().unwrap_or(json!("")),
                    "priority": pc.get("priority").cloned().unwrap_or(json!(0)),
                }));
            }
        }
    }
    cols
}

fn base_columns(r: &Resource) -> &'static [Col] {
    match (r.group.as_str(), r.kind.as_str()) {
        ("", "Pod") => &[
            ("Name", "string", 0),
            ("Ready", "string", 0),
            ("Status", "string", 0),
            ("Restarts", "string", 0),
            ("Age", "string", 0),
            ("IP", "string", 1),
            ("Node", "string", 1),
            ("Nominated Node", "string", 1),
            ("Readiness Gates", "string", 1),
        ],
        ("", "Service") => &[
            ("Name", "string", 0),
            ("Type", "string", 0),
            ("Cluster-IP", "string", 0),
            ("External-IP", "string", 0),
            ("Port(s)", "string", 0),
            ("Age", "string", 0),
            ("Selector", "string", 1),
        ],
        ("apps", "Deployment") => &[
            ("Name", "string", 0),
            ("Ready", "string", 0),
            ("Up-to-date", "string", 0),
            ("Available", "string", 0),
            ("Age", "string", 0),
            ("Containers", "string", 1),
            ("Images", "string", 1),
            ("Selector", "string", 1),
        ],
        ("apps", "ReplicaSet") => &[
            ("Name", "string", 0),
            ("Desired", "integer", 0),
            ("Current", "integer", 0),
            ("Ready", "integer", 0),
            ("Age", "string", 0),
            ("Containers", "string", 1),
            ("Images", "string", 1),
            ("Selector", "string", 1),
        ],
        ("", "Node") => &[
            ("Name", "string", 0),
            ("Status", "string", 0),
            ("Roles", "string", 0),
            ("Age", "string", 0),
            ("Version", "string", 0),
            ("Internal-IP", "string", 1),
            ("External-IP", "string", 1),
            ("OS-Image", "string", 1),
            ("Kernel-Version", "string", 1),
            ("Container-Runtime", "string", 1),
        ],
        ("", "Namespace") => &[
            ("Name", "string", 0),
            ("Status", "string", 0),
            ("Age", "string", 0),
        ],
        ("", "ConfigMap") => &[
            ("Name", "string", 0),
            ("Data", "string", 0),
            ("Age", "string", 0),
        ],
        ("", "Secret") => &[
            ("Name", "string", 0),
            ("Type", "string", 0),
            ("Data", "string", 0),
            ("Age", "string", 0),
        ],
        ("", "ServiceAccount") => &[
            ("Name", "string", 0),
            ("Secrets", "string", 0),
            ("Age", "string", 0),
        ],
        ("", "Endpoints") => &[
            ("Name", "string", 0),
            ("Endpoints", "string", 0),
            ("Age", "string", 0),
        ],
        ("discovery.k8s.io", "EndpointSlice") => &[
            ("Name", "string", 0),
            ("AddressType", "string", 0),
            ("Ports", "string", 0),
            ("Endpoints", "string", 0),
            ("Age", "string", 0),
        ],
        ("networking.k8s.io" | "extensions", "Ingress") => &[
            ("Name", "string", 0),
            ("Class", "string", 0),
            ("Hosts", "string", 0),
            ("Address", "string", 0),
            ("Ports", "string", 0),
            ("Age", "string", 0),
        ],
        ("networking.k8s.io", "IngressClass") => &[
            ("Name", "string", 0),
            ("Controller", "string", 0),
            ("Parameters", "string", 0),
            ("Age", "string", 0),
        ],
        ("", "Event") => &[
            ("Last Seen", "string", 0),
            ("Type", "string", 0),
            ("Reason", "string", 0),
            ("Object", "string", 0),
            ("Message", "string", 0),
        ],
        ("coordination.k8s.io", "Lease") => &[
            ("Name", "string", 0),
            ("Holder", "string", 0),
            ("Age", "string", 0),
        ],
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            &[("Name", "string", 0), ("Created At", "date", 0)]
        }
        _ => &[("Name", "string", 0), ("Age", "string", 0)],
    }
}

/// A duration as kubectl prints ages: `5s`, `3m2s`, `4h`, `2d3h`, `400d`.
pub fn human_duration(secs: i64) -> String {
    let s = secs.max(0);
    if s < 120 {
        return format!("{s}s");
    }
    let m = s / 60;
    if m < 10 {
        let rem = s % 60;
        return if rem == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{rem}s")
        };
    }
    if m < 180 {
        return format!("{m}m");
    }
    let h = s / 3600;
    if h < 8 {
        let rem = (s % 3600) / 60;
        return if rem == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{rem}m")
        };
    }
    if h < 48 {
        return format!("{h}h");
    }
    let d = h / 24;
    if d < 8 {
        let rem = h % 24;
        return if rem == 0 {
            format!("{d}d")
        } else {
            format!("{d}d{rem}h")
        };
    }
    if d < 365 * 2 {
        return format!("{d}d");
    }
    format!("{}y", d / 365)
}

fn age(ts: &Value, now: DateTime<Utc>) -> String {
    ts.as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| human_duration((now - t.with_timezone(&Utc)).num_seconds()))
        .unwrap_or_else(|| "<unknown>".into())
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn or_none(v: String) -> String {
    if v.is_empty() {
        "<none>".into()
    } else {
        v
    }
}

fn selector_string(sel: &Value) -> String {
    let mut parts: Vec<String> = sel
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", s(v)))
        .collect();
    parts.sort();
    or_none(parts.join(","))
}

fn label_selector_string(sel: &Value) -> String {
    let mut parts: Vec<String> = sel["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", s(v)))
        .collect();
    for e in sel["matchExpressions"].as_array().into_iter().flatten() {
        let vals: Vec<String> = e["values"]
            .as_array()
            .into_iter()
            .flatten()
            .map(s)
            .collect();
        let key = s(&e["key"]);
        parts.push(match e["operator"].as_str().unwrap_or_default() {
            "In" => format!("{key} in ({})", vals.join(",")),
            "NotIn" => format!("{key} notin ({})", vals.join(",")),
            "Exists" => key,
            "DoesNotExist" => format!("!{key}"),
            _ => key,
        });
    }
    or_none(parts.join(","))
}

fn containers_images(spec: &Value) -> (String, String) {
    let cs: Vec<&Value> = spec["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    (
        cs.iter()
            .map(|c| s(&c["name"]))
            .collect::<Vec<_>>()
            .join(","),
        cs.iter()
            .map(|c| s(&c["image"]))
            .collect::<Vec<_>>()
            .join(","),
    )
}

/// The names of a pod's sidecars: init containers with `restartPolicy: Always`.
fn restartable_inits(spec: &Value) -> Vec<String> {
    spec["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["restartPolicy"] == "Always")
        .filter_map(|c| c["name"].as_str().map(str::to_owned))
        .collect()
}

fn pod_status(pod: &Value) -> String {
    if !pod["metadata"]["deletionTimestamp"].is_null() {
        return "Terminating".into();
    }
    let mut reason = pod["status"]["reason"]
        .as_str()
        .or(pod["status"]["phase"].as_str())
        .unwrap_or("Pending")
        .to_owned();
    let inits = pod["status"]["initContainerStatuses"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let total_inits = pod["spec"]["initContainers"]
        .as_array()
        .map(Vec::len)
        .unwrap_or(0);
    let sidecars = restartable_inits(&pod["spec"]);
    for (i, c) in inits.iter().enumerate() {
        if c["started"] == true && sidecars.iter().any(|n| c["name"] == json!(n)) {
            continue;
        }
        let t = &c["state"]["terminated"];
        if t["exitCode"].as_i64() == Some(0) {
            continue;
        }
        if !t.is_null() {
            reason = format!("Init:{}", t["reason"].as_str().unwrap_or("Error"));
        } else if let Some(w) = c["state"]["waiting"]["reason"]
            .as_str()
            .filter(|w| *w != "PodInitializing")
        {
            reason = format!("Init:{w}");
        } else {
            reason = format!("Init:{i}/{total_inits}");
        }
        return reason;
    }
    for c in pod["status"]["containerStatuses"]
        .as_array()
        .into_iter()
        .flatten()
        .rev()
    {
        if let Some(w) = c["state"]["waiting"]["reason"].as_str() {
            reason = w.to_owned();
        } else if let Some(t) = c["state"]["terminated"].as_object() {
            reason = t
                .get("reason")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| {
                    format!("ExitCode:{}", t.get("exitCode").map(s).unwrap_or_default())
                });
        }
    }
    reason
}

fn service_ports(spec: &Value) -> String {
    let ports: Vec<String> = spec["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let proto = p["protocol"].as_str().unwrap_or("TCP");
            match p["nodePort"].as_i64() {
                Some(np) if np != 0 => format!("{}:{np}/{proto}", s(&p["port"])),
                _ => format!("{}/{proto}", s(&p["port"])),
            }
        })
        .collect();
    or_none(ports.join(","))
}

fn service_external_ip(obj: &Value) -> String {
    let spec = &obj["spec"];
    let external: Vec<String> = spec["externalIPs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(s)
        .collect();
    match spec["type"].as_str().unwrap_or("ClusterIP") {
        "ExternalName" => s(&spec["externalName"]),
        "LoadBalancer" => {
            let mut ips: Vec<String> = obj["status"]["loadBalancer"]["ingress"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|i| {
                    if i["ip"].is_null() {
                        s(&i["hostname"])
                    } else {
                        s(&i["ip"])
                    }
                })
                .collect();
            ips.extend(external);
            if ips.is_empty() {
                "<pending>".into()
            } else {
                ips.join(",")
            }
        }
        _ => or_none(external.join(",")),
    }
}

fn count(v: &Value) -> usize {
    v.as_object()
        .map(|m| m.len())
        .or_else(|| v.as_array().map(Vec::len))
        .unwrap_or(0)
}

fn int(v: &Value) -> Value {
    json!(v.as_i64().unwrap_or(0))
}

/// The cells of one row, matching [`columns`].
pub fn cells(r: &Resource, obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let name = json!(obj["metadata"]["name"]);
    let created = &obj["metadata"]["creationTimestamp"];
    let st = &obj["status"];
    let spec = &obj["spec"];
    if let Some(custom) = &r.custom {
        if !custom.printer_columns.is_empty() {
            let mut out = vec![name];
            for pc in &custom.printer_columns {
                let path = pc["jsonPath"].as_str().unwrap_or_default();
                let v = crate::selectors::json_path(obj, path)
                    .cloned()
                    .unwrap_or(Value::Null);
                if pc["type"] == "date" {
                    out.push(json!(age(&v, now)));
                } else {
                    out.push(if v.is_null() { json!("<none>") } else { v });
                }
            }
            return out;
        }
    }
    match (r.group.as_str(), r.kind.as_str()) {
        ("", "Pod") => {
            // Sidecars (restartable init containers) count with the
            // containers, as kubectl counts them.
            let sidecars = restartable_inits(spec);
            let statuses: Vec<Value> = st["containerStatuses"]
                .as_array()
                .into_iter()
                .flatten()
                .chain(
                    st["initContainerStatuses"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|c| sidecars.iter().any(|n| c["name"] == json!(n))),
                )
                .cloned()
                .collect();
            let total = spec["containers"].as_array().map(Vec::len).unwrap_or(0) + sidecars.len();
            let ready = statuses.iter().filter(|c| c["ready"] == true).count();
            let restarts: i64 = statuses
                .iter()
                .map(|c| c["restartCount"].as_i64().unwrap_or(0))
                .sum();
            let last_restart = statuses
                .iter()
                .filter_map(|c| c["lastState"]["terminated"]["finishedAt"].as_str())
                .max()
                .map(|t| age(&json!(t), now));
            let restarts = match last_restart {
                Some(a) if restarts > 0 => format!("{restarts} ({a} ago)"),
                _ => restarts.to_string(),
            };
            let gates = spec["readinessGates"].as_array().map(Vec::len).unwrap_or(0);
            vec![
                name,
                json!(format!("{ready}/{total}")),
                json!(pod_status(obj)),
                json!(restarts),
                json!(age(created, now)),
                json!(or_none(s(&st["podIP"]))),
                json!(or_none(s(&spec["nodeName"]))),
                json!(or_none(s(&st["nominatedNodeName"]))),
                json!(if gates == 0 {
                    "<none>".to_string()
                } else {
                    format!("0/{gates}")
                }),
            ]
        }
        ("", "Service") => {
            let ip = spec["clusterIP"]
                .as_str()
                .filter(|s| !s.is_empty())
                .unwrap_or("<none>");
            vec![
                name,
                json!(spec["type"].as_str().unwrap_or("ClusterIP")),
                json!(ip),
                json!(service_external_ip(obj)),
                json!(service_ports(spec)),
                json!(age(created, now)),
                json!(selector_string(&spec["selector"])),
            ]
        }
        ("apps", "Deployment") => {
            let (c, i) = containers_images(&spec["template"]["spec"]);
            vec![
                name,
                json!(format!(
                    "{}/{}",
                    st["readyReplicas"].as_i64().unwrap_or(0),
                    spec["replicas"].as_i64().unwrap_or(0)
                )),
                int(&st["updatedReplicas"]),
                int(&st["availableReplicas"]),
                json!(age(created, now)),
                json!(c),
                json!(i),
                json!(label_selector_string(&spec["selector"])),
            ]
        }
        ("apps", "ReplicaSet") => {
            let (c, i) = containers_images(&spec["template"]["spec"]);
            vec![
                name,
                int(&spec["replicas"]),
                int(&st["replicas"]),
                int(&st["readyReplicas"]),
                json!(age(created, now)),
                json!(c),
                json!(i),
                json!(label_selector_string(&spec["selector"])),
            ]
        }
        ("", "Node") => {
            let ready = st["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["type"] == "Ready")
                .map(|c| {
                    if c["status"] == "True" {
                        "Ready"
                    } else {
                        "NotReady"
                    }
                })
                .unwrap_or("Unknown");
            let mut status = ready.to_string();
            if spec["unschedulable"] == true {
                status.push_str(",SchedulingDisabled");
            }
            let mut roles: Vec<String> = obj["metadata"]["labels"]
                .as_object()
                .into_iter()
                .flatten()
                .filter_map(|(k, _)| {
                    k.strip_prefix("node-role.kubernetes.io/")
                        .map(str::to_owned)
                })
                .collect();
            roles.sort();
            let addr = |t: &str| {
                st["addresses"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|a| a["type"] == t)
                    .map(|a| s(&a["address"]))
                    .unwrap_or_else(|| "<none>".into())
            };
            let info = &st["nodeInfo"];
            vec![
                name,
                json!(status),
                json!(or_none(roles.join(","))),
                json!(age(created, now)),
                json!(s(&info["kubeletVersion"])),
                json!(addr("InternalIP")),
                json!(addr("ExternalIP")),
                json!(s(&info["osImage"])),
                json!(s(&info["kernelVersion"])),
                json!(s(&info["containerRuntimeVersion"])),
            ]
        }
        ("", "Namespace") => vec![name, json!(s(&st["phase"])), json!(age(created, now))],
        ("", "ConfigMap") => vec![
            name,
            json!(count(&obj["data"]) + count(&obj["binaryData"])),
            json!(age(created, now)),
        ],
        ("", "Secret") => vec![
            name,
            json!(s(&obj["type"])),
            json!(count(&obj["data"])),
            json!(age(created, now)),
        ],
        ("", "ServiceAccount") => vec![
            name,
            json!(count(&obj["secrets"])),
            json!(age(created, now)),
        ],
        ("", "Endpoints") => {
            let mut eps = vec![];
            for sub in obj["subsets"].as_array().into_iter().flatten() {
                for a in sub["addresses"].as_array().into_iter().flatten() {
                    let ports: Vec<&Value> =
                        sub["ports"].as_array().into_iter().flatten().collect();
                    if ports.is_empty() {
                        eps.push(s(&a["ip"]));
                    }
                    for p in ports {
                        eps.push(format!("{}:{}", s(&a["ip"]), s(&p["port"])));
                    }
                }
            }
            let shown = if eps.len() > 3 {
                format!("{} + {} more...", eps[..3].join(","), eps.len() - 3)
            } else {
                or_none(eps.join(","))
            };
            vec![name, json!(shown), json!(age(created, now))]
        }
        ("discovery.k8s.io", "EndpointSlice") => {
            let ports: Vec<String> = obj["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| s(&p["port"]))
                .collect();
            let addrs: Vec<String> = obj["endpoints"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|e| e["addresses"].as_array().cloned().unwrap_or_default())
                .map(|a| s(&a))
                .collect();
            vec![
                name,
                json!(s(&obj["addressType"])),
                json!(if ports.is_empty() {
                    "<unset>".into()
                } else {
                    ports.join(",")
                }),
                json!(if addrs.is_empty() {
                    "<unset>".into()
                } else {
                    addrs.join(",")
                }),
                json!(age(created, now)),
            ]
        }
        ("networking.k8s.io" | "extensions", "Ingress") => {
            let hosts: Vec<String> = spec["rules"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| r["host"].as_str().unwrap_or("*").to_owned())
                .collect();
            let addr: Vec<String> = st["loadBalancer"]["ingress"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|i| {
                    if i["ip"].is_null() {
                        s(&i["hostname"])
                    } else {
                        s(&i["ip"])
                    }
                })
                .collect();
            let ports = if spec["tls"].as_array().is_some_and(|t| !t.is_empty()) {
                "80, 443"
            } else {
                "80"
            };
            vec![
                name,
                json!(or_none(s(&spec["ingressClassName"]))),
                json!(if hosts.is_empty() {
                    "*".into()
                } else {
                    hosts.join(",")
                }),
                json!(addr.join(",")),
                json!(ports),
                json!(age(created, now)),
            ]
        }
        ("networking.k8s.io", "IngressClass") => {
            let p = &spec["parameters"];
            let params = if p.is_object() {
                let group = p["apiGroup"]
                    .as_str()
                    .map(|g| format!(".{g}"))
                    .unwrap_or_default();
                format!("{}{group}/{}", s(&p["kind"]), s(&p["name"]))
            } else {
                "<none>".into()
            };
            vec![
                name,
                json!(s(&spec["controller"])),
                json!(params),
                json!(age(created, now)),
            ]
        }
        ("", "Event") => {
            let last = [
                &obj["lastTimestamp"],
                &obj["eventTime"],
                &obj["firstTimestamp"],
                created,
            ]
            .into_iter()
            .find(|v| v.is_string())
            .cloned()
            .unwrap_or(Value::Null);
            let io = &obj["involvedObject"];
            vec![
                json!(age(&last, now)),
                json!(s(&obj["type"])),
                json!(s(&obj["reason"])),
                json!(format!(
                    "{}/{}",
                    s(&io["kind"]).to_ascii_lowercase(),
                    s(&io["name"])
                )),
                json!(s(&obj["message"])),
            ]
        }
        ("coordination.k8s.io", "Lease") => vec![
            name,
            json!(s(&spec["holderIdentity"])),
            json!(age(created, now)),
        ],
        ("apiextensions.k8s.io", "CustomResourceDefinition") => vec![name, json!(s(created))],
        _ => vec![name, json!(age(created, now))],
    }
}

/// A complete Table for a list of objects. `include_object` controls the
/// per-row `object` (kubectl asks for `Object` or `Metadata`, default `Metadata`).
pub fn table(
    r: &Resource,
    objects: &[Value],
    include: &str,
    resource_version: &str,
    continue_token: Option<&str>,
) -> Value {
    let now = Utc::now();
    let rows: Vec<Value> = objects.iter().map(|o| row(r, o, include, now)).collect();
    let mut meta = json!({"resourceVersion": resource_version});
    if let Some(c) = continue_token {
        meta["continue"] = json!(c);
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": meta,
        "columnDefinitions": columns(r),
        "rows": rows,
    })
}

/// One Table row for `obj`.
pub fn row(r: &Resource, obj: &Value, include: &str, now: DateTime<Utc>) -> Value {
    let object = match include {
        "None" => Value::Null,
        "Object" => obj.clone(),
        _ => json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": obj["metadata"],
        }),
    };
    json!({"cells": cells(r, obj, now), "object": object})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::builtin_resources;

    fn res(kind: &str) -> Resource {
        builtin_resources()
            .into_iter()
            .find(|r| r.kind == kind)
            .unwrap()
    }

    #[test]
    fn ages_read_like_kubectl() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(150), "2m30s");
        assert_eq!(human_duration(3600 * 3 + 120), "3h2m");
        assert_eq!(human_duration(86400 * 3 + 3600), "3d1h");
    }

    #[test]
    fn service_row_shows_ports_and_pending_external_ip() {
        let svc = json!({"metadata": {"name": "wordpress", "creationTimestamp": "2020-01-01T00:00:00Z"},
            "spec": {"type": "LoadBalancer", "clusterIP": "10.43.0.10", "selector": {"app": "wordpress"},
                     "ports": [{"port": 80, "nodePort": 31000, "protocol": "TCP"}]}, "status": {"loadBalancer": {}}});
        let c = cells(&res("Service"), &svc, Utc::now());
        assert_eq!(c[1], "LoadBalancer");
        assert_eq!(c[3], "<pending>");
        assert_eq!(c[4], "80:31000/TCP");
        assert_eq!(columns(&res("Service")).len(), c.len());
    }

    #[test]
    fn pod_row_counts_ready_containers() {
        let pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}, {"name": "b"}]},
            "status": {"phase": "Running", "containerStatuses": [{"ready": true, "restartCount": 1}, {"ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}});
        let c = cells(&res("Pod"), &pod, Utc::now());
        assert_eq!(c[1], "1/2");
        assert_eq!(c[2], "CrashLoopBackOff");
        assert_eq!(c[3], "1");
    }
}
