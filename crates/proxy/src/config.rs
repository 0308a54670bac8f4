//! The bootstrap compiled into what the data plane runs: clusters with
//! their endpoints and counters, listeners with compiled routes. Every
//! reference is checked here, so a route naming a missing cluster stops
//! the proxy at start-up with that name.

use crate::bootstrap::{self, Bootstrap};
use crate::stats::{ClusterStats, ListenerStats};
use anyhow::{anyhow, bail, Context, Result};
use arc_swap::ArcSwap;
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Lb {
    RoundRobin,
    Random,
    LeastRequest,
    /// RING_HASH and MAGLEV: the same key reaches the same endpoint while
    /// the endpoints stay; when they change, only the keys of the changed
    /// endpoints move. Done by rendezvous hashing, which gives both
    /// properties without a table to rebuild.
    Hash,
}

/// Where a cluster's endpoints come from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ClusterKind {
    /// Listed in the cluster (STATIC, or resolved once: STRICT_DNS and
    /// LOGICAL_DNS).
    Static,
    /// From EDS.
    Eds,
    /// The connection's original destination (ORIGINAL_DST).
    OriginalDst,
    /// Named by a route but not (yet) defined: answered 503 `NC`.
    Missing,
}

#[derive(Debug)]
pub struct Cluster {
    pub name: String,
    pub kind: ClusterKind,
    /// Swapped in place when EDS changes them.
    pub endpoints: ArcSwap<Vec<SocketAddr>>,
    pub lb: Lb,
    pub next: AtomicUsize,
    pub connect_timeout: Duration,
    /// Upstream HTTP/2 (explicit `http2_protocol_options`).
    pub h2: bool,
    /// HTTP/2 upstream for HTTP/2 requests, HTTP/1.1 for the others
    /// (`use_downstream_protocol_config` with both protocols).
    pub h2_if_downstream: bool,
    /// Streams at once on one upstream HTTP/2 connection
    /// (`max_concurrent_streams`, Envoy's default 2^31 - 1).
    pub h2_streams: usize,
    /// When its upstream connections stop being reused.
    pub limits: Limits,
    /// TCP keepalive on upstream connections.
    pub keepalive: Option<socket2::TcpKeepalive>,
    pub max_connections: usize,
    pub max_pending: usize,
    pub max_requests: usize,
    /// Retries in flight at once (`max_retries`, Envoy's default 3); a
    /// retry beyond them is not made.
    pub max_retries: u64,
    pub retries: AtomicU64,
    /// Upstream HTTP/1.1 connections in use (`max_connections`); requests
    /// beyond them wait, up to `max_pending`, then overflow.
    pub conns: tokio::sync::Semaphore,
    pub pending: AtomicUsize,
    pub outlier: Option<crate::outlier::Outlier>,
    pub health: Vec<crate::health::Health>,
    /// Below this share of healthy endpoints (percent), all are used
    /// (Envoy's panic mode).
    pub panic_threshold: f64,
    pub stats: ClusterStats,
    /// TLS origination (`transport_socket` with an `UpstreamTlsContext`).
    pub tls: Option<crate::transport::Upstream>,
    /// `transport_socket_matches`, compiled: each one's TLS (None: plain).
    pub tls_matches: Vec<Option<crate::transport::Upstream>>,
    /// The endpoints a match takes, with its index in `tls_matches`; the
    /// others take `tls`.
    pub ep_transport: ArcSwap<HashMap<SocketAddr, usize>>,
}

/// Envoy's default `max_concurrent_streams`.
const H2_STREAMS: usize = 2_147_483_647;

/// `common_http_protocol_options`: how long an upstream connection lives
/// and how many requests it carries. Times are in milliseconds, as
/// [`crate::lifetime`] compares them on every pooled request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// 0: no limit.
    pub max_requests: u32,
    pub idle_ms: u64,
    pub max_ms: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_requests: 0,
            // Envoy's default for upstream connections: an hour.
            idle_ms: 3_600_000,
            max_ms: None,
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[derive(Debug)]
pub enum PathMatch {
    Prefix(String),
    Exact(String),
    Regex(regex::Regex),
    /// `connect_matcher`: CONNECT requests, which no other match takes.
    Connect,
}

#[derive(Debug)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Contains(String),
    Regex(regex::Regex),
    Present,
}

#[derive(Debug)]
pub struct HeaderMatch {
    pub name: http::HeaderName,
    pub m: StringMatch,
    pub invert: bool,
}

/// Parts per million, the finest of Envoy's fractions.
pub type PerMillion = u32;

#[derive(Debug)]
pub struct Forward {
    /// Clusters with their weights (relative).
    pub targets: Vec<(Arc<Cluster>, u32)>,
    pub total: u32,
    pub timeout: Option<Duration>,
    pub prefix_rewrite: Option<String>,
    pub host_rewrite: Option<http::HeaderValue>,
    /// `retry_policy`; none is one attempt. Boxed: most routes have the
    /// default, and the route stays small.
    pub retry: Box<crate::retry::Retry>,
    /// Copies of requests to these clusters, answers dropped.
    pub mirrors: Vec<(Arc<Cluster>, PerMillion)>,
    /// What hashing clusters hash, in order.
    pub hash: Vec<HashOn>,
    /// CONNECT requests end here, as a TCP tunnel to the cluster
    /// (`connect_config`); otherwise they are forwarded to it.
    pub connect_terminate: bool,
}

#[derive(Debug)]
pub enum HashOn {
    Header(http::HeaderName),
    /// A cookie; with a TTL, one is made and set when missing.
    Cookie {
        name: String,
        ttl: Option<Duration>,
        path: Option<String>,
    },
    SourceIp,
    Query(String),
}

#[derive(Debug)]
pub enum Action {
    Forward(Forward),
    Direct { status: u16, body: Bytes },
    Redirect { location: String, status: u16 },
}

/// The fault filter's per-route configuration.
#[derive(Debug, Default)]
pub struct Fault {
    pub delay: Option<(Duration, PerMillion)>,
    pub abort: Option<(u16, PerMillion)>,
}

/// The CORS filter's per-route policy.
#[derive(Debug, Default)]
pub struct Cors {
    pub origins: Vec<StringMatch>,
    pub allow_methods: Option<http::HeaderValue>,
    pub allow_headers: Option<http::HeaderValue>,
    pub expose_headers: Option<http::HeaderValue>,
    pub max_age: Option<http::HeaderValue>,
    pub allow_credentials: bool,
}

/// Header edits: `(name, value, overwrite)` to add, names to remove.
#[derive(Debug, Default)]
pub struct HeaderOps {
    pub add: Vec<(http::HeaderName, http::HeaderValue, bool)>,
    pub remove: Vec<http::HeaderName>,
}

impl HeaderOps {
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }

    pub fn apply(&self, h: &mut http::HeaderMap) {
        for n in &self.remove {
            h.remove(n);
        }
        for (n, v, overwrite) in &self.add {
            if *overwrite {
                h.insert(n.clone(), v.clone());
            } else {
                h.append(n.clone(), v.clone());
            }
        }
    }
}

#[derive(Debug)]
pub struct Route {
    pub path: PathMatch,
    pub case_sensitive: bool,
    pub headers: Vec<HeaderMatch>,
    pub query: Vec<(String, StringMatch)>,
    pub action: Action,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
    pub fault: Option<Fault>,
    pub cors: Option<Cors>,
}

#[derive(Debug)]
pub struct VirtualHost {
    pub domains: Vec<String>,
    pub routes: Vec<Route>,
    /// `require_tls: ALL`: plain-text requests are redirected to https.
    pub require_tls: bool,
}

/// A route configuration: inline in a listener, or from RDS.
#[derive(Debug)]
pub struct RouteTable {
    pub vhosts: Vec<VirtualHost>,
}

#[derive(Debug)]
pub enum Routes {
    Inline(Arc<RouteTable>),
    /// By name, looked up per request, so RDS updates reach open
    /// connections.
    Rds(String),
}

#[derive(Debug)]
pub struct HttpListener {
    pub stat_prefix: String,
    /// Where access logs go: `Some(true)` standard output, `Some(false)`
    /// standard error.
    pub access_log: Option<bool>,
    pub http1_only: bool,
    pub routes: Routes,
    /// The fault and CORS filters are in the chain (their per-route
    /// configuration applies).
    pub faults: bool,
    pub cors: bool,
    /// Outbound (or a gateway): Istio's metrics report `source`.
    pub outbound: bool,
    /// How long request headers may take (`request_headers_timeout`).
    pub headers_timeout: Duration,
    /// Upgrades tunnelled (`upgrade_configs`), lower case: `websocket`.
    pub upgrades: Vec<String>,
}

#[derive(Debug)]
pub enum Network {
    Http(Arc<HttpListener>),
    Tcp {
        stat_prefix: String,
        targets: Vec<(Arc<Cluster>, u32)>,
        total: u32,
        outbound: bool,
    },
}

#[derive(Debug, Default)]
pub struct ChainMatch {
    pub destination_port: Option<u16>,
    pub server_names: Vec<String>,
    pub transport_protocol: Option<String>,
}

#[derive(Debug)]
pub struct Chain {
    pub name: String,
    pub m: ChainMatch,
    pub net: Network,
    /// TLS termination (`transport_socket` with a `DownstreamTlsContext`).
    pub tls: Option<crate::transport::Downstream>,
}

#[derive(Debug)]
pub struct Listener {
    pub name: String,
    pub address: SocketAddr,
    /// Bound to its port (else reached only through `use_original_dst`).
    pub bind: bool,
    pub use_original_dst: bool,
    /// The `original_dst` listener filter: the destination is the
    /// connection's original one.
    pub original_dst: bool,
    /// The TLS inspector: SNI and `tls` for the chain match.
    pub tls_inspector: bool,
    pub chains: Vec<Chain>,
    pub default_chain: Option<Chain>,
    pub stats: Arc<ListenerStats>,
}

/// How a chain's server names match an SNI: exact beats `*.suffix`.
fn sni_rank(names: &[String], sni: Option<&str>) -> Option<u8> {
    if names.is_empty() {
        return Some(0);
    }
    let sni = sni?;
    if names.iter().any(|n| n.eq_ignore_ascii_case(sni)) {
        return Some(2);
    }
    names
        .iter()
        .any(|n| {
            n.strip_prefix('*').is_some_and(|sfx| {
                sni.len() > sfx.len()
                    && sni
                        .to_ascii_lowercase()
                        .ends_with(&sfx.to_ascii_lowercase())
            })
        })
        .then_some(1)
}

impl Listener {
    /// Envoy's filter-chain selection: destination port, then server
    /// names, then transport protocol, the most specific winning; else the
    /// default chain.
    pub fn chain(&self, port: u16, sni: Option<&str>, tls: bool) -> Option<&Chain> {
        self.chains
            .iter()
            .filter_map(|c| {
                let port_rank = match c.m.destination_port {
                    Some(p) if p == port => 1u8,
                    Some(_) => return None,
                    None => 0,
                };
                let sni_rank = sni_rank(&c.m.server_names, sni)?;
                let proto_rank = match c.m.transport_protocol.as_deref() {
                    Some("tls") if tls => 1u8,
                    Some("raw_buffer") if !tls => 1,
                    Some(_) => return None,
                    None => 0,
                };
                Some(((port_rank, sni_rank, proto_rank), c))
            })
            .max_by_key(|(rank, _)| *rank)
            .map(|(_, c)| c)
            .or(self.default_chain.as_ref())
    }
}

#[derive(Debug)]
pub struct Config {
    pub admin: Option<SocketAddr>,
    pub clusters: HashMap<String, Arc<Cluster>>,
    pub listeners: Vec<Arc<Listener>>,
    pub routes: HashMap<String, Arc<RouteTable>>,
    by_address: HashMap<SocketAddr, Arc<Listener>>,
    by_name: HashMap<String, Arc<Listener>>,
    /// The static bootstrap, kept for recompiling with ADS updates.
    pub bootstrap: Bootstrap,
    /// What ADS delivered (empty without `dynamic_resources`).
    pub dynamic: crate::xds::Resources,
    /// The bootstrap's text, for `/config_dump`.
    pub raw: String,
    /// Secrets by name, static and from SDS.
    pub secrets: crate::transport::Secrets,
}

impl Config {
    pub fn listener(&self, name: &str) -> Option<&Arc<Listener>> {
        self.by_name.get(name)
    }

    /// The listener for a connection's original destination: exact
    /// address, else the wildcard address on its port.
    pub fn by_destination(&self, dst: SocketAddr) -> Option<&Arc<Listener>> {
        self.by_address.get(&dst).or_else(|| {
            let any = match dst {
                SocketAddr::V4(_) => std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
                SocketAddr::V6(_) => std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
            };
            self.by_address.get(&SocketAddr::new(any, dst.port()))
        })
    }

    /// A cluster's definition, static or from ADS.
    fn definition(&self, name: &str) -> Option<&bootstrap::Cluster> {
        self.dynamic.clusters.get(name).or_else(|| {
            self.bootstrap
                .static_resources
                .clusters
                .iter()
                .find(|c| c.name == name)
        })
    }

    /// Where ADS is: the first endpoint of the cluster `ads_config` names.
    pub fn ads_endpoint(&self) -> Option<SocketAddr> {
        let d = self.bootstrap.dynamic_resources.as_ref()?;
        let name = &d.ads_config.grpc_services.first()?.envoy_grpc.cluster_name;
        self.clusters.get(name)?.endpoints.load().first().copied()
    }
}

fn socket(a: &bootstrap::Address, dns: bool) -> Result<Vec<SocketAddr>> {
    let s = &a.socket_address;
    if let Some(p) = &s.protocol {
        if p != "TCP" {
            bail!("socket_address.protocol {p}: mast proxy implements TCP");
        }
    }
    if let Ok(ip) = s.address.parse::<std::net::IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, s.port_value)]);
    }
    if !dns {
        bail!(
            "address {:?} is not an IP address (use a STRICT_DNS or LOGICAL_DNS cluster for names)",
            s.address
        );
    }
    Ok((s.address.as_str(), s.port_value)
        .to_socket_addrs()
        .with_context(|| format!("resolving {}", s.address))?
        .collect())
}

fn dur(what: &str, v: &Option<String>) -> Result<Option<Duration>> {
    v.as_ref()
        .map(|s| bootstrap::duration(s).ok_or_else(|| anyhow!("{what}: bad duration {s:?}")))
        .transpose()
}

pub(crate) fn string_match(m: &bootstrap::StringMatcher) -> Result<StringMatch> {
    if m.ignore_case {
        bail!("string_match.ignore_case is not implemented");
    }
    Ok(if let Some(v) = &m.exact {
        StringMatch::Exact(v.clone())
    } else if let Some(v) = &m.prefix {
        StringMatch::Prefix(v.clone())
    } else if let Some(v) = &m.suffix {
        StringMatch::Suffix(v.clone())
    } else if let Some(v) = &m.contains {
        StringMatch::Contains(v.clone())
    } else if let Some(r) = &m.safe_regex {
        StringMatch::Regex(regex(&r.regex)?)
    } else {
        bail!("a string_match needs exact, prefix, suffix, contains or safe_regex")
    })
}

fn regex(r: &str) -> Result<regex::Regex> {
    regex::Regex::new(&format!("^(?:{r})$")).map_err(|e| anyhow!("regex {r:?}: {e}"))
}

fn percent(p: &Option<bootstrap::FractionalPercent>) -> Result<PerMillion> {
    let Some(p) = p else {
        return Ok(1_000_000);
    };
    let scale = match p.denominator.as_deref().unwrap_or("HUNDRED") {
        "HUNDRED" => 10_000,
        "TEN_THOUSAND" => 100,
        "MILLION" => 1,
        other => bail!("percentage denominator {other}"),
    };
    Ok(p.numerator.saturating_mul(scale).min(1_000_000))
}

fn header_name(n: &str) -> Result<http::HeaderName> {
    http::HeaderName::from_bytes(n.to_ascii_lowercase().as_bytes())
        .map_err(|_| anyhow!("bad header name {n:?}"))
}

fn header_value(v: &str) -> Result<http::HeaderValue> {
    v.parse().map_err(|_| anyhow!("bad header value {v:?}"))
}

fn header_ops(add: &[bootstrap::HeaderValueOption], remove: &[String]) -> Result<HeaderOps> {
    let mut ops = HeaderOps::default();
    for h in add {
        let overwrite = match h
            .append_action
            .as_deref()
            .unwrap_or("APPEND_IF_EXISTS_OR_ADD")
        {
            "APPEND_IF_EXISTS_OR_ADD" => false,
            "OVERWRITE_IF_EXISTS_OR_ADD" => true,
            other => bail!("append_action {other} is not implemented"),
        };
        ops.add.push((
            header_name(&h.header.key)?,
            header_value(&h.header.value)?,
            overwrite,
        ));
    }
    for n in remove {
        ops.remove.push(header_name(n)?);
    }
    Ok(ops)
}

impl Config {
    /// A bootstrap alone (static resources; ADS adds the rest later).
    pub fn compile(b: &Bootstrap, raw: String) -> Result<Config> {
        Self::build(b, raw, &crate::xds::Resources::default(), None)
    }

    /// The static bootstrap with what ADS delivered. `prev` is the running
    /// configuration: clusters and listener counters that an update leaves
    /// unchanged are kept.
    pub fn build(
        b: &Bootstrap,
        raw: String,
        dynamic: &crate::xds::Resources,
        prev: Option<&Config>,
    ) -> Result<Config> {
        let ads = b.dynamic_resources.is_some();
        let mut secrets = crate::transport::Secrets::new();
        for s in b
            .static_resources
            .secrets
            .iter()
            .chain(dynamic.secrets.values())
        {
            if secrets.insert(s.name.clone(), s.clone()).is_some() {
                bail!("secret {} is defined twice", s.name);
            }
        }
        let mut clusters: HashMap<String, Arc<Cluster>> = HashMap::new();
        for c in b
            .static_resources
            .clusters
            .iter()
            .chain(dynamic.clusters.values())
        {
            if clusters.contains_key(&c.name) {
                bail!("cluster {} is defined twice", c.name);
            }
            let (endpoints, transport) = endpoints_of(c, dynamic)?;
            // An update that leaves a cluster's definition as it was keeps
            // the cluster, with its counters and balancing state.
            // A cluster with TLS is compiled again when a secret changed
            // (an SDS rotation), as it may name it.
            if let Some(old) = prev
                .filter(|p| p.definition(&c.name) == Some(c))
                .filter(|p| {
                    (c.transport_socket.is_none() && c.transport_socket_matches.is_empty())
                        || p.secrets == secrets
                })
                .and_then(|p| p.clusters.get(&c.name))
            {
                if **old.endpoints.load() != endpoints {
                    old.endpoints.store(Arc::new(endpoints));
                }
                if **old.ep_transport.load() != transport {
                    old.ep_transport.store(Arc::new(transport));
                }
                clusters.insert(c.name.clone(), old.clone());
                continue;
            }
            let mut cluster =
                compile_cluster(c, &secrets).with_context(|| format!("cluster {}", c.name))?;
            cluster.endpoints = ArcSwap::from_pointee(endpoints);
            cluster.ep_transport = ArcSwap::from_pointee(transport);
            clusters.insert(c.name.clone(), Arc::new(cluster));
        }
        let missing: std::cell::RefCell<HashMap<String, Arc<Cluster>>> = Default::default();
        let cluster = |name: &str, from: &str| -> Result<Arc<Cluster>> {
            if let Some(c) = clusters.get(name) {
                return Ok(c.clone());
            }
            if !ads {
                bail!("{from} names cluster {name:?}, which static_resources.clusters does not define");
            }
            // Over ADS a route may name a cluster that is not there (yet):
            // Envoy answers 503 with NC, and so does this.
            Ok(missing
                .borrow_mut()
                .entry(name.to_owned())
                .or_insert_with(|| Arc::new(Cluster::missing(name)))
                .clone())
        };
        let mut routes = HashMap::new();
        for (name, rc) in &dynamic.routes {
            routes.insert(name.clone(), Arc::new(compile_table(rc, &cluster)?));
        }
        let mut listeners = vec![];
        for l in b
            .static_resources
            .listeners
            .iter()
            .chain(dynamic.listeners.values())
        {
            let stats = prev
                .and_then(|p| p.by_name.get(&l.name))
                .map(|o| o.stats.clone())
                .unwrap_or_default();
            let l = compile_listener(l, &cluster, stats, &secrets)
                .with_context(|| format!("listener {}", l.name))?;
            listeners.push(Arc::new(l));
        }
        let mut by_address = HashMap::new();
        let mut by_name = HashMap::new();
        for l in &listeners {
            if by_name.insert(l.name.clone(), l.clone()).is_some() {
                bail!("listener {} is defined twice", l.name);
            }
            if by_address.insert(l.address, l.clone()).is_some() {
                bail!(
                    "listener {}: another listener has the address {}",
                    l.name,
                    l.address
                );
            }
        }
        let admin = match &b.admin {
            Some(a) => {
                if let Some(p) = a.access_log_path.as_deref().filter(|p| *p != "/dev/null") {
                    bail!("admin.access_log_path {p:?}: mast proxy writes no log of admin requests; leave it out or use /dev/null");
                }
                socket(&a.address, false)?.first().copied()
            }
            None => None,
        };
        Ok(Config {
            admin,
            clusters,
            listeners,
            routes,
            by_address,
            by_name,
            bootstrap: b.clone(),
            dynamic: dynamic.clone(),
            raw,
            secrets,
        })
    }
}

impl Cluster {
    /// Whether a request of HTTP version `v` goes upstream as HTTP/2.
    pub fn h2_for(&self, v: http::Version) -> bool {
        self.h2 || (self.h2_if_downstream && v == http::Version::HTTP_2)
    }

    /// A new connection to `ep`, within the connect timeout, counted in
    /// `upstream_cx_total` and, failing, `upstream_cx_connect_fail`.
    pub async fn connect(&self, ep: SocketAddr) -> Option<tokio::net::TcpStream> {
        use std::sync::atomic::Ordering::Relaxed;
        self.stats.upstream_cx_total.fetch_add(1, Relaxed);
        match tokio::time::timeout(self.connect_timeout, tokio::net::TcpStream::connect(ep)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                if let Some(k) = &self.keepalive {
                    let _ = socket2::SockRef::from(&s).set_tcp_keepalive(k);
                }
                Some(s)
            }
            _ => {
                self.stats.upstream_cx_connect_fail.fetch_add(1, Relaxed);
                None
            }
        }
    }

    /// The TLS that connections to `ep` take, if any: its transport
    /// socket match's, else the cluster's.
    pub fn transport(&self, ep: SocketAddr) -> Option<&crate::transport::Upstream> {
        if self.tls_matches.is_empty() {
            return self.tls.as_ref();
        }
        match self.ep_transport.load().get(&ep) {
            Some(&i) => self.tls_matches.get(i).and_then(Option::as_ref),
            None => self.tls.as_ref(),
        }
    }

    /// A connection to `ep` for anything but the inline HTTP/1.1 client:
    /// TCP, then TLS if the cluster originates it, both within
    /// `connect_timeout` (Envoy's connection is not connected until its
    /// handshake is done). A failed handshake counts as a failed connect.
    pub async fn open(&self, ep: SocketAddr) -> Option<crate::transport::UpIo> {
        use std::sync::atomic::Ordering::Relaxed;
        use tokio_util::either::Either;
        let Some(tls) = self.transport(ep) else {
            return self.connect(ep).await.map(Either::Left);
        };
        let started = std::time::Instant::now();
        let tcp = self.connect(ep).await?;
        let left = self.connect_timeout.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, tls.handshake(tcp, ep)).await {
            Ok(Ok(s)) => {
                self.stats.ssl_handshake.fetch_add(1, Relaxed);
                Some(Either::Right(Box::new(s)))
            }
            Ok(Err(e)) => {
                // Envoy counts a certificate it refused apart from other
                // failed handshakes.
                let counter = match crate::transport::refused_certificate(&e) {
                    Some(true) => &self.stats.ssl_fail_verify_san,
                    Some(false) => &self.stats.ssl_fail_verify_error,
                    None => &self.stats.ssl_connection_error,
                };
                counter.fetch_add(1, Relaxed);
                self.stats.upstream_cx_connect_fail.fetch_add(1, Relaxed);
                None
            }
            Err(_) => {
                self.stats.upstream_cx_connect_fail.fetch_add(1, Relaxed);
                None
            }
        }
    }

    pub(crate) fn missing(name: &str) -> Cluster {
        Cluster {
            name: name.to_owned(),
            kind: ClusterKind::Missing,
            endpoints: ArcSwap::from_pointee(vec![]),
            lb: Lb::RoundRobin,
            next: AtomicUsize::new(0),
            connect_timeout: Duration::from_secs(1),
            h2: false,
            h2_if_downstream: false,
            h2_streams: H2_STREAMS,
            limits: Limits::default(),
            keepalive: None,
            max_connections: 0,
            max_pending: 0,
            max_requests: 0,
            max_retries: 0,
            retries: AtomicU64::new(0),
            conns: tokio::sync::Semaphore::new(0),
            pending: AtomicUsize::new(0),
            outlier: None,
            health: Vec::new(),
            panic_threshold: 50.0,
            stats: ClusterStats::default(),
            tls: None,
            tls_matches: Vec::new(),
            ep_transport: Default::default(),
        }
    }
}

/// A cluster's endpoints (its own, or its EDS resource's), and the
/// transport socket match each one takes, if any.
fn endpoints_of(
    c: &bootstrap::Cluster,
    dynamic: &crate::xds::Resources,
) -> Result<(Vec<SocketAddr>, HashMap<SocketAddr, usize>)> {
    let (assignment, dns) = match c.type_.as_deref().unwrap_or("STATIC") {
        "EDS" => {
            let e = c.eds_cluster_config.as_ref();
            let service = e
                .map(|e| e.service_name.as_str())
                .filter(|s| !s.is_empty())
                .unwrap_or(&c.name);
            (dynamic.endpoints.get(service), false)
        }
        "STRICT_DNS" | "LOGICAL_DNS" => (c.load_assignment.as_ref(), true),
        _ => (c.load_assignment.as_ref(), false),
    };
    let mut out = vec![];
    let mut transport = HashMap::new();
    let empty = BTreeMap::new();
    for l in assignment.iter().flat_map(|a| &a.endpoints) {
        for e in &l.lb_endpoints {
            let addrs =
                socket(&e.endpoint.address, dns).with_context(|| format!("cluster {}", c.name))?;
            let md = e
                .metadata
                .as_ref()
                .and_then(|m| m.filter_metadata.get(bootstrap::TRANSPORT_SOCKET_MATCH))
                .unwrap_or(&empty);
            let matched = c
                .transport_socket_matches
                .iter()
                .position(|m| m.match_.iter().all(|(k, v)| md.get(k) == Some(v)));
            if let Some(i) = matched {
                transport.extend(addrs.iter().map(|a| (*a, i)));
            }
            out.extend(addrs);
        }
    }
    Ok((out, transport))
}

fn compile_cluster(c: &bootstrap::Cluster, secrets: &crate::transport::Secrets) -> Result<Cluster> {
    let kind = match c.type_.as_deref().unwrap_or("STATIC") {
        "STATIC" | "STRICT_DNS" | "LOGICAL_DNS" => ClusterKind::Static,
        "EDS" => ClusterKind::Eds,
        "ORIGINAL_DST" => ClusterKind::OriginalDst,
        other => bail!(
            "type {other} is not implemented (STATIC, STRICT_DNS, LOGICAL_DNS, EDS, ORIGINAL_DST)"
        ),
    };
    if kind == ClusterKind::Eds && c.eds_cluster_config.is_none() {
        bail!("an EDS cluster needs eds_cluster_config");
    }
    let lb = match c.lb_policy.as_deref().unwrap_or("ROUND_ROBIN") {
        "ROUND_ROBIN" => Lb::RoundRobin,
        "RANDOM" => Lb::Random,
        "LEAST_REQUEST" => Lb::LeastRequest,
        "CLUSTER_PROVIDED" if kind == ClusterKind::OriginalDst => Lb::RoundRobin,
        "RING_HASH" | "MAGLEV" => Lb::Hash,
        other => bail!("lb_policy {other} is not implemented yet"),
    };
    let (mut h2, mut h2_if_downstream, mut limits) = (false, false, Limits::default());
    let mut h2_streams = H2_STREAMS;
    for (k, v) in &c.typed_extension_protocol_options {
        if k != "envoy.extensions.upstreams.http.v3.HttpProtocolOptions" {
            bail!("typed_extension_protocol_options {k} is not implemented");
        }
        let bootstrap::ProtocolOptions::Http(o) = v;
        let versions = match (&o.explicit_http_config, &o.use_downstream_protocol_config) {
            (Some(e), None) => {
                h2 = e.http2_protocol_options.is_some();
                e
            }
            (None, Some(d)) => {
                if d.http_protocol_options.is_none() {
                    bail!("use_downstream_protocol_config without http_protocol_options is not implemented");
                }
                h2_if_downstream = d.http2_protocol_options.is_some();
                d
            }
            _ => bail!("HttpProtocolOptions needs one of explicit_http_config, use_downstream_protocol_config"),
        };
        if let Some(n) = versions
            .http2_protocol_options
            .as_ref()
            .and_then(|o| o.max_concurrent_streams)
        {
            h2_streams = usize::try_from(n.max(1)).unwrap_or(H2_STREAMS);
        }
        if let Some(o) = &o.common_http_protocol_options {
            limits = Limits {
                max_requests: o.max_requests_per_connection.unwrap_or(0),
                idle_ms: dur("idle_timeout", &o.idle_timeout)?
                    // 0 turns Envoy's idle timeout off.
                    .map(|d| if d.is_zero() { u64::MAX } else { millis(d) })
                    .unwrap_or(limits.idle_ms),
                max_ms: dur("max_connection_duration", &o.max_connection_duration)?
                    .filter(|d| !d.is_zero())
                    .map(millis),
            };
        }
    }
    let keepalive = c
        .upstream_connection_options
        .as_ref()
        .and_then(|o| o.tcp_keepalive.as_ref())
        .map(|k| {
            let mut t = socket2::TcpKeepalive::new();
            if let Some(s) = k.keepalive_time {
                t = t.with_time(Duration::from_secs(s.into()));
            }
            if let Some(s) = k.keepalive_interval {
                t = t.with_interval(Duration::from_secs(s.into()));
            }
            if let Some(n) = k.keepalive_probes {
                t = t.with_retries(n);
            }
            t
        });
    let t = c
        .circuit_breakers
        .as_ref()
        .and_then(|cb| cb.thresholds.first().cloned())
        .unwrap_or_default();
    let outlier = match &c.outlier_detection {
        None => None,
        Some(o) => {
            if o.enforcing_success_rate.unwrap_or(0) != 0
                || (o.split_external_local_origin_errors
                    && o.enforcing_local_origin_success_rate.unwrap_or(0) != 0)
            {
                bail!("outlier_detection: success-rate ejection is not implemented; set enforcing_success_rate and enforcing_local_origin_success_rate to 0");
            }
            let enforced = |n: Option<u32>, enforcing: Option<u32>| match enforcing.unwrap_or(100) {
                0 => Ok(0),
                100 => Ok(n.unwrap_or(5)),
                other => bail!(
                    "outlier_detection: enforcing percentage {other} is not implemented (0 or 100)"
                ),
            };
            let base = dur("base_ejection_time", &o.base_ejection_time)?
                .unwrap_or(Duration::from_secs(30));
            Some(
                crate::outlier::Outlier::new(
                    enforced(o.consecutive_5xx, o.enforcing_consecutive_5xx)?,
                    // Envoy enforces gateway failures only when asked.
                    enforced(
                        o.consecutive_gateway_failure,
                        o.enforcing_consecutive_gateway_failure.or(Some(0)),
                    )?,
                    base,
                    // Envoy's default is 300 s, or the base if longer.
                    dur("max_ejection_time", &o.max_ejection_time)?
                        .unwrap_or(Duration::from_secs(300))
                        .max(base),
                    o.max_ejection_percent.unwrap_or(10).min(100),
                )
                .split_local_origin(if o.split_external_local_origin_errors {
                    Some(enforced(
                        o.consecutive_local_origin_failure,
                        o.enforcing_consecutive_local_origin_failure,
                    )?)
                } else {
                    None
                }),
            )
        }
    };
    // Every check must pass for an endpoint to be used, as in Envoy.
    let health = c
        .health_checks
        .iter()
        .map(|h| {
            let probe = match (&h.http_health_check, &h.tcp_health_check) {
                (Some(http), None) => crate::health::Probe::Http {
                    path: http.path.clone(),
                    host: http.host.clone().unwrap_or_else(|| c.name.clone()),
                },
                (None, Some(_)) => crate::health::Probe::Tcp,
                _ => bail!("a health check needs one of http_health_check, tcp_health_check"),
            };
            let d = |what: &str, v: &String| {
                bootstrap::duration(v)
                    .ok_or_else(|| anyhow!("health check {what}: bad duration {v:?}"))
            };
            Ok(crate::health::Health::new(
                probe,
                d("interval", &h.interval)?.max(Duration::from_millis(10)),
                d("timeout", &h.timeout)?,
                h.unhealthy_threshold,
                h.healthy_threshold,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let max_connections = t.max_connections.unwrap_or(1024) as usize;
    Ok(Cluster {
        name: c.name.clone(),
        kind,
        endpoints: ArcSwap::from_pointee(vec![]),
        lb,
        next: AtomicUsize::new(0),
        connect_timeout: dur("connect_timeout", &c.connect_timeout)?
            .unwrap_or(Duration::from_secs(5)),
        h2,
        h2_if_downstream,
        h2_streams,
        limits,
        keepalive,
        max_connections,
        max_pending: t.max_pending_requests.unwrap_or(1024) as usize,
        max_requests: t.max_requests.unwrap_or(1024) as usize,
        max_retries: u64::from(t.max_retries.unwrap_or(3)),
        retries: AtomicU64::new(0),
        conns: tokio::sync::Semaphore::new(max_connections),
        pending: AtomicUsize::new(0),
        outlier,
        health,
        panic_threshold: c
            .common_lb_config
            .as_ref()
            .and_then(|l| l.healthy_panic_threshold.as_ref())
            .map(|p| p.value.clamp(0.0, 100.0))
            .unwrap_or(50.0),
        stats: ClusterStats::default(),
        tls: upstream_tls(c.transport_socket.as_ref(), secrets).context("transport_socket")?,
        tls_matches: c
            .transport_socket_matches
            .iter()
            .map(|m| {
                upstream_tls(Some(&m.transport_socket), secrets)
                    .with_context(|| format!("transport_socket_matches {:?}", m.name))
            })
            .collect::<Result<_>>()?,
        ep_transport: Default::default(),
    })
}

/// A cluster's transport socket: TLS, or plain (none, or `raw_buffer`).
fn upstream_tls(
    t: Option<&bootstrap::TransportSocket>,
    secrets: &crate::transport::Secrets,
) -> Result<Option<crate::transport::Upstream>> {
    match t.map(|t| &t.typed_config) {
        None | Some(bootstrap::TransportSocketConfig::RawBuffer(_)) => Ok(None),
        Some(bootstrap::TransportSocketConfig::Upstream(u)) => {
            Ok(Some(crate::transport::upstream(u, secrets)?))
        }
        Some(bootstrap::TransportSocketConfig::Downstream(_)) => {
            bail!("a cluster takes an UpstreamTlsContext, not a DownstreamTlsContext")
        }
    }
}

type Resolve<'a> = dyn Fn(&str, &str) -> Result<Arc<Cluster>> + 'a;

fn compile_table(rc: &bootstrap::RouteConfiguration, cluster: &Resolve) -> Result<RouteTable> {
    let mut vhosts = vec![];
    for vh in &rc.virtual_hosts {
        let mut routes = vec![];
        for r in &vh.routes {
            let from = format!("route in virtual host {}", vh.name);
            routes.push(compile_route(r, cluster).with_context(|| from.clone())?);
        }
        let require_tls = match vh.require_tls.as_deref().unwrap_or("NONE") {
            "NONE" => false,
            "ALL" => true,
            other => bail!(
                "virtual host {}: require_tls {other} is not implemented (NONE, ALL)",
                vh.name
            ),
        };
        vhosts.push(VirtualHost {
            domains: vh.domains.iter().map(|d| d.to_ascii_lowercase()).collect(),
            routes,
            require_tls,
        });
    }
    Ok(RouteTable { vhosts })
}

fn compile_chain(
    chain: &bootstrap::FilterChain,
    cluster: &Resolve,
    outbound: bool,
    secrets: &crate::transport::Secrets,
) -> Result<Chain> {
    let [filter] = chain.filters.as_slice() else {
        bail!("mast proxy implements one network filter per chain");
    };
    let net = match &filter.typed_config {
        bootstrap::NetworkFilter::TcpProxy(t) => {
            let mut targets = vec![];
            if let Some(c) = &t.cluster {
                targets.push((cluster(c, "tcp_proxy")?, 1));
            }
            for w in t.weighted_clusters.iter().flat_map(|w| &w.clusters) {
                if w.weight > 0 {
                    targets.push((cluster(&w.name, "tcp_proxy")?, w.weight));
                }
            }
            if targets.is_empty() {
                bail!("a tcp_proxy needs cluster or weighted_clusters");
            }
            Network::Tcp {
                stat_prefix: t.stat_prefix.clone(),
                total: targets.iter().map(|(_, w)| w).sum(),
                targets,
                outbound,
            }
        }
        bootstrap::NetworkFilter::HttpConnectionManager(h) => {
            let (mut faults, mut cors, mut router) = (false, false, false);
            for f in &h.http_filters {
                match (&f.typed_config, f.name.as_str()) {
                    (Some(bootstrap::HttpFilterConfig::Router(_)), _)
                    | (None, "envoy.filters.http.router") => router = true,
                    (Some(bootstrap::HttpFilterConfig::Fault(_)), _) => faults = true,
                    (Some(bootstrap::HttpFilterConfig::Cors(_)), _) => cors = true,
                    (None, other) => bail!("http filter {other} needs a typed_config"),
                }
            }
            if !router {
                bail!("an http_connection_manager needs the router filter");
            }
            let http1_only = match h.codec_type.as_deref().unwrap_or("AUTO") {
                "AUTO" | "HTTP2" => false,
                "HTTP1" => true,
                other => bail!("codec_type {other} is not implemented"),
            };
            let routes = match (&h.route_config, &h.rds) {
                (Some(rc), None) => Routes::Inline(Arc::new(compile_table(rc, cluster)?)),
                (None, Some(rds)) => Routes::Rds(rds.route_config_name.clone()),
                _ => bail!("an http_connection_manager needs route_config or rds"),
            };
            if h.access_log.len() > 1 {
                bail!("mast proxy implements one access_log");
            }
            Network::Http(Arc::new(HttpListener {
                access_log: h
                    .access_log
                    .first()
                    .map(|a| matches!(a.typed_config, bootstrap::AccessLogConfig::Stdout(_))),
                stat_prefix: h.stat_prefix.clone(),
                http1_only,
                routes,
                faults,
                cors,
                outbound,
                upgrades: h
                    .upgrade_configs
                    .iter()
                    .filter(|u| u.enabled != Some(false))
                    .map(|u| match u.upgrade_type.to_ascii_lowercase().as_str() {
                        "websocket" => Ok("websocket".to_owned()),
                        "connect" => Ok("connect".to_owned()),
                        other => {
                            bail!("upgrade_type {other} is not implemented (websocket, CONNECT)")
                        }
                    })
                    .collect::<Result<_>>()?,
                headers_timeout: match dur("request_headers_timeout", &h.request_headers_timeout)? {
                    Some(d) if !d.is_zero() => d,
                    _ => Duration::from_secs(30),
                },
            }))
        }
    };
    let m = chain.filter_chain_match.clone().unwrap_or_default();
    let tls = match chain.transport_socket.as_ref().map(|t| &t.typed_config) {
        None | Some(bootstrap::TransportSocketConfig::RawBuffer(_)) => None,
        Some(bootstrap::TransportSocketConfig::Downstream(d)) => {
            Some(crate::transport::downstream(d, secrets).context("transport_socket")?)
        }
        Some(bootstrap::TransportSocketConfig::Upstream(_)) => {
            bail!("transport_socket: a filter chain takes a DownstreamTlsContext, not an UpstreamTlsContext")
        }
    };
    Ok(Chain {
        tls,
        name: chain.name.clone(),
        m: ChainMatch {
            destination_port: m.destination_port,
            server_names: m.server_names,
            transport_protocol: m.transport_protocol,
        },
        net,
    })
}

fn compile_listener(
    l: &bootstrap::Listener,
    cluster: &Resolve,
    stats: Arc<ListenerStats>,
    secrets: &crate::transport::Secrets,
) -> Result<Listener> {
    let address = *socket(&l.address, false)?
        .first()
        .ok_or_else(|| anyhow!("no address"))?;
    let outbound = match l.traffic_direction.as_deref().unwrap_or("UNSPECIFIED") {
        "INBOUND" => false,
        "OUTBOUND" | "UNSPECIFIED" => true,
        other => bail!("traffic_direction {other}: INBOUND, OUTBOUND or UNSPECIFIED"),
    };
    let mut chains = vec![];
    for c in &l.filter_chains {
        chains.push(
            compile_chain(c, cluster, outbound, secrets)
                .with_context(|| format!("filter chain {:?}", c.name))?,
        );
    }
    let default_chain = l
        .default_filter_chain
        .as_ref()
        .map(|c| compile_chain(c, cluster, outbound, secrets))
        .transpose()?;
    if chains.is_empty() && default_chain.is_none() {
        bail!("a listener needs a filter chain");
    }
    let (mut original_dst, mut tls_inspector) = (false, false);
    for f in &l.listener_filters {
        match f.typed_config {
            bootstrap::ListenerFilterConfig::OriginalDst(_) => original_dst = true,
            bootstrap::ListenerFilterConfig::TlsInspector(_) => tls_inspector = true,
        }
    }
    let needs_tls = chains
        .iter()
        .any(|c| !c.m.server_names.is_empty() || c.m.transport_protocol.is_some());
    if needs_tls && !tls_inspector {
        bail!("filter chains match server_names or transport_protocol, which needs the tls_inspector listener filter");
    }
    Ok(Listener {
        name: l.name.clone(),
        address,
        bind: l.bind_to_port.unwrap_or(true),
        use_original_dst: l.use_original_dst.unwrap_or(false),
        original_dst,
        tls_inspector,
        chains,
        default_chain,
        stats,
    })
}

fn compile_route(r: &bootstrap::Route, cluster: &Resolve) -> Result<Route> {
    let m = &r.match_;
    let path = if let Some(p) = &m.prefix {
        PathMatch::Prefix(p.clone())
    } else if let Some(p) = &m.path {
        PathMatch::Exact(p.clone())
    } else if let Some(re) = &m.safe_regex {
        PathMatch::Regex(regex(&re.regex)?)
    } else if m.connect_matcher.is_some() {
        PathMatch::Connect
    } else {
        bail!("a match needs prefix, path, safe_regex or connect_matcher");
    };
    let mut headers = vec![];
    for h in &m.headers {
        let name = http::HeaderName::from_bytes(h.name.to_ascii_lowercase().as_bytes())
            .map_err(|_| anyhow!("bad header name {:?}", h.name))?;
        let sm = match (&h.string_match, h.present_match) {
            (Some(s), _) => string_match(s)?,
            (None, Some(true)) | (None, None) => StringMatch::Present,
            (None, Some(false)) => bail!("present_match: false is not implemented"),
        };
        headers.push(HeaderMatch {
            name,
            m: sm,
            invert: h.invert_match,
        });
    }
    let action = if let Some(d) = &r.direct_response {
        let body = match &d.body {
            Some(b) => crate::transport::data(b, "direct_response body")?,
            None => vec![],
        };
        let len = body.len();
        if len > 4096 {
            bail!("the direct_response body is {len} bytes, over Envoy's limit of 4096 (max_direct_response_body_size_bytes)");
        }
        Action::Direct {
            status: d.status,
            body: Bytes::from(body),
        }
    } else if let Some(rd) = &r.redirect {
        let status = match rd.response_code.as_deref().unwrap_or("MOVED_PERMANENTLY") {
            "MOVED_PERMANENTLY" => 301,
            "FOUND" => 302,
            "SEE_OTHER" => 303,
            "TEMPORARY_REDIRECT" => 307,
            "PERMANENT_REDIRECT" => 308,
            other => bail!("redirect response_code {other}"),
        };
        Action::Redirect {
            location: format!(
                "{}{}",
                rd.host_redirect
                    .as_deref()
                    .map(|h| format!("http://{h}"))
                    .unwrap_or_default(),
                rd.path_redirect.clone().unwrap_or_default()
            ),
            status,
        }
    } else if let Some(a) = &r.route {
        let mut targets = vec![];
        if let Some(c) = &a.cluster {
            targets.push((cluster(c, "the route")?, 1));
        }
        for w in a.weighted_clusters.iter().flat_map(|w| &w.clusters) {
            let weight = w.weight.unwrap_or(0);
            if weight > 0 {
                targets.push((cluster(&w.name, "the route")?, weight));
            }
        }
        if targets.is_empty() {
            bail!("a route needs cluster or weighted_clusters");
        }
        Action::Forward(Forward {
            connect_terminate: a.upgrade_configs.iter().any(|u| {
                u.upgrade_type.eq_ignore_ascii_case("connect")
                    && u.enabled != Some(false)
                    && u.connect_config.is_some()
            }),
            total: targets.iter().map(|(_, w)| w).sum(),
            targets,
            // Envoy's default route timeout is 15 s; 0 means none.
            timeout: match dur("timeout", &a.timeout)? {
                None => Some(Duration::from_secs(15)),
                Some(d) if d.is_zero() => None,
                Some(d) => Some(d),
            },
            prefix_rewrite: a.prefix_rewrite.clone(),
            host_rewrite: a
                .host_rewrite_literal
                .as_deref()
                .map(|h| {
                    h.parse()
                        .map_err(|_| anyhow!("bad host_rewrite_literal {h:?}"))
                })
                .transpose()?,
            retry: Box::new(
                a.retry_policy
                    .as_ref()
                    .map(crate::retry::Retry::compile)
                    .transpose()?
                    .unwrap_or_default(),
            ),
            hash: a
                .hash_policy
                .iter()
                .map(|h| -> Result<HashOn> {
                    if h.terminal == Some(true) {
                        bail!("hash_policy.terminal is not implemented");
                    }
                    Ok(match (&h.header, &h.cookie, &h.connection_properties, &h.query_parameter) {
                        (Some(hd), None, None, None) => HashOn::Header(header_name(&hd.header_name)?),
                        (None, Some(c), None, None) => HashOn::Cookie {
                            name: c.name.clone(),
                            ttl: dur("cookie ttl", &c.ttl)?,
                            path: c.path.clone().filter(|p| !p.is_empty()),
                        },
                        (None, None, Some(cp), None) if cp.source_ip => HashOn::SourceIp,
                        (None, None, None, Some(q)) => HashOn::Query(q.name.clone()),
                        _ => bail!("a hash_policy needs exactly one of header, cookie, connection_properties.source_ip, query_parameter"),
                    })
                })
                .collect::<Result<_>>()?,
            mirrors: a
                .request_mirror_policies
                .iter()
                .map(|m| {
                    Ok((
                        cluster(&m.cluster, "the route")?,
                        percent(&m.runtime_fraction.as_ref().map(|f| f.default_value.clone()))?,
                    ))
                })
                .collect::<Result<_>>()?,
        })
    } else {
        bail!("a route needs route, direct_response or redirect");
    };
    if let Some(u) = r
        .route
        .iter()
        .flat_map(|a| &a.upgrade_configs)
        .find(|u| !u.upgrade_type.eq_ignore_ascii_case("connect"))
    {
        bail!(
            "route upgrade_configs {} is not implemented (CONNECT)",
            u.upgrade_type
        );
    }
    let mut query = vec![];
    for q in &m.query_parameters {
        let sm = match (&q.string_match, q.present_match) {
            (Some(s), _) => string_match(s)?,
            (None, _) => StringMatch::Present,
        };
        query.push((q.name.clone(), sm));
    }
    let (mut fault, mut cors) = (None, None);
    for c in r.typed_per_filter_config.values() {
        match c {
            bootstrap::PerFilterConfig::Fault(f) => {
                fault = Some(Fault {
                    delay: f
                        .delay
                        .as_ref()
                        .map(|d| -> Result<_> {
                            Ok((
                                bootstrap::duration(&d.fixed_delay).ok_or_else(|| {
                                    anyhow!("fault delay: bad duration {:?}", d.fixed_delay)
                                })?,
                                percent(&d.percentage)?,
                            ))
                        })
                        .transpose()?,
                    abort: f
                        .abort
                        .as_ref()
                        .map(|a| -> Result<_> { Ok((a.http_status, percent(&a.percentage)?)) })
                        .transpose()?,
                })
            }
            bootstrap::PerFilterConfig::Cors(p) => {
                let v = |s: &Option<String>| {
                    s.as_deref()
                        .filter(|s| !s.is_empty())
                        .map(header_value)
                        .transpose()
                };
                cors = Some(Cors {
                    origins: p
                        .allow_origin_string_match
                        .iter()
                        .map(string_match)
                        .collect::<Result<_>>()?,
                    allow_methods: v(&p.allow_methods)?,
                    allow_headers: v(&p.allow_headers)?,
                    expose_headers: v(&p.expose_headers)?,
                    max_age: v(&p.max_age)?,
                    allow_credentials: p.allow_credentials.unwrap_or(false),
                })
            }
        }
    }
    Ok(Route {
        path,
        case_sensitive: m.case_sensitive.unwrap_or(true),
        headers,
        query,
        action,
        request_headers: header_ops(&r.request_headers_to_add, &r.request_headers_to_remove)?,
        response_headers: header_ops(&r.response_headers_to_add, &r.response_headers_to_remove)?,
        fault,
        cors,
    })
}
