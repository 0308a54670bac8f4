//! The scheduling rules as pure functions: which nodes can take a pod
//! (filters) and which of those is best (score). The messages match
//! kube-scheduler's, so `kubectl describe pod` reads the same.

use k8s_openapi::api::core::v1::{Node, Pod, Taint, Toleration};
use std::collections::{BTreeMap, HashMap};

pub use mast_api::quantity::milli;

/// Requests of a pod per resource, in milli-units (init containers count at
/// their maximum, as Kubernetes computes the effective request).
pub fn pod_requests(pod: &Pod) -> HashMap<String, i128> {
    let mut sum: HashMap<String, i128> = HashMap::new();
    let Some(spec) = &pod.spec else { return sum };
    let requests = |c: &k8s_openapi::api::core::v1::Container| {
        c.resources
            .as_ref()
            .and_then(|r| r.requests.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, milli(&v.0).unwrap_or(0)))
    };
    for (k, v) in spec.containers.iter().flat_map(requests) {
        *sum.entry(k).or_default() += v;
    }
    for (k, v) in spec.init_containers.iter().flatten().flat_map(requests) {
        let e = sum.entry(k).or_default();
        *e = (*e).max(v);
    }
    *sum.entry("pods".into()).or_default() += 1000;
    sum
}

fn tolerates(tolerations: &[Toleration], taint: &Taint) -> bool {
    tolerations
        .iter()
        .any(|t| mast_api::taints::tolerates(t, taint))
}

fn labels(node: &Node) -> BTreeMap<String, String> {
    node.metadata.labels.clone().unwrap_or_default()
}

fn expr_matches(labels: &BTreeMap<String, String>, key: &str, op: &str, values: &[String]) -> bool {
    let v = labels.get(key);
    match op {
        "In" => v.is_some_and(|v| values.contains(v)),
        "NotIn" => v.is_none_or(|v| !values.contains(v)),
        "Exists" => v.is_some(),
        "DoesNotExist" => v.is_none(),
        "Gt" => v
            .and_then(|v| v.parse::<i64>().ok())
            .zip(values.first().and_then(|x| x.parse::<i64>().ok()))
            .is_some_and(|(a, b)| a > b),
        "Lt" => v
            .and_then(|v| v.parse::<i64>().ok())
            .zip(values.first().and_then(|x| x.parse::<i64>().ok()))
            .is_some_and(|(a, b)| a < b),
        _ => false,
    }
}

fn node_affinity_ok(pod: &Pod, node: &Node) -> bool {
    let Some(req) = pod
        .spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| {
            n.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
    else {
        return true;
    };
    let l = labels(node);
    let name = node.metadata.name.clone().unwrap_or_default();
    // Terms are ORed; expressions within a term are ANDed.
    req.node_selector_terms.iter().any(|term| {
        let exprs_ok = term.match_expressions.iter().flatten().all(|e| {
            expr_matches(
                &l,
                &e.key,
                &e.operator,
                e.values.as_deref().unwrap_or_default(),
            )
        });
        let fields_ok = term.match_fields.iter().flatten().all(|e| {
            let mut f = BTreeMap::new();
            f.insert("metadata.name".to_string(), name.clone());
            expr_matches(
                &f,
                &e.key,
                &e.operator,
                e.values.as_deref().unwrap_or_default(),
            )
        });
        exprs_ok && fields_ok
    })
}

/// A label selector (matchLabels and matchExpressions) against labels.
pub fn selector_matches(
    sel: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
    l: &BTreeMap<String, String>,
) -> bool {
    sel.match_labels
        .iter()
        .flatten()
        .all(|(k, v)| l.get(k) == Some(v))
        && sel.match_expressions.iter().flatten().all(|e| {
            expr_matches(
                l,
                &e.key,
                &e.operator,
                e.values.as_deref().unwrap_or_default(),
            )
        })
}

/// Why a node cannot take a pod, worded as kube-scheduler words it.
pub type Reason = String;

/// What is already placed on one node, kept up to date as pods are bound.
#[derive(Debug, Default, Clone)]
pub struct NodeInfo {
    /// Requests of the pods on it, per resource, in milli-units.
    pub used: HashMap<String, i128>,
    /// Host ports taken, with their protocol.
    pub ports: Vec<(i32, String)>,
    /// Pods per controller owner uid (for spreading replicas).
    pub owners: HashMap<String, i64>,
}

fn host_ports(pod: &Pod) -> Vec<(i32, String)> {
    pod.spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .flat_map(|c| c.ports.clone().unwrap_or_default())
        .filter_map(|p| {
            p.host_port
                .filter(|h| *h > 0)
                .map(|h| (h, p.protocol.unwrap_or_else(|| "TCP".into())))
        })
        .collect()
}

fn owner_uid(pod: &Pod) -> Option<String> {
    pod.metadata
        .owner_references
        .as_ref()
        .and_then(|o| o.first())
        .map(|o| o.uid.clone())
}

/// The cluster as the scheduler sees it: nodes, bound pods, and per-node
/// aggregates so that a decision costs O(nodes), not O(nodes × pods).
pub struct Snapshot<'a> {
    pub nodes: &'a [Node],
    /// Pods already bound to a node (and not finished).
    pub bound: Vec<Pod>,
    infos: HashMap<String, NodeInfo>,
}

impl<'a> Snapshot<'a> {
    pub fn new(nodes: &'a [Node], bound: Vec<Pod>) -> Self {
        let mut s = Self {
            nodes,
            bound: vec![],
            infos: HashMap::new(),
        };
        for p in bound {
            s.add(p);
        }
        s
    }

    /// Account for a pod now bound to `spec.nodeName`.
    pub fn add(&mut self, pod: Pod) {
        if let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) {
            let info = self.infos.entry(node).or_default();
            for (k, v) in pod_requests(&pod) {
                *info.used.entry(k).or_default() += v;
            }
            info.ports.extend(host_ports(&pod));
            if let Some(o) = owner_uid(&pod) {
                *info.owners.entry(o).or_default() += 1;
            }
        }
        self.bound.push(pod);
    }

    fn info(&self, node: &str) -> NodeInfo {
        self.infos.get(node).cloned().unwrap_or_default()
    }
}

fn node_name(n: &Node) -> String {
    n.metadata.name.clone().unwrap_or_default()
}

fn topology_value(node: &Node, key: &str) -> Option<String> {
    labels(node).get(key).cloned()
}

/// Run every filter; `Ok(())` if the node fits, else the reasons it does not.
pub fn filter(pod: &Pod, node: &Node, snap: &Snapshot<'_>) -> Result<(), Vec<Reason>> {
    let mut why = vec![];
    let spec = pod.spec.clone().unwrap_or_default();
    let status = node.status.clone().unwrap_or_default();
    let ready = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    if !ready {
        why.push("node(s) had untolerated taint {node.kubernetes.io/not-ready: }".into());
    }
    if node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
        why.push("node(s) were unschedulable".into());
    }
    let tolerations = spec.tolerations.clone().unwrap_or_default();
    for t in node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default()
    {
        if (t.effect == "NoSchedule" || t.effect == "NoExecute") && !tolerates(&tolerations, &t) {
            why.push(format!(
                "node(s) had untolerated taint {{{}: {}}}",
                t.key,
                t.value.clone().unwrap_or_default()
            ));
            break;
        }
    }
    let l = labels(node);
    if !spec
        .node_selector
        .iter()
        .flatten()
        .all(|(k, v)| l.get(k) == Some(v))
        || !node_affinity_ok(pod, node)
    {
        why.push("node(s) didn't match Pod's node affinity/selector".into());
    }
    // Resources: requests against allocatable minus what bound pods request.
    let alloc = status.allocatable.clone().unwrap_or_default();
    let want = pod_requests(pod);
    let name = node_name(node);
    let info = snap.infos.get(&name);
    let used = |k: &str| info.and_then(|i| i.used.get(k)).copied().unwrap_or(0);
    let mut keys: Vec<&String> = want.keys().collect();
    keys.sort();
    for k in keys {
        let w = want[k];
        if w == 0 {
            continue;
        }
        let cap = alloc.get(k).and_then(|q| milli(&q.0));
        match cap {
            Some(cap) if used(k) + w <= cap => {}
            None if k != "cpu" && k != "memory" && k != "pods" => {
                why.push(format!("Insufficient {k}"));
            }
            None => {}
            Some(_) if k == "pods" => why.push("Too many pods".into()),
            Some(_) => why.push(format!("Insufficient {k}")),
        }
    }
    // Host ports.
    let wanted_ports = host_ports(pod);
    if !wanted_ports.is_empty()
        && info.is_some_and(|i| wanted_ports.iter().any(|p| i.ports.contains(p)))
    {
        why.push("node(s) didn't have free ports for the requested pod ports".into());
    }
    // Required pod anti-affinity: no pod matching the selector in the same
    // topology domain.
    let pod_ns = pod.metadata.namespace.clone().unwrap_or_default();
    if let Some(anti) = spec
        .affinity
        .as_ref()
        .and_then(|a| a.pod_anti_affinity.as_ref())
    {
        for term in anti
            .required_during_scheduling_ignored_during_execution
            .iter()
            .flatten()
        {
            let Some(dom) = topology_value(node, &term.topology_key) else {
                continue;
            };
            let conflict = snap.bound.iter().any(|other| {
                let other_node = other
                    .spec
                    .as_ref()
                    .and_then(|s| s.node_name.clone())
                    .unwrap_or_default();
                let same_domain = snap.nodes.iter().any(|n| {
                    node_name(n) == other_node
                        && topology_value(n, &term.topology_key).as_deref() == Some(dom.as_str())
                });
                let ns_ok = term.namespaces.as_ref().map_or(
                    other.metadata.namespace.as_deref() == Some(pod_ns.as_str()),
                    |nss| {
                        nss.iter()
                            .any(|n| Some(n.as_str()) == other.metadata.namespace.as_deref())
                    },
                );
                same_domain
                    && ns_ok
                    && term.label_selector.as_ref().is_some_and(|s| {
                        selector_matches(s, &other.metadata.labels.clone().unwrap_or_default())
                    })
            });
            if conflict {
                why.push("node(s) didn't match pod anti-affinity rules".into());
                break;
            }
        }
    }
    // Required pod affinity: some matching pod in the same domain.
    if let Some(aff) = spec.affinity.as_ref().and_then(|a| a.pod_affinity.as_ref()) {
        for term in aff
            .required_during_scheduling_ignored_during_execution
            .iter()
            .flatten()
        {
            let dom = topology_value(node, &term.topology_key);
            let found = dom.is_some()
                && snap.bound.iter().any(|other| {
                    let other_node = other
                        .spec
                        .as_ref()
                        .and_then(|s| s.node_name.clone())
                        .unwrap_or_default();
                    snap.nodes.iter().any(|n| {
                        node_name(n) == other_node && topology_value(n, &term.topology_key) == dom
                    }) && term.label_selector.as_ref().is_some_and(|s| {
                        selector_matches(s, &other.metadata.labels.clone().unwrap_or_default())
                    })
                });
            if !found {
                why.push("node(s) didn't match pod affinity rules".into());
                break;
            }
        }
    }
    // Topology spread (DoNotSchedule): placing here must keep skew ≤ maxSkew.
    for c in spec.topology_spread_constraints.iter().flatten() {
        if c.when_unsatisfiable != "DoNotSchedule" {
            continue;
        }
        let Some(dom) = topology_value(node, &c.topology_key) else {
            why.push(
                "node(s) didn't match pod topology spread constraints (missing required label)"
                    .into(),
            );
            continue;
        };
        let mut counts: HashMap<String, i32> = HashMap::new();
        for n in snap.nodes {
            if let Some(d) = topology_value(n, &c.topology_key) {
                counts.entry(d).or_default();
            }
        }
        for other in &snap.bound {
            if other.metadata.namespace.as_deref() != Some(pod_ns.as_str()) {
                continue;
            }
            if !c.label_selector.as_ref().is_some_and(|s| {
                selector_matches(s, &other.metadata.labels.clone().unwrap_or_default())
            }) {
                continue;
            }
            let on = other
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default();
            if let Some(d) = snap
                .nodes
                .iter()
                .find(|n| node_name(n) == on)
                .and_then(|n| topology_value(n, &c.topology_key))
            {
                *counts.entry(d).or_default() += 1;
            }
        }
        let min = counts.values().copied().min().unwrap_or(0);
        let here = counts.get(&dom).copied().unwrap_or(0) + 1;
        if here - min > c.max_skew {
            why.push("node(s) didn't match pod topology spread constraints".into());
        }
    }
    if why.is_empty() {
        Ok(())
    } else {
        Err(why)
    }
}

/// Higher is better: fewer pods of the same owner first (spreading
/// replicas), then the least requested resources.
pub fn score(pod: &Pod, node: &Node, snap: &Snapshot<'_>) -> i64 {
    let info = snap.info(&node_name(node));
    let same_owner = owner_uid(pod)
        .and_then(|o| info.owners.get(&o).copied())
        .unwrap_or(0);
    let alloc = node
        .status
        .as_ref()
        .and_then(|s| s.allocatable.clone())
        .unwrap_or_default();
    let free_pct = |k: &str| -> i64 {
        let cap = alloc.get(k).and_then(|q| milli(&q.0)).unwrap_or(0);
        if cap <= 0 {
            return 0;
        }
        (((cap - info.used.get(k).copied().unwrap_or(0)).max(0) * 100) / cap) as i64
    };
    -same_owner * 1000 + (free_pct("cpu") + free_pct("memory") + free_pct("pods")) / 3
}

/// kube-scheduler's summary: `0/3 nodes are available: 1 Insufficient cpu,
/// 2 node(s) didn't match Pod's node affinity/selector.`
pub fn unschedulable_message(total: usize, reasons: &[Vec<Reason>]) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for r in reasons {
        for x in r {
            *counts.entry(x.as_str()).or_default() += 1;
        }
    }
    let parts: Vec<String> = counts.iter().map(|(r, n)| format!("{n} {r}")).collect();
    if parts.is_empty() {
        format!("0/{total} nodes are available: no nodes available to schedule pods.")
    } else {
        format!(
            "0/{total} nodes are available: {}. preemption: 0/{total} nodes are available: {total} Preemption is not helpful for scheduling.",
            parts.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, labels: serde_json::Value, taints: serde_json::Value, cpu: &str) -> Node {
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels},
            "spec": {"taints": taints},
            "status": {"allocatable": {"cpu": cpu, "memory": "4Gi", "pods": "110"},
                       "conditions": [{"type": "Ready", "status": "True"}]}}))
        .unwrap()
    }

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "default", "labels": {"app": "a"}}, "spec": spec})).unwrap()
    }

    #[test]
    fn quantities() {
        assert_eq!(milli("100m"), Some(100));
        assert_eq!(milli("2"), Some(2000));
        assert_eq!(milli("0.5"), Some(500));
        assert_eq!(milli("1Ki"), Some(1_024_000));
        assert_eq!(milli("1e3"), Some(1_000_000));
        assert_eq!(milli("abc"), None);
    }

    #[test]
    fn filters_follow_kubernetes() {
        let nodes = vec![
            node("a", json!({"disk": "ssd", "zone": "z1"}), json!([]), "1"),
            node(
                "b",
                json!({"zone": "z2"}),
                json!([{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]),
                "4",
            ),
        ];
        let snap = Snapshot::new(&nodes, vec![]);
        let p = pod(
            json!({"containers": [{"name": "c", "image": "i"}], "nodeSelector": {"disk": "ssd"}}),
        );
        assert!(filter(&p, &nodes[0], &snap).is_ok());
        assert_eq!(filter(&p, &nodes[1], &snap).unwrap_err().len(), 2);
        let big = pod(
            json!({"containers": [{"name": "c", "image": "i", "resources": {"requests": {"cpu": "2"}}}],
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]}),
        );
        assert_eq!(
            filter(&big, &nodes[0], &snap).unwrap_err(),
            vec!["Insufficient cpu"]
        );
        assert!(filter(&big, &nodes[1], &snap).is_ok());
        let msg = unschedulable_message(
            2,
            &[
                vec!["Insufficient cpu".into()],
                vec!["node(s) had untolerated taint {dedicated: gpu}".into()],
            ],
        );
        assert!(msg.starts_with("0/2 nodes are available: 1 Insufficient cpu, 1 node(s) had untolerated taint {dedicated: gpu}."), "{msg}");
    }

    #[test]
    fn anti_affinity_and_spread() {
        let nodes = vec![
            node("a", json!({"kubernetes.io/hostname": "a"}), json!([]), "4"),
            node("b", json!({"kubernetes.io/hostname": "b"}), json!([]), "4"),
        ];
        let mut other = pod(json!({"containers": [{"name": "c", "image": "i"}], "nodeName": "a"}));
        other.metadata.name = Some("o".into());
        let bound = vec![other];
        let snap = Snapshot::new(&nodes, bound);
        let p = pod(
            json!({"containers": [{"name": "c", "image": "i"}], "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": {"app": "a"}}}]}}}),
        );
        assert!(filter(&p, &nodes[0], &snap).is_err());
        assert!(filter(&p, &nodes[1], &snap).is_ok());
        let s = pod(
            json!({"containers": [{"name": "c", "image": "i"}], "topologySpreadConstraints": [
            {"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "a"}}}]}),
        );
        // a has 1, b has 0: a second on a would make skew 2.
        assert!(filter(&s, &nodes[0], &snap).is_err());
        assert!(filter(&s, &nodes[1], &snap).is_ok());
    }
}
