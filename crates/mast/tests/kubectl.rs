//! End-to-end: the real kubectl (1.27 to 1.33) against a real `mast server`,
//! with the course's manifests and Istio's Bookinfo samples.

mod common;

use common::*;
use std::process::{Command, Stdio};

fn seed(file: &str) -> String {
    samples().join("seed").join(file).display().to_string()
}

fn bookinfo(file: &str) -> String {
    samples().join("bookinfo").join(file).display().to_string()
}

fn install_istio_crds(c: &Cluster) {
    let f = fixture("istio-crds.yaml").display().to_string();
    c.ok(&["apply", "-f", &f]);
    c.ok(&[
        "wait",
        "--for",
        "condition=established",
        "--timeout=30s",
        "crd/virtualservices.networking.istio.io",
        "crd/destinationrules.networking.istio.io",
        "crd/gateways.networking.istio.io",
    ]);
}

/// Every line of a second apply must say `unchanged`.
fn assert_unchanged(out: &str, file: &str) {
    for line in out.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            line.ends_with(" unchanged"),
            "second apply of {file} changed something: {line}"
        );
    }
}

#[test]
fn course_manifests_apply_twice_and_behave_as_the_course_shows() {
    let c = Cluster::start();
    install_istio_crds(&c);
    let files: Vec<String> = [
        "multipod.yaml",
        "nodeport-service.yaml",
        "sampleservice.yaml",
        "ingress.yaml",
    ]
    .iter()
    .map(|f| seed(f))
    .chain(
        [
            "bookinfo.yaml",
            "destination-rule-all.yaml",
            "virtual-service-reviews-jason-v2-v3.yaml",
            "virtual-service-ratings-test-delay.yaml",
            "bookinfo-gateway.yaml",
        ]
        .iter()
        .map(|f| bookinfo(f)),
    )
    .collect();
    for f in &files {
        let first = c.ok(&["apply", "-f", f]);
        assert!(first.contains(" created"), "first apply of {f}: {first}");
        let second = c.ok(&["apply", "-f", f]);
        assert_unchanged(&second, f);
    }
    // The legacy Ingress is accepted with a deprecation warning, stored as v1.
    let o = c.kubectl(&["apply", "-f", &seed("ingress.yaml")]);
    assert!(
        o.stderr
            .contains("Warning: extensions/v1beta1 Ingress is deprecated"),
        "{}",
        o.stderr
    );
    let ing = c.ok(&[
        "get",
        "ingress",
        "test-ingress",
        "-o",
        "jsonpath={.apiVersion} {.spec.rules[0].http.paths[1].backend.service.name}",
    ]);
    assert_eq!(ing, "networking.k8s.io/v1 secondservice");

    // get, get -o yaml, describe, as the course runs them.
    let pods = c.ok(&["get", "pods"]);
    assert!(pods.starts_with("NAME"), "{pods}");
    let header: Vec<&str> = pods.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]);
    assert!(pods.contains("test-tomcat-pod   0/2     Pending"), "{pods}");
    let svcs = c.ok(&["get", "svc"]);
    let header: Vec<&str> = svcs.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "TYPE",
            "CLUSTER-IP",
            "EXTERNAL-IP",
            "PORT(S)",
            "AGE"
        ]
    );
    assert!(
        svcs.lines().any(|l| l.starts_with("wordpress")
            && l.contains("LoadBalancer")
            && l.contains("80:3")),
        "{svcs}"
    );
    assert!(
        svcs.lines().any(|l| l.starts_with("test-service")
            && l.contains("NodePort")
            && l.contains("80:30080/TCP")),
        "{svcs}"
    );
    let yaml = c.ok(&["get", "pod", "test-tomcat-pod", "-o", "yaml"]);
    assert!(
        yaml.contains("image: tomcat")
            && yaml.contains("resourceVersion:")
            && yaml.contains("uid:"),
        "{yaml}"
    );
    let desc = c.ok(&["describe", "pod", "test-tomcat-pod"]);
    assert!(
        desc.contains("Name:")
            && desc.contains("test-tomcat-pod")
            && desc.contains("Image:")
            && desc.contains("tomcat"),
        "{desc}"
    );
    let desc = c.ok(&["describe", "svc", "test-service"]);
    assert!(
        desc.contains("NodePort:") && desc.contains("30080/TCP"),
        "{desc}"
    );
    let deploy = c.ok(&["get", "deploy"]);
    let header: Vec<&str> = deploy.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]);
    c.ok(&["describe", "deployment", "reviews-v2"]);
    let vs = c.ok(&["get", "virtualservices"]);
    assert!(
        vs.contains("reviews") && vs.contains("ratings") && vs.contains("bookinfo"),
        "{vs}"
    );
    // The v1alpha3 manifests are stored as v1 and served in every version.
    let v = c.ok(&[
        "get",
        "virtualservices.v1alpha3.networking.istio.io",
        "reviews",
        "-o",
        "jsonpath={.apiVersion}",
    ]);
    assert_eq!(v, "networking.istio.io/v1alpha3");

    // label, selectors, --show-labels.
    assert!(c
        .ok(&["label", "pod", "test-tomcat-pod", "tier=frontend"])
        .contains("labeled"));
    let sel = c.ok(&["get", "pods", "-l", "tier=frontend"]);
    assert!(sel.contains("test-tomcat-pod"), "{sel}");
    assert!(c.ok(&["get", "pods", "-l", "tier=backend"]).is_empty());
    let none = c.kubectl(&["get", "pods", "-l", "tier=backend"]);
    assert!(
        none.stderr
            .contains("No resources found in default namespace."),
        "{}",
        none.stderr
    );
    assert!(c
        .ok(&["get", "pods", "-l", "tier in (frontend,web),!gone"])
        .contains("test-tomcat-pod"));
    assert!(c
        .ok(&["get", "pods", "--show-labels"])
        .contains("tier=frontend"));
    let ks = c.kubectl(&["get", "pods", "--show-labels", "--namespace=kube-system"]);
    assert!(
        ks.success
            && ks
                .stderr
                .contains("No resources found in kube-system namespace."),
        "{ks:?}"
    );

    // delete -f, then the objects are gone.
    for f in files.iter().rev() {
        let out = c.ok(&["delete", "-f", f]);
        assert!(out.contains(" deleted"), "{out}");
    }
    let gone = c.fails(&["get", "pod", "test-tomcat-pod"]);
    assert!(
        gone.contains("Error from server (NotFound): pods \"test-tomcat-pod\" not found"),
        "{gone}"
    );
    let gone = c.fails(&["get", "service", "test-service"]);
    assert!(
        gone.contains("services \"test-service\" not found"),
        "{gone}"
    );
}

#[test]
fn watch_streams_changes_made_by_another_kubectl() {
    let c = Cluster::start();
    let mut watcher = Background(
        Command::new(KUBECTL)
            .args(["get", "pods", "--watch"])
            .env("KUBECONFIG", &c.kubeconfig)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start kubectl --watch"),
    );
    let stdout = watcher.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    std::thread::sleep(std::time::Duration::from_millis(500));
    c.ok(&["run", "watched", "--image=busybox", "--restart=Never"]);
    c.ok(&["label", "pod", "watched", "step=two"]);
    c.ok(&["delete", "pod", "watched"]);
    let mut seen = vec![];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::time::Instant::now() < deadline
        && seen
            .iter()
            .filter(|l: &&String| l.starts_with("watched"))
            .count()
            < 3
    {
        if let Ok(l) = rx.recv_timeout(std::time::Duration::from_millis(200)) {
            seen.push(l);
        }
    }
    let rows: Vec<&String> = seen.iter().filter(|l| l.starts_with("watched")).collect();
    assert!(
        rows.len() >= 3,
        "expected create, update and delete rows, got {seen:?}"
    );
    assert!(rows[0].contains("Pending"), "{rows:?}");
}

#[test]
fn every_installed_kubectl_from_1_27_to_1_33() {
    let c = Cluster::start();
    for minor in 27..=33 {
        let k = kubectl_version(minor);
        assert!(k.exists(), "{} is missing", k.display());
        let run = |args: &[&str]| {
            let o = c.kubectl_with(&k, args);
            assert!(
                o.success,
                "kubectl 1.{minor} {args:?}: {}\n{}",
                o.stdout, o.stderr
            );
            o.stdout
        };
        let ns = format!("v1-{minor}");
        run(&["create", "namespace", &ns]);
        for f in ["multipod.yaml", "sampleservice.yaml", "ingress.yaml"] {
            assert!(run(&["apply", "-n", &ns, "-f", &seed(f)]).contains("created"));
            assert_unchanged(&run(&["apply", "-n", &ns, "-f", &seed(f)]), f);
        }
        assert!(run(&["get", "pods", "-n", &ns]).contains("test-tomcat-pod"));
        run(&["describe", "pod", "-n", &ns, "test-tomcat-pod"]);
        run(&[
            "label",
            "pod",
            "-n",
            &ns,
            "test-tomcat-pod",
            "tier=frontend",
        ]);
        assert!(run(&[
            "get",
            "pods",
            "-n",
            &ns,
            "-l",
            "tier=frontend",
            "--show-labels"
        ])
        .contains("tier=frontend"));
        assert!(run(&["get", "svc", "-n", &ns, "wordpress"]).contains("LoadBalancer"));
        assert!(run(&["api-resources"]).contains("deployments"));
        assert!(run(&["explain", "pods.spec.containers"]).contains("image"));
        for f in ["multipod.yaml", "sampleservice.yaml", "ingress.yaml"] {
            assert!(run(&["delete", "-n", &ns, "-f", &seed(f)]).contains("deleted"));
        }
    }
}

#[test]
fn bad_input_gets_clear_statuses_and_writes_nothing() {
    let c = Cluster::start();
    let dir = c.dir.path();
    let write = |name: &str, body: &str| {
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        p.display().to_string()
    };
    let no_image = write(
        "noimage.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: x\nspec:\n  containers:\n  - name: c\n",
    );
    let e = c.fails(&["apply", "-f", &no_image]);
    assert!(
        e.contains("The Pod \"x\" is invalid: spec.containers[0].image: Required value"),
        "{e}"
    );
    let bad_name = write(
        "badname.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: Bad_Name\n",
    );
    let e = c.fails(&["create", "-f", &bad_name]);
    assert!(
        e.contains("metadata.name: Invalid value: \"Bad_Name\": a lowercase RFC 1123 subdomain"),
        "{e}"
    );
    let unknown = write("unknown.yaml", "apiVersion: v1\nkind: Pod\nmetadata:\n  name: typo-pod\nspec:\n  containers:\n  - name: c\n    image: busybox\n    imagee: typo\n");
    let e = c.fails(&["apply", "-f", &unknown]);
    assert!(
        e.contains("unknown field \"spec.containers[0].imagee\""),
        "{e}"
    );
    let bad_port = write(
        "badport.yaml",
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: s\nspec:\n  ports:\n  - port: 70000\n",
    );
    let e = c.fails(&["apply", "-f", &bad_port]);
    assert!(
        e.contains(
            "spec.ports[0].port: Invalid value: 70000: must be between 1 and 65535, inclusive"
        ),
        "{e}"
    );
    let bad_kind = write(
        "badkind.yaml",
        "apiVersion: v1\nkind: Gizmo\nmetadata:\n  name: g\n",
    );
    let e = c.fails(&["apply", "-f", &bad_kind]);
    assert!(
        e.contains("no matches for kind \"Gizmo\" in version \"v1\""),
        "{e}"
    );
    // None of the rejected objects exist.
    for (kind, name) in [("pod", "x"), ("pod", "typo-pod"), ("svc", "s")] {
        assert!(c.fails(&["get", kind, name]).contains("NotFound"));
    }
    // A requested ClusterIP that is taken is refused clearly.
    let svc1 = write("svc1.yaml", "apiVersion: v1\nkind: Service\nmetadata:\n  name: a\nspec:\n  clusterIP: 10.43.7.7\n  ports:\n  - port: 80\n");
    let svc2 = write("svc2.yaml", "apiVersion: v1\nkind: Service\nmetadata:\n  name: b\nspec:\n  clusterIP: 10.43.7.7\n  ports:\n  - port: 80\n");
    c.ok(&["create", "-f", &svc1]);
    let e = c.fails(&["create", "-f", &svc2]);
    assert!(e.contains("provided IP is already allocated"), "{e}");
    let np = write("np.yaml", "apiVersion: v1\nkind: Service\nmetadata:\n  name: np-svc\nspec:\n  type: NodePort\n  ports:\n  - port: 80\n    nodePort: 80\n");
    let e = c.fails(&["create", "-f", &np]);
    assert!(
        e.contains(
            "provided port is not in the valid range. The range of valid ports is 30000-32767"
        ),
        "{e}"
    );

    // Raw HTTP: no credentials, malformed JSON, wrong content type, too big.
    let base = c.url.clone();
    let o = c.curl(
        false,
        &[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("{base}/api/v1/namespaces"),
        ],
    );
    assert_eq!(o.stdout, "401");
    let url = format!("{base}/api/v1/namespaces/default/configmaps");
    let o = c.curl(
        true,
        &[
            "-w",
            "\n%{http_code}",
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "-d",
            "{\"apiVersion\": \"v1\", \"kind\": ",
            &url,
        ],
    );
    assert!(
        o.stdout.ends_with("400") && o.stdout.contains("\"kind\":\"Status\""),
        "{}",
        o.stdout
    );
    let o = c.curl(
        true,
        &[
            "-w",
            "\n%{http_code}",
            "-X",
            "POST",
            "-H",
            "Content-Type: text/csv",
            "-d",
            "a,b",
            &url,
        ],
    );
    assert!(o.stdout.ends_with("415"), "{}", o.stdout);
    let big = dir.join("big.json");
    let filler = "x".repeat(3 * 1024 * 1024 + 10);
    std::fs::write(&big, format!("{{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"metadata\":{{\"name\":\"big\"}},\"data\":{{\"a\":\"{filler}\"}}}}")).unwrap();
    let o = c.curl(
        true,
        &[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &format!("@{}", big.display()),
            &url,
        ],
    );
    assert_eq!(o.stdout, "413");
    assert!(c.fails(&["get", "configmap", "big"]).contains("NotFound"));
}

#[test]
fn updates_patches_and_subresources() {
    let c = Cluster::start();
    c.ok(&[
        "create",
        "deployment",
        "web",
        "--image=nginx:1.25",
        "--replicas=2",
    ]);
    // Optimistic concurrency: a stale resourceVersion is a conflict.
    let stale = c.ok(&["get", "deploy", "web", "-o", "json"]);
    c.ok(&["label", "deploy", "web", "bump=1"]);
    let p = c.dir.path().join("stale.json");
    std::fs::write(&p, stale).unwrap();
    let e = c.fails(&["replace", "-f", p.to_str().unwrap()]);
    assert!(e.contains("the object has been modified; please apply your changes to the latest version and try again"), "{e}");
    // scale subresource
    c.ok(&["scale", "deployment", "web", "--replicas=5"]);
    assert_eq!(
        c.ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"]),
        "5"
    );
    // patches of every type
    c.ok(&[
        "patch",
        "deploy",
        "web",
        "--type=merge",
        "-p",
        "{\"metadata\":{\"labels\":{\"m\":\"1\"}}}",
    ]);
    c.ok(&[
        "patch",
        "deploy",
        "web",
        "--type=json",
        "-p",
        "[{\"op\":\"add\",\"path\":\"/metadata/labels/j\",\"value\":\"2\"}]",
    ]);
    c.ok(&["patch", "deploy", "web", "-p", "{\"spec\":{\"template\":{\"spec\":{\"containers\":[{\"name\":\"nginx\",\"image\":\"nginx:1.26\"}]}}}}"]);
    let out = c.ok(&["get", "deploy", "web", "-o", "jsonpath={.metadata.labels.m}{.metadata.labels.j} {.spec.template.spec.containers[0].image} {.spec.template.spec.containers[0].name} {.metadata.generation}"]);
    assert_eq!(out, "12 nginx:1.26 nginx 3");
    let e = c.fails(&[
        "patch",
        "deploy",
        "web",
        "--type=json",
        "-p",
        "[{\"op\":\"remove\",\"path\":\"/nope\"}]",
    ]);
    assert!(
        e.contains("The request is invalid") && e.contains("/nope"),
        "{e}"
    );
    // status subresource: updates to the main resource ignore status
    c.ok(&[
        "patch",
        "deploy",
        "web",
        "--type=merge",
        "-p",
        "{\"status\":{\"replicas\":9}}",
    ]);
    assert_eq!(
        c.ok(&["get", "deploy", "web", "-o", "jsonpath={.status.replicas}"]),
        ""
    );
    c.ok(&[
        "patch",
        "deploy",
        "web",
        "--subresource=status",
        "--type=merge",
        "-p",
        "{\"status\":{\"replicas\":9}}",
    ]);
    assert_eq!(
        c.ok(&["get", "deploy", "web", "-o", "jsonpath={.status.replicas}"]),
        "9"
    );
    // server-side apply: conflicts with another manager unless forced
    let f = c.dir.path().join("ssa.yaml");
    std::fs::write(
        &f,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ssa\ndata:\n  a: one\n",
    )
    .unwrap();
    c.ok(&[
        "apply",
        "--server-side",
        "--field-manager=alice",
        "-f",
        f.to_str().unwrap(),
    ]);
    std::fs::write(
        &f,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ssa\ndata:\n  a: two\n",
    )
    .unwrap();
    let e = c.fails(&[
        "apply",
        "--server-side",
        "--field-manager=bob",
        "-f",
        f.to_str().unwrap(),
    ]);
    assert!(e.contains("conflict with \"alice\""), "{e}");
    c.ok(&[
        "apply",
        "--server-side",
        "--field-manager=bob",
        "--force-conflicts",
        "-f",
        f.to_str().unwrap(),
    ]);
    assert_eq!(
        c.ok(&["get", "cm", "ssa", "-o", "jsonpath={.data.a}"]),
        "two"
    );
    let mf = c.ok(&["get", "cm", "ssa", "-o", "json", "--show-managed-fields"]);
    assert!(
        mf.contains("\"manager\": \"bob\"") && mf.contains("\"operation\": \"Apply\""),
        "{mf}"
    );
}

#[test]
fn finalizers_generate_name_pagination_and_restart() {
    let mut c = Cluster::start();
    let f = c.dir.path().join("fin.yaml");
    std::fs::write(&f, "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: held\n  finalizers: [example.com/hold]\n").unwrap();
    c.ok(&["create", "-f", f.to_str().unwrap()]);
    c.ok(&["delete", "cm", "held", "--wait=false"]);
    let ts = c.ok(&[
        "get",
        "cm",
        "held",
        "-o",
        "jsonpath={.metadata.deletionTimestamp}",
    ]);
    assert!(
        !ts.is_empty(),
        "a finalizer keeps the object, marked for deletion"
    );
    c.ok(&[
        "patch",
        "cm",
        "held",
        "--type=merge",
        "-p",
        "{\"metadata\":{\"finalizers\":null}}",
    ]);
    assert!(eventually(5, || !c.kubectl(&["get", "cm", "held"]).success));

    let g = c.dir.path().join("gen.yaml");
    std::fs::write(
        &g,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  generateName: job-\n",
    )
    .unwrap();
    let out = c.ok(&["create", "-f", g.to_str().unwrap()]);
    assert!(
        out.starts_with("configmap/job-")
            && out.trim().len() == "configmap/job-xxxxx created".len(),
        "{out}"
    );

    for i in 0..7 {
        c.ok(&[
            "create",
            "configmap",
            &format!("page-{i}"),
            "--from-literal=k=v",
        ]);
    }
    let all = c.ok(&["get", "cm", "--chunk-size=2", "-o", "name"]);
    assert_eq!(
        all.lines().filter(|l| l.contains("page-")).count(),
        7,
        "{all}"
    );

    // A namespace is emptied by the namespace controller, then removed.
    let _ctrl = c.component(&["controllers"]);
    c.ok(&["create", "namespace", "scratch"]);
    c.ok(&["create", "configmap", "x", "-n", "scratch"]);
    c.ok(&["delete", "namespace", "scratch"]);
    assert!(c.fails(&["get", "ns", "scratch"]).contains("NotFound"));
    let e = c.fails(&["delete", "namespace", "default"]);
    assert!(e.contains("this namespace may not be deleted"), "{e}");

    // The same data dir resumes the same cluster after a crash.
    let rv_before: i64 = c
        .ok(&[
            "get",
            "cm",
            "page-6",
            "-o",
            "jsonpath={.metadata.resourceVersion}",
        ])
        .parse()
        .unwrap();
    c.crash_and_restart();
    assert_eq!(
        c.ok(&["get", "cm", "page-6", "-o", "jsonpath={.data.k}"]),
        "v"
    );
    c.ok(&["create", "configmap", "after"]);
    let rv_after: i64 = c
        .ok(&[
            "get",
            "cm",
            "after",
            "-o",
            "jsonpath={.metadata.resourceVersion}",
        ])
        .parse()
        .unwrap();
    assert!(rv_after > rv_before);
}

#[test]
fn custom_resources_are_validated_by_their_schema() {
    let c = Cluster::start();
    let crd = c.dir.path().join("crd.yaml");
    std::fs::write(&crd, r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
spec:
  group: example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, shortNames: [wd]}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}, scale: {specReplicasPath: .spec.replicas, statusReplicasPath: .status.replicas}}
    additionalPrinterColumns:
    - {name: Size, type: integer, jsonPath: .spec.size}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [size]
            properties:
              size: {type: integer, minimum: 1}
              replicas: {type: integer}
              color: {type: string, enum: [red, blue]}
          status:
            type: object
            properties:
              replicas: {type: integer}
"#).unwrap();
    c.ok(&["apply", "-f", crd.to_str().unwrap()]);
    c.ok(&[
        "wait",
        "--for",
        "condition=established",
        "crd/widgets.example.com",
    ]);
    let w = |name: &str, spec: &str| {
        let p = c.dir.path().join(format!("{name}.yaml"));
        std::fs::write(&p, format!("apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: {name}\nspec: {spec}\n")).unwrap();
        p.display().to_string()
    };
    c.ok(&[
        "apply",
        "-f",
        &w("good", "{size: 3, color: red, replicas: 1}"),
    ]);
    let table = c.ok(&["get", "wd"]);
    assert!(table.contains("SIZE") && table.contains("good"), "{table}");
    let e = c.fails(&["apply", "-f", &w("small", "{size: 0}")]);
    assert!(
        e.contains("spec.size") && e.contains("greater than or equal to 1"),
        "{e}"
    );
    let e = c.fails(&["apply", "-f", &w("green", "{size: 2, color: green}")]);
    assert!(e.contains("Unsupported value: \"green\""), "{e}");
    let e = c.fails(&["apply", "-f", &w("nosize", "{color: red}")]);
    assert!(e.contains("spec.size: Required value"), "{e}");
    let e = c.fails(&["apply", "-f", &w("typo", "{size: 2, colour: red}")]);
    assert!(e.contains("unknown field \"spec.colour\""), "{e}");
    c.ok(&["scale", "widget", "good", "--replicas=4"]);
    assert_eq!(
        c.ok(&["get", "widget", "good", "-o", "jsonpath={.spec.replicas}"]),
        "4"
    );
    // Deleting the CRD removes its objects and stops serving the type.
    c.ok(&["delete", "crd", "widgets.example.com"]);
    assert!(eventually(10, || {
        let e = c.kubectl(&["get", "widgets"]).stderr;
        e.contains("the server doesn't have a resource type \"widgets\"")
            || e.contains("the server could not find the requested resource")
    }));
}

#[test]
fn raw_api_watch_bookmarks_deletecollection_pagination_binding() {
    let c = Cluster::start();
    for i in 0..5 {
        let tier = if i % 2 == 0 { "front" } else { "back" };
        c.ok(&[
            "run",
            &format!("p{i}"),
            "--image=busybox",
            "--restart=Never",
            "-l",
            &format!("tier={tier}"),
        ]);
    }
    let base = format!("{}/api/v1/namespaces/default/pods", c.url);
    // Pagination: limit, continue and remainingItemCount.
    let o = c.curl(true, &[&format!("{base}?limit=2")]);
    let page: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    assert_eq!(page["metadata"]["remainingItemCount"], 3);
    let cont = page["metadata"]["continue"].as_str().unwrap().to_owned();
    let o = c.curl(true, &[&format!("{base}?limit=10&continue={cont}")]);
    let rest: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(rest["items"].as_array().unwrap().len(), 3);
    // Unsupported field selectors are refused as Kubernetes does.
    let o = c.curl(
        true,
        &[
            "-w",
            "\n%{http_code}",
            &format!("{base}?fieldSelector=spec.bogus%3Dx"),
        ],
    );
    assert!(
        o.stdout.contains("field label not supported: spec.bogus") && o.stdout.ends_with("400"),
        "{}",
        o.stdout
    );
    // Binding assigns a node; spec.nodeName field selectors then find it.
    let bind = r#"{"apiVersion":"v1","kind":"Binding","metadata":{"name":"p0"},"target":{"apiVersion":"v1","kind":"Node","name":"node-a"}}"#;
    let o = c.curl(
        true,
        &[
            "-w",
            "\n%{http_code}",
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "-d",
            bind,
            &format!("{base}/p0/binding"),
        ],
    );
    assert!(o.stdout.ends_with("201"), "{}", o.stdout);
    let o = c.curl(
        true,
        &[
            "-w",
            "\n%{http_code}",
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "-d",
            bind,
            &format!("{base}/p0/binding"),
        ],
    );
    assert!(
        o.stdout.contains("is already assigned to node") && o.stdout.ends_with("409"),
        "{}",
        o.stdout
    );
    let on_node = c.ok(&[
        "get",
        "pods",
        "--field-selector",
        "spec.nodeName=node-a",
        "-o",
        "name",
    ]);
    assert_eq!(on_node.trim(), "pod/p0");
    // Watch with bookmarks (sent every 10 s) ends at timeoutSeconds.
    let o = c.curl(
        true,
        &[
            "-m",
            "20",
            &format!(
                "{base}?watch=true&allowWatchBookmarks=true&timeoutSeconds=12&resourceVersion=1"
            ),
        ],
    );
    assert!(
        o.stdout
            .lines()
            .any(|l| l.contains("\"type\":\"BOOKMARK\"")),
        "{}",
        o.stdout
    );
    assert!(o
        .stdout
        .lines()
        .any(|l| l.contains("\"type\":\"ADDED\"") && l.contains("\"p4\"")));
    // deletecollection with a label selector deletes exactly the matches.
    let o = c.curl(
        true,
        &[
            "-w",
            "\n%{http_code}",
            "-X",
            "DELETE",
            &format!("{base}?labelSelector=tier%3Dback"),
        ],
    );
    assert!(o.stdout.ends_with("200"), "{}", o.stdout);
    let left = c.ok(&["get", "pods", "-o", "name"]);
    let mut names: Vec<&str> = left.lines().collect();
    names.sort();
    assert_eq!(names, ["pod/p0", "pod/p2", "pod/p4"]);
    // /version names mast, in the shape kubectl reads.
    let v = c.ok(&["version", "-o", "json"]);
    assert!(v.contains("\"serverVersion\"") && v.contains("mast"), "{v}");
}
