//! The API server's shared state: the store, the resources currently served
//! (built-ins plus every established CRD), their schemas, the cached OpenAPI
//! documents, and the ClusterIP / NodePort allocators.

use crate::alloc::Allocators;
use mast_api::openapi;
use mast_api::registry::{builtin_resources, resources_from_crd, Resource};
use mast_api::schema::SchemaIndex;
use mast_store::{RangeRequest, Store};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

/// Everything the resource registry knows at one moment. Replaced whole
/// (copy on write) when a CRD changes, so readers never see half an update.
#[derive(Debug)]
pub struct Registry {
    pub resources: Vec<Resource>,
    index: HashMap<(String, String, String), usize>,
    pub schemas: SchemaIndex,
    builtin_defs: Arc<Map<String, Value>>,
    v2_proto: Mutex<Option<Arc<Vec<u8>>>>,
    v3_docs: Mutex<HashMap<String, Arc<Vec<u8>>>>,
}

impl Registry {
    fn build(builtin_defs: Arc<Map<String, Value>>, crds: &[Value]) -> Self {
        let mut resources = builtin_resources();
        // extensions/v1beta1 stays last so `kubectl get ingress` picks v1.
        let legacy = resources.pop();
        let mut defs = (*builtin_defs).clone();
        for crd in crds {
            for r in resources_from_crd(crd) {
                defs.insert(r.definition.clone(), openapi::custom_definition(&r));
                resources.push(r);
            }
        }
        resources.extend(legacy);
        let index = resources
            .iter()
            .enumerate()
            .map(|(i, r)| ((r.group.clone(), r.version.clone(), r.plural.clone()), i))
            .collect();
        Self {
            resources,
            index,
            schemas: SchemaIndex::new(defs),
            builtin_defs,
            v2_proto: Mutex::new(None),
            v3_docs: Mutex::new(HashMap::new()),
        }
    }

    /// The resource served at `/apis/<group>/<version>/<plural>`.
    pub fn lookup(&self, group: &str, version: &str, plural: &str) -> Option<&Resource> {
        self.index
            .get(&(group.to_owned(), version.to_owned(), plural.to_owned()))
            .map(|&i| &self.resources[i])
    }

    /// Every served version of a group, in preference order.
    pub fn groups(&self) -> Vec<(String, Vec<String>)> {
        let mut out: Vec<(String, Vec<String>)> = vec![];
        for r in &self.resources {
            match out.iter_mut().find(|(g, _)| *g == r.group) {
                Some((_, vs)) => {
                    if !vs.contains(&r.version) {
                        vs.push(r.version.clone());
                    }
                }
                None => out.push((r.group.clone(), vec![r.version.clone()])),
            }
        }
        for (_, vs) in out.iter_mut() {
            vs.sort_by_key(|v| std::cmp::Reverse(version_priority(v)));
        }
        out
    }

    /// `/openapi/v2` as protobuf, built on first use.
    pub fn openapi_v2_proto(&self) -> Arc<Vec<u8>> {
        let mut cached = self.v2_proto.lock().unwrap_or_else(|e| e.into_inner());
        cached
            .get_or_insert_with(|| {
                let doc = openapi::v2_document(&self.schemas.defs, &self.resources);
                Arc::new(openapi::v2_proto(&doc))
            })
            .clone()
    }

    /// `/openapi/v2` as JSON (for clients that ask for it).
    pub fn openapi_v2_json(&self) -> Vec<u8> {
        serde_json::to_vec(&openapi::v2_document(&self.schemas.defs, &self.resources))
            .unwrap_or_default()
    }

    /// The OpenAPI v3 document of one group-version (`api/v1`, `apis/apps/v1`).
    pub fn openapi_v3(&self, gv_path: &str) -> Option<Arc<Vec<u8>>> {
        let mut cache = self.v3_docs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(d) = cache.get(gv_path) {
            return Some(d.clone());
        }
        let rs: Vec<&Resource> = self
            .resources
            .iter()
            .filter(|r| gv_path_of(r) == gv_path)
            .collect();
        if rs.is_empty() {
            return None;
        }
        let doc = Arc::new(
            serde_json::to_vec(&openapi::v3_document(&self.schemas.defs, &rs)).unwrap_or_default(),
        );
        cache.insert(gv_path.to_owned(), doc.clone());
        Some(doc)
    }

    /// The schema reference for a resource's objects.
    pub fn schema_of(&self, r: &Resource) -> Value {
        serde_json::json!({"$ref": format!("#/definitions/{}", r.definition)})
    }

    pub fn builtin_defs(&self) -> Arc<Map<String, Value>> {
        self.builtin_defs.clone()
    }
}

/// `api/v1` or `apis/<group>/<version>`: the path of a group-version.
pub fn gv_path_of(r: &Resource) -> String {
    if r.group.is_empty() {
        format!("api/{}", r.version)
    } else {
        format!("apis/{}/{}", r.group, r.version)
    }
}

/// Kubernetes' version priority: GA > beta > alpha, higher numbers first.
pub fn version_priority(v: &str) -> (u8, u32, u32) {
    let Some(rest) = v.strip_prefix('v') else {
        return (0, 0, 0);
    };
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    let major: u32 = digits.parse().unwrap_or(0);
    let tail = &rest[digits.len()..];
    if tail.is_empty() {
        return (3, major, 0);
    }
    let (level, n) = if let Some(n) = tail.strip_prefix("beta") {
        (2, n)
    } else if let Some(n) = tail.strip_prefix("alpha") {
        (1, n)
    } else {
        return (0, 0, 0);
    };
    (level, major, n.parse().unwrap_or(0))
}

/// Static settings of the API server, fixed at start.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Address clients use to reach the server, for discovery and the
    /// `kubernetes` Service's endpoints.
    pub advertise_address: String,
    pub port: u16,
    pub service_cidr: String,
    pub node_port_range: (u16, u16),
    /// Sidecar injection for the mesh, when it runs.
    pub injection: Option<mast_api::istio::inject::Template>,
}

/// State shared by every request.
pub struct ApiState {
    pub store: Arc<dyn Store>,
    registry: RwLock<Arc<Registry>>,
    pub alloc: Allocators,
    pub settings: ServerSettings,
    pub tokens: HashMap<String, crate::auth::User>,
    pub client_ca_pem: String,
    /// TLS client configuration for proxying to node agents.
    pub kubelet_tls: std::sync::OnceLock<Arc<rustls::ClientConfig>>,
    /// Watch events decoded once for all watchers.
    pub event_cache: crate::watch::EventCache,
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState").finish_non_exhaustive()
    }
}

impl ApiState {
    pub fn new(
        store: Arc<dyn Store>,
        settings: ServerSettings,
        tokens: HashMap<String, crate::auth::User>,
        client_ca_pem: String,
    ) -> Result<Self, String> {
        let defs = Arc::new(openapi::builtin_definitions(&builtin_resources()));
        let alloc = Allocators::new(&settings.service_cidr, settings.node_port_range)?;
        Ok(Self {
            store,
            registry: RwLock::new(Arc::new(Registry::build(defs, &[]))),
            alloc,
            settings,
            tokens,
            client_ca_pem,
            kubelet_tls: std::sync::OnceLock::new(),
            event_cache: Default::default(),
        })
    }

    /// The registry as of now.
    pub fn registry(&self) -> Arc<Registry> {
        self.registry
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Re-read every CRD from the store and serve exactly what they define.
    pub async fn reload_crds(&self) -> Result<(), mast_store::StoreError> {
        let kvs = self
            .store
            .range(RangeRequest {
                prefix: "/registry/apiextensions.k8s.io/customresourcedefinitions/".into(),
                ..Default::default()
            })
            .await?;
        let crds: Vec<Value> = kvs
            .kvs
            .iter()
            .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
            .filter(|crd: &Value| crd["metadata"]["deletionTimestamp"].is_null())
            .collect();
        let defs = self.registry().builtin_defs();
        let next = Arc::new(Registry::build(defs, &crds));
        *self.registry.write().unwrap_or_else(|e| e.into_inner()) = next;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_sort_like_kubernetes() {
        let mut vs = vec!["v1alpha1", "v1beta1", "v1", "v2beta1", "v1alpha3", "v2"];
        vs.sort_by_key(|v| std::cmp::Reverse(version_priority(v)));
        assert_eq!(
            vs,
            vec!["v2", "v1", "v2beta1", "v1beta1", "v1alpha3", "v1alpha1"]
        );
    }
}
