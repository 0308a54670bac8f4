//! OpenAPI definitions of every served type, and the v2 and v3 documents
//! that kubectl reads for `explain`, validation and `apply`.
//!
//! Built-in schemas come from k8s-openapi's generated `schemars` impls, so they
//! track upstream Kubernetes exactly. Those lack two things the Go types carry
//! in struct tags, which this module adds: the group/version/kind of each
//! top-level type, and the strategic-merge-patch metadata
//! (`x-kubernetes-patch-strategy`, `x-kubernetes-patch-merge-key`).

use crate::registry::Resource;
use serde_json::{json, Map, Value};

/// Strategic merge metadata of one list field: `(definition, field, merge key)`;
/// an empty merge key marks a list of primitives merged as a set. Taken from
/// the `patchStrategy:"merge"` tags of the Kubernetes Go types.
const PATCH_MERGE: &[(&str, &str, &str)] = &[
    (
        "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
        "finalizers",
        "",
    ),
    (
        "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
        "ownerReferences",
        "uid",
    ),
    ("io.k8s.api.core.v1.PodSpec", "volumes", "name"),
    ("io.k8s.api.core.v1.PodSpec", "initContainers", "name"),
    ("io.k8s.api.core.v1.PodSpec", "containers", "name"),
    ("io.k8s.api.core.v1.PodSpec", "ephemeralContainers", "name"),
    ("io.k8s.api.core.v1.PodSpec", "imagePullSecrets", "name"),
    ("io.k8s.api.core.v1.PodSpec", "hostAliases", "ip"),
    (
        "io.k8s.api.core.v1.PodSpec",
        "topologySpreadConstraints",
        "topologyKey",
    ),
    ("io.k8s.api.core.v1.PodSpec", "resourceClaims", "name"),
    ("io.k8s.api.core.v1.PodSpec", "schedulingGates", "name"),
    ("io.k8s.api.core.v1.Container", "ports", "containerPort"),
    ("io.k8s.api.core.v1.Container", "env", "name"),
    ("io.k8s.api.core.v1.Container", "volumeMounts", "mountPath"),
    (
        "io.k8s.api.core.v1.Container",
        "volumeDevices",
        "devicePath",
    ),
    (
        "io.k8s.api.core.v1.EphemeralContainer",
        "ports",
        "containerPort",
    ),
    ("io.k8s.api.core.v1.EphemeralContainer", "env", "name"),
    (
        "io.k8s.api.core.v1.EphemeralContainer",
        "volumeMounts",
        "mountPath",
    ),
    ("io.k8s.api.core.v1.PodStatus", "conditions", "type"),
    ("io.k8s.api.core.v1.PodStatus", "podIPs", "ip"),
    ("io.k8s.api.core.v1.PodStatus", "hostIPs", "ip"),
    ("io.k8s.api.core.v1.ServiceSpec", "ports", "port"),
    ("io.k8s.api.core.v1.ServiceStatus", "conditions", "type"),
    ("io.k8s.api.core.v1.NodeSpec", "podCIDRs", ""),
    ("io.k8s.api.core.v1.NodeStatus", "conditions", "type"),
    ("io.k8s.api.core.v1.NodeStatus", "addresses", "type"),
    ("io.k8s.api.core.v1.NamespaceStatus", "conditions", "type"),
    ("io.k8s.api.core.v1.ServiceAccount", "secrets", "name"),
    ("io.k8s.api.apps.v1.DeploymentStatus", "conditions", "type"),
    ("io.k8s.api.apps.v1.ReplicaSetStatus", "conditions", "type"),
];

/// The strategic merge key of `definition.field`, if that list is merged:
/// `Some("")` for a primitive set, `Some(key)` for a list of objects.
pub fn patch_merge_key(definition: &str, field: &str) -> Option<&'static str> {
    PATCH_MERGE
        .iter()
        .find(|(d, f, _)| *d == definition && *f == field)
        .map(|(_, _, k)| *k)
}

macro_rules! add_types {
    ($gen:expr, $($t:ty),* $(,)?) => { $( $gen.subschema_for::<$t>(); )* };
}

/// Every built-in definition, keyed by name, with refs as `#/definitions/...`.
pub fn builtin_definitions(resources: &[Resource]) -> Map<String, Value> {
    use k8s_openapi::api::{apps, coordination, core, discovery, networking};
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiext;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
    let mut gen = schemars::generate::SchemaSettings::draft07()
        .with(|s| {
            s.definitions_path = "#/definitions/".into();
            s.meta_schema = None;
        })
        .into_generator();
    add_types!(
        gen,
        core::v1::Namespace,
        core::v1::Pod,
        core::v1::Service,
        core::v1::Endpoints,
        core::v1::ConfigMap,
        core::v1::Secret,
        core::v1::ServiceAccount,
        core::v1::Node,
        core::v1::Event,
        core::v1::Binding,
        core::v1::ResourceQuota,
        core::v1::LimitRange,
        core::v1::PersistentVolumeClaim,
        core::v1::PersistentVolume,
        apps::v1::Deployment,
        apps::v1::ReplicaSet,
        apps::v1::ControllerRevision,
        networking::v1::Ingress,
        networking::v1::IngressClass,
        discovery::v1::EndpointSlice,
        coordination::v1::Lease,
        apiext::CustomResourceDefinition,
        meta::Status,
        meta::DeleteOptions,
        k8s_openapi::api::autoscaling::v1::Scale,
    );
    let mut defs = gen.take_definitions(true);
    for (name, schema) in defs.iter_mut() {
        for (field, prop) in schema
            .get_mut("properties")
            .and_then(Value::as_object_mut)
            .into_iter()
            .flatten()
        {
            if let Some(key) = patch_merge_key(name, field) {
                let obj = prop
                    .as_object_mut()
                    .expect("a property schema is an object");
                obj.insert("x-kubernetes-patch-strategy".into(), "merge".into());
                if !key.is_empty() {
                    obj.insert("x-kubernetes-patch-merge-key".into(), key.into());
                }
            }
        }
    }
    // These hold any JSON value; Kubernetes publishes them without a type.
    for name in [
        "JSON",
        "JSONSchemaPropsOrArray",
        "JSONSchemaPropsOrBool",
        "JSONSchemaPropsOrStringArray",
    ] {
        let full = format!("io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.{name}");
        if let Some(obj) = defs.get_mut(&full).and_then(Value::as_object_mut) {
            obj.remove("type");
            obj.insert(
                "x-kubernetes-preserve-unknown-fields".into(),
                Value::Bool(true),
            );
        }
    }
    add_gvks(&mut defs, resources);
    defs
}

/// Mark each top-level definition with the group/version/kind it serves.
fn add_gvks(defs: &mut Map<String, Value>, resources: &[Resource]) {
    let mut extra: Vec<(&str, &str, &str, &str)> = vec![
        (
            "io.k8s.apimachinery.pkg.apis.meta.v1.Status",
            "",
            "v1",
            "Status",
        ),
        (
            "io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions",
            "",
            "v1",
            "DeleteOptions",
        ),
        (
            "io.k8s.api.autoscaling.v1.Scale",
            "autoscaling",
            "v1",
            "Scale",
        ),
    ];
    for r in resources.iter().filter(|r| r.custom.is_none()) {
        extra.push((&r.definition, &r.group, &r.version, &r.kind));
    }
    for (def, group, version, kind) in extra {
        if let Some(obj) = defs.get_mut(def).and_then(Value::as_object_mut) {
            let entry = obj
                .entry("x-kubernetes-group-version-kind")
                .or_insert_with(|| json!([]));
            if let Some(list) = entry.as_array_mut() {
                let gvk = json!({"group": group, "version": version, "kind": kind});
                if !list.contains(&gvk) {
                    list.push(gvk);
                }
            }
        }
    }
}

/// The definition of a custom resource version, built from its CRD schema.
pub fn custom_definition(r: &Resource) -> Value {
    let mut schema = r
        .custom
        .as_ref()
        .and_then(|c| c.schema.clone())
        .unwrap_or_else(|| json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}));
    if let Some(obj) = schema.as_object_mut() {
        let props = obj
            .entry("properties")
            .or_insert_with(|| json!({}))
            .as_object_mut();
        if let Some(props) = props {
            props.insert("apiVersion".into(), json!({"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object."}));
            props.insert("kind".into(), json!({"type": "string", "description": "Kind is a string value representing the REST resource this object represents."}));
            props.insert(
                "metadata".into(),
                json!({"$ref": "#/definitions/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}),
            );
        }
        obj.insert(
            "x-kubernetes-group-version-kind".into(),
            json!([{"group": r.group, "version": r.version, "kind": r.kind}]),
        );
    }
    schema
}

/// Rewrite every `$ref` under `v` from `#/definitions/` to `to`.
pub fn rewrite_refs(v: &mut Value, to: &str) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get_mut("$ref") {
                if let Some(name) = r.strip_prefix("#/definitions/") {
                    *r = format!("{to}{name}");
                }
            }
            m.values_mut().for_each(|c| rewrite_refs(c, to));
        }
        Value::Array(a) => a.iter_mut().for_each(|c| rewrite_refs(c, to)),
        _ => {}
    }
}

fn path_ops(r: &Resource, item: bool) -> Value {
    let gvk = json!({"group": r.group, "version": r.version, "kind": r.kind});
    let field_validation =
        json!({"name": "fieldValidation", "in": "query", "type": "string", "uniqueItems": true});
    let dry_run = json!({"name": "dryRun", "in": "query", "type": "string", "uniqueItems": true});
    let op = |verb: &str, action: &str| {
        json!({
            "operationId": format!("{verb}{}", r.kind),
            "x-kubernetes-action": action,
            "x-kubernetes-group-version-kind": gvk,
            "parameters": [field_validation, dry_run],
            "responses": {"200": {"description": "OK"}},
        })
    };
    if item {
        json!({
            "get": op("read", "get"),
            "put": op("replace", "put"),
            "patch": op("patch", "patch"),
            "delete": op("delete", "delete"),
        })
    } else {
        json!({"get": op("list", "list"), "post": op("create", "post")})
    }
}

/// REST paths of a resource with their operations, as OpenAPI `paths`.
pub fn resource_paths(r: &Resource) -> Vec<(String, Value)> {
    let root = if r.group.is_empty() {
        format!("/api/{}", r.version)
    } else {
        format!("/apis/{}/{}", r.group, r.version)
    };
    let coll = if r.namespaced {
        format!("{root}/namespaces/{{namespace}}/{}", r.plural)
    } else {
        format!("{root}/{}", r.plural)
    };
    vec![
        (format!("{coll}/{{name}}"), path_ops(r, true)),
        (coll, path_ops(r, false)),
    ]
}

/// The OpenAPI v2 document as JSON (converted to protobuf by [`v2_proto`]).
pub fn v2_document(defs: &Map<String, Value>, resources: &[Resource]) -> Value {
    let mut paths = Map::new();
    for r in resources {
        for (p, ops) in resource_paths(r) {
            paths.insert(p, ops);
        }
    }
    json!({
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": crate::KUBERNETES_VERSION},
        "paths": paths,
        "definitions": defs,
    })
}

/// One OpenAPI v3 document for a group-version (`/openapi/v3/apis/apps/v1`).
pub fn v3_document(defs: &Map<String, Value>, resources: &[&Resource]) -> Value {
    let mut paths = Map::new();
    for r in resources {
        for (p, ops) in resource_paths(r) {
            paths.insert(p, ops);
        }
    }
    let mut schemas = Value::Object(defs.clone());
    rewrite_refs(&mut schemas, "#/components/schemas/");
    // OpenAPI 3 has no `x-kubernetes-int-or-string`-only schema problem, but
    // refs with siblings must be wrapped in allOf, as Kubernetes publishes.
    wrap_refs(&mut schemas);
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": crate::KUBERNETES_VERSION},
        "paths": paths,
        "components": {"schemas": schemas},
    })
}

fn wrap_refs(v: &mut Value) {
    match v {
        Value::Object(m) => {
            if m.contains_key("$ref") && m.len() > 1 {
                let r = m.remove("$ref").unwrap_or_default();
                m.insert("allOf".into(), json!([{"$ref": r}]));
            }
            m.values_mut().for_each(wrap_refs);
        }
        Value::Array(a) => a.iter_mut().for_each(wrap_refs),
        _ => {}
    }
}

/// The gnostic `openapi_v2` protobuf messages kubectl decodes `/openapi/v2`
/// with. Declared by hand with prost's derive (field numbers from gnostic's
/// published OpenAPIv2.proto) because no maintained crate ships them, and
/// only the subset kubectl reads is needed.
pub mod proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Document {
        #[prost(string, tag = "1")]
        pub swagger: String,
        #[prost(message, optional, tag = "2")]
        pub info: Option<Info>,
        #[prost(message, optional, tag = "8")]
        pub paths: Option<Paths>,
        #[prost(message, optional, tag = "9")]
        pub definitions: Option<Definitions>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Info {
        #[prost(string, tag = "1")]
        pub title: String,
        #[prost(string, tag = "2")]
        pub version: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Paths {
        #[prost(message, repeated, tag = "2")]
        pub path: Vec<NamedPathItem>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct NamedPathItem {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(message, optional, tag = "2")]
        pub value: Option<PathItem>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PathItem {
        #[prost(message, optional, tag = "2")]
        pub get: Option<Operation>,
        #[prost(message, optional, tag = "3")]
        pub put: Option<Operation>,
        #[prost(message, optional, tag = "4")]
        pub post: Option<Operation>,
        #[prost(message, optional, tag = "5")]
        pub delete: Option<Operation>,
        #[prost(message, optional, tag = "8")]
        pub patch: Option<Operation>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Operation {
        #[prost(string, tag = "5")]
        pub operation_id: String,
        #[prost(message, repeated, tag = "8")]
        pub parameters: Vec<ParametersItem>,
        #[prost(message, repeated, tag = "13")]
        pub vendor_extension: Vec<NamedAny>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ParametersItem {
        #[prost(message, optional, tag = "1")]
        pub parameter: Option<Parameter>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Parameter {
        #[prost(message, optional, tag = "2")]
        pub non_body_parameter: Option<NonBodyParameter>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct NonBodyParameter {
        #[prost(message, optional, tag = "3")]
        pub query_parameter_sub_schema: Option<QueryParameterSubSchema>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct QueryParameterSubSchema {
        #[prost(string, tag = "2")]
        pub r#in: String,
        #[prost(string, tag = "4")]
        pub name: String,
        #[prost(string, tag = "6")]
        pub r#type: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Definitions {
        #[prost(message, repeated, tag = "1")]
        pub additional_properties: Vec<NamedSchema>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct NamedSchema {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(message, optional, tag = "2")]
        pub value: Option<Schema>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct NamedAny {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(message, optional, tag = "2")]
        pub value: Option<Any>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Any {
        #[prost(string, tag = "2")]
        pub yaml: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Schema {
        #[prost(string, tag = "1")]
        pub r#ref: String,
        #[prost(string, tag = "2")]
        pub format: String,
        #[prost(string, tag = "3")]
        pub title: String,
        #[prost(string, tag = "4")]
        pub description: String,
        #[prost(message, optional, tag = "5")]
        pub default: Option<Any>,
        #[prost(string, repeated, tag = "19")]
        pub required: Vec<String>,
        #[prost(message, repeated, tag = "20")]
        pub r#enum: Vec<Any>,
        #[prost(message, optional, boxed, tag = "21")]
        pub additional_properties: Option<Box<AdditionalPropertiesItem>>,
        #[prost(message, optional, tag = "22")]
        pub r#type: Option<TypeItem>,
        #[prost(message, optional, tag = "23")]
        pub items: Option<ItemsItem>,
        #[prost(message, repeated, tag = "24")]
        pub all_of: Vec<Schema>,
        #[prost(message, optional, tag = "25")]
        pub properties: Option<Properties>,
        #[prost(message, repeated, tag = "31")]
        pub vendor_extension: Vec<NamedAny>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct AdditionalPropertiesItem {
        #[prost(message, optional, tag = "1")]
        pub schema: Option<Schema>,
        #[prost(bool, tag = "2")]
        pub boolean: bool,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TypeItem {
        #[prost(string, repeated, tag = "1")]
        pub value: Vec<String>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ItemsItem {
        #[prost(message, repeated, tag = "1")]
        pub schema: Vec<Schema>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Properties {
        #[prost(message, repeated, tag = "1")]
        pub additional_properties: Vec<NamedSchema>,
    }
}

fn any(v: &Value) -> proto::Any {
    // JSON is YAML; kube-openapi parses the `yaml` field with a YAML decoder.
    proto::Any {
        yaml: v.to_string(),
    }
}

fn extensions(m: &Map<String, Value>) -> Vec<proto::NamedAny> {
    m.iter()
        .filter(|(k, _)| k.starts_with("x-"))
        .map(|(k, v)| proto::NamedAny {
            name: k.clone(),
            value: Some(any(v)),
        })
        .collect()
}

fn schema_proto(v: &Value) -> proto::Schema {
    let Some(m) = v.as_object() else {
        return proto::Schema::default();
    };
    let s = |k: &str| {
        m.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let mut types: Vec<String> = match m.get("type") {
        Some(Value::String(t)) => vec![t.clone()],
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .filter(|t| *t != "null")
            .map(str::to_owned)
            .collect(),
        _ => vec![],
    };
    let mut format = s("format");
    if types.is_empty() && m.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
        types.push("string".into());
        format = "int-or-string".into();
    }
    proto::Schema {
        r#ref: s("$ref"),
        format,
        title: s("title"),
        description: s("description"),
        default: m.get("default").map(any),
        required: m
            .get("required")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
        r#enum: m
            .get("enum")
            .and_then(Value::as_array)
            .map(|a| a.iter().map(any).collect())
            .unwrap_or_default(),
        additional_properties: match m.get("additionalProperties") {
            Some(Value::Bool(b)) => Some(Box::new(proto::AdditionalPropertiesItem {
                schema: None,
                boolean: *b,
            })),
            Some(o @ Value::Object(_)) => Some(Box::new(proto::AdditionalPropertiesItem {
                schema: Some(schema_proto(o)),
                boolean: false,
            })),
            _ => None,
        },
        r#type: (!types.is_empty()).then_some(proto::TypeItem { value: types }),
        items: m.get("items").map(|i| proto::ItemsItem {
            schema: vec![schema_proto(i)],
        }),
        all_of: m
            .get("allOf")
            .and_then(Value::as_array)
            .map(|a| a.iter().map(schema_proto).collect())
            .unwrap_or_default(),
        properties: m
            .get("properties")
            .and_then(Value::as_object)
            .map(|p| proto::Properties {
                additional_properties: p
                    .iter()
                    .map(|(k, v)| proto::NamedSchema {
                        name: k.clone(),
                        value: Some(schema_proto(v)),
                    })
                    .collect(),
            }),
        vendor_extension: extensions(m),
    }
}

fn operation_proto(v: &Value) -> Option<proto::Operation> {
    let m = v.as_object()?;
    Some(proto::Operation {
        operation_id: m
            .get("operationId")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .into(),
        parameters: m
            .get("parameters")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|p| proto::ParametersItem {
                parameter: Some(proto::Parameter {
                    non_body_parameter: Some(proto::NonBodyParameter {
                        query_parameter_sub_schema: Some(proto::QueryParameterSubSchema {
                            r#in: "query".into(),
                            name: p["name"].as_str().unwrap_or_default().into(),
                            r#type: p["type"].as_str().unwrap_or("string").into(),
                        }),
                    }),
                }),
            })
            .collect(),
        vendor_extension: extensions(m),
    })
}

/// Encode a v2 document (from [`v2_document`]) as gnostic protobuf.
pub fn v2_proto(doc: &Value) -> Vec<u8> {
    use prost::Message;
    let paths = doc["paths"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(name, item)| proto::NamedPathItem {
            name: name.clone(),
            value: Some(proto::PathItem {
                get: operation_proto(&item["get"]),
                put: operation_proto(&item["put"]),
                post: operation_proto(&item["post"]),
                delete: operation_proto(&item["delete"]),
                patch: operation_proto(&item["patch"]),
            }),
        })
        .collect();
    let definitions = doc["definitions"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(name, s)| proto::NamedSchema {
            name: name.clone(),
            value: Some(schema_proto(s)),
        })
        .collect();
    proto::Document {
        swagger: "2.0".into(),
        info: Some(proto::Info {
            title: "Kubernetes".into(),
            version: crate::KUBERNETES_VERSION.into(),
        }),
        paths: Some(proto::Paths { path: paths }),
        definitions: Some(proto::Definitions {
            additional_properties: definitions,
        }),
    }
    .encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::builtin_resources;

    #[test]
    fn builtin_definitions_carry_gvk_and_patch_metadata() {
        let rs = builtin_resources();
        let defs = builtin_definitions(&rs);
        let pod = &defs["io.k8s.api.core.v1.Pod"];
        assert_eq!(
            pod["x-kubernetes-group-version-kind"][0]["kind"],
            json!("Pod")
        );
        let spec = &defs["io.k8s.api.core.v1.PodSpec"];
        assert_eq!(
            spec["properties"]["containers"]["x-kubernetes-patch-merge-key"],
            json!("name")
        );
        assert!(spec["required"]
            .as_array()
            .unwrap()
            .contains(&json!("containers")));
        let ing = &defs["io.k8s.api.networking.v1.Ingress"];
        assert_eq!(
            ing["x-kubernetes-group-version-kind"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn v2_proto_round_trips_through_prost() {
        use prost::Message;
        let rs = builtin_resources();
        let defs = builtin_definitions(&rs);
        let bytes = v2_proto(&v2_document(&defs, &rs));
        let doc = proto::Document::decode(bytes.as_slice()).unwrap();
        assert_eq!(doc.swagger, "2.0");
        let defs = doc.definitions.unwrap().additional_properties;
        let pod = defs
            .iter()
            .find(|d| d.name == "io.k8s.api.core.v1.Pod")
            .unwrap();
        let pod = pod.value.as_ref().unwrap();
        assert!(pod
            .vendor_extension
            .iter()
            .any(|e| e.name == "x-kubernetes-group-version-kind"));
        let paths = doc.paths.unwrap().path;
        let p = paths
            .iter()
            .find(|p| p.name == "/api/v1/namespaces/{namespace}/pods/{name}")
            .unwrap();
        let patch = p.value.as_ref().unwrap().patch.as_ref().unwrap();
        assert!(patch.parameters.iter().any(|p| {
            p.parameter
                .as_ref()
                .unwrap()
                .non_body_parameter
                .as_ref()
                .unwrap()
                .query_parameter_sub_schema
                .as_ref()
                .unwrap()
                .name
                == "fieldValidation"
        }));
    }
}
