//! The mesh as the control plane sees it: Services with their endpoints
//! (and the endpoints' pod labels, for subsets), and the Istio
//! configuration, rebuilt from the watch caches on every change.

use mast_api::istio::types::{DestinationRule, Gateway, ServiceEntry, VirtualService};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// A Service by namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    pub namespace: String,
    pub name: String,
    pub domain: String,
}

impl ServiceKey {
    /// `reviews.default.svc.cluster.local`.
    pub fn host(&self) -> String {
        format!("{}.{}.svc.{}", self.name, self.namespace, self.domain)
    }

    /// The Service a destination host names, as Istio reads it: a short
    /// name is in `ns`; `name.ns` and the full name are absolute.
    pub fn resolve(host: &str, ns: &str, domain: &str) -> ServiceKey {
        let host = host.trim_end_matches('.');
        let suffix = format!(".svc.{domain}");
        let parts: Vec<&str> = host.trim_end_matches(&suffix).split('.').collect();
        let (name, namespace) = match parts.as_slice() {
            [name] => (*name, ns),
            [name, namespace, ..] => (*name, *namespace),
            [] => ("", ns),
        };
        ServiceKey {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            domain: domain.to_owned(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServicePort {
    pub name: String,
    pub port: u16,
    pub protocol: String,
    pub app_protocol: Option<String>,
}

impl ServicePort {
    /// Whether the mesh treats the port as HTTP: Istio's protocol
    /// selection, by `appProtocol` or the port name's prefix
    /// (`http`, `http-web`, `grpc`, `http2`...). Other ports are TCP.
    pub fn is_http(&self) -> bool {
        self.protocol.eq_ignore_ascii_case("TCP")
            && matches!(
                self.selected().as_str(),
                "http" | "http2" | "grpc" | "grpc-web" | "h2c" | "kubernetes.io/h2c"
            )
    }

    /// Whether the port speaks HTTP/2 (`http2`, `grpc`, h2c), so that the
    /// proxies talk HTTP/2 to its endpoints, as Istio sets them to. (These
    /// are all HTTP ports too.)
    pub fn is_http2(&self) -> bool {
        self.protocol.eq_ignore_ascii_case("TCP")
            && matches!(
                self.selected().as_str(),
                "http2" | "grpc" | "h2c" | "kubernetes.io/h2c"
            )
    }

    /// The protocol the port selects: `appProtocol`, or the name's prefix.
    fn selected(&self) -> String {
        self.app_protocol
            .clone()
            .unwrap_or_else(|| self.name.split('-').next().unwrap_or("").to_owned())
            .to_ascii_lowercase()
    }
}

/// One ready endpoint: its address, its ports by name, its pod's labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    pub ip: IpAddr,
    pub ports: BTreeMap<String, u16>,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Service {
    /// None for headless Services.
    pub cluster_ip: Option<IpAddr>,
    pub ports: Vec<ServicePort>,
    pub endpoints: Vec<Endpoint>,
}

/// Everything configuration is generated from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Mesh {
    pub domain: String,
    pub services: BTreeMap<ServiceKey, Service>,
    /// (namespace, name) → spec.
    pub virtual_services: BTreeMap<(String, String), VirtualService>,
    pub destination_rules: BTreeMap<(String, String), DestinationRule>,
    pub gateways: BTreeMap<(String, String), Gateway>,
    pub service_entries: BTreeMap<(String, String), ServiceEntry>,
    /// TLS credentials from Kubernetes Secrets by (namespace, name), for
    /// Gateway servers' `credentialName`.
    pub credentials: BTreeMap<(String, String), Credential>,
}

/// A DestinationRule's policy for a subset and port, merged as Istio's
/// `MergeSubsetTrafficPolicy` merges it (see [`Mesh::policy`]).
fn merged(
    dr: &DestinationRule,
    subset: &str,
    port: Option<u16>,
) -> mast_api::istio::types::TrafficPolicy {
    use mast_api::istio::types::TrafficPolicy;
    let mut p = TrafficPolicy::default();
    let mut merge = |from: &TrafficPolicy| {
        let at_port = from.port_level_settings.iter().find(|pl| {
            port.is_some() && pl.port.as_ref().and_then(|s| s.number) == port.map(u32::from)
        });
        let sections = [(
            &from.load_balancer,
            &from.connection_pool,
            &from.outlier_detection,
            &from.tls,
        )]
        .into_iter()
        .chain(at_port.map(|pl| {
            (
                &pl.load_balancer,
                &pl.connection_pool,
                &pl.outlier_detection,
                &pl.tls,
            )
        }));
        for (lb, pool, od, tls) in sections {
            p.load_balancer = lb.clone().or(p.load_balancer.take());
            p.connection_pool = pool.clone().or(p.connection_pool.take());
            p.outlier_detection = od.clone().or(p.outlier_detection.take());
            p.tls = tls.clone().or(p.tls.take());
        }
    };
    if let Some(top) = &dr.traffic_policy {
        merge(top);
    }
    if let Some(sp) = dr
        .subsets
        .iter()
        .find(|s| s.name == subset)
        .and_then(|s| s.traffic_policy.as_ref())
    {
        merge(sp);
    }
    p
}

/// What a Secret holds for TLS, PEM: `tls.crt`, `tls.key` and `ca.crt`
/// (a `kubernetes.io/tls` Secret), or `cert`, `key` and `cacert` (a
/// generic one), as Istio reads them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Credential {
    pub cert: Option<Vec<u8>>,
    pub key: Option<Vec<u8>>,
    pub ca: Option<Vec<u8>>,
}

impl Credential {
    /// The credential in a Secret's data, if it holds one.
    pub fn from_data(data: &BTreeMap<String, Vec<u8>>) -> Option<Credential> {
        let get = |a: &str, b: &str| data.get(a).or_else(|| data.get(b)).cloned();
        let c = Credential {
            cert: get("tls.crt", "cert"),
            key: get("tls.key", "key"),
            ca: get("ca.crt", "cacert"),
        };
        (c.cert.is_some() && c.key.is_some() || c.ca.is_some()).then_some(c)
    }
}

impl Mesh {
    /// The DestinationRule for a Service: one in its own namespace first.
    fn rule_for(&self, key: &ServiceKey) -> Option<&DestinationRule> {
        let mut found = None;
        for ((ns, _), dr) in &self.destination_rules {
            if ServiceKey::resolve(&dr.host, ns, &self.domain) == *key {
                if *ns == key.namespace {
                    return Some(dr);
                }
                found.get_or_insert(dr);
            }
        }
        found
    }

    /// The subsets a DestinationRule gives a Service: name and labels.
    pub fn subsets(&self, key: &ServiceKey) -> Vec<(String, BTreeMap<String, String>)> {
        self.rule_for(key)
            .map(|dr| {
                dr.subsets
                    .iter()
                    .map(|s| (s.name.clone(), s.labels.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The traffic policy for a Service's subset (`""` for the whole
    /// Service): the subset's sections override the rule's, as in Istio.
    ///
    /// As Istio's `MergeSubsetTrafficPolicy`: the rule's policy, then its
    /// `portLevelSettings` for `port`, then the subset's policy, then the
    /// subset's `portLevelSettings` for `port`; each section that a later
    /// one sets replaces the earlier one whole.
    pub fn policy(
        &self,
        key: &ServiceKey,
        subset: &str,
        port: Option<u16>,
    ) -> mast_api::istio::types::TrafficPolicy {
        match self.rule_for(key) {
            Some(dr) => merged(dr, subset, port),
            None => Default::default(),
        }
    }

    /// The traffic policy for a ServiceEntry host's port: the
    /// DestinationRule whose `host` is that host, as written.
    pub fn external_policy(&self, host: &str, port: u16) -> mast_api::istio::types::TrafficPolicy {
        let host = host.trim_end_matches('.');
        self.destination_rules
            .values()
            .find(|dr| dr.host.trim_end_matches('.') == host)
            .map(|dr| merged(dr, "", Some(port)))
            .unwrap_or_default()
    }

    /// The `credentialName`s DestinationRules give for client TLS.
    pub fn client_credentials(&self) -> std::collections::BTreeSet<String> {
        use mast_api::istio::types::TrafficPolicy;
        let of = |p: &TrafficPolicy| {
            p.tls
                .iter()
                .chain(p.port_level_settings.iter().flat_map(|pl| &pl.tls))
                .filter_map(|t| t.credential_name.clone())
                .collect::<Vec<_>>()
        };
        self.destination_rules
            .values()
            .flat_map(|dr| {
                dr.traffic_policy
                    .iter()
                    .chain(dr.subsets.iter().flat_map(|s| &s.traffic_policy))
                    .flat_map(of)
            })
            .filter(|c| !c.is_empty())
            .collect()
    }

    /// The ready endpoints of a Service port whose pods carry `labels`.
    pub fn endpoints(
        &self,
        key: &ServiceKey,
        port_name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Vec<(IpAddr, u16)> {
        let Some(s) = self.services.get(key) else {
            return vec![];
        };
        s.endpoints
            .iter()
            .filter(|e| labels.iter().all(|(k, v)| e.labels.get(k) == Some(v)))
            .filter_map(|e| e.ports.get(port_name).map(|p| (e.ip, *p)))
            .collect()
    }

    /// The ServiceEntry that names `host`, if one does.
    pub fn external(&self, host: &str) -> Option<&ServiceEntry> {
        self.service_entries
            .values()
            .find(|se| se.hosts.iter().any(|h| h == host))
    }

    /// The Gateways whose selector matches a proxy's labels.
    pub fn gateways_for(
        &self,
        labels: &BTreeMap<String, String>,
    ) -> Vec<(&(String, String), &Gateway)> {
        self.gateways
            .iter()
            .filter(|(_, g)| {
                !g.selector.is_empty() && g.selector.iter().all(|(k, v)| labels.get(k) == Some(v))
            })
            .collect()
    }

    /// The VirtualService that routes a Service inside the mesh (bound to
    /// `mesh`, explicitly or by naming no gateway), if any; with its
    /// namespace. The first by namespace and name wins, as in Istio.
    pub fn mesh_route(&self, key: &ServiceKey) -> Option<(&str, &VirtualService)> {
        self.virtual_services
            .iter()
            .filter(|(_, vs)| vs.gateways.is_empty() || vs.gateways.iter().any(|g| g == "mesh"))
            .find(|((ns, _), vs)| {
                vs.hosts
                    .iter()
                    .any(|h| ServiceKey::resolve(h, ns, &self.domain) == *key)
            })
            .map(|((ns, _), vs)| (ns.as_str(), vs))
    }

    /// The Service ports a workload at `ip` serves: (target port, whether
    /// it is HTTP), from the endpoints that name it.
    pub fn inbound_ports(&self, ip: &str) -> BTreeMap<u16, bool> {
        let mut out = BTreeMap::new();
        for (target, p) in self.served(ip) {
            let http = out.entry(target).or_insert(true);
            *http &= p.is_http();
        }
        out
    }

    /// The workload ports at `ip` that every Service port on them says
    /// speak HTTP/2.
    pub fn inbound_http2(&self, ip: &str) -> BTreeSet<u16> {
        let mut h2 = BTreeMap::new();
        for (target, p) in self.served(ip) {
            *h2.entry(target).or_insert(true) &= p.is_http2();
        }
        h2.into_iter()
            .filter(|(_, h2)| *h2)
            .map(|(p, _)| p)
            .collect()
    }

    /// The workload ports at `ip` that Services point at, with each
    /// Service port.
    fn served<'a>(&'a self, ip: &'a str) -> impl Iterator<Item = (u16, &'a ServicePort)> + 'a {
        self.services.values().flat_map(move |s| {
            s.endpoints
                .iter()
                .filter(move |e| e.ip.to_string() == ip)
                .flat_map(move |e| {
                    s.ports
                        .iter()
                        .filter_map(move |p| Some((*e.ports.get(&p.name)?, p)))
                })
        })
    }

    /// The VirtualServices bound to the Gateway `ns/name`.
    pub fn bound_to(&self, gw: &(String, String)) -> Vec<(String, &VirtualService)> {
        self.virtual_services
            .iter()
            .filter(|((ns, _), vs)| {
                vs.gateways.iter().any(|g| match g.split_once('/') {
                    Some((gns, gname)) => gns == gw.0 && gname == gw.1,
                    None => *ns == gw.0 && *g == gw.1,
                })
            })
            .map(|((ns, _), vs)| (ns.clone(), vs))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_resolve_as_istio_reads_them() {
        let k = ServiceKey::resolve("reviews", "default", "cluster.local");
        assert_eq!(k.host(), "reviews.default.svc.cluster.local");
        let k = ServiceKey::resolve("reviews.shop", "default", "cluster.local");
        assert_eq!(k.host(), "reviews.shop.svc.cluster.local");
        let k = ServiceKey::resolve("reviews.shop.svc.cluster.local", "default", "cluster.local");
        assert_eq!((k.namespace.as_str(), k.name.as_str()), ("shop", "reviews"));
    }

    #[test]
    fn port_level_settings_merge_as_istio_merges_them() {
        let mut mesh = Mesh {
            domain: "cluster.local".into(),
            ..Default::default()
        };
        let rule = serde_json::from_value(serde_json::json!({
            "host": "reviews",
            "trafficPolicy": {
                "loadBalancer": {"simple": "ROUND_ROBIN"},
                "portLevelSettings": [{"port": {"number": 9080},
                    "loadBalancer": {"simple": "RANDOM"},
                    "connectionPool": {"tcp": {"maxConnections": 5}}}]
            },
            "subsets": [
                {"name": "v2", "labels": {"version": "v2"},
                 "trafficPolicy": {"loadBalancer": {"simple": "LEAST_REQUEST"}}},
                {"name": "v3", "labels": {"version": "v3"},
                 "trafficPolicy": {"portLevelSettings": [{"port": {"number": 9080},
                    "outlierDetection": {"consecutive5xxErrors": 2}}]}}
            ]
        }))
        .expect("DestinationRule");
        mesh.destination_rules
            .insert(("default".into(), "reviews".into()), rule);
        let key = ServiceKey::resolve("reviews", "default", "cluster.local");
        let summary = |subset: &str, port: Option<u16>| {
            let p = mesh.policy(&key, subset, port);
            (
                p.load_balancer.and_then(|l| l.simple).unwrap_or_default(),
                p.connection_pool
                    .and_then(|c| c.tcp)
                    .and_then(|t| t.max_connections),
                p.outlier_detection.is_some(),
            )
        };
        assert_eq!(summary("", Some(9080)), ("RANDOM".into(), Some(5), false));
        assert_eq!(summary("", Some(9090)), ("ROUND_ROBIN".into(), None, false));
        assert_eq!(summary("", None), ("ROUND_ROBIN".into(), None, false));
        // The subset's own sections win over the rule's port-level ones.
        assert_eq!(
            summary("v2", Some(9080)),
            ("LEAST_REQUEST".into(), Some(5), false)
        );
        assert_eq!(summary("v3", Some(9080)), ("RANDOM".into(), Some(5), true));
        assert_eq!(
            summary("v3", Some(9090)),
            ("ROUND_ROBIN".into(), None, false)
        );
    }
}
