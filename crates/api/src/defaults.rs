//! Defaulting of built-in objects, as the Kubernetes API server applies it
//! before validation, so `kubectl get -o yaml` shows the fields users expect.

use crate::json::{items_mut, object_mut};
use serde_json::{json, Value};

fn set_default(obj: &mut Value, field: &str, v: Value) {
    if let Some(m) = obj.as_object_mut() {
        let e = m.entry(field).or_insert(Value::Null);
        if e.is_null() {
            *e = v;
        }
    }
}

/// The image pull policy Kubernetes picks: `Always` for `:latest` or no tag.
pub fn default_pull_policy(image: &str) -> &'static str {
    let last = image.rsplit('/').next().unwrap_or(image);
    if image.contains('@') {
        return "IfNotPresent";
    }
    match last.split_once(':') {
        None => "Always",
        Some((_, "latest")) => "Always",
        Some(_) => "IfNotPresent",
    }
}

/// Defaults of a PodSpec (also used inside pod templates).
pub fn default_pod_spec(spec: &mut Value) {
    if !spec.is_object() {
        return;
    }
    set_default(spec, "restartPolicy", json!("Always"));
    set_default(spec, "terminationGracePeriodSeconds", json!(30));
    set_default(spec, "dnsPolicy", json!("ClusterFirst"));
    set_default(spec, "securityContext", json!({}));
    set_default(spec, "schedulerName", json!("default-scheduler"));
    for list in ["containers", "initContainers"] {
        for c in items_mut(spec, list).filter(|c| c.is_object()) {
            if let Some(image) = c["image"].as_str().map(str::to_owned) {
                set_default(c, "imagePullPolicy", json!(default_pull_policy(&image)));
            }
            set_default(c, "terminationMessagePath", json!("/dev/termination-log"));
            set_default(c, "terminationMessagePolicy", json!("File"));
            set_default(c, "resources", json!({}));
            for p in items_mut(c, "ports") {
                set_default(p, "protocol", json!("TCP"));
            }
            for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
                let Some(p) = object_mut(c, probe) else {
                    continue;
                };
                if p["httpGet"].is_object() || p["httpGet"].is_null() {
                    set_default(p, "timeoutSeconds", json!(1));
                    set_default(p, "periodSeconds", json!(10));
                    set_default(p, "successThreshold", json!(1));
                    set_default(p, "failureThreshold", json!(3));
                    if p["httpGet"].is_object() {
                        set_default(&mut p["httpGet"], "path", json!("/"));
                        set_default(&mut p["httpGet"], "scheme", json!("HTTP"));
                    }
                }
            }
        }
    }
    for v in items_mut(spec, "volumes").filter(|v| v.is_object()) {
        for src in ["configMap", "secret"] {
            if v[src].is_object() {
                set_default(&mut v[src], "defaultMode", json!(420));
            }
        }
        if v["emptyDir"].is_null() && v.as_object().is_some_and(|m| m.len() == 1) {
            v["emptyDir"] = json!({});
        }
    }
}

fn qos_class(spec: &Value) -> &'static str {
    let containers: Vec<&Value> = spec["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    let mut any = false;
    let mut guaranteed = !containers.is_empty();
    for c in &containers {
        let req = &c["resources"]["requests"];
        let lim = &c["resources"]["limits"];
        for r in ["cpu", "memory"] {
            if !req[r].is_null() || !lim[r].is_null() {
                any = true;
            }
            let l = &lim[r];
            let q = if req[r].is_null() { l } else { &req[r] };
            if l.is_null() || q != l {
                guaranteed = false;
            }
        }
    }
    if guaranteed {
        "Guaranteed"
    } else if any {
        "Burstable"
    } else {
        "BestEffort"
    }
}

/// Objects whose top-level shape is wrong are left alone: the schema check
/// rejects them, and defaulting must never fail on what it is given.
fn well_shaped(obj: &Value) -> bool {
    let obj_or_null = |v: &Value| v.is_object() || v.is_null();
    obj.is_object()
        && obj_or_null(&obj["metadata"])
        && obj_or_null(&obj["metadata"]["labels"])
        && obj_or_null(&obj["spec"])
        && obj_or_null(&obj["status"])
        && obj_or_null(&obj["spec"]["template"])
        && obj_or_null(&obj["spec"]["template"]["spec"])
        && obj_or_null(&obj["spec"]["strategy"])
        && obj_or_null(&obj["spec"]["strategy"]["rollingUpdate"])
        && obj_or_null(&obj["spec"]["names"])
}

/// Fill in what Kubernetes fills in on create for a built-in kind.
pub fn apply_defaults(group: &str, kind: &str, obj: &mut Value) {
    if !well_shaped(obj) {
        return;
    }
    match (group, kind) {
        ("", "Pod") => {
            let spec = &mut obj["spec"];
            default_pod_spec(spec);
            set_default(spec, "serviceAccountName", json!("default"));
            set_default(spec, "serviceAccount", spec["serviceAccountName"].clone());
            set_default(spec, "enableServiceLinks", json!(true));
            set_default(spec, "priority", json!(0));
            set_default(spec, "preemptionPolicy", json!("PreemptLowerPriority"));
            // The DefaultTolerationSeconds admission plugin's tolerations.
            let tolerations = spec["tolerations"].as_array().cloned().unwrap_or_default();
            let mut tolerations = tolerations;
            for key in [
                "node.kubernetes.io/not-ready",
                "node.kubernetes.io/unreachable",
            ] {
                if !tolerations.iter().any(|t| t["key"] == key) {
                    tolerations.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}));
                }
            }
            spec["tolerations"] = Value::Array(tolerations);
            let qos = qos_class(&obj["spec"]);
            set_default(obj, "status", json!({}));
            set_default(&mut obj["status"], "phase", json!("Pending"));
            set_default(&mut obj["status"], "qosClass", json!(qos));
        }
        ("apps", "Deployment") => {
            let spec = &mut obj["spec"];
            set_default(spec, "replicas", json!(1));
            set_default(spec, "strategy", json!({}));
            set_default(&mut spec["strategy"], "type", json!("RollingUpdate"));
            if spec["strategy"]["type"] == "RollingUpdate" {
                set_default(&mut spec["strategy"], "rollingUpdate", json!({}));
                set_default(
                    &mut spec["strategy"]["rollingUpdate"],
                    "maxUnavailable",
                    json!("25%"),
                );
                set_default(
                    &mut spec["strategy"]["rollingUpdate"],
                    "maxSurge",
                    json!("25%"),
                );
            }
            set_default(spec, "revisionHistoryLimit", json!(10));
            set_default(spec, "progressDeadlineSeconds", json!(600));
            if let Some(t) = object_mut(spec, "template").and_then(|t| object_mut(t, "spec")) {
                default_pod_spec(t);
            }
        }
        ("apps", "ReplicaSet") => {
            set_default(&mut obj["spec"], "replicas", json!(1));
            if let Some(t) =
                object_mut(&mut obj["spec"], "template").and_then(|t| object_mut(t, "spec"))
            {
                default_pod_spec(t);
            }
        }
        ("", "Service") => {
            let spec = &mut obj["spec"];
            set_default(spec, "type", json!("ClusterIP"));
            let ty = spec["type"].as_str().unwrap_or("ClusterIP").to_owned();
            if ty != "ExternalName" {
                set_default(spec, "sessionAffinity", json!("None"));
                set_default(spec, "internalTrafficPolicy", json!("Cluster"));
                set_default(spec, "ipFamilyPolicy", json!("SingleStack"));
                set_default(spec, "ipFamilies", json!(["IPv4"]));
            }
            if ty == "NodePort" || ty == "LoadBalancer" {
                set_default(spec, "externalTrafficPolicy", json!("Cluster"));
            }
            if ty == "LoadBalancer" {
                set_default(spec, "allocateLoadBalancerNodePorts", json!(true));
            }
            for p in items_mut(spec, "ports").filter(|p| p.is_object()) {
                set_default(p, "protocol", json!("TCP"));
                let port = p["port"].clone();
                set_default(p, "targetPort", port);
            }
            set_default(obj, "status", json!({"loadBalancer": {}}));
        }
        ("", "Namespace") => {
            set_default(obj, "spec", json!({"finalizers": ["kubernetes"]}));
            set_default(obj, "status", json!({"phase": "Active"}));
            if let Some(name) = obj["metadata"]["name"]
                .as_str()
                .map(str::to_owned)
                .filter(|_| obj["metadata"].is_object())
            {
                set_default(&mut obj["metadata"], "labels", json!({}));
                obj["metadata"]["labels"]["kubernetes.io/metadata.name"] = json!(name);
            }
        }
        ("", "Secret") => set_default(obj, "type", json!("Opaque")),
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            set_default(&mut obj["spec"], "conversion", json!({"strategy": "None"}));
            let kind = obj["spec"]["names"]["kind"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            set_default(
                &mut obj["spec"]["names"],
                "singular",
                json!(kind.to_ascii_lowercase()),
            );
            set_default(
                &mut obj["spec"]["names"],
                "listKind",
                json!(format!("{kind}List")),
            );
        }
        _ => {}
    }
}

/// Convert an `extensions/v1beta1` Ingress to `networking.k8s.io/v1`.
pub fn ingress_v1beta1_to_v1(obj: &mut Value) {
    fn backend(b: &Value) -> Value {
        if b.is_null() {
            return Value::Null;
        }
        let port = match &b["servicePort"] {
            Value::String(s) => json!({"name": s}),
            Value::Null => json!({}),
            n => json!({"number": n}),
        };
        json!({"service": {"name": b["serviceName"], "port": port}})
    }
    if !well_shaped(obj) {
        return;
    }
    obj["apiVersion"] = json!("networking.k8s.io/v1");
    let spec = &mut obj["spec"];
    if spec.get("backend").is_some() {
        let b = backend(&spec["backend"]);
        if let Some(m) = spec.as_object_mut() {
            m.remove("backend");
            m.insert("defaultBackend".into(), b);
        }
    }
    for rule in items_mut(spec, "rules").filter(|r| r.is_object()) {
        let Some(http) = object_mut(rule, "http") else {
            continue;
        };
        for p in items_mut(http, "paths").filter(|p| p.is_object()) {
            let b = backend(&p["backend"]);
            p["backend"] = b;
            set_default(p, "pathType", json!("ImplementationSpecific"));
        }
    }
}

/// Convert a stored `networking.k8s.io/v1` Ingress back to `extensions/v1beta1`.
pub fn ingress_v1_to_v1beta1(obj: &mut Value) {
    fn backend(b: &Value) -> Value {
        if b.is_null() {
            return Value::Null;
        }
        let port = if b["service"]["port"]["number"].is_null() {
            b["service"]["port"]["name"].clone()
        } else {
            b["service"]["port"]["number"].clone()
        };
        json!({"serviceName": b["service"]["name"], "servicePort": port})
    }
    if !well_shaped(obj) {
        return;
    }
    obj["apiVersion"] = json!("extensions/v1beta1");
    let spec = &mut obj["spec"];
    if spec.get("defaultBackend").is_some() {
        let b = backend(&spec["defaultBackend"]);
        if let Some(m) = spec.as_object_mut() {
            m.remove("defaultBackend");
            m.insert("backend".into(), b);
        }
    }
    for rule in items_mut(spec, "rules").filter(|r| r.is_object()) {
        let Some(http) = object_mut(rule, "http") else {
            continue;
        };
        for p in items_mut(http, "paths").filter(|p| p.is_object()) {
            let b = backend(&p["backend"]);
            p["backend"] = b;
            // v1beta1 leaves pathType out for its default, so manifests
            // written for it apply unchanged the second time.
            if p["pathType"] == "ImplementationSpecific" {
                if let Some(m) = p.as_object_mut() {
                    m.remove("pathType");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_get_kubernetes_defaults() {
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "c", "image": "nginx", "ports": [{"containerPort": 80}]},
            {"name": "d", "image": "mysql:8.0"}]}});
        apply_defaults("", "Pod", &mut pod);
        assert_eq!(pod["spec"]["restartPolicy"], "Always");
        assert_eq!(pod["spec"]["containers"][0]["imagePullPolicy"], "Always");
        assert_eq!(
            pod["spec"]["containers"][1]["imagePullPolicy"],
            "IfNotPresent"
        );
        assert_eq!(pod["spec"]["containers"][0]["ports"][0]["protocol"], "TCP");
        assert_eq!(pod["status"]["phase"], "Pending");
        assert_eq!(pod["status"]["qosClass"], "BestEffort");
        assert_eq!(pod["spec"]["tolerations"].as_array().unwrap().len(), 2);
    }

    fn nulls(v: &Value, path: &str, out: &mut Vec<String>) {
        match v {
            Value::Null => out.push(path.to_owned()),
            Value::Object(m) => m
                .iter()
                .for_each(|(k, c)| nulls(c, &format!("{path}.{k}"), out)),
            Value::Array(a) => a
                .iter()
                .enumerate()
                .for_each(|(i, c)| nulls(c, &format!("{path}[{i}]"), out)),
            _ => {}
        }
    }

    #[test]
    fn defaulting_never_adds_nulls() {
        let mut objs = [
            (
                "",
                "Pod",
                json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "i"}]}}),
            ),
            (
                "apps",
                "Deployment",
                json!({"metadata": {"name": "d"}, "spec": {"selector": {"matchLabels": {"a": "b"}},
                "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}}),
            ),
            (
                "apps",
                "Deployment",
                json!({"metadata": {"name": "d"}, "spec": {}}),
            ),
            (
                "",
                "Service",
                json!({"metadata": {"name": "s"}, "spec": {"type": "ExternalName", "externalName": "x.example"}}),
            ),
            ("", "Namespace", json!({"metadata": {"name": "n"}})),
        ];
        for (g, k, o) in objs.iter_mut() {
            apply_defaults(g, k, o);
            let mut found = vec![];
            nulls(o, "", &mut found);
            assert!(found.is_empty(), "{k}: {found:?}");
        }
        let mut ing = json!({"apiVersion": "extensions/v1beta1", "spec": {"rules": [{"host": "a", "http": {}}]}});
        ingress_v1beta1_to_v1(&mut ing);
        let mut found = vec![];
        nulls(&ing, "", &mut found);
        assert!(found.is_empty(), "{found:?}");
    }

    #[test]
    fn services_default_target_port() {
        let mut svc = json!({"spec": {"ports": [{"port": 80}], "type": "NodePort"}});
        apply_defaults("", "Service", &mut svc);
        assert_eq!(svc["spec"]["ports"][0]["targetPort"], 80);
        assert_eq!(svc["spec"]["externalTrafficPolicy"], "Cluster");
    }

    #[test]
    fn legacy_ingress_round_trips() {
        let mut ing = json!({"apiVersion": "extensions/v1beta1", "kind": "Ingress", "spec": {"rules": [{"host": "bar.foo.com",
            "http": {"paths": [{"path": "/first", "backend": {"serviceName": "firstservice", "servicePort": 80}}]}}]}});
        let orig = ing.clone();
        ingress_v1beta1_to_v1(&mut ing);
        let p = &ing["spec"]["rules"][0]["http"]["paths"][0];
        assert_eq!(p["backend"]["service"]["name"], "firstservice");
        assert_eq!(p["backend"]["service"]["port"]["number"], 80);
        assert_eq!(p["pathType"], "ImplementationSpecific");
        ingress_v1_to_v1beta1(&mut ing);
        assert_eq!(
            ing["spec"]["rules"][0]["http"]["paths"][0]["backend"],
            orig["spec"]["rules"][0]["http"]["paths"][0]["backend"]
        );
    }
}
