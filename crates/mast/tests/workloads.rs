//! End-to-end: Deployments, ReplicaSets and scheduling, with the real kubectl
//! against `mast server`, `mast scheduler`, `mast controllers` and hollow
//! `mast agent`s as separate processes talking only through the API.

mod common;

use common::*;

fn count(out: &str, needle: &str) -> usize {
    out.lines().filter(|l| l.contains(needle)).count()
}

/// `kubectl get pods -l SELECTOR -o wide --no-headers`.
fn pods_wide(c: &Cluster, selector: &str) -> String {
    c.ok(&["get", "pods", "-l", selector, "-o", "wide", "--no-headers"])
}

fn running(c: &Cluster, selector: &str) -> usize {
    count(
        &c.ok(&["get", "pods", "-l", selector, "--no-headers"]),
        " Running ",
    )
}

#[test]
fn deployments_roll_out_scale_roll_back_and_replace_pods() {
    let c = Cluster::start();
    let _sched = c.component(&["scheduler"]);
    let _ctrl = c.component(&["controllers"]);
    let _agents: Vec<Background> = (1..=3)
        .map(|i| c.component(&["agent", "--hollow", "--node-name", &format!("node-{i}")]))
        .collect();
    assert!(
        eventually(30, || count(
            &c.ok(&["get", "nodes", "--no-headers"]),
            " Ready "
        ) == 3),
        "three nodes register"
    );

    c.ok(&[
        "create",
        "deployment",
        "web",
        "--image=nginx:1.25",
        "--replicas=3",
    ]);
    c.ok(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    assert_eq!(running(&c, "app=web"), 3);
    let ready = c.ok(&["get", "deploy", "web", "--no-headers"]);
    assert!(ready.split_whitespace().nth(1) == Some("3/3"), "{ready}");
    // Replicas spread over the nodes.
    let wide = pods_wide(&c, "app=web");
    for n in ["node-1", "node-2", "node-3"] {
        assert_eq!(count(&wide, n), 1, "{wide}");
    }

    // A deleted pod is replaced.
    let victim = c.ok(&[
        "get",
        "pods",
        "-l",
        "app=web",
        "-o",
        "jsonpath={.items[0].metadata.name}",
    ]);
    c.ok(&["delete", "pod", &victim]);
    assert!(eventually(30, || running(&c, "app=web") == 3
        && !c.ok(&["get", "pods", "-o", "name"]).contains(&victim)));

    // Scaling 3 → 10 → 2.
    c.ok(&["scale", "deployment", "web", "--replicas=10"]);
    assert!(eventually(30, || running(&c, "app=web") == 10));
    c.ok(&["scale", "deployment", "web", "--replicas=2"]);
    assert!(eventually(30, || c
        .ok(&["get", "pods", "-l", "app=web", "--no-headers"])
        .lines()
        .count()
        == 2));

    // An image change rolls out; history and undo work as with Kubernetes.
    c.ok(&["scale", "deployment", "web", "--replicas=3"]);
    c.ok(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    c.ok(&["set", "image", "deployment/web", "nginx=nginx:1.26"]);
    c.ok(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    let images = c.ok(&[
        "get",
        "pods",
        "-l",
        "app=web",
        "-o",
        "jsonpath={.items[*].spec.containers[0].image}",
    ]);
    assert_eq!(
        images
            .split_whitespace()
            .filter(|i| *i == "nginx:1.26")
            .count(),
        3,
        "{images}"
    );
    let history = c.ok(&["rollout", "history", "deployment/web"]);
    assert!(
        history.contains("1 ") && history.contains("2 "),
        "{history}"
    );
    c.ok(&["rollout", "undo", "deployment/web"]);
    c.ok(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    assert_eq!(
        c.ok(&[
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image}"
        ]),
        "nginx:1.25"
    );
    assert!(eventually(30, || {
        let imgs = c.ok(&[
            "get",
            "pods",
            "-l",
            "app=web",
            "-o",
            "jsonpath={.items[*].spec.containers[0].image}",
        ]);
        imgs.split_whitespace().count() == 3 && imgs.split_whitespace().all(|i| i == "nginx:1.25")
    }));
    // Two ReplicaSets: the undo reused the first one.
    assert_eq!(
        c.ok(&["get", "rs", "-l", "app=web", "--no-headers"])
            .lines()
            .count(),
        2
    );
}

#[test]
fn scheduling_rules_place_pods_as_kubernetes_would() {
    let c = Cluster::start();
    let _sched = c.component(&["scheduler"]);
    let _ctrl = c.component(&["controllers"]);
    let _a = c.component(&[
        "agent",
        "--hollow",
        "--node-name",
        "ssd",
        "--node-labels",
        "disk=ssd",
    ]);
    let _b = c.component(&[
        "agent",
        "--hollow",
        "--node-name",
        "gpu",
        "--register-with-taints",
        "dedicated=gpu:NoSchedule",
    ]);
    // One real node (the process runtime) beside two hollow ones.
    let _d = c.agent("plain", &["--cpu", "2"]);
    assert!(eventually(30, || count(
        &c.ok(&["get", "nodes", "--no-headers"]),
        " Ready "
    ) == 3));
    let node_of = |pod: &str| c.ok(&["get", "pod", pod, "-o", "jsonpath={.spec.nodeName}"]);
    // Node IPAM: each node gets its own slice of the cluster CIDR.
    assert!(
        eventually(20, || {
            let cidrs = c.ok(&["get", "nodes", "-o", "jsonpath={.items[*].spec.podCIDR}"]);
            let mut v: Vec<&str> = cidrs.split_whitespace().collect();
            v.sort();
            v.dedup();
            v.len() == 3
                && v.iter()
                    .all(|c| c.starts_with("10.42.") && c.ends_with(".0/24"))
        }),
        "{}",
        c.ok(&["get", "nodes", "-o", "jsonpath={.items[*].spec.podCIDR}"])
    );

    // nodeSelector
    c.apply("apiVersion: v1\nkind: Pod\nmetadata: {name: wants-ssd}\nspec:\n  nodeSelector: {disk: ssd}\n  containers: [{name: c, image: busybox, args: [sleep, '3600']}]\n");
    assert!(eventually(20, || node_of("wants-ssd") == "ssd"));
    // A taint keeps pods without a toleration away; a toleration lets one in.
    c.ok(&[
        "create",
        "deployment",
        "many",
        "--image=busybox",
        "--replicas=6",
        "--",
        "sleep",
        "3600",
    ]);
    c.ok(&["rollout", "status", "deployment/many", "--timeout=60s"]);
    let wide = pods_wide(&c, "app=many");
    assert_eq!(count(&wide, " gpu "), 0, "{wide}");
    c.apply("apiVersion: v1\nkind: Pod\nmetadata: {name: tolerates}\nspec:\n  nodeSelector: {kubernetes.io/hostname: gpu}\n  tolerations: [{key: dedicated, operator: Equal, value: gpu, effect: NoSchedule}]\n  containers: [{name: c, image: busybox, args: [sleep, '3600']}]\n");
    assert!(eventually(20, || node_of("tolerates") == "gpu"));
    // Required anti-affinity: one per host; with two untainted hosts the
    // third replica cannot be placed.
    c.apply(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {name: solo}
spec:
  replicas: 3
  selector: {matchLabels: {app: solo}}
  template:
    metadata: {labels: {app: solo}}
    spec:
      affinity:
        podAntiAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
          - topologyKey: kubernetes.io/hostname
            labelSelector: {matchLabels: {app: solo}}
      containers: [{name: c, image: busybox, args: [sleep, '3600']}]
"#,
    );
    assert!(eventually(30, || running(&c, "app=solo") == 2));
    let solo = pods_wide(&c, "app=solo");
    assert!(
        count(&solo, " ssd ") == 1 && count(&solo, " plain ") == 1,
        "{solo}"
    );
    let pending = c.ok(&[
        "get",
        "pods",
        "-l",
        "app=solo",
        "--field-selector",
        "status.phase=Pending",
        "-o",
        "name",
    ]);
    let pending = pending.trim().trim_start_matches("pod/").to_owned();
    assert!(!pending.is_empty());
    assert!(eventually(20, || c
        .ok(&["describe", "pod", &pending])
        .contains("didn't match pod anti-affinity rules")));
    // Topology spread over all three hosts (tolerating the taint).
    c.apply(r#"apiVersion: apps/v1
kind: Deployment
metadata: {name: spread}
spec:
  replicas: 6
  selector: {matchLabels: {app: spread}}
  template:
    metadata: {labels: {app: spread}}
    spec:
      tolerations: [{key: dedicated, operator: Exists}]
      topologySpreadConstraints:
      - {maxSkew: 1, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: DoNotSchedule, labelSelector: {matchLabels: {app: spread}}}
      containers: [{name: c, image: busybox, args: [sleep, '3600']}]
"#,
    );
    assert!(eventually(30, || running(&c, "app=spread") == 6));
    let spread = pods_wide(&c, "app=spread");
    for n in [" ssd ", " gpu ", " plain "] {
        assert_eq!(count(&spread, n), 2, "{spread}");
    }
    // A pod that fits nowhere stays Pending with kube-scheduler's reason.
    c.apply("apiVersion: v1\nkind: Pod\nmetadata: {name: huge}\nspec:\n  containers: [{name: c, image: busybox, resources: {requests: {cpu: \"64\"}}}]\n");
    assert!(eventually(20, || {
        let d = c.ok(&["describe", "pod", "huge"]);
        d.contains("FailedScheduling")
            && d.contains("0/3 nodes are available")
            && d.contains("Insufficient cpu")
    }));
    let cond = c.ok(&[
        "get",
        "pod",
        "huge",
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"PodScheduled\")].reason}",
    ]);
    assert_eq!(cond, "Unschedulable");
}

#[test]
fn deletes_cascade_through_owner_references() {
    let c = Cluster::start();
    let _sched = c.component(&["scheduler"]);
    let _ctrl = c.component(&["controllers"]);
    let _agent = c.component(&["agent", "--hollow", "--node-name", "n1"]);
    for d in ["bg", "orph", "fg"] {
        c.ok(&["create", "deployment", d, "--image=nginx", "--replicas=2"]);
    }
    for d in ["bg", "orph", "fg"] {
        c.ok(&[
            "rollout",
            "status",
            &format!("deployment/{d}"),
            "--timeout=60s",
        ]);
    }
    // Background (kubectl's default): the ReplicaSet and its pods follow.
    c.ok(&["delete", "deployment", "bg"]);
    assert!(eventually(30, || c
        .ok(&["get", "rs,pods", "-l", "app=bg", "-o", "name"])
        .is_empty()));
    // Orphan: the ReplicaSet and pods stay, released from their owner.
    c.ok(&["delete", "deployment", "orph", "--cascade=orphan"]);
    assert!(eventually(30, || !c
        .kubectl(&["get", "deploy", "orph"])
        .success));
    assert_eq!(
        c.ok(&[
            "get",
            "rs",
            "-l",
            "app=orph",
            "-o",
            "jsonpath={.items[0].metadata.ownerReferences}"
        ]),
        ""
    );
    assert_eq!(
        c.ok(&["get", "pods", "-l", "app=orph", "--no-headers"])
            .lines()
            .count(),
        2
    );
    // Foreground: dependents go first, then the owner.
    c.ok(&[
        "delete",
        "deployment",
        "fg",
        "--cascade=foreground",
        "--timeout=60s",
    ]);
    assert!(c
        .ok(&["get", "rs,pods", "-l", "app=fg", "-o", "name"])
        .is_empty());
}

#[test]
fn a_silent_node_goes_not_ready_and_its_pods_move() {
    let c = Cluster::start();
    let _sched = c.component(&["scheduler"]);
    let _ctrl = c.component(&["controllers", "--node-monitor-grace-period", "3s"]);
    let fast = ["--node-lease-duration-seconds", "4"];
    let mut agents: Vec<Option<Background>> = (1..=3)
        .map(|i| {
            Some(
                c.component(
                    &[
                        &["agent", "--hollow", "--node-name", &format!("node-{i}")][..],
                        &fast[..],
                    ]
                    .concat(),
                ),
            )
        })
        .collect();
    assert!(eventually(30, || count(
        &c.ok(&["get", "nodes", "--no-headers"]),
        " Ready "
    ) == 3));
    c.apply(r#"apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      tolerations:
      - {key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 2}
      containers: [{name: c, image: nginx}]
"#);
    c.ok(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    assert_eq!(
        count(
            &c.ok(&["get", "pods", "-o", "wide", "--no-headers"]),
            " node-1 "
        ),
        1
    );

    // Stop node-1's agent: the node turns NotReady and gets the taints.
    agents[0] = None;
    assert!(eventually(30, || c
        .ok(&["get", "node", "node-1", "--no-headers"])
        .contains("NotReady")));
    let taints = c.ok(&[
        "get",
        "node",
        "node-1",
        "-o",
        "jsonpath={.spec.taints[*].key}",
    ]);
    assert!(
        taints.contains("node.kubernetes.io/unreachable"),
        "{taints}"
    );
    // Its pod is evicted (left Terminating, as on Kubernetes, since no agent
    // confirms it) and replaced on the other nodes.
    assert!(eventually(60, || {
        let wide = pods_wide(&c, "app=web");
        wide.lines()
            .filter(|l| l.contains(" Running ") && !l.contains(" node-1 "))
            .count()
            == 3
    }));
    // A node that comes back is Ready again, without the taints.
    agents[0] = Some(
        c.component(
            &[
                &["agent", "--hollow", "--node-name", "node-1"][..],
                &fast[..],
            ]
            .concat(),
        ),
    );
    assert!(eventually(30, || {
        c.ok(&["get", "node", "node-1", "--no-headers"])
            .contains(" Ready ")
            && c.ok(&["get", "node", "node-1", "-o", "jsonpath={.spec.taints}"])
                .is_empty()
    }));
}
