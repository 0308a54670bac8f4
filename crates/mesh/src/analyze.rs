//! `mast mesh analyze`: istioctl analyze's checks over the mesh model, with
//! its message format (`Error [IST0101] (VirtualService reviews.default)
//! Referenced host not found: "reviewz"`) and exit code (79 when there are
//! errors or warnings).

use crate::model::{Mesh, ServiceKey};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error,
    Warning,
    Info,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Message {
    pub level: Level,
    pub code: &'static str,
    /// `VirtualService reviews.default`.
    pub resource: String,
    pub text: String,
}

impl std::fmt::Display for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:?} [{}] ({}) {}",
            self.level, self.code, self.resource, self.text
        )
    }
}

/// Service ports as the analyzer needs them: (name, number, targetPort,
/// appProtocol).
pub type Ports = BTreeMap<ServiceKey, Vec<(String, i32, String, Option<String>)>>;

/// Whether a port name follows Istio's `<protocol>[-<suffix>]` convention.
fn port_name_ok(name: &str) -> bool {
    let proto = name
        .split('-')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    let proto = if name.to_ascii_lowercase().starts_with("grpc-web") {
        "grpc-web".into()
    } else {
        proto
    };
    [
        "http", "http2", "https", "grpc", "grpc-web", "tcp", "tls", "mongo", "mysql", "redis",
        "udp",
    ]
    .contains(&proto.as_str())
}

/// Analyze the configuration of the namespaces `only` (all when `None`).
pub fn analyze(mesh: &Mesh, ports: &Ports, only: Option<&str>) -> Vec<Message> {
    let mut out = vec![];
    let in_scope = |ns: &str| only.is_none_or(|o| o == ns);
    let local = format!(".svc.{}", mesh.domain);
    for ((ns, name), vs) in &mesh.virtual_services {
        if !in_scope(ns) {
            continue;
        }
        let resource = format!("VirtualService {name}.{ns}");
        for g in &vs.gateways {
            if g == "mesh" {
                continue;
            }
            let key = match g.split_once('/') {
                Some((gns, gname)) => (gns.to_owned(), gname.to_owned()),
                None => (ns.clone(), g.clone()),
            };
            if !mesh.gateways.contains_key(&key) {
                out.push(Message {
                    level: Level::Error,
                    code: "IST0101",
                    resource: resource.clone(),
                    text: format!("Referenced gateway not found: {g:?}"),
                });
            }
        }
        let dests = vs
            .http
            .iter()
            .flat_map(|r| r.route.iter().map(|d| &d.destination))
            .chain(
                vs.tcp
                    .iter()
                    .flat_map(|r| r.route.iter().map(|d| &d.destination)),
            )
            .chain(
                vs.tls
                    .iter()
                    .flat_map(|r| r.route.iter().map(|d| &d.destination)),
            );
        for d in dests {
            // Names outside the cluster may be ServiceEntries: not judged.
            let cluster_name =
                !d.host.contains('.') || d.host.ends_with(&local) || d.host.split('.').count() == 2;
            if !cluster_name {
                continue;
            }
            let key = ServiceKey::resolve(&d.host, ns, &mesh.domain);
            if !mesh.services.contains_key(&key) {
                out.push(Message {
                    level: Level::Error,
                    code: "IST0101",
                    resource: resource.clone(),
                    text: format!("Referenced host not found: {:?}", d.host),
                });
                continue;
            }
            if let Some(subset) = &d.subset {
                if !mesh.subsets(&key).iter().any(|(n, _)| n == subset) {
                    out.push(Message {
                        level: Level::Error,
                        code: "IST0101",
                        resource: resource.clone(),
                        text: format!(
                            "Referenced host+subset in destinationrule not found: \"{}+{subset}\"",
                            d.host
                        ),
                    });
                }
            }
        }
    }
    // Gateways no VirtualService binds.
    for key in mesh.gateways.keys() {
        if in_scope(&key.0) && mesh.bound_to(key).is_empty() {
            out.push(Message {
                level: Level::Warning,
                code: "MST0001",
                resource: format!("Gateway {}.{}", key.1, key.0),
                text: "No VirtualService is bound to this Gateway, so it serves nothing; name it in a VirtualService's gateways".into(),
            });
        }
    }
    // What mast does not implement yet, said rather than ignored.
    for ((ns, name), gw) in &mesh.gateways {
        for s in &gw.servers {
            let mode = s.tls.as_ref().and_then(|t| t.mode.as_deref());
            let proto = s.port.protocol_upper();
            let unsupported = matches!(crate::gateway::kind(s), crate::gateway::Kind::Unsupported);
            if in_scope(ns) && unsupported {
                out.push(Message {
                    level: Level::Warning,
                    code: "MST0003",
                    resource: format!("Gateway {name}.{ns}"),
                    text: format!(
                        "server on port {} ({proto}{}) is not implemented yet and is not served; HTTP, TCP, HTTPS and TLS servers with SIMPLE, MUTUAL or PASSTHROUGH TLS are",
                        s.port.number,
                        mode.map(|m| format!(", {m}")).unwrap_or_default()
                    ),
                });
            }
        }
    }
    // One host, several VirtualServices on the mesh gateway.
    let mut by_host: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for ((ns, name), vs) in &mesh.virtual_services {
        if !(vs.gateways.is_empty() || vs.gateways.iter().any(|g| g == "mesh")) {
            continue;
        }
        for h in &vs.hosts {
            let host = if h.contains('*') {
                h.clone()
            } else {
                ServiceKey::resolve(h, ns, &mesh.domain).host()
            };
            by_host
                .entry(host)
                .or_default()
                .push(format!("{ns}/{name}"));
        }
    }
    for (host, vss) in by_host {
        if vss.len() > 1 {
            for v in &vss {
                let (ns, name) = v.split_once('/').unwrap_or(("", v));
                if !in_scope(ns) {
                    continue;
                }
                out.push(Message {
                    level: Level::Error,
                    code: "IST0109",
                    resource: format!("VirtualService {name}.{ns}"),
                    text: format!(
                        "The VirtualServices {} associated with mesh gateway define the same host {host} which can lead to undefined behavior. This can be fixed by merging the conflicting VirtualServices into a single resource.",
                        vss.join(",")
                    ),
                });
            }
        }
    }
    // Port names that do not say their protocol.
    for (key, ps) in ports {
        if !in_scope(&key.namespace) || key.namespace == "kube-system" {
            continue;
        }
        for (name, number, target, app) in ps {
            if app.is_none() && !port_name_ok(name) {
                out.push(Message {
                    level: Level::Info,
                    code: "IST0118",
                    resource: format!("Service {}.{}", key.name, key.namespace),
                    text: format!("Port name {name} (port: {number}, targetPort: {target}) doesn't follow the naming convention of Istio port."),
                });
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_names() {
        for ok in [
            "http",
            "http-web",
            "grpc-web",
            "tcp",
            "https-admin",
            "redis",
        ] {
            assert!(port_name_ok(ok), "{ok}");
        }
        for bad in ["", "web", "httpx", "metrics"] {
            assert!(!port_name_ok(bad), "{bad}");
        }
    }
}
