//! Ingress rules as a routing table, matched the way the Ingress API
//! defines it: an exact host beats a wildcard (`*.foo.com` covers one
//! label), which beats rules without a host; within those, the longest
//! matching path wins, `Exact` before `Prefix` at equal length, and `Prefix`
//! matches whole path elements (`/foo` matches `/foo/bar`, not `/foobar`).
//! `ImplementationSpecific` is treated as `Prefix`.

use k8s_openapi::api::networking::v1::{Ingress, IngressBackend};

/// Where a request goes: a Service port in a namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub namespace: String,
    pub service: String,
    /// A port number, or the Service port's name.
    pub port: Port,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Port {
    Number(i32),
    Name(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Host {
    Exact(String),
    /// `*.foo.com`, kept as `.foo.com`.
    Wildcard(String),
    Any,
}

impl Host {
    fn tier(&self) -> u8 {
        match self {
            Host::Exact(_) => 0,
            Host::Wildcard(_) => 1,
            Host::Any => 2,
        }
    }

    fn matches(&self, host: &str) -> bool {
        match self {
            Host::Exact(h) => h == host,
            Host::Wildcard(suffix) => host
                .strip_suffix(suffix.as_str())
                .is_some_and(|label| !label.is_empty() && !label.contains('.')),
            Host::Any => true,
        }
    }
}

#[derive(Debug, Clone)]
struct Route {
    host: Host,
    path: String,
    exact: bool,
    backend: Backend,
}

/// Every route of the Ingresses this controller serves.
#[derive(Debug, Clone, Default)]
pub struct Table {
    routes: Vec<Route>,
    default: Option<Backend>,
}

fn backend(ns: &str, b: &IngressBackend) -> Option<Backend> {
    let s = b.service.as_ref()?;
    let port = s.port.as_ref()?;
    let port = match (&port.number, &port.name) {
        (Some(n), _) => Port::Number(*n),
        (None, Some(name)) => Port::Name(name.clone()),
        _ => return None,
    };
    Some(Backend {
        namespace: ns.to_owned(),
        service: s.name.clone(),
        port,
    })
}

/// A path as the rules compare it: no trailing slash (but `/` stays).
fn trim(path: &str) -> &str {
    let t = path.trim_end_matches('/');
    if t.is_empty() {
        "/"
    } else {
        t
    }
}

fn prefix_matches(rule: &str, path: &str) -> bool {
    let (rule, path) = (trim(rule), trim(path));
    rule == "/"
        || path == rule
        || path
            .strip_prefix(rule)
            .is_some_and(|rest| rest.starts_with('/'))
}

impl Table {
    /// The table of `ingresses` (already filtered to this controller's
    /// class). The oldest Ingress's default backend wins, as controllers
    /// commonly resolve that conflict.
    pub fn build(ingresses: &[&Ingress]) -> Table {
        let mut t = Table::default();
        let mut sorted: Vec<&&Ingress> = ingresses.iter().collect();
        sorted.sort_by_key(|i| {
            (
                i.metadata.creation_timestamp.clone().map(|t| t.0),
                i.metadata.namespace.clone(),
                i.metadata.name.clone(),
            )
        });
        for ing in sorted {
            let ns = ing.metadata.namespace.as_deref().unwrap_or("default");
            let Some(spec) = &ing.spec else { continue };
            if t.default.is_none() {
                t.default = spec.default_backend.as_ref().and_then(|b| backend(ns, b));
            }
            for rule in spec.rules.iter().flatten() {
                let host = match rule.host.as_deref() {
                    None | Some("") => Host::Any,
                    Some(h) => match h.strip_prefix('*') {
                        Some(suffix) => Host::Wildcard(suffix.to_ascii_lowercase()),
                        None => Host::Exact(h.to_ascii_lowercase()),
                    },
                };
                for p in rule.http.iter().flat_map(|h| h.paths.iter()) {
                    let Some(b) = backend(ns, &p.backend) else {
                        continue;
                    };
                    t.routes.push(Route {
                        host: host.clone(),
                        path: p.path.clone().unwrap_or_else(|| "/".into()),
                        exact: p.path_type == "Exact",
                        backend: b,
                    });
                }
            }
        }
        t
    }

    /// The backend for a request to `host` (without port) and `path`.
    pub fn route(&self, host: &str, path: &str) -> Option<&Backend> {
        let host = host.to_ascii_lowercase();
        for tier in 0..3 {
            let best = self
                .routes
                .iter()
                .filter(|r| r.host.tier() == tier && r.host.matches(&host))
                .filter(|r| {
                    if r.exact {
                        r.path == path
                    } else {
                        prefix_matches(&r.path, path)
                    }
                })
                .max_by_key(|r| (trim(&r.path).len(), r.exact));
            if let Some(r) = best {
                return Some(&r.backend);
            }
        }
        self.default.as_ref()
    }

    /// Every host a TLS section may name, for certificate lookup.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty() && self.default.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ing(yaml: serde_json::Value) -> Ingress {
        serde_json::from_value(yaml).unwrap()
    }

    fn svc(b: Option<&Backend>) -> Option<String> {
        b.map(|b| b.service.clone())
    }

    #[test]
    fn hosts_paths_and_default() {
        let a = ing(
            serde_json::json!({"metadata": {"name": "a", "namespace": "default"}, "spec": {
            "defaultBackend": {"service": {"name": "fallback", "port": {"number": 80}}},
            "rules": [
                {"host": "bar.foo.com", "http": {"paths": [
                    {"path": "/first", "pathType": "Prefix", "backend": {"service": {"name": "first", "port": {"number": 80}}}},
                    {"path": "/first/deeper", "pathType": "Prefix", "backend": {"service": {"name": "deeper", "port": {"name": "http"}}}},
                    {"path": "/exact", "pathType": "Exact", "backend": {"service": {"name": "exact", "port": {"number": 80}}}}]}},
                {"host": "*.foo.com", "http": {"paths": [
                    {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "wild", "port": {"number": 80}}}}]}},
                {"http": {"paths": [
                    {"path": "/any", "pathType": "ImplementationSpecific", "backend": {"service": {"name": "any", "port": {"number": 80}}}}]}}]}}),
        );
        let t = Table::build(&[&a]);
        assert_eq!(svc(t.route("bar.foo.com", "/first")), Some("first".into()));
        assert_eq!(svc(t.route("BAR.foo.com", "/first/")), Some("first".into()));
        assert_eq!(
            svc(t.route("bar.foo.com", "/first/x")),
            Some("first".into())
        );
        assert_eq!(
            svc(t.route("bar.foo.com", "/first/deeper/y")),
            Some("deeper".into())
        );
        // Prefix matches whole elements only; the wildcard then catches it.
        assert_eq!(svc(t.route("bar.foo.com", "/firstx")), Some("wild".into()));
        assert_eq!(svc(t.route("bar.foo.com", "/exact")), Some("exact".into()));
        assert_eq!(svc(t.route("bar.foo.com", "/exact/x")), Some("wild".into()));
        // `*.foo.com` covers one label.
        assert_eq!(svc(t.route("baz.foo.com", "/x")), Some("wild".into()));
        assert_eq!(svc(t.route("a.b.foo.com", "/any/1")), Some("any".into()));
        assert_eq!(svc(t.route("foo.com", "/x")), Some("fallback".into()));
        assert_eq!(
            t.route("bar.foo.com", "/first/deeper")
                .map(|b| b.port.clone()),
            Some(Port::Name("http".into()))
        );
    }
}
