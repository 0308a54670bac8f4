//! mast's node agent (the kubelet's role): registers its Node, heartbeats
//! through a Lease, and runs the pods the scheduler binds to it.
//!
//! Only the hollow mode exists so far: like Kubernetes' kubemark, a hollow
//! agent reports the pods bound to it as running without running anything,
//! so tests and benchmarks get many nodes on one machine. Hollow pods get no
//! IP, so no Service ever routes traffic to them. The process runtime is the
//! next step of this crate.

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, ResourceExt};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

/// How an agent describes its node.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub node_name: String,
    pub hollow: bool,
    pub cpu: String,
    pub memory: String,
    pub max_pods: u32,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Value>,
    /// How often the Lease is renewed.
    pub heartbeat: Duration,
}

impl AgentConfig {
    pub fn new(node_name: impl Into<String>) -> Self {
        Self {
            node_name: node_name.into(),
            hollow: false,
            cpu: "4".into(),
            memory: "8Gi".into(),
            max_pods: 110,
            labels: BTreeMap::new(),
            taints: vec![],
            heartbeat: Duration::from_secs(10),
        }
    }
}

/// A node taint as the Node spec holds it.
pub fn taint(key: &str, value: &str, effect: &str) -> Value {
    let mut t = json!({"key": key, "effect": effect});
    if !value.is_empty() {
        t["value"] = json!(value);
    }
    t
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn node_status(cfg: &AgentConfig) -> Value {
    let t = now();
    let cond = |ty: &str, status: &str, reason: &str, msg: &str| json!({"type": ty, "status": status, "reason": reason, "message": msg, "lastHeartbeatTime": t, "lastTransitionTime": t});
    let resources = json!({"cpu": cfg.cpu, "memory": cfg.memory, "pods": cfg.max_pods.to_string(), "ephemeral-storage": "100Gi"});
    json!({
        "capacity": resources, "allocatable": resources,
        "conditions": [
            cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
            cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
            cond("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
            cond("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
        ],
        "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": cfg.node_name}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
        "nodeInfo": {
            "machineID": "", "systemUUID": "", "bootID": "",
            "kernelVersion": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
            "osImage": if cfg.hollow { "hollow node" } else { "Linux" },
            "containerRuntimeVersion": if cfg.hollow { "hollow://0.1" } else { "process://0.1" },
            "kubeletVersion": mast_version(), "kubeProxyVersion": mast_version(),
            "operatingSystem": "linux", "architecture": if cfg!(target_arch = "aarch64") { "arm64" } else { "amd64" },
        },
    })
}

fn mast_version() -> String {
    format!("v1.33.0-mast.{}", env!("CARGO_PKG_VERSION"))
}

/// Create or refresh this agent's Node.
async fn register(client: &Client, cfg: &AgentConfig) -> anyhow::Result<()> {
    let api: Api<Node> = Api::all(client.clone());
    let mut labels = cfg.labels.clone();
    labels.insert("kubernetes.io/hostname".into(), cfg.node_name.clone());
    labels.insert("kubernetes.io/os".into(), "linux".into());
    labels.insert(
        "kubernetes.io/arch".into(),
        if cfg!(target_arch = "aarch64") {
            "arm64"
        } else {
            "amd64"
        }
        .into(),
    );
    if cfg.hollow {
        labels.insert("mast.dev/hollow".into(), "true".into());
    }
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": cfg.node_name, "labels": labels},
        "spec": {"taints": if cfg.taints.is_empty() { Value::Null } else { json!(cfg.taints) }},
        "status": node_status(cfg),
    }))?;
    match api.create(&PostParams::default(), &node).await {
        Ok(_) => tracing::info!(node = %cfg.node_name, "registered node"),
        Err(kube::Error::Api(e)) if e.code == 409 => {
            api.patch_status(
                &cfg.node_name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": node_status(cfg)})),
            )
            .await?;
            tracing::info!(node = %cfg.node_name, "node already registered; refreshed its status");
        }
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

async fn renew_lease(client: &Client, cfg: &AgentConfig) -> anyhow::Result<()> {
    let api: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let patch = json!({"spec": {"holderIdentity": cfg.node_name, "leaseDurationSeconds": 40, "renewTime": now}});
    match api
        .patch(
            &cfg.node_name,
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => {
            let lease: Lease = serde_json::from_value(
                json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": cfg.node_name, "namespace": "kube-node-lease"}, "spec": patch["spec"]}),
            )?;
            api.create(&PostParams::default(), &lease).await?;
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// The status a hollow node reports for a pod: running and ready.
fn hollow_running_status(pod: &Pod) -> Value {
    let t = now();
    let cond = |ty: &str| json!({"type": ty, "status": "True", "lastProbeTime": null, "lastTransitionTime": t});
    let statuses: Vec<Value> = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .map(|c| json!({"name": c.name, "image": c.image, "imageID": "", "containerID": format!("hollow://{}/{}", pod.uid().unwrap_or_default(), c.name),
            "ready": true, "started": true, "restartCount": 0, "state": {"running": {"startedAt": t}}}))
        .collect();
    json!({"status": {"phase": "Running", "hostIP": "127.0.0.1", "startTime": t,
        "conditions": [cond("PodReadyToStartContainers"), cond("Initialized"), cond("Ready"), cond("ContainersReady"), cond("PodScheduled")],
        "containerStatuses": statuses}})
}

/// Run the agent until `shutdown` turns true.
pub async fn run(
    client: Client,
    cfg: AgentConfig,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    if !cfg.hollow {
        anyhow::bail!(
            "only hollow agents exist so far: pass --hollow (the process runtime is the next step)"
        );
    }
    register(&client, &cfg).await?;
    let hb_client = client.clone();
    let hb_cfg = cfg.clone();
    let mut hb_shutdown = shutdown.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(hb_cfg.heartbeat);
        let mut since_status = 0u32;
        loop {
            tokio::select! {
                _ = hb_shutdown.changed() => return,
                _ = tick.tick() => {}
            }
            if let Err(e) = renew_lease(&hb_client, &hb_cfg).await {
                tracing::warn!(error = %e, "could not renew the node lease");
            }
            since_status += 1;
            if since_status >= 6 {
                since_status = 0;
                if let Err(e) = register(&hb_client, &hb_cfg).await {
                    tracing::warn!(error = %e, "could not refresh the node status");
                }
            }
        }
    });
    let pods: Api<Pod> = Api::all(client.clone());
    let wc = watcher::Config::default().fields(&format!("spec.nodeName={}", cfg.node_name));
    let mut stream = std::pin::pin!(watcher(pods, wc).default_backoff().applied_objects());
    loop {
        let pod = tokio::select! {
            _ = shutdown.changed() => return Ok(()),
            p = stream.next() => match p {
                Some(Ok(p)) => p,
                Some(Err(e)) => { tracing::warn!(error = %e, "pod watch failed; retrying"); continue; }
                None => return Ok(()),
            },
        };
        let ns = pod.namespace().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
        if pod.metadata.deletion_timestamp.is_some() {
            // Nothing runs, so termination is immediate: finish the delete.
            let dp = DeleteParams {
                grace_period_seconds: Some(0),
                ..Default::default()
            };
            if let Err(e) = api.delete(&pod.name_any(), &dp).await {
                tracing::debug!(pod = %pod.name_any(), error = %e, "final delete failed");
            }
            continue;
        }
        let phase = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_default();
        let has_statuses = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .is_some_and(|c| !c.is_empty());
        if phase == "Pending" || !has_statuses {
            if let Err(e) = api
                .patch_status(
                    &pod.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(hollow_running_status(&pod)),
                )
                .await
            {
                tracing::debug!(pod = %pod.name_any(), error = %e, "status update failed");
            }
        }
    }
}
