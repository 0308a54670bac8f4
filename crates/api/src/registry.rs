//! The resources mast serves: their group, version, kind, names and scope.
//!
//! Built-in resources are a static table; custom resources are added at run
//! time from CustomResourceDefinitions. Both become the same [`Resource`], so
//! the API server handles every resource with one code path.

use serde_json::Value;
use std::sync::Arc;

/// A served resource, as discovery and the REST paths name it.
#[derive(Clone, Debug, PartialEq)]
pub struct Resource {
    pub group: String,
    pub version: String,
    pub kind: String,
    /// Plural lower-case name used in URLs, e.g. `pods`.
    pub plural: String,
    pub singular: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    /// Subresources besides the object itself, e.g. `status`, `scale`.
    pub subresources: Vec<String>,
    /// OpenAPI definition name, e.g. `io.k8s.api.core.v1.Pod`.
    pub definition: String,
    /// Where objects are kept in the store: `/registry/<storage>/...`.
    pub storage: String,
    /// The version objects are stored in when it differs from `version`.
    pub storage_version: Option<(String, String)>,
    /// Served, but Kubernetes has removed or deprecated it.
    pub deprecated: Option<String>,
    /// For custom resources: the CRD's schema and columns.
    pub custom: Option<Arc<CustomInfo>>,
}

/// What a custom resource's CRD says beyond names.
#[derive(Clone, Debug, PartialEq)]
pub struct CustomInfo {
    pub schema: Option<Value>,
    pub printer_columns: Vec<Value>,
    pub scale: Option<Value>,
}

impl Resource {
    /// `group/version`, or just `version` for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `pods`, or `deployments.apps` for named groups: how kubectl names it.
    pub fn group_resource(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    pub fn has_subresource(&self, name: &str) -> bool {
        self.subresources.iter().any(|s| s == name)
    }

    /// Verbs for discovery.
    pub fn verbs(&self) -> Vec<&'static str> {
        if self.kind == "Binding" {
            return vec!["create"];
        }
        vec![
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch",
        ]
    }
}

struct Builtin {
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    namespaced: bool,
    short: &'static [&'static str],
    categories: &'static [&'static str],
    subresources: &'static [&'static str],
    definition: &'static str,
}

// One row of the built-in table; positional arguments keep the table below
// readable as a table.
#[allow(clippy::too_many_arguments)]
const fn b(
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    namespaced: bool,
    short: &'static [&'static str],
    categories: &'static [&'static str],
    subresources: &'static [&'static str],
    definition: &'static str,
) -> Builtin {
    Builtin {
        group,
        version,
        kind,
        plural,
        namespaced,
        short,
        categories,
        subresources,
        definition,
    }
}

const ALL: &[&str] = &["all"];
const NONE: &[&str] = &[];

const BUILTINS: &[Builtin] = &[
    b(
        "",
        "v1",
        "Namespace",
        "namespaces",
        false,
        &["ns"],
        NONE,
        &["status", "finalize"],
        "io.k8s.api.core.v1.Namespace",
    ),
    b(
        "",
        "v1",
        "Pod",
        "pods",
        true,
        &["po"],
        ALL,
        &[
            "status",
            "binding",
            "log",
            "exec",
            "attach",
            "portforward",
            "eviction",
        ],
        "io.k8s.api.core.v1.Pod",
    ),
    b(
        "",
        "v1",
        "Service",
        "services",
        true,
        &["svc"],
        ALL,
        &["status", "proxy"],
        "io.k8s.api.core.v1.Service",
    ),
    b(
        "",
        "v1",
        "Endpoints",
        "endpoints",
        true,
        &["ep"],
        NONE,
        NONE,
        "io.k8s.api.core.v1.Endpoints",
    ),
    b(
        "",
        "v1",
        "ConfigMap",
        "configmaps",
        true,
        &["cm"],
        NONE,
        NONE,
        "io.k8s.api.core.v1.ConfigMap",
    ),
    b(
        "",
        "v1",
        "Secret",
        "secrets",
        true,
        NONE,
        NONE,
        NONE,
        "io.k8s.api.core.v1.Secret",
    ),
    b(
        "",
        "v1",
        "ServiceAccount",
        "serviceaccounts",
        true,
        &["sa"],
        NONE,
        &["token"],
        "io.k8s.api.core.v1.ServiceAccount",
    ),
    b(
        "",
        "v1",
        "Node",
        "nodes",
        false,
        &["no"],
        NONE,
        &["status", "proxy"],
        "io.k8s.api.core.v1.Node",
    ),
    b(
        "",
        "v1",
        "Event",
        "events",
        true,
        &["ev"],
        NONE,
        NONE,
        "io.k8s.api.core.v1.Event",
    ),
    b(
        "",
        "v1",
        "Binding",
        "bindings",
        true,
        NONE,
        NONE,
        NONE,
        "io.k8s.api.core.v1.Binding",
    ),
    b(
        "",
        "v1",
        "ResourceQuota",
        "resourcequotas",
        true,
        &["quota"],
        NONE,
        &["status"],
        "io.k8s.api.core.v1.ResourceQuota",
    ),
    b(
        "",
        "v1",
        "LimitRange",
        "limitranges",
        true,
        &["limits"],
        NONE,
        NONE,
        "io.k8s.api.core.v1.LimitRange",
    ),
    b(
        "",
        "v1",
        "PersistentVolumeClaim",
        "persistentvolumeclaims",
        true,
        &["pvc"],
        NONE,
        &["status"],
        "io.k8s.api.core.v1.PersistentVolumeClaim",
    ),
    b(
        "",
        "v1",
        "PersistentVolume",
        "persistentvolumes",
        false,
        &["pv"],
        NONE,
        &["status"],
        "io.k8s.api.core.v1.PersistentVolume",
    ),
    b(
        "apps",
        "v1",
        "Deployment",
        "deployments",
        true,
        &["deploy"],
        ALL,
        &["status", "scale"],
        "io.k8s.api.apps.v1.Deployment",
    ),
    b(
        "apps",
        "v1",
        "ReplicaSet",
        "replicasets",
        true,
        &["rs"],
        ALL,
        &["status", "scale"],
        "io.k8s.api.apps.v1.ReplicaSet",
    ),
    b(
        "apps",
        "v1",
        "ControllerRevision",
        "controllerrevisions",
        true,
        NONE,
        NONE,
        NONE,
        "io.k8s.api.apps.v1.ControllerRevision",
    ),
    b(
        "networking.k8s.io",
        "v1",
        "Ingress",
        "ingresses",
        true,
        &["ing"],
        NONE,
        &["status"],
        "io.k8s.api.networking.v1.Ingress",
    ),
    b(
        "networking.k8s.io",
        "v1",
        "IngressClass",
        "ingressclasses",
        false,
        NONE,
        NONE,
        NONE,
        "io.k8s.api.networking.v1.IngressClass",
    ),
    b(
        "discovery.k8s.io",
        "v1",
        "EndpointSlice",
        "endpointslices",
        true,
        NONE,
        NONE,
        NONE,
        "io.k8s.api.discovery.v1.EndpointSlice",
    ),
    b(
        "coordination.k8s.io",
        "v1",
        "Lease",
        "leases",
        true,
        NONE,
        NONE,
        NONE,
        "io.k8s.api.coordination.v1.Lease",
    ),
    b(
        "apiextensions.k8s.io",
        "v1",
        "CustomResourceDefinition",
        "customresourcedefinitions",
        false,
        &["crd", "crds"],
        NONE,
        &["status"],
        "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.CustomResourceDefinition",
    ),
];

/// The version and group Ingress is still accepted in for old manifests.
pub const LEGACY_INGRESS_GROUP: &str = "extensions";

/// Every built-in resource, in discovery order.
pub fn builtin_resources() -> Vec<Resource> {
    let mut out: Vec<Resource> = BUILTINS
        .iter()
        .map(|b| Resource {
            group: b.group.into(),
            version: b.version.into(),
            kind: b.kind.into(),
            plural: b.plural.into(),
            singular: b.kind.to_ascii_lowercase(),
            namespaced: b.namespaced,
            short_names: b.short.iter().map(|s| s.to_string()).collect(),
            categories: b.categories.iter().map(|s| s.to_string()).collect(),
            subresources: b.subresources.iter().map(|s| s.to_string()).collect(),
            definition: b.definition.into(),
            storage: storage_name(b.group, b.plural),
            storage_version: None,
            deprecated: None,
            custom: None,
        })
        .collect();
    // extensions/v1beta1 Ingress: removed in Kubernetes 1.22, still accepted
    // here for old manifests (the course's slide uses it); stored as v1.
    out.push(Resource {
        group: LEGACY_INGRESS_GROUP.into(),
        version: "v1beta1".into(),
        kind: "Ingress".into(),
        plural: "ingresses".into(),
        singular: "ingress".into(),
        namespaced: true,
        short_names: vec![],
        categories: vec![],
        subresources: vec!["status".into()],
        definition: "io.k8s.api.networking.v1.Ingress".into(),
        storage: storage_name("networking.k8s.io", "ingresses"),
        storage_version: Some(("networking.k8s.io".into(), "v1".into())),
        deprecated: Some(
            "extensions/v1beta1 Ingress is deprecated in v1.14+, unavailable in v1.22+; use networking.k8s.io/v1 Ingress".into(),
        ),
        custom: None,
    });
    out
}

/// The store prefix of a resource: Kubernetes keeps core and most group
/// resources under their plural, a few under a shared name.
pub fn storage_name(group: &str, plural: &str) -> String {
    match (group, plural) {
        ("", "services") => "services/specs".into(),
        ("", "endpoints") => "services/endpoints".into(),
        ("", "nodes") => "minions".into(),
        ("apiextensions.k8s.io", "customresourcedefinitions") => {
            "apiextensions.k8s.io/customresourcedefinitions".into()
        }
        ("" | "apps" | "networking.k8s.io" | "discovery.k8s.io" | "coordination.k8s.io", p) => {
            p.into()
        }
        (g, p) => format!("{g}/{p}"),
    }
}

/// Build the served resource of one version of a CRD. Returns `None` when the
/// CRD is malformed or that version is not served.
pub fn resources_from_crd(crd: &Value) -> Vec<Resource> {
    let spec = &crd["spec"];
    let group = spec["group"].as_str().unwrap_or_default();
    let names = &spec["names"];
    let plural = names["plural"].as_str().unwrap_or_default();
    let kind = names["kind"].as_str().unwrap_or_default();
    if group.is_empty() || plural.is_empty() || kind.is_empty() {
        return vec![];
    }
    let strs = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let storage_version = spec["versions"]
        .as_array()
        .and_then(|vs| vs.iter().find(|v| v["storage"].as_bool() == Some(true)))
        .and_then(|v| v["name"].as_str())
        .map(str::to_owned);
    let mut out = vec![];
    for v in spec["versions"].as_array().into_iter().flatten() {
        if v["served"].as_bool() != Some(true) {
            continue;
        }
        let Some(version) = v["name"].as_str() else {
            continue;
        };
        let mut subresources = vec![];
        if v["subresources"].get("status").is_some() {
            subresources.push("status".to_string());
        }
        if v["subresources"].get("scale").is_some() {
            subresources.push("scale".to_string());
        }
        out.push(Resource {
            group: group.into(),
            version: version.into(),
            kind: kind.into(),
            plural: plural.into(),
            singular: names["singular"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| kind.to_ascii_lowercase()),
            namespaced: spec["scope"].as_str() != Some("Cluster"),
            short_names: strs(&names["shortNames"]),
            categories: strs(&names["categories"]),
            subresources,
            definition: format!("{}.{}.{}", reverse_domain(group), version, kind),
            storage: format!("{group}/{plural}"),
            storage_version: storage_version
                .as_ref()
                .filter(|s| s.as_str() != version)
                .map(|s| (group.to_owned(), s.clone())),
            deprecated: if v["deprecated"].as_bool() == Some(true) {
                Some(
                    v["deprecationWarning"]
                        .as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| format!("{group}/{version} {kind} is deprecated")),
                )
            } else {
                None
            },
            custom: Some(Arc::new(CustomInfo {
                schema: v["schema"].get("openAPIV3Schema").cloned(),
                printer_columns: v["additionalPrinterColumns"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default(),
                scale: v["subresources"].get("scale").cloned(),
            })),
        });
    }
    out
}

/// `networking.istio.io` → `io.istio.networking`, as OpenAPI names CRD types.
fn reverse_domain(group: &str) -> String {
    group.split('.').rev().collect::<Vec<_>>().join(".")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn builtins_have_unique_paths() {
        let rs = builtin_resources();
        for (i, a) in rs.iter().enumerate() {
            for b in &rs[i + 1..] {
                assert!(
                    !(a.group == b.group && a.version == b.version && a.plural == b.plural),
                    "{} served twice",
                    a.plural
                );
            }
        }
        let pods = rs.iter().find(|r| r.plural == "pods").unwrap();
        assert_eq!(pods.api_version(), "v1");
        assert_eq!(pods.storage, "pods");
    }

    #[test]
    fn crd_versions_become_resources() {
        let crd = json!({"spec": {
        "group": "networking.istio.io", "scope": "Namespaced",
        "names": {"plural": "virtualservices", "kind": "VirtualService", "shortNames": ["vs"]},
        "versions": [
            {"name": "v1", "served": true, "storage": true, "subresources": {"status": {}}},
            {"name": "v1beta1", "served": true, "storage": false},
            {"name": "v1alpha1", "served": false, "storage": false}
        ]}});
        let rs = resources_from_crd(&crd);
        assert_eq!(rs.len(), 2);
        assert_eq!(rs[0].api_version(), "networking.istio.io/v1");
        assert_eq!(rs[0].short_names, vec!["vs"]);
        assert!(rs[0].has_subresource("status"));
        assert_eq!(
            rs[1].storage_version,
            Some(("networking.istio.io".into(), "v1".into()))
        );
        assert_eq!(rs[0].storage, "networking.istio.io/virtualservices");
    }
}
