//! The Istio API, with the real kubectl: Istio's CRDs are installed at
//! start, Istio's own Bookinfo YAML applies unchanged in every version it
//! uses, and what Istio's validation refuses is refused with its words.

mod common;
use common::Cluster;

fn apply_stdin(c: &Cluster, yaml: &str) -> common::Out {
    use std::io::Write;
    let mut child = std::process::Command::new(common::KUBECTL)
        .args(["apply", "-f", "-"])
        .env("KUBECONFIG", &c.kubeconfig)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(yaml.as_bytes())
        .expect("write");
    common::Out::from(child.wait_with_output().expect("kubectl"))
}

#[test]
fn istio_resources_are_served_and_validated_as_istio_does() {
    let c = Cluster::start();
    let crds = c.ok(&["get", "crd"]);
    for name in [
        "virtualservices.networking.istio.io",
        "destinationrules.networking.istio.io",
        "gateways.networking.istio.io",
        "serviceentries.networking.istio.io",
        "sidecars.networking.istio.io",
        "workloadentries.networking.istio.io",
        "peerauthentications.security.istio.io",
        "requestauthentications.security.istio.io",
        "authorizationpolicies.security.istio.io",
        "telemetries.telemetry.istio.io",
    ] {
        assert!(crds.contains(name), "{name} missing:\n{crds}");
    }
    // Istio's samples, unchanged: v1alpha3 and v1 side by side.
    let dir = common::samples().join("bookinfo");
    for f in [
        "bookinfo-gateway.yaml",
        "destination-rule-all.yaml",
        "virtual-service-reviews-jason-v2-v3.yaml",
        "virtual-service-ratings-test-delay.yaml",
    ] {
        c.ok(&["apply", "-f", dir.join(f).to_str().unwrap_or_default()]);
    }
    let vs = c.ok(&["get", "vs"]);
    assert!(
        vs.contains("bookinfo-gateway") && vs.contains("[reviews]"),
        "{vs}"
    );
    assert!(c.ok(&["get", "dr", "reviews"]).contains("HOST"));
    // Stored as v1, served as every version.
    let stored = c.ok(&[
        "get",
        "vs",
        "ratings",
        "-o",
        "jsonpath={.apiVersion} {.spec.http[0].fault.delay.fixedDelay}",
    ]);
    assert_eq!(stored, "networking.istio.io/v1 7s");
    for v in ["v1beta1", "v1alpha3"] {
        let got = c.ok(&[
            "get",
            &format!("virtualservices.{v}.networking.istio.io"),
            "reviews",
            "-o",
            "jsonpath={.apiVersion}",
        ]);
        assert_eq!(got, format!("networking.istio.io/{v}"));
    }
    let explain = c.ok(&["explain", "virtualservice.spec.http.retries"]);
    assert!(explain.contains("perTryTimeout"), "{explain}");

    // What Istio refuses, refused with a message kubectl prints.
    let vs = |http: &str| {
        format!("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: bad}}\nspec:\n  hosts: [reviews]\n  http:\n{http}")
    };
    for (yaml, want) in [
        (
            vs("  - route:\n    - destination: {host: reviews, subset: v1}\n      weight: -10\n"),
            "admission webhook \"validation.istio.io\" denied the request: configuration is invalid: http[0].route: weight -10 < 0",
        ),
        (vs("  - route:\n    - weight: 100\n"), "spec.http[0].route[0].destination: Required value"),
        (
            vs("  - rout: []\n    route:\n    - destination: {host: reviews}\n"),
            "unknown field \"spec.http[0].rout\"",
        ),
        (
            vs("  - timeout: soon\n    route:\n    - destination: {host: reviews}\n"),
            "http[0].timeout: invalid duration \"soon\"",
        ),
        (
            vs("  - match:\n    - uri: {regex: \"([\"}\n    route:\n    - destination: {host: reviews}\n"),
            "is not a valid regex",
        ),
        (
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: bad}\nspec:\n  host: reviews\n  subsets:\n  - name: v1\n".into(),
            "subset \"v1\" must have at least one label",
        ),
        (
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: bad}\nspec:\n  servers:\n  - port: {number: 80, protocol: HTTP, name: http}\n".into(),
            "server config must contain at least one host",
        ),
    ] {
        let o = apply_stdin(&c, &yaml);
        assert!(!o.success && o.stderr.contains(want), "{yaml}\nwanted {want:?}, got: {}", o.stderr);
    }
    // Nothing refused was stored.
    assert!(!c.kubectl(&["get", "vs", "bad"]).success);
    assert!(!c.kubectl(&["get", "dr", "bad"]).success);
    // Updates are checked too.
    let o = c.kubectl(&[
        "patch",
        "vs",
        "reviews",
        "--type=json",
        "-p",
        r#"[{"op":"add","path":"/spec/http/0/route/0/weight","value":-1}]"#,
    ]);
    assert!(!o.success && o.stderr.contains("weight -1 < 0"), "{o:?}");
}
