//! The mesh as the control plane sees it: Services with their endpoints
//! (and the endpoints' pod labels, for subsets), and the Istio
//! configuration, rebuilt from the watch caches on every change.

use mast_api::istio::types::{
    DestinationRule, Gateway, PeerAuthentication, ServiceEntry, VirtualService,
};
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
    /// A TCP Service port named `name` (for tests).
    #[cfg(test)]
    pub(crate) fn named(name: &str, port: u16) -> ServicePort {
        ServicePort {
            name: name.into(),
            port,
            protocol: "TCP".into(),
            app_protocol: None,
        }
    }

    /// Whether the port carries the application's own TLS: `appProtocol`
    /// or the name's prefix `https` or `tls`.
    pub fn is_tls(&self) -> bool {
        let proto = self
            .app_protocol
            .clone()
            .unwrap_or_else(|| self.name.split('-').next().unwrap_or("").to_owned())
            .to_ascii_lowercase();
        proto == "https" || proto == "tls"
    }

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
    /// security.istio.io PeerAuthentications by (namespace, name).
    pub peer_authentications: BTreeMap<(String, String), PeerAuthentication>,
}

/// Istio's root namespace: a PeerAuthentication without a selector there
/// is the mesh's.
pub const ROOT_NAMESPACE: &str = "istio-system";

/// The label injection puts on a pod with a sidecar: its endpoints take
/// mutual TLS (Istio's auto mTLS).
pub const TLS_MODE_LABEL: &str = "security.istio.io/tlsMode";

/// What a workload's sidecar accepts on a port, by PeerAuthentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MtlsMode {
    /// Mutual TLS only.
    Strict,
    /// Mutual TLS and plain text (Istio's default).
    Permissive,
    /// Plain text only.
    Disable,
}

fn mtls_mode(m: Option<&mast_api::istio::types::MutualTls>) -> Option<MtlsMode> {
    match m?.mode.as_deref()? {
        "STRICT" => Some(MtlsMode::Strict),
        "PERMISSIVE" => Some(MtlsMode::Permissive),
        "DISABLE" => Some(MtlsMode::Disable),
        _ => None, // UNSET: the parent's.
    }
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

    /// The ready endpoints of a Service port whose pods carry `labels`:
    /// address, target port, and whether it takes mutual TLS.
    pub fn endpoints(
        &self,
        key: &ServiceKey,
        port: &ServicePort,
        labels: &BTreeMap<String, String>,
    ) -> Vec<(IpAddr, u16, bool)> {
        let Some(s) = self.services.get(key) else {
            return vec![];
        };
        s.endpoints
            .iter()
            .filter(|e| labels.iter().all(|(k, v)| e.labels.get(k) == Some(v)))
            .filter_map(|e| {
                let target = *e.ports.get(&port.name)?;
                Some((e.ip, target, self.takes_mtls(key, port, e)))
            })
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

    /// The mTLS mode of workload port `port` (the container's) of a pod
    /// in `ns` with `labels`, as Istio resolves PeerAuthentications: the
    /// workload's own (a selector that matches; its `portLevelMtls`
    /// first), else the namespace's (no selector), else the mesh's (no
    /// selector, in the root namespace), else PERMISSIVE; UNSET takes
    /// the parent's. Of several at one level, the first by name wins.
    pub fn mtls_mode(&self, ns: &str, labels: &BTreeMap<String, String>, port: u16) -> MtlsMode {
        let unselected = |in_ns: &str| {
            self.peer_authentications
                .iter()
                .find(|((n, _), pa)| {
                    n == in_ns
                        && pa
                            .selector
                            .as_ref()
                            .is_none_or(|s| s.match_labels.is_empty())
                })
                .and_then(|(_, pa)| mtls_mode(pa.mtls.as_ref()))
        };
        let workload = self
            .peer_authentications
            .iter()
            .find(|((n, _), pa)| {
                n == ns
                    && pa.selector.as_ref().is_some_and(|s| {
                        !s.match_labels.is_empty()
                            && s.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
                    })
            })
            .and_then(|(_, pa)| {
                mtls_mode(pa.port_level_mtls.get(&port.to_string()))
                    .or_else(|| mtls_mode(pa.mtls.as_ref()))
            });
        workload
            .or_else(|| unselected(ns))
            .or_else(|| unselected(ROOT_NAMESPACE))
            .unwrap_or(MtlsMode::Permissive)
    }

    /// Whether an endpoint of a Service takes mutual TLS on the Service
    /// port named `port_name` (Istio's auto mTLS): it has a sidecar (the
    /// injection label), the port is not the application's own TLS, and
    /// its PeerAuthentication is not DISABLE there.
    fn takes_mtls(&self, key: &ServiceKey, sp: &ServicePort, e: &Endpoint) -> bool {
        e.labels.get(TLS_MODE_LABEL).map(String::as_str) == Some("istio")
            && !sp.is_tls()
            && e.ports.get(&sp.name).is_none_or(|target| {
                self.mtls_mode(&key.namespace, &e.labels, *target) != MtlsMode::Disable
            })
    }

    /// Whether any endpoint of a Service's port (or subset) takes mutual
    /// TLS, so that its cluster needs Istio's transport socket matches.
    pub fn auto_mtls(&self, key: &ServiceKey, subset: &str, port: u16) -> bool {
        let Some(svc) = self.services.get(key) else {
            return false;
        };
        let Some(sp) = svc.ports.iter().find(|p| p.port == port) else {
            return false;
        };
        let wanted = self
            .subsets(key)
            .into_iter()
            .find(|(n, _)| n == subset)
            .map(|(_, l)| l)
            .unwrap_or_default();
        svc.endpoints
            .iter()
            .filter(|e| wanted.iter().all(|(k, v)| e.labels.get(k) == Some(v)))
            .any(|e| self.takes_mtls(key, sp, e))
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

    /// The workload ports at `ip` that a Service port names as TLS
    /// (`https`, `tls`): the application's own TLS, which the sidecar
    /// passes as it is.
    pub fn inbound_tls(&self, ip: &str) -> BTreeSet<u16> {
        self.served(ip)
            .filter(|(_, p)| p.is_tls())
            .map(|(t, _)| t)
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

    fn pa(v: serde_json::Value) -> PeerAuthentication {
        serde_json::from_value(v).expect("PeerAuthentication")
    }

    #[test]
    fn peer_authentication_resolves_as_istios() {
        let mut mesh = Mesh::default();
        let labels: BTreeMap<String, String> = [("app".to_string(), "ratings".to_string())].into();
        assert_eq!(
            mesh.mtls_mode("shop", &labels, 9080),
            MtlsMode::Permissive,
            "the default"
        );
        let key = |ns: &str, n: &str| (ns.to_string(), n.to_string());
        mesh.peer_authentications.insert(
            key(ROOT_NAMESPACE, "default"),
            pa(serde_json::json!({"mtls": {"mode": "STRICT"}})),
        );
        assert_eq!(
            mesh.mtls_mode("shop", &labels, 9080),
            MtlsMode::Strict,
            "the mesh's"
        );
        mesh.peer_authentications.insert(
            key("shop", "default"),
            pa(serde_json::json!({"mtls": {"mode": "UNSET"}})),
        );
        assert_eq!(
            mesh.mtls_mode("shop", &labels, 9080),
            MtlsMode::Strict,
            "UNSET: the parent's"
        );
        mesh.peer_authentications.insert(
            key("shop", "default"),
            pa(serde_json::json!({"mtls": {"mode": "PERMISSIVE"}})),
        );
        assert_eq!(
            mesh.mtls_mode("shop", &labels, 9080),
            MtlsMode::Permissive,
            "the namespace's"
        );
        mesh.peer_authentications.insert(
            key("shop", "ratings"),
            pa(
                serde_json::json!({"selector": {"matchLabels": {"app": "ratings"}},
                "mtls": {"mode": "DISABLE"}, "portLevelMtls": {"9080": {"mode": "STRICT"}}}),
            ),
        );
        assert_eq!(
            mesh.mtls_mode("shop", &labels, 9080),
            MtlsMode::Strict,
            "the port's"
        );
        assert_eq!(
            mesh.mtls_mode("shop", &labels, 9443),
            MtlsMode::Disable,
            "the workload's"
        );
        assert_eq!(
            mesh.mtls_mode("shop", &BTreeMap::new(), 9080),
            MtlsMode::Permissive
        );
        assert_eq!(mesh.mtls_mode("other", &labels, 9080), MtlsMode::Strict);
    }

    #[test]
    fn auto_mtls_goes_by_endpoint() {
        let key = ServiceKey::resolve("ratings", "shop", "cluster.local");
        let ep = |ip: &str, version: &str, sidecar: bool| {
            let mut labels: BTreeMap<String, String> =
                [("version".to_string(), version.to_string())].into();
            if sidecar {
                labels.insert(TLS_MODE_LABEL.into(), "istio".into());
            }
            Endpoint {
                ip: ip.parse().expect("ip"),
                ports: [("http".to_string(), 9080)].into(),
                labels,
            }
        };
        let port = ServicePort::named;
        let mut mesh = Mesh {
            domain: "cluster.local".into(),
            ..Default::default()
        };
        mesh.services.insert(
            key.clone(),
            Service {
                cluster_ip: None,
                ports: vec![port("http", 9080), port("https", 9443)],
                endpoints: vec![ep("10.0.0.1", "v1", true), ep("10.0.0.2", "v2", false)],
            },
        );
        mesh.destination_rules.insert(
            ("shop".into(), "ratings".into()),
            serde_json::from_value(serde_json::json!({"host": "ratings", "subsets": [
                {"name": "v1", "labels": {"version": "v1"}}, {"name": "v2", "labels": {"version": "v2"}}]}))
            .expect("dr"),
        );
        assert!(mesh.auto_mtls(&key, "", 9080), "one endpoint has a sidecar");
        assert!(mesh.auto_mtls(&key, "v1", 9080));
        assert!(!mesh.auto_mtls(&key, "v2", 9080), "no endpoint has one");
        // Each endpoint says whether it takes mTLS.
        let sp = mesh.services[&key].ports[0].clone();
        let eps = mesh.endpoints(&key, &sp, &BTreeMap::new());
        assert_eq!(eps.iter().map(|e| e.2).collect::<Vec<_>>(), [true, false]);
        assert!(
            !mesh.auto_mtls(&key, "v1", 9443),
            "the application's own TLS"
        );
        mesh.peer_authentications.insert(
            ("shop".into(), "off".into()),
            pa(serde_json::json!({"mtls": {"mode": "DISABLE"}})),
        );
        assert!(
            !mesh.auto_mtls(&key, "v1", 9080),
            "the server takes plain text only"
        );
    }

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
