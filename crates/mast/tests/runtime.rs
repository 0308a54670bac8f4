//! The process runtime end to end, with the real kubectl: pods are real
//! processes, and logs, exec, restarts, probes, volumes and agent restarts
//! behave as on Kubernetes. These tests need root (namespaces, cgroups),
//! as CI runs them.

mod common;
use common::{curl, eventually, pod_json, ready, wait_ready, Cluster};
use serde_json::Value;

fn cluster_with_agent(node: &str) -> (Cluster, common::Agent, Vec<common::Background>) {
    let c = Cluster::start();
    let sched = c.component(&["scheduler"]);
    let ctrl = c.component(&["controllers"]);
    let agent = c.agent(node, &[]);
    assert!(
        eventually(30, || c.kubectl(&["get", "node", node]).success),
        "the agent never registered its node"
    );
    (c, agent, vec![sched, ctrl])
}

fn restarts(p: &Value) -> i64 {
    p["status"]["containerStatuses"][0]["restartCount"]
        .as_i64()
        .unwrap_or(-1)
}

/// Wait until the pod `name` satisfies `ok`; on timeout, fail showing it.
fn wait_pod(c: &Cluster, name: &str, secs: u64, ok: impl Fn(&Value) -> bool) {
    assert!(
        eventually(secs, || ok(&pod_json(c, name))),
        "{}",
        c.kubectl(&["get", "pod", name, "-o", "yaml"]).stdout
    );
}

#[test]
fn the_course_busybox_lab_runs_logs_and_execs() {
    let (c, _agent, _bg) = cluster_with_agent("lab");
    c.ok(&["run", "busybox", "--image=busybox", "--", "sleep", "3600"]);
    wait_ready(&c, "busybox", 60);
    let table = c.ok(&["get", "pods"]);
    assert!(
        table.contains("1/1") && table.contains("Running"),
        "{table}"
    );
    // `-ti` without a terminal: kubectl warns and runs without a TTY.
    let o = c.kubectl(&["exec", "-ti", "busybox", "--", "printenv"]);
    assert!(o.success, "{o:?}");
    assert!(o.stdout.contains("HOSTNAME=busybox"), "{}", o.stdout);
    assert!(o.stdout.contains("PATH="), "{}", o.stdout);
    // The kubelet's Service variables, for the `kubernetes` Service.
    assert!(
        o.stdout.contains("KUBERNETES_SERVICE_HOST=10.43.0.1"),
        "{}",
        o.stdout
    );
    assert!(
        o.stdout
            .contains("KUBERNETES_PORT_443_TCP=tcp://10.43.0.1:443"),
        "{}",
        o.stdout
    );
    // With a real terminal (script(1) provides one), exec -ti gets a TTY.
    if std::path::Path::new("/usr/bin/script").exists() {
        let cmd = format!(
            "KUBECONFIG={} {} exec -ti busybox -- sh -c 'tty; echo term=$TERM'",
            c.kubeconfig.display(),
            common::KUBECTL
        );
        let out = std::process::Command::new("/usr/bin/script")
            .args(["-qec", &cmd, "/dev/null"])
            .stdin(std::process::Stdio::null())
            .output()
            .expect("script");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("/dev/pts/") && text.contains("term=xterm"),
            "{text}"
        );
    }
    // The pod has its own pid namespace and hostname.
    let ps = c.ok(&["exec", "busybox", "--", "ps", "-e", "-o", "pid,comm"]);
    assert!(ps.contains("pause"), "{ps}");
    assert_eq!(
        c.ok(&["exec", "busybox", "--", "hostname"]).trim(),
        "busybox"
    );
    // Exit codes and stdin pass through.
    let o = c.kubectl(&[
        "exec",
        "busybox",
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 3",
    ]);
    assert!(!o.success);
    assert_eq!(o.stdout.trim(), "out");
    assert!(
        o.stderr.contains("err") && o.stderr.contains("exit code 3"),
        "{}",
        o.stderr
    );
    let out = std::process::Command::new(common::KUBECTL)
        .args(["exec", "-i", "busybox", "--", "cat"])
        .env("KUBECONFIG", &c.kubeconfig)
        .stdin(std::fs::File::open(c.dir.path().join("pki/ca.crt")).expect("stdin file"))
        .output()
        .expect("kubectl exec -i");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("BEGIN CERTIFICATE"),
        "{out:?}"
    );
    // Every supported kubectl: 1.30+ speak WebSocket, 1.27-1.29 SPDY.
    for minor in 27..=33 {
        let k = common::kubectl_version(minor);
        let o = c.kubectl_with(
            &k,
            &[
                "exec",
                "busybox",
                "--",
                "sh",
                "-c",
                "echo out-$0; echo err >&2; exit 5",
            ],
        );
        assert!(!o.success, "1.{minor}: {o:?}");
        assert_eq!(o.stdout.trim(), "out-sh", "1.{minor}: {o:?}");
        assert!(
            o.stderr.contains("err") && o.stderr.contains("exit code 5"),
            "1.{minor}: {o:?}"
        );
        let out = std::process::Command::new(&k)
            .args(["exec", "-i", "busybox", "--", "wc", "-c"])
            .env("KUBECONFIG", &c.kubeconfig)
            .stdin(std::fs::File::open(c.dir.path().join("pki/ca.crt")).expect("stdin file"))
            .output()
            .expect("kubectl exec -i");
        let len = std::fs::metadata(c.dir.path().join("pki/ca.crt"))
            .map(|m| m.len())
            .unwrap_or(0);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            len.to_string(),
            "1.{minor}: {out:?}"
        );
    }
    // kubectl logs of a quiet container is empty, not an error.
    assert_eq!(c.ok(&["logs", "busybox"]), "");
    // Deleting the pod stops its processes promptly (SIGTERM).
    c.ok(&["delete", "pod", "busybox", "--wait=true"]);
    assert!(c.ok(&["get", "pods"]).is_empty());
}

#[test]
fn logs_follow_tail_previous_and_crash_loop_back_off() {
    let (c, _agent, _bg) = cluster_with_agent("logs");
    c.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: talker}
spec:
  containers:
  - name: main
    image: busybox
    command: ["sh", "-c", "for i in 1 2 3 4 5; do echo line $i; done; echo oops >&2; sleep 0.5; exit 3"]
"#,
    );
    // It exits 3: restarts once at once, then backs off.
    wait_pod(&c, "talker", 60, |p| {
        restarts(p) >= 1
            && p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"]
                == "CrashLoopBackOff"
    });
    let p = pod_json(&c, "talker");
    let last = &p["status"]["containerStatuses"][0]["lastState"]["terminated"];
    assert_eq!(last["exitCode"], 3, "{p}");
    assert_eq!(last["reason"], "Error");
    let table = c.ok(&["get", "pod", "talker"]);
    assert!(table.contains("CrashLoopBackOff"), "{table}");
    let prev = c.ok(&["logs", "talker", "--previous"]);
    assert!(
        prev.contains("line 1") && prev.contains("line 5") && prev.contains("oops"),
        "{prev}"
    );
    let tail = c.ok(&["logs", "talker", "--tail=2"]);
    assert_eq!(tail.lines().count(), 2, "{tail}");
    assert!(tail.contains("line 5") && tail.contains("oops"), "{tail}");
    let ts = c.ok(&["logs", "talker", "--timestamps", "--tail=1"]);
    assert!(ts.starts_with("20") && ts.contains("Z oops"), "{ts}");
    let describe = c.ok(&["describe", "pod", "talker"]);
    assert!(
        describe.contains("Back-off restarting failed container main"),
        "{describe}"
    );

    // follow: streams lines as they are written.
    c.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: ticker}
spec:
  containers:
  - name: main
    image: busybox
    command: ["sh", "-c", "i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.2; done"]
"#,
    );
    wait_ready(&c, "ticker", 60);
    let mut child = std::process::Command::new(common::KUBECTL)
        .args(["logs", "-f", "ticker"])
        .env("KUBECONFIG", &c.kubeconfig)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl logs -f");
    let _guard = common::Background(std::process::Command::new("true").spawn().expect("true"));
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut seen = vec![];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while seen.len() < 15 && std::time::Instant::now() < deadline {
        if let Ok(l) = rx.recv_timeout(std::time::Duration::from_secs(1)) {
            seen.push(l);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(seen.len() >= 15, "follow delivered only {seen:?}");
    let nums: Vec<u64> = seen
        .iter()
        .filter_map(|l| l.strip_prefix("tick ")?.parse().ok())
        .collect();
    assert!(nums.windows(2).all(|w| w[1] == w[0] + 1), "{nums:?}");

    // An image that resolves to nothing: ErrImagePull, then ImagePullBackOff.
    c.ok(&[
        "run",
        "ghost",
        "--image=registry.example/no-such-program-xyz:1.0",
    ]);
    wait_pod(&c, "ghost", 30, |p| {
        let w = &p["status"]["containerStatuses"][0]["state"]["waiting"];
        (w["reason"] == "ErrImagePull" || w["reason"] == "ImagePullBackOff")
            && w["message"]
                .as_str()
                .is_some_and(|m| m.contains("no-such-program-xyz"))
    });
    let describe = c.ok(&["describe", "pod", "ghost"]);
    assert!(describe.contains("apt-get install"), "{describe}");
}

#[test]
fn volumes_env_init_containers_and_limits() {
    let (c, _agent, _bg) = cluster_with_agent("vols");
    c.apply(
        r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: settings}
data: {greeting: hello, color: blue}
---
apiVersion: v1
kind: Secret
metadata: {name: creds}
stringData: {password: s3cret}
---
apiVersion: v1
kind: Pod
metadata: {name: full, labels: {app: full, tier: web}}
spec:
  initContainers:
  - name: init
    image: busybox
    command: ["sh", "-c", "echo prepared > /work/ready.txt"]
    volumeMounts: [{name: scratch, mountPath: /work}]
  containers:
  - name: main
    image: busybox
    command: ["sleep", "3600"]
    resources:
      limits: {memory: 64Mi, cpu: 500m}
    env:
    - {name: GREETING, valueFrom: {configMapKeyRef: {name: settings, key: greeting}}}
    - {name: PASSWORD, valueFrom: {secretKeyRef: {name: creds, key: password}}}
    - {name: MY_POD, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
    - {name: MY_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
    - {name: MEM_MI, valueFrom: {resourceFieldRef: {resource: limits.memory, divisor: 1Mi}}}
    - {name: MESSAGE, value: "$(GREETING) from $(MY_POD)"}
    volumeMounts:
    - {name: scratch, mountPath: /work}
    - {name: config, mountPath: /etc/mast-test-config, readOnly: true}
    - {name: info, mountPath: /etc/mast-test-podinfo}
  - name: side
    image: busybox
    command: ["sh", "-c", "echo from-side > /shared/side.txt; sleep 3600"]
    volumeMounts: [{name: scratch, mountPath: /shared}]
  volumes:
  - {name: scratch, emptyDir: {}}
  - {name: config, configMap: {name: settings}}
  - name: info
    downwardAPI:
      items:
      - {path: labels, fieldRef: {fieldPath: metadata.labels}}
      - {path: name, fieldRef: {fieldPath: metadata.name}}
"#,
    );
    wait_ready(&c, "full", 60);
    let exec = |cmd: &str| c.ok(&["exec", "full", "-c", "main", "--", "sh", "-c", cmd]);
    let env = exec("printenv");
    for want in [
        "GREETING=hello",
        "PASSWORD=s3cret",
        "MY_POD=full",
        "MEM_MI=64",
        "MESSAGE=hello from full",
    ] {
        assert!(env.contains(want), "missing {want} in {env}");
    }
    let ip = pod_json(&c, "full")["status"]["podIP"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(env.contains(&format!("MY_IP={ip}")), "{env}");
    assert_eq!(exec("cat /work/ready.txt").trim(), "prepared");
    assert!(
        eventually(10, || exec("cat /work/side.txt 2>/dev/null").trim()
            == "from-side"),
        "the emptyDir is not shared"
    );
    assert_eq!(exec("cat /etc/mast-test-config/greeting"), "hello");
    assert_eq!(exec("cat /etc/mast-test-podinfo/name"), "full");
    assert!(exec("cat /etc/mast-test-podinfo/labels").contains("tier=\"web\""));
    // readOnly is enforced, and the mounts are the pod's own: the host
    // does not see them.
    let o = c.kubectl(&[
        "exec",
        "full",
        "-c",
        "main",
        "--",
        "sh",
        "-c",
        "echo x > /etc/mast-test-config/new",
    ]);
    assert!(!o.success, "a readOnly mount was writable");
    assert!(!std::path::Path::new("/etc/mast-test-config/greeting").exists());
    // The memory limit is a real cgroup limit.
    let cg = exec("cat /proc/self/cgroup");
    let mem_path = cg
        .lines()
        .find_map(|l| l.split_once(":memory:").map(|(_, p)| p.to_owned()))
        .unwrap_or_else(|| panic!("no memory cgroup in {cg}"));
    assert!(mem_path.starts_with("/mast/"), "{mem_path}");
    let limit = std::fs::read_to_string(format!(
        "/sys/fs/cgroup/memory{mem_path}/memory.limit_in_bytes"
    ))
    .expect("read the limit");
    assert_eq!(limit.trim(), (64u64 << 20).to_string());
    let quota = std::fs::read_to_string(format!("/sys/fs/cgroup/cpu{mem_path}/cpu.cfs_quota_us"))
        .expect("read the quota");
    assert_eq!(quota.trim(), "50000");
    // ConfigMap volumes follow the ConfigMap while the pod runs (env does not).
    c.ok(&[
        "patch",
        "configmap",
        "settings",
        "--type=merge",
        "-p",
        r#"{"data": {"greeting": "bonjour"}}"#,
    ]);
    assert!(
        eventually(40, || exec("cat /etc/mast-test-config/greeting")
            == "bonjour"),
        "the configMap volume was not refreshed"
    );
    assert!(exec("printenv GREETING").trim() == "hello");
    // Init containers show as done.
    let p = pod_json(&c, "full");
    assert_eq!(
        p["status"]["initContainerStatuses"][0]["state"]["terminated"]["reason"],
        "Completed"
    );
    // A missing ConfigMap holds the pod in ContainerCreating with an event.
    c.ok(&["run", "needs-config", "--image=busybox", "--overrides",
        r#"{"spec": {"volumes": [{"name": "v", "configMap": {"name": "absent"}}], "containers": [{"name": "needs-config", "image": "busybox", "args": ["sleep", "60"], "volumeMounts": [{"name": "v", "mountPath": "/etc/absent"}]}]}}"#]);
    assert!(
        eventually(30, || c
            .ok(&["describe", "pod", "needs-config"])
            .contains("configmap \"absent\" not found")),
        "{}",
        c.ok(&["describe", "pod", "needs-config"])
    );
    assert!(c
        .ok(&["get", "pod", "needs-config"])
        .contains("ContainerCreating"));
    // Deleting the pod removes its cgroups and the mount points mast made.
    c.ok(&["delete", "pod", "full"]);
    assert!(!std::path::Path::new(&format!("/sys/fs/cgroup/memory{mem_path}")).exists());
    assert!(!std::path::Path::new("/etc/mast-test-config").exists());
}

#[test]
fn probes_restart_and_agent_restart_adopts_pods() {
    let (c, mut agent, _bg) = cluster_with_agent("probes");
    c.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: web}
spec:
  containers:
  - name: echo
    image: mast.dev/echo
    ports: [{name: http, containerPort: 8080}]
    readinessProbe:
      httpGet: {path: /readyz, port: http}
      periodSeconds: 1
      failureThreshold: 1
    livenessProbe:
      httpGet: {path: /healthz, port: 8080}
      periodSeconds: 1
      failureThreshold: 2
"#,
    );
    wait_ready(&c, "web", 60);
    let ip = pod_json(&c, "web")["status"]["podIP"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let body = curl(&format!("http://{ip}:8080/hello")).expect("echo answers");
    assert_eq!(body["pod"], "web");
    assert_eq!(body["path"], "/hello");
    // Readiness follows the probe.
    curl(&format!("http://{ip}:8080/readyz/off"));
    assert!(
        eventually(20, || !ready(&pod_json(&c, "web"))),
        "never turned unready"
    );
    curl(&format!("http://{ip}:8080/readyz/on"));
    wait_ready(&c, "web", 20);
    // A failing liveness probe restarts the container.
    curl(&format!("http://{ip}:8080/healthz/off"));
    assert!(
        eventually(30, || restarts(&pod_json(&c, "web")) == 1),
        "liveness never restarted it"
    );
    wait_ready(&c, "web", 30);
    assert!(c
        .ok(&["describe", "pod", "web"])
        .contains("Liveness probe failed"));

    // The agent restarts: its pod keeps running, untouched.
    let before = pod_json(&c, "web");
    let started = before["status"]["containerStatuses"][0]["state"]["running"]["startedAt"].clone();
    agent.stop();
    std::thread::sleep(std::time::Duration::from_secs(1));
    assert!(
        curl(&format!("http://{ip}:8080/")).is_some(),
        "the pod died with the agent"
    );
    let _agent2 = {
        let a = c.agent("probes", &[]);
        // The same data dir: take the new agent's guard, leave the old one's
        // cleanup to this guard only.
        agent.data = c.dir.path().join("unused");
        a
    };
    std::thread::sleep(std::time::Duration::from_secs(3));
    let after = pod_json(&c, "web");
    assert_eq!(restarts(&after), 1, "{after}");
    assert_eq!(
        after["status"]["containerStatuses"][0]["state"]["running"]["startedAt"],
        started
    );
    assert_eq!(
        c.ok(&["exec", "web", "--", "echo", "adopted"]).trim(),
        "adopted"
    );
    // Exits are still noticed after adoption.
    curl(&format!("http://{ip}:8080/exit?code=7"));
    wait_pod(&c, "web", 30, |p| {
        restarts(p) == 2
            && p["status"]["containerStatuses"][0]["lastState"]["terminated"]["exitCode"] == 7
    });
}

#[test]
fn a_deployment_of_echo_replicas_restarts_scales_rolls_and_undoes() {
    let (c, _agent, _bg) = cluster_with_agent("deploy");
    c.apply(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: echo}
spec:
  replicas: 3
  selector: {matchLabels: {app: echo}}
  strategy: {rollingUpdate: {maxUnavailable: 1, maxSurge: 1}}
  template:
    metadata: {labels: {app: echo}}
    spec:
      terminationGracePeriodSeconds: 5
      containers:
      - name: echo
        image: mast.dev/echo
        env: [{name: VERSION, value: v1}]
        readinessProbe: {httpGet: {path: /readyz, port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: echo}
spec:
  selector: {app: echo}
  ports: [{name: http, port: 80, targetPort: 8080}]
"#,
    );
    let pods = |c: &Cluster| -> Vec<Value> {
        let v: Value =
            serde_json::from_str(&c.ok(&["get", "pods", "-l", "app=echo", "-o", "json"]))
                .expect("json");
        v["items"].as_array().cloned().unwrap_or_default()
    };
    let ready_count = |c: &Cluster| {
        pods(c)
            .iter()
            .filter(|p| ready(p) && p["metadata"]["deletionTimestamp"].is_null())
            .count()
    };
    assert!(
        eventually(60, || ready_count(&c) == 3),
        "{}",
        c.ok(&["get", "pods", "-o", "wide"])
    );
    // The Service's Endpoints and EndpointSlice list the three pods.
    assert!(
        eventually(20, || {
            let eps: Value =
                serde_json::from_str(&c.ok(&["get", "endpoints", "echo", "-o", "json"]))
                    .unwrap_or_default();
            eps["subsets"][0]["addresses"].as_array().map(|a| a.len()) == Some(3)
                && eps["subsets"][0]["ports"][0]["port"] == 8080
        }),
        "{}",
        c.ok(&["get", "endpoints", "echo", "-o", "yaml"])
    );
    let slices = c.ok(&[
        "get",
        "endpointslices",
        "-l",
        "kubernetes.io/service-name=echo",
    ]);
    assert!(slices.contains("8080"), "{slices}");
    // Each replica answers on its own IP with its own name.
    for p in pods(&c) {
        let ip = p["status"]["podIP"].as_str().unwrap_or_default();
        let body = curl(&format!("http://{ip}:8080/")).expect("echo answers");
        assert_eq!(body["pod"], p["metadata"]["name"]);
        assert_eq!(body["version"], "v1");
    }
    // Killing one container's process: RESTARTS goes up by one.
    let victim = pods(&c)[0]["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    // (The exec may itself be killed with the container, as on Kubernetes.)
    let _ = c.kubectl(&["exec", &victim, "--", "pkill", "-9", "-f", "image echo"]);
    assert!(
        eventually(30, || restarts(&pod_json(&c, &victim)) == 1),
        "{}",
        c.ok(&["get", "pods"])
    );
    let table = c.ok(&["get", "pod", &victim]);
    assert!(
        table.contains(" 1 ("),
        "RESTARTS shows 1 (... ago): {table}"
    );
    // Deleting a pod gets it replaced.
    c.ok(&["delete", "pod", &victim]);
    assert!(eventually(60, || ready_count(&c) == 3
        && pods(&c)
            .iter()
            .all(|p| p["metadata"]["name"] != victim.as_str())));
    // Scale 3 → 10 → 2.
    c.ok(&["scale", "deployment/echo", "--replicas=10"]);
    assert!(
        eventually(90, || ready_count(&c) == 10),
        "{}",
        c.ok(&["get", "pods"])
    );
    c.ok(&["scale", "deployment/echo", "--replicas=2"]);
    assert!(
        eventually(60, || pods(&c).len() == 2),
        "{}",
        c.ok(&["get", "pods"])
    );
    c.ok(&["scale", "deployment/echo", "--replicas=3"]);
    assert!(eventually(60, || ready_count(&c) == 3));
    // An image change rolls out with maxUnavailable respected throughout.
    c.ok(&["set", "image", "deployment/echo", "echo=mast.dev/echo:v2"]);
    let mut min_ready = usize::MAX;
    let done = eventually(120, || {
        min_ready = min_ready.min(ready_count(&c));
        let all = pods(&c);
        all.len() == 3
            && all
                .iter()
                .all(|p| p["spec"]["containers"][0]["image"] == "mast.dev/echo:v2" && ready(p))
    });
    assert!(
        done,
        "the rollout never finished: {}",
        c.ok(&["get", "pods", "-o", "wide"])
    );
    assert!(
        min_ready >= 2,
        "ready pods fell to {min_ready} (maxUnavailable 1 of 3)"
    );
    let status = c.ok(&["rollout", "status", "deployment/echo", "--timeout=60s"]);
    assert!(status.contains("successfully rolled out"), "{status}");
    // rollout undo returns to the first image.
    c.ok(&["rollout", "undo", "deployment/echo"]);
    assert!(eventually(120, || {
        let all = pods(&c);
        all.len() == 3
            && all
                .iter()
                .all(|p| p["spec"]["containers"][0]["image"] == "mast.dev/echo" && ready(p))
    }));
}

#[test]
fn logs_are_capped_and_termination_is_graceful() {
    let c = Cluster::start();
    let _sched = c.component(&["scheduler"]);
    let _agent = c.agent("caps", &["--container-log-max-size=1Mi"]);
    assert!(eventually(30, || c
        .kubectl(&["get", "node", "caps"])
        .success));
    let out = c.dir.path().join("out");
    std::fs::create_dir_all(&out).expect("out dir");
    c.apply(
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: flood}}
spec:
  containers:
  - name: main
    image: busybox
    command: ["sh", "-c", "yes 0123456789012345678901234567890123456789 | head -c 60000000; echo; echo last-line; sleep 3600"]
---
apiVersion: v1
kind: Pod
metadata: {{name: polite}}
spec:
  terminationGracePeriodSeconds: 30
  containers:
  - name: main
    image: busybox
    command: ["sh", "-c", "trap 'echo term >> /out/events; exit 0' TERM; while true; do sleep 0.1; done"]
    lifecycle:
      preStop:
        exec: {{command: ["sh", "-c", "echo prestop >> /out/events"]}}
    volumeMounts: [{{name: out, mountPath: /out}}]
  volumes:
  - {{name: out, hostPath: {{path: {out}, type: Directory}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: stubborn}}
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: main
    image: busybox
    command: ["sh", "-c", "trap '' TERM; while true; do sleep 0.1; done"]
"#,
            out = out.display()
        ),
    );
    wait_ready(&c, "flood", 60);
    assert!(
        eventually(60, || c.ok(&["logs", "flood", "--tail=1"]).trim()
            == "last-line"),
        "the flood never finished"
    );
    // 60 MB written; the files on disk stay within two caps.
    let uid = pod_json(&c, "flood")["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let logs = c
        .dir
        .path()
        .join("agents/caps/pods")
        .join(&uid)
        .join("logs/main");
    let total: u64 = std::fs::read_dir(&logs)
        .expect("log dir")
        .flatten()
        .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .sum();
    assert!(total <= 2 * (1 << 20) + 4096, "{total} bytes of logs kept");
    assert_eq!(
        c.ok(&["exec", "flood", "--", "echo", "alive"]).trim(),
        "alive"
    );

    // Graceful: preStop runs, then SIGTERM, which the container handles.
    wait_ready(&c, "polite", 60);
    c.ok(&["delete", "pod", "polite"]);
    let events = std::fs::read_to_string(out.join("events")).unwrap_or_default();
    assert_eq!(events, "prestop\nterm\n");
    // A container that ignores SIGTERM is killed after its grace period.
    wait_ready(&c, "stubborn", 60);
    c.ok(&["delete", "pod", "stubborn", "--timeout=30s"]);
    assert!(!c.kubectl(&["get", "pod", "stubborn"]).success);
}

#[test]
fn port_forward_over_websocket_and_spdy() {
    let (c, _agent, _bg) = cluster_with_agent("pf");
    c.ok(&["run", "web", "--image=mast.dev/echo", "--port=8080"]);
    wait_ready(&c, "web", 60);
    // kubectl 1.32 tunnels SPDY in a WebSocket; 1.29 upgrades to SPDY.
    for kubectl in [
        std::path::PathBuf::from(common::KUBECTL),
        common::kubectl_version(29),
    ] {
        let mut child = std::process::Command::new(&kubectl)
            .args(["port-forward", "pod/web", ":8080"])
            .env("KUBECONFIG", &c.kubeconfig)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("kubectl port-forward");
        let _guard = common::Background(std::process::Command::new("true").spawn().expect("true"));
        let mut line = String::new();
        // Keep the pipe open: kubectl dies of SIGPIPE if it cannot write.
        let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        std::io::BufRead::read_line(&mut out, &mut line).expect("read the forwarding line");
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        // "Forwarding from 127.0.0.1:41234 -> 8080"
        let port = line
            .split("127.0.0.1:")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or_else(|| panic!("unexpected output {line:?}"))
            .to_owned();
        for i in 0..3 {
            let body = curl(&format!("http://127.0.0.1:{port}/through/{i}"));
            let body = body.unwrap_or_else(|| panic!("no answer through {kubectl:?}"));
            assert_eq!(body["pod"], "web");
            assert_eq!(body["path"], format!("/through/{i}"));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

#[test]
fn a_container_over_its_memory_limit_is_oom_killed() {
    let (c, _agent, _bg) = cluster_with_agent("oom");
    c.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: hog}
spec:
  restartPolicy: Never
  containers:
  - name: main
    image: busybox
    # A shell variable of 100 MB against a 32 MiB limit.
    command: ["sh", "-c", "x=$(head -c 100000000 /dev/zero | tr '\\0' a); echo ${#x}"]
    resources: {limits: {memory: 32Mi}}
"#,
    );
    wait_pod(&c, "hog", 60, |p| {
        p["status"]["phase"] == "Failed"
            && p["status"]["containerStatuses"][0]["state"]["terminated"]["reason"] == "OOMKilled"
    });
    let table = c.ok(&["get", "pod", "hog"]);
    assert!(table.contains("OOMKilled"), "{table}");
}

#[test]
fn deleting_a_namespace_stops_its_pods_then_removes_it() {
    let (c, _agent, _bg) = cluster_with_agent("nsdel");
    c.ok(&["create", "namespace", "team"]);
    c.ok(&[
        "create",
        "deployment",
        "web",
        "-n",
        "team",
        "--image=mast.dev/echo",
        "--replicas=2",
    ]);
    c.ok(&[
        "create",
        "configmap",
        "cfg",
        "-n",
        "team",
        "--from-literal=a=b",
    ]);
    c.ok(&[
        "rollout",
        "status",
        "deployment/web",
        "-n",
        "team",
        "--timeout=60s",
    ]);
    let ips = c.ok(&[
        "get",
        "pods",
        "-n",
        "team",
        "-o",
        "jsonpath={.items[*].status.podIP}",
    ]);
    let ips: Vec<String> = ips.split_whitespace().map(str::to_owned).collect();
    assert_eq!(ips.len(), 2, "{ips:?}");
    for ip in &ips {
        assert!(curl(&format!("http://{ip}:8080/")).is_some());
    }
    c.ok(&["delete", "namespace", "team", "--timeout=60s"]);
    assert!(c.fails(&["get", "namespace", "team"]).contains("NotFound"));
    // Its pods were stopped, not just forgotten.
    for ip in &ips {
        assert!(
            curl(&format!("http://{ip}:8080/")).is_none(),
            "{ip} still answers"
        );
    }
}

#[test]
fn startup_exec_and_tcp_probes_post_start_hooks_and_on_failure() {
    let (c, _agent, _bg) = cluster_with_agent("checks");
    c.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: checks}
spec:
  containers:
  - name: slow
    image: busybox
    command: ["sh", "-c", "sleep 2; touch /state/up; sleep 3600"]
    volumeMounts: [{name: state, mountPath: /state}]
    startupProbe:
      exec: {command: ["test", "-f", "/state/up"]}
      periodSeconds: 1
      failureThreshold: 30
    lifecycle:
      postStart:
        exec: {command: ["sh", "-c", "echo hooked > /state/hook"]}
  - name: web
    image: mast.dev/echo
    args: ["--port", "9090"]
    readinessProbe:
      tcpSocket: {port: 9090}
      periodSeconds: 1
  volumes: [{name: state, emptyDir: {}}]
---
apiVersion: v1
kind: Pod
metadata: {name: retry}
spec:
  restartPolicy: OnFailure
  containers:
  - name: main
    image: busybox
    # Fails twice, then succeeds.
    command: ["sh", "-c", "n=$(cat /s/n 2>/dev/null || echo 0); echo $((n+1)) > /s/n; test $n -ge 2"]
    volumeMounts: [{name: s, mountPath: /s}]
  volumes: [{name: s, emptyDir: {}}]
"#,
    );
    // Not started (so not ready) until the startup probe passes.
    assert!(eventually(30, || {
        let p = pod_json(&c, "checks");
        p["status"]["containerStatuses"]
            .as_array()
            .is_some_and(|cs| {
                cs.iter().any(|s| {
                    s["name"] == "slow"
                        && s["state"]["running"].is_object()
                        && s["started"] == false
                })
            })
    }));
    assert!(!ready(&pod_json(&c, "checks")));
    wait_ready(&c, "checks", 30);
    assert_eq!(
        c.ok(&["exec", "checks", "-c", "slow", "--", "cat", "/state/hook"])
            .trim(),
        "hooked"
    );
    let logs = c.ok(&["logs", "checks", "-c", "web"]);
    assert!(
        logs.contains("listening on") && logs.contains(":9090"),
        "{logs}"
    );
    // OnFailure: restarted after each failure, then Succeeded.
    wait_pod(&c, "retry", 60, |p| {
        p["status"]["phase"] == "Succeeded" && restarts(p) == 2
    });
    assert!(c.ok(&["get", "pod", "retry"]).contains("Completed"));
}

#[test]
fn without_root_pods_run_as_plain_processes() {
    if !std::path::Path::new("/usr/bin/setpriv").exists() {
        eprintln!("skipping: setpriv (util-linux) is not installed");
        return;
    }
    let c = Cluster::start();
    let _sched = c.component(&["scheduler"]);
    // A directory the unprivileged agent may use, with the cluster CA.
    let dir = tempfile::tempdir().expect("temp dir");
    let mut perms = std::fs::metadata(dir.path()).expect("meta").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o777);
    std::fs::set_permissions(dir.path(), perms).expect("chmod");
    let ca = dir.path().join("ca.crt");
    std::fs::copy(c.dir.path().join("pki/ca.crt"), &ca).expect("copy the CA");
    let data = dir.path().join("agent");
    let agent = std::process::Command::new("/usr/bin/setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_mast"))
        .args([
            "agent",
            "--node-name=plain",
            "--agent-listen=127.0.0.1:0",
            "--pod-ip-range=127.250.0.0/16",
            "--ingress-http=off",
            "--ingress-https=off",
        ])
        .arg(format!("--agent-data-dir={}", data.display()))
        .args([
            "--server",
            &c.url,
            &format!("--token={}", c.token()),
            "--certificate-authority",
        ])
        .arg(&ca)
        .env("HOME", dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start an unprivileged agent");
    let mut agent = common::Background(agent);
    let stderr = agent.0.stderr.take().expect("stderr");
    let cleanup = Cleanup(data.clone());
    assert!(eventually(30, || c
        .kubectl(&["get", "node", "plain"])
        .success));
    c.ok(&["run", "busybox", "--image=busybox", "--", "sleep", "3600"]);
    wait_ready(&c, "busybox", 60);
    let id = c.ok(&["exec", "busybox", "--", "id", "-u"]);
    assert_eq!(id.trim(), "65534");
    assert!(c
        .ok(&["exec", "busybox", "--", "printenv"])
        .contains("HOSTNAME=busybox"));
    c.ok(&["delete", "pod", "busybox"]);
    drop(agent);
    // It said what is degraded.
    let mut log = String::new();
    std::io::Read::read_to_string(&mut std::io::BufReader::new(stderr), &mut log).ok();
    assert!(log.contains("not running as root"), "{log}");
    drop(cleanup);
}

/// Runs `mast cleanup-node` on a data dir when dropped.
struct Cleanup(std::path::PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::process::Command::new(env!("CARGO_BIN_EXE_mast"))
            .arg("cleanup-node")
            .arg(format!("--agent-data-dir={}", self.0.display()))
            .stdout(std::process::Stdio::null())
            .status();
    }
}

#[test]
fn pods_get_their_own_network_namespaces_on_a_bridge() {
    let c = Cluster::start();
    let _sched = c.component(&["scheduler"]);
    let _ctrl = c.component(&["controllers", "--cluster-cidr=10.211.0.0/16"]);
    let agent = c.agent(
        "netns",
        &["--pod-network=bridge", "--bridge-name=masttest0"],
    );
    assert!(eventually(30, || c
        .kubectl(&["get", "node", "netns"])
        .success));
    c.ok(&["run", "web", "--image=mast.dev/echo"]);
    c.ok(&["run", "bb", "--image=busybox", "--", "sleep", "3600"]);
    wait_ready(&c, "web", 60);
    wait_ready(&c, "bb", 60);
    let ip = |pod: &str| {
        pod_json(&c, pod)["status"]["podIP"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let (web, bb) = (ip("web"), ip("bb"));
    assert!(
        web.starts_with("10.211.0.") && bb.starts_with("10.211.0."),
        "{web} {bb}"
    );
    // The node reaches pods, pods reach each other, each on its own eth0.
    assert_eq!(
        curl(&format!("http://{web}:8080/from-node")).expect("node → pod")["pod"],
        "web"
    );
    let got = c.ok(&[
        "exec",
        "bb",
        "--",
        "curl",
        "-sS",
        "--max-time",
        "5",
        &format!("http://{web}:8080/from-pod"),
    ]);
    assert!(got.contains("\"path\":\"/from-pod\""), "{got}");
    let addr = c.ok(&[
        "exec", "bb", "--", "busybox", "ip", "-4", "addr", "show", "eth0",
    ]);
    assert!(addr.contains(&format!("inet {bb}/24")), "{addr}");
    // No route leaves the machine.
    let out = c.kubectl(&[
        "exec",
        "bb",
        "--",
        "busybox",
        "ip",
        "route",
        "get",
        "192.0.2.1",
    ]);
    assert!(
        !out.success && out.stderr.contains("unreachable"),
        "{out:?}"
    );
    // Deleting the pods removes their links; stopping the node removes the bridge.
    c.ok(&["delete", "pod", "web", "bb"]);
    let links = std::process::Command::new("ip")
        .args(["-o", "link"])
        .output()
        .expect("ip link");
    let links = String::from_utf8_lossy(&links.stdout).into_owned();
    assert!(links.contains("masttest0"), "{links}");
    drop(agent);
    let links = std::process::Command::new("ip")
        .args(["-o", "link"])
        .output()
        .expect("ip link");
    assert!(!String::from_utf8_lossy(&links.stdout).contains("masttest0"));
}

#[test]
fn service_environment_variables_as_the_kubelet_writes_them() {
    let (c, _agent, _bg) = cluster_with_agent("links");
    c.ok(&["create", "namespace", "shop"]);
    c.apply(
        r#"
apiVersion: v1
kind: Service
metadata: {name: my-db, namespace: shop}
spec:
  selector: {app: db}
  ports: [{name: sql, port: 5432}]
---
apiVersion: v1
kind: Pod
metadata: {name: linked, namespace: shop}
spec:
  containers: [{name: c, image: busybox, args: [sleep, "3600"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: unlinked, namespace: shop}
spec:
  enableServiceLinks: false
  containers: [{name: c, image: busybox, args: [sleep, "3600"]}]
"#,
    );
    let ip = c.ok(&[
        "get",
        "svc",
        "my-db",
        "-n",
        "shop",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ]);
    for p in ["linked", "unlinked"] {
        assert!(eventually(60, || c.ok(&[
            "get",
            "pod",
            p,
            "-n",
            "shop",
            "-o",
            "jsonpath={.status.phase}"
        ]) == "Running"));
    }
    let linked = c.ok(&["exec", "-n", "shop", "linked", "--", "printenv"]);
    for want in [
        format!("MY_DB_SERVICE_HOST={ip}"),
        "MY_DB_SERVICE_PORT=5432".into(),
        "MY_DB_SERVICE_PORT_SQL=5432".into(),
        format!("MY_DB_PORT=tcp://{ip}:5432"),
        format!("MY_DB_PORT_5432_TCP_ADDR={ip}"),
        "KUBERNETES_SERVICE_HOST=".into(),
    ] {
        assert!(linked.contains(&want), "missing {want} in {linked}");
    }
    let unlinked = c.ok(&["exec", "-n", "shop", "unlinked", "--", "printenv"]);
    assert!(!unlinked.contains("MY_DB_"), "{unlinked}");
    assert!(unlinked.contains("KUBERNETES_SERVICE_HOST="), "{unlinked}");
}

#[test]
fn mast_up_runs_pods_and_picks_them_up_after_a_crash() {
    let mut c = Cluster::start_up("allinone", "127.240.0.0/16");
    c.ok(&[
        "create",
        "deployment",
        "echo",
        "--image=mast.dev/echo",
        "--replicas=3",
    ]);
    c.ok(&["rollout", "status", "deployment/echo", "--timeout=90s"]);
    let started = |c: &Cluster| {
        let v: Value =
            serde_json::from_str(&c.ok(&["get", "pods", "-l", "app=echo", "-o", "json"]))
                .expect("json");
        let mut s: Vec<String> = v["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                format!(
                    "{} {}",
                    p["metadata"]["name"],
                    p["status"]["containerStatuses"][0]["state"]["running"]["startedAt"]
                )
            })
            .collect();
        s.sort();
        s
    };
    let before = started(&c);
    assert_eq!(before.len(), 3);
    // The whole cluster dies at once; its pods do not.
    c.crash_and_restart();
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert!(
        eventually(30, || started(&c) == before),
        "{:?} vs {before:?}",
        started(&c)
    );
    assert_eq!(
        c.ok(&[
            "get",
            "pods",
            "-l",
            "app=echo",
            "-o",
            "jsonpath={.items[*].status.containerStatuses[0].restartCount}"
        ]),
        "0 0 0"
    );
    // And it still runs new work and removes old.
    c.ok(&["scale", "deployment/echo", "--replicas=1"]);
    assert!(eventually(60, || c
        .ok(&["get", "pods", "-l", "app=echo", "--no-headers"])
        .lines()
        .count()
        == 1));
}
