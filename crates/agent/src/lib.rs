//! mast's node agent (the kubelet's role): registers its Node, heartbeats
//! through a Lease, and runs the pods the scheduler binds to it.
//!
//! Two modes:
//! - the process runtime (default): each container is a supervised host
//!   process in its pod's namespaces and cgroups ([`pods`], [`sys`]), with
//!   logs and exec served over HTTPS to the API server ([`server`]);
//! - hollow (`--hollow`): like Kubernetes' kubemark, pods are reported
//!   running without running anything, so tests and benchmarks get many
//!   nodes on one machine. Hollow pods get no IP.

mod events;
pub mod pods;
mod portforward;
mod probe;
mod server;
pub mod services;
pub mod spdy;
pub mod spec;
pub mod sys;
mod volumes;

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
    /// Where pod state, volumes and logs live.
    pub data_dir: std::path::PathBuf,
    /// The node's address (InternalIP, pods' hostIP).
    pub node_ip: String,
    /// Pod IPs: a base address and how many follow it. Until pods get
    /// network namespaces, these are distinct loopback addresses.
    pub pod_ip_range: (u32, u32),
    /// Where the agent's HTTPS endpoint listens (port 0 picks one).
    pub listen: std::net::SocketAddr,
    /// The cluster CA (DER), which signs the API server's client certificate.
    pub ca_der: Vec<Vec<u8>>,
    /// A container's log is rotated at this size; one old file is kept.
    pub container_log_max_bytes: u64,
    /// Process limit per container cgroup.
    pub pod_max_pids: Option<u64>,
    /// How pods are networked.
    pub pod_network: PodNetwork,
    /// The Service CIDR, routed from pods through the node.
    pub service_cidr: (std::net::Ipv4Addr, u8),
    /// Every pod IP of the cluster; the service proxy masquerades traffic
    /// from elsewhere.
    pub cluster_cidr: (std::net::Ipv4Addr, u8),
    /// The cluster DNS domain.
    pub cluster_domain: String,
    /// The DNS server pods use (the kube-dns Service's ClusterIP); by
    /// default the tenth address of the Service range.
    pub cluster_dns: Option<std::net::Ipv4Addr>,
    /// NodePorts answer on the node's addresses in these blocks (all but
    /// loopback when empty).
    pub node_port_cidrs: Vec<(std::net::Ipv4Addr, u8)>,
    /// Where the Ingress controller listens (HTTP, HTTPS); `None` is off.
    pub ingress_http: Option<std::net::SocketAddr>,
    pub ingress_https: Option<std::net::SocketAddr>,
}

/// How pods are networked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodNetwork {
    /// The host's network; each pod gets a distinct loopback address from
    /// `pod_ip_range`.
    Loopback,
    /// A network namespace per pod, joined by a veth pair to this bridge;
    /// IPs from the Node's podCIDR. Needs root.
    Bridge(String),
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
            data_dir: std::path::PathBuf::from("/var/lib/mast/agent"),
            node_ip: "127.0.0.1".into(),
            pod_ip_range: (u32::from(std::net::Ipv4Addr::new(127, 1, 0, 0)), 1 << 16),
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 10250)),
            ca_der: vec![],
            container_log_max_bytes: 10 << 20,
            pod_max_pids: Some(4096),
            pod_network: PodNetwork::Loopback,
            service_cidr: (std::net::Ipv4Addr::new(10, 43, 0, 0), 16),
            cluster_cidr: (std::net::Ipv4Addr::new(10, 42, 0, 0), 16),
            cluster_domain: "cluster.local".into(),
            cluster_dns: None,
            node_port_cidrs: vec![],
            ingress_http: None,
            ingress_https: None,
        }
    }
}

/// This machine's CPUs, as a quantity.
pub fn machine_cpus() -> String {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .to_string()
}

/// This machine's memory (MemTotal), as a quantity in Ki.
pub fn machine_memory() -> String {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map(|kb| format!("{kb}Ki"))
        .unwrap_or_else(|| "8Gi".into())
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

fn node_status(cfg: &AgentConfig, port: u16) -> Value {
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
        "addresses": [{"type": "InternalIP", "address": cfg.node_ip}, {"type": "Hostname", "address": cfg.node_name}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": port}},
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

/// Create or refresh this agent's Node; true when it was created.
async fn register(client: &Client, cfg: &AgentConfig, port: u16) -> anyhow::Result<bool> {
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
        "status": node_status(cfg, port),
    }))?;
    match api.create(&PostParams::default(), &node).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => {
            api.patch_status(
                &cfg.node_name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": node_status(cfg, port)})),
            )
            .await?;
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
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
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let (runtime, port) = if cfg.hollow {
        (None, 0)
    } else {
        if !sys::privileged() {
            tracing::warn!("not running as root: pods run as plain processes without their own mount, pid and UTS namespaces, volumes are not mounted at their mountPath, and resource limits are not enforced");
        }
        let rt = pods::Runtime::new(client.clone(), cfg.clone())?;
        let port = server::start(rt.clone(), cfg.listen, &cfg.ca_der).await?;
        tracing::info!(port, "the agent serves logs and exec");
        (Some(rt), port)
    };
    if register(&client, &cfg, port).await? {
        tracing::info!(node = %cfg.node_name, "registered node");
    } else {
        tracing::info!(node = %cfg.node_name, "node already registered; refreshed its status");
    }
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
                if let Err(e) = register(&hb_client, &hb_cfg, port).await {
                    tracing::warn!(error = %e, "could not refresh the node status");
                }
            }
        }
    });
    match runtime {
        Some(rt) => run_pods(client, cfg, rt, shutdown).await,
        None => run_hollow(client, cfg, shutdown).await,
    }
}

fn pods_of_node(
    client: &Client,
    node: &str,
) -> impl futures::Stream<Item = Result<watcher::Event<Pod>, watcher::Error>> {
    let pods: Api<Pod> = Api::all(client.clone());
    let wc = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    watcher(pods, wc).default_backoff()
}

fn phase_of(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

/// The next item of a pod watch; `None` once the agent stops or the watch
/// ends. Failures are logged and the watch retries with back-off.
async fn next_or_stop<T>(
    stream: &mut (impl futures::Stream<Item = Result<T, watcher::Error>> + Unpin),
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
) -> Option<T> {
    loop {
        tokio::select! {
            _ = shutdown.changed() => return None,
            e = stream.next() => match e {
                Some(Ok(e)) => return Some(e),
                Some(Err(e)) => tracing::warn!(error = %e, "pod watch failed; retrying"),
                None => return None,
            },
        }
    }
}

/// The process runtime: one worker per pod.
async fn run_pods(
    client: Client,
    cfg: AgentConfig,
    rt: std::sync::Arc<pods::Runtime>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    use std::collections::{BTreeSet, HashMap};
    if let PodNetwork::Bridge(bridge) = &cfg.pod_network {
        if !sys::privileged() {
            anyhow::bail!("--pod-network bridge needs root (network namespaces, links); use --pod-network loopback");
        }
        let cidr = wait_for_pod_cidr(&client, &cfg.node_name, &mut shutdown).await?;
        let (gateway, prefix, base, size) = mast_net::plan(&cidr)?;
        mast_net::ensure_bridge(bridge, gateway, prefix).await?;
        std::fs::write(
            cfg.data_dir.join("network.json"),
            serde_json::to_vec(&json!({"bridge": bridge}))?,
        )?;
        rt.set_network(
            pods::BridgeNet {
                bridge: bridge.clone(),
                gateway,
                prefix,
            },
            (base, size),
        );
        tracing::info!(%bridge, %cidr, "pods get their own network namespaces on the bridge");
        let (client, cfg, bridge, serving, stop) = (
            client.clone(),
            cfg.clone(),
            bridge.clone(),
            rt.serving.clone(),
            shutdown.clone(),
        );
        tokio::spawn(async move {
            if let Err(e) = services::run(client, cfg, bridge, gateway, serving, stop).await {
                tracing::error!(error = %format!("{e:#}"), "the service proxy and cluster DNS stopped; Services will not answer on this node");
            }
        });
    }
    if cfg.ingress_http.is_some() || cfg.ingress_https.is_some() {
        let listen_ip = cfg
            .ingress_http
            .or(cfg.ingress_https)
            .map(|a| a.ip())
            .filter(|ip| !ip.is_unspecified());
        let status_address = listen_ip
            .or_else(|| cfg.node_ip.parse().ok())
            .unwrap_or(std::net::IpAddr::from([127, 0, 0, 1]));
        let ic = mast_ingress::IngressConfig {
            http: cfg.ingress_http,
            https: cfg.ingress_https,
            status_address,
        };
        let (client, stop) = (client.clone(), shutdown.clone());
        tokio::spawn(async move {
            if let Err(e) = mast_ingress::run(client, ic, stop).await {
                tracing::error!(error = %format!("{e:#}"), "the Ingress controller stopped; Ingresses are not served on this node");
            }
        });
    }
    let mut stream = std::pin::pin!(pods_of_node(&client, &cfg.node_name));
    let mut workers: HashMap<String, tokio::sync::watch::Sender<Option<Pod>>> = HashMap::new();
    let mut listed: BTreeSet<String> = BTreeSet::new();
    let mut first_list = true;
    while let Some(ev) = next_or_stop(&mut stream, &mut shutdown).await {
        match ev {
            watcher::Event::Init => listed.clear(),
            watcher::Event::InitApply(pod) | watcher::Event::Apply(pod) => {
                let uid = pod.uid().unwrap_or_default();
                listed.insert(uid.clone());
                if let Some(tx) = workers.get(&uid) {
                    tx.send_replace(Some(pod));
                    continue;
                }
                let phase = phase_of(&pod);
                let known = rt.root.join(&uid).exists();
                if (phase == "Succeeded" || phase == "Failed") && !known {
                    continue;
                }
                workers.insert(uid, rt.spawn_worker(pod));
            }
            watcher::Event::InitDone => {
                // Pods missing from the fresh list are gone.
                workers.retain(|uid, tx| {
                    let keep = listed.contains(uid);
                    if !keep {
                        tx.send_replace(None);
                    }
                    keep
                });
                if first_list {
                    first_list = false;
                    rt.clean_orphans(&listed).await;
                }
            }
            watcher::Event::Delete(pod) => {
                if let Some(tx) = workers.remove(&pod.uid().unwrap_or_default()) {
                    tx.send_replace(None);
                }
            }
        }
        workers.retain(|_, tx| !tx.is_closed());
    }
    Ok(())
}

/// The podCIDR the controllers give this node (node IPAM).
async fn wait_for_pod_cidr(
    client: &Client,
    node: &str,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<String> {
    let api: Api<Node> = Api::all(client.clone());
    let mut said = false;
    loop {
        if let Some(c) = api.get(node).await.ok().and_then(|n| n.spec?.pod_cidr) {
            return Ok(c);
        }
        if !said {
            tracing::info!("waiting for the controllers to give this node a pod CIDR (node IPAM)");
            said = true;
        }
        tokio::select! {
            _ = shutdown.changed() => anyhow::bail!("stopped while waiting for a pod CIDR"),
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// Hollow mode: report every pod running, run nothing.
async fn run_hollow(
    client: Client,
    cfg: AgentConfig,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut stream = std::pin::pin!(pods_of_node(&client, &cfg.node_name).applied_objects());
    while let Some(pod) = next_or_stop(&mut stream, &mut shutdown).await {
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
        let phase = phase_of(&pod);
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
    Ok(())
}
