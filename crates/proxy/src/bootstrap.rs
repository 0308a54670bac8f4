//! Envoy's v3 bootstrap, the subset mast proxy implements, read from YAML
//! or JSON. Field names are Envoy's; every struct refuses unknown fields,
//! so a field mast proxy does not implement stops it at start-up with that
//! field's name, instead of being silently ignored. `typed_config` is
//! chosen by its `@type`, and an unknown `@type` is refused the same way.

use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Bootstrap {
    #[serde(default)]
    pub node: Option<Node>,
    #[serde(default)]
    pub admin: Option<Admin>,
    #[serde(default)]
    pub static_resources: StaticResources,
    #[serde(default)]
    pub dynamic_resources: Option<DynamicResources>,
}

/// Listeners and clusters over ADS (the only source mast proxy implements).
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DynamicResources {
    pub ads_config: ApiConfigSource,
    #[serde(default)]
    pub cds_config: Option<ConfigSource>,
    #[serde(default)]
    pub lds_config: Option<ConfigSource>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ApiConfigSource {
    /// GRPC (state of the world); DELTA_GRPC is not implemented.
    pub api_type: String,
    #[serde(default)]
    pub transport_api_version: Option<String>,
    pub grpc_services: Vec<GrpcService>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcService {
    pub envoy_grpc: EnvoyGrpc,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvoyGrpc {
    pub cluster_name: String,
}

/// Where a resource comes from: ADS, the only source implemented.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ConfigSource {
    pub ads: Empty,
    #[serde(default)]
    pub resource_api_version: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Node {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub cluster: String,
    #[serde(default)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    pub address: Address,
    #[serde(default)]
    pub access_log_path: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Address {
    pub socket_address: SocketAddress,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SocketAddress {
    pub address: String,
    pub port_value: u16,
    #[serde(default)]
    pub protocol: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct StaticResources {
    #[serde(default)]
    pub listeners: Vec<Listener>,
    #[serde(default)]
    pub clusters: Vec<Cluster>,
    /// Certificates and validation contexts that transport sockets name
    /// (`tls_certificate_sds_secret_configs` and
    /// `validation_context_sds_secret_config` without an `sds_config`).
    #[serde(default)]
    pub secrets: Vec<Secret>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    #[serde(default)]
    pub name: String,
    pub address: Address,
    #[serde(default)]
    pub filter_chains: Vec<FilterChain>,
    /// The chain for connections no `filter_chain_match` selects.
    #[serde(default)]
    pub default_filter_chain: Option<FilterChain>,
    #[serde(default)]
    pub listener_filters: Vec<ListenerFilter>,
    /// Hand each connection to the listener of its original destination
    /// (`SO_ORIGINAL_DST`, after iptables/nftables `REDIRECT`).
    #[serde(default)]
    pub use_original_dst: Option<bool>,
    /// `false`: not bound, only reached through `use_original_dst`.
    #[serde(default)]
    pub bind_to_port: Option<bool>,
    /// INBOUND or OUTBOUND (UNSPECIFIED is outbound): which side Istio's
    /// metrics report.
    #[serde(default)]
    pub traffic_direction: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterChain {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub filter_chain_match: Option<FilterChainMatch>,
    pub filters: Vec<Filter>,
    /// TLS termination (`DownstreamTlsContext`); plain TCP without it.
    #[serde(default)]
    pub transport_socket: Option<TransportSocket>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FilterChainMatch {
    #[serde(default)]
    pub destination_port: Option<u16>,
    /// SNI names, exact or `*.suffix`, read by the TLS inspector.
    #[serde(default)]
    pub server_names: Vec<String>,
    /// `tls` or `raw_buffer`, as the TLS inspector tells them apart.
    #[serde(default)]
    pub transport_protocol: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerFilter {
    pub name: String,
    pub typed_config: ListenerFilterConfig,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "@type")]
pub enum ListenerFilterConfig {
    #[serde(
        rename = "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst"
    )]
    OriginalDst(Empty),
    #[serde(
        rename = "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
    )]
    TlsInspector(Empty),
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    pub name: String,
    pub typed_config: NetworkFilter,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "@type")]
pub enum NetworkFilter {
    #[serde(
        rename = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
    )]
    HttpConnectionManager(HttpConnectionManager),
    #[serde(rename = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy")]
    TcpProxy(TcpProxy),
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConnectionManager {
    pub stat_prefix: String,
    /// AUTO (the default), HTTP1 or HTTP2.
    #[serde(default)]
    pub codec_type: Option<String>,
    #[serde(default)]
    pub route_config: Option<RouteConfiguration>,
    /// Routes over RDS (from ADS), by name.
    #[serde(default)]
    pub rds: Option<Rds>,
    #[serde(default)]
    pub http_filters: Vec<HttpFilter>,
    #[serde(default)]
    pub access_log: Vec<AccessLog>,
    /// How long a request's headers may take to arrive (slowloris). Envoy
    /// has no limit by default; mast proxy's default is 30 s.
    #[serde(default)]
    pub request_headers_timeout: Option<String>,
    /// Upgrades to tunnel (`websocket`).
    #[serde(default)]
    pub upgrade_configs: Vec<UpgradeConfig>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpgradeConfig {
    pub upgrade_type: String,
    #[serde(default)]
    pub enabled: Option<bool>,
}

/// An access log in Envoy's default format, to standard output or error.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLog {
    pub name: String,
    pub typed_config: AccessLogConfig,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "@type")]
pub enum AccessLogConfig {
    #[serde(
        rename = "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"
    )]
    Stdout(Empty),
    #[serde(
        rename = "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StderrAccessLog"
    )]
    Stderr(Empty),
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpFilter {
    pub name: String,
    #[serde(default)]
    pub typed_config: Option<HttpFilterConfig>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rds {
    pub config_source: ConfigSource,
    pub route_config_name: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "@type")]
pub enum HttpFilterConfig {
    #[serde(rename = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router")]
    Router(Empty),
    /// Faults come per route (`typed_per_filter_config`); the filter's own
    /// configuration must be empty.
    #[serde(rename = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault")]
    Fault(Empty),
    /// CORS policies come per route; the filter's own configuration is empty.
    #[serde(rename = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors")]
    Cors(Empty),
}

/// Per-route configuration of an HTTP filter, by filter name.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "@type")]
pub enum PerFilterConfig {
    #[serde(rename = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault")]
    Fault(HttpFault),
    #[serde(rename = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy")]
    Cors(CorsPolicy),
}

#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct HttpFault {
    #[serde(default)]
    pub delay: Option<FaultDelay>,
    #[serde(default)]
    pub abort: Option<FaultAbort>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultDelay {
    pub fixed_delay: String,
    #[serde(default)]
    pub percentage: Option<FractionalPercent>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultAbort {
    pub http_status: u16,
    #[serde(default)]
    pub percentage: Option<FractionalPercent>,
}

/// `numerator` out of HUNDRED (the default), TEN_THOUSAND or MILLION.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FractionalPercent {
    #[serde(default)]
    pub numerator: u32,
    #[serde(default)]
    pub denominator: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CorsPolicy {
    #[serde(default)]
    pub allow_origin_string_match: Vec<StringMatcher>,
    #[serde(default)]
    pub allow_methods: Option<String>,
    #[serde(default)]
    pub allow_headers: Option<String>,
    #[serde(default)]
    pub expose_headers: Option<String>,
    #[serde(default)]
    pub max_age: Option<String>,
    #[serde(default)]
    pub allow_credentials: Option<bool>,
}

/// A header to add: `append_action` APPEND_IF_EXISTS_OR_ADD (the default)
/// or OVERWRITE_IF_EXISTS_OR_ADD.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderValueOption {
    pub header: HeaderValue,
    #[serde(default)]
    pub append_action: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderValue {
    pub key: String,
    #[serde(default)]
    pub value: String,
}

/// A message with no fields mast proxy implements.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpProxy {
    pub stat_prefix: String,
    #[serde(default)]
    pub cluster: Option<String>,
    #[serde(default)]
    pub weighted_clusters: Option<TcpWeightedClusters>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpWeightedClusters {
    pub clusters: Vec<TcpClusterWeight>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpClusterWeight {
    pub name: String,
    #[serde(default)]
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RouteConfiguration {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub virtual_hosts: Vec<VirtualHost>,
    /// Whether routes may name only known clusters; either way a missing
    /// cluster is answered 503 (`NC`) rather than refused.
    #[serde(default)]
    pub validate_clusters: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VirtualHost {
    pub name: String,
    pub domains: Vec<String>,
    #[serde(default)]
    pub routes: Vec<Route>,
    /// NONE (the default) or ALL: a request that did not come over TLS
    /// is redirected (301) to https. EXTERNAL_ONLY is not implemented.
    #[serde(default)]
    pub require_tls: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(rename = "match")]
    pub match_: RouteMatch,
    #[serde(default)]
    pub route: Option<RouteAction>,
    #[serde(default)]
    pub direct_response: Option<DirectResponse>,
    #[serde(default)]
    pub redirect: Option<Redirect>,
    #[serde(default)]
    pub request_headers_to_add: Vec<HeaderValueOption>,
    #[serde(default)]
    pub request_headers_to_remove: Vec<String>,
    #[serde(default)]
    pub response_headers_to_add: Vec<HeaderValueOption>,
    #[serde(default)]
    pub response_headers_to_remove: Vec<String>,
    #[serde(default)]
    pub typed_per_filter_config: BTreeMap<String, PerFilterConfig>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub safe_regex: Option<RegexMatcher>,
    #[serde(default)]
    pub headers: Vec<HeaderMatcher>,
    #[serde(default)]
    pub case_sensitive: Option<bool>,
    #[serde(default)]
    pub query_parameters: Vec<QueryParameterMatcher>,
    /// Matches CONNECT requests (and only those).
    #[serde(default)]
    pub connect_matcher: Option<Empty>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryParameterMatcher {
    pub name: String,
    #[serde(default)]
    pub string_match: Option<StringMatcher>,
    #[serde(default)]
    pub present_match: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegexMatcher {
    pub regex: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatcher {
    pub name: String,
    #[serde(default)]
    pub string_match: Option<StringMatcher>,
    #[serde(default)]
    pub present_match: Option<bool>,
    #[serde(default)]
    pub invert_match: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StringMatcher {
    #[serde(default)]
    pub exact: Option<String>,
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub suffix: Option<String>,
    #[serde(default)]
    pub contains: Option<String>,
    #[serde(default)]
    pub safe_regex: Option<RegexMatcher>,
    #[serde(default)]
    pub ignore_case: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RouteAction {
    #[serde(default)]
    pub cluster: Option<String>,
    #[serde(default)]
    pub weighted_clusters: Option<WeightedClusters>,
    /// A duration like "15s" ("0s": none). Envoy's default is 15 s.
    #[serde(default)]
    pub timeout: Option<String>,
    #[serde(default)]
    pub prefix_rewrite: Option<String>,
    #[serde(default)]
    pub host_rewrite_literal: Option<String>,
    #[serde(default)]
    pub retry_policy: Option<RetryPolicy>,
    #[serde(default)]
    pub request_mirror_policies: Vec<RequestMirrorPolicy>,
    /// What RING_HASH and MAGLEV clusters hash: the first policy that
    /// yields a value.
    #[serde(default)]
    pub hash_policy: Vec<HashPolicy>,
    /// CONNECT with `connect_config`: terminated here, its payload
    /// proxied as TCP.
    #[serde(default)]
    pub upgrade_configs: Vec<RouteUpgradeConfig>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteUpgradeConfig {
    pub upgrade_type: String,
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default)]
    pub connect_config: Option<Empty>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct HashPolicy {
    #[serde(default)]
    pub header: Option<HashHeader>,
    #[serde(default)]
    pub cookie: Option<HashCookie>,
    #[serde(default)]
    pub connection_properties: Option<HashConnection>,
    #[serde(default)]
    pub query_parameter: Option<HashQuery>,
    #[serde(default)]
    pub terminal: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HashHeader {
    pub header_name: String,
}

/// A cookie's value; with `ttl`, a missing cookie is made and set, as
/// Envoy does, so the client keeps to one endpoint.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HashCookie {
    pub name: String,
    #[serde(default)]
    pub ttl: Option<String>,
    #[serde(default)]
    pub path: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HashConnection {
    #[serde(default)]
    pub source_ip: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HashQuery {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestMirrorPolicy {
    pub cluster: String,
    #[serde(default)]
    pub runtime_fraction: Option<RuntimeFractionalPercent>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeFractionalPercent {
    pub default_value: FractionalPercent,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedClusters {
    pub clusters: Vec<ClusterWeight>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterWeight {
    pub name: String,
    #[serde(default)]
    pub weight: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    #[serde(default)]
    pub retry_on: String,
    #[serde(default)]
    pub num_retries: Option<u32>,
    #[serde(default)]
    pub per_try_timeout: Option<String>,
    #[serde(default)]
    pub retriable_status_codes: Vec<u32>,
    #[serde(default)]
    pub retry_host_predicate: Vec<RetryHostPredicate>,
    #[serde(default)]
    pub host_selection_retry_max_attempts: Option<i64>,
    #[serde(default)]
    pub retry_back_off: Option<RetryBackOff>,
}

/// `retry_host_predicate`: only `previous_hosts` is implemented.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryHostPredicate {
    pub name: String,
    #[serde(default)]
    pub typed_config: Option<RetryHostPredicateConfig>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "@type")]
pub enum RetryHostPredicateConfig {
    #[serde(
        rename = "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
    )]
    PreviousHosts(Empty),
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryBackOff {
    pub base_interval: String,
    #[serde(default)]
    pub max_interval: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectResponse {
    pub status: u16,
    #[serde(default)]
    pub body: Option<DataSource>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Redirect {
    #[serde(default)]
    pub host_redirect: Option<String>,
    #[serde(default)]
    pub path_redirect: Option<String>,
    #[serde(default)]
    pub response_code: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    pub name: String,
    /// STATIC (the default), STRICT_DNS or LOGICAL_DNS (resolved at
    /// start), EDS (endpoints over ADS) or ORIGINAL_DST (where the
    /// connection was going).
    #[serde(default, rename = "type")]
    pub type_: Option<String>,
    #[serde(default)]
    pub eds_cluster_config: Option<EdsClusterConfig>,
    #[serde(default)]
    pub connect_timeout: Option<String>,
    /// ROUND_ROBIN (the default), RANDOM or LEAST_REQUEST.
    #[serde(default)]
    pub lb_policy: Option<String>,
    #[serde(default)]
    pub load_assignment: Option<ClusterLoadAssignment>,
    #[serde(default)]
    pub circuit_breakers: Option<CircuitBreakers>,
    #[serde(default)]
    pub outlier_detection: Option<OutlierDetection>,
    #[serde(default)]
    pub health_checks: Vec<HealthCheck>,
    /// `healthy_panic_threshold`: below this share of healthy endpoints
    /// (50% by default), all of them are used.
    #[serde(default)]
    pub common_lb_config: Option<CommonLbConfig>,
    #[serde(default)]
    pub typed_extension_protocol_options: BTreeMap<String, ProtocolOptions>,
    #[serde(default)]
    pub upstream_connection_options: Option<UpstreamConnectionOptions>,
    /// TLS origination (`UpstreamTlsContext`); plain TCP without it.
    #[serde(default)]
    pub transport_socket: Option<TransportSocket>,
    /// Transports by endpoint (Istio's auto mTLS): an endpoint takes the
    /// first match whose keys all equal its `envoy.transport_socket_match`
    /// metadata (an empty match takes any endpoint), else
    /// `transport_socket`.
    #[serde(default)]
    pub transport_socket_matches: Vec<TransportSocketMatch>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransportSocketMatch {
    #[serde(default)]
    pub name: String,
    #[serde(default, rename = "match")]
    pub match_: BTreeMap<String, serde_json::Value>,
    pub transport_socket: TransportSocket,
}

/// The metadata key that [`TransportSocketMatch`]es read.
pub const TRANSPORT_SOCKET_MATCH: &str = "envoy.transport_socket_match";

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdsClusterConfig {
    pub eds_config: ConfigSource,
    /// The name of the endpoints' resource (the cluster's name if empty).
    #[serde(default)]
    pub service_name: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterLoadAssignment {
    #[serde(default)]
    pub cluster_name: String,
    #[serde(default)]
    pub endpoints: Vec<LocalityLbEndpoints>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalityLbEndpoints {
    #[serde(default)]
    pub lb_endpoints: Vec<LbEndpoint>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LbEndpoint {
    pub endpoint: Endpoint,
    /// Only `filter_metadata["envoy.transport_socket_match"]` is read.
    #[serde(default)]
    pub metadata: Option<Metadata>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    #[serde(default)]
    pub filter_metadata: BTreeMap<String, BTreeMap<String, serde_json::Value>>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    pub address: Address,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CommonLbConfig {
    #[serde(default)]
    pub healthy_panic_threshold: Option<Percent>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Percent {
    #[serde(default)]
    pub value: f64,
}

/// An active health check: HTTP (`path`, 200 is healthy) or TCP (a
/// connect).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    pub timeout: String,
    pub interval: String,
    pub unhealthy_threshold: u32,
    pub healthy_threshold: u32,
    #[serde(default)]
    pub http_health_check: Option<HttpHealthCheck>,
    #[serde(default)]
    pub tcp_health_check: Option<Empty>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpHealthCheck {
    pub path: String,
    #[serde(default)]
    pub host: Option<String>,
}

/// Ejection after consecutive failures. Success-rate ejection is not
/// implemented: `enforcing_success_rate` must be 0 or unset.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct OutlierDetection {
    #[serde(default)]
    pub consecutive_5xx: Option<u32>,
    #[serde(default)]
    pub enforcing_consecutive_5xx: Option<u32>,
    #[serde(default)]
    pub consecutive_gateway_failure: Option<u32>,
    #[serde(default)]
    pub enforcing_consecutive_gateway_failure: Option<u32>,
    #[serde(default)]
    pub interval: Option<String>,
    #[serde(default)]
    pub base_ejection_time: Option<String>,
    #[serde(default)]
    pub max_ejection_time: Option<String>,
    #[serde(default)]
    pub max_ejection_percent: Option<u32>,
    #[serde(default)]
    pub enforcing_success_rate: Option<u32>,
    /// Count connection failures, resets and timeouts apart from the
    /// upstream's 5xx answers.
    #[serde(default)]
    pub split_external_local_origin_errors: bool,
    #[serde(default)]
    pub consecutive_local_origin_failure: Option<u32>,
    #[serde(default)]
    pub enforcing_consecutive_local_origin_failure: Option<u32>,
    #[serde(default)]
    pub enforcing_local_origin_success_rate: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreakers {
    #[serde(default)]
    pub thresholds: Vec<Thresholds>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Thresholds {
    #[serde(default)]
    pub max_connections: Option<u32>,
    #[serde(default)]
    pub max_pending_requests: Option<u32>,
    #[serde(default)]
    pub max_requests: Option<u32>,
    #[serde(default)]
    pub max_retries: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "@type")]
pub enum ProtocolOptions {
    #[serde(rename = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions")]
    Http(HttpProtocolOptions),
}

/// A cluster's upstream HTTP: which protocol (`explicit_http_config`, or
/// the downstream's with `use_downstream_protocol_config`), and the
/// connections' limits (`common_http_protocol_options`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpProtocolOptions {
    #[serde(default)]
    pub explicit_http_config: Option<HttpVersions>,
    #[serde(default)]
    pub use_downstream_protocol_config: Option<HttpVersions>,
    #[serde(default)]
    pub common_http_protocol_options: Option<CommonHttpProtocolOptions>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpVersions {
    #[serde(default)]
    pub http_protocol_options: Option<Empty>,
    #[serde(default)]
    pub http2_protocol_options: Option<Http2ProtocolOptions>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Http2ProtocolOptions {
    /// Streams at once on one upstream connection; beyond them another
    /// connection opens.
    #[serde(default)]
    pub max_concurrent_streams: Option<u32>,
}

/// How long an upstream connection lives and how much it carries.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CommonHttpProtocolOptions {
    /// Closed after this long without a request (Envoy's default: 1 h).
    #[serde(default)]
    pub idle_timeout: Option<String>,
    /// Closed once it has carried this many requests.
    #[serde(default)]
    pub max_requests_per_connection: Option<u32>,
    /// Closed this long after it opened, once its requests are done.
    #[serde(default)]
    pub max_connection_duration: Option<String>,
}

/// Socket options of upstream connections: TCP keepalive.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConnectionOptions {
    #[serde(default)]
    pub tcp_keepalive: Option<TcpKeepalive>,
}

/// Unset fields keep the system's values (Linux: 9 probes, 7200 s, 75 s).
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TcpKeepalive {
    #[serde(default)]
    pub keepalive_probes: Option<u32>,
    #[serde(default)]
    pub keepalive_time: Option<u32>,
    #[serde(default)]
    pub keepalive_interval: Option<u32>,
}

/// Read a bootstrap from YAML or JSON (JSON is YAML). The error names the
/// field that mast proxy does not implement, with its place in the file.
pub fn parse(text: &str) -> anyhow::Result<Bootstrap> {
    let refused = |e: &dyn std::fmt::Display| {
        anyhow::anyhow!("the bootstrap is not one mast proxy can run: {e} (mast proxy implements a subset of Envoy's v3 bootstrap, and refuses what it does not implement rather than ignore it; see docs/proxy.md)")
    };
    // JSON is YAML, but a JSON reader streams: the YAML reader holds every
    // event of the document at once (9 MB for a 300 KB file).
    let b: Bootstrap = if text.trim_start().starts_with('{') {
        serde_json::from_str(text).map_err(|e| refused(&e))?
    } else {
        serde_yaml_ng::from_str(text).map_err(|e| refused(&e))?
    };
    if let Some(d) = &b.dynamic_resources {
        if d.ads_config.api_type != "GRPC" {
            anyhow::bail!("the bootstrap is not one mast proxy can run: dynamic_resources.ads_config.api_type {:?}: mast proxy implements GRPC (state of the world)", d.ads_config.api_type);
        }
        let [g] = d.ads_config.grpc_services.as_slice() else {
            anyhow::bail!("the bootstrap is not one mast proxy can run: dynamic_resources.ads_config needs exactly one grpc_services entry");
        };
        if !b
            .static_resources
            .clusters
            .iter()
            .any(|c| c.name == g.envoy_grpc.cluster_name)
        {
            anyhow::bail!("the bootstrap is not one mast proxy can run: the ADS cluster {:?} is not in static_resources.clusters", g.envoy_grpc.cluster_name);
        }
    }
    Ok(b)
}

/// An Envoy duration ("1.5s", "250ms" is not Envoy's form but accepted).
pub fn duration(s: &str) -> Option<std::time::Duration> {
    let s = s.trim();
    let (n, scale) = if let Some(ms) = s.strip_suffix("ms") {
        (ms, 0.001)
    } else if let Some(sec) = s.strip_suffix('s') {
        (sec, 1.0)
    } else {
        return None;
    };
    let v: f64 = n.parse().ok()?;
    std::time::Duration::try_from_secs_f64(v * scale).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_named_by_transport_socket_matches_are_asked_for() {
        let b = parse(
            r#"
static_resources:
  clusters:
  - name: auto
    transport_socket_matches:
    - name: tlsMode-istio
      match: {tlsMode: istio}
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
          common_tls_context:
            tls_certificate_sds_secret_configs: [{name: default, sds_config: {ads: {}}}]
            validation_context_sds_secret_config: {name: ROOTCA, sds_config: {ads: {}}}
    - name: tlsMode-disabled
      match: {}
      transport_socket:
        name: envoy.transport_sockets.raw_buffer
        typed_config: {"@type": type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer}
"#,
        )
        .expect("parse");
        let names = ads_secret_names(b.static_resources.clusters.iter(), std::iter::empty());
        assert_eq!(names.into_iter().collect::<Vec<_>>(), ["ROOTCA", "default"]);
    }

    #[test]
    fn unknown_fields_are_refused_by_name() {
        let e = parse(
            "static_resources: {listeners: [], clusters: [{name: a, dns_lookup_family: V4_ONLY}]}",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("dns_lookup_family"), "{e}");
        let e = parse("static_resources: {listeners: [{address: {socket_address: {address: 0.0.0.0, port_value: 1}}, filter_chains: [{filters: [{name: x, typed_config: {'@type': type.googleapis.com/envoy.extensions.filters.network.redis_proxy.v3.RedisProxy}}]}]}]}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("RedisProxy"), "{e}");
    }

    #[test]
    fn durations_parse() {
        assert_eq!(
            duration("1.5s"),
            Some(std::time::Duration::from_millis(1500))
        );
        assert_eq!(duration("0s"), Some(std::time::Duration::ZERO));
        assert_eq!(duration("soon"), None);
        // Found by the fuzzer: too long for a Duration is no duration.
        assert_eq!(duration("1e300s"), None);
        assert_eq!(duration("-1s"), None);
    }
}

/// A connection's transport: TLS (Envoy's `envoy.transport_sockets.tls`)
/// or plain bytes (`raw_buffer`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransportSocket {
    #[serde(default)]
    pub name: String,
    pub typed_config: TransportSocketConfig,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "@type")]
pub enum TransportSocketConfig {
    #[serde(
        rename = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
    )]
    Upstream(UpstreamTlsContext),
    #[serde(
        rename = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
    )]
    Downstream(DownstreamTlsContext),
    #[serde(
        rename = "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"
    )]
    RawBuffer(Empty),
}

#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsContext {
    #[serde(default)]
    pub common_tls_context: CommonTlsContext,
    /// The server name sent in the ClientHello; none without it.
    #[serde(default)]
    pub sni: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DownstreamTlsContext {
    #[serde(default)]
    pub common_tls_context: CommonTlsContext,
    /// Refuse clients without a certificate (the validation context's
    /// trusted CA must sign it).
    #[serde(default)]
    pub require_client_certificate: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CommonTlsContext {
    #[serde(default)]
    pub tls_params: Option<TlsParameters>,
    #[serde(default)]
    pub tls_certificates: Vec<TlsCertificate>,
    #[serde(default)]
    pub tls_certificate_sds_secret_configs: Vec<SdsSecretConfig>,
    #[serde(default)]
    pub validation_context: Option<CertificateValidationContext>,
    #[serde(default)]
    pub validation_context_sds_secret_config: Option<SdsSecretConfig>,
    #[serde(default)]
    pub combined_validation_context: Option<CombinedValidationContext>,
    /// ALPN, offered (upstream) or chosen from (downstream) in this order.
    #[serde(default)]
    pub alpn_protocols: Vec<String>,
}

/// `TLSv1_2` or `TLSv1_3` (`TLS_AUTO`: Envoy's default); TLS 1.0 and 1.1
/// are not implemented.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TlsParameters {
    #[serde(default)]
    pub tls_minimum_protocol_version: Option<String>,
    #[serde(default)]
    pub tls_maximum_protocol_version: Option<String>,
}

/// A certificate chain and its private key, PEM.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsCertificate {
    pub certificate_chain: DataSource,
    pub private_key: DataSource,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateValidationContext {
    /// The CAs a peer's chain must lead to, PEM.
    #[serde(default)]
    pub trusted_ca: Option<DataSource>,
    /// Matched against every subject alternative name of the peer's
    /// certificate; one match suffices.
    #[serde(default)]
    pub match_subject_alt_names: Vec<StringMatcher>,
    #[serde(default)]
    pub match_typed_subject_alt_names: Vec<SubjectAltNameMatcher>,
    /// VERIFY_TRUST_CHAIN (the default) or ACCEPT_UNTRUSTED.
    #[serde(default)]
    pub trust_chain_verification: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubjectAltNameMatcher {
    /// DNS, URI, EMAIL or IP_ADDRESS.
    pub san_type: String,
    pub matcher: StringMatcher,
}

/// A default validation context, merged with one from a secret.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CombinedValidationContext {
    pub default_validation_context: CertificateValidationContext,
    pub validation_context_sds_secret_config: SdsSecretConfig,
}

/// A secret by name, from `static_resources.secrets` (an `sds_config`
/// is refused: SDS over ADS is not implemented yet).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SdsSecretConfig {
    pub name: String,
    #[serde(default)]
    pub sds_config: Option<ConfigSource>,
}

impl CommonTlsContext {
    /// The secrets it names, and whether each comes over ADS.
    pub fn secret_refs(&self) -> impl Iterator<Item = &SdsSecretConfig> {
        self.tls_certificate_sds_secret_configs
            .iter()
            .chain(&self.validation_context_sds_secret_config)
            .chain(
                self.combined_validation_context
                    .iter()
                    .map(|c| &c.validation_context_sds_secret_config),
            )
    }
}

impl TransportSocket {
    /// The names of the secrets it takes over ADS (SDS).
    pub fn ads_secrets(&self) -> impl Iterator<Item = &str> {
        let common = match &self.typed_config {
            TransportSocketConfig::Upstream(u) => Some(&u.common_tls_context),
            TransportSocketConfig::Downstream(d) => Some(&d.common_tls_context),
            TransportSocketConfig::RawBuffer(_) => None,
        };
        common
            .into_iter()
            .flat_map(|c| c.secret_refs())
            .filter(|s| s.sds_config.is_some())
            .map(|s| s.name.as_str())
    }
}

/// The secrets that these clusters and listeners take over ADS.
pub fn ads_secret_names<'a>(
    clusters: impl Iterator<Item = &'a Cluster>,
    listeners: impl Iterator<Item = &'a Listener>,
) -> std::collections::BTreeSet<String> {
    let chains = listeners.flat_map(|l| l.filter_chains.iter().chain(&l.default_filter_chain));
    clusters
        .flat_map(|c| {
            c.transport_socket.iter().chain(
                c.transport_socket_matches
                    .iter()
                    .map(|m| &m.transport_socket),
            )
        })
        .chain(chains.filter_map(|c| c.transport_socket.as_ref()))
        .flat_map(|t| t.ads_secrets())
        .map(str::to_owned)
        .collect()
}

/// Envoy's `Secret` (`envoy.extensions.transport_sockets.tls.v3.Secret`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Secret {
    pub name: String,
    #[serde(default)]
    pub tls_certificate: Option<TlsCertificate>,
    #[serde(default)]
    pub validation_context: Option<CertificateValidationContext>,
}

/// Bytes from a file or inline (`inline_bytes` is base64 in JSON, as in
/// protobuf's JSON mapping).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSource {
    #[serde(default)]
    pub filename: Option<String>,
    #[serde(default)]
    pub inline_string: Option<String>,
    #[serde(default)]
    pub inline_bytes: Option<String>,
}
