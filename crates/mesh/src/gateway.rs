//! Gateway servers that carry TCP, as istiod builds them
//! (`createGatewayTCPFilterChainOpts`):
//!
//! - **TCP** (`protocol: TCP`, `MONGO`, `MYSQL`, `REDIS`): one filter chain
//!   with the `tcp` route of the first bound VirtualService whose hosts
//!   match the server's and whose match (port, gateways) applies.
//! - **TLS passthrough** (`TLS` or `HTTPS` with `tls.mode: PASSTHROUGH`):
//!   a filter chain per `tls` route match, chosen by the client's SNI
//!   (`sniHosts`, read by the TLS inspector); the TLS is not terminated,
//!   the bytes reach the destination as the client sent them.
//! - **TLS termination to TCP** (`TLS` with SIMPLE, MUTUAL or
//!   OPTIONAL_MUTUAL): the server's certificate, then its `tcp` route.
//!
//! They share a port's listener (`0.0.0.0_<port>`) with HTTPS servers
//! that terminate TLS, each chain picked by SNI.

use crate::envoy::any;
use crate::model::Mesh;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::listener::v3 as listener;
use mast_api::istio::types::{Server, VirtualService};

/// How a gateway serves a server.
pub enum Kind {
    /// HTTP, HTTP2, GRPC: routed by the bound VirtualServices' `http`.
    Http,
    /// HTTPS terminated at the gateway, then `http` routes ([`crate::tls`]).
    Https,
    /// Raw TCP, or TLS terminated at the gateway: the `tcp` routes.
    Tcp,
    /// TLS passed through by SNI: the `tls` routes.
    Passthrough,
    /// What mast does not serve (ISTIO_MUTUAL, AUTO_PASSTHROUGH, UDP...).
    Unsupported,
}

/// How a gateway serves `s`, by its protocol and TLS mode, as istiod
/// reads them.
pub fn kind(s: &Server) -> Kind {
    let proto = s.port.protocol_upper();
    let mode = s
        .tls
        .as_ref()
        .and_then(|t| t.mode.as_deref())
        .unwrap_or("PASSTHROUGH");
    let terminates = matches!(mode, "SIMPLE" | "MUTUAL" | "OPTIONAL_MUTUAL");
    match proto.as_str() {
        "HTTP" | "HTTP2" | "GRPC" | "GRPC-WEB" | "" => Kind::Http,
        "HTTPS" | "TLS" if terminates => {
            if proto == "HTTPS" {
                Kind::Https
            } else {
                Kind::Tcp
            }
        }
        "HTTPS" | "TLS" if mode == "PASSTHROUGH" => Kind::Passthrough,
        "HTTPS" | "TLS" => Kind::Unsupported,
        "TCP" | "MONGO" | "MYSQL" | "REDIS" => Kind::Tcp,
        _ => Kind::Unsupported,
    }
}

/// Istio's `host.Name.Matches`: equal, or one's wildcard covers the other.
fn hosts_match(a: &str, b: &str) -> bool {
    let covers = |w: &str, h: &str| {
        w == "*"
            || w.strip_prefix('*')
                .is_some_and(|sfx| h.ends_with(sfx) && h.len() >= sfx.len())
    };
    a.eq_ignore_ascii_case(b) || covers(a, b) || covers(b, a)
}

/// Whether a VirtualService in `ns` names a host the server serves
/// (`ns/host` server hosts only for that namespace), as istiod's
/// `pickMatchingGatewayHosts`.
fn serves(s: &Server, ns: &str, vs: &VirtualService) -> bool {
    s.hosts.iter().any(|h| {
        let h = match h.split_once('/') {
            Some((hns, h)) if hns == ns || hns == "*" => h,
            Some(_) => return false,
            None => h,
        };
        vs.hosts.iter().any(|v| hosts_match(h, v))
    })
}

/// istiod's `l4SingleMatch`: the match's port is the server's (or unset),
/// and its gateways name this one (or none). `gw` is (namespace, name).
fn l4_match(port: Option<u32>, gateways: &[String], s: &Server, gw: &(String, String)) -> bool {
    port.is_none_or(|p| p == s.port.number)
        && (gateways.is_empty()
            || gateways.iter().any(|g| match g.split_once('/') {
                Some((ns, name)) => ns == gw.0 && name == gw.1,
                None => *g == gw.1,
            }))
}

/// The filter chains of server `s` of gateway `gw` (TCP, TLS passthrough
/// or TLS terminated to TCP), from the VirtualServices `bound` to it.
/// `taken` holds the SNI names earlier chains of the port claimed: a
/// `tls` route that repeats one is skipped whole, as istiod does (Envoy
/// refuses two chains with one match).
pub fn chains(
    mesh: &Mesh,
    gw: &(String, String),
    s: &Server,
    bound: &[(String, &VirtualService)],
    taken: &mut std::collections::BTreeSet<String>,
) -> Vec<listener::FilterChain> {
    let bound = bound.iter().filter(|(ns, vs)| serves(s, ns, vs));
    let stat = format!("0.0.0.0_{}", s.port.number);
    match kind(s) {
        Kind::Tcp => {
            let Some(filter) = bound.into_iter().find_map(|(ns, vs)| {
                let r = vs.tcp.iter().find(|r| {
                    r.matches.is_empty()
                        || r.matches
                            .iter()
                            .any(|m| l4_match(m.port, &m.gateways, s, gw))
                })?;
                crate::sidecar::weighted_tcp(mesh, ns, &stat, &r.route)
            }) else {
                return vec![];
            };
            if s.tls.is_none() && !claim(taken, &[]) {
                return vec![]; // Another server took the port's chain without SNI.
            }
            let mut chain = listener::FilterChain {
                filters: vec![filter],
                ..Default::default()
            };
            if let Some(t) = s.tls.as_ref().filter(|_| s.port.protocol_upper() == "TLS") {
                let names = crate::tls::server_names(s);
                if !claim(taken, &names) {
                    return vec![];
                }
                chain.filter_chain_match = Some(listener::FilterChainMatch {
                    server_names: names,
                    ..Default::default()
                });
                let mut context = crate::tls::context(t);
                if let Some(c) = context.common_tls_context.as_mut() {
                    c.alpn_protocols.clear(); // Not HTTP: no ALPN, as istiod for TCP.
                }
                chain.transport_socket = Some(core::TransportSocket {
                    name: "envoy.transport_sockets.tls".into(),
                    config_type: Some(core::transport_socket::ConfigType::TypedConfig(any(
                        &context,
                    ))),
                });
            }
            vec![chain]
        }
        Kind::Passthrough => {
            let mut out = vec![];
            for (ns, vs) in bound {
                for r in &vs.tls {
                    for m in r
                        .matches
                        .iter()
                        .filter(|m| l4_match(m.port, &m.gateways, s, gw))
                    {
                        let Some(f) = crate::sidecar::weighted_tcp(mesh, ns, &stat, &r.route)
                        else {
                            continue;
                        };
                        if claim(taken, &m.sni_hosts) {
                            out.push(crate::sidecar::sni_chain(&m.sni_hosts, f));
                        }
                    }
                }
            }
            out
        }
        _ => vec![],
    }
}

/// Claim a chain's SNI names on its port (none: the chain without SNI,
/// claimed as ""): false, and nothing claimed, when one is taken already.
pub fn claim(taken: &mut std::collections::BTreeSet<String>, names: &[String]) -> bool {
    let keys: Vec<String> = if names.is_empty() {
        vec![String::new()]
    } else {
        names.iter().map(|n| n.to_ascii_lowercase()).collect()
    };
    if keys.iter().any(|k| taken.contains(k)) {
        return false;
    }
    taken.extend(keys);
    true
}

/// The listener `0.0.0.0_<port>` of these chains (TCP and TLS), reading
/// the SNI first when a chain matches on it or terminates TLS.
pub fn listener(port: u16, chains: Vec<listener::FilterChain>) -> listener::Listener {
    let mut l = listener::Listener {
        name: format!("0.0.0.0_{port}"),
        address: Some(crate::envoy::socket("0.0.0.0", port)),
        ..Default::default()
    };
    add(&mut l, chains);
    l
}

/// Add TCP and TLS chains to a port's listener (a new one, or the HTTPS
/// servers'), with the TLS inspector when a chain needs the SNI.
pub fn add(l: &mut listener::Listener, chains: Vec<listener::FilterChain>) {
    let sni = chains.iter().any(|c| {
        c.transport_socket.is_some()
            || c.filter_chain_match
                .as_ref()
                .is_some_and(|m| !m.server_names.is_empty())
    });
    l.filter_chains.extend(chains);
    if sni && l.listener_filters.is_empty() {
        use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
        l.listener_filters = vec![listener::ListenerFilter {
            name: "envoy.filters.listener.tls_inspector".into(),
            config_type: Some(listener::listener_filter::ConfigType::TypedConfig(any(
                &TlsInspector::default(),
            ))),
            ..Default::default()
        }];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(v: serde_json::Value) -> Server {
        serde_json::from_value(v).expect("server")
    }

    #[test]
    fn servers_are_served_as_istiod_reads_their_protocol_and_mode() {
        let k = |v| match kind(&server(v)) {
            Kind::Http => "http",
            Kind::Https => "https",
            Kind::Tcp => "tcp",
            Kind::Passthrough => "passthrough",
            Kind::Unsupported => "unsupported",
        };
        let p = |proto: &str| serde_json::json!({"number": 1, "protocol": proto});
        assert_eq!(k(serde_json::json!({"port": p("HTTP")})), "http");
        assert_eq!(k(serde_json::json!({"port": p("grpc")})), "http");
        assert_eq!(k(serde_json::json!({"port": p("TCP")})), "tcp");
        assert_eq!(k(serde_json::json!({"port": p("MONGO")})), "tcp");
        let tls = |proto: &str, mode: &str| {
            k(serde_json::json!({"port": p(proto), "tls": {"mode": mode}}))
        };
        assert_eq!(tls("HTTPS", "SIMPLE"), "https");
        assert_eq!(tls("HTTPS", "PASSTHROUGH"), "passthrough");
        assert_eq!(tls("TLS", "PASSTHROUGH"), "passthrough");
        assert_eq!(tls("TLS", "MUTUAL"), "tcp");
        assert_eq!(tls("TLS", "AUTO_PASSTHROUGH"), "unsupported");
        assert_eq!(tls("HTTPS", "ISTIO_MUTUAL"), "unsupported");
        assert_eq!(k(serde_json::json!({"port": p("UDP")})), "unsupported");
    }

    /// One gateway proxy's listeners, from Istio objects as JSON: a TCP
    /// port, and a port shared by an HTTPS server and TLS passthrough.
    #[test]
    fn tcp_and_passthrough_servers_are_istiods_filter_chains() {
        use serde_json::json;
        let mut mesh = Mesh {
            domain: "cluster.local".into(),
            ..Default::default()
        };
        let key = |n: &str| ("istio-system".to_string(), n.to_string());
        mesh.gateways.insert(
            key("gw"),
            serde_json::from_value(json!({"selector": {"istio": "ingressgateway"}, "servers": [
                {"port": {"number": 31400, "name": "tcp", "protocol": "TCP"}, "hosts": ["*"]},
                {"port": {"number": 443, "name": "https", "protocol": "HTTPS"}, "hosts": ["a.example.com"],
                 "tls": {"mode": "SIMPLE", "credentialName": "a"}},
                {"port": {"number": 443, "name": "tls", "protocol": "TLS"}, "hosts": ["*.example.com"],
                 "tls": {"mode": "PASSTHROUGH"}},
                {"port": {"number": 9443, "name": "tls-db", "protocol": "TLS"}, "hosts": ["db.example.com"],
                 "tls": {"mode": "SIMPLE", "credentialName": "db"}}]}))
            .expect("gateway"),
        );
        let route = |host: &str, port: u16| json!([{"destination": {"host": host, "port": {"number": port}}}]);
        let vs =
            |v: serde_json::Value| -> VirtualService { serde_json::from_value(v).expect("vs") };
        mesh.virtual_services.insert(
            key("1-tcp"),
            vs(json!({"hosts": ["*"], "gateways": ["gw"], "tcp": [
                {"match": [{"port": 9999}], "route": route("other", 1)},
                {"match": [{"port": 31400}], "route": route("echo", 9000)}]})),
        );
        mesh.virtual_services.insert(
            key("1-tls-db"),
            vs(
                json!({"hosts": ["db.example.com"], "gateways": ["gw"], "tcp": [
                {"route": route("db", 5432)}]}),
            ),
        );
        for c in ["a", "db"] {
            mesh.credentials.insert(
                key(c),
                crate::model::Credential {
                    cert: Some(b"cert".to_vec()),
                    key: Some(b"key".to_vec()),
                    ca: None,
                },
            );
        }
        mesh.virtual_services.insert(
            key("2-tls"),
            vs(
                json!({"hosts": ["*.example.com"], "gateways": ["istio-system/gw"], "tls": [
                {"match": [{"sniHosts": ["b.example.com"]}], "route": route("b", 443)},
                {"match": [{"sniHosts": ["a.example.com"]}], "route": route("a", 443)}]}),
            ),
        );
        mesh.virtual_services.insert(
            key("3-tls-again"),
            vs(
                json!({"hosts": ["b.example.com"], "gateways": ["gw"], "tls": [
                {"match": [{"sniHosts": ["b.example.com"]}], "route": route("c", 443)}]}),
            ),
        );
        let proxy = crate::xds::ProxyInfo {
            kind: "router".into(),
            namespace: "istio-system".into(),
            labels: [("istio".to_string(), "ingressgateway".to_string())].into(),
            ..Default::default()
        };
        let out = crate::configuration(&mesh, &proxy);
        let listeners = &out.0[crate::xds::LISTENER];
        // Each listener as mast proxy reads it, and decoded.
        let decode = |name: &str| -> listener::Listener {
            let any = &listeners[name];
            let read = mast_proxy::xds::Resources::default()
                .with(mast_proxy::xds::LISTENER, std::slice::from_ref(any));
            assert!(read.is_ok(), "{name}: {:?}", read.err());
            prost::Message::decode(any.value.as_slice()).expect("listener")
        };
        // TCP: one chain, the tcp route whose port matches; no inspector.
        let tcp = decode("0.0.0.0_31400");
        assert_eq!(tcp.filter_chains.len(), 1);
        assert!(tcp.listener_filters.is_empty());
        let proxy_of = |c: &listener::FilterChain| -> String {
            use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3 as t;
            let Some(listener::filter::ConfigType::TypedConfig(a)) = &c.filters[0].config_type
            else {
                return String::new();
            };
            let p: t::TcpProxy = prost::Message::decode(a.value.as_slice()).expect("tcp_proxy");
            match p.cluster_specifier {
                Some(t::tcp_proxy::ClusterSpecifier::Cluster(c)) => c,
                _ => String::new(),
            }
        };
        assert_eq!(
            proxy_of(&tcp.filter_chains[0]),
            "outbound|9000||echo.istio-system.svc.cluster.local"
        );
        // 443: the HTTPS server's chain, then passthrough by SNI; the SNI
        // the HTTPS server has, and a repeated one, are skipped.
        let shared = decode("0.0.0.0_443");
        let names: Vec<(Vec<String>, bool)> = shared
            .filter_chains
            .iter()
            .map(|c| {
                (
                    c.filter_chain_match
                        .clone()
                        .unwrap_or_default()
                        .server_names,
                    c.transport_socket.is_some(),
                )
            })
            .collect();
        assert_eq!(
            names,
            [
                (vec!["a.example.com".to_string()], true),
                (vec!["b.example.com".to_string()], false)
            ]
        );
        assert_eq!(
            proxy_of(&shared.filter_chains[1]),
            "outbound|443||b.istio-system.svc.cluster.local"
        );
        assert_eq!(shared.listener_filters.len(), 1, "the TLS inspector");
        // TLS terminated, then TCP: the server's certificate, no ALPN.
        let db = decode("0.0.0.0_9443");
        assert_eq!(
            proxy_of(&db.filter_chains[0]),
            "outbound|5432||db.istio-system.svc.cluster.local"
        );
        let Some(core::transport_socket::ConfigType::TypedConfig(ctx)) = db.filter_chains[0]
            .transport_socket
            .clone()
            .and_then(|t| t.config_type)
        else {
            panic!("no TLS context on the db chain");
        };
        let ctx: envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::DownstreamTlsContext =
            prost::Message::decode(ctx.value.as_slice()).expect("context");
        let common = ctx.common_tls_context.unwrap_or_default();
        assert!(common.alpn_protocols.is_empty());
        assert_eq!(
            common.tls_certificate_sds_secret_configs[0].name,
            "kubernetes://db"
        );
        // The servers' credentials are served (those in the proxy's namespace).
        assert_eq!(
            out.0[crate::xds::SECRET].keys().collect::<Vec<_>>(),
            ["kubernetes://a", "kubernetes://db"]
        );
    }

    #[test]
    fn hosts_match_as_istios_host_names() {
        assert!(hosts_match("*", "a.example.com"));
        assert!(hosts_match("*.example.com", "a.example.com"));
        assert!(hosts_match("a.example.com", "*.example.com"));
        assert!(!hosts_match("*.example.com", "a.example.org"));
        assert!(!hosts_match("a.example.com", "b.example.com"));
        let s = server(serde_json::json!({"port": {"number": 1}, "hosts": ["shop/*.example.com"]}));
        let vs: VirtualService =
            serde_json::from_value(serde_json::json!({"hosts": ["a.example.com"]})).expect("vs");
        assert!(serves(&s, "shop", &vs));
        assert!(
            !serves(&s, "default", &vs),
            "ns/host serves that namespace only"
        );
    }
}
