//! The Kubernetes network model on one machine, end to end with the real
//! kubectl: pods on a bridge, Services (ClusterIP, NodePort, LoadBalancer,
//! headless, ExternalName, affinity), cluster DNS, and zero-downtime
//! rollouts. Needs root (network namespaces, nftables), as CI runs it.

mod common;
use common::{eventually, pod_json, ready, wait_ready, NetCluster};
use std::collections::BTreeMap;
use std::process::Command;

const ECHO_DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  strategy: {rollingUpdate: {maxSurge: 1, maxUnavailable: 0}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: echo
        image: mast.dev/echo
        ports: [{name: http, containerPort: 8080}]
        readinessProbe:
          httpGet: {path: /readyz, port: http}
          periodSeconds: 1
          failureThreshold: 1
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
"#;

fn svc_field(c: &NetCluster, name: &str, path: &str) -> String {
    c.ok(&["get", "svc", name, "-o", &format!("jsonpath={{{path}}}")])
}

/// `count` requests to `url` from the node, each on its own connection;
/// how many each pod answered (`ERR <status>` for failures, where curl's
/// status is 000 when no answer came).
fn spread(url: &str, count: usize) -> BTreeMap<String, usize> {
    let answers = common::curl_many(url, count, &[]);
    let mut got = BTreeMap::new();
    for (body, code) in answers {
        let pod = match body["pod"].as_str() {
            Some(pod) => pod.to_owned(),
            None => format!("ERR {code}"),
        };
        *got.entry(pod).or_default() += 1;
    }
    got
}

/// Ask the node's DNS server (on its bridge address) one question over UDP;
/// the answers' data as text, or the response code when there are none.
fn dns(server: &str, name: &str, ty: hickory_proto::rr::RecordType) -> Vec<String> {
    use hickory_proto::op::{Message, Query};
    let mut q = Message::query();
    q.metadata.id = 7;
    q.metadata.recursion_desired = true;
    q.add_query(Query::query(
        hickory_proto::rr::Name::from_ascii(name).expect("name"),
        ty,
    ));
    let sock = std::net::UdpSocket::bind("0.0.0.0:0").expect("udp");
    sock.set_read_timeout(Some(std::time::Duration::from_secs(3)))
        .expect("timeout");
    sock.send_to(&q.to_vec().expect("encode"), (server, 53))
        .expect("send");
    let mut buf = [0u8; 4096];
    let (n, _) = sock.recv_from(&mut buf).expect("a DNS answer");
    let m = Message::from_vec(&buf[..n]).expect("decode");
    if m.answers.is_empty() {
        return vec![format!("{:?}", m.metadata.response_code)];
    }
    m.answers.iter().map(|r| r.data.to_string()).collect()
}

#[track_caller]
fn wait_endpoints(c: &NetCluster, svc: &str, n: usize) {
    assert!(
        eventually(60, || {
            let ips = c.ok(&[
                "get",
                "endpoints",
                svc,
                "-o",
                "jsonpath={.subsets[*].addresses[*].ip}",
            ]);
            ips.split_whitespace().count() == n
        }),
        "{svc} never got {n} ready endpoints: {}",
        c.ok(&["get", "endpointslices", "-o", "yaml"])
    );
}

#[test]
fn the_course_discovery_labs_verbatim() {
    let mut c = NetCluster::start(1);
    c.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: test-pod, labels: {app: test}}
spec:
  containers: [{name: echo, image: mast.dev/echo, ports: [{containerPort: 8080}]}]
---
apiVersion: v1
kind: Service
metadata: {name: test-service}
spec:
  selector: {app: test}
  ports: [{port: 8080, targetPort: 8080}]
"#,
    );
    // Pods made after the Service see its variables.
    for name in ["busybox1", "busybox"] {
        c.ok(&["run", name, "--image=busybox", "--", "sleep", "3600"]);
    }
    for name in ["test-pod", "busybox1", "busybox"] {
        wait_ready(&c, name, 60);
    }
    let vip = svc_field(&c, "test-service", ".spec.clusterIP");
    // kubectl exec -ti busybox1 -- nslookup test-service.default
    let cmd = format!(
        "KUBECONFIG={} {} exec -ti busybox1 -- nslookup test-service.default",
        c.kubeconfig.display(),
        common::KUBECTL
    );
    let out = Command::new("/usr/bin/script")
        .args(["-qec", &cmd, "/dev/null"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("script");
    // script(1) may pass its own stdin's end on as a NUL, which the TTY
    // echoes as `^@` somewhere in the output.
    let text = String::from_utf8_lossy(&out.stdout)
        .replace('\r', "")
        .replace("^@", "");
    assert!(
        text.contains(
            "Server:    10.221.0.10\nAddress 1: 10.221.0.10 kube-dns.kube-system.svc.cluster.local"
        ),
        "{text}"
    );
    assert!(
        text.contains(&format!("Name:      test-service.default\nAddress 1: {vip} test-service.default.svc.cluster.local")),
        "{text}"
    );
    // kubectl exec -ti busybox -- printenv | grep SERVICE
    let env = c.ok(&["exec", "busybox", "--", "printenv"]);
    let service: Vec<&str> = env.lines().filter(|l| l.contains("SERVICE")).collect();
    for want in [
        format!("TEST_SERVICE_SERVICE_HOST={vip}"),
        "TEST_SERVICE_SERVICE_PORT=8080".into(),
        "KUBERNETES_SERVICE_PORT_HTTPS=443".into(),
    ] {
        assert!(
            service.contains(&want.as_str()),
            "{want} missing: {service:?}"
        );
    }
    // The Service answers by name from a pod, through the search path.
    let got = c.ok(&[
        "exec",
        "busybox",
        "--",
        "curl",
        "-sS",
        "--max-time",
        "5",
        "http://test-service:8080/by-name",
    ]);
    assert!(got.contains("\"pod\":\"test-pod\""), "{got}");
    // resolv.conf as the kubelet writes it.
    let resolv = c.ok(&["exec", "busybox", "--", "cat", "/etc/resolv.conf"]);
    assert!(resolv.starts_with("nameserver 10.221.0.10\nsearch default.svc.cluster.local svc.cluster.local cluster.local"), "{resolv}");
    assert!(resolv.contains("options ndots:5"), "{resolv}");

    // Headless: one address per ready endpoint, and a name per hostname.
    c.apply(
        r#"
apiVersion: v1
kind: Service
metadata: {name: db}
spec:
  clusterIP: None
  selector: {app: test}
  ports: [{name: pg, port: 5432}]
---
apiVersion: v1
kind: Service
metadata: {name: alias}
spec:
  type: ExternalName
  externalName: test-service.default.svc.cluster.local
"#,
    );
    let pod_ip = pod_json(&c, "test-pod")["status"]["podIP"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let mut last = None;
    assert!(
        eventually(30, || {
            let o = c.kubectl(&["exec", "busybox", "--", "getent", "hosts", "db"]);
            let ok = o.stdout.contains(&pod_ip);
            last = Some(o);
            ok
        }),
        "headless Service db does not resolve to {pod_ip}: {last:?}"
    );
    let dashed = pod_ip.replace('.', "-");
    let one = c.ok(&[
        "exec",
        "busybox",
        "--",
        "getent",
        "hosts",
        &format!("{dashed}.db.default.svc.cluster.local"),
    ]);
    assert!(one.starts_with(&pod_ip), "{one}");
    // ExternalName is a CNAME, followed to the Service it names.
    let alias = c.ok(&["exec", "busybox", "--", "getent", "hosts", "alias"]);
    assert!(alias.starts_with(&vip), "{alias}");
    // SRV for named ports, over the wire; no IPv6; the Service by reverse
    // name.
    let node = c.node_address(1);
    let srv = dns(
        &node,
        "_pg._tcp.db.default.svc.cluster.local.",
        hickory_proto::rr::RecordType::SRV,
    );
    assert_eq!(
        srv,
        [format!("0 100 5432 {dashed}.db.default.svc.cluster.local.")]
    );
    let aaaa = dns(
        &node,
        "test-service.default.svc.cluster.local.",
        hickory_proto::rr::RecordType::AAAA,
    );
    assert_eq!(aaaa, ["NoError"]);
    let octets: Vec<&str> = vip.split('.').rev().collect();
    let ptr = dns(
        &node,
        &format!("{}.in-addr.arpa.", octets.join(".")),
        hickory_proto::rr::RecordType::PTR,
    );
    assert_eq!(ptr, ["test-service.default.svc.cluster.local."]);
    // Pod A records.
    let a = c.ok(&[
        "exec",
        "busybox",
        "--",
        "getent",
        "hosts",
        &format!("{dashed}.default.pod.cluster.local"),
    ]);
    assert!(a.starts_with(&pod_ip), "{a}");
    // A name that does not exist fails as nslookup says it does.
    let o = c.kubectl(&["exec", "busybox", "--", "nslookup", "nothere"]);
    assert!(
        !o.success && o.stderr.contains("can't resolve 'nothere'"),
        "{o:?}"
    );
    c.stop_and_check_clean();
}

#[test]
fn services_balance_keep_affinity_and_roll_without_dropping_a_request() {
    let mut c = NetCluster::start(2);
    c.apply(ECHO_DEPLOYMENT);
    wait_endpoints(&c, "web", 3);
    let vip = svc_field(&c, "web", ".spec.clusterIP");
    let url = format!("http://{vip}/");
    // Leave a moment for the proxy to take the last endpoint in.
    assert!(
        eventually(10, || spread(&url, 30).len() == 3),
        "{:?}",
        spread(&url, 30)
    );
    // 3000 requests through the ClusterIP reach each replica 1000 ± 150 times.
    let got = spread(&url, 3000);
    assert_eq!(got.len(), 3, "{got:?}");
    for (pod, n) in &got {
        assert!((850..=1150).contains(n), "{pod} got {n} of 3000: {got:?}");
    }
    // A pod that turns unready leaves the rotation.
    let victim = got.keys().next().expect("a pod").clone();
    let ip = pod_json(&c, &victim)["status"]["podIP"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(common::curl(&format!("http://{ip}:8080/readyz/off")).is_some());
    assert!(
        eventually(30, || !ready(&pod_json(&c, &victim))),
        "{victim} stayed ready"
    );
    assert!(
        eventually(10, || !spread(&url, 60).contains_key(&victim)),
        "{victim} still gets traffic while unready"
    );
    assert!(common::curl(&format!("http://{ip}:8080/readyz/on")).is_some());
    wait_endpoints(&c, "web", 3);
    // ClientIP affinity pins a client to one pod.
    c.ok(&[
        "patch",
        "svc",
        "web",
        "-p",
        r#"{"spec":{"sessionAffinity":"ClientIP"}}"#,
    ]);
    assert!(
        eventually(10, || spread(&url, 60).len() == 1),
        "ClientIP affinity did not pin the client"
    );
    c.ok(&[
        "patch",
        "svc",
        "web",
        "-p",
        r#"{"spec":{"sessionAffinity":"None"}}"#,
    ]);

    // A rolling update while a client sends requests: not one fails.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client = {
        let (stop, url) = (stop.clone(), url.clone());
        std::thread::spawn(move || {
            let mut all = BTreeMap::new();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                for (k, v) in spread(&url, 50) {
                    if k.starts_with("ERR") {
                        // When, to match with the agent's log
                        // (MAST_TEST_LOG=mast_agent=debug).
                        let t = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .unwrap_or_default();
                        eprintln!("rollout client: {v} × {k} in the batch ending at {:.3} s after the epoch", t.as_secs_f64());
                    }
                    *all.entry(k).or_insert(0) += v;
                }
            }
            all
        })
    };
    std::thread::sleep(std::time::Duration::from_secs(1));
    c.ok(&["set", "env", "deployment/web", "VERSION=v2"]);
    c.ok(&["rollout", "status", "deployment/web", "--timeout=120s"]);
    std::thread::sleep(std::time::Duration::from_secs(2));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let all = client.join().expect("client");
    let total: usize = all.values().sum();
    assert!(
        !all.keys().any(|k| k.starts_with("ERR")),
        "failed requests during the rollout: {all:?}"
    );
    assert!(
        all.len() >= 6 && total > 200,
        "the client saw too little of the rollout: {all:?}"
    );
    let after = c.ok(&["exec", "deploy/web", "--", "printenv", "VERSION"]);
    assert_eq!(after.trim(), "v2");
    c.stop_and_check_clean();
}

#[test]
fn node_ports_load_balancers_ingress_and_refusals() {
    let n = 3;
    let mut c = NetCluster::start(n);
    c.apply(ECHO_DEPLOYMENT);
    c.ok(&[
        "expose",
        "deployment",
        "web",
        "--name=web-np",
        "--type=NodePort",
        "--port=80",
        "--target-port=8080",
    ]);
    c.ok(&[
        "expose",
        "deployment",
        "web",
        "--name=web-lb",
        "--type=LoadBalancer",
        "--port=8000",
        "--target-port=8080",
    ]);
    wait_endpoints(&c, "web-lb", 3);
    // NodePort on the node's address.
    let np = svc_field(&c, "web-np", ".spec.ports[0].nodePort");
    let url = format!("http://{}:{np}/", c.node_address(n));
    assert!(
        eventually(10, || common::curl(&url).is_some()),
        "NodePort {url} does not answer:\n{}",
        c.unreachable(&url)
    );
    // LoadBalancer: an EXTERNAL-IP from the pool, shown by kubectl, served
    // on the node.
    assert!(eventually(30, || !svc_field(
        &c,
        "web-lb",
        ".status.loadBalancer.ingress[0].ip"
    )
    .is_empty()));
    let lb = svc_field(&c, "web-lb", ".status.loadBalancer.ingress[0].ip");
    assert!(lb.starts_with("10.243.0."), "{lb}");
    let table = c.ok(&["get", "svc", "web-lb"]);
    assert!(
        table.contains(&lb) && table.contains("EXTERNAL-IP"),
        "{table}"
    );
    let url = format!("http://{lb}:8000/");
    assert!(
        eventually(10, || common::curl(&url).is_some()),
        "load balancer {url} does not answer:\n{}",
        c.unreachable(&url)
    );
    // An address the pool cannot give is an event on the Service, and no
    // EXTERNAL-IP.
    c.apply(
        "apiVersion: v1\nkind: Service\nmetadata: {name: web-taken}\nspec:\n  type: LoadBalancer\n  loadBalancerIP: 192.0.2.7\n  selector: {app: web}\n  ports: [{port: 8001, targetPort: 8080}]\n",
    );
    assert!(
        eventually(30, || c
            .ok(&[
                "get",
                "events",
                "--field-selector=involvedObject.name=web-taken"
            ])
            .contains("AllocationFailed")),
        "{}",
        c.ok(&["describe", "svc", "web-taken"])
    );
    let described = c.ok(&["describe", "svc", "web-taken"]);
    assert!(
        described.contains("not a free address of the load-balancer pool 10.243.0.0/24"),
        "{described}"
    );
    assert!(svc_field(&c, "web-taken", ".status.loadBalancer.ingress").is_empty());
    // A Service that selects nothing refuses at once, from the node and
    // from a pod; so does an address of the range that is no Service.
    c.ok(&["create", "service", "clusterip", "nothing", "--tcp=80:8080"]);
    let vip = svc_field(&c, "nothing", ".spec.clusterIP");
    let refused = |url: &str| {
        let o = Command::new("curl")
            .args(["-sS", "--max-time", "5", url])
            .output()
            .expect("curl");
        o.status.code() == Some(7)
    };
    assert!(eventually(10, || refused(&format!("http://{vip}/"))));
    assert!(refused(&format!("http://10.{}.255.254/", 220 + n)));
    c.ok(&["run", "bb", "--image=busybox", "--", "sleep", "3600"]);
    wait_ready(&c, "bb", 60);
    let o = c.kubectl(&[
        "exec",
        "bb",
        "--",
        "curl",
        "-sS",
        "--max-time",
        "5",
        &format!("http://{vip}/"),
    ]);
    assert!(o.stderr.contains("exit code 7"), "{o:?}");
    // The course's Ingress, verbatim (extensions/v1beta1), once its
    // backends exist: host and path fan-out on the node's port 80.
    for name in ["first", "second"] {
        c.ok(&[
            "create",
            "deployment",
            name,
            "--image=mast.dev/echo",
            "--port=8080",
        ]);
        c.ok(&[
            "expose",
            "deployment",
            name,
            &format!("--name={name}service"),
            "--port=80",
            "--target-port=8080",
        ]);
    }
    let o = c.kubectl(&[
        "apply",
        "-f",
        common::samples()
            .join("seed/ingress.yaml")
            .to_str()
            .unwrap_or_default(),
    ]);
    assert!(o.success && o.stderr.contains("deprecated"), "{o:?}");
    wait_endpoints(&c, "firstservice", 1);
    wait_endpoints(&c, "secondservice", 1);
    let node = c.node_address(n);
    let get = |host: &str, path: &str| {
        let o = Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "5",
                "-H",
                &format!("Host: {host}"),
                "-w",
                "\n%{http_code}",
            ])
            .arg(format!("http://{node}{path}"))
            .output()
            .expect("curl");
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    assert!(
        // Generous: the node's Ingress controller sees the EndpointSlice
        // through its own watch, which lags on a loaded machine.
        // Both backends: the API having endpoints for each does not mean
        // the controller has seen them yet.
        eventually(60, || get("bar.foo.com", "/first")
            .contains("\"pod\":\"first-")
            && get("bar.foo.com", "/second").contains("\"pod\":\"second-")),
        "{}\n{}",
        get("bar.foo.com", "/first"),
        get("bar.foo.com", "/second")
    );
    let second = get("bar.foo.com", "/second/deeper");
    assert!(
        second.contains("\"pod\":\"second-") && second.contains("\"path\":\"/second/deeper\""),
        "{second}"
    );
    assert!(second.contains("x-forwarded-for"), "{second}");
    assert!(
        get("other.com", "/first").ends_with("\n404"),
        "{}",
        get("other.com", "/first")
    );
    assert!(get("bar.foo.com", "/firstclass").ends_with("\n404"));
    // Its address is the node's, as kubectl shows it.
    assert!(
        eventually(20, || c
            .ok(&["get", "ingress", "test-ingress"])
            .contains(&node)),
        "{}",
        c.ok(&["get", "ingress", "test-ingress", "-o", "yaml"])
    );
    assert!(c.ok(&["get", "ingressclass"]).contains("mast.dev/ingress"));
    // kubectl create ingress (sent as protobuf) keeps every field.
    c.ok(&[
        "create",
        "ingress",
        "made",
        "--rule=made.local/api*=firstservice:80",
    ]);
    let made = c.ok(&["get", "ingress", "made", "-o", "jsonpath={.spec.rules[0].http.paths[0].backend.service.name} {.spec.rules[0].http.paths[0].pathType}"]);
    assert_eq!(made, "firstservice Prefix");
    assert!(eventually(20, || get("made.local", "/api/x")
        .contains("\"pod\":\"first-")));
    // TLS from a Secret, chosen by SNI; a default backend for the rest.
    let dir = tempfile::tempdir().expect("tmp");
    let (crt, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let gen = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=secure.foo.com",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&crt)
        .output()
        .expect("openssl");
    assert!(gen.status.success(), "{gen:?}");
    c.ok(&[
        "create",
        "secret",
        "tls",
        "secure-tls",
        &format!("--cert={}", crt.display()),
        &format!("--key={}", key.display()),
    ]);
    c.apply(
        r#"
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: secure}
spec:
  ingressClassName: mast
  defaultBackend: {service: {name: secondservice, port: {number: 80}}}
  tls: [{hosts: [secure.foo.com], secretName: secure-tls}]
  rules:
  - host: secure.foo.com
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: firstservice, port: {number: 80}}}}
"#,
    );
    let https = |host: &str| {
        let o = Command::new("curl")
            .args(["-sS", "-v", "--max-time", "5", "--cacert"])
            .arg(&crt)
            .args(["--resolve", &format!("{host}:443:{node}")])
            .arg(format!("https://{host}/tls"))
            .output()
            .expect("curl");
        (
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    assert!(
        eventually(20, || https("secure.foo.com")
            .0
            .contains("\"pod\":\"first-")),
        "{:?}",
        https("secure.foo.com")
    );
    assert!(https("secure.foo.com").1.contains("CN=secure.foo.com"));
    // Another host: the default backend, over plain HTTP.
    assert!(get("unknown.example", "/x").contains("\"pod\":\"second-"));
    // Two containers of one pod talk over localhost.
    c.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: pair}
spec:
  containers:
  - {name: server, image: mast.dev/echo, env: [{name: POD_IP, value: 127.0.0.1}]}
  - {name: client, image: busybox, command: [sleep, "3600"]}
"#,
    );
    wait_ready(&c, "pair", 60);
    let got = c.ok(&[
        "exec",
        "pair",
        "-c",
        "client",
        "--",
        "curl",
        "-sS",
        "--max-time",
        "5",
        "http://localhost:8080/local",
    ]);
    assert!(got.contains("\"pod\":\"pair\""), "{got}");
    c.stop_and_check_clean();
}
