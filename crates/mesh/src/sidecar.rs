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
use crate::model::{Mesh, ServiceKey};
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
fn inbound_listener(ports: &BTreeMap<u16, bool>) -> listener::Listener {
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
        chains.push(listener::FilterChain {
            name: format!("0.0.0.0_{port}"),
            filter_chain_match: Some(listener::FilterChainMatch {
                destination_port: Some(envoy_types::pb::google::protobuf::UInt32Value {
                    value: port as u32,
                }),
                ..Default::default()
            }),
            filters: vec![filter],
            ..Default::default()
        });
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
    l
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
        let tls_port = {
            let p = port
                .app_protocol
                .clone()
                .unwrap_or_else(|| port.name.split('-').next().unwrap_or("").to_owned())
                .to_ascii_lowercase();
            p == "tls" || p == "https"
        };
        if tls_port {
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
    let l = inbound_listener(&inbound);
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
