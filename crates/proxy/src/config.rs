//! The bootstrap compiled into what the data plane runs: clusters with
//! their endpoints and counters, listeners with compiled routes. Every
//! reference is checked here, so a route naming a missing cluster stops
//! the proxy at start-up with that name.

use crate::bootstrap::{self, Bootstrap};
use crate::stats::ClusterStats;
use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Lb {
    RoundRobin,
    Random,
    LeastRequest,
}

#[derive(Debug)]
pub struct Cluster {
    pub name: String,
    pub endpoints: Vec<SocketAddr>,
    pub lb: Lb,
    pub next: AtomicUsize,
    pub connect_timeout: Duration,
    /// Upstream HTTP/2 (explicit `http2_protocol_options`).
    pub h2: bool,
    pub max_connections: usize,
    pub max_requests: usize,
    pub stats: ClusterStats,
}

#[derive(Debug)]
pub enum PathMatch {
    Prefix(String),
    Exact(String),
    Regex(regex::Regex),
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

#[derive(Debug)]
pub struct Forward {
    /// Clusters with their weights (relative).
    pub targets: Vec<(Arc<Cluster>, u32)>,
    pub total: u32,
    pub timeout: Option<Duration>,
    pub prefix_rewrite: Option<String>,
    pub host_rewrite: Option<http::HeaderValue>,
    pub retries: u32,
    /// `retry_on`: 5xx, gateway-error, connect-failure, reset...
    pub retry_on: Vec<String>,
    pub per_try_timeout: Option<Duration>,
}

#[derive(Debug)]
pub enum Action {
    Forward(Forward),
    Direct { status: u16, body: Bytes },
    Redirect { location: String, status: u16 },
}

#[derive(Debug)]
pub struct Route {
    pub path: PathMatch,
    pub case_sensitive: bool,
    pub headers: Vec<HeaderMatch>,
    pub action: Action,
}

#[derive(Debug)]
pub struct VirtualHost {
    pub domains: Vec<String>,
    pub routes: Vec<Route>,
}

#[derive(Debug)]
pub struct HttpListener {
    pub stat_prefix: String,
    /// Where access logs go: `Some(true)` standard output, `Some(false)`
    /// standard error.
    pub access_log: Option<bool>,
    pub http1_only: bool,
    pub vhosts: Vec<VirtualHost>,
}

#[derive(Debug)]
pub enum ListenerKind {
    Http(HttpListener),
    Tcp {
        stat_prefix: String,
        cluster: Arc<Cluster>,
    },
}

#[derive(Debug)]
pub struct Listener {
    pub name: String,
    pub address: SocketAddr,
    pub kind: ListenerKind,
}

#[derive(Debug)]
pub struct Config {
    pub admin: Option<SocketAddr>,
    pub clusters: HashMap<String, Arc<Cluster>>,
    pub listeners: Vec<Arc<Listener>>,
    /// The bootstrap's text, for `/config_dump`.
    pub raw: String,
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

fn string_match(m: &bootstrap::StringMatcher) -> Result<StringMatch> {
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

impl Config {
    pub fn compile(b: &Bootstrap, raw: String) -> Result<Config> {
        let mut clusters = HashMap::new();
        for c in &b.static_resources.clusters {
            let ty = c.type_.as_deref().unwrap_or("STATIC");
            let dns = match ty {
                "STATIC" => false,
                "STRICT_DNS" | "LOGICAL_DNS" => true,
                other => bail!(
                    "cluster {}: type {other} is not implemented (STATIC, STRICT_DNS, LOGICAL_DNS)",
                    c.name
                ),
            };
            let mut endpoints = vec![];
            for l in c.load_assignment.iter().flat_map(|a| &a.endpoints) {
                for e in &l.lb_endpoints {
                    endpoints.extend(
                        socket(&e.endpoint.address, dns)
                            .with_context(|| format!("cluster {}", c.name))?,
                    );
                }
            }
            let lb = match c.lb_policy.as_deref().unwrap_or("ROUND_ROBIN") {
                "ROUND_ROBIN" => Lb::RoundRobin,
                "RANDOM" => Lb::Random,
                "LEAST_REQUEST" => Lb::LeastRequest,
                other => bail!(
                    "cluster {}: lb_policy {other} is not implemented yet",
                    c.name
                ),
            };
            let mut h2 = false;
            for (k, v) in &c.typed_extension_protocol_options {
                if k != "envoy.extensions.upstreams.http.v3.HttpProtocolOptions" {
                    bail!(
                        "cluster {}: typed_extension_protocol_options {k} is not implemented",
                        c.name
                    );
                }
                let bootstrap::ProtocolOptions::Http(o) = v;
                h2 = o.explicit_http_config.http2_protocol_options.is_some();
            }
            let t = c
                .circuit_breakers
                .as_ref()
                .and_then(|cb| cb.thresholds.first().cloned())
                .unwrap_or_default();
            clusters.insert(
                c.name.clone(),
                Arc::new(Cluster {
                    name: c.name.clone(),
                    endpoints,
                    lb,
                    next: AtomicUsize::new(0),
                    connect_timeout: dur("connect_timeout", &c.connect_timeout)?
                        .unwrap_or(Duration::from_secs(5)),
                    h2,
                    max_connections: t.max_connections.unwrap_or(1024) as usize,
                    max_requests: t.max_requests.unwrap_or(1024) as usize,
                    stats: ClusterStats::default(),
                }),
            );
        }
        let cluster = |name: &str, from: &str| -> Result<Arc<Cluster>> {
            clusters
                .get(name)
                .cloned()
                .ok_or_else(|| anyhow!("{from} names cluster {name:?}, which static_resources.clusters does not define"))
        };
        let mut listeners = vec![];
        for l in &b.static_resources.listeners {
            let address = *socket(&l.address, false)?
                .first()
                .ok_or_else(|| anyhow!("listener {}: no address", l.name))?;
            let [chain] = l.filter_chains.as_slice() else {
                bail!(
                    "listener {}: mast proxy implements one filter chain per listener",
                    l.name
                );
            };
            let [filter] = chain.filters.as_slice() else {
                bail!(
                    "listener {}: mast proxy implements one network filter per chain",
                    l.name
                );
            };
            let kind = match &filter.typed_config {
                bootstrap::NetworkFilter::TcpProxy(t) => ListenerKind::Tcp {
                    stat_prefix: t.stat_prefix.clone(),
                    cluster: cluster(&t.cluster, &format!("listener {}", l.name))?,
                },
                bootstrap::NetworkFilter::HttpConnectionManager(h) => {
                    for f in &h.http_filters {
                        if f.name != "envoy.filters.http.router" {
                            bail!("listener {}: http filter {} is not implemented (only envoy.filters.http.router)", l.name, f.name);
                        }
                    }
                    let http1_only = match h.codec_type.as_deref().unwrap_or("AUTO") {
                        "AUTO" | "HTTP2" => false,
                        "HTTP1" => true,
                        other => bail!("codec_type {other} is not implemented"),
                    };
                    let mut vhosts = vec![];
                    for vh in &h.route_config.virtual_hosts {
                        let mut routes = vec![];
                        for r in &vh.routes {
                            let from = format!("route in virtual host {}", vh.name);
                            routes.push(compile_route(r, &from, &cluster)?);
                        }
                        vhosts.push(VirtualHost {
                            domains: vh.domains.iter().map(|d| d.to_ascii_lowercase()).collect(),
                            routes,
                        });
                    }
                    if h.access_log.len() > 1 {
                        bail!("listener {}: mast proxy implements one access_log", l.name);
                    }
                    ListenerKind::Http(HttpListener {
                        access_log: h.access_log.first().map(|a| {
                            matches!(a.typed_config, bootstrap::AccessLogConfig::Stdout(_))
                        }),
                        stat_prefix: h.stat_prefix.clone(),
                        http1_only,
                        vhosts,
                    })
                }
            };
            listeners.push(Arc::new(Listener {
                name: l.name.clone(),
                address,
                kind,
            }));
        }
        let admin = match &b.admin {
            Some(a) => socket(&a.address, false)?.first().copied(),
            None => None,
        };
        Ok(Config {
            admin,
            clusters,
            listeners,
            raw,
        })
    }
}

fn compile_route(
    r: &bootstrap::Route,
    from: &str,
    cluster: &dyn Fn(&str, &str) -> Result<Arc<Cluster>>,
) -> Result<Route> {
    let m = &r.match_;
    let path = if let Some(p) = &m.prefix {
        PathMatch::Prefix(p.clone())
    } else if let Some(p) = &m.path {
        PathMatch::Exact(p.clone())
    } else if let Some(re) = &m.safe_regex {
        PathMatch::Regex(regex(&re.regex)?)
    } else {
        bail!("{from}: a match needs prefix, path or safe_regex");
    };
    let mut headers = vec![];
    for h in &m.headers {
        let name = http::HeaderName::from_bytes(h.name.to_ascii_lowercase().as_bytes())
            .map_err(|_| anyhow!("{from}: bad header name {:?}", h.name))?;
        let sm = match (&h.string_match, h.present_match) {
            (Some(s), _) => string_match(s)?,
            (None, Some(true)) | (None, None) => StringMatch::Present,
            (None, Some(false)) => bail!("{from}: present_match: false is not implemented"),
        };
        headers.push(HeaderMatch {
            name,
            m: sm,
            invert: h.invert_match,
        });
    }
    let action = if let Some(d) = &r.direct_response {
        Action::Direct {
            status: d.status,
            body: Bytes::from(
                d.body
                    .as_ref()
                    .map(|b| b.inline_string.clone())
                    .unwrap_or_default(),
            ),
        }
    } else if let Some(rd) = &r.redirect {
        let status = match rd.response_code.as_deref().unwrap_or("MOVED_PERMANENTLY") {
            "MOVED_PERMANENTLY" => 301,
            "FOUND" => 302,
            "SEE_OTHER" => 303,
            "TEMPORARY_REDIRECT" => 307,
            "PERMANENT_REDIRECT" => 308,
            other => bail!("{from}: redirect response_code {other}"),
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
            targets.push((cluster(c, from)?, 1));
        }
        for w in a.weighted_clusters.iter().flat_map(|w| &w.clusters) {
            let weight = w.weight.unwrap_or(0);
            if weight > 0 {
                targets.push((cluster(&w.name, from)?, weight));
            }
        }
        if targets.is_empty() {
            bail!("{from}: a route needs cluster or weighted_clusters");
        }
        let rp = a.retry_policy.as_ref();
        Action::Forward(Forward {
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
                        .map_err(|_| anyhow!("{from}: bad host_rewrite_literal {h:?}"))
                })
                .transpose()?,
            retries: rp.map(|p| p.num_retries.unwrap_or(1)).unwrap_or(0),
            retry_on: rp
                .map(|p| p.retry_on.split(',').map(|s| s.trim().to_owned()).collect())
                .unwrap_or_default(),
            per_try_timeout: dur(
                "per_try_timeout",
                &rp.and_then(|p| p.per_try_timeout.clone()),
            )?,
        })
    } else {
        bail!("{from}: a route needs route, direct_response or redirect");
    };
    Ok(Route {
        path,
        case_sensitive: m.case_sensitive.unwrap_or(true),
        headers,
        action,
    })
}
