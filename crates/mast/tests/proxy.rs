//! mast proxy as a drop-in for Envoy: one bootstrap file, run by both
//! `mast proxy -c` and a real Envoy 1.40, must route alike (headers,
//! weights, timeouts, retries, direct responses, rewrites, failures).

mod common;
use std::collections::BTreeMap;
use std::process::{Command, Stdio};

fn echo(port: u16, version: &str) -> common::Background {
    common::Background(
        Command::new(env!("CARGO_BIN_EXE_mast"))
            .args(["image", "echo", "--port", &port.to_string()])
            .env("POD_IP", "127.0.0.1")
            .env("VERSION", version)
            .stdout(Stdio::null())
            .spawn()
            .expect("echo"),
    )
}

/// A server that takes any `Upgrade` request with 101, then echoes bytes
/// in upper case: a WebSocket's handshake and tunnel, as a proxy sees them.
fn upgrade_server() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for s in l.incoming().map_while(Result::ok) {
            std::thread::spawn(move || {
                use std::io::{BufRead, Read, Write};
                let mut r = std::io::BufReader::new(s);
                let mut upgrade = false;
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    upgrade |= line.to_ascii_lowercase().starts_with("upgrade: websocket");
                    if line == "\r\n" {
                        break;
                    }
                }
                let mut s = r.get_ref().try_clone().expect("clone");
                if !upgrade {
                    let _ =
                        s.write_all(b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 0\r\n\r\n");
                    return;
                }
                let _ = s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n");
                let mut buf = [0u8; 1024];
                while let Ok(n) = r.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n].to_ascii_uppercase()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

/// A WebSocket handshake through the proxy, then a message each way.
fn websocket(port: u16) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return "no connection".into();
    };
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .ok();
    let _ = s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n");
    let mut got = vec![];
    let mut buf = [0u8; 1024];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&got).into_owned();
    let status = head.lines().next().unwrap_or("").trim().to_owned();
    let _ = s.write_all(b"ping");
    let mut echo = [0u8; 4];
    let echoed = s
        .read_exact(&mut echo)
        .map(|_| String::from_utf8_lossy(&echo).into_owned());
    format!("{status} {}", echoed.unwrap_or_else(|e| e.to_string()))
}

fn bootstrap(listen: u16, relay: u16, admin: u16, v1: u16, v2: u16, dead: u16) -> String {
    // A second port nothing listens on, for a cluster with two dead endpoints.
    let dead2 = common::free_port();
    let cluster = |name: &str, port: u16| {
        format!(
            "  - name: {name}\n    connect_timeout: 1s\n    type: STATIC\n    load_assignment:\n      cluster_name: {name}\n      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}}}]}}]\n"
        )
    };
    // Clusters to v1 with upstream HTTP options.
    let protocol = |name: &str, options: &str| {
        format!(
            "{}    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        {options}\n",
            cluster(name, v1)
        )
    };
    let limited = |name: &str, limit: &str| {
        protocol(
            name,
            &format!("explicit_http_config: {{http_protocol_options: {{}}}}\n        common_http_protocol_options: {{{limit}}}"),
        )
    };
    let kept = format!(
        "{}    upstream_connection_options: {{tcp_keepalive: {{keepalive_time: 60}}}}\n",
        cluster("kept", v1)
    );
    let main = common::http_listener(
        "main",
        listen,
        "",
        r#"          request_headers_timeout: 2s
          upgrade_configs: [{upgrade_type: websocket}, {upgrade_type: CONNECT}]
          route_config:
            name: local
            virtual_hosts:
            - name: only
              domains: ["only.test"]
              routes:
              - match: {prefix: "/"}
                direct_response: {status: 201, body: {inline_string: "only"}}
            - name: none
              domains: ["none.test"]
              routes:
              - match: {path: "/only-this"}
                direct_response: {status: 200}
            - name: all
              domains: ["*"]
              routes:
              - match:
                  prefix: "/"
                  headers: [{name: x-version, string_match: {exact: v2}}]
                route: {cluster: v2}
              - match: {prefix: "/split"}
                route: {weighted_clusters: {clusters: [{name: v1, weight: 50}, {name: v2, weight: 50}]}}
              - match: {prefix: "/slow"}
                route: {cluster: v1, timeout: 0.5s}
              - match: {prefix: "/flaky"}
                route: {cluster: v1, retry_policy: {retry_on: 5xx, num_retries: 10}}
              - match: {prefix: "/direct"}
                direct_response: {status: 200, body: {inline_string: "direct"}}
              - match: {prefix: "/api/"}
                route: {cluster: v1, prefix_rewrite: "/v1/"}
              - match: {prefix: "/dead"}
                route: {cluster: dead}
              - match: {prefix: "/codes"}
                route:
                  cluster: retried
                  retry_policy:
                    retry_on: retriable-status-codes,retriable-4xx
                    retriable_status_codes: [503]
                    num_retries: 3
                    retry_back_off: {base_interval: 0.001s}
              - match: {prefix: "/ejecting"}
                route: {cluster: ejecting}
              - match: {prefix: "/pooled"}
                route: {cluster: pooled}
              - match: {prefix: "/brief"}
                route: {cluster: brief}
              - match: {prefix: "/aging"}
                route: {cluster: aging}
              - match: {prefix: "/as-asked"}
                route: {cluster: as-asked}
              - match: {prefix: "/kept"}
                route: {cluster: kept}
              - match: {prefix: "/streams"}
                route: {cluster: streams}
              - match: {prefix: "/capped"}
                route:
                  cluster: capped
                  retry_policy: {retry_on: retriable-status-codes, retriable_status_codes: [503], num_retries: 3}
              - match: {prefix: "/either"}
                route:
                  cluster: either
                  retry_policy:
                    retry_on: connect-failure
                    num_retries: 1
                    retry_host_predicate:
                    - name: envoy.retry_host_predicates.previous_hosts
                      typed_config: {"@type": type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate}
                    host_selection_retry_max_attempts: 30
              - match: {path: "/exact"}
                route: {cluster: v2}
              - match: {prefix: "/ws"}
                route: {cluster: ws}
              - match: {prefix: "/checked"}
                route: {cluster: checked}
              - match: {connect_matcher: {}}
                route: {cluster: v2, upgrade_configs: [{upgrade_type: CONNECT, connect_config: {}}]}
              - match: {prefix: "/"}
                route: {cluster: v1}
          access_log:
          - name: envoy.access_loggers.stdout
            typed_config: {"@type": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog}
"#,
    );
    // CONNECT forwarded upstream: to the main listener, which ends it.
    let relay = common::http_listener(
        "relay",
        relay,
        "",
        r#"          upgrade_configs: [{upgrade_type: CONNECT}]
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {connect_matcher: {}}
                route: {cluster: main}
"#,
    );
    format!(
        r#"admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
static_resources:
  listeners:
{main}{relay}  clusters:
{}{}{}{}{}{}{}{}{}{}{}{}  - name: either
    connect_timeout: 1s
    type: STATIC
    lb_policy: RANDOM
    load_assignment:
      cluster_name: either
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {dead}}}}}}}}}, {{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {v1}}}}}}}}}]}}]
  - name: ejecting
    connect_timeout: 1s
    type: STATIC
    outlier_detection: {{consecutive_5xx: 1, base_ejection_time: 60s, max_ejection_percent: 100}}
    common_lb_config: {{healthy_panic_threshold: {{value: 0}}}}
    load_assignment:
      cluster_name: ejecting
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {dead}}}}}}}}}, {{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {dead2}}}}}}}}}, {{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {v1}}}}}}}}}]}}]
  - name: capped
    connect_timeout: 1s
    type: STATIC
    circuit_breakers: {{thresholds: [{{max_retries: 0}}]}}
    load_assignment:
      cluster_name: capped
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {v1}}}}}}}}}]}}]
  - name: checked
    connect_timeout: 1s
    type: STATIC
    health_checks:
    - timeout: 1s
      interval: 1s
      unhealthy_threshold: 1
      healthy_threshold: 1
      http_health_check: {{path: /}}
    load_assignment:
      cluster_name: checked
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {v1}}}}}}}}}, {{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {dead}}}}}}}}}]}}]
"#,
        cluster("v1", v1),
        cluster("v2", v2),
        cluster("dead", dead),
        cluster("ws", ws_port()),
        cluster("main", listen),
        cluster("retried", v1),
        limited("pooled", "max_requests_per_connection: 2"),
        limited("brief", "idle_timeout: 0.3s"),
        limited("aging", "max_connection_duration: 0.5s"),
        protocol("as-asked", "use_downstream_protocol_config: {http_protocol_options: {}, http2_protocol_options: {}}"),
        kept,
        protocol(
            "streams",
            "explicit_http_config: {http2_protocol_options: {max_concurrent_streams: 2}}"
        ),
    )
}

/// The upgrade server's port: one for the whole test binary.
fn ws_port() -> u16 {
    static PORT: std::sync::OnceLock<u16> = std::sync::OnceLock::new();
    *PORT.get_or_init(upgrade_server)
}

use common::curl_code_body as get;

/// What one proxy does with the test's requests.
/// A counter from the admin's `/stats` (Envoy's text form).
fn stat(admin: u16, name: &str) -> u64 {
    let (_, text) = get(&format!("http://127.0.0.1:{admin}/stats"), &[]);
    text.lines()
        .find_map(|l| {
            l.strip_prefix(name)?
                .strip_prefix(": ")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// `v1`: the port of the upstream most clusters use.
fn observe(port: u16, relay: u16, admin: u16, v1_port: u16) -> BTreeMap<&'static str, String> {
    let base = format!("http://127.0.0.1:{port}");
    let version = |path: &str, extra: &[&str]| -> String {
        let (code, body) = get(&format!("{base}{path}"), extra);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        format!("{code} {}", v["version"].as_str().unwrap_or("-"))
    };
    let mut out = BTreeMap::new();
    out.insert("default", version("/", &[]));
    out.insert("header", version("/", &["-H", "x-version: v2"]));
    out.insert("exact", version("/exact", &[]));
    out.insert(
        "host",
        format!("{:?}", get(&format!("{base}/"), &["-H", "Host: only.test"])),
    );
    out.insert(
        "direct",
        format!("{:?}", get(&format!("{base}/direct"), &[])),
    );
    let (code, body) = get(&format!("{base}/api/things?x=1"), &[]);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    out.insert(
        "rewrite",
        format!("{code} {}", v["path"].as_str().unwrap_or("-")),
    );
    out.insert("timeout", get(&format!("{base}/slow?delay=2s"), &[]).0);
    // Timeouts on one kept-alive connection, in turn longer (the default
    // 15 s) and shorter (0.5 s) than the request before: mast proxy reuses
    // one timer per connection, moved to each request's deadline.
    let o = Command::new("curl")
        .args(["-s", "-w", "%{http_code} %{num_connects},"])
        .args(
            [
                "/",
                "/slow?delay=2s",
                "/slow?delay=0.1s",
                "/",
                "/slow?delay=2s",
            ]
            .into_iter()
            .flat_map(|p| {
                [
                    "-o".to_owned(),
                    "/dev/null".to_owned(),
                    format!("{base}{p}"),
                ]
            }),
        )
        .output()
        .expect("curl");
    out.insert(
        "timeouts kept alive",
        String::from_utf8_lossy(&o.stdout).into_owned(),
    );
    out.insert("websocket", websocket(port));
    // CONNECT: a tunnel to the route's cluster (v2), carrying a plain GET.
    let (code, body) = get("http://tunnel.test/", &["-p", "-x", &base]);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    out.insert(
        "connect",
        format!("{code} {}", v["version"].as_str().unwrap_or("-")),
    );
    // CONNECT forwarded by the relay listener to the main one.
    let (code, body) = get(
        "http://tunnel.test/",
        &["-p", "-x", &format!("http://127.0.0.1:{relay}")],
    );
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    out.insert(
        "connect forwarded",
        format!("{code} {}", v["version"].as_str().unwrap_or("-")),
    );
    // Active health checks: of v1 and a dead endpoint, only v1 is used
    // once the first checks are in.
    let healthy = common::eventually(10, || {
        common::count_by(
            &common::curl_many(&format!("{base}/checked"), 20, &[]),
            "version",
        )
        .get("v1")
            == Some(&20)
    });
    out.insert("health checks", healthy.to_string());
    out.insert("dead", get(&format!("{base}/dead"), &[]).0);
    // Weights: 1000 requests, each side 500 ± 75.
    let answers = common::curl_many(&format!("{base}/split"), 1000, &[]);
    let v1 = common::count_by(&answers, "version")
        .get("v1")
        .copied()
        .unwrap_or(0);
    out.insert("split", ((425..=575).contains(&v1)).to_string());
    // Retries hide a 50%-failing upstream: at least 99% succeed.
    let answers = common::curl_many(&format!("{base}/flaky"), 200, &["-H", "x-echo-fail: 50"]);
    let ok = answers.iter().filter(|(_, c)| c == "200").count();
    out.insert("retries", (ok >= 198).to_string());
    // Retries by status: 503 is listed, 409 is retriable-4xx, 500 neither.
    let mut codes = vec![];
    for status in ["503", "409", "500"] {
        let before = stat(admin, "cluster.retried.upstream_rq_retry");
        let code = get(
            &format!("{base}/codes"),
            &["-H", &format!("x-echo-status: {status}")],
        )
        .0;
        let after = stat(admin, "cluster.retried.upstream_rq_retry");
        codes.push(format!("{code} +{}", after - before));
    }
    out.insert("retried codes", codes.join(", "));
    // No room for a retry in flight (max_retries: 0): the 503 stands.
    let counter = |c: &str| stat(admin, &format!("cluster.capped.{c}"));
    let code = get(&format!("{base}/capped"), &["-H", "x-echo-status: 503"]).0;
    out.insert(
        "retry overflow",
        format!(
            "{code} retries {} overflow {}",
            counter("upstream_rq_retry"),
            counter("upstream_rq_retry_overflow")
        ),
    );
    // Outlier detection ejects both dead endpoints of three; with the panic
    // threshold at 0 (Istio's default) the one left takes everything,
    // where Envoy's default of 50% would spread requests over all three.
    // (Envoy applies an ejection on its main thread, a moment later.)
    common::curl_many(&format!("{base}/ejecting"), 10, &[]);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let answers = common::curl_many(&format!("{base}/ejecting"), 20, &[]);
    let ok = answers.iter().filter(|(_, c)| c == "200").count();
    out.insert("ejected, no panic", ok.to_string());
    // A failed connection is retried on the other endpoint (previous_hosts),
    // which random balancing alone would often pick again.
    let answers = common::curl_many(&format!("{base}/either"), 40, &[]);
    let ok = answers.iter().filter(|(_, c)| c == "200").count();
    out.insert("previous hosts", ok.to_string());
    // Upstream connections' lives (common_http_protocol_options).
    let counters = |cluster: &str, names: &[&str]| {
        names
            .iter()
            .map(|n| {
                format!(
                    "{n} {}",
                    stat(admin, &format!("cluster.{cluster}.upstream_cx_{n}"))
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    // Six requests without a body on one downstream connection, then four
    // with one: two per upstream connection.
    curl_on_one_connection(&base, "/pooled", 6, &[]);
    curl_on_one_connection(&base, "/pooled", 4, &["-d", "x"]);
    out.insert(
        "max requests per connection",
        counters("pooled", &["total", "max_requests"]),
    );
    // Idle for longer than the idle timeout, or open for longer than the
    // longest life: closed, and the next request opens another.
    for (path, cluster, reason) in [
        ("/brief", "brief", "idle_timeout"),
        ("/aging", "aging", "max_duration_reached"),
    ] {
        curl_on_one_connection(&base, path, 2, &[]);
        std::thread::sleep(std::time::Duration::from_millis(2200));
        let closed = counters(cluster, &[reason]);
        get(&format!("{base}{path}"), &[]);
        out.insert(
            reason,
            format!("{closed}; then {}", counters(cluster, &["total"])),
        );
    }
    // The downstream's protocol chooses the upstream's.
    let protocol = |extra: &[&str]| {
        let (code, body) = get(&format!("{base}/as-asked"), extra);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        format!("{code} {}", v["protocol"].as_str().unwrap_or("-"))
    };
    out.insert(
        "downstream protocol",
        format!(
            "{} / {}",
            protocol(&[]),
            protocol(&["--http2-prior-knowledge"])
        ),
    );
    // Eight slow requests at once on one HTTP/2 connection, to a cluster
    // of two streams per upstream connection: four connections.
    let o = Command::new("h2load")
        .args(["-n", "8", "-c", "1", "-m", "8"])
        .arg(format!("{base}/streams?delay=300ms"))
        .output()
        .expect("h2load");
    let text = String::from_utf8_lossy(&o.stdout);
    out.insert(
        "concurrent streams",
        format!(
            "{}; {}",
            text.lines()
                .find(|l| l.starts_with("status codes:"))
                .unwrap_or("no answer"),
            counters("streams", &["total"])
        ),
    );
    // TCP keepalive on the upstream socket the request left in the pool.
    get(&format!("{base}/kept"), &[]);
    out.insert("keepalive", keepalive_to(v1_port).to_string());
    out
}

/// `count` requests to `path`, in turn, on one connection.
fn curl_on_one_connection(base: &str, path: &str, count: usize, extra: &[&str]) {
    let o = Command::new("curl")
        .args(["-s", "--max-time", "10"])
        .args(extra)
        .args((0..count).flat_map(|i| {
            [
                "-o".to_owned(),
                "/dev/null".to_owned(),
                format!("{base}{path}?n={i}"),
            ]
        }))
        .output()
        .expect("curl");
    assert!(o.status.success(), "curl {path}: {o:?}");
}

/// Whether an established TCP connection to 127.0.0.1:`port` has its
/// keepalive timer running (`ss -o`).
fn keepalive_to(port: u16) -> bool {
    let o = Command::new("ss")
        .args(["-tnoH", "state", "established", "dst"])
        .arg(format!("127.0.0.1:{port}"))
        .output()
        .expect("ss");
    String::from_utf8_lossy(&o.stdout).contains("timer:(keepalive")
}

/// The access log's request line, status and response flags for the
/// requests whose answers are local or failed (Envoy's default format).
fn access_log_summary(text: &str) -> String {
    let mut out = std::collections::BTreeSet::new();
    for line in text.lines() {
        let Some((_, rest)) = line.split_once("] \"") else {
            continue;
        };
        let Some((request, rest)) = rest.split_once("\" ") else {
            continue;
        };
        let mut f = rest.split_whitespace();
        let (status, flags) = (f.next().unwrap_or(""), f.next().unwrap_or(""));
        let path = request.split_whitespace().nth(1).unwrap_or("");
        if ["/dead", "/slow", "/direct", "/other"]
            .iter()
            .any(|p| path.starts_with(p))
        {
            out.insert(format!("{request} {status} {flags}"));
        }
    }
    out.into_iter().collect::<Vec<_>>().join("; ")
}

/// `mast proxy -c PATH --concurrency 1`.
fn mast_proxy(path: &std::path::Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mast"));
    c.args(["proxy", "-c"])
        .arg(path)
        .args(["--concurrency", "1"]);
    c
}

/// `mast proxy -c PATH --concurrency 1 ARGS...` with its output dropped,
/// once it listens on `listen`.
fn quiet_proxy(path: &std::path::Path, args: &[&str], listen: u16) -> common::Background {
    let proxy = common::Background(
        mast_proxy(path)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mast proxy"),
    );
    wait_port(listen);
    proxy
}

fn wait_port(port: u16) {
    assert!(
        common::eventually(20, || std::net::TcpStream::connect(("127.0.0.1", port))
            .is_ok()),
        "nothing listens on {port}"
    );
}

#[test]
fn mast_proxy_routes_one_bootstrap_as_envoy_does() {
    let (v1, v2, dead) = (
        common::free_port(),
        common::free_port(),
        common::free_port(),
    );
    let _e1 = echo(v1, "v1");
    let _e2 = echo(v2, "v2");
    wait_port(v1);
    wait_port(v2);
    let dir = tempfile::tempdir().expect("tmp");
    let run = |which: &str| {
        let (listen, relay, admin) = (
            common::free_port(),
            common::free_port(),
            common::free_port(),
        );
        let path = dir.path().join(format!("{which}.yaml"));
        std::fs::write(&path, bootstrap(listen, relay, admin, v1, v2, dead)).expect("write");
        let log_path = dir.path().join(format!("{which}.log"));
        let log = std::fs::File::create(&log_path).expect("log file");
        let child = if which == "envoy" {
            Command::new(common::envoy())
                .args([
                    "-c",
                    path.to_str().unwrap_or_default(),
                    "--concurrency",
                    "1",
                ])
                .args(["--disable-hot-restart", "-l", "error"])
                .stdout(log.try_clone().expect("log"))
                .stderr(Stdio::null())
                .spawn()
        } else {
            mast_proxy(&path).stdout(log).stderr(Stdio::null()).spawn()
        };
        let _p = common::Background(child.expect("start the proxy"));
        wait_port(listen);
        let no_route = get(
            &format!("http://127.0.0.1:{listen}/other"),
            &["-H", "Host: none.test"],
        )
        .0;
        let mut seen = observe(listen, relay, admin, v1);
        seen.insert("no route", no_route);
        // Envoy flushes its access log every second; the requests checked
        // in it come before the last ones.
        std::thread::sleep(std::time::Duration::from_millis(2500));
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        seen.insert("log", access_log_summary(&text));
        (seen, admin)
    };
    let (envoy_saw, _) = run("envoy");
    let (mast_saw, _) = run("mast");
    // What Envoy does is the expectation; a few facts pin it down too.
    assert_eq!(envoy_saw["default"], "200 v1");
    assert_eq!(envoy_saw["header"], "200 v2");
    assert_eq!(envoy_saw["timeout"], "504");
    assert_eq!(
        envoy_saw["timeouts kept alive"],
        "200 1,504 0,200 0,200 0,504 0,"
    );
    assert_eq!(envoy_saw["dead"], "503");
    assert_eq!(envoy_saw["rewrite"], "200 /v1/things?x=1");
    assert_eq!(envoy_saw["split"], "true");
    assert_eq!(envoy_saw["no route"], "404");
    assert!(
        envoy_saw["log"].contains("GET /dead HTTP/1.1 503 UF"),
        "{}",
        envoy_saw["log"]
    );
    assert_eq!(envoy_saw["retries"], "true");
    assert_eq!(envoy_saw["retried codes"], "503 +3, 409 +3, 500 +0");
    assert_eq!(envoy_saw["previous hosts"], "40");
    assert_eq!(envoy_saw["retry overflow"], "503 retries 0 overflow 1");
    assert_eq!(envoy_saw["ejected, no panic"], "20");
    assert_eq!(
        envoy_saw["max requests per connection"],
        "total 5, max_requests 5"
    );
    assert_eq!(envoy_saw["idle_timeout"], "idle_timeout 1; then total 2");
    assert_eq!(
        envoy_saw["max_duration_reached"],
        "max_duration_reached 1; then total 2"
    );
    assert_eq!(
        envoy_saw["downstream protocol"],
        "200 HTTP/1.1 / 200 HTTP/2.0"
    );
    assert_eq!(envoy_saw["keepalive"], "true");
    assert_eq!(
        envoy_saw["concurrent streams"],
        "status codes: 8 2xx, 0 3xx, 0 4xx, 0 5xx; total 4"
    );
    assert_eq!(
        envoy_saw["websocket"],
        "HTTP/1.1 101 Switching Protocols PING"
    );
    assert_eq!(envoy_saw["connect"], "200 v2");
    assert_eq!(envoy_saw["connect forwarded"], "200 v2");
    assert_eq!(mast_saw, envoy_saw, "mast proxy and Envoy differ");
}

#[test]
fn mast_proxy_refuses_what_it_does_not_implement_and_bad_http() {
    let dir = tempfile::tempdir().expect("tmp");
    // A field mast proxy does not implement stops it, by name, and so do
    // a retry condition it does not know (Envoy would skip it, and never
    // retry) and an admin access log it would not write.
    let path = dir.path().join("bad.yaml");
    let (listen, up) = (common::free_port(), common::free_port());
    let good = bootstrap(listen, common::free_port(), common::free_port(), up, up, up);
    for (yaml, needle) in [
        (
            "static_resources:\n  clusters:\n  - name: a\n    dns_lookup_family: V4_ONLY\n"
                .to_owned(),
            "dns_lookup_family",
        ),
        (
            good.replace("retry_on: 5xx,", "retry_on: '5xx,503',"),
            "\"503\" is not a retry condition",
        ),
        (
            good.replace("admin:\n", "admin:\n  access_log_path: /tmp/admin.log\n"),
            "admin.access_log_path",
        ),
    ] {
        assert_ne!(yaml, good, "{needle}: the case changes nothing");
        std::fs::write(&path, yaml).expect("write");
        let o = Command::new(env!("CARGO_BIN_EXE_mast"))
            .args(["proxy", "-c", path.to_str().unwrap_or_default()])
            .output()
            .expect("mast proxy");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && err.contains(needle),
            "{needle}: {err}"
        );
    }
    // A route naming a missing cluster stops it, by name.
    std::fs::write(
        &path,
        bootstrap(listen, common::free_port(), common::free_port(), up, up, up)
            .replace("cluster: dead", "cluster: nowhere"),
    )
    .expect("write");
    let o = Command::new(env!("CARGO_BIN_EXE_mast"))
        .args(["proxy", "-c", path.to_str().unwrap_or_default()])
        .output()
        .expect("mast proxy");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("\"nowhere\""), "{err}");
    // Request smuggling: with Content-Length beside Transfer-Encoding, the
    // chunked framing wins and the connection closes after one answer
    // (RFC 9112 6.3), so the request hidden in the body is never served.
    std::fs::write(
        &path,
        bootstrap(listen, common::free_port(), common::free_port(), up, up, up),
    )
    .expect("write");
    let _e = echo(up, "v1");
    let _p = common::Background(
        mast_proxy(&path)
            .stderr(Stdio::null())
            .spawn()
            .expect("mast proxy"),
    );
    wait_port(listen);
    wait_port(up);
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", listen)).expect("connect");
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .ok();
    s.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let mut got = String::new();
    let _ = s.read_to_string(&mut got);
    assert_eq!(got.matches("HTTP/1.1 ").count(), 1, "{got}");
    assert!(
        got.to_ascii_lowercase().contains("connection: close"),
        "{got}"
    );
    assert!(!got.contains("smuggled"), "{got}");
    // Oversized headers: 431, and that connection only.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", listen)).expect("connect");
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .ok();
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(200_000)
    );
    let _ = s.write_all(big.as_bytes());
    let mut got = String::new();
    let _ = s.read_to_string(&mut got);
    assert!(got.starts_with("HTTP/1.1 431"), "{got}");
    // Slowloris: headers sent a byte at a time are cut off after the
    // listener's request_headers_timeout (2 s), while others are served.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", listen)).expect("connect");
    s.set_read_timeout(Some(std::time::Duration::from_millis(100)))
        .ok();
    let started = std::time::Instant::now();
    let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n");
    let mut closed = false;
    while started.elapsed() < std::time::Duration::from_secs(15) {
        if s.write_all(b"X").is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 512];
        match s.read(&mut buf) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => {
                closed = true;
                break;
            }
        }
        assert_eq!(
            get(&format!("http://127.0.0.1:{listen}/direct"), &[]).0,
            "200"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(closed, "a slow client kept its connection for 15 s");
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(1500),
        "cut off before the timeout"
    );
    // The proxy still serves others.
    assert_eq!(
        get(&format!("http://127.0.0.1:{listen}/direct"), &[]).0,
        "200"
    );
}

/// A gRPC server in miniature, over h2c: every call is answered with an
/// empty message and, in the trailers, the status its method names
/// (`/svc.Echo/Ok` 0, `/svc.Echo/Unavailable` 14).
fn grpc_server() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    l.set_nonblocking(true).expect("nonblocking");
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(l).expect("listener");
            while let Ok((s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        |req: hyper::Request<hyper::body::Incoming>| async move {
                            use http_body_util::BodyExt;
                            let status = if req.uri().path().ends_with("/Ok") {
                                "0"
                            } else {
                                "14"
                            };
                            let _ = req.into_body().collect().await;
                            let mut trailers = hyper::HeaderMap::new();
                            trailers.insert("grpc-status", status.parse().expect("status"));
                            let body =
                                http_body_util::Full::new(bytes::Bytes::from_static(&[0; 5]))
                                    .with_trailers(async move { Some(Ok(trailers)) });
                            Ok::<_, std::convert::Infallible>(
                                hyper::Response::builder()
                                    .header("content-type", "application/grpc")
                                    .body(body)
                                    .expect("response"),
                            )
                        },
                    );
                    let _ = hyper::server::conn::http2::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
                });
            }
        });
    });
    port
}

/// One gRPC call over h2c (nghttp, which shows trailers): the
/// `grpc-status` its trailers carry.
fn grpc_call(port: u16, method: &str) -> String {
    let dir = tempfile::tempdir().expect("tmp");
    let msg = dir.path().join("msg");
    std::fs::write(&msg, [0u8; 5]).expect("message");
    let out = Command::new("nghttp")
        .args(["-v", "-t", "5", "-H", "content-type: application/grpc"])
        .args(["-H", "te: trailers", "-d"])
        .arg(&msg)
        .arg(format!("http://127.0.0.1:{port}/svc.Echo/{method}"))
        .output()
        .expect("nghttp (apt-get install nghttp2-client)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| {
            l.split_once(") grpc-status: ")
                .map(|(_, s)| s.trim().to_owned())
        })
        .unwrap_or_else(|| "none".into())
}

#[test]
fn mast_proxy_reports_grpc_calls_in_istios_metrics_with_their_status() {
    let upstream = grpc_server();
    let (listen, admin) = (common::free_port(), common::free_port());
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("grpc.yaml");
    let out = common::http_listener(
        "out",
        listen,
        "    traffic_direction: OUTBOUND\n",
        r#"          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {prefix: "/"}
                route: {cluster: "outbound|9000||grpc-echo.default.svc.cluster.local"}
"#,
    );
    std::fs::write(
        &path,
        format!(
            r#"
node:
  id: sidecar~127.0.0.1~client-1-2.default~default.svc.cluster.local
  metadata: {{NAMESPACE: default, NAME: client-6b9f-x2x, LABELS: {{app: client, version: v1, pod-template-hash: 6b9f}}}}
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
static_resources:
  listeners:
{out}  clusters:
  - name: "outbound|9000||grpc-echo.default.svc.cluster.local"
    connect_timeout: 1s
    type: STATIC
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: grpc
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {upstream}}}}}}}}}]}}]
"#
        ),
    )
    .expect("write");
    let _proxy = quiet_proxy(&path, &[], listen);
    // The trailers reach the client through the proxy.
    assert_eq!(grpc_call(listen, "Ok"), "0");
    assert_eq!(grpc_call(listen, "Unavailable"), "14");
    assert_eq!(grpc_call(listen, "Unavailable"), "14");
    let (_, stats) = get(&format!("http://127.0.0.1:{admin}/stats/prometheus"), &[]);
    let series = |status: &str| {
        stats
            .lines()
            .find(|l| {
                l.starts_with("istio_requests_total{")
                    && l.contains(&format!("grpc_response_status=\"{status}\""))
            })
            .unwrap_or("")
            .to_owned()
    };
    let ok = series("0");
    let unavailable = series("14");
    for want in [
        "reporter=\"source\"",
        "source_workload=\"client\"",
        "destination_service=\"grpc-echo.default.svc.cluster.local\"",
        "request_protocol=\"grpc\"",
        "response_code=\"200\"",
    ] {
        assert!(ok.contains(want), "{want} not in {ok:?}\n{stats}");
        assert!(unavailable.contains(want), "{want} not in {unavailable:?}");
    }
    assert!(ok.ends_with(" 1"), "{ok}");
    assert!(unavailable.ends_with(" 2"), "{unavailable}");
}

/// An upstream that answers every request after `delay`, on keep-alive
/// connections.
fn slow_server(delay: std::time::Duration) -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for s in l.incoming().map_while(Result::ok) {
            std::thread::spawn(move || {
                use std::io::{BufRead, Write};
                let mut r = std::io::BufReader::new(s);
                loop {
                    let mut line = String::new();
                    while r.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                        line.clear();
                    }
                    if line != "\r\n" {
                        return;
                    }
                    std::thread::sleep(delay);
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nslow";
                    if r.get_mut().write_all(answer).is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

/// Read one HTTP/1.1 response with a Content-Length body; None when the
/// connection ends first.
fn read_response(s: &mut std::io::BufReader<std::net::TcpStream>) -> Option<String> {
    use std::io::{BufRead, Read};
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if s.read_line(&mut line).ok()? == 0 {
            return None;
        }
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    let len = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().to_owned())
        })
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    s.read_exact(&mut body).ok()?;
    Some(head + &String::from_utf8_lossy(&body))
}

/// A bootstrap with one listener: `/fast` is answered by the proxy, the
/// rest goes to `upstream`. `settings` adds connection-manager fields.
fn slow_bootstrap(
    dir: &std::path::Path,
    listen: u16,
    upstream: u16,
    settings: &str,
) -> std::path::PathBuf {
    let path = dir.join("slow.yaml");
    let main = common::http_listener(
        "main",
        listen,
        "",
        &format!(
            r#"{settings}          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/fast"}}
                direct_response: {{status: 200, body: {{inline_string: "fast"}}}}
              - match: {{prefix: "/"}}
                route: {{cluster: slow}}
"#
        ),
    );
    std::fs::write(
        &path,
        format!(
            r#"
static_resources:
  listeners:
{main}  clusters:
  - name: slow
    connect_timeout: 1s
    type: STATIC
    load_assignment:
      cluster_name: slow
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {upstream}}}}}}}}}]}}]
"#
        ),
    )
    .expect("write");
    path
}

fn connect_http(port: u16) -> std::io::BufReader<std::net::TcpStream> {
    let s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .ok();
    std::io::BufReader::new(s)
}

/// Whether the peer closes the connection within `secs` (an end of
/// stream, not a time-out).
fn closed_within(s: &mut std::io::BufReader<std::net::TcpStream>, secs: u64) -> Result<(), String> {
    s.get_ref()
        .set_read_timeout(Some(std::time::Duration::from_secs(secs)))
        .ok();
    let mut rest = Vec::new();
    match std::io::Read::read_to_end(s, &mut rest) {
        Ok(0) => Ok(()),
        other => Err(format!("still open: {other:?}, {rest:?}")),
    }
}

#[test]
fn mast_proxy_drains_on_sigterm_finishing_requests_in_flight() {
    use std::io::Write;
    let upstream = slow_server(std::time::Duration::from_millis(1500));
    let listen = common::free_port();
    let dir = tempfile::tempdir().expect("tmp");
    let path = slow_bootstrap(dir.path(), listen, upstream, "");
    let mut proxy = quiet_proxy(&path, &["--drain-time-s", "20"], listen);
    // An idle keep-alive connection, and a request in flight on another.
    let mut idle = connect_http(listen);
    idle.get_mut()
        .write_all(b"GET /fast HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let first = read_response(&mut idle).expect("an answer");
    assert!(
        first.starts_with("HTTP/1.1 200") && first.ends_with("fast"),
        "{first}"
    );
    let mut busy = connect_http(listen);
    busy.get_mut()
        .write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    // And one over h2c, whose stream must be served to its end too.
    let h2c = Command::new("curl")
        .args([
            "-s",
            "--http2-prior-knowledge",
            "-w",
            " %{http_code} %{http_version}",
        ])
        .arg(format!("http://127.0.0.1:{listen}/slow"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("curl");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let sent = std::time::Instant::now();
    let term = Command::new("kill")
        .args(["-TERM", &proxy.0.id().to_string()])
        .status()
        .expect("kill");
    assert!(term.success());
    // The request in flight is answered, and told the connection closes.
    let answer = read_response(&mut busy).expect("the request in flight was dropped");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("slow"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    let h2c = h2c.wait_with_output().expect("curl");
    assert_eq!(String::from_utf8_lossy(&h2c.stdout), "slow 200 2");
    // The idle connection is closed (an end of stream, not a time-out),
    // and new ones are refused.
    let idle_closed = closed_within(&mut idle, 3);
    assert_eq!(idle_closed, Ok(()), "the idle connection");
    assert!(
        common::eventually(5, || std::net::TcpStream::connect(("127.0.0.1", listen))
            .is_err()),
        "the listener still accepts while draining"
    );
    // With nothing left open, the proxy ends well before its drain time.
    let status = loop {
        if let Some(s) = proxy.0.try_wait().expect("wait") {
            break s;
        }
        assert!(
            sent.elapsed() < std::time::Duration::from_secs(15),
            "mast proxy still runs 15 s after SIGTERM with nothing open"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(status.success(), "{status}");
}

#[test]
fn mast_proxy_cuts_off_slow_headers_but_not_slow_answers() {
    use std::io::Write;
    // The upstream takes longer than the headers may.
    let upstream = slow_server(std::time::Duration::from_millis(1500));
    let listen = common::free_port();
    let dir = tempfile::tempdir().expect("tmp");
    let path = slow_bootstrap(
        dir.path(),
        listen,
        upstream,
        "          request_headers_timeout: 1s\n",
    );
    let _proxy = quiet_proxy(&path, &[], listen);
    let mut c = connect_http(listen);
    for _ in 0..2 {
        c.get_mut()
            .write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("write");
        let answer = read_response(&mut c).expect("a slow answer was cut off");
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.ends_with("slow"),
            "{answer}"
        );
    }
    // Then it idles, waiting for headers: closed after 1 to 1.25 s.
    let idle = std::time::Instant::now();
    assert_eq!(closed_within(&mut c, 4), Ok(()), "the idle connection");
    assert!(
        idle.elapsed() >= std::time::Duration::from_millis(900),
        "closed {:?} after its last answer, before the timeout",
        idle.elapsed()
    );
    // Half a head, never finished, is cut off likewise.
    let mut c = connect_http(listen);
    c.get_mut()
        .write_all(b"GET /fast HTTP/1.1\r\n")
        .expect("write");
    assert_eq!(closed_within(&mut c, 4), Ok(()), "the half-sent head");
}

/// One bootstrap with TLS on both sides: listener `tls` terminates TLS
/// (SNI `echo.test` reaches echo; without it, a direct response says so),
/// listener `mtls` requires a client certificate from the CA with a SAN
/// under `spiffe://cluster.local/ns/default/`, and listener `plain` routes
/// by path to clusters that originate TLS to them in different ways.
fn tls_bootstrap(pki: &common::Pki, other: &common::Pki, ports: [u16; 5]) -> String {
    use serde_json::json;
    let [plain, tls, mtls, admin, echo] = ports;
    let file = |f: &str| json!({"filename": pki.path(f)});
    let tls_type = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.";
    let hcm = |routes: serde_json::Value| {
        json!({"name": "envoy.filters.network.http_connection_manager", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "t",
            "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}]},
            "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]
        }})
    };
    let to = |cluster: &str| json!([{"match": {"prefix": "/"}, "route": {"cluster": cluster}}]);
    let server_tls = |validation: serde_json::Value, require: bool| {
        json!({"name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": format!("{tls_type}DownstreamTlsContext"),
            "require_client_certificate": require,
            "common_tls_context": {
                "alpn_protocols": ["h2", "http/1.1"],
                "tls_certificates": [{"certificate_chain": file("echo.pem"), "private_key": file("echo.key")}],
                "validation_context": validation
            }
        }})
    };
    let addr = |port: u16| json!({"socket_address": {"address": "127.0.0.1", "port_value": port}});
    let upstream = |name: &str, port: u16, ctx: serde_json::Value| {
        let mut c = json!({
            "name": name, "connect_timeout": "1s", "type": "STATIC",
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": addr(port)}}]}]}
        });
        if !ctx.is_null() {
            let mut ctx = ctx;
            ctx["@type"] = json!(format!("{tls_type}UpstreamTlsContext"));
            c["transport_socket"] =
                json!({"name": "envoy.transport_sockets.tls", "typed_config": ctx});
        }
        c
    };
    let san = |t: &str, m: serde_json::Value| json!([{"san_type": t, "matcher": m}]);
    let ca = file("ca.pem");
    // Longer first: routes match by prefix, in order.
    let paths = [
        "mtls-nocert",
        "wrong-san",
        "wrong-ca",
        "secrets",
        "mtls",
        "any",
        "auto",
        "ok",
        "h2",
    ];
    let routes: Vec<_> = paths
        .iter()
        .map(|p| json!({"match": {"prefix": format!("/{p}")}, "route": {"cluster": p, "prefix_rewrite": "/"}}))
        .collect();
    let mut h2 = upstream(
        "h2",
        tls,
        json!({"sni": "echo.test", "common_tls_context": {
        "alpn_protocols": ["h2"], "validation_context": {"trusted_ca": ca}}}),
    );
    // Istio's auto mTLS: the endpoint whose metadata says `tlsMode: istio`
    // (the mutual-TLS listener) takes mutual TLS, the other (echo) plain
    // text, in one cluster.
    let mut auto = upstream("auto", echo, serde_json::Value::Null);
    auto["load_assignment"]["endpoints"][0]["lb_endpoints"] = json!([
        {"endpoint": {"address": addr(echo)}},
        {"endpoint": {"address": addr(mtls)},
         "metadata": {"filter_metadata": {"envoy.transport_socket_match": {"tlsMode": "istio"}}}}
    ]);
    auto["transport_socket_matches"] = json!([
        {"name": "tlsMode-istio", "match": {"tlsMode": "istio"}, "transport_socket": {
            "name": "envoy.transport_sockets.tls", "typed_config": {
                "@type": format!("{tls_type}UpstreamTlsContext"), "sni": "outbound_.80_._.echo.test",
                "common_tls_context": {
                    "tls_certificates": [{"certificate_chain": file("client.pem"), "private_key": file("client.key")}],
                    "validation_context": {"trusted_ca": ca, "match_typed_subject_alt_names": san("URI", json!({"prefix": "spiffe://cluster.local/"}))}}}}},
        {"name": "tlsMode-disabled", "match": {}, "transport_socket": {
            "name": "envoy.transport_sockets.raw_buffer",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"}}}
    ]);
    h2["typed_extension_protocol_options"] = json!({"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {}}}});
    json!({
        "admin": {"address": addr(admin)},
        "static_resources": {
            "secrets": [
                {"name": "client", "tls_certificate": {"certificate_chain": file("client.pem"), "private_key": file("client.key")}},
                {"name": "roots", "validation_context": {"trusted_ca": ca}}
            ],
            "listeners": [
                {"name": "plain", "address": addr(plain), "filter_chains": [{"filters": [hcm(json!(routes))]}]},
                {"name": "tls", "address": addr(tls),
                 "listener_filters": [{"name": "envoy.filters.listener.tls_inspector", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}}],
                 "filter_chains": [{"filter_chain_match": {"server_names": ["echo.test"]},
                                    "filters": [hcm(to("echo"))], "transport_socket": server_tls(json!({"trusted_ca": ca}), false)}],
                 "default_filter_chain": {"filters": [hcm(json!([{"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "no sni"}}}]))],
                                          "transport_socket": server_tls(json!({"trusted_ca": ca}), false)}},
                {"name": "mtls", "address": addr(mtls), "filter_chains": [{"filters": [hcm(to("echo"))],
                 "transport_socket": server_tls(json!({"trusted_ca": ca, "match_typed_subject_alt_names": san("URI", json!({"prefix": "spiffe://cluster.local/ns/default/"}))}), true)}]}
            ],
            "clusters": [
                upstream("echo", echo, serde_json::Value::Null),
                upstream("ok", tls, json!({"sni": "echo.test", "common_tls_context": {"validation_context": {
                    "trusted_ca": ca, "match_typed_subject_alt_names": san("DNS", json!({"exact": "echo.test"}))}}})),
                upstream("wrong-san", tls, json!({"sni": "echo.test", "common_tls_context": {"validation_context": {
                    "trusted_ca": ca, "match_typed_subject_alt_names": san("DNS", json!({"exact": "other.test"}))}}})),
                upstream("wrong-ca", tls, json!({"sni": "echo.test", "common_tls_context": {"validation_context": {
                    "trusted_ca": {"filename": other.path("ca.pem")}}}})),
                upstream("any", tls, json!({})),
                h2,
                auto,
                upstream("mtls", mtls, json!({"sni": "echo.test", "common_tls_context": {
                    "tls_certificates": [{"certificate_chain": file("client.pem"), "private_key": file("client.key")}],
                    "validation_context": {"trusted_ca": ca, "match_subject_alt_names": [{"suffix": ".test"}]}}})),
                upstream("mtls-nocert", mtls, json!({"sni": "echo.test", "common_tls_context": {"validation_context": {"trusted_ca": ca}}})),
                upstream("secrets", mtls, json!({"sni": "echo.test", "common_tls_context": {
                    "tls_certificate_sds_secret_configs": [{"name": "client"}],
                    "combined_validation_context": {
                        "default_validation_context": {"match_typed_subject_alt_names": san("URI", json!({"exact": "spiffe://cluster.local/ns/default/sa/echo"}))},
                        "validation_context_sds_secret_config": {"name": "roots"}}}}))
            ]
        }
    })
    .to_string()
}

/// What one proxy does with TLS: the status (and echo's version, or the
/// body) of each way in, and the TLS counters of some clusters.
fn observe_tls(pki: &common::Pki, ports: [u16; 5]) -> BTreeMap<String, String> {
    let [plain, tls, mtls, admin, _] = ports;
    let mut out = BTreeMap::new();
    let answer = |url: &str, extra: &[&str]| {
        let (code, body) = get(url, extra);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let what = v["version"].as_str().map(str::to_owned).unwrap_or(body);
        format!("{code} {what}")
    };
    for p in [
        "ok",
        "ok",
        "ok",
        "wrong-san",
        "wrong-ca",
        "any",
        "h2",
        "mtls",
        "mtls-nocert",
        "secrets",
    ] {
        out.insert(
            format!("via {p}"),
            answer(&format!("http://127.0.0.1:{plain}/{p}"), &[]),
        );
    }
    // Round robin over the auto-mTLS cluster's two endpoints.
    for i in 0..4 {
        out.insert(
            format!("via auto {i}"),
            answer(&format!("http://127.0.0.1:{plain}/auto"), &[]),
        );
    }
    let ca = pki.path("ca.pem");
    let resolve = |port: u16| format!("echo.test:{port}:127.0.0.1");
    let https = |port: u16| format!("https://echo.test:{port}/");
    let (r_tls, r_mtls) = (resolve(tls), resolve(mtls));
    out.insert(
        "curl tls".into(),
        answer(&https(tls), &["--cacert", &ca, "--resolve", &r_tls]),
    );
    let (code, _) = get(
        &https(tls),
        &[
            "--cacert",
            &ca,
            "--resolve",
            &r_tls,
            "--http2",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version}",
        ],
    );
    out.insert("curl tls alpn".into(), code);
    for (name, cert) in [
        ("curl mtls", Some("client")),
        ("curl mtls no cert", None),
        ("curl mtls wrong san", Some("stranger")),
        ("curl mtls other ca", Some("outsider")),
    ] {
        let (pem, key) = match cert {
            Some(c) => (pki.path(&format!("{c}.pem")), pki.path(&format!("{c}.key"))),
            None => (String::new(), String::new()),
        };
        let mut args = vec!["--cacert", &ca, "--resolve", &r_mtls];
        if cert.is_some() {
            args.extend(["--cert", &pem, "--key", &key]);
        }
        out.insert(name.into(), answer(&https(mtls), &args));
    }
    for (c, s) in [
        ("ok", "ssl.handshake"),
        ("ok", "upstream_cx_total"),
        ("wrong-san", "ssl.fail_verify_san"),
        ("wrong-san", "ssl.connection_error"),
        ("wrong-san", "upstream_cx_connect_fail"),
        ("wrong-ca", "ssl.fail_verify_error"),
        ("wrong-ca", "ssl.connection_error"),
        ("mtls-nocert", "ssl.connection_error"),
        ("mtls-nocert", "upstream_rq_total"),
        ("auto", "ssl.handshake"),
        ("auto", "upstream_rq_total"),
    ] {
        out.insert(
            format!("{c} {s}"),
            stat(admin, &format!("cluster.{c}.{s}")).to_string(),
        );
    }
    out
}

#[test]
fn mast_proxy_originates_and_terminates_tls_as_envoy_does() {
    let (pki, ca) = common::Pki::new();
    pki.issue(
        &ca,
        "echo",
        &["echo.test", "spiffe://cluster.local/ns/default/sa/echo"],
    );
    pki.issue(
        &ca,
        "client",
        &["client.test", "spiffe://cluster.local/ns/default/sa/client"],
    );
    pki.issue(
        &ca,
        "stranger",
        &["spiffe://cluster.local/ns/other/sa/client"],
    );
    let (other, other_ca) = common::Pki::ca("another CA");
    other.issue(
        &other_ca,
        "outsider",
        &["spiffe://cluster.local/ns/default/sa/client"],
    );
    for f in ["outsider.pem", "outsider.key"] {
        std::fs::copy(other.path(f), pki.path(f)).expect("copy");
    }
    let echo_port = common::free_port();
    let _echo = echo(echo_port, "v1");
    wait_port(echo_port);
    let dir = tempfile::tempdir().expect("tmp");
    let run = |which: &str| {
        let ports = [
            common::free_port(),
            common::free_port(),
            common::free_port(),
            common::free_port(),
            echo_port,
        ];
        let path = dir.path().join(format!("{which}.yaml"));
        std::fs::write(&path, tls_bootstrap(&pki, &other, ports)).expect("write");
        let _p = envoy_or_mast(which, &path);
        wait_port(ports[0]);
        observe_tls(&pki, ports)
    };
    let envoy_saw = run("envoy");
    let mast_saw = run("mast");
    // What Envoy does is the expectation; some facts pin it down too.
    let refused = "503 upstream connect error or disconnect/reset before headers. reset reason: remote connection failure";
    for (k, v) in [
        ("via ok", "200 v1"),
        ("via any", "200 no sni"),
        ("via h2", "200 v1"),
        ("via mtls", "200 v1"),
        ("via secrets", "200 v1"),
        ("via wrong-san", refused),
        ("via wrong-ca", refused),
        ("via mtls-nocert", refused),
        ("curl tls", "200 v1"),
        ("curl tls alpn", "2"),
        ("curl mtls", "200 v1"),
        ("curl mtls no cert", "000 "),
        ("curl mtls wrong san", "000 "),
        ("curl mtls other ca", "000 "),
        ("ok ssl.handshake", "1"),
        ("wrong-san ssl.fail_verify_san", "1"),
        ("wrong-ca ssl.fail_verify_error", "1"),
        ("mtls-nocert upstream_rq_total", "0"),
        ("via auto 0", "200 v1"),
        ("via auto 1", "200 v1"),
        ("via auto 2", "200 v1"),
        ("via auto 3", "200 v1"),
        ("auto ssl.handshake", "1"),
        ("auto upstream_rq_total", "4"),
    ] {
        assert_eq!(envoy_saw[k], v, "{k}: {envoy_saw:#?}");
    }
    assert_eq!(mast_saw, envoy_saw, "mast proxy and Envoy differ");
}

/// Envoy (`which` is "envoy") or mast proxy on the bootstrap at `path`,
/// quiet.
fn envoy_or_mast(which: &str, path: &std::path::Path) -> common::Background {
    let mut c = if which == "envoy" {
        let mut c = Command::new(common::envoy());
        c.arg("-c")
            .arg(path)
            .args(["--concurrency", "1", "--disable-hot-restart", "-l", "error"]);
        c
    } else {
        mast_proxy(path)
    };
    let child = c.stdout(Stdio::null()).stderr(Stdio::null()).spawn();
    common::Background(child.expect("start the proxy"))
}

/// The configuration a test ADS server hands every proxy: JSON resources
/// by type, which the test may change (a new version is pushed).
struct Fixed(std::sync::Mutex<BTreeMap<&'static str, Vec<serde_json::Value>>>);

impl mast_mesh::xds::Generator for Fixed {
    fn generate(&self, _: &mast_mesh::xds::ProxyInfo) -> mast_mesh::xds::Resources {
        let mut out = mast_mesh::xds::Resources::default();
        for (t, list) in self.0.lock().expect("lock").iter() {
            let by_name = list
                .iter()
                .map(|v| {
                    let name = v["name"].as_str().unwrap_or_default().to_owned();
                    (name, mast_proxy::xds::from_json(t, v).expect("resource"))
                })
                .collect();
            out.0.insert(t, by_name);
        }
        out
    }
}

/// An ADS server (mast-mesh's) on a free port, serving what `gen` holds;
/// sending on the returned channel pushes it again.
fn ads_server(
    gen: std::sync::Arc<Fixed>,
) -> (
    u16,
    tokio::sync::watch::Sender<u64>,
    tokio::runtime::Runtime,
) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (tx, rx) = tokio::sync::watch::channel(1u64);
    let l = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let port = l.local_addr().expect("addr").port();
    let svc = mast_mesh::xds::Ads::server(gen, rx, Default::default());
    rt.spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l)),
    );
    (port, tx, rt)
}

const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

/// Secrets `server` (a certificate for echo.test) and `ROOTCA` (its CA).
fn secrets_of(pki: &common::Pki) -> Vec<serde_json::Value> {
    use serde_json::json;
    let text =
        |f: &str| json!({"inline_string": std::fs::read_to_string(pki.path(f)).expect("pem")});
    vec![
        json!({"name": "server", "tls_certificate": {"certificate_chain": text("echo.pem"), "private_key": text("echo.key")}}),
        json!({"name": "ROOTCA", "validation_context": {"trusted_ca": text("ca.pem")}}),
    ]
}

/// Listeners `plain` (to cluster `up`) and `tls` (TLS with the secret
/// `server`, to echo); cluster `up` originates TLS to `tls`, trusting the
/// secret `ROOTCA` and checking the SAN; all secrets over ADS.
fn sds_resources(
    plain: u16,
    tls: u16,
    echo: u16,
) -> BTreeMap<&'static str, Vec<serde_json::Value>> {
    use serde_json::json;
    let tls_type = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.";
    let addr = |port: u16| json!({"socket_address": {"address": "127.0.0.1", "port_value": port}});
    let hcm = |cluster: &str| {
        json!({"name": "envoy.filters.network.http_connection_manager", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "t",
            "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster}}]}]},
            "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]
        }})
    };
    let ads =
        |name: &str| json!({"name": name, "sds_config": {"ads": {}, "resource_api_version": "V3"}});
    let cluster = |name: &str, port: u16| {
        json!({"name": name, "connect_timeout": "1s", "type": "STATIC",
               "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": addr(port)}}]}]}})
    };
    let mut up = cluster("up", tls);
    up["transport_socket"] = json!({"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": format!("{tls_type}UpstreamTlsContext"), "sni": "echo.test",
        "common_tls_context": {"combined_validation_context": {
            "default_validation_context": {"match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": "echo.test"}}]},
            "validation_context_sds_secret_config": ads("ROOTCA")}}}});
    let mut m = BTreeMap::new();
    m.insert(mast_mesh::xds::CLUSTER, vec![up, cluster("echo", echo)]);
    m.insert(
        mast_mesh::xds::LISTENER,
        vec![
            json!({"name": "plain", "address": addr(plain), "filter_chains": [{"filters": [hcm("up")]}]}),
            json!({"name": "tls", "address": addr(tls), "filter_chains": [{"filters": [hcm("echo")],
                "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": {
                    "@type": format!("{tls_type}DownstreamTlsContext"),
                    "common_tls_context": {"tls_certificate_sds_secret_configs": [ads("server")]}}}}]}),
        ],
    );
    m
}

/// A bootstrap that takes everything over ADS from `xds`.
fn ads_bootstrap(xds: u16, admin: u16) -> String {
    serde_json::json!({
        "node": {"id": "router~127.0.0.1~gw.default~cluster.local", "cluster": "gw.default"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "dynamic_resources": {
            "ads_config": {"api_type": "GRPC", "transport_api_version": "V3", "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}]},
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
            "lds_config": {"ads": {}, "resource_api_version": "V3"}
        },
        "static_resources": {"clusters": [{"name": "xds", "connect_timeout": "1s", "type": "STATIC",
            "load_assignment": {"cluster_name": "xds", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": xds}}}}]}]},
            "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}}}}]}
    })
    .to_string()
}

#[test]
fn mast_proxy_takes_certificates_over_sds_and_rotates_them_as_envoy_does() {
    let (pki, ca) = common::Pki::new();
    pki.issue(&ca, "echo", &["echo.test"]);
    let (next, next_ca) = common::Pki::ca("the next CA");
    next.issue(&next_ca, "echo", &["echo.test"]);
    let echo_port = common::free_port();
    let _echo = echo(echo_port, "v1");
    wait_port(echo_port);
    let dir = tempfile::tempdir().expect("tmp");
    let run = |which: &str| -> BTreeMap<&'static str, String> {
        let (plain, tls, admin) = (
            common::free_port(),
            common::free_port(),
            common::free_port(),
        );
        let gen = std::sync::Arc::new(Fixed(std::sync::Mutex::new(sds_resources(
            plain, tls, echo_port,
        ))));
        let (xds, push, _rt) = ads_server(gen.clone());
        let path = dir.path().join(format!("{which}.yaml"));
        std::fs::write(&path, ads_bootstrap(xds, admin)).expect("write");
        let _p = envoy_or_mast(which, &path);
        wait_port(admin);
        let ready = || get(&format!("http://127.0.0.1:{admin}/ready"), &[]).0;
        let mut out = BTreeMap::new();
        // Everything but the secrets has come: not ready.
        std::thread::sleep(std::time::Duration::from_secs(2));
        out.insert("ready without secrets", ready());
        let mut version = 1;
        let mut send = |secrets: Vec<serde_json::Value>| {
            gen.0.lock().expect("lock").insert(SECRET, secrets);
            version += 1;
            push.send(version).expect("push");
        };
        send(secrets_of(&pki));
        common::eventually(20, || ready() == "200");
        out.insert("ready with secrets", ready());
        let answer = |url: &str, extra: &[&str]| {
            let (code, body) = get(url, extra);
            let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            format!("{code} {}", v["version"].as_str().unwrap_or("-"))
        };
        let via = || answer(&format!("http://127.0.0.1:{plain}/"), &[]);
        let (r, url) = (
            format!("echo.test:{tls}:127.0.0.1"),
            format!("https://echo.test:{tls}/"),
        );
        let https =
            |ca: &common::Pki| answer(&url, &["--cacert", &ca.path("ca.pem"), "--resolve", &r]);
        out.insert("via plain", via());
        out.insert("https, first CA", https(&pki));
        // Both secrets change: the listener serves the next certificate,
        // the cluster trusts the next CA.
        send(secrets_of(&next));
        common::eventually(20, || https(&next) == "200 v1");
        out.insert("rotated: https, next CA", https(&next));
        out.insert("rotated: https, first CA", https(&pki));
        out.insert("rotated: via plain", via());
        out
    };
    let envoy_saw = run("envoy");
    let mast_saw = run("mast");
    for (k, v) in [
        ("ready without secrets", "503"),
        ("ready with secrets", "200"),
        ("via plain", "200 v1"),
        ("https, first CA", "200 v1"),
        ("rotated: https, next CA", "200 v1"),
        ("rotated: https, first CA", "000 -"),
        ("rotated: via plain", "200 v1"),
    ] {
        assert_eq!(envoy_saw[k], v, "{k}: {envoy_saw:#?}");
    }
    assert_eq!(mast_saw, envoy_saw, "mast proxy and Envoy differ");
}
