//! The process runtime's pod workers: one task per pod that drives its
//! sandbox, volumes, init and app containers towards the spec, restarts
//! what exits with the kubelet's back-off, runs probes and hooks, reports
//! status, and tears everything down when the pod is deleted.
//!
//! Containers run under `mast shim` (see [`crate::sys`]), so they outlive
//! the agent. Everything a restarted agent needs to adopt them is in the
//! pod's directory: `state.json`, and per container instance `spec.json`,
//! `pid.json` and `exit.json`.

use crate::probe::{self, Action, Target};
use crate::spec::{self, ImageRef, PodFacts};
use crate::sys::{self, ExitRecord, ProcId};
use crate::{events, volumes, AgentConfig};
use k8s_openapi::api::core::v1::{Container, Pod, Probe, Service};
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::{Client, ResourceExt};
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

const BACKOFF_START: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// How often ConfigMap, Secret and downwardAPI volumes are rewritten.
const VOLUME_REFRESH: Duration = Duration::from_secs(10);

/// The next address of `range` after `last` that is not `used`, wrapping
/// round, as CNI's host-local IPAM allocates: a freed IP is reused last,
/// so connections and caches that still name its previous pod have long
/// expired. The range's first address when all are taken.
fn next_free_ip(used: &BTreeSet<u32>, last: u32, range: std::ops::Range<u32>) -> u32 {
    let start = if range.contains(&last.wrapping_add(1)) {
        last + 1
    } else {
        range.start
    };
    (start..range.end)
        .chain(range.start..start)
        .find(|n| !used.contains(n))
        .unwrap_or(range.start)
}

/// State shared by all pod workers and the agent's HTTPS server.
pub struct Runtime {
    pub client: Client,
    pub cfg: AgentConfig,
    pub root: PathBuf,
    pub exe: PathBuf,
    pub privileged: bool,
    /// Pod IPs in use, and the last one handed out.
    ips: Mutex<(BTreeSet<u32>, u32)>,
    /// Where pod IPs come from: (base, size).
    range: Mutex<(u32, u32)>,
    /// The bridge network, when pods get their own network namespaces.
    net: std::sync::OnceLock<BridgeNet>,
    /// Running pods by `namespace/name`, for logs and exec.
    pub pods: Mutex<HashMap<String, Arc<PodShared>>>,
    /// The pod IPs this node's service rules send traffic to.
    pub serving: watch::Sender<Arc<std::collections::HashSet<std::net::Ipv4Addr>>>,
}

/// The node's pod bridge.
#[derive(Debug, Clone)]
pub struct BridgeNet {
    pub bridge: String,
    pub gateway: std::net::Ipv4Addr,
    pub prefix: u8,
}

/// What the HTTPS server needs to know about a pod.
#[derive(Debug, Default)]
pub struct PodShared {
    pub uid: String,
    pub dir: PathBuf,
    /// The pod's IP, where port-forwards connect.
    pub ip: Mutex<String>,
    pub containers: Mutex<BTreeMap<String, ContainerShared>>,
}

#[derive(Debug, Clone, Default)]
pub struct ContainerShared {
    pub pid: Option<ProcId>,
    pub restart_count: u32,
    pub init: bool,
}

impl PodShared {
    pub fn log_path(&self, container: &str, restart: u32) -> PathBuf {
        log_path(&self.dir, container, restart)
    }
}

fn log_path(dir: &Path, container: &str, restart: u32) -> PathBuf {
    dir.join("logs")
        .join(container)
        .join(format!("{restart}.log"))
}

/// How a container instance ended.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Term {
    exit_code: i32,
    signal: Option<i32>,
    reason: String,
    message: Option<String>,
    started_at: String,
    finished_at: String,
    container_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Instance {
    id: String,
    started_at: String,
    dir: PathBuf,
    pid: Option<ProcId>,
    cgroups: Vec<PathBuf>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct CtrRecord {
    restart_count: u32,
    /// The current instance, while it runs.
    running: Option<Instance>,
    /// How the latest instance ended.
    term: Option<Term>,
    /// How the one before ended (`lastState` while a new one runs).
    prev: Option<Term>,
}

/// What survives an agent restart, in `<pod dir>/state.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct PodRecord {
    sandbox: Option<ProcId>,
    ip: String,
    start_time: String,
    mountpoints: Vec<PathBuf>,
    containers: BTreeMap<String, CtrRecord>,
    finished: bool,
}

/// What lives only in memory.
#[derive(Default)]
struct CtrMem {
    waiting: Option<(String, String)>,
    next_start: Option<Instant>,
    backoff: Duration,
    ready: bool,
    started: bool,
    probes: Vec<tokio::task::AbortHandle>,
    killing: bool,
}

enum Ev {
    Exited {
        name: String,
        id: String,
        rec: ExitRecord,
    },
    Probe {
        name: String,
        id: String,
        kind: &'static str,
        ok: bool,
        msg: String,
    },
}

impl Runtime {
    pub fn new(client: Client, cfg: AgentConfig) -> anyhow::Result<Arc<Self>> {
        let root = cfg.data_dir.join("pods");
        std::fs::create_dir_all(&root)?;
        let exe = std::env::current_exe()?;
        let cfg_range = cfg.pod_ip_range;
        Ok(Arc::new(Self {
            client,
            privileged: sys::privileged(),
            cfg,
            root,
            exe,
            ips: Mutex::new((BTreeSet::new(), 0)),
            range: Mutex::new(cfg_range),
            net: std::sync::OnceLock::new(),
            pods: Mutex::new(HashMap::new()),
            serving: watch::channel(Arc::default()).0,
        }))
    }

    /// Wait (at most `bound`) until this node's Service rules no longer
    /// send new connections to `ip`: the endpoints controller marks a
    /// terminating pod not ready, the proxy drops it, and only then does
    /// the pod get SIGTERM, so no request meets a closing server.
    /// Whether it left in time.
    pub async fn leave_rotation(&self, ip: &str, bound: Duration) -> bool {
        let Ok(ip) = ip.parse::<std::net::Ipv4Addr>() else {
            return true;
        };
        let mut rx = self.serving.subscribe();
        let left = tokio::time::timeout(bound, rx.wait_for(|s| !s.contains(&ip))).await;
        left.is_ok()
    }

    /// Pods get their own network namespaces on `net`, with IPs from `range`.
    pub fn set_network(&self, net: BridgeNet, range: (u32, u32)) {
        *self.range.lock().unwrap_or_else(|e| e.into_inner()) = range;
        let _ = self.net.set(net);
    }

    fn alloc_ip(&self, want: Option<&str>) -> String {
        let (base, size) = *self.range.lock().unwrap_or_else(|e| e.into_inner());
        let mut ips = self.ips.lock().unwrap_or_else(|e| e.into_inner());
        let (used, last) = &mut *ips;
        // A pod keeps the IP it has (it may predate a change of range).
        if let Some(ip) = want.and_then(|w| w.parse::<std::net::Ipv4Addr>().ok()) {
            if used.insert(u32::from(ip)) {
                return ip.to_string();
            }
        }
        let n = next_free_ip(used, *last, base + 2..base + size - 1);
        used.insert(n);
        *last = n;
        std::net::Ipv4Addr::from(n).to_string()
    }

    fn release_ip(&self, ip: &str) {
        if let Ok(ip) = ip.parse::<std::net::Ipv4Addr>() {
            self.ips
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .0
                .remove(&u32::from(ip));
        }
    }

    /// Pod directories with no pod behind them: left by pods deleted while
    /// the agent was down. Kill what runs there and remove them.
    pub async fn clean_orphans(self: &Arc<Self>, known_uids: &BTreeSet<String>) {
        let Ok(rd) = std::fs::read_dir(&self.root) else {
            return;
        };
        for e in rd.flatten() {
            let uid = e.file_name().to_string_lossy().into_owned();
            if known_uids.contains(&uid) {
                continue;
            }
            tracing::info!(uid, "cleaning up a pod that no longer exists");
            let rec = load_record(&e.path()).unwrap_or_default();
            let mut w = Worker::bare(self.clone(), uid, e.path(), rec);
            w.teardown(Duration::from_secs(2)).await;
        }
    }

    /// Start the worker of a pod, or hand it the pod's new version.
    ///
    /// Sending `None` tells the worker its pod is gone from the API: it
    /// stops the pod's containers and removes it from the machine. Dropping
    /// the sender instead (the agent stopping) leaves everything running
    /// for the next agent to adopt.
    pub fn spawn_worker(self: &Arc<Self>, pod: Pod) -> watch::Sender<Option<Pod>> {
        let (tx, rx) = watch::channel(Some(pod));
        let rt = self.clone();
        tokio::spawn(async move { Worker::run(rt, rx).await });
        tx
    }
}

fn load_record(dir: &Path) -> Option<PodRecord> {
    serde_json::from_slice(&std::fs::read(dir.join("state.json")).ok()?).ok()
}

fn restart_policy(pod: &Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        .unwrap_or("Always")
}

/// Whether a container that exited with `code` runs again under the pod's
/// restartPolicy.
/// The traffic capture an injected pod (one with Istio's
/// `sidecar.istio.io/status`) needs, from its `traffic.sidecar.istio.io/*`
/// annotations.
fn capture_for(pod: &Pod) -> Option<mast_net::capture::Capture> {
    use mast_api::istio::inject;
    let a = pod.metadata.annotations.as_ref()?;
    a.get(inject::STATUS_ANNOTATION)?;
    let list = |key: &str| -> Vec<String> {
        a.get(&format!("traffic.sidecar.istio.io/{key}"))
            .map(|v| {
                v.split(',')
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    };
    let ports = |key: &str| list(key).iter().filter_map(|p| p.parse().ok()).collect();
    Some(mast_net::capture::Capture {
        proxy_uid: inject::PROXY_UID as u32,
        exclude_inbound_ports: ports("excludeInboundPorts"),
        exclude_outbound_ports: ports("excludeOutboundPorts"),
        exclude_outbound_cidrs: list("excludeOutboundIPRanges"),
    })
}

/// A Kubernetes sidecar: an init container with `restartPolicy: Always`.
fn is_sidecar(c: &Container) -> bool {
    c.restart_policy.as_deref() == Some("Always")
}

fn restarts_after(policy: &str, code: i32) -> bool {
    match policy {
        "Never" => false,
        "OnFailure" => code != 0,
        _ => true,
    }
}

fn rand_id() -> String {
    use rand::Rng;
    let mut r = rand::rng();
    (0..32)
        .map(|_| format!("{:x}", r.random_range(0..16u8)))
        .collect()
}

struct Worker {
    rt: Arc<Runtime>,
    uid: String,
    dir: PathBuf,
    rec: PodRecord,
    mem: HashMap<String, CtrMem>,
    volumes: Option<volumes::VolumePaths>,
    /// When the ConfigMap/Secret/downwardAPI volumes were last rewritten.
    volumes_at: Instant,
    shared: Arc<PodShared>,
    tx: mpsc::UnboundedSender<Ev>,
    rx: mpsc::UnboundedReceiver<Ev>,
    last_status: Value,
    sandbox_ready: bool,
    pod_key: String,
}

impl Worker {
    fn bare(rt: Arc<Runtime>, uid: String, dir: PathBuf, rec: PodRecord) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Self {
            rt,
            shared: Arc::new(PodShared {
                uid: uid.clone(),
                dir: dir.clone(),
                ..Default::default()
            }),
            uid,
            dir,
            rec,
            mem: HashMap::new(),
            volumes: None,
            volumes_at: Instant::now(),
            tx,
            rx,
            last_status: Value::Null,
            sandbox_ready: false,
            pod_key: String::new(),
        }
    }

    async fn run(rt: Arc<Runtime>, mut pods: watch::Receiver<Option<Pod>>) {
        let Some(mut pod) = pods.borrow().clone() else {
            return;
        };
        let uid = pod.uid().unwrap_or_default();
        let dir = rt.root.join(&uid);
        let adopted = load_record(&dir);
        let mut w = Worker::bare(rt.clone(), uid, dir, adopted.clone().unwrap_or_default());
        w.pod_key = format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any());
        rt.pods
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(w.pod_key.clone(), w.shared.clone());
        let _ = std::fs::create_dir_all(&w.dir);
        let host_network = pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false);
        w.rec.ip = if host_network {
            rt.cfg.node_ip.clone()
        } else {
            rt.alloc_ip(Some(&w.rec.ip))
        };
        *w.shared.ip.lock().unwrap_or_else(|e| e.into_inner()) = w.rec.ip.clone();
        if w.rec.start_time.is_empty() {
            w.rec.start_time = sys::now_rfc3339();
        }
        if adopted.is_some() {
            w.adopt(&pod);
        }
        loop {
            let Some(next) = pods.borrow_and_update().clone() else {
                // The pod is gone from the API (force-deleted).
                w.kill_all(&pod, Duration::from_secs(2), true).await;
                w.teardown(Duration::from_secs(2)).await;
                w.forget();
                return;
            };
            pod = next;
            if pod.metadata.deletion_timestamp.is_some() {
                let grace = pod
                    .metadata
                    .deletion_grace_period_seconds
                    .or_else(|| {
                        pod.spec
                            .as_ref()
                            .and_then(|s| s.termination_grace_period_seconds)
                    })
                    .unwrap_or(30)
                    .max(0) as u64;
                let t0 = tokio::time::Instant::now();
                let left = rt
                    .leave_rotation(&w.rec.ip, Duration::from_secs(grace.min(10)))
                    .await;
                tracing::debug!(pod = %w.pod_key, ip = %w.rec.ip, left, waited_ms = t0.elapsed().as_millis() as u64, "terminating: out of the Service rules; stopping the containers");
                w.kill_all(&pod, Duration::from_secs(grace), true).await;
                tracing::debug!(pod = %w.pod_key, "terminating: containers stopped; removing the sandbox");
                w.teardown(Duration::from_secs(2)).await;
                w.forget();
                let api: Api<Pod> =
                    Api::namespaced(rt.client.clone(), &pod.namespace().unwrap_or_default());
                let dp = DeleteParams {
                    grace_period_seconds: Some(0),
                    preconditions: Some(Preconditions {
                        uid: Some(w.uid.clone()),
                        resource_version: None,
                    }),
                    ..Default::default()
                };
                if let Err(e) = api.delete(&pod.name_any(), &dp).await {
                    tracing::debug!(pod = %w.pod_key, error = %e, "final delete failed");
                }
                return;
            }
            let wake = w.sync(&pod).await;
            w.publish(&pod).await;
            let sleep = wake
                .map(|d| d.min(VOLUME_REFRESH))
                .unwrap_or(VOLUME_REFRESH);
            tokio::select! {
                changed = pods.changed() => {
                    if changed.is_err() {
                        // The agent is stopping; the pod runs on.
                        return;
                    }
                }
                Some(ev) = w.rx.recv() => w.handle(&pod, ev).await,
                _ = tokio::time::sleep(sleep) => {}
            }
            while let Ok(ev) = w.rx.try_recv() {
                w.handle(&pod, ev).await;
            }
        }
    }

    fn forget(&self) {
        let mut pods = self.rt.pods.lock().unwrap_or_else(|e| e.into_inner());
        if pods.get(&self.pod_key).is_some_and(|p| p.uid == self.uid) {
            pods.remove(&self.pod_key);
        }
    }

    fn save(&self) {
        if let Ok(b) = serde_json::to_vec(&self.rec) {
            let tmp = self.dir.join("state.json.tmp");
            if std::fs::write(&tmp, b).is_ok() {
                let _ = std::fs::rename(tmp, self.dir.join("state.json"));
            }
        }
        let mut cs = self
            .shared
            .containers
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for (name, c) in &self.rec.containers {
            let e = cs.entry(name.clone()).or_default();
            e.pid = c.running.as_ref().and_then(|r| r.pid);
            e.restart_count = c.restart_count;
        }
    }

    /// Pick up what a previous agent left running.
    fn adopt(&mut self, pod: &Pod) {
        if let Some(sb) = self.rec.sandbox {
            self.sandbox_ready = sb.alive();
        }
        let names: Vec<String> = self.rec.containers.keys().cloned().collect();
        for name in names {
            let Some(inst) = self.rec.containers[&name].running.clone() else {
                continue;
            };
            let exited = std::fs::read(sys::exit_path(&inst.dir))
                .ok()
                .and_then(|b| serde_json::from_slice::<ExitRecord>(&b).ok());
            let alive = inst.pid.is_some_and(|p| p.alive());
            tracing::info!(pod = %self.pod_key, container = %name, alive, "adopting a container from a previous agent");
            match exited {
                Some(rec) => {
                    let _ = self.tx.send(Ev::Exited {
                        name,
                        id: inst.id,
                        rec,
                    });
                }
                None if alive => {
                    self.mem.entry(name.clone()).or_default().started = true;
                    self.watch_adopted(name.clone(), inst.clone());
                    if let Some(c) = find_container(pod, &name) {
                        self.start_probes(&c, &inst);
                    }
                }
                None => {
                    let _ = self.tx.send(Ev::Exited {
                        name,
                        id: inst.id,
                        rec: ExitRecord {
                            exit_code: 137,
                            signal: None,
                            reason: Some("ContainerStatusUnknown".into()),
                            message: Some(
                                "The container could not be located when the agent restarted"
                                    .into(),
                            ),
                            finished_at: sys::now_rfc3339(),
                        },
                    });
                }
            }
        }
        self.save();
    }

    fn watch_adopted(&self, name: String, inst: Instance) {
        let tx = self.tx.clone();
        tokio::spawn(async move {
            while inst.pid.is_some_and(|p| p.alive()) && !sys::exit_path(&inst.dir).exists() {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            // The shim writes exit.json right after the container ends.
            for _ in 0..40 {
                if sys::exit_path(&inst.dir).exists() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let rec = read_exit(&inst.dir);
            let _ = tx.send(Ev::Exited {
                name,
                id: inst.id,
                rec,
            });
        });
    }

    async fn event(&self, pod: &Pod, ty: &str, reason: &str, msg: &str) {
        events::record(
            &self.rt.client,
            pod,
            &self.rt.cfg.node_name,
            ty,
            reason,
            msg,
        )
        .await;
    }

    fn facts(&self) -> PodFacts {
        PodFacts {
            pod_ip: self.rec.ip.clone(),
            host_ip: self.rt.cfg.node_ip.clone(),
            node_cpu: self.rt.cfg.cpu.clone(),
            node_memory: self.rt.cfg.memory.clone(),
        }
    }

    /// One pass towards the spec. Returns when it wants to run again.
    async fn sync(&mut self, pod: &Pod) -> Option<Duration> {
        if self.rec.finished {
            return None;
        }
        let spec = pod.spec.clone().unwrap_or_default();
        if self.rt.privileged && !self.sandbox_ready {
            if let Err(e) = self.create_sandbox(pod).await {
                self.event(
                    pod,
                    "Warning",
                    "FailedCreatePodSandBox",
                    &format!("Failed to create pod sandbox: {e}"),
                )
                .await;
                return Some(Duration::from_secs(5));
            }
        }
        self.sandbox_ready = true;
        if self.volumes.is_some() && self.volumes_at.elapsed() >= VOLUME_REFRESH {
            // Running containers see ConfigMap and Secret changes, as on
            // Kubernetes; if an object went away, the old files stay.
            self.volumes_at = Instant::now();
            let dir = self.dir.join("volumes");
            if let Err(e) = volumes::prepare(&self.rt.client, pod, &dir, &self.facts()).await {
                tracing::debug!(pod = %self.pod_key, error = %e, "volume refresh failed");
            }
        }
        if self.volumes.is_none() {
            self.volumes_at = Instant::now();
            match volumes::prepare(
                &self.rt.client,
                pod,
                &self.dir.join("volumes"),
                &self.facts(),
            )
            .await
            {
                Ok(v) => self.volumes = Some(v),
                Err(e) => {
                    self.event(pod, "Warning", "FailedMount", &e).await;
                    return Some(Duration::from_secs(5));
                }
            }
        }
        let policy = restart_policy(pod).to_owned();
        let now = Instant::now();
        let mut wake: Option<Duration> = None;
        let mut want = |d: Duration| wake = Some(wake.map_or(d, |w: Duration| w.min(d)));
        // Init containers, one at a time, each to success. A sidecar (an
        // init container with `restartPolicy: Always`) is started in its
        // turn, and the next one waits until it has started (its startup
        // probe passed); it then runs, restarted whenever it ends, until
        // the app containers are done.
        for c in spec.init_containers.iter().flatten() {
            let r = self.record(&c.name);
            if is_sidecar(c) {
                if r.running.is_some() {
                    if self.mem.get(&c.name).is_some_and(|m| m.started) {
                        continue;
                    }
                    return wake.or(Some(Duration::from_millis(100)));
                }
                if let Some(d) = self.due(&c.name, now) {
                    want(d);
                    return wake;
                }
                self.start(pod, c, true).await;
                return wake.or(Some(Duration::from_millis(100)));
            }
            if r.running.is_some() {
                return wake;
            }
            match &r.term {
                Some(t) if t.exit_code == 0 => continue,
                Some(_) if policy == "Never" => {
                    self.finish(pod).await;
                    return None;
                }
                _ => {}
            }
            if let Some(d) = self.due(&c.name, now) {
                want(d);
                return wake;
            }
            self.start(pod, c, true).await;
            return wake.or(Some(Duration::from_millis(100)));
        }
        for c in &spec.containers {
            let r = self.record(&c.name);
            if r.running.is_some() {
                continue;
            }
            if r.term
                .as_ref()
                .is_some_and(|t| !restarts_after(&policy, t.exit_code))
            {
                continue;
            }
            if let Some(d) = self.due(&c.name, now) {
                want(d);
                continue;
            }
            self.start(pod, c, false).await;
        }
        let all_done = spec.containers.iter().all(|c| {
            self.rec.containers.get(&c.name).is_some_and(|r| {
                r.running.is_none()
                    && r.term
                        .as_ref()
                        .is_some_and(|t| !restarts_after(&policy, t.exit_code))
            })
        });
        if all_done {
            self.finish(pod).await;
        }
        wake
    }

    /// What is known of a container (empty if it never ran).
    fn record(&self, name: &str) -> CtrRecord {
        self.rec.containers.get(name).cloned().unwrap_or_default()
    }

    /// How long until a container may start again, if it must wait.
    fn due(&mut self, name: &str, now: Instant) -> Option<Duration> {
        let m = self.mem.entry(name.to_owned()).or_default();
        match m.next_start {
            Some(t) if t > now => Some(t - now),
            _ => None,
        }
    }

    /// The pod reached Succeeded or Failed: stop the sandbox, keep the logs.
    async fn finish(&mut self, pod: &Pod) {
        self.rec.finished = true;
        // What still runs is sidecars: they get SIGTERM and their grace
        // period, as the kubelet stops them once the app containers end.
        let grace = pod
            .spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds)
            .unwrap_or(30)
            .max(0) as u64;
        self.kill_all(pod, Duration::from_secs(grace), false).await;
        if let Some(sb) = self.rec.sandbox.take() {
            sb.signal(Signal::SIGKILL);
        }
        self.save();
    }

    async fn create_sandbox(&mut self, pod: &Pod) -> Result<(), String> {
        if self.rec.sandbox.is_some_and(|s| s.alive()) {
            return Ok(());
        }
        let pid_file = self.dir.join("sandbox.json");
        let _ = std::fs::remove_file(&pid_file);
        let hostname = pod
            .spec
            .as_ref()
            .and_then(|s| s.hostname.clone())
            .unwrap_or_else(|| pod.name_any());
        let hostname: String = hostname.chars().take(63).collect();
        let host_network = pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false);
        let bridge = self.rt.net.get().filter(|_| !host_network).cloned();
        let mut cmd = tokio::process::Command::new(&self.rt.exe);
        cmd.arg("pause");
        if bridge.is_some() {
            cmd.arg("--net");
        }
        let out = cmd
            .arg(format!("--hostname={hostname}"))
            .arg("--pid-file")
            .arg(&pid_file)
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .map_err(|e| format!("running mast pause: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
        }
        let id: ProcId =
            serde_json::from_slice(&std::fs::read(&pid_file).map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
        if let Some(net) = bridge {
            let ip: std::net::Ipv4Addr = self
                .rec
                .ip
                .parse()
                .map_err(|_| format!("bad pod IP {:?}", self.rec.ip))?;
            let a = mast_net::Attachment {
                bridge: net.bridge.clone(),
                host_if: host_if(&self.uid),
                ip,
                prefix: net.prefix,
                gateway: net.gateway,
                routes: vec![self.rt.cfg.service_cidr],
            };
            if let Err(e) = mast_net::attach(id.pid, &a).await {
                id.signal(Signal::SIGKILL);
                return Err(format!("setting up the pod's network: {e:#}"));
            }
            if let Some(c) = capture_for(pod) {
                if let Err(e) = c.install(id.pid).await {
                    id.signal(Signal::SIGKILL);
                    return Err(format!("setting up the sidecar's traffic capture: {e:#}"));
                }
            }
        }
        self.rec.sandbox = Some(id);
        self.save();
        Ok(())
    }

    /// `/etc/resolv.conf` and `/etc/hosts` for the pod's containers, as
    /// the kubelet writes them, unless a container mounts its own.
    fn network_files(
        &self,
        pod: &Pod,
        mounts: &[sys::BindMount],
    ) -> Result<Vec<sys::BindMount>, String> {
        let host_network = pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false);
        let net = self.rt.net.get();
        let domain = &self.rt.cfg.cluster_domain;
        let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let mut files = vec![];
        let dns = net.map(|_| crate::services::cluster_dns(&self.rt.cfg));
        if let Some(text) = spec::resolv_conf(pod, dns, domain, &host) {
            files.push(("resolv.conf", text));
        }
        if net.is_some() && !host_network {
            files.push(("hosts", spec::hosts_file(pod, &self.rec.ip, domain)));
        }
        let mut out = vec![];
        for (name, text) in files {
            let target = Path::new("/etc").join(name);
            if mounts.iter().any(|m| m.target == target) {
                continue;
            }
            let source = self.dir.join(name);
            std::fs::write(&source, text)
                .map_err(|e| format!("writing {}: {e}", source.display()))?;
            out.push(sys::BindMount {
                source,
                target,
                read_only: false,
            });
        }
        Ok(out)
    }

    fn cgroups_for(&self, c: &Container, id: &str) -> Vec<PathBuf> {
        if !self.rt.privileged {
            return vec![];
        }
        let mut dirs = vec![];
        let limits = spec::cgroup_limits(c, self.rt.cfg.pod_max_pids);
        for ctrl in ["memory", "cpu", "pids"] {
            let d = Path::new("/sys/fs/cgroup")
                .join(ctrl)
                .join("mast")
                .join(&self.uid)
                .join(format!("{}-{}", c.name, &id[..12]));
            if std::fs::create_dir_all(&d).is_err() {
                continue;
            }
            for (_, file, v) in limits.iter().filter(|(k, _, _)| *k == ctrl) {
                if let Err(e) = std::fs::write(d.join(file), v) {
                    tracing::warn!(file, value = %v, error = %e, "could not set a cgroup limit");
                }
            }
            dirs.push(d);
        }
        dirs
    }

    async fn fetch_sources(&self, pod: &Pod, c: &Container) -> spec::Sources {
        let ns = pod.namespace().unwrap_or_default();
        let mut out = spec::Sources::new();
        for (kind, name) in spec::env_sources(c) {
            if out.contains_key(&(kind, name.clone())) {
                continue;
            }
            let data = if kind == "configmap" {
                volumes::configmap(&self.rt.client, &ns, &name).await
            } else {
                volumes::secret(&self.rt.client, &ns, &name).await
            };
            // An object that cannot be read counts as missing: the error
            // names it, and the start is retried with back-off.
            let data = data.ok().flatten().map(|m| {
                m.into_iter()
                    .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
                    .collect::<BTreeMap<String, String>>()
            });
            out.insert((kind, name), data);
        }
        out
    }

    /// The Services whose variables a container gets, as the kubelet picks
    /// them: those of the pod's namespace (unless `enableServiceLinks` is
    /// false) and the `kubernetes` Service of `default`, sorted by name.
    async fn services_for(&self, pod: &Pod) -> Vec<Service> {
        let ns = pod.namespace().unwrap_or_default();
        let links = pod
            .spec
            .as_ref()
            .and_then(|s| s.enable_service_links)
            .unwrap_or(true);
        let mut out = vec![];
        if links {
            if let Ok(l) = Api::<Service>::namespaced(self.rt.client.clone(), &ns)
                .list(&Default::default())
                .await
            {
                out.extend(l.items);
            }
        }
        if ns != "default" || !links {
            if let Ok(Some(k)) = Api::<Service>::namespaced(self.rt.client.clone(), "default")
                .get_opt("kubernetes")
                .await
            {
                out.push(k);
            }
        }
        out.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        out
    }

    /// Back off a container that failed to start or exited.
    fn back_off(&mut self, name: &str, reason: &str, msg: String) {
        let m = self.mem.entry(name.to_owned()).or_default();
        m.backoff = if m.backoff.is_zero() {
            BACKOFF_START
        } else {
            (m.backoff * 2).min(BACKOFF_MAX)
        };
        m.next_start = Some(Instant::now() + m.backoff);
        m.waiting = Some((reason.to_owned(), msg));
    }

    async fn start(&mut self, pod: &Pod, c: &Container, init: bool) {
        let name = c.name.clone();
        let path_env = c
            .env
            .iter()
            .flatten()
            .find(|e| e.name == "PATH")
            .and_then(|e| e.value.clone())
            .unwrap_or_else(|| spec::DEFAULT_PATH.into());
        let mut applets = None;
        let entry = match spec::resolve_image(&c.image.clone().unwrap_or_default(), &path_env) {
            Ok(ImageRef::Builtin(n)) => {
                vec![self.rt.exe.display().to_string(), "image".into(), n.into()]
            }
            Ok(ImageRef::Program(p)) => {
                applets = spec::applet_dir(&self.rt.cfg.data_dir, &p, &self.rt.exe);
                vec![p.display().to_string()]
            }
            Err(msg) => {
                let first = !self.mem.get(&name).is_some_and(|m| {
                    m.waiting
                        .as_ref()
                        .is_some_and(|w| w.0 == "ImagePullBackOff" || w.0 == "ErrImagePull")
                });
                self.event(pod, "Warning", "Failed", &msg).await;
                self.event(pod, "Warning", "Failed", "Error: ErrImagePull")
                    .await;
                self.back_off(
                    &name,
                    "ImagePullBackOff",
                    format!(
                        "Back-off pulling image {:?}: {msg}",
                        c.image.clone().unwrap_or_default()
                    ),
                );
                if first {
                    if let Some(m) = self.mem.get_mut(&name) {
                        m.waiting = Some(("ErrImagePull".into(), msg));
                    }
                }
                return;
            }
        };
        let sources = self.fetch_sources(pod, c).await;
        let path = match applets {
            Some(dir) => format!("{}:{}", spec::DEFAULT_PATH, dir.display()),
            None => spec::DEFAULT_PATH.to_owned(),
        };
        let mut base = vec![
            ("PATH".to_owned(), path),
            (
                "HOSTNAME".to_owned(),
                pod.spec
                    .as_ref()
                    .and_then(|s| s.hostname.clone())
                    .unwrap_or_else(|| pod.name_any()),
            ),
            ("HOME".to_owned(), "/root".to_owned()),
            ("POD_IP".to_owned(), self.rec.ip.clone()),
        ];
        if c.tty.unwrap_or(false) {
            base.push(("TERM".into(), "xterm".into()));
        }
        base.extend(spec::service_env(&self.services_for(pod).await));
        let env = match spec::build_env(pod, c, base, &sources, &self.facts()) {
            Ok(e) => e,
            Err(msg) => {
                self.event(pod, "Warning", "Failed", &format!("Error: {msg}"))
                    .await;
                self.back_off(&name, "CreateContainerConfigError", msg);
                return;
            }
        };
        let env_map: HashMap<String, String> = env.iter().cloned().collect();
        let argv = spec::argv(entry, c, &env_map);
        let mounts = if self.rt.privileged {
            match volumes::container_mounts(c, self.volumes.as_ref().unwrap_or(&HashMap::new()))
                .and_then(|m| {
                    let created = volumes::ensure_mountpoints(&m)?;
                    self.rec.mountpoints.extend(created);
                    Ok(m)
                })
                .and_then(|mut m| {
                    m.extend(self.network_files(pod, &m)?);
                    Ok(m)
                }) {
                Ok(m) => m,
                Err(msg) => {
                    self.event(pod, "Warning", "Failed", &format!("Error: {msg}"))
                        .await;
                    self.back_off(&name, "CreateContainerConfigError", msg);
                    return;
                }
            }
        } else {
            vec![]
        };
        let id = rand_id();
        let rec = self.rec.containers.entry(name.clone()).or_default();
        let restart = if rec.term.is_some() {
            rec.restart_count + 1
        } else {
            rec.restart_count
        };
        // Keep the logs of this run and the one before (`--previous`) only,
        // however often a container crashes.
        if let Some(old) = restart.checked_sub(2) {
            let p = log_path(&self.dir, &name, old);
            let _ = std::fs::remove_file(sys::rotated(&p));
            let _ = std::fs::remove_file(p);
        }
        let inst_dir = self.dir.join("c").join(&name).join(&id[..12]);
        let cgroups = self.cgroups_for(c, &id);
        let sc = c.security_context.as_ref();
        let psc = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
        let spec = sys::ContainerSpec {
            argv,
            env,
            cwd: c.working_dir.clone(),
            sandbox_pid: self.rec.sandbox.map(|s| s.pid),
            mounts,
            cgroups: cgroups.clone(),
            log_path: log_path(&self.dir, &name, restart),
            log_max_bytes: self.rt.cfg.container_log_max_bytes,
            tty: c.tty.unwrap_or(false),
            run_as_user: sc
                .and_then(|s| s.run_as_user)
                .or(psc.and_then(|s| s.run_as_user))
                .and_then(|u| u32::try_from(u).ok()),
            run_as_group: sc
                .and_then(|s| s.run_as_group)
                .or(psc.and_then(|s| s.run_as_group))
                .and_then(|u| u32::try_from(u).ok()),
        };
        let _ = std::fs::create_dir_all(&inst_dir);
        if let Err(e) = serde_json::to_vec(&spec)
            .map_err(std::io::Error::other)
            .and_then(|b| std::fs::write(sys::spec_path(&inst_dir), b))
        {
            tracing::error!(error = %e, "cannot write the container spec");
            self.back_off(&name, "CreateContainerError", e.to_string());
            return;
        }
        let image = c.image.clone().unwrap_or_default();
        self.event(
            pod,
            "Normal",
            "Pulled",
            &format!("Container image {image:?} already present on machine"),
        )
        .await;
        let shim_log = std::fs::File::create(inst_dir.join("shim.log")).ok();
        let mut cmd = tokio::process::Command::new(&self.rt.exe);
        cmd.arg("shim")
            .arg(&inst_dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null());
        match shim_log {
            Some(f) => cmd.stderr(f),
            None => cmd.stderr(std::process::Stdio::null()),
        };
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                self.back_off(
                    &name,
                    "CreateContainerError",
                    format!("starting mast shim: {e}"),
                );
                return;
            }
        };
        // The shim reports the container's pid, or how it failed to start.
        let mut pid = None;
        for i in 0..2500u32 {
            if let Some(p) = std::fs::read(sys::pid_path(&inst_dir))
                .ok()
                .and_then(|b| serde_json::from_slice::<ProcId>(&b).ok())
            {
                pid = Some(p);
                break;
            }
            if sys::exit_path(&inst_dir).exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(if i < 100 { 1 } else { 5 })).await;
        }
        let started_at = sys::now_rfc3339();
        let rec = self.rec.containers.entry(name.clone()).or_default();
        if rec.term.is_some() {
            rec.restart_count += 1;
            rec.prev = rec.term.take();
        }
        let inst = Instance {
            id: id.clone(),
            started_at,
            dir: inst_dir.clone(),
            pid,
            cgroups,
        };
        rec.running = Some(inst.clone());
        {
            let m = self.mem.entry(name.clone()).or_default();
            m.waiting = None;
            m.ready = false;
            m.started = c.startup_probe.is_none();
            m.killing = false;
        }
        self.shared
            .containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(name.clone())
            .or_default()
            .init = init;
        self.save();
        let tx = self.tx.clone();
        let (wname, wid, wdir) = (name.clone(), id.clone(), inst_dir.clone());
        tokio::spawn(async move {
            let mut child = child;
            let _ = child.wait().await;
            let rec = read_exit(&wdir);
            let _ = tx.send(Ev::Exited {
                name: wname,
                id: wid,
                rec,
            });
        });
        if pid.is_some() {
            self.event(
                pod,
                "Normal",
                "Created",
                &format!("Created container: {name}"),
            )
            .await;
            self.event(
                pod,
                "Normal",
                "Started",
                &format!("Started container {name}"),
            )
            .await;
            if let Some(h) = c.lifecycle.as_ref().and_then(|l| l.post_start.as_ref()) {
                let action = Action::from_parts(
                    h.http_get.as_ref(),
                    h.tcp_socket.as_ref(),
                    h.exec.as_ref(),
                    false,
                );
                if let Some(a) = action {
                    let t = Target {
                        pod_ip: &self.rec.ip,
                        container: c,
                        pid: pid.map(|p| p.pid),
                        exe: &self.rt.exe,
                    };
                    if let Err(msg) = probe::run(&a, &t, Duration::from_secs(30)).await {
                        self.event(
                            pod,
                            "Warning",
                            "FailedPostStartHook",
                            &format!("PostStartHook failed: {msg}"),
                        )
                        .await;
                        if let Some(p) = pid {
                            p.signal(Signal::SIGKILL);
                        }
                    }
                }
            }
            self.start_probes(c, &inst);
        }
    }

    /// Start a container's probes: the startup probe alone while it has
    /// not passed, then liveness and readiness.
    fn start_probes(&mut self, c: &Container, inst: &Instance) {
        let m = self.mem.entry(c.name.clone()).or_default();
        for h in m.probes.drain(..) {
            h.abort();
        }
        let startup_phase = c.startup_probe.is_some() && !m.started;
        let mut handles = vec![];
        for (kind, p) in [
            ("Startup", &c.startup_probe),
            ("Liveness", &c.liveness_probe),
            ("Readiness", &c.readiness_probe),
        ] {
            if (kind == "Startup") != startup_phase {
                continue;
            }
            let Some(p) = p.clone() else { continue };
            let Some(action) = Action::from_parts(
                p.http_get.as_ref(),
                p.tcp_socket.as_ref(),
                p.exec.as_ref(),
                p.grpc.is_some(),
            ) else {
                continue;
            };
            let ctx = ProbeCtx {
                kind,
                action,
                probe: p,
                container: c.clone(),
                pod_ip: self.rec.ip.clone(),
                pid: inst.pid.map(|p| p.pid),
                exe: self.rt.exe.clone(),
                tx: self.tx.clone(),
                name: c.name.clone(),
                id: inst.id.clone(),
            };
            handles.push(tokio::spawn(ctx.run()).abort_handle());
        }
        m.probes = handles;
    }

    async fn handle(&mut self, pod: &Pod, ev: Ev) {
        match ev {
            Ev::Exited { name, id, rec } => {
                let Some(r) = self.rec.containers.get_mut(&name) else {
                    return;
                };
                let Some(inst) = r.running.take().filter(|i| i.id == id) else {
                    return;
                };
                let reason = rec.reason.clone().unwrap_or_else(|| {
                    if rec.exit_code == 0 {
                        "Completed".into()
                    } else {
                        "Error".into()
                    }
                });
                r.term = Some(Term {
                    exit_code: rec.exit_code,
                    signal: rec.signal,
                    reason,
                    message: rec.message.clone(),
                    started_at: inst.started_at.clone(),
                    finished_at: rec.finished_at.clone(),
                    container_id: format!("process://{}", inst.id),
                });
                for cg in inst.cgroups.iter().rev() {
                    let _ = std::fs::remove_dir(cg);
                }
                // How it ended is in state.json now; the instance's files can go.
                let _ = std::fs::remove_dir_all(&inst.dir);
                let ran_long = chrono::DateTime::parse_from_rfc3339(&inst.started_at)
                    .map(|s| {
                        chrono::Utc::now().signed_duration_since(s).num_seconds()
                            > 2 * BACKOFF_MAX.as_secs() as i64
                    })
                    .unwrap_or(false);
                let restarts = find_container(pod, &name).is_some_and(|c| is_sidecar(&c))
                    || restarts_after(restart_policy(pod), rec.exit_code);
                let m = self.mem.entry(name.clone()).or_default();
                for h in m.probes.drain(..) {
                    h.abort();
                }
                m.ready = false;
                if ran_long {
                    m.backoff = Duration::ZERO;
                }
                let killing = std::mem::take(&mut m.killing);
                if restarts && !self.rec.finished {
                    if m.backoff.is_zero()
                        && !killing
                        && rec.reason.as_deref() != Some("StartError")
                    {
                        // The first restart is immediate; back-off starts after it.
                        m.backoff = Duration::from_millis(1);
                        m.next_start = None;
                    } else {
                        m.backoff = if m.backoff <= Duration::from_millis(1) {
                            BACKOFF_START
                        } else {
                            (m.backoff * 2).min(BACKOFF_MAX)
                        };
                        m.next_start = Some(Instant::now() + m.backoff);
                        let uid = &self.uid;
                        m.waiting = Some((
                            "CrashLoopBackOff".into(),
                            format!(
                                "back-off {}s restarting failed container={name} pod={}_{}({uid})",
                                m.backoff.as_secs(),
                                pod.name_any(),
                                pod.namespace().unwrap_or_default()
                            ),
                        ));
                        let msg = format!(
                            "Back-off restarting failed container {name} in pod {}_{}({uid})",
                            pod.name_any(),
                            pod.namespace().unwrap_or_default()
                        );
                        self.save();
                        self.event(pod, "Warning", "BackOff", &msg).await;
                        return;
                    }
                }
                self.save();
            }
            Ev::Probe {
                name,
                id,
                kind,
                ok,
                msg,
            } => {
                let current = self
                    .rec
                    .containers
                    .get(&name)
                    .and_then(|r| r.running.clone())
                    .filter(|i| i.id == id);
                let Some(inst) = current else { return };
                let m = self.mem.entry(name.clone()).or_default();
                match (kind, ok) {
                    ("Readiness", ok) => m.ready = ok,
                    ("Startup", true) => {
                        m.started = true;
                        if let Some(c) = find_container(pod, &name) {
                            self.start_probes(&c, &inst);
                        }
                    }
                    (_, true) => {}
                    (k, false) => {
                        if k == "Readiness" {
                            return;
                        }
                        m.killing = true;
                        let msg2 = format!(
                            "Container {name} failed {} probe, will be restarted",
                            k.to_lowercase()
                        );
                        self.event(
                            pod,
                            "Warning",
                            "Unhealthy",
                            &format!("{k} probe failed: {msg}"),
                        )
                        .await;
                        self.event(pod, "Normal", "Killing", &msg2).await;
                        let grace = pod
                            .spec
                            .as_ref()
                            .and_then(|s| s.termination_grace_period_seconds)
                            .unwrap_or(30)
                            .max(0) as u64;
                        self.stop_instance(pod, &name, &inst, Duration::from_secs(grace))
                            .await;
                        return;
                    }
                }
                if !ok && kind == "Readiness" {
                    self.event(
                        pod,
                        "Warning",
                        "Unhealthy",
                        &format!("Readiness probe failed: {msg}"),
                    )
                    .await;
                }
            }
        }
    }

    /// preStop, SIGTERM, then SIGKILL after the grace period.
    async fn stop_instance(&self, pod: &Pod, name: &str, inst: &Instance, grace: Duration) {
        let Some(pid) = inst.pid else { return };
        let deadline = Instant::now() + grace;
        if !grace.is_zero() {
            if let Some(c) = find_container(pod, name) {
                if let Some(h) = c.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref()) {
                    if let Some(a) = Action::from_parts(
                        h.http_get.as_ref(),
                        h.tcp_socket.as_ref(),
                        h.exec.as_ref(),
                        false,
                    ) {
                        let t = Target {
                            pod_ip: &self.rec.ip,
                            container: &c,
                            pid: Some(pid.pid),
                            exe: &self.rt.exe,
                        };
                        if let Err(msg) = probe::run(&a, &t, grace).await {
                            self.event(
                                pod,
                                "Warning",
                                "FailedPreStopHook",
                                &format!("PreStopHook failed: {msg}"),
                            )
                            .await;
                        }
                    }
                }
            }
            pid.signal(Signal::SIGTERM);
            while pid.alive() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        if pid.alive() {
            pid.signal(Signal::SIGKILL);
        }
        sys::kill_cgroup(&inst.cgroups);
    }

    async fn kill_all(&mut self, pod: &Pod, grace: Duration, announce: bool) {
        let running: Vec<(String, Instance)> = self
            .rec
            .containers
            .iter()
            .filter_map(|(n, r)| r.running.clone().map(|i| (n.clone(), i)))
            .collect();
        for m in self.mem.values_mut() {
            for h in m.probes.drain(..) {
                h.abort();
            }
        }
        if announce {
            for (name, _) in &running {
                self.event(
                    pod,
                    "Normal",
                    "Killing",
                    &format!("Stopping container {name}"),
                )
                .await;
            }
        }
        // App containers stop first; sidecars after them, in reverse order,
        // within what is left of the grace period (as the kubelet does).
        let deadline = Instant::now() + grace;
        let sidecars: Vec<String> = pod
            .spec
            .iter()
            .flat_map(|s| s.init_containers.iter().flatten())
            .filter(|c| is_sidecar(c))
            .map(|c| c.name.clone())
            .collect();
        let this = &*self;
        futures::future::join_all(
            running
                .iter()
                .filter(|(n, _)| !sidecars.contains(n))
                .map(|(n, i)| this.stop_instance(pod, n, i, grace)),
        )
        .await;
        for name in sidecars.iter().rev() {
            if let Some((n, i)) = running.iter().find(|(n, _)| n == name) {
                let left = deadline.saturating_duration_since(Instant::now());
                this.stop_instance(pod, n, i, left.max(Duration::from_secs(1)).min(grace))
                    .await;
            }
        }
        // Record how they ended.
        for (name, inst) in running {
            for _ in 0..100 {
                if sys::exit_path(&inst.dir).exists() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let rec = read_exit(&inst.dir);
            self.handle(
                pod,
                Ev::Exited {
                    name,
                    id: inst.id,
                    rec,
                },
            )
            .await;
        }
    }

    /// Remove the pod from the machine: sandbox, cgroups, mount points,
    /// network link, IP and files.
    async fn teardown(&mut self, _grace: Duration) {
        for r in self.rec.containers.values() {
            if let Some(i) = &r.running {
                if let Some(p) = i.pid {
                    p.signal(Signal::SIGKILL);
                }
                sys::kill_cgroup(&i.cgroups);
            }
        }
        if let Some(sb) = self.rec.sandbox.take() {
            sb.signal(Signal::SIGKILL);
            for _ in 0..100 {
                if !sb.alive() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        for ctrl in ["memory", "cpu", "pids"] {
            let pod_cg = Path::new("/sys/fs/cgroup")
                .join(ctrl)
                .join("mast")
                .join(&self.uid);
            if let Ok(rd) = std::fs::read_dir(&pod_cg) {
                for e in rd.flatten().filter(|e| e.path().is_dir()) {
                    sys::kill_cgroup(&[e.path()]);
                    for _ in 0..50 {
                        if std::fs::remove_dir(e.path()).is_ok() {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            let _ = std::fs::remove_dir(&pod_cg);
        }
        volumes::remove_mountpoints(&self.rec.mountpoints);
        remove_link(&self.uid).await;
        self.rt.release_ip(&self.rec.ip);
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %self.dir.display(), error = %e, "could not remove the pod's directory");
            }
        }
    }

    /// Report status to the API server when it changed.
    async fn publish(&mut self, pod: &Pod) {
        let status = self.status(pod);
        if status == self.last_status {
            return;
        }
        let api: Api<Pod> =
            Api::namespaced(self.rt.client.clone(), &pod.namespace().unwrap_or_default());
        match api
            .patch_status(
                &pod.name_any(),
                &PatchParams::default(),
                &Patch::Merge(json!({"status": status})),
            )
            .await
        {
            Ok(_) => self.last_status = status,
            Err(e) => tracing::debug!(pod = %self.pod_key, error = %e, "status update failed"),
        }
    }

    fn container_status(&self, c: &Container, init_pending: bool) -> Value {
        let r = self.record(&c.name);
        let m = self.mem.get(&c.name);
        let term_json = |t: &Term| {
            let mut v = json!({"exitCode": t.exit_code, "reason": t.reason, "startedAt": t.started_at, "finishedAt": t.finished_at, "containerID": t.container_id});
            if let Some(s) = t.signal {
                v["signal"] = json!(s);
            }
            if let Some(msg) = &t.message {
                v["message"] = json!(msg);
            }
            v
        };
        let (state, last) = if let Some(i) = &r.running {
            (
                json!({"running": {"startedAt": i.started_at}}),
                r.prev.as_ref().map(term_json),
            )
        } else if let Some((reason, msg)) = m.and_then(|m| m.waiting.clone()) {
            (
                json!({"waiting": {"reason": reason, "message": msg}}),
                r.term.as_ref().map(term_json),
            )
        } else if let Some(t) = &r.term {
            (
                json!({"terminated": term_json(t)}),
                r.prev.as_ref().map(term_json),
            )
        } else {
            let reason = if init_pending {
                "PodInitializing"
            } else {
                "ContainerCreating"
            };
            (json!({"waiting": {"reason": reason}}), None)
        };
        let running = r.running.is_some();
        let started = running && m.is_some_and(|m| m.started);
        let ready = started && (c.readiness_probe.is_none() || m.is_some_and(|m| m.ready));
        let mut v = json!({"name": c.name, "image": c.image, "imageID": "", "ready": ready, "restartCount": r.restart_count,
            "started": started, "state": state, "lastState": last.map(|t| json!({"terminated": t})).unwrap_or(json!({}))});
        if let Some(i) = &r.running {
            v["containerID"] = json!(format!("process://{}", i.id));
        } else if let Some(t) = &r.term {
            v["containerID"] = json!(t.container_id);
        }
        v
    }

    fn status(&self, pod: &Pod) -> Value {
        let spec = pod.spec.clone().unwrap_or_default();
        let policy = restart_policy(pod);
        let inits = spec.init_containers.clone().unwrap_or_default();
        let init_done = inits.iter().all(|c| {
            self.rec.containers.get(&c.name).is_some_and(|r| {
                if is_sidecar(c) {
                    // Started once is enough: a sidecar restarting later
                    // does not take the pod back to initializing.
                    (r.running.is_some() && self.mem.get(&c.name).is_some_and(|m| m.started))
                        || r.term.is_some()
                } else {
                    r.running.is_none() && r.term.as_ref().is_some_and(|t| t.exit_code == 0)
                }
            })
        });
        let init_failed = policy == "Never"
            && inits.iter().filter(|c| !is_sidecar(c)).any(|c| {
                self.rec.containers.get(&c.name).is_some_and(|r| {
                    r.running.is_none() && r.term.as_ref().is_some_and(|t| t.exit_code != 0)
                })
            });
        let statuses: Vec<Value> = spec
            .containers
            .iter()
            .map(|c| self.container_status(c, !init_done))
            .collect();
        let init_statuses: Vec<Value> = inits
            .iter()
            .map(|c| self.container_status(c, false))
            .collect();
        let recs: Vec<CtrRecord> = spec
            .containers
            .iter()
            .map(|c| self.record(&c.name))
            .collect();
        let phase = if init_failed {
            "Failed"
        } else if !init_done || recs.iter().any(|r| r.running.is_none() && r.term.is_none()) {
            "Pending"
        } else if recs.iter().any(|r| r.running.is_some()) {
            "Running"
        } else {
            let failed = recs
                .iter()
                .any(|r| r.term.as_ref().is_some_and(|t| t.exit_code != 0));
            match policy {
                "Never" if failed => "Failed",
                "Never" => "Succeeded",
                "OnFailure" if !failed => "Succeeded",
                _ => "Running",
            }
        };
        let sidecars_ready = inits
            .iter()
            .zip(&init_statuses)
            .filter(|(c, _)| is_sidecar(c))
            .all(|(_, s)| s["ready"] == json!(true));
        let all_ready = !statuses.is_empty()
            && sidecars_ready
            && statuses.iter().all(|s| s["ready"] == json!(true));
        let old: HashMap<String, Value> = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|c| (c.type_.clone(), serde_json::to_value(c).unwrap_or_default()))
            .collect();
        let now = sys::now_rfc3339();
        let cond = |ty: &str, ok: bool, reason: Option<&str>| {
            let status = if ok { "True" } else { "False" };
            let keep = old.get(ty).filter(|o| o["status"] == json!(status));
            let t = keep
                .and_then(|o| o["lastTransitionTime"].as_str())
                .unwrap_or(&now)
                .to_owned();
            let mut c = json!({"type": ty, "status": status, "lastProbeTime": null, "lastTransitionTime": t});
            if let Some(r) = reason {
                c["reason"] = json!(r);
            }
            c
        };
        let done = phase == "Succeeded" || phase == "Failed";
        let not_ready = if done {
            Some("PodCompleted")
        } else {
            Some("ContainersNotReady")
        };
        let mut conditions = vec![
            cond(
                "PodReadyToStartContainers",
                self.sandbox_ready && !done,
                None,
            ),
            cond(
                "Initialized",
                init_done,
                if init_done {
                    None
                } else {
                    Some("ContainersNotInitialized")
                },
            ),
            cond("Ready", all_ready, if all_ready { None } else { not_ready }),
            cond(
                "ContainersReady",
                all_ready,
                if all_ready { None } else { not_ready },
            ),
        ];
        if let Some(s) = old.get("PodScheduled") {
            conditions.push(s.clone());
        }
        let mut st = json!({"phase": phase, "conditions": conditions, "hostIP": self.rt.cfg.node_ip, "hostIPs": [{"ip": self.rt.cfg.node_ip}],
            "podIP": self.rec.ip, "podIPs": [{"ip": self.rec.ip}], "startTime": self.rec.start_time, "containerStatuses": statuses, "qosClass": qos_class(pod)});
        if !init_statuses.is_empty() {
            st["initContainerStatuses"] = json!(init_statuses);
        }
        st
    }
}

fn qos_class(pod: &Pod) -> &'static str {
    let cs: Vec<&Container> = pod
        .spec
        .iter()
        .flat_map(|s| {
            s.containers
                .iter()
                .chain(s.init_containers.iter().flatten())
        })
        .collect();
    let has = |c: &Container, which: &str, r: &str| {
        c.resources
            .as_ref()
            .and_then(|x| {
                if which == "limits" {
                    x.limits.as_ref()
                } else {
                    x.requests.as_ref()
                }
            })
            .is_some_and(|m| m.contains_key(r))
    };
    if cs.iter().all(|c| {
        !has(c, "limits", "cpu")
            && !has(c, "limits", "memory")
            && !has(c, "requests", "cpu")
            && !has(c, "requests", "memory")
    }) {
        return "BestEffort";
    }
    let guaranteed = cs.iter().all(|c| {
        ["cpu", "memory"].iter().all(|r| {
            let l = c
                .resources
                .as_ref()
                .and_then(|x| x.limits.as_ref())
                .and_then(|m| m.get(*r));
            let q = c
                .resources
                .as_ref()
                .and_then(|x| x.requests.as_ref())
                .and_then(|m| m.get(*r));
            l.is_some() && (q.is_none() || q == l)
        })
    });
    if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

fn find_container(pod: &Pod, name: &str) -> Option<Container> {
    pod.spec.as_ref().and_then(|s| {
        s.containers
            .iter()
            .chain(s.init_containers.iter().flatten())
            .find(|c| c.name == name)
            .cloned()
    })
}

fn read_exit(dir: &Path) -> ExitRecord {
    std::fs::read(sys::exit_path(dir))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_else(|| ExitRecord {
            exit_code: 137,
            signal: None,
            reason: Some("Error".into()),
            message: Some(format!(
                "the container's shim ended without recording an exit code (see {})",
                dir.join("shim.log").display()
            )),
            finished_at: sys::now_rfc3339(),
        })
}

struct ProbeCtx {
    kind: &'static str,
    action: Action,
    probe: Probe,
    container: Container,
    pod_ip: String,
    pid: Option<i32>,
    exe: PathBuf,
    tx: mpsc::UnboundedSender<Ev>,
    name: String,
    id: String,
}

impl ProbeCtx {
    async fn run(self) {
        let p = &self.probe;
        let period = Duration::from_secs(p.period_seconds.unwrap_or(10).max(1) as u64);
        let timeout = Duration::from_secs(p.timeout_seconds.unwrap_or(1).max(1) as u64);
        let success_threshold = p.success_threshold.unwrap_or(1).max(1);
        let failure_threshold = p.failure_threshold.unwrap_or(3).max(1);
        tokio::time::sleep(Duration::from_secs(
            p.initial_delay_seconds.unwrap_or(0).max(0) as u64,
        ))
        .await;
        let (mut ok_run, mut fail_run, mut last): (i32, i32, Option<bool>) = (0, 0, None);
        loop {
            let t = Target {
                pod_ip: &self.pod_ip,
                container: &self.container,
                pid: self.pid,
                exe: &self.exe,
            };
            let res = probe::run(&self.action, &t, timeout).await;
            let send = |ok: bool, msg: String| {
                let _ = self.tx.send(Ev::Probe {
                    name: self.name.clone(),
                    id: self.id.clone(),
                    kind: self.kind,
                    ok,
                    msg,
                });
            };
            match res {
                Ok(()) => {
                    fail_run = 0;
                    ok_run += 1;
                    if ok_run >= success_threshold && last != Some(true) {
                        last = Some(true);
                        send(true, String::new());
                        if self.kind == "Startup" {
                            return;
                        }
                    }
                }
                Err(msg) => {
                    ok_run = 0;
                    fail_run += 1;
                    if fail_run >= failure_threshold
                        && (last != Some(false) || self.kind != "Readiness")
                    {
                        last = Some(false);
                        send(false, msg);
                        if self.kind != "Readiness" {
                            return;
                        }
                    }
                }
            }
            tokio::time::sleep(period).await;
        }
    }
}

/// Stop every pod an agent left in `data_dir` and remove their cgroups,
/// mount points and files: `mast cleanup-node`, for tests and for taking a
/// machine out of a cluster. The agent must be stopped first.
/// The host end of a pod's veth pair.
fn host_if(uid: &str) -> String {
    format!(
        "mv{}",
        uid.replace('-', "").chars().take(12).collect::<String>()
    )
}

/// Delete the pod's veth pair from the host's side. The kernel would
/// remove it with the pod's network namespace, but that namespace lives
/// on while closed TCP connections in it still retransmit (minutes, when
/// their peers went first), and the pod's address may be reused at once.
async fn remove_link(uid: &str) {
    let name = host_if(uid);
    if let Err(e) = mast_net::delete_link(&name).await {
        tracing::warn!(link = %name, error = %e, "could not remove the pod's network link");
    }
}

pub fn cleanup_node(data_dir: &Path) -> usize {
    let root = data_dir.join("pods");
    let Ok(rd) = std::fs::read_dir(&root) else {
        return 0;
    };
    let mut n = 0;
    for e in rd.flatten() {
        let uid = e.file_name().to_string_lossy().into_owned();
        let rec = load_record(&e.path()).unwrap_or_default();
        for c in rec.containers.values() {
            if let Some(i) = &c.running {
                if let Some(p) = i.pid {
                    p.signal(Signal::SIGKILL);
                }
                sys::kill_cgroup(&i.cgroups);
            }
        }
        if let Some(sb) = rec.sandbox {
            sb.signal(Signal::SIGKILL);
        }
        for ctrl in ["memory", "cpu", "pids"] {
            let pod_cg = Path::new("/sys/fs/cgroup")
                .join(ctrl)
                .join("mast")
                .join(&uid);
            for _ in 0..50 {
                if let Ok(rd) = std::fs::read_dir(&pod_cg) {
                    for c in rd.flatten().filter(|c| c.path().is_dir()) {
                        sys::kill_cgroup(&[c.path()]);
                        let _ = std::fs::remove_dir(c.path());
                    }
                }
                if std::fs::remove_dir(&pod_cg).is_ok() || !pod_cg.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        volumes::remove_mountpoints(&rec.mountpoints);
        if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            rt.block_on(remove_link(&uid));
        }
        let _ = std::fs::remove_dir_all(e.path());
        n += 1;
    }
    // The node's bridge, if the agent made one.
    let net = data_dir.join("network.json");
    if let Some(bridge) = std::fs::read(&net)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|v| v["bridge"].as_str().map(str::to_owned))
    {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
        if let Ok(rt) = rt {
            if let Err(e) = rt.block_on(mast_net::delete_link(&bridge)) {
                eprintln!("mast: could not remove the bridge {bridge}: {e:#}");
            }
            let table = mast_net::proxy::ProxyConfig::table_for(&bridge);
            if let Err(e) = rt.block_on(mast_net::proxy::delete_table(&table)) {
                eprintln!("mast: could not remove the nftables table {table}: {e:#}");
            }
        }
        let _ = std::fs::remove_file(net);
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_ips_rotate_through_the_range_before_one_is_reused() {
        let mut used = BTreeSet::new();
        let mut last = 0;
        let mut take = |used: &mut BTreeSet<u32>| {
            let n = next_free_ip(used, last, 2..6);
            used.insert(n);
            last = n;
            n
        };
        assert_eq!([take(&mut used), take(&mut used)], [2, 3]);
        // 2 is freed: the next pods get 4 and 5 first, then 2 again.
        used.remove(&2);
        assert_eq!([take(&mut used), take(&mut used)], [4, 5]);
        assert_eq!(take(&mut used), 2);
        // Full: the first address, as before.
        assert_eq!(next_free_ip(&used, 2, 2..6), 2);
        // A last address outside the range (a new range) starts at its beginning.
        assert_eq!(next_free_ip(&BTreeSet::new(), 99, 2..6), 2);
    }
}
