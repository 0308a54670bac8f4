//! The control plane's debug endpoint (istiod's :15014 role), which
//! `mast mesh proxy-config` reads:
//! - `GET /debug/syncz`: every connected proxy, and per resource type the
//!   version sent, the version acknowledged and the last NACK;
//! - `GET /debug/config?proxy=ID`: the listeners, routes, clusters and
//!   endpoints that proxy is served, decoded, with its sync status.

use crate::xds::{self, Generator, Proxies};
use crate::Current;
use bytes::Bytes;
use envoy_types::pb::envoy::config::{
    cluster::v3::Cluster, endpoint::v3 as endpoint, listener::v3::Listener,
    route::v3::RouteConfiguration,
};
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use prost::Message;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;

/// The resources `proxy` is served, as JSON.
fn config(current: &Current, status: &xds::ProxyStatus) -> Value {
    let res = current.generate(&status.info);
    let get = |t: &str| res.0.get(t).cloned().unwrap_or_default();
    let listeners: Vec<Value> = get(xds::LISTENER)
        .values()
        .filter_map(|a| Listener::decode(a.value.as_slice()).ok())
        .map(|l| {
            let (addr, port) = l
                .address
                .and_then(|a| a.address)
                .map(|a| match a {
                    envoy_types::pb::envoy::config::core::v3::address::Address::SocketAddress(s) => {
                        let port = match s.port_specifier {
                            Some(envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier::PortValue(p)) => p,
                            _ => 0,
                        };
                        (s.address, port)
                    }
                    _ => (String::new(), 0),
                })
                .unwrap_or_default();
            json!({"name": l.name, "address": addr, "port": port})
        })
        .collect();
    let routes: Vec<Value> = get(xds::ROUTE)
        .values()
        .filter_map(|a| RouteConfiguration::decode(a.value.as_slice()).ok())
        .map(|r| {
            let vhosts: Vec<Value> = r
                .virtual_hosts
                .iter()
                .map(|v| json!({"name": v.name, "domains": v.domains, "routes": v.routes.len()}))
                .collect();
            json!({"name": r.name, "virtualHosts": vhosts})
        })
        .collect();
    let clusters: Vec<Value> = get(xds::CLUSTER)
        .values()
        .filter_map(|a| Cluster::decode(a.value.as_slice()).ok())
        .map(|c| json!({"name": c.name}))
        .collect();
    let endpoints: Vec<Value> = get(xds::ENDPOINT)
        .values()
        .filter_map(|a| endpoint::ClusterLoadAssignment::decode(a.value.as_slice()).ok())
        .flat_map(|cla| {
            let name = cla.cluster_name.clone();
            cla.endpoints
                .into_iter()
                .flat_map(|l| l.lb_endpoints)
                .filter_map(move |e| match e.host_identifier? {
                    endpoint::lb_endpoint::HostIdentifier::Endpoint(ep) => {
                        let sa = match ep.address?.address? {
                            envoy_types::pb::envoy::config::core::v3::address::Address::SocketAddress(s) => s,
                            _ => return None,
                        };
                        let port = match sa.port_specifier? {
                            envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier::PortValue(p) => p,
                            _ => 0,
                        };
                        Some(json!({"endpoint": format!("{}:{port}", sa.address), "cluster": name.clone()}))
                    }
                    _ => None,
                })
        })
        .collect();
    json!({"proxy": status, "listeners": listeners, "routes": routes, "clusters": clusters, "endpoints": endpoints})
}

fn reply(code: StatusCode, v: &Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = code;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn handle(
    current: &Current,
    proxies: &Proxies,
    req: &Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    let all = proxies.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
    match req.uri().path() {
        "/debug/syncz" => reply(StatusCode::OK, &json!(all.values().collect::<Vec<_>>())),
        "/debug/config" => {
            let want = req
                .uri()
                .query()
                .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("proxy=")))
                .unwrap_or_default()
                .to_owned();
            let found: Vec<&xds::ProxyStatus> = all
                .values()
                .filter(|p| p.info.id == want || p.info.id.contains(&want))
                .collect();
            match found.as_slice() {
                [one] => reply(StatusCode::OK, &config(current, one)),
                [] => reply(
                    StatusCode::NOT_FOUND,
                    &json!({"error": format!("no connected proxy matches {want:?}")}),
                ),
                many => {
                    let ids: Vec<&str> = many.iter().map(|p| p.info.id.as_str()).collect();
                    reply(
                        StatusCode::CONFLICT,
                        &json!({"error": format!("{want:?} matches several proxies: {}", ids.join(", "))}),
                    )
                }
            }
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            &json!({"error": "try /debug/syncz or /debug/config?proxy=ID"}),
        ),
    }
}

/// Serve the debug endpoint on `addr`.
pub async fn serve(
    addr: SocketAddr,
    current: Arc<Current>,
    proxies: Proxies,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("the mesh debug endpoint cannot listen on {addr}: {e}; choose another with --debug-listen"))?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (current, proxies) = (current.clone(), proxies.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let resp = handle(&current, &proxies, &req);
                    async move { Ok::<_, std::convert::Infallible>(resp) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    }))
}

/// GET a JSON document from the debug endpoint.
async fn get(base: &str, path: &str) -> anyhow::Result<Value> {
    use http_body_util::BodyExt;
    let uri: hyper::Uri = format!("{}{path}", base.trim_end_matches('/')).parse()?;
    let host = uri.host().unwrap_or("127.0.0.1").to_owned();
    let port = uri.port_u16().unwrap_or(80);
    let stream = tokio::net::TcpStream::connect((host.as_str(), port)).await.map_err(|e| {
        anyhow::anyhow!("cannot reach the mesh control plane's debug endpoint at {base}: {e}; is `mast up` (or `mast mesh serve`) running? Pass --debug to point elsewhere")
    })?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = Request::get(uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"))
        .header(hyper::header::HOST, host)
        .body(http_body_util::Empty::<Bytes>::new())?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    let v: Value = serde_json::from_slice(&body)?;
    if !status.is_success() {
        anyhow::bail!(
            "{}",
            v["error"]
                .as_str()
                .unwrap_or("the debug endpoint refused the request")
        );
    }
    Ok(v)
}

/// `mast mesh proxy-config PROXY`: the proxy's sync status, then its
/// listeners, routes, clusters and endpoints, in istioctl's columns.
pub async fn proxy_config(base: &str, proxy: &str) -> anyhow::Result<String> {
    use std::fmt::Write;
    let v = get(base, &format!("/debug/config?proxy={proxy}")).await?;
    let mut out = String::new();
    let types = &v["proxy"]["types"];
    let short = [
        ("LDS", xds::LISTENER),
        ("RDS", xds::ROUTE),
        ("CDS", xds::CLUSTER),
        ("EDS", xds::ENDPOINT),
    ];
    let state = |t: &str| -> String {
        let s: xds::TypeStatus = serde_json::from_value(types[t].clone()).unwrap_or_default();
        if types[t].is_null() {
            "NOT SENT".into()
        } else {
            s.state().into()
        }
    };
    let _ = writeln!(
        out,
        "{:<60} {:<9} {:<9} {:<9} {:<9} VERSION",
        "NAME", "LDS", "RDS", "CDS", "EDS"
    );
    let _ = writeln!(
        out,
        "{:<60} {:<9} {:<9} {:<9} {:<9} {}",
        v["proxy"]["info"]["id"].as_str().unwrap_or_default(),
        state(xds::LISTENER),
        state(xds::ROUTE),
        state(xds::CLUSTER),
        state(xds::ENDPOINT),
        v["proxy"]["info"]["agent"].as_str().unwrap_or_default()
    );
    for (name, t) in short {
        if let Some(msg) = types[t]["nack"].as_str() {
            let _ = writeln!(
                out,
                "{name} NACK (version {}): {msg}",
                types[t]["sent_version"].as_str().unwrap_or_default()
            );
        }
    }
    let _ = writeln!(out, "\n{:<30} {:<16} {:<6}", "LISTENER", "ADDRESS", "PORT");
    for l in v["listeners"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "{:<30} {:<16} {:<6}",
            l["name"].as_str().unwrap_or_default(),
            l["address"].as_str().unwrap_or_default(),
            l["port"]
        );
    }
    let _ = writeln!(
        out,
        "\n{:<20} {:<40} {:<30} {:<6}",
        "ROUTE", "VIRTUAL HOST", "DOMAINS", "ROUTES"
    );
    for r in v["routes"].as_array().into_iter().flatten() {
        for vh in r["virtualHosts"].as_array().into_iter().flatten() {
            let domains: Vec<&str> = vh["domains"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            let _ = writeln!(
                out,
                "{:<20} {:<40} {:<30} {:<6}",
                r["name"].as_str().unwrap_or_default(),
                vh["name"].as_str().unwrap_or_default(),
                domains.join(","),
                vh["routes"]
            );
        }
    }
    let _ = writeln!(
        out,
        "\n{:<45} {:<6} {:<8} {:<10} {:<5}",
        "SERVICE FQDN", "PORT", "SUBSET", "DIRECTION", "TYPE"
    );
    for c in v["clusters"].as_array().into_iter().flatten() {
        let name = c["name"].as_str().unwrap_or_default();
        let parts: Vec<&str> = name.split('|').collect();
        if let [dir, port, subset, host] = parts.as_slice() {
            let subset = if subset.is_empty() { "-" } else { subset };
            let _ = writeln!(out, "{host:<45} {port:<6} {subset:<8} {dir:<10} EDS");
        }
    }
    let _ = writeln!(out, "\n{:<24} {:<9} CLUSTER", "ENDPOINT", "STATUS");
    for e in v["endpoints"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "{:<24} {:<9} {}",
            e["endpoint"].as_str().unwrap_or_default(),
            "HEALTHY",
            e["cluster"].as_str().unwrap_or_default()
        );
    }
    Ok(out)
}
