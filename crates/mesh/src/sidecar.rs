//! A sidecar's configuration, shaped and named as istiod's:
//! - `virtualOutbound` on 15001, where capture sends the pod's outgoing TCP:
//!   it hands each connection to the listener of its original destination,
//!   and passes what no listener claims through unchanged
//!   (`PassthroughCluster`);
//! - per HTTP port `0.0.0.0_<port>` (not bound; reached from 15001), routed
//!   by `RDS <port>`: a virtual host per Service on that port, with the
//!   VirtualService bound to the mesh for it (matches, weights, faults,
//!   retries, timeouts), else a plain route to `outbound|<port>||<host>`, and
//!   `allow_any` to pass other hosts through;
//! - per TCP Service port `<clusterIP>_<port>`, a TCP proxy to its cluster
//!   or to the weighted destinations of the VirtualService's `tcp` route,
//!   and for TLS ports (`tls`, `https`) its `tls` routes by SNI;
//! - `virtualInbound` on 15006, where capture sends incoming TCP: a filter
//!   chain per port the workload serves, to `inbound|<port>||` (its
//!   original destination, the application), and passthrough for the rest.

use crate::envoy::{self, any};
use crate::model::{Mesh, MtlsMode, ServiceKey};
use crate::xds::{self, ProxyInfo, Resources};
use envoy_types::pb::envoy::config::listener::v3 as listener;
use envoy_types::pb::envoy::config::route::v3 as route;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use envoy_types::pb::google::protobuf::BoolValue;
use mast_api::istio::types::{
    Destination, HttpMatchRequest, HttpRoute, HttpRouteDestination, PortSelector,
};
use std::collections::{BTreeMap, BTreeSet};

const PASSTHROUGH: &str = "PassthroughCluster";
const INBOUND_PASSTHROUGH: &str = "InboundPassthroughCluster";

/// The names a client in namespace `ns` may use for a Service on `port`.
fn domains(mesh: &Mesh, key: &ServiceKey, ns: &str, port: u16) -> Vec<String> {
    let mut names = vec![
        key.host(),
        format!("{}.{}.svc", key.name, key.namespace),
        format!("{}.{}", key.name, key.namespace),
    ];
    if key.namespace == ns {
        names.push(key.name.clone());
    }
    if let Some(ip) = mesh.services.get(key).and_then(|s| s.cluster_ip) {
        names.push(ip.to_string());
    }
    names
        .into_iter()
        .flat_map(|n| [format!("{n}:{port}"), n])
        .collect()
}

/// Whether a VirtualService match applies to this proxy's traffic on `port`.
fn applies(m: &HttpMatchRequest, proxy: &ProxyInfo, port: u16) -> bool {
    (m.gateways.is_empty() || m.gateways.iter().any(|g| g == "mesh"))
        && m.port.is_none_or(|p| p == port as u32)
        && m.source_namespace
            .as_ref()
            .is_none_or(|ns| *ns == proxy.namespace)
        && m.source_labels
            .iter()
            .all(|(k, v)| proxy.labels.get(k) == Some(v))
}

/// The outbound routes for one HTTP port.
fn outbound_routes(mesh: &Mesh, proxy: &ProxyInfo, port: u16) -> route::RouteConfiguration {
    let mut vhosts = vec![];
    let mut taken = BTreeSet::new();
    for (key, svc) in &mesh.services {
        if !svc.ports.iter().any(|p| p.port == port && p.is_http()) {
            continue;
        }
        let keep = |m: &HttpMatchRequest| applies(m, proxy, port);
        let mut routes = match mesh.mesh_route(key) {
            Some((ns, vs)) => envoy::vs_routes(mesh, ns, vs, &keep),
            None => vec![],
        };
        if routes.is_empty() {
            let plain = HttpRoute {
                route: vec![HttpRouteDestination {
                    destination: Destination {
                        host: key.host(),
                        subset: None,
                        port: Some(PortSelector {
                            number: Some(port as u32),
                        }),
                    },
                    weight: None,
                    headers: None,
                }],
                ..Default::default()
            };
            routes = envoy::vs_routes(mesh, &key.namespace, &only(plain), &keep);
        }
        let names: Vec<String> = domains(mesh, key, &proxy.namespace, port)
            .into_iter()
            .filter(|d| taken.insert(d.clone()))
            .collect();
        vhosts.push(route::VirtualHost {
            name: format!("{}:{port}", key.host()),
            domains: names,
            routes,
            ..Default::default()
        });
    }
    // Hosts of ServiceEntries on this port.
    for se in mesh.service_entries.values() {
        if !se.ports.iter().any(|p| p.number == port as u32) {
            continue;
        }
        for h in &se.hosts {
            let names: Vec<String> = [format!("{h}:{port}"), h.clone()]
                .into_iter()
                .filter(|d| taken.insert(d.clone()))
                .collect();
            if names.is_empty() {
                continue;
            }
            let to = cluster_route(&envoy::cluster_name(port, "", h));
            vhosts.push(route::VirtualHost {
                name: format!("{h}:{port}"),
                domains: names,
                routes: vec![to],
                ..Default::default()
            });
        }
    }
    vhosts.push(route::VirtualHost {
        name: "allow_any".into(),
        domains: vec!["*".into()],
        routes: vec![cluster_route(PASSTHROUGH)],
        ..Default::default()
    });
    route::RouteConfiguration {
        name: port.to_string(),
        virtual_hosts: vhosts,
        validate_clusters: Some(BoolValue { value: false }),
        ..Default::default()
    }
}

fn only(r: HttpRoute) -> mast_api::istio::types::VirtualService {
    mast_api::istio::types::VirtualService {
        http: vec![r],
        ..Default::default()
    }
}

/// Everything to one cluster, with no timeout.
fn cluster_route(cluster: &str) -> route::Route {
    route::Route {
        r#match: Some(route::RouteMatch {
            path_specifier: Some(route::route_match::PathSpecifier::Prefix("/".into())),
            ..Default::default()
        }),
        action: Some(route::route::Action::Route(route::RouteAction {
            cluster_specifier: Some(route::route_action::ClusterSpecifier::Cluster(
                cluster.to_owned(),
            )),
            timeout: Some(Default::default()),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn inbound_cluster(port: u16) -> String {
    format!("inbound|{port}||")
}

/// `virtualInbound`: one chain per served port, passthrough otherwise.
/// By each port's mTLS mode (`mode(port)`): STRICT takes mutual TLS only,
/// PERMISSIVE mutual TLS or plain text (told apart by the TLS inspector),
/// DISABLE plain text. The passthrough (ports no Service names, where
/// mesh clients send plain text) takes plain text, or under a STRICT
/// `mode(0)` mutual TLS only, as Istio's.
fn inbound_listener(
    ports: &BTreeMap<u16, bool>,
    mode: impl Fn(u16) -> MtlsMode,
) -> listener::Listener {
    use envoy_types::pb::envoy::extensions::filters::listener::original_dst::v3::OriginalDst;
    let mut chains = vec![];
    for (&port, &http) in ports {
        let cluster = inbound_cluster(port);
        let filter = if http {
            let rc = route::RouteConfiguration {
                name: format!("inbound|{port}||"),
                virtual_hosts: vec![route::VirtualHost {
                    name: format!("inbound|http|{port}"),
                    domains: vec!["*".into()],
                    routes: vec![cluster_route(&cluster)],
                    ..Default::default()
                }],
                validate_clusters: Some(BoolValue { value: false }),
                ..Default::default()
            };
            envoy::hcm_filter(
                &format!("inbound_0.0.0.0_{port}"),
                hcm::http_connection_manager::RouteSpecifier::RouteConfig(rc),
            )
        } else {
            envoy::tcp_proxy_filter(&cluster, &cluster)
        };
        let chain = listener::FilterChain {
            name: format!("0.0.0.0_{port}"),
            filter_chain_match: Some(listener::FilterChainMatch {
                destination_port: Some(envoy_types::pb::google::protobuf::UInt32Value {
                    value: port as u32,
                }),
                ..Default::default()
            }),
            filters: vec![filter],
            ..Default::default()
        };
        chains.extend(by_mode(chain, mode(port)));
    }
    let mut l = envoy::listener(
        "virtualInbound",
        "0.0.0.0",
        15006,
        envoy::tcp_proxy_filter(INBOUND_PASSTHROUGH, INBOUND_PASSTHROUGH),
    );
    l.traffic_direction =
        envoy_types::pb::envoy::config::core::v3::TrafficDirection::Inbound as i32;
    with_chains(
        &mut l,
        chains,
        "envoy.filters.listener.original_dst",
        any(&OriginalDst::default()),
    );
    if mode(0) == MtlsMode::Strict {
        if let Some(mut passthrough) = l.default_filter_chain.take() {
            passthrough.name = "virtualInbound".into();
            l.filter_chains
                .extend(by_mode(passthrough, MtlsMode::Strict));
        }
    }
    if l.filter_chains.iter().any(|c| c.transport_socket.is_some()) {
        use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
        l.listener_filters.push(listener::ListenerFilter {
            name: "envoy.filters.listener.tls_inspector".into(),
            config_type: Some(listener::listener_filter::ConfigType::TypedConfig(any(
                &TlsInspector::default(),
            ))),
            ..Default::default()
        });
    }
    l
}

/// An inbound chain as an mTLS mode takes it: as it is (DISABLE), with
/// mutual TLS for TLS connections only (STRICT), or that and itself for
/// plain text (PERMISSIVE).
fn by_mode(chain: listener::FilterChain, mode: MtlsMode) -> Vec<listener::FilterChain> {
    if mode == MtlsMode::Disable {
        return vec![chain];
    }
    let with = |proto: &str, suffix: &str| {
        let mut c = chain.clone();
        c.name = format!("{}{suffix}", chain.name);
        c.filter_chain_match
            .get_or_insert_default()
            .transport_protocol = proto.into();
        c
    };
    let mut tls = with("tls", "-mtls");
    tls.transport_socket = Some(crate::tls::istio_mutual_server());
    match mode {
        MtlsMode::Strict => vec![tls],
        _ => vec![tls, with("raw_buffer", "")],
    }
}

/// Make a one-chain listener's chain its default, put `chains` before it,
/// and read connections with one listener filter first.
fn with_chains(
    l: &mut listener::Listener,
    chains: Vec<listener::FilterChain>,
    filter: &str,
    config: envoy_types::pb::google::protobuf::Any,
) {
    let default = l.filter_chains.remove(0);
    l.default_filter_chain = Some(default);
    l.filter_chains = chains;
    l.listener_filters = vec![listener::ListenerFilter {
        name: filter.into(),
        config_type: Some(listener::listener_filter::ConfigType::TypedConfig(config)),
        ..Default::default()
    }];
}

/// Whether an L4 (tcp or tls) match applies to this proxy's traffic on `port`.
fn l4_applies(
    port: Option<u32>,
    labels: &BTreeMap<String, String>,
    gateways: &[String],
    source_ns: &Option<String>,
    proxy: &ProxyInfo,
    on: u16,
) -> bool {
    (gateways.is_empty() || gateways.iter().any(|g| g == "mesh"))
        && port.is_none_or(|p| p == on as u32)
        && source_ns.as_ref().is_none_or(|ns| *ns == proxy.namespace)
        && labels.iter().all(|(k, v)| proxy.labels.get(k) == Some(v))
}

/// A TCP proxy over a route's weighted destinations (relative weights).
pub(crate) fn weighted_tcp(
    mesh: &Mesh,
    ns: &str,
    stat: &str,
    route: &[mast_api::istio::types::RouteDestination],
) -> Option<listener::Filter> {
    use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3 as tcp;
    let dests: Vec<(String, u32)> = route
        .iter()
        .filter_map(|d| {
            let w = d
                .weight
                .unwrap_or(if route.len() == 1 { 100 } else { 0 })
                .max(0) as u32;
            Some((envoy::destination_cluster(mesh, ns, &d.destination)?, w))
        })
        .filter(|(_, w)| *w > 0)
        .collect();
    match dests.as_slice() {
        [] => None,
        [(one, _)] => Some(envoy::tcp_proxy_filter(stat, one)),
        many => {
            let proxy = tcp::TcpProxy {
                stat_prefix: stat.to_owned(),
                cluster_specifier: Some(tcp::tcp_proxy::ClusterSpecifier::WeightedClusters(
                    tcp::tcp_proxy::WeightedCluster {
                        clusters: many
                            .iter()
                            .map(
                                |(name, w)| tcp::tcp_proxy::weighted_cluster::ClusterWeight {
                                    name: name.clone(),
                                    weight: *w,
                                    ..Default::default()
                                },
                            )
                            .collect(),
                    },
                )),
                ..Default::default()
            };
            Some(listener::Filter {
                name: "envoy.filters.network.tcp_proxy".into(),
                config_type: Some(listener::filter::ConfigType::TypedConfig(any(&proxy))),
            })
        }
    }
}

/// A filter chain for these SNI names (a `tls` route's `sniHosts`).
pub(crate) fn sni_chain(names: &[String], filter: listener::Filter) -> listener::FilterChain {
    listener::FilterChain {
        filter_chain_match: Some(listener::FilterChainMatch {
            server_names: names.to_vec(),
            ..Default::default()
        }),
        filters: vec![filter],
        ..Default::default()
    }
}

/// The listener of a TCP (or TLS) Service port: the VirtualService's tcp
/// route that applies, else the Service's cluster; for TLS ports, a filter
/// chain per `tls` route match by SNI, read by the TLS inspector.
fn tcp_listener(
    mesh: &Mesh,
    proxy: &ProxyInfo,
    key: &ServiceKey,
    ip: std::net::IpAddr,
    port: &crate::model::ServicePort,
) -> listener::Listener {
    let name = format!("{ip}_{}", port.port);
    let cluster = envoy::cluster_name(port.port, "", &key.host());
    let mut default = envoy::tcp_proxy_filter(&cluster, &cluster);
    let mut chains = vec![];
    if let Some((ns, vs)) = mesh.mesh_route(key) {
        if port.is_tls() {
            for r in &vs.tls {
                for m in r.matches.iter().filter(|m| {
                    l4_applies(
                        m.port,
                        &m.source_labels,
                        &m.gateways,
                        &m.source_namespace,
                        proxy,
                        port.port,
                    )
                }) {
                    if let Some(f) = weighted_tcp(mesh, ns, &cluster, &r.route) {
                        chains.push(sni_chain(&m.sni_hosts, f));
                    }
                }
            }
        }
        let tcp = vs.tcp.iter().find(|r| {
            r.matches.is_empty()
                || r.matches.iter().any(|m| {
                    l4_applies(
                        m.port,
                        &m.source_labels,
                        &m.gateways,
                        &m.source_namespace,
                        proxy,
                        port.port,
                    )
                })
        });
        if let Some(f) = tcp.and_then(|r| weighted_tcp(mesh, ns, &cluster, &r.route)) {
            default = f;
        }
    }
    let mut l = unbound(envoy::listener(&name, &ip.to_string(), port.port, default));
    if !chains.is_empty() {
        use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
        with_chains(
            &mut l,
            chains,
            "envoy.filters.listener.tls_inspector",
            any(&TlsInspector::default()),
        );
    }
    l
}

/// An outbound listener reached only through 15001's hand-off.
fn unbound(mut l: listener::Listener) -> listener::Listener {
    l.bind_to_port = Some(BoolValue { value: false });
    l.traffic_direction =
        envoy_types::pb::envoy::config::core::v3::TrafficDirection::Outbound as i32;
    l
}

/// A sidecar's resources.
pub fn generate(mesh: &Mesh, proxy: &ProxyInfo) -> Resources {
    let mut listeners = BTreeMap::new();
    let mut routes = BTreeMap::new();
    let mut outbound = envoy::listener(
        "virtualOutbound",
        "0.0.0.0",
        15001,
        envoy::tcp_proxy_filter(PASSTHROUGH, PASSTHROUGH),
    );
    outbound.use_original_dst = Some(BoolValue { value: true });
    outbound.traffic_direction =
        envoy_types::pb::envoy::config::core::v3::TrafficDirection::Outbound as i32;
    listeners.insert(outbound.name.clone(), any(&outbound));
    let mut http_ports = BTreeSet::new();
    for (key, svc) in &mesh.services {
        for p in &svc.ports {
            if p.is_http() {
                http_ports.insert(p.port);
            } else if let (Some(ip), true) = (svc.cluster_ip, p.protocol == "TCP") {
                let l = tcp_listener(mesh, proxy, key, ip, p);
                listeners.insert(l.name.clone(), any(&l));
            }
        }
    }
    for se in mesh.service_entries.values() {
        for p in &se.ports {
            let proto = p.protocol.as_deref().unwrap_or("TCP").to_ascii_uppercase();
            if matches!(proto.as_str(), "HTTP" | "HTTP2" | "GRPC") {
                http_ports.insert(p.number as u16);
            }
        }
    }
    for port in http_ports {
        let name = port.to_string();
        routes.insert(name.clone(), any(&outbound_routes(mesh, proxy, port)));
        let l = unbound(envoy::listener(
            &format!("0.0.0.0_{port}"),
            "0.0.0.0",
            port,
            envoy::hcm_filter(&format!("outbound_0.0.0.0_{port}"), envoy::rds(&name)),
        ));
        listeners.insert(l.name.clone(), any(&l));
    }
    let inbound = mesh.inbound_ports(&proxy.ip);
    // The application's own TLS passes as it is.
    let tls_ports = mesh.inbound_tls(&proxy.ip);
    let l = inbound_listener(&inbound, |port| match tls_ports.contains(&port) {
        true => MtlsMode::Disable,
        false => mesh.mtls_mode(&proxy.namespace, &proxy.labels, port),
    });
    listeners.insert(l.name.clone(), any(&l));
    let mut clusters: BTreeMap<String, _> = envoy::clusters(mesh)
        .into_iter()
        .chain(envoy::external_clusters(mesh))
        .collect();
    for name in [PASSTHROUGH, INBOUND_PASSTHROUGH] {
        let (n, c) = envoy::original_dst_cluster(name, false);
        clusters.insert(n, c);
    }
    let h2 = mesh.inbound_http2(&proxy.ip);
    for port in inbound.keys() {
        let (n, c) = envoy::original_dst_cluster(&inbound_cluster(*port), h2.contains(port));
        clusters.insert(n, c);
    }
    let (n, c) = envoy::black_hole_cluster();
    clusters.insert(n, c);
    let mut out = Resources::default();
    out.0.insert(xds::LISTENER, listeners);
    out.0.insert(xds::ROUTE, routes);
    out.0.insert(xds::CLUSTER, clusters);
    // Client certificates and CAs that DestinationRules name.
    let credentials = mesh.client_credentials();
    let names = credentials.iter().map(String::as_str);
    out.0.insert(
        xds::SECRET,
        crate::tls::secrets(mesh, &proxy.namespace, names),
    );
    out.0
        .insert(xds::ENDPOINT, envoy::endpoints(mesh).into_iter().collect());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Endpoint, Service, ServicePort, TLS_MODE_LABEL};

    /// A sidecar at 10.0.0.1 in `shop`, serving `ratings` (port http 9080),
    /// with the namespace's PeerAuthentication `mode` (none when None).
    fn sidecar(mode: Option<&str>) -> Resources {
        let mut mesh = Mesh {
            domain: "cluster.local".into(),
            ..Default::default()
        };
        let labels: BTreeMap<String, String> = [
            ("app".to_string(), "ratings".to_string()),
            (TLS_MODE_LABEL.to_string(), "istio".to_string()),
        ]
        .into();
        mesh.services.insert(
            ServiceKey::resolve("ratings", "shop", "cluster.local"),
            Service {
                cluster_ip: Some("10.96.0.10".parse().expect("ip")),
                ports: vec![ServicePort::named("http", 9080)],
                endpoints: vec![Endpoint {
                    ip: "10.0.0.1".parse().expect("ip"),
                    ports: [("http".to_string(), 9080)].into(),
                    labels: labels.clone(),
                }],
            },
        );
        if let Some(mode) = mode {
            mesh.peer_authentications.insert(
                ("shop".into(), "default".into()),
                serde_json::from_value(serde_json::json!({"mtls": {"mode": mode}})).expect("pa"),
            );
        }
        let proxy = ProxyInfo {
            kind: "sidecar".into(),
            ip: "10.0.0.1".into(),
            namespace: "shop".into(),
            labels,
            ..Default::default()
        };
        generate(&mesh, &proxy)
    }

    /// A resource as mast proxy reads it (its JSON form).
    fn read(out: &Resources, type_url: &'static str, name: &str) -> serde_json::Value {
        let any = &out.0[type_url][name];
        let decoded =
            mast_proxy::xds::Resources::default().with(type_url, std::slice::from_ref(any));
        assert!(decoded.is_ok(), "{name}: {:?}", decoded.err());
        mast_proxy::xds::to_json(any).expect("json")
    }

    fn chains(l: &serde_json::Value) -> Vec<(String, String, bool)> {
        l["filter_chains"]
            .as_array()
            .expect("chains")
            .iter()
            .map(|c| {
                (
                    c["name"].as_str().unwrap_or_default().to_owned(),
                    c["filter_chain_match"]["transport_protocol"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    c.get("transport_socket").is_some(),
                )
            })
            .collect()
    }

    #[test]
    fn peer_authentication_shapes_the_inbound_listener_and_auto_mtls_the_clusters() {
        let s = |a: &str, b: &str, c: bool| (a.to_owned(), b.to_owned(), c);
        let strict = sidecar(Some("STRICT"));
        let l = read(&strict, xds::LISTENER, "virtualInbound");
        assert_eq!(
            chains(&l),
            [
                s("0.0.0.0_9080-mtls", "tls", true),
                s("virtualInbound-mtls", "tls", true)
            ],
            "STRICT: mutual TLS only, the passthrough too"
        );
        assert!(l.get("default_filter_chain").is_none());
        let filters: Vec<&str> = l["listener_filters"]
            .as_array()
            .expect("filters")
            .iter()
            .filter_map(|f| f["name"].as_str())
            .collect();
        assert_eq!(
            filters,
            [
                "envoy.filters.listener.original_dst",
                "envoy.filters.listener.tls_inspector"
            ]
        );
        let permissive = read(&sidecar(None), xds::LISTENER, "virtualInbound");
        assert_eq!(
            chains(&permissive),
            [
                s("0.0.0.0_9080-mtls", "tls", true),
                s("0.0.0.0_9080", "raw_buffer", false)
            ],
            "PERMISSIVE (the default): both"
        );
        assert!(permissive.get("default_filter_chain").is_some());
        let disable = read(&sidecar(Some("DISABLE")), xds::LISTENER, "virtualInbound");
        assert_eq!(chains(&disable), [s("0.0.0.0_9080", "", false)]);
        // The endpoint has a sidecar: its clients take mutual TLS, chosen
        // per endpoint by its metadata (Istio's auto mTLS).
        let name = "outbound|9080||ratings.shop.svc.cluster.local";
        let c = read(&strict, xds::CLUSTER, name);
        let matches = &c["transport_socket_matches"];
        assert_eq!(matches[0]["match"], serde_json::json!({"tlsMode": "istio"}));
        assert_eq!(matches[1]["match"], serde_json::json!({}));
        let e = read(&strict, xds::ENDPOINT, name);
        assert_eq!(
            e["endpoints"][0]["lb_endpoints"][0]["metadata"]["filter_metadata"]
                ["envoy.transport_socket_match"],
            serde_json::json!({"tlsMode": "istio"})
        );
        let ctx = &matches[0]["transport_socket"]["typed_config"];
        assert_eq!(
            ctx["sni"],
            "outbound_.9080_._.ratings.shop.svc.cluster.local"
        );
        let common = &ctx["common_tls_context"];
        assert_eq!(
            common["tls_certificate_sds_secret_configs"][0]["name"],
            "default"
        );
        assert_eq!(
            common["combined_validation_context"]["validation_context_sds_secret_config"]["name"],
            "ROOTCA"
        );
        // Under DISABLE, plain text.
        let c = read(&sidecar(Some("DISABLE")), xds::CLUSTER, name);
        assert!(c.get("transport_socket").is_none());
        assert!(c.get("transport_socket_matches").is_none());
    }
}
