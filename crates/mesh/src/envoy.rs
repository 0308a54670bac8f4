//! The mesh model turned into Envoy v3 resources, named as istiod names
//! them: clusters `outbound|<port>|<subset>|<host>`, route configurations
//! `http.<port>`, listeners `0.0.0.0_<port>`.

use crate::model::{Mesh, ServiceKey};
use envoy_types::pb::envoy::config::cluster::v3 as cluster;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::endpoint::v3 as endpoint;
use envoy_types::pb::envoy::config::listener::v3 as listener;
use envoy_types::pb::envoy::config::route::v3 as route;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3 as fault;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use envoy_types::pb::envoy::r#type::matcher::v3 as matcher;
use envoy_types::pb::envoy::r#type::v3::{fractional_percent::DenominatorType, FractionalPercent};
use envoy_types::pb::google::protobuf::{Any, Duration, UInt32Value};
use mast_api::istio::types::{HeaderOperations, HttpMatchRequest, HttpRoute, StringMatch};
use prost::Name;

pub fn any<T: Name + prost::Message>(m: &T) -> Any {
    Any {
        type_url: T::type_url(),
        value: m.encode_to_vec(),
    }
}

fn duration(ns: u128) -> Duration {
    Duration {
        seconds: (ns / 1_000_000_000) as i64,
        nanos: (ns % 1_000_000_000) as i32,
    }
}

fn parse(d: &Option<String>) -> Option<Duration> {
    d.as_deref()
        .and_then(mast_api::istio::parse_duration)
        .map(duration)
}

/// Istio's cluster name.
pub fn cluster_name(port: u16, subset: &str, host: &str) -> String {
    format!("outbound|{port}|{subset}|{host}")
}

/// Every Service port, and every subset of it a DestinationRule defines,
/// as an EDS cluster.
pub fn clusters(mesh: &Mesh) -> Vec<(String, Any)> {
    let mut out = vec![];
    for (key, svc) in &mesh.services {
        let host = key.host();
        for p in &svc.ports {
            let subsets = std::iter::once(String::new())
                .chain(mesh.subsets(key).into_iter().map(|(name, _)| name));
            for subset in subsets {
                let name = cluster_name(p.port, &subset, &host);
                let tp = mesh.policy(key, &subset, Some(p.port));
                let mut c = cluster::Cluster {
                    name: name.clone(),
                    cluster_discovery_type: Some(cluster::cluster::ClusterDiscoveryType::Type(
                        cluster::cluster::DiscoveryType::Eds as i32,
                    )),
                    eds_cluster_config: Some(cluster::cluster::EdsClusterConfig {
                        eds_config: Some(core::ConfigSource {
                            resource_api_version: core::ApiVersion::V3 as i32,
                            config_source_specifier: Some(
                                core::config_source::ConfigSourceSpecifier::Ads(
                                    core::AggregatedConfigSource {},
                                ),
                            ),
                            ..Default::default()
                        }),
                        service_name: name.clone(),
                    }),
                    ..Default::default()
                };
                apply_policy(&mut c, &tp, p.is_http2(), &host);
                let mode = tp.tls.as_ref().and_then(|t| t.mode.as_deref());
                if mode == Some("ISTIO_MUTUAL") {
                    c.transport_socket = Some(crate::tls::istio_mutual(&name, &mesh.domain));
                } else if tp.tls.is_none() && mesh.auto_mtls(key, &subset, p.port) {
                    c.transport_socket_matches = crate::tls::auto_mtls(&name, &mesh.domain);
                }
                out.push((name, any(&c)));
            }
        }
    }
    out
}

/// A DestinationRule's merged policy on a cluster, as istiod applies it:
/// load balancer, connection pool, outlier detection and client TLS. An
/// ORIGINAL_DST cluster keeps its own balancing. `host` is the SNI when
/// the policy names none.
fn apply_policy(
    c: &mut cluster::Cluster,
    tp: &mast_api::istio::types::TrafficPolicy,
    h2: bool,
    host: &str,
) {
    let lb = tp
        .load_balancer
        .as_ref()
        .and_then(|l| l.simple.clone())
        .unwrap_or_default();
    let hashed = tp
        .load_balancer
        .as_ref()
        .and_then(|l| l.consistent_hash.as_ref());
    let lb_policy = match lb.as_str() {
        _ if hashed.is_some_and(|h| h.maglev.is_some()) => cluster::cluster::LbPolicy::Maglev,
        _ if hashed.is_some() => cluster::cluster::LbPolicy::RingHash,
        "LEAST_REQUEST" | "LEAST_CONN" => cluster::cluster::LbPolicy::LeastRequest,
        "RANDOM" => cluster::cluster::LbPolicy::Random,
        _ => cluster::cluster::LbPolicy::RoundRobin,
    };
    if c.lb_policy != cluster::cluster::LbPolicy::ClusterProvided as i32 {
        c.lb_policy = lb_policy as i32;
    }
    let pool = tp.connection_pool.clone().unwrap_or_default();
    c.connect_timeout = Some(
        parse(&pool.tcp.as_ref().and_then(|t| t.connect_timeout.clone()))
            .unwrap_or(duration(10_000_000_000)),
    );
    c.circuit_breakers = circuit_breakers(&pool);
    c.typed_extension_protocol_options = protocol_options(h2, &pool);
    c.upstream_connection_options = upstream_connection_options(&pool);
    c.outlier_detection = tp.outlier_detection.as_ref().map(outlier_detection);
    c.common_lb_config = tp.outlier_detection.as_ref().map(panic_threshold);
    c.transport_socket = tp.tls.as_ref().and_then(|t| crate::tls::client(t, host));
}

fn u32v(v: Option<i32>) -> Option<UInt32Value> {
    v.map(|v| UInt32Value {
        value: v.max(0) as u32,
    })
}

/// DestinationRule connectionPool limits as Envoy circuit breakers; what
/// overflows gets a 503 with the `UO` flag (`x-envoy-overloaded`). What
/// the rule leaves unset is unbounded, as Istio sets it: Envoy's own
/// defaults (1024 connections, pending and active requests, and 3 retries
/// in flight) would cut traffic, retries first, when many endpoints go at
/// once.
fn circuit_breakers(
    pool: &mast_api::istio::types::ConnectionPoolSettings,
) -> Option<cluster::CircuitBreakers> {
    let tcp = pool.tcp.clone().unwrap_or_default();
    let http = pool.http.clone().unwrap_or_default();
    let limit = |v: Option<i32>| {
        Some(UInt32Value {
            value: v.map_or(u32::MAX, |v| v.max(0) as u32),
        })
    };
    Some(cluster::CircuitBreakers {
        thresholds: vec![cluster::circuit_breakers::Thresholds {
            max_connections: limit(tcp.max_connections),
            max_pending_requests: limit(http.http1_max_pending_requests),
            max_requests: limit(http.http2_max_requests),
            max_retries: limit(http.max_retries),
            ..Default::default()
        }],
        ..Default::default()
    })
}

/// DestinationRule outlierDetection as Envoy's, as istiod maps it: what
/// the rule leaves out keeps Envoy's default (5 consecutive 5xx eject),
/// success-rate ejection is off, and a base ejection time over 300 s is
/// also the longest ejection.
fn outlier_detection(o: &mast_api::istio::types::OutlierDetection) -> cluster::OutlierDetection {
    let enforce = |n: u32| {
        Some(UInt32Value {
            value: if n > 0 { 100 } else { 0 },
        })
    };
    let five_xx = o
        .consecutive_5xx_errors
        .or(o.consecutive_errors.map(|e| e.max(0) as u32));
    let base = parse(&o.base_ejection_time);
    cluster::OutlierDetection {
        consecutive_5xx: five_xx.map(|value| UInt32Value { value }),
        enforcing_consecutive_5xx: five_xx.and_then(enforce),
        consecutive_gateway_failure: o
            .consecutive_gateway_errors
            .map(|value| UInt32Value { value }),
        enforcing_consecutive_gateway_failure: o.consecutive_gateway_errors.and_then(enforce),
        interval: parse(&o.interval),
        max_ejection_time: base.filter(|b| b.seconds > 300 || (b.seconds == 300 && b.nanos > 0)),
        base_ejection_time: base,
        max_ejection_percent: u32v(o.max_ejection_percent.filter(|p| *p > 0)),
        enforcing_success_rate: Some(UInt32Value { value: 0 }),
        ..split_local_origin(o)
    }
}

/// `splitExternalLocalOriginErrors`: connection failures, resets and
/// timeouts count apart from the upstream's 5xx, and eject after
/// `consecutiveLocalOriginFailures` in a row, if set.
fn split_local_origin(o: &mast_api::istio::types::OutlierDetection) -> cluster::OutlierDetection {
    if o.split_external_local_origin_errors != Some(true) {
        return Default::default();
    }
    let n = o.consecutive_local_origin_failures.filter(|n| *n > 0);
    cluster::OutlierDetection {
        split_external_local_origin_errors: true,
        consecutive_local_origin_failure: n.map(|value| UInt32Value { value }),
        enforcing_consecutive_local_origin_failure: n.map(|_| UInt32Value { value: 100 }),
        enforcing_local_origin_success_rate: Some(UInt32Value { value: 0 }),
        ..Default::default()
    }
}

/// With outlier detection, Istio sets Envoy's panic threshold to
/// `minHealthPercent`, 0 (off) by default: with few pods per service,
/// sending traffic to ejected endpoints because too many are out helps no
/// one.
fn panic_threshold(
    o: &mast_api::istio::types::OutlierDetection,
) -> cluster::cluster::CommonLbConfig {
    cluster::cluster::CommonLbConfig {
        healthy_panic_threshold: Some(envoy_types::pb::envoy::r#type::v3::Percent {
            value: f64::from(o.min_health_percent.unwrap_or(0).clamp(0, 100)),
        }),
        ..Default::default()
    }
}

/// ServiceEntries' hosts as clusters with their endpoints inline: STATIC
/// for addresses, STRICT_DNS for names (DNS, DNS_ROUND_ROBIN), and
/// ORIGINAL_DST for resolution NONE.
pub fn external_clusters(mesh: &Mesh) -> Vec<(String, Any)> {
    let mut out = vec![];
    for se in mesh.service_entries.values() {
        let res = se.resolution.as_deref().unwrap_or("NONE");
        let kind = match res {
            "STATIC" => cluster::cluster::DiscoveryType::Static,
            "DNS" | "DNS_ROUND_ROBIN" => cluster::cluster::DiscoveryType::StrictDns,
            _ => {
                // NONE: connect where the application was connecting (the
                // sidecar's original destination), as Istio does.
                for host in &se.hosts {
                    for p in &se.ports {
                        let name = cluster_name(p.number as u16, "", host);
                        let mut c = original_dst(&name);
                        let tp = mesh.external_policy(host, p.number as u16);
                        apply_policy(&mut c, &tp, se_http2(p), host);
                        out.push((name, any(&c)));
                    }
                }
                continue;
            }
        };
        for host in &se.hosts {
            for p in &se.ports {
                let name = cluster_name(p.number as u16, "", host);
                let target = |ep: &mast_api::istio::types::WorkloadEntry| {
                    p.name
                        .as_ref()
                        .and_then(|n| ep.ports.get(n).copied())
                        .or(p.target_port)
                        .unwrap_or(p.number)
                };
                let lb_endpoints: Vec<endpoint::LbEndpoint> = if se.endpoints.is_empty() {
                    vec![(host.clone(), p.target_port.unwrap_or(p.number))]
                } else {
                    se.endpoints
                        .iter()
                        .filter_map(|ep| Some((ep.address.clone()?, target(ep))))
                        .collect()
                }
                .into_iter()
                .map(|(addr, port)| endpoint::LbEndpoint {
                    host_identifier: Some(endpoint::lb_endpoint::HostIdentifier::Endpoint(
                        endpoint::Endpoint {
                            address: Some(socket(&addr, port as u16)),
                            ..Default::default()
                        },
                    )),
                    ..Default::default()
                })
                .collect();
                let mut c = cluster::Cluster {
                    name: name.clone(),
                    cluster_discovery_type: Some(cluster::cluster::ClusterDiscoveryType::Type(
                        kind as i32,
                    )),
                    load_assignment: Some(endpoint::ClusterLoadAssignment {
                        cluster_name: name.clone(),
                        endpoints: vec![endpoint::LocalityLbEndpoints {
                            lb_endpoints,
                            ..Default::default()
                        }],
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                let tp = mesh.external_policy(host, p.number as u16);
                apply_policy(&mut c, &tp, se_http2(p), host);
                out.push((name, any(&c)));
            }
        }
    }
    out
}

/// The endpoints of every cluster [`clusters`] makes.
pub fn endpoints(mesh: &Mesh) -> Vec<(String, Any)> {
    let mut out = vec![];
    for (key, svc) in &mesh.services {
        let host = key.host();
        for p in &svc.ports {
            let mut subsets = vec![(String::new(), Default::default())];
            for (name, labels) in mesh.subsets(key) {
                subsets.push((name, labels));
            }
            for (subset, labels) in subsets {
                let name = cluster_name(p.port, &subset, &host);
                let lb_endpoints = mesh
                    .endpoints(key, p, &labels)
                    .into_iter()
                    .map(|(ip, port, mtls)| endpoint::LbEndpoint {
                        host_identifier: Some(endpoint::lb_endpoint::HostIdentifier::Endpoint(
                            endpoint::Endpoint {
                                address: Some(socket(&ip.to_string(), port)),
                                ..Default::default()
                            },
                        )),
                        // Istio's auto mTLS picks the transport by this.
                        metadata: mtls.then(crate::tls::istio_endpoint),
                        ..Default::default()
                    })
                    .collect();
                let cla = endpoint::ClusterLoadAssignment {
                    cluster_name: name.clone(),
                    endpoints: vec![endpoint::LocalityLbEndpoints {
                        lb_endpoints,
                        ..Default::default()
                    }],
                    ..Default::default()
                };
                out.push((name, any(&cla)));
            }
        }
    }
    out
}

pub(crate) fn socket(ip: &str, port: u16) -> core::Address {
    core::Address {
        address: Some(core::address::Address::SocketAddress(core::SocketAddress {
            address: ip.to_owned(),
            port_specifier: Some(core::socket_address::PortSpecifier::PortValue(port as u32)),
            ..Default::default()
        })),
    }
}

fn string_matcher(m: &StringMatch) -> Option<matcher::StringMatcher> {
    use matcher::string_matcher::MatchPattern;
    let pattern = if let Some(e) = &m.exact {
        MatchPattern::Exact(e.clone())
    } else if let Some(p) = &m.prefix {
        MatchPattern::Prefix(p.clone())
    } else if let Some(r) = &m.regex {
        MatchPattern::SafeRegex(regex_matcher(r))
    } else {
        return None;
    };
    Some(matcher::StringMatcher {
        match_pattern: Some(pattern),
        ..Default::default()
    })
}

fn regex_matcher(r: &str) -> matcher::RegexMatcher {
    matcher::RegexMatcher {
        regex: r.to_owned(),
        ..Default::default()
    }
}

fn percent(p: f64) -> FractionalPercent {
    FractionalPercent {
        numerator: (p * 10_000.0).round() as u32,
        denominator: DenominatorType::Million as i32,
    }
}

const FAULT: &str = "envoy.filters.http.fault";
const CORS: &str = "envoy.filters.http.cors";

/// A DestinationRule's consistentHash as the route's hash policy.
fn hash_policy(h: &mast_api::istio::types::ConsistentHash) -> Vec<route::route_action::HashPolicy> {
    use route::route_action::hash_policy::{
        ConnectionProperties, Cookie, Header, PolicySpecifier, QueryParameter,
    };
    let spec = if let Some(name) = &h.http_header_name {
        PolicySpecifier::Header(Header {
            header_name: name.clone(),
            ..Default::default()
        })
    } else if let Some(c) = &h.http_cookie {
        PolicySpecifier::Cookie(Cookie {
            name: c.name.clone(),
            path: c.path.clone().unwrap_or_default(),
            ttl: parse(&c.ttl),
            ..Default::default()
        })
    } else if h.use_source_ip == Some(true) {
        PolicySpecifier::ConnectionProperties(ConnectionProperties { source_ip: true })
    } else if let Some(q) = &h.http_query_parameter_name {
        PolicySpecifier::QueryParameter(QueryParameter { name: q.clone() })
    } else {
        return vec![];
    };
    vec![route::route_action::HashPolicy {
        policy_specifier: Some(spec),
        ..Default::default()
    }]
}

/// The cluster a VirtualService destination names. A ServiceEntry's host
/// is taken as written; other hosts name a Service, relative to the
/// VirtualService's namespace `ns`. Without a port, the first one.
pub fn destination_cluster(
    mesh: &Mesh,
    ns: &str,
    d: &mast_api::istio::types::Destination,
) -> Option<String> {
    let (host, first_port, subset) = match mesh.external(&d.host) {
        Some(se) => (
            d.host.clone(),
            se.ports.first().map(|p| p.number as u16),
            String::new(),
        ),
        None => {
            let key = ServiceKey::resolve(&d.host, ns, &mesh.domain);
            let first = mesh
                .services
                .get(&key)
                .and_then(|s| s.ports.first().map(|p| p.port));
            (key.host(), first, d.subset.clone().unwrap_or_default())
        }
    };
    let port = d
        .port
        .as_ref()
        .and_then(|p| p.number)
        .map(|p| p as u16)
        .or(first_port)?;
    Some(cluster_name(port, &subset, &host))
}

/// VirtualService `corsPolicy` as Envoy's per-route CORS policy.
fn cors(
    c: &mast_api::istio::types::CorsPolicy,
) -> envoy_types::pb::envoy::extensions::filters::http::cors::v3::CorsPolicy {
    let mut origins: Vec<matcher::StringMatcher> =
        c.allow_origins.iter().filter_map(string_matcher).collect();
    origins.extend(c.allow_origin.iter().map(|o| matcher::StringMatcher {
        match_pattern: Some(matcher::string_matcher::MatchPattern::Exact(o.clone())),
        ..Default::default()
    }));
    envoy_types::pb::envoy::extensions::filters::http::cors::v3::CorsPolicy {
        allow_origin_string_match: origins,
        allow_methods: c.allow_methods.join(","),
        allow_headers: c.allow_headers.join(","),
        expose_headers: c.expose_headers.join(","),
        max_age: c
            .max_age
            .as_deref()
            .and_then(mast_api::istio::parse_duration)
            .map(|ns| (ns / 1_000_000_000).to_string())
            .unwrap_or_default(),
        allow_credentials: c
            .allow_credentials
            .map(|v| envoy_types::pb::google::protobuf::BoolValue { value: v }),
        ..Default::default()
    }
}

/// One VirtualService http route, for one of its matches (or none), as an
/// Envoy route. `ns` is the VirtualService's namespace, for short hosts.
/// Istio's retry policy for a route, as Envoy's: by default 2 retries of
/// failed connections, refused streams and the gRPC statuses unavailable
/// and cancelled; `attempts: 0` turns retries off. Status codes in
/// `retryOn` become `retriable_status_codes`. Retries go to an endpoint
/// not yet tried (`previous_hosts`, 5 picks), unless the destination
/// hashes its requests (consistentHash) or `retryIgnorePreviousHosts` is
/// false.
fn retry_policy(
    retries: Option<&mast_api::istio::types::HttpRetry>,
    hashing: bool,
) -> Option<route::RetryPolicy> {
    use envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;
    let mut out = route::RetryPolicy {
        retry_on: "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
            .into(),
        num_retries: Some(UInt32Value { value: 2 }),
        host_selection_retry_max_attempts: 5,
        ..Default::default()
    };
    let mut other_hosts = !hashing;
    if let Some(rt) = retries {
        if rt.attempts <= 0 {
            return None;
        }
        out.num_retries = Some(UInt32Value {
            value: rt.attempts as u32,
        });
        if let Some(on) = rt.retry_on.as_deref().filter(|s| !s.is_empty()) {
            let mut names = vec![];
            for part in on.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                match mast_api::istio::retry_status_code(part) {
                    Some(code) => out.retriable_status_codes.push(code),
                    None => names.push(part),
                }
            }
            if !out.retriable_status_codes.is_empty() && !names.contains(&"retriable-status-codes")
            {
                names.push("retriable-status-codes");
            }
            out.retry_on = names.join(",");
        }
        out.per_try_timeout = parse(&rt.per_try_timeout);
        if let Some(ignore) = rt.retry_ignore_previous_hosts {
            other_hosts = ignore;
        }
        if let Some(b) = parse(&rt.backoff) {
            out.retry_back_off = Some(route::retry_policy::RetryBackOff {
                base_interval: Some(b),
                ..Default::default()
            });
        }
    }
    if other_hosts {
        out.retry_host_predicate = vec![route::retry_policy::RetryHostPredicate {
            name: "envoy.retry_host_predicates.previous_hosts".into(),
            config_type: Some(
                route::retry_policy::retry_host_predicate::ConfigType::TypedConfig(any(
                    &PreviousHostsPredicate::default(),
                )),
            ),
        }];
    }
    Some(out)
}

fn http_route(
    mesh: &Mesh,
    ns: &str,
    r: &HttpRoute,
    m: Option<&mast_api::istio::types::HttpMatchRequest>,
) -> route::Route {
    let mut rm = route::RouteMatch {
        path_specifier: Some(route::route_match::PathSpecifier::Prefix("/".into())),
        ..Default::default()
    };
    if let Some(m) = m {
        if let Some(uri) = &m.uri {
            use route::route_match::PathSpecifier;
            rm.path_specifier = Some(if let Some(e) = &uri.exact {
                PathSpecifier::Path(e.clone())
            } else if let Some(p) = &uri.prefix {
                PathSpecifier::Prefix(p.clone())
            } else if let Some(re) = &uri.regex {
                PathSpecifier::SafeRegex(regex_matcher(re))
            } else {
                PathSpecifier::Prefix("/".into())
            });
        }
        if m.ignore_uri_case == Some(true) {
            rm.case_sensitive = Some(envoy_types::pb::google::protobuf::BoolValue { value: false });
        }
        let mut headers: Vec<(String, &StringMatch)> =
            m.headers.iter().map(|(k, v)| (k.clone(), v)).collect();
        if let Some(meth) = &m.method {
            headers.push((":method".into(), meth));
        }
        if let Some(a) = &m.authority {
            headers.push((":authority".into(), a));
        }
        for (name, sm) in headers {
            rm.headers.push(route::HeaderMatcher {
                name,
                header_match_specifier: string_matcher(sm)
                    .map(route::header_matcher::HeaderMatchSpecifier::StringMatch),
                ..Default::default()
            });
        }
        for (name, sm) in &m.without_headers {
            rm.headers.push(route::HeaderMatcher {
                name: name.clone(),
                header_match_specifier: string_matcher(sm)
                    .map(route::header_matcher::HeaderMatchSpecifier::StringMatch),
                invert_match: true,
                ..Default::default()
            });
        }
        for (name, sm) in &m.query_params {
            rm.query_parameters.push(route::QueryParameterMatcher {
                name: name.clone(),
                query_parameter_match_specifier: string_matcher(sm)
                    .map(route::query_parameter_matcher::QueryParameterMatchSpecifier::StringMatch),
            });
        }
    }
    let mut out = route::Route {
        name: r.name.clone().unwrap_or_default(),
        r#match: Some(rm),
        ..Default::default()
    };
    if let Some(h) = &r.headers {
        if let Some(req) = &h.request {
            (out.request_headers_to_add, out.request_headers_to_remove) = header_ops(req);
        }
        if let Some(resp) = &h.response {
            (out.response_headers_to_add, out.response_headers_to_remove) = header_ops(resp);
        }
    }
    if let Some(d) = &r.direct_response {
        out.action =
            Some(route::route::Action::DirectResponse(
                route::DirectResponseAction {
                    status: d.status,
                    body: d.body.as_ref().and_then(|b| b.string.clone()).map(|s| {
                        core::DataSource {
                            specifier: Some(core::data_source::Specifier::InlineString(s)),
                            ..Default::default()
                        }
                    }),
                    ..Default::default()
                },
            ));
        return out;
    }
    if let Some(rd) = &r.redirect {
        out.action = Some(route::route::Action::Redirect(route::RedirectAction {
            host_redirect: rd.authority.clone().unwrap_or_default(),
            path_rewrite_specifier: rd
                .uri
                .clone()
                .map(route::redirect_action::PathRewriteSpecifier::PathRedirect),
            response_code: match rd.redirect_code.unwrap_or(301) {
                302 => route::redirect_action::RedirectResponseCode::Found,
                303 => route::redirect_action::RedirectResponseCode::SeeOther,
                307 => route::redirect_action::RedirectResponseCode::TemporaryRedirect,
                308 => route::redirect_action::RedirectResponseCode::PermanentRedirect,
                _ => route::redirect_action::RedirectResponseCode::MovedPermanently,
            } as i32,
            ..Default::default()
        }));
        return out;
    }
    // Weighted destinations: weights are relative (weight / sum).
    let dests: Vec<(String, u32)> = r
        .route
        .iter()
        .filter_map(|d| {
            let w = d
                .weight
                .unwrap_or(if r.route.len() == 1 { 100 } else { 0 })
                .max(0) as u32;
            Some((destination_cluster(mesh, ns, &d.destination)?, w))
        })
        .collect();
    let mut action = route::RouteAction::default();
    // consistentHash of the destination's DestinationRule (one Service).
    if let Some(d) = r.route.first().filter(|_| r.route.len() == 1) {
        let key = ServiceKey::resolve(&d.destination.host, ns, &mesh.domain);
        let subset = d.destination.subset.clone().unwrap_or_default();
        let port = d
            .destination
            .port
            .as_ref()
            .and_then(|p| p.number)
            .and_then(|n| u16::try_from(n).ok());
        if let Some(h) = mesh
            .policy(&key, &subset, port)
            .load_balancer
            .and_then(|l| l.consistent_hash)
        {
            action.hash_policy = hash_policy(&h);
        }
    }
    let total: u32 = dests.iter().map(|(_, w)| w).sum();
    action.cluster_specifier = Some(if dests.len() == 1 || total == 0 {
        route::route_action::ClusterSpecifier::Cluster(
            dests.first().map(|d| d.0.clone()).unwrap_or_default(),
        )
    } else {
        route::route_action::ClusterSpecifier::WeightedClusters(route::WeightedCluster {
            clusters: dests
                .iter()
                .filter(|(_, w)| *w > 0)
                .map(|(name, w)| route::weighted_cluster::ClusterWeight {
                    name: name.clone(),
                    weight: Some(UInt32Value { value: *w }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    });
    // Istio's default: no timeout unless the route sets one.
    action.timeout = Some(parse(&r.timeout).unwrap_or_default());
    action.retry_policy = retry_policy(r.retries.as_ref(), !action.hash_policy.is_empty());
    if let Some(rw) = &r.rewrite {
        if let Some(uri) = &rw.uri {
            action.prefix_rewrite = uri.clone();
        }
        if let Some(a) = &rw.authority {
            action.host_rewrite_specifier =
                Some(route::route_action::HostRewriteSpecifier::HostRewriteLiteral(a.clone()));
        }
    }
    // Mirrors: `mirror` with `mirrorPercentage` (or the older
    // `mirrorPercent`; all by default), and `mirrors`.
    let legacy = r.mirror.as_ref().map(|d| {
        let p = r
            .mirror_percentage
            .as_ref()
            .map(|p| p.value)
            .or(r.mirror_percent.map(f64::from))
            .unwrap_or(100.0);
        (d, p)
    });
    let listed = r.mirrors.iter().map(|m| {
        (
            &m.destination,
            m.percentage.as_ref().map(|p| p.value).unwrap_or(100.0),
        )
    });
    for (d, p) in legacy.into_iter().chain(listed) {
        if let Some(cluster) = destination_cluster(mesh, ns, d) {
            action
                .request_mirror_policies
                .push(route::route_action::RequestMirrorPolicy {
                    cluster,
                    runtime_fraction: Some(core::RuntimeFractionalPercent {
                        default_value: Some(percent(p)),
                        ..Default::default()
                    }),
                    ..Default::default()
                });
        }
    }
    out.action = Some(route::route::Action::Route(action));
    if let Some(c) = &r.cors_policy {
        out.typed_per_filter_config
            .insert(CORS.into(), any(&cors(c)));
    }
    if let Some(f) = &r.fault {
        let mut hf = fault::HttpFault::default();
        if let Some(d) = &f.delay {
            let p = d
                .percentage
                .as_ref()
                .map(|p| p.value)
                .or(d.percent.map(f64::from))
                .unwrap_or(100.0);
            hf.delay = Some(envoy_types::pb::envoy::extensions::filters::common::fault::v3::FaultDelay {
                fault_delay_secifier: parse(&d.fixed_delay).map(
                    envoy_types::pb::envoy::extensions::filters::common::fault::v3::fault_delay::FaultDelaySecifier::FixedDelay,
                ),
                percentage: Some(percent(p)),
            });
        }
        if let Some(a) = &f.abort {
            hf.abort = Some(fault::FaultAbort {
                error_type: a
                    .http_status
                    .map(|s| fault::fault_abort::ErrorType::HttpStatus(s as u32)),
                percentage: Some(percent(
                    a.percentage.as_ref().map(|p| p.value).unwrap_or(100.0),
                )),
                ..Default::default()
            });
        }
        out.typed_per_filter_config.insert(FAULT.into(), any(&hf));
    }
    out
}

/// A VirtualService's http routes as Envoy routes, one per match that
/// `keep` accepts (a route whose matches are all dropped is dropped).
pub fn vs_routes(
    mesh: &Mesh,
    ns: &str,
    vs: &mast_api::istio::types::VirtualService,
    keep: &dyn Fn(&HttpMatchRequest) -> bool,
) -> Vec<route::Route> {
    let mut routes = vec![];
    for r in &vs.http {
        if r.matches.is_empty() {
            routes.push(http_route(mesh, ns, r, None));
        } else {
            for m in r.matches.iter().filter(|m| keep(m)) {
                routes.push(http_route(mesh, ns, r, Some(m)));
            }
        }
    }
    routes
}

/// The routes of the VirtualServices bound to a gateway port: one virtual
/// host per VirtualService host.
pub fn gateway_routes(
    mesh: &Mesh,
    name: &str,
    vss: &[(String, &mast_api::istio::types::VirtualService)],
) -> route::RouteConfiguration {
    let mut vhosts = vec![];
    for (ns, vs) in vss {
        // A match limited to other gateways, or to the mesh alone, is not
        // this gateway's.
        let keep =
            |m: &HttpMatchRequest| m.gateways.is_empty() || m.gateways.iter().any(|g| g != "mesh");
        let routes = vs_routes(mesh, ns, vs, &keep);
        for h in &vs.hosts {
            let domains = if h == "*" {
                vec!["*".to_string()]
            } else {
                vec![h.clone(), format!("{h}:*")]
            };
            vhosts.push(route::VirtualHost {
                name: format!("{h}:{name}"),
                domains,
                routes: routes.clone(),
                ..Default::default()
            });
        }
    }
    route::RouteConfiguration {
        name: name.to_owned(),
        virtual_hosts: vhosts,
        validate_clusters: Some(envoy_types::pb::google::protobuf::BoolValue { value: false }),
        ..Default::default()
    }
}

/// Routes over RDS (ADS) as `name`.
pub fn rds(name: &str) -> hcm::http_connection_manager::RouteSpecifier {
    hcm::http_connection_manager::RouteSpecifier::Rds(hcm::Rds {
        route_config_name: name.to_owned(),
        config_source: Some(ads()),
    })
}

pub(crate) fn ads() -> core::ConfigSource {
    core::ConfigSource {
        resource_api_version: core::ApiVersion::V3 as i32,
        config_source_specifier: Some(core::config_source::ConfigSourceSpecifier::Ads(
            core::AggregatedConfigSource {},
        )),
        ..Default::default()
    }
}

/// An HTTP connection manager (fault injection, then the router).
pub fn hcm_filter(
    stat_prefix: &str,
    routes: hcm::http_connection_manager::RouteSpecifier,
) -> listener::Filter {
    let manager = hcm::HttpConnectionManager {
        stat_prefix: stat_prefix.to_owned(),
        route_specifier: Some(routes),
        // WebSockets pass, as Istio configures its proxies.
        upgrade_configs: vec![hcm::http_connection_manager::UpgradeConfig {
            upgrade_type: "websocket".into(),
            ..Default::default()
        }],
        http_filters: vec![
            hcm::HttpFilter {
                name: CORS.into(),
                config_type: Some(hcm::http_filter::ConfigType::TypedConfig(any(
                    &envoy_types::pb::envoy::extensions::filters::http::cors::v3::Cors::default(),
                ))),
                ..Default::default()
            },
            hcm::HttpFilter {
                name: FAULT.into(),
                config_type: Some(hcm::http_filter::ConfigType::TypedConfig(any(
                    &fault::HttpFault::default(),
                ))),
                ..Default::default()
            },
            hcm::HttpFilter {
                name: "envoy.filters.http.router".into(),
                config_type: Some(hcm::http_filter::ConfigType::TypedConfig(any(
                    &Router::default(),
                ))),
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    listener::Filter {
        name: "envoy.filters.network.http_connection_manager".into(),
        config_type: Some(listener::filter::ConfigType::TypedConfig(any(&manager))),
    }
}

/// A TCP proxy to `cluster`.
pub fn tcp_proxy_filter(stat_prefix: &str, cluster: &str) -> listener::Filter {
    use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3 as tcp;
    let proxy = tcp::TcpProxy {
        stat_prefix: stat_prefix.to_owned(),
        cluster_specifier: Some(tcp::tcp_proxy::ClusterSpecifier::Cluster(
            cluster.to_owned(),
        )),
        ..Default::default()
    };
    listener::Filter {
        name: "envoy.filters.network.tcp_proxy".into(),
        config_type: Some(listener::filter::ConfigType::TypedConfig(any(&proxy))),
    }
}

/// A listener with one filter chain.
pub fn listener(name: &str, ip: &str, port: u16, filter: listener::Filter) -> listener::Listener {
    listener::Listener {
        name: name.to_owned(),
        address: Some(socket(ip, port)),
        filter_chains: vec![listener::FilterChain {
            filters: vec![filter],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// An HTTP listener on `port` whose routes come over RDS as `route_name`.
pub fn http_listener(port: u16, route_name: &str) -> listener::Listener {
    listener(
        &format!("0.0.0.0_{port}"),
        "0.0.0.0",
        port,
        hcm_filter(&format!("outbound_0.0.0.0_{port}"), rds(route_name)),
    )
}

/// Whether a ServiceEntry port speaks HTTP/2 (`HTTP2` or `GRPC`).
fn se_http2(p: &mast_api::istio::types::Port) -> bool {
    let proto = p.protocol.as_deref().unwrap_or("").to_ascii_uppercase();
    matches!(proto.as_str(), "HTTP2" | "GRPC")
}

/// A cluster's upstream HTTP, as Istio's `applyConnectionPool`,
/// `applyH2Upgrade`, `setH2Options` and `setUseDownstreamProtocol` set
/// it: HTTP/2 for an HTTP/2 port (`h2`) or `h2UpgradePolicy: UPGRADE`
/// (DO_NOT_UPGRADE leaves HTTP/2 ports as they are), the client's
/// protocol for `useClientProtocol`, else HTTP/1.1; and the
/// connections' idle timeout (`http.idleTimeout`, else `tcp.idleTimeout`),
/// requests per connection and longest life. None when all is default.
fn protocol_options(
    h2: bool,
    pool: &mast_api::istio::types::ConnectionPoolSettings,
) -> std::collections::HashMap<String, Any> {
    use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
        http_protocol_options::explicit_http_config::ProtocolConfig,
        http_protocol_options::{
            ExplicitHttpConfig, UpstreamProtocolOptions, UseDownstreamHttpConfig,
        },
        HttpProtocolOptions,
    };
    let (http, tcp) = (
        pool.http.clone().unwrap_or_default(),
        pool.tcp.clone().unwrap_or_default(),
    );
    let common = core::HttpProtocolOptions {
        idle_timeout: parse(&http.idle_timeout.or(tcp.idle_timeout)),
        max_requests_per_connection: u32v(http.max_requests_per_connection.filter(|n| *n > 0)),
        max_connection_duration: parse(&tcp.max_connection_duration),
        ..Default::default()
    };
    let client_protocol = http.use_client_protocol == Some(true);
    let h2 = h2 || http.h2_upgrade_policy.as_deref() == Some("UPGRADE");
    let mut out = std::collections::HashMap::new();
    if !h2 && !client_protocol && common == core::HttpProtocolOptions::default() {
        // maxConcurrentStreams alone changes nothing on an HTTP/1.1
        // upstream, as in Istio.
        return out;
    }
    let upstream = if client_protocol {
        UpstreamProtocolOptions::UseDownstreamProtocolConfig(UseDownstreamHttpConfig {
            http_protocol_options: Some(Default::default()),
            http2_protocol_options: Some(Default::default()),
            ..Default::default()
        })
    } else {
        UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
            protocol_config: Some(if h2 {
                ProtocolConfig::Http2ProtocolOptions(core::Http2ProtocolOptions {
                    max_concurrent_streams: u32v(http.max_concurrent_streams.filter(|n| *n > 0)),
                    ..Default::default()
                })
            } else {
                ProtocolConfig::HttpProtocolOptions(Default::default())
            }),
        })
    };
    let o = HttpProtocolOptions {
        upstream_protocol_options: Some(upstream),
        common_http_protocol_options: (common != core::HttpProtocolOptions::default())
            .then_some(common),
        ..Default::default()
    };
    out.insert(
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_owned(),
        any(&o),
    );
    out
}

/// `tcp.tcpKeepalive` as Envoy's, in whole seconds, as Istio's
/// `applyTCPKeepalive` sets it.
fn upstream_connection_options(
    pool: &mast_api::istio::types::ConnectionPoolSettings,
) -> Option<cluster::UpstreamConnectionOptions> {
    let k = pool.tcp.as_ref()?.tcp_keepalive.as_ref()?;
    let secs = |d: &Option<String>| {
        parse(d).map(|d| UInt32Value {
            value: u32::try_from(d.seconds).unwrap_or(u32::MAX),
        })
    };
    Some(cluster::UpstreamConnectionOptions {
        tcp_keepalive: Some(core::TcpKeepalive {
            keepalive_probes: k
                .probes
                .filter(|p| *p > 0)
                .map(|value| UInt32Value { value }),
            keepalive_time: secs(&k.time),
            keepalive_interval: secs(&k.interval),
        }),
        ..Default::default()
    })
}

/// A cluster that connects where the connection was going
/// (`ORIGINAL_DST`): Istio's `PassthroughCluster` and inbound clusters,
/// which speak HTTP/2 to the workload for `h2`.
pub fn original_dst_cluster(name: &str, h2: bool) -> (String, Any) {
    let mut c = original_dst(name);
    c.typed_extension_protocol_options = protocol_options(h2, &Default::default());
    (name.to_owned(), any(&c))
}

/// An ORIGINAL_DST cluster: where the connection was going.
fn original_dst(name: &str) -> cluster::Cluster {
    cluster::Cluster {
        name: name.to_owned(),
        connect_timeout: Some(duration(10_000_000_000)),
        lb_policy: cluster::cluster::LbPolicy::ClusterProvided as i32,
        circuit_breakers: circuit_breakers(&Default::default()),
        cluster_discovery_type: Some(cluster::cluster::ClusterDiscoveryType::Type(
            cluster::cluster::DiscoveryType::OriginalDst as i32,
        )),
        ..Default::default()
    }
}

/// A cluster with no endpoints: Istio's `BlackHoleCluster`.
pub fn black_hole_cluster() -> (String, Any) {
    let name = "BlackHoleCluster";
    let c = cluster::Cluster {
        name: name.into(),
        connect_timeout: Some(duration(10_000_000_000)),
        cluster_discovery_type: Some(cluster::cluster::ClusterDiscoveryType::Type(
            cluster::cluster::DiscoveryType::Static as i32,
        )),
        ..Default::default()
    };
    (name.into(), any(&c))
}

/// Header edits as Envoy's: `set` overwrites, `add` appends.
fn header_ops(ops: &HeaderOperations) -> (Vec<core::HeaderValueOption>, Vec<String>) {
    use core::header_value_option::HeaderAppendAction;
    let one = |k: &String, v: &String, action: HeaderAppendAction| core::HeaderValueOption {
        header: Some(core::HeaderValue {
            key: k.clone(),
            value: v.clone(),
            ..Default::default()
        }),
        append_action: action as i32,
        ..Default::default()
    };
    let add = ops
        .set
        .iter()
        .map(|(k, v)| one(k, v, HeaderAppendAction::OverwriteIfExistsOrAdd))
        .chain(
            ops.add
                .iter()
                .map(|(k, v)| one(k, v, HeaderAppendAction::AppendIfExistsOrAdd)),
        )
        .collect();
    (add, ops.remove.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mast_api::istio::types::HttpRetry;

    fn retry(json: serde_json::Value, hashing: bool) -> Option<route::RetryPolicy> {
        let r: HttpRetry = serde_json::from_value(json).expect("HttpRetry");
        retry_policy(Some(&r), hashing)
    }

    #[test]
    fn retry_policies_are_istios() {
        // No policy: Istio's default, retrying on another endpoint.
        let d = retry_policy(None, false).expect("default");
        assert_eq!(
            d.retry_on,
            "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
        );
        assert_eq!(d.num_retries.map(|n| n.value), Some(2));
        assert!(d.retriable_status_codes.is_empty());
        assert_eq!(d.retry_host_predicate.len(), 1);
        assert_eq!(d.host_selection_retry_max_attempts, 5);
        // A hashing destination keeps its endpoint.
        assert!(retry_policy(None, true)
            .expect("hash")
            .retry_host_predicate
            .is_empty());
        // attempts: 0 turns retries off.
        assert!(retry(serde_json::json!({"attempts": 0}), false).is_none());
        // Status codes in retryOn become retriable_status_codes.
        let r = retry(
            serde_json::json!({"attempts": 3, "retryOn": "gateway-error, 503,409", "perTryTimeout": "2s", "backoff": "50ms"}),
            false,
        )
        .expect("codes");
        assert_eq!(r.retry_on, "gateway-error,retriable-status-codes");
        assert_eq!(r.retriable_status_codes, vec![503, 409]);
        assert_eq!(r.num_retries.map(|n| n.value), Some(3));
        assert_eq!(r.per_try_timeout.map(|d| d.seconds), Some(2));
        let back_off = r.retry_back_off.and_then(|b| b.base_interval);
        assert_eq!(back_off.map(|d| d.nanos), Some(50_000_000));
        let r = retry(serde_json::json!({"attempts": 1, "retryOn": "503"}), false).expect("503");
        assert_eq!(r.retry_on, "retriable-status-codes");
        let r = retry(
            serde_json::json!({"attempts": 1, "retryOn": "5xx", "retryIgnorePreviousHosts": false}),
            false,
        )
        .expect("same hosts");
        assert!(r.retry_host_predicate.is_empty());
        assert!(r.retriable_status_codes.is_empty());
    }

    #[test]
    fn http2_and_grpc_ports_get_http2_upstreams_inbound_and_outbound() {
        use crate::model::{Endpoint, Service, ServiceKey, ServicePort};
        use prost::Message;
        let port = ServicePort::named;
        let mut mesh = Mesh {
            domain: "cluster.local".into(),
            ..Default::default()
        };
        mesh.services.insert(
            ServiceKey {
                namespace: "default".into(),
                name: "api".into(),
                domain: "cluster.local".into(),
            },
            Service {
                cluster_ip: None,
                ports: vec![
                    port("grpc-api", 9000),
                    port("http", 8080),
                    port("http2-x", 9090),
                ],
                endpoints: vec![Endpoint {
                    ip: "10.42.0.7".parse().expect("ip"),
                    ports: [("grpc-api", 9000), ("http", 8080), ("http2-x", 9090)]
                        .map(|(n, p)| (n.to_owned(), p))
                        .into(),
                    labels: Default::default(),
                }],
            },
        );
        let h2: Vec<String> = clusters(&mesh)
            .into_iter()
            .filter(|(_, any)| {
                cluster::Cluster::decode(any.value.as_slice())
                    .expect("cluster")
                    .typed_extension_protocol_options
                    .contains_key("envoy.extensions.upstreams.http.v3.HttpProtocolOptions")
            })
            .map(|(name, _)| name)
            .collect();
        assert_eq!(
            h2,
            [
                "outbound|9000||api.default.svc.cluster.local",
                "outbound|9090||api.default.svc.cluster.local"
            ]
        );
        assert_eq!(
            mesh.inbound_http2("10.42.0.7")
                .into_iter()
                .collect::<Vec<_>>(),
            [9000, 9090]
        );
    }

    #[test]
    fn outlier_detection_is_istios() {
        let od = |json: serde_json::Value| {
            let o = serde_json::from_value(json).expect("OutlierDetection");
            (outlier_detection(&o), panic_threshold(&o))
        };
        let (o, lb) = od(
            serde_json::json!({"consecutiveGatewayErrors": 3, "baseEjectionTime": "10m", "maxEjectionPercent": 0}),
        );
        // Unset 5xx keeps Envoy's default (5, enforced).
        assert_eq!(
            (o.consecutive_5xx, o.enforcing_consecutive_5xx),
            (None, None)
        );
        assert_eq!(o.consecutive_gateway_failure.map(|v| v.value), Some(3));
        assert_eq!(
            o.enforcing_consecutive_gateway_failure.map(|v| v.value),
            Some(100)
        );
        assert_eq!(o.max_ejection_time.map(|d| d.seconds), Some(600));
        assert_eq!(o.max_ejection_percent, None, "0 keeps Envoy's 10%");
        assert_eq!(o.enforcing_success_rate.map(|v| v.value), Some(0));
        assert_eq!(lb.healthy_panic_threshold.map(|p| p.value), Some(0.0));
        let (o, lb) = od(
            serde_json::json!({"consecutive5xxErrors": 0, "baseEjectionTime": "30s", "minHealthPercent": 40}),
        );
        assert_eq!(o.enforcing_consecutive_5xx.map(|v| v.value), Some(0));
        assert_eq!(o.max_ejection_time, None);
        assert_eq!(lb.healthy_panic_threshold.map(|p| p.value), Some(40.0));
    }

    #[test]
    fn connection_pools_are_istios_and_mast_proxy_runs_them() {
        use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
            http_protocol_options::explicit_http_config::ProtocolConfig,
            http_protocol_options::UpstreamProtocolOptions, HttpProtocolOptions,
        };
        use prost::Message;
        let pool = |json: serde_json::Value| -> mast_api::istio::types::ConnectionPoolSettings {
            serde_json::from_value(json).expect("ConnectionPoolSettings")
        };
        let options = |h2: bool, p: &mast_api::istio::types::ConnectionPoolSettings| {
            protocol_options(h2, p)
                .get("envoy.extensions.upstreams.http.v3.HttpProtocolOptions")
                .map(|a| HttpProtocolOptions::decode(a.value.as_slice()).expect("options"))
        };
        // Nothing set, HTTP/1.1: no options at all, as before.
        assert_eq!(options(false, &pool(serde_json::json!({}))), None);
        let limited = pool(serde_json::json!({
            "tcp": {"maxConnectionDuration": "1h", "idleTimeout": "5m", "tcpKeepalive": {"probes": 3, "time": "60s", "interval": "10s"}},
            "http": {"maxRequestsPerConnection": 2, "idleTimeout": "30s"}
        }));
        let o = options(false, &limited).expect("options");
        let common = o.common_http_protocol_options.expect("common options");
        assert_eq!(
            (
                common.idle_timeout.map(|d| d.seconds),
                common.max_requests_per_connection.map(|v| v.value),
                common.max_connection_duration.map(|d| d.seconds),
            ),
            (Some(30), Some(2), Some(3600)),
            "http.idleTimeout wins over tcp.idleTimeout"
        );
        assert!(matches!(
            o.upstream_protocol_options,
            Some(UpstreamProtocolOptions::ExplicitHttpConfig(ref e))
                if matches!(e.protocol_config, Some(ProtocolConfig::HttpProtocolOptions(_)))
        ));
        // maxConcurrentStreams: on HTTP/2 upstreams only.
        let streams = pool(serde_json::json!({"http": {"maxConcurrentStreams": 3}}));
        assert_eq!(options(false, &streams), None);
        assert!(matches!(
            options(true, &streams).expect("options").upstream_protocol_options,
            Some(UpstreamProtocolOptions::ExplicitHttpConfig(ref e))
                if matches!(e.protocol_config, Some(ProtocolConfig::Http2ProtocolOptions(ref o))
                    if o.max_concurrent_streams.map(|v| v.value) == Some(3))
        ));
        let tcp_idle = options(
            false,
            &pool(serde_json::json!({"tcp": {"idleTimeout": "5m"}})),
        )
        .and_then(|o| o.common_http_protocol_options)
        .and_then(|c| c.idle_timeout);
        assert_eq!(tcp_idle.map(|d| d.seconds), Some(300));
        let client = options(
            false,
            &pool(serde_json::json!({"http": {"useClientProtocol": true}})),
        )
        .expect("options");
        assert!(matches!(
            client.upstream_protocol_options,
            Some(UpstreamProtocolOptions::UseDownstreamProtocolConfig(ref d))
                if d.http_protocol_options.is_some() && d.http2_protocol_options.is_some()
        ));
        let k = upstream_connection_options(&limited)
            .and_then(|u| u.tcp_keepalive)
            .expect("keepalive");
        assert_eq!(
            [k.keepalive_probes, k.keepalive_time, k.keepalive_interval]
                .map(|v| v.map(|v| v.value)),
            [Some(3), Some(60), Some(10)]
        );
        let od: mast_api::istio::types::OutlierDetection = serde_json::from_value(
            serde_json::json!({"splitExternalLocalOriginErrors": true, "consecutiveLocalOriginFailures": 4}),
        )
        .expect("OutlierDetection");
        let o = outlier_detection(&od);
        assert!(o.split_external_local_origin_errors);
        assert_eq!(
            (
                o.consecutive_local_origin_failure.map(|v| v.value),
                o.enforcing_consecutive_local_origin_failure
                    .map(|v| v.value),
                o.enforcing_local_origin_success_rate.map(|v| v.value),
            ),
            (Some(4), Some(100), Some(0))
        );
        // mast proxy takes such a cluster over xDS (a field it did not
        // implement would be refused by name).
        let c = cluster::Cluster {
            name: "outbound|80||a".into(),
            typed_extension_protocol_options: protocol_options(false, &limited),
            upstream_connection_options: upstream_connection_options(&limited),
            outlier_detection: Some(o),
            ..Default::default()
        };
        let r = mast_proxy::xds::Resources::default()
            .with(mast_proxy::xds::CLUSTER, &[any(&c)])
            .expect("mast proxy reads the cluster");
        let b = mast_proxy::bootstrap::parse("static_resources: {}").expect("bootstrap");
        let cfg = mast_proxy::config::Config::build(&b, String::new(), &r, None)
            .expect("mast proxy runs the cluster");
        let compiled = &cfg.clusters["outbound|80||a"];
        assert_eq!(compiled.limits.max_requests, 2);
        assert!(compiled.keepalive.is_some());
        let c = cluster::Cluster {
            name: "outbound|80||b".into(),
            typed_extension_protocol_options: protocol_options(true, &streams),
            ..Default::default()
        };
        let r = mast_proxy::xds::Resources::default()
            .with(mast_proxy::xds::CLUSTER, &[any(&c)])
            .expect("mast proxy reads the cluster");
        let cfg = mast_proxy::config::Config::build(&b, String::new(), &r, None)
            .expect("mast proxy runs the cluster");
        assert_eq!(cfg.clusters["outbound|80||b"].h2_streams, 3);
    }

    #[test]
    fn circuit_breakers_are_unbounded_but_what_a_destination_rule_sets() {
        let limits = |json: serde_json::Value| {
            let pool = serde_json::from_value(json).expect("ConnectionPoolSettings");
            let cb = circuit_breakers(&pool).expect("circuit breakers");
            let t = &cb.thresholds[0];
            [
                &t.max_connections,
                &t.max_pending_requests,
                &t.max_requests,
                &t.max_retries,
            ]
            .map(|v| v.as_ref().map(|v| v.value))
        };
        let max = Some(u32::MAX);
        assert_eq!(limits(serde_json::json!({})), [max; 4]);
        assert_eq!(
            limits(serde_json::json!({"tcp": {"maxConnections": 1}, "http": {"maxRetries": 0}})),
            [Some(1), max, max, Some(0)]
        );
    }
}
