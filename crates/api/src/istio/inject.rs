//! Sidecar injection: the mutation Istio's injection webhook makes to a new
//! Pod, done by mast's API server at admission.
//!
//! Which pods, as in Istio: a pod whose label or annotation
//! `sidecar.istio.io/inject` is `"true"`, or any pod in a namespace labelled
//! `istio-injection=enabled` unless the pod says `"false"`. Pods on the host
//! network, pods already injected, and pods in `kube-system` and
//! `kube-public` are left alone.
//!
//! What it adds is Istio's native-sidecar form (Kubernetes 1.29+): the proxy
//! is the first init container, with `restartPolicy: Always` and a startup
//! probe on `:15021/healthz/ready`. The node agent therefore starts the
//! application only once the proxy holds its configuration, and stops the
//! proxy only after the application: Istio's two most common complaints
//! (apps that start before their proxy, Jobs that never end) do not arise.
//! The agent sees `sidecar.istio.io/status` and installs traffic capture in
//! the pod's network namespace, as istio-cni does.
//!
//! The application's HTTP probes are rewritten as Istio rewrites them
//! (unless the annotation `sidecar.istio.io/rewriteAppHTTPProbers` is
//! `"false"`): to the proxy agent's `:15020/app-health/<container>/readyz`
//! (`livez`, `startupz`), with the original probes in the agent's
//! `ISTIO_KUBE_APP_PROBERS`. The agent probes the application over
//! loopback, so a probe still works when a STRICT PeerAuthentication
//! refuses plain text from the node.

use serde_json::{json, Value};

/// The injected proxy container's name, as Istio's.
pub const PROXY_CONTAINER: &str = "istio-proxy";
/// The annotation that marks a pod as injected.
pub const STATUS_ANNOTATION: &str = "sidecar.istio.io/status";
/// The proxy's own uid, excluded from capture.
pub const PROXY_UID: i64 = 1337;

/// How injected proxies are run and where they get their configuration.
#[derive(Debug, Clone)]
pub struct Template {
    /// The proxy image (`mast.dev/proxyv2`).
    pub image: String,
    /// The control plane's xDS address, as the proxy agent reaches it from
    /// the node (`unix:///path` or `host:port`).
    pub xds_address: String,
    /// The proxy program: an Envoy binary (`--mesh-proxy envoy`).
    pub proxy_bin: String,
    /// The cluster domain (`cluster.local`).
    pub domain: String,
}

fn flag(v: &Value) -> Option<bool> {
    match v.as_str()?.to_ascii_lowercase().as_str() {
        "true" | "enabled" | "yes" | "y" => Some(true),
        "false" | "disabled" | "no" | "n" => Some(false),
        _ => None,
    }
}

/// Whether a new pod in a namespace with `ns_labels` gets a sidecar.
pub fn wanted(pod: &Value, ns_labels: &Value) -> bool {
    let meta = &pod["metadata"];
    let ns = meta["namespace"].as_str().unwrap_or_default();
    if matches!(ns, "kube-system" | "kube-public")
        || pod["spec"]["hostNetwork"] == json!(true)
        || meta["annotations"][STATUS_ANNOTATION].is_string()
    {
        return false;
    }
    let key = "sidecar.istio.io/inject";
    let pod_says = flag(&meta["labels"][key]).or_else(|| flag(&meta["annotations"][key]));
    match pod_says {
        Some(v) => v,
        None => ns_labels["istio-injection"].as_str() == Some("enabled"),
    }
}

fn field_env(name: &str, path: &str) -> Value {
    json!({"name": name, "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": path}}})
}

/// Add the proxy to `pod`, as Istio's injector would in native-sidecar mode.
/// The agent's port for rewritten probes (Istio's status port).
pub const APP_HEALTH_PORT: i64 = 15020;

/// Point the application containers' HTTP probes at the proxy agent, as
/// Istio's `rewriteAppHTTPProbe`; the originals, by the path the agent now
/// answers, resolved to port numbers.
fn rewrite_probes(spec: &mut Value) -> serde_json::Map<String, Value> {
    let mut probers = serde_json::Map::new();
    for c in spec["containers"].as_array_mut().into_iter().flatten() {
        let name = c["name"].as_str().unwrap_or_default().to_owned();
        let ports = c["ports"].clone();
        for (field, kind) in [
            ("readinessProbe", "readyz"),
            ("livenessProbe", "livez"),
            ("startupProbe", "startupz"),
        ] {
            let probe = &mut c[field];
            // HTTPS probes stay as they are: the agent probes in plain HTTP.
            if !probe["httpGet"].is_object() || probe["httpGet"]["scheme"] == json!("HTTPS") {
                continue;
            }
            let mut get = probe["httpGet"].clone();
            // A named port is the container's port of that name.
            if let Some(named) = get["port"].as_str() {
                let number = ports
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|p| p["name"].as_str() == Some(named))
                    .and_then(|p| p["containerPort"].as_i64())
                    .or_else(|| named.parse().ok());
                match number {
                    Some(n) => get["port"] = json!(n),
                    None => continue, // Kubernetes refuses it: left as it is.
                }
            }
            let path = format!("/app-health/{name}/{kind}");
            let mut original = json!({"httpGet": get});
            if let Some(t) = probe["timeoutSeconds"].as_i64() {
                original["timeoutSeconds"] = json!(t);
            }
            probers.insert(path.clone(), original);
            probe["httpGet"] = json!({"path": path, "port": APP_HEALTH_PORT, "scheme": "HTTP"});
        }
    }
    probers
}

pub fn inject(pod: &mut Value, t: &Template) {
    let labels = pod["metadata"]["labels"].clone();
    let rewrite = flag(&pod["metadata"]["annotations"]["sidecar.istio.io/rewriteAppHTTPProbers"])
        .unwrap_or(true);
    let probers = if rewrite {
        rewrite_probes(&mut pod["spec"])
    } else {
        Default::default()
    };
    let app_containers: Vec<String> = pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str().map(str::to_owned))
        .collect();
    let probe = |period: i64, failures: i64| {
        json!({"httpGet": {"path": "/healthz/ready", "port": 15021, "scheme": "HTTP"},
               "periodSeconds": period, "timeoutSeconds": 3, "failureThreshold": failures,
               "successThreshold": 1, "initialDelaySeconds": 0})
    };
    let proxy = json!({
        "name": PROXY_CONTAINER,
        "image": t.image,
        "args": ["proxy", "sidecar", "--domain", format!("$(POD_NAMESPACE).svc.{}", t.domain)],
        "restartPolicy": "Always",
        "env": [
            field_env("POD_NAME", "metadata.name"),
            field_env("POD_NAMESPACE", "metadata.namespace"),
            field_env("INSTANCE_IP", "status.podIP"),
            field_env("SERVICE_ACCOUNT", "spec.serviceAccountName"),
            field_env("HOST_IP", "status.hostIP"),
            {"name": "ISTIO_META_CLUSTER_ID", "value": "Kubernetes"},
            {"name": "ISTIO_META_APP_CONTAINERS", "value": app_containers.join(",")},
            {"name": "MAST_XDS_ADDRESS", "value": t.xds_address},
            {"name": "MAST_PROXY_BIN", "value": t.proxy_bin},
        ],
        "ports": [{"containerPort": 15090, "name": "http-envoy-prom", "protocol": "TCP"}],
        "startupProbe": probe(1, 600),
        "readinessProbe": probe(15, 4),
        "resources": {"requests": {"cpu": "10m", "memory": "40Mi"}},
        // The proxy agent runs as root to reach the control plane's socket;
        // it runs the proxy itself as uid 1337, which capture excludes.
        "securityContext": {"runAsUser": 0, "runAsGroup": 0},
        "volumeMounts": [{"name": "istio-podinfo", "mountPath": "/etc/istio/pod"}],
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
        "imagePullPolicy": "IfNotPresent",
    });
    let mut proxy = proxy;
    if !probers.is_empty() {
        if let Some(env) = proxy["env"].as_array_mut() {
            env.push(json!({"name": "ISTIO_KUBE_APP_PROBERS", "value": Value::Object(probers).to_string()}));
        }
    }
    let spec = &mut pod["spec"];
    let mut inits = spec["initContainers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    inits.insert(0, proxy);
    spec["initContainers"] = Value::Array(inits);
    let mut volumes = spec["volumes"].as_array().cloned().unwrap_or_default();
    volumes.push(json!({"name": "istio-podinfo", "downwardAPI": {"items": [
        {"path": "labels", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.labels"}},
        {"path": "annotations", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.annotations"}},
    ]}}));
    spec["volumes"] = Value::Array(volumes);
    let meta = &mut pod["metadata"];
    if !meta["annotations"].is_object() {
        meta["annotations"] = json!({});
    }
    meta["annotations"][STATUS_ANNOTATION] = json!(json!({
        "initContainers": [PROXY_CONTAINER], "containers": null,
        "volumes": ["istio-podinfo"], "imagePullSecrets": null, "revision": "default"
    })
    .to_string());
    if let Some(first) = app_containers.first() {
        meta["annotations"]["kubectl.kubernetes.io/default-container"] = json!(first);
    }
    if !meta["labels"].is_object() {
        meta["labels"] = json!({});
    }
    let name = labels["app.kubernetes.io/name"]
        .as_str()
        .or(labels["app"].as_str())
        .map(str::to_owned)
        .unwrap_or_else(|| {
            meta["generateName"]
                .as_str()
                .or(meta["name"].as_str())
                .unwrap_or_default()
                .trim_end_matches('-')
                .to_owned()
        });
    let revision = labels["app.kubernetes.io/version"]
        .as_str()
        .or(labels["version"].as_str())
        .unwrap_or("latest")
        .to_owned();
    let l = &mut meta["labels"];
    l["security.istio.io/tlsMode"] = json!("istio");
    if !l["service.istio.io/canonical-name"].is_string() {
        l["service.istio.io/canonical-name"] = json!(name);
    }
    if !l["service.istio.io/canonical-revision"].is_string() {
        l["service.istio.io/canonical-revision"] = json!(revision);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ns: &str, labels: Value, annotations: Value) -> Value {
        json!({"metadata": {"name": "p", "namespace": ns, "labels": labels, "annotations": annotations},
               "spec": {"containers": [{"name": "app", "image": "mast.dev/echo"}]}})
    }

    #[test]
    fn namespace_label_and_pod_override_decide() {
        let on = json!({"istio-injection": "enabled"});
        let off = json!({});
        assert!(wanted(&pod("default", json!({}), json!({})), &on));
        assert!(!wanted(&pod("default", json!({}), json!({})), &off));
        let no = json!({"sidecar.istio.io/inject": "false"});
        assert!(!wanted(&pod("default", no.clone(), json!({})), &on));
        assert!(!wanted(&pod("default", json!({}), no), &on));
        let yes = json!({"sidecar.istio.io/inject": "true"});
        assert!(wanted(&pod("default", json!({}), yes.clone()), &off));
        assert!(!wanted(&pod("kube-system", json!({}), yes), &off));
        let mut host = pod("default", json!({}), json!({}));
        host["spec"]["hostNetwork"] = json!(true);
        assert!(!wanted(&host, &on));
    }

    #[test]
    fn injection_adds_a_native_sidecar_once() {
        let t = Template {
            image: "mast.dev/proxyv2".into(),
            xds_address: "unix:///x.sock".into(),
            proxy_bin: "/usr/bin/envoy".into(),
            domain: "cluster.local".into(),
        };
        let mut p = pod(
            "default",
            json!({"app": "reviews", "version": "v2"}),
            json!({}),
        );
        p["spec"]["initContainers"] = json!([{"name": "setup", "image": "busybox"}]);
        inject(&mut p, &t);
        let inits = p["spec"]["initContainers"].as_array().unwrap();
        assert_eq!(inits[0]["name"], "istio-proxy");
        assert_eq!(inits[0]["restartPolicy"], "Always");
        assert_eq!(inits[1]["name"], "setup");
        assert_eq!(
            p["metadata"]["labels"]["service.istio.io/canonical-name"],
            "reviews"
        );
        assert_eq!(
            p["metadata"]["labels"]["service.istio.io/canonical-revision"],
            "v2"
        );
        assert_eq!(
            p["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"],
            "app"
        );
        assert!(!wanted(&p, &json!({"istio-injection": "enabled"})));
    }

    #[test]
    fn http_probes_go_through_the_agent_as_istio_rewrites_them() {
        let t = Template {
            image: "mast.dev/proxyv2".into(),
            xds_address: "unix:///x.sock".into(),
            proxy_bin: "/usr/bin/envoy".into(),
            domain: "cluster.local".into(),
        };
        let with_probes = |annotations: Value| {
            let mut p = pod("default", json!({"app": "web"}), annotations);
            p["spec"]["containers"][0]["ports"] = json!([{"name": "http", "containerPort": 8080}]);
            p["spec"]["containers"][0]["readinessProbe"] =
                json!({"httpGet": {"path": "/ready", "port": "http"}, "timeoutSeconds": 2});
            p["spec"]["containers"][0]["livenessProbe"] = json!({"tcpSocket": {"port": 8080}});
            inject(&mut p, &t);
            p
        };
        let p = with_probes(json!({}));
        let app = &p["spec"]["containers"][0];
        assert_eq!(
            app["readinessProbe"]["httpGet"],
            json!({"path": "/app-health/app/readyz", "port": 15020, "scheme": "HTTP"})
        );
        assert_eq!(app["readinessProbe"]["timeoutSeconds"], 2);
        assert_eq!(
            app["livenessProbe"],
            json!({"tcpSocket": {"port": 8080}}),
            "TCP probes stay"
        );
        let env = p["spec"]["initContainers"][0]["env"].as_array().unwrap();
        let probers = env
            .iter()
            .find(|e| e["name"] == "ISTIO_KUBE_APP_PROBERS")
            .and_then(|e| e["value"].as_str())
            .expect("ISTIO_KUBE_APP_PROBERS");
        let probers: Value = serde_json::from_str(probers).unwrap();
        assert_eq!(
            probers,
            json!({"/app-health/app/readyz": {"httpGet": {"path": "/ready", "port": 8080}, "timeoutSeconds": 2}})
        );
        // The pod can say no.
        let p = with_probes(json!({"sidecar.istio.io/rewriteAppHTTPProbers": "false"}));
        assert_eq!(
            p["spec"]["containers"][0]["readinessProbe"]["httpGet"]["path"],
            "/ready"
        );
    }
}
