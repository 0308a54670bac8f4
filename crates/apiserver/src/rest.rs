//! REST semantics of every resource: create, get, list, update, patch,
//! delete and deletecollection, with the status and scale subresources,
//! optimistic concurrency, finalizers, and Service IP allocation.
//!
//! Objects are handled as JSON values. Each is stored in its storage version
//! without `metadata.resourceVersion`; the store's mod revision becomes the
//! resourceVersion on the way out, as with etcd in Kubernetes.

use crate::request::{Reply, Request, Wants};
use crate::state::ApiState;
use crate::status::ApiError;
use bytes::Bytes;
use chrono::{SecondsFormat, Utc};
use mast_api::defaults;
use mast_api::registry::Resource;
use mast_api::selectors::{FieldSelector, LabelSelector};
use mast_api::validation::{self, FieldError};
use mast_store::{object_key, resource_prefix, KeyValue, RangeRequest, StoreError};
use serde_json::{json, Value};

/// Largest request body accepted, as in Kubernetes.
pub const MAX_BODY: usize = 3 * 1024 * 1024;

pub type ApiResult<T> = Result<T, ApiError>;

/// A request addressed to one resource (and maybe one object).
#[derive(Debug, Clone)]
pub struct Target {
    pub res: Resource,
    pub ns: Option<String>,
    pub name: Option<String>,
    pub sub: Option<String>,
}

impl Target {
    pub fn key(&self, name: &str) -> String {
        object_key(&self.res.storage, self.ns.as_deref(), name)
    }
    pub fn prefix(&self) -> String {
        resource_prefix(&self.res.storage, self.ns.as_deref())
    }
}

pub fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Decode a stored value into the object clients see.
pub fn from_stored(res: &Resource, kv: &KeyValue) -> ApiResult<Value> {
    let mut v: Value = serde_json::from_slice(&kv.value)
        .map_err(|e| ApiError::internal(format!("stored object {} is corrupt: {e}", kv.key)))?;
    v["metadata"]["resourceVersion"] = json!(kv.mod_revision.to_string());
    to_request_version(res, &mut v);
    Ok(v)
}

/// Encode an object for the store: without `resourceVersion` (the store's
/// mod revision is the version), and with `apiVersion`, `kind`, `metadata`
/// first, so that [`splice_resource_version`] can serve it without parsing.
fn to_stored(v: &Value) -> Bytes {
    let mut out = serde_json::Map::new();
    if let Some(m) = v.as_object() {
        for k in ["apiVersion", "kind", "metadata"] {
            if let Some(x) = m.get(k) {
                out.insert(k.into(), x.clone());
            }
        }
        for (k, x) in m {
            if !out.contains_key(k) {
                out.insert(k.clone(), x.clone());
            }
        }
    }
    if let Some(m) = out.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
        // Go's `omitempty`: empty metadata maps and lists are not kept.
        for f in [
            "labels",
            "annotations",
            "finalizers",
            "ownerReferences",
            "managedFields",
        ] {
            let empty = match m.get(f) {
                Some(Value::Object(o)) => o.is_empty(),
                Some(Value::Array(a)) => a.is_empty(),
                Some(Value::Null) => true,
                _ => false,
            };
            if empty {
                m.remove(f);
            }
        }
    }
    Bytes::from(serde_json::to_vec(&Value::Object(out)).unwrap_or_default())
}

/// Read a JSON string (without escapes) at the start of `b`; return the rest.
fn plain_string(b: &[u8]) -> Option<&[u8]> {
    let b = b.strip_prefix(b"\"")?;
    let end = b.iter().position(|c| *c == b'"' || *c == b'\\')?;
    (b[end] == b'"').then(|| &b[end + 1..])
}

/// The stored object with `"resourceVersion":"<rv>"` added to its metadata,
/// straight from the bytes [`to_stored`] wrote; `None` if they are not in
/// that canonical shape (the caller then parses).
pub fn splice_resource_version(stored: &[u8], rv: i64) -> Option<Vec<u8>> {
    let rest = stored.strip_prefix(b"{\"apiVersion\":")?;
    let rest = plain_string(rest)?.strip_prefix(b",\"kind\":")?;
    let rest = plain_string(rest)?.strip_prefix(b",\"metadata\":{")?;
    let at = stored.len() - rest.len();
    let mut out = Vec::with_capacity(stored.len() + 32);
    out.extend_from_slice(&stored[..at]);
    out.extend_from_slice(format!("\"resourceVersion\":\"{rv}\"").as_bytes());
    if rest.first() != Some(&b'}') {
        out.push(b',');
    }
    out.extend_from_slice(rest);
    Some(out)
}

/// Convert a stored object to the version the request addressed.
pub fn to_request_version(res: &Resource, v: &mut Value) {
    if res.storage_version.is_some() {
        if res.group == mast_api::registry::LEGACY_INGRESS_GROUP {
            defaults::ingress_v1_to_v1beta1(v);
        } else {
            v["apiVersion"] = json!(res.api_version());
        }
    }
}

/// Convert a request object to the version it is stored in (a no-op for an
/// object already in that version).
fn to_storage_version(res: &Resource, v: &mut Value) {
    if let Some((g, ver)) = &res.storage_version {
        if v["apiVersion"].as_str() == Some(&format!("{g}/{ver}")) {
            return;
        }
        if res.group == mast_api::registry::LEGACY_INGRESS_GROUP {
            defaults::ingress_v1beta1_to_v1(v);
        } else {
            v["apiVersion"] = json!(format!("{g}/{ver}"));
        }
    }
}

fn storage_kind(res: &Resource) -> (String, String) {
    match &res.storage_version {
        Some((g, _)) => (g.clone(), res.kind.clone()),
        None => (res.group.clone(), res.kind.clone()),
    }
}

/// Parse a request body (JSON, YAML, or Kubernetes protobuf for built-in
/// types) into an object.
pub fn decode_body_for(
    res: Option<&Resource>,
    state: Option<&ApiState>,
    req: &Request,
) -> ApiResult<Value> {
    let ct = req.content_type.split(';').next().unwrap_or("").trim();
    if ct == "application/vnd.kubernetes.protobuf" {
        if req.body.len() > MAX_BODY {
            return Err(ApiError::too_large());
        }
        let (Some(res), Some(state)) = (res, state) else {
            return Err(ApiError::unsupported_media_type(ct));
        };
        if res.custom.is_some() || res.storage_version.is_some() {
            return Err(ApiError::unsupported_media_type(&format!(
                "{ct} (not available for {})",
                res.group_resource()
            )));
        }
        return mast_api::proto::decode_body(&state.registry().schemas, &res.definition, &req.body)
            .map_err(|e| ApiError::bad_request(e.to_string()));
    }
    decode_body(req)
}

/// Parse a body that holds an object of OpenAPI definition `def`.
pub fn decode_body_def(state: &ApiState, def: &str, req: &Request) -> ApiResult<Value> {
    let ct = req.content_type.split(';').next().unwrap_or("").trim();
    if ct == "application/vnd.kubernetes.protobuf" {
        return mast_api::proto::decode_body(&state.registry().schemas, def, &req.body)
            .map_err(|e| ApiError::bad_request(e.to_string()));
    }
    decode_body(req)
}

/// Parse a request body (JSON or YAML) into an object.
pub fn decode_body(req: &Request) -> ApiResult<Value> {
    if req.body.len() > MAX_BODY {
        return Err(ApiError::too_large());
    }
    let ct = req.content_type.split(';').next().unwrap_or("").trim();
    let v: Value = match ct {
        "" | "application/json" | "*/*" => serde_json::from_slice(&req.body)
            .map_err(|e| ApiError::bad_request(format!("error decoding JSON body: {e}")))?,
        "application/yaml" | "application/apply-patch+yaml" | "text/yaml" => {
            serde_yaml_ng::from_slice(&req.body)
                .map_err(|e| ApiError::bad_request(format!("error decoding YAML body: {e}")))?
        }
        "application/merge-patch+json"
        | "application/strategic-merge-patch+json"
        | "application/json-patch+json" => serde_json::from_slice(&req.body)
            .map_err(|e| ApiError::bad_request(format!("error decoding patch body: {e}")))?,
        other => return Err(ApiError::unsupported_media_type(other)),
    };
    Ok(v)
}

fn check_type(res: &Resource, obj: &Value) -> ApiResult<()> {
    if !obj.is_object() {
        return Err(ApiError::bad_request(format!(
            "the body of the request must be a JSON or YAML object for {}",
            res.kind
        )));
    }
    if let Some(av) = obj.get("apiVersion").and_then(Value::as_str) {
        if av != res.api_version() {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({av}) does not match the expected API version ({})",
                res.api_version()
            )));
        }
    }
    if let Some(k) = obj.get("kind").and_then(Value::as_str) {
        if k != res.kind {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({}) of {}",
                res.kind,
                res.group_resource()
            )));
        }
    }
    if !obj["metadata"].is_object() && !obj["metadata"].is_null() {
        return Err(ApiError::bad_request("metadata must be an object"));
    }
    Ok(())
}

/// Check `obj` against its schema: unknown fields per `fieldValidation`
/// (Strict fails, Warn warns, Ignore drops), plus CRD structural rules.
/// Unknown fields are pruned either way, as Kubernetes' decoder does.
fn check_schema(
    state: &ApiState,
    res: &Resource,
    obj: &mut Value,
    req: &Request,
    warnings: &mut Vec<String>,
) -> ApiResult<()> {
    let reg = state.registry();
    let schema = reg.schema_of(res);
    let custom = res.custom.is_some();
    let result = reg.schemas.walk(obj, &schema, custom);
    let mode = req.param("fieldValidation").unwrap_or("Warn");
    if !result.unknown.is_empty() {
        match mode {
            "Strict" => {
                let list: Vec<String> = result
                    .unknown
                    .iter()
                    .map(|f| format!("unknown field {f:?}"))
                    .collect();
                let msg = if custom {
                    format!(
                        "{}.{} {:?}: strict decoding error: {}",
                        res.kind,
                        res.group,
                        obj["metadata"]["name"].as_str().unwrap_or_default(),
                        list.join(", ")
                    )
                } else {
                    format!(
                        "{} in version {:?} cannot be handled as a {}: strict decoding error: {}",
                        res.kind,
                        res.version,
                        res.kind,
                        list.join(", ")
                    )
                };
                return Err(ApiError::bad_request(msg));
            }
            "Ignore" => {}
            _ => warnings.extend(
                result
                    .unknown
                    .iter()
                    .map(|f| format!("unknown field {f:?}")),
            ),
        }
        reg.schemas.prune(obj, &schema, custom);
    }
    if !result.errors.is_empty() {
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if custom {
            return Err(ApiError::invalid(
                &res.kind,
                &res.group,
                &name,
                &result.errors,
            ));
        }
        let msgs: Vec<String> = result.errors.iter().map(|e| e.detail.clone()).collect();
        return Err(ApiError::bad_request(format!(
            "{} in version {:?} cannot be handled as a {}: {}",
            res.kind,
            res.version,
            res.kind,
            msgs.join("; ")
        )));
    }
    Ok(())
}

fn random_suffix() -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..5)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect()
}

/// The namespace a new object goes into, refused if it does not exist or
/// is terminating; `Null` for cluster-scoped objects.
async fn check_namespace(state: &ApiState, t: &Target, name: &str) -> ApiResult<Value> {
    let Some(ns) = &t.ns else {
        return Ok(Value::Null);
    };
    match state.store.get(&object_key("namespaces", None, ns)).await? {
        None => Err(ApiError::not_found("namespaces", "", ns)),
        Some(kv) => {
            let v: Value = serde_json::from_slice(&kv.value).unwrap_or_default();
            if !v["metadata"]["deletionTimestamp"].is_null() {
                return Err(ApiError::forbidden(format!(
                    "{} {name:?} is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                    t.res.group_resource()
                )));
            }
            Ok(v)
        }
    }
}

fn validate(res: &Resource, new: &Value, old: Option<&Value>) -> ApiResult<()> {
    let (group, kind) = storage_kind(res);
    let errs = if res.custom.is_some() {
        let mut e = vec![];
        validation::validate_metadata(new, validation::dns1123_subdomain, &mut e);
        e
    } else {
        match old {
            Some(old) => validation::validate_update(&group, &kind, new, old),
            None => validation::validate_create(&group, &kind, new),
        }
    };
    if errs.is_empty() {
        Ok(())
    } else {
        let name = new["metadata"]["name"].as_str().unwrap_or_default();
        Err(ApiError::invalid(&kind, &group, name, &errs))
    }
}

fn has_spec_like(v: &Value) -> bool {
    v.get("spec").is_some()
}

/// Set server-owned metadata on a new object.
fn init_metadata(obj: &mut Value, t: &Target) {
    let m = &mut obj["metadata"];
    m["uid"] = json!(uuid::Uuid::new_v4().to_string());
    m["creationTimestamp"] = json!(now());
    if let Some(ns) = &t.ns {
        m["namespace"] = json!(ns);
    }
    if let Some(mm) = m.as_object_mut() {
        for f in [
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
        ] {
            mm.remove(f);
        }
    }
    if has_spec_like(obj) {
        obj["metadata"]["generation"] = json!(1);
    }
}

fn record_manager(obj: &mut Value, manager: &str, operation: &str, api_version: &str) {
    let entry = json!({"manager": manager, "operation": operation, "apiVersion": api_version,
        "time": now(), "fieldsType": "FieldsV1", "fieldsV1": crate::fields::fields_of(obj)});
    let list = obj["metadata"]["managedFields"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut list: Vec<Value> = list
        .into_iter()
        .filter(|e| !(e["manager"] == manager && e["operation"] == operation))
        .collect();
    list.push(entry);
    obj["metadata"]["managedFields"] = Value::Array(list);
}

/// Create an object from a request body.
pub async fn create(state: &ApiState, t: &Target, req: &Request) -> ApiResult<Reply> {
    let mut obj = decode_body_for(Some(&t.res), Some(state), req)?;
    check_type(&t.res, &obj)?;
    if let (Some(ns), Some(body_ns)) = (&t.ns, obj["metadata"]["namespace"].as_str()) {
        if !body_ns.is_empty() && body_ns != ns {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
    }
    if obj["apiVersion"].is_null() {
        obj["apiVersion"] = json!(t.res.api_version());
    }
    if obj["kind"].is_null() {
        obj["kind"] = json!(t.res.kind);
    }
    let mut warnings = vec![];
    to_storage_version(&t.res, &mut obj);
    check_schema(state, &t.res, &mut obj, req, &mut warnings)?;
    let manager = req.manager();
    let reply = create_object(
        state,
        t,
        obj,
        &manager,
        "Update",
        req.param("dryRun").is_some(),
    )
    .await?;
    Ok(reply.with_warnings(warnings))
}

/// The create path shared by POST and server-side apply.
pub async fn create_object(
    state: &ApiState,
    t: &Target,
    mut obj: Value,
    manager: &str,
    operation: &str,
    dry_run: bool,
) -> ApiResult<Reply> {
    to_storage_version(&t.res, &mut obj);
    let (group, kind) = storage_kind(&t.res);
    let generate = obj["metadata"]["generateName"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let explicit = obj["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let display_name = if explicit.is_empty() {
        generate.clone()
    } else {
        explicit.clone()
    };
    let namespace = check_namespace(state, t, &display_name).await?;
    init_metadata(&mut obj, t);
    // Mutating admission: sidecar injection.
    crate::hooks::mutate(state, t, &mut obj, &namespace);
    // Status is the server's to write; a new object starts without one
    // (Nodes excepted: their agent registers them with status).
    if t.res.has_subresource("status") && !(t.res.group.is_empty() && t.res.kind == "Node") {
        if let Some(m) = obj.as_object_mut() {
            m.remove("status");
        }
    }
    if t.res.custom.is_none() {
        defaults::apply_defaults(&group, &kind, &mut obj);
    }
    if explicit.is_empty() && !generate.is_empty() {
        obj["metadata"]["name"] = json!(format!("{generate}{}", random_suffix()));
    }
    validate(&t.res, &obj, None)?;
    record_manager(&mut obj, manager, operation, &t.res.api_version());
    let allocated = crate::hooks::before_create(state, t, &mut obj).await?;
    if dry_run {
        allocated.release(state);
        to_request_version(&t.res, &mut obj);
        return Ok(Reply::json(201, obj));
    }
    for attempt in 0..5 {
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        match state.store.create(&t.key(&name), to_stored(&obj)).await {
            Ok(kv) => {
                let mut out = obj;
                out["metadata"]["resourceVersion"] = json!(kv.mod_revision.to_string());
                crate::hooks::after_write(state, t, &out).await;
                to_request_version(&t.res, &mut out);
                return Ok(Reply::json(201, out));
            }
            Err(StoreError::AlreadyExists { .. }) if explicit.is_empty() && attempt < 4 => {
                obj["metadata"]["name"] = json!(format!("{generate}{}", random_suffix()));
            }
            Err(StoreError::AlreadyExists { .. }) => {
                allocated.release(state);
                return Err(ApiError::already_exists(&t.res.plural, &t.res.group, &name));
            }
            Err(e) => {
                allocated.release(state);
                return Err(e.into());
            }
        }
    }
    allocated.release(state);
    Err(ApiError::internal(
        "could not generate a unique name; try again",
    ))
}

/// Read one object.
pub async fn get(state: &ApiState, t: &Target, name: &str) -> ApiResult<(Value, KeyValue)> {
    match state.store.get(&t.key(name)).await? {
        Some(kv) => Ok((from_stored(&t.res, &kv)?, kv)),
        None => Err(ApiError::not_found(&t.res.plural, &t.res.group, name)),
    }
}

/// Filters of a list or watch request.
#[derive(Debug, Default, Clone)]
pub struct Filters {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

const COMMON_FIELDS: &[&str] = &["metadata.name", "metadata.namespace"];

fn allowed_fields(res: &Resource) -> &'static [&'static str] {
    match (res.group.as_str(), res.kind.as_str()) {
        ("", "Pod") => &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
        ("", "Event") => &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
        ("", "Secret") => &["type"],
        ("", "Node") => &["spec.unschedulable"],
        ("", "Namespace") => &["status.phase"],
        ("apps", "ReplicaSet") => &["status.replicas"],
        ("", "Service") => &["spec.clusterIP", "spec.type"],
        _ => &[],
    }
}

impl Filters {
    pub fn from_request(res: &Resource, req: &Request) -> ApiResult<Self> {
        let labels = LabelSelector::parse(req.param("labelSelector").unwrap_or_default())
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let fields = FieldSelector::parse(req.param("fieldSelector").unwrap_or_default())
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        for f in fields.fields() {
            if !COMMON_FIELDS.contains(&f) && !allowed_fields(res).contains(&f) {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {f}"
                )));
            }
        }
        Ok(Self { labels, fields })
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.labels.matches(&obj["metadata"]["labels"]) && self.fields.matches(obj)
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.fields.fields().next().is_none()
    }
}

/// `?limit=`, capped so no client can ask for an absurd page size.
fn list_limit(req: &Request) -> usize {
    req.param("limit")
        .and_then(|l| l.parse::<u64>().ok())
        .map(|l| l.min(1_000_000) as usize)
        .unwrap_or(0)
}

fn encode_continue(rev: i64, key: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(json!({"v": "meta.k8s.io/v1", "rv": rev, "start": key}).to_string())
}

fn decode_continue(token: &str) -> ApiResult<(i64, String)> {
    use base64::Engine;
    let bad = || {
        ApiError::bad_request(
            "continue key is not valid: the token was not issued by this server or is corrupt",
        )
    };
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.trim_end_matches('='))
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    Ok((
        v["rv"].as_i64().ok_or_else(bad)?,
        v["start"].as_str().ok_or_else(bad)?.to_owned(),
    ))
}

/// The objects of a list request, one page of them, and how to continue.
pub struct Page {
    pub items: Vec<Value>,
    pub revision: i64,
    pub continue_token: Option<String>,
    pub remaining: Option<i64>,
}

/// List objects under the target prefix, filtered and paginated.
pub async fn list_page(
    state: &ApiState,
    t: &Target,
    req: &Request,
    filters: &Filters,
) -> ApiResult<Page> {
    let limit = list_limit(req);
    let (mut revision, mut start_after) = match req.param("continue") {
        Some(tok) => {
            let (rev, key) = decode_continue(tok)?;
            (Some(rev), Some(key))
        }
        None => (None, None),
    };
    if revision.is_none() && req.param("resourceVersionMatch") == Some("Exact") {
        revision = req.param("resourceVersion").and_then(|r| r.parse().ok());
    }
    // A narrowed read when the field selector names one object.
    let name_eq = filters.fields.equals("metadata.name").map(str::to_owned);
    let ns_eq = filters
        .fields
        .equals("metadata.namespace")
        .map(str::to_owned);
    let mut target = t.clone();
    if target.ns.is_none() && t.res.namespaced {
        target.ns = ns_eq;
    }
    let prefix = target.prefix();
    let mut items = vec![];
    let chunk = if limit == 0 {
        0
    } else {
        limit.saturating_mul(2).max(50)
    };
    loop {
        let page = match &name_eq {
            Some(name) if revision.is_none() && (target.ns.is_some() || !t.res.namespaced) => {
                // Take the revision before reading: the object read is then at
                // least that new, and a watch from this revision misses
                // nothing that happens after the read (a delete landing
                // between the two would otherwise be lost to the watcher).
                let rev = state.store.revision();
                let kvs: Vec<KeyValue> = state.store.get(&target.key(name)).await?.into_iter().collect();
                mast_store::RangeResult { kvs, more: false, remaining: 0, revision: rev }
            }
            _ => {
                state
                    .store
                    .range(RangeRequest { prefix: prefix.clone(), start_after: start_after.clone(), limit: chunk, revision })
                    .await
                    .map_err(|e| match e {
                        StoreError::Compacted { .. } if req.param("continue").is_some() => ApiError::gone(
                            "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                        ),
                        other => other.into(),
                    })?
            }
        };
        revision.get_or_insert(page.revision);
        let mut last_key = None;
        for kv in &page.kvs {
            last_key = Some(kv.key.clone());
            let obj = from_stored(&t.res, kv)?;
            if filters.matches(&obj) {
                items.push(obj);
                if limit != 0 && items.len() == limit {
                    let more = page.more
                        || kv.key != page.kvs.last().map(|k| k.key.clone()).unwrap_or_default();
                    let rev = revision.unwrap_or(page.revision);
                    return Ok(Page {
                        items,
                        revision: rev,
                        continue_token: more.then(|| encode_continue(rev, &kv.key)),
                        remaining: None,
                    });
                }
            }
        }
        if !page.more {
            break;
        }
        start_after = last_key;
    }
    Ok(Page {
        items,
        revision: revision.unwrap_or_else(|| state.store.revision()),
        continue_token: None,
        remaining: None,
    })
}

/// GET on a collection.
pub async fn list(state: &ApiState, t: &Target, req: &Request) -> ApiResult<Reply> {
    let filters = Filters::from_request(&t.res, req)?;
    if filters.is_empty() && t.res.storage_version.is_none() && req.wants() == Wants::Object {
        return list_raw(state, t, req).await;
    }
    let page = list_page(state, t, req, &filters).await?;
    let rv = page.revision.to_string();
    match req.wants() {
        Wants::Table => {
            let include = req.param("includeObject").unwrap_or("Metadata");
            Ok(Reply::json(
                200,
                mast_api::table::table(
                    &t.res,
                    &page.items,
                    include,
                    &rv,
                    page.continue_token.as_deref(),
                ),
            ))
        }
        Wants::Metadata => {
            let items: Vec<Value> = page
                .items
                .iter()
                .map(|o| json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]}))
                .collect();
            Ok(Reply::json(
                200,
                json!({"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1",
                "metadata": list_meta(&rv, &page.continue_token, page.remaining), "items": items}),
            ))
        }
        _ => Ok(Reply::json(
            200,
            json!({
                "kind": format!("{}List", t.res.kind),
                "apiVersion": t.res.api_version(),
                "metadata": list_meta(&rv, &page.continue_token, page.remaining),
                "items": page.items,
            }),
        )),
    }
}

/// An unfiltered list served from the stored bytes without parsing them:
/// the common case of `kubectl get -o json`, client-go reflectors and
/// informers' initial lists.
async fn list_raw(state: &ApiState, t: &Target, req: &Request) -> ApiResult<Reply> {
    let limit = list_limit(req);
    let (revision, start_after) = match req.param("continue") {
        Some(tok) => {
            let (rev, key) = decode_continue(tok)?;
            (Some(rev), Some(key))
        }
        None if req.param("resourceVersionMatch") == Some("Exact") => (
            req.param("resourceVersion").and_then(|r| r.parse().ok()),
            None,
        ),
        None => (None, None),
    };
    let page = state
        .store
        .range(RangeRequest { prefix: t.prefix(), start_after, limit, revision })
        .await
        .map_err(|e| match e {
            StoreError::Compacted { .. } if req.param("continue").is_some() => ApiError::gone(
                "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
            ),
            other => other.into(),
        })?;
    let rev = revision.unwrap_or(page.revision);
    let cont = if page.more {
        page.kvs.last().map(|kv| encode_continue(rev, &kv.key))
    } else {
        None
    };
    let remaining = page.more.then_some(page.remaining);
    let meta = list_meta(&rev.to_string(), &cont, remaining);
    let mut body =
        Vec::with_capacity(page.kvs.iter().map(|kv| kv.value.len() + 40).sum::<usize>() + 256);
    body.extend_from_slice(
        format!(
            "{{\"kind\":{},\"apiVersion\":{},\"metadata\":{},\"items\":[",
            json!(format!("{}List", t.res.kind)),
            json!(t.res.api_version()),
            meta
        )
        .as_bytes(),
    );
    for (i, kv) in page.kvs.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        match splice_resource_version(&kv.value, kv.mod_revision) {
            Some(b) => body.extend_from_slice(&b),
            None => body.extend_from_slice(
                &serde_json::to_vec(&from_stored(&t.res, kv)?).unwrap_or_default(),
            ),
        }
    }
    body.extend_from_slice(b"]}");
    Ok(Reply::Raw {
        code: 200,
        content_type: "application/json".into(),
        body: Bytes::from(body),
    })
}

fn list_meta(rv: &str, cont: &Option<String>, remaining: Option<i64>) -> Value {
    let mut m = json!({"resourceVersion": rv});
    if let Some(c) = cont {
        m["continue"] = json!(c);
    }
    if let Some(r) = remaining {
        m["remainingItemCount"] = json!(r);
    }
    m
}

/// One object in the representation the client asked for.
pub fn render_one(t: &Target, req: &Request, obj: Value, code: u16) -> Reply {
    match req.wants() {
        Wants::Table => {
            let include = req.param("includeObject").unwrap_or("Metadata");
            let rv = obj["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            Reply::json(
                code,
                mast_api::table::table(&t.res, std::slice::from_ref(&obj), include, &rv, None),
            )
        }
        Wants::Metadata => Reply::json(
            code,
            json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj["metadata"]}),
        ),
        _ => Reply::json(code, obj),
    }
}

/// Which part of an object a write addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Main,
    Status,
}

/// How an update is written.
#[derive(Debug, Clone, Copy)]
pub struct WriteOpts<'a> {
    pub part: Part,
    /// `(manager, operation)` to record in managedFields; `None` when the
    /// caller (server-side apply) has set managedFields itself.
    pub manager: Option<(&'a str, &'a str)>,
    pub dry_run: bool,
}

/// Merge a requested new state with the current one according to the
/// addressed part, then validate and store it with compare-and-swap.
pub async fn write_update(
    state: &ApiState,
    t: &Target,
    old: &Value,
    old_kv: &KeyValue,
    mut new: Value,
    opts: WriteOpts<'_>,
) -> ApiResult<Value> {
    let WriteOpts {
        part,
        manager,
        dry_run,
    } = opts;
    let name = old["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let mut old_s = old.clone();
    to_storage_version(&t.res, &mut old_s);
    to_storage_version(&t.res, &mut new);
    if new["metadata"]["name"].as_str().is_some_and(|n| n != name) {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({}) does not match the name on the URL ({name})",
            new["metadata"]["name"].as_str().unwrap_or_default()
        )));
    }
    // Optimistic concurrency: a stale resourceVersion is a conflict.
    if let Some(rv) = new["metadata"]["resourceVersion"]
        .as_str()
        .filter(|s| !s.is_empty())
    {
        if rv != old_kv.mod_revision.to_string() {
            return Err(ApiError::conflict(&t.res.plural, &t.res.group, &name));
        }
    }
    let has_status = t.res.has_subresource("status");
    let mut merged = match part {
        Part::Status => {
            let mut m = old_s.clone();
            m["status"] = new["status"].clone();
            m
        }
        Part::Main => {
            if has_status {
                new["status"] = old_s["status"].clone();
                if new["status"].is_null() {
                    if let Some(o) = new.as_object_mut() {
                        o.remove("status");
                    }
                }
            }
            new
        }
    };
    // Server-owned metadata cannot be changed by clients.
    for f in [
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "generation",
        "namespace",
    ] {
        let ov = old_s["metadata"][f].clone();
        if ov.is_null() {
            if let Some(m) = merged["metadata"].as_object_mut() {
                m.remove(f);
            }
        } else {
            merged["metadata"][f] = ov;
        }
    }
    merged["metadata"]["name"] = json!(name);
    let (group, kind) = storage_kind(&t.res);
    if t.res.custom.is_none() && part == Part::Main {
        defaults::apply_defaults(&group, &kind, &mut merged);
    }
    crate::hooks::before_update(state, t, &mut merged, &old_s)?;
    // Spec changes bump the generation.
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(m) = v.as_object_mut() {
            m.remove("metadata");
            m.remove("status");
        }
        v
    };
    if !old_s["metadata"]["generation"].is_null() && strip(&merged) != strip(&old_s) {
        merged["metadata"]["generation"] =
            json!(old_s["metadata"]["generation"].as_i64().unwrap_or(0) + 1);
    }
    validate(&t.res, &merged, Some(&old_s))?;
    if let Some((manager, operation)) = manager {
        record_manager(&mut merged, manager, operation, &t.res.api_version());
    }
    // Nothing changed: answer with the current object without a write.
    let mut cmp_new = merged.clone();
    let mut cmp_old = old_s.clone();
    for v in [&mut cmp_new, &mut cmp_old] {
        if let Some(m) = v["metadata"].as_object_mut() {
            m.remove("resourceVersion");
            m.remove("managedFields");
        }
    }
    if cmp_new == cmp_old || dry_run {
        let mut out = if dry_run { merged } else { old_s };
        out["metadata"]["resourceVersion"] = json!(old_kv.mod_revision.to_string());
        to_request_version(&t.res, &mut out);
        return Ok(out);
    }
    // A terminating object whose last finalizer went is deleted now.
    let finalizers_done = merged["metadata"]["finalizers"]
        .as_array()
        .is_none_or(|f| f.is_empty());
    let graceful_pod = kind == "Pod"
        && merged["metadata"]["deletionGracePeriodSeconds"]
            .as_i64()
            .unwrap_or(0)
            > 0;
    // A namespace also waits for its spec.finalizers (the namespace
    // controller's `kubernetes`, removed through `finalize`).
    let namespace_done = kind != "Namespace"
        || merged["spec"]["finalizers"]
            .as_array()
            .is_none_or(|f| f.is_empty());
    if !merged["metadata"]["deletionTimestamp"].is_null()
        && finalizers_done
        && namespace_done
        && !graceful_pod
    {
        let kv = match state
            .store
            .delete(&old_kv.key, Some(old_kv.mod_revision))
            .await
        {
            Ok(kv) => kv,
            Err(StoreError::Conflict { .. }) => {
                return Err(ApiError::conflict(&t.res.plural, &t.res.group, &name))
            }
            Err(StoreError::NotFound { .. }) => {
                return Err(ApiError::not_found(&t.res.plural, &t.res.group, &name))
            }
            Err(e) => return Err(e.into()),
        };
        crate::hooks::after_delete(state, t, &merged).await;
        merged["metadata"]["resourceVersion"] = json!(kv.mod_revision.to_string());
        to_request_version(&t.res, &mut merged);
        return Ok(merged);
    }
    match state
        .store
        .update(&old_kv.key, to_stored(&merged), old_kv.mod_revision)
        .await
    {
        Ok(kv) => {
            merged["metadata"]["resourceVersion"] = json!(kv.mod_revision.to_string());
            crate::hooks::after_write(state, t, &merged).await;
            to_request_version(&t.res, &mut merged);
            Ok(merged)
        }
        Err(StoreError::Conflict { .. }) => {
            Err(ApiError::conflict(&t.res.plural, &t.res.group, &name))
        }
        Err(StoreError::NotFound { .. }) => {
            Err(ApiError::not_found(&t.res.plural, &t.res.group, &name))
        }
        Err(e) => Err(e.into()),
    }
}

/// `PUT namespaces/{name}/finalize`: replace only `spec.finalizers`, as the
/// namespace controller does once the namespace is empty. A terminating
/// namespace left with no finalizers is then removed.
pub async fn finalize_namespace(
    state: &ApiState,
    t: &Target,
    name: &str,
    req: &Request,
) -> ApiResult<Reply> {
    let body = decode_body_def(state, "io.k8s.api.core.v1.Namespace", req)?;
    let (old, kv) = get(state, t, name).await?;
    let mut new = old.clone();
    match body["spec"]["finalizers"].as_array() {
        Some(f) => new["spec"]["finalizers"] = json!(f),
        None => {
            if let Some(spec) = new["spec"].as_object_mut() {
                spec.remove("finalizers");
            }
        }
    }
    let out = write_update(
        state,
        t,
        &old,
        &kv,
        new,
        WriteOpts {
            part: Part::Main,
            manager: Some((&req.manager(), "Update")),
            dry_run: req.param("dryRun").is_some(),
        },
    )
    .await?;
    Ok(render_one(t, req, out, 200))
}

/// PUT on an object (or its status).
pub async fn update(
    state: &ApiState,
    t: &Target,
    name: &str,
    req: &Request,
    part: Part,
) -> ApiResult<Reply> {
    let mut new = decode_body(req)?;
    check_type(&t.res, &new)?;
    let mut warnings = vec![];
    to_storage_version(&t.res, &mut new);
    check_schema(state, &t.res, &mut new, req, &mut warnings)?;
    let (old, kv) = get(state, t, name).await?;
    let out = write_update(
        state,
        t,
        &old,
        &kv,
        new,
        WriteOpts {
            part,
            manager: Some((&req.manager(), "Update")),
            dry_run: req.param("dryRun").is_some(),
        },
    )
    .await?;
    Ok(render_one(t, req, out, 200).with_warnings(warnings))
}

/// PATCH on an object (or its status): JSON, merge, strategic or apply.
pub async fn patch(
    state: &ApiState,
    t: &Target,
    name: &str,
    req: &Request,
    part: Part,
) -> ApiResult<Reply> {
    let ct = req
        .content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_owned();
    let body = decode_body(req)?;
    if ct == "application/apply-patch+yaml" {
        return crate::apply::server_side_apply(state, t, name, req, body, part).await;
    }
    let reg = state.registry();
    let schema = reg.schema_of(&t.res);
    let mut warnings = vec![];
    for attempt in 0..8 {
        let (old, kv) = get(state, t, name).await?;
        let mut new = old.clone();
        match ct.as_str() {
            "application/json-patch+json" => mast_api::patch::json_patch(&mut new, &body)
                .map_err(|e| ApiError::unprocessable_patch(e.to_string()))?,
            "application/merge-patch+json" => mast_api::patch::merge_patch(&mut new, &body),
            "application/strategic-merge-patch+json" => {
                if t.res.custom.is_some() {
                    return Err(ApiError::unsupported_media_type(&format!(
                        "{ct}: strategic merge patch is not supported for custom resources; use --type=merge"
                    )));
                }
                if !body.is_object() {
                    return Err(ApiError::bad_request(
                        "a strategic merge patch must be a JSON object",
                    ));
                }
                mast_api::patch::strategic_merge(&reg.schemas, &mut new, &body, Some(&schema))
                    .map_err(|e| ApiError::unprocessable_patch(e.to_string()))?
            }
            other => return Err(ApiError::unsupported_media_type(other)),
        }
        check_type(&t.res, &new)?;
        // A patch that does not name a resourceVersion must not conflict.
        let rv_in_patch = body["metadata"]["resourceVersion"].as_str().is_some();
        if !rv_in_patch {
            new["metadata"]["resourceVersion"] = json!(kv.mod_revision.to_string());
        }
        warnings.clear();
        to_storage_version(&t.res, &mut new);
        check_schema(state, &t.res, &mut new, req, &mut warnings)?;
        match write_update(
            state,
            t,
            &old,
            &kv,
            new,
            WriteOpts {
                part,
                manager: Some((&req.manager(), "Update")),
                dry_run: req.param("dryRun").is_some(),
            },
        )
        .await
        {
            Err(e) if e.reason == "Conflict" && !rv_in_patch && attempt < 7 => continue,
            Err(e) => return Err(e),
            Ok(out) => return Ok(render_one(t, req, out, 200).with_warnings(warnings)),
        }
    }
    Err(ApiError::conflict(&t.res.plural, &t.res.group, name))
}

/// Options of a delete, from the body (DeleteOptions) or the query.
#[derive(Debug, Default, Clone)]
pub struct DeleteOpts {
    pub grace: Option<i64>,
    pub propagation: Option<String>,
    pub precondition_uid: Option<String>,
    pub precondition_rv: Option<String>,
    pub dry_run: bool,
}

impl DeleteOpts {
    pub fn from_request(req: &Request) -> ApiResult<Self> {
        let mut o = DeleteOpts {
            grace: req.param("gracePeriodSeconds").and_then(|g| g.parse().ok()),
            propagation: req.param("propagationPolicy").map(str::to_owned),
            dry_run: req.param("dryRun").is_some(),
            ..Default::default()
        };
        if !req.body.is_empty() {
            let b = decode_body(req)?;
            if let Some(g) = b["gracePeriodSeconds"].as_i64() {
                o.grace = Some(g);
            }
            if let Some(p) = b["propagationPolicy"].as_str() {
                o.propagation = Some(p.to_owned());
            }
            if b["orphanDependents"] == json!(true) {
                o.propagation = Some("Orphan".into());
            }
            o.precondition_uid = b["preconditions"]["uid"].as_str().map(str::to_owned);
            o.precondition_rv = b["preconditions"]["resourceVersion"]
                .as_str()
                .map(str::to_owned);
            if b["dryRun"].as_array().is_some_and(|d| !d.is_empty()) {
                o.dry_run = true;
            }
        }
        if let Some(p) = &o.propagation {
            if !["Orphan", "Background", "Foreground"].contains(&p.as_str()) {
                return Err(ApiError::invalid(
                    "DeleteOptions",
                    "",
                    "",
                    &[FieldError::not_supported(
                        "propagationPolicy",
                        &json!(p),
                        &[
                            "\"Foreground\"".into(),
                            "\"Background\"".into(),
                            "\"Orphan\"".into(),
                        ],
                    )],
                ));
            }
        }
        Ok(o)
    }
}

/// Delete one object, honouring finalizers, grace periods and propagation.
/// Returns the object as it was deleted (or as it now waits to be).
pub async fn delete_object(
    state: &ApiState,
    t: &Target,
    name: &str,
    opts: &DeleteOpts,
) -> ApiResult<(Value, bool)> {
    for _ in 0..8 {
        let (obj, kv) = get(state, t, name).await?;
        if let Some(uid) = &opts.precondition_uid {
            if obj["metadata"]["uid"].as_str() != Some(uid) {
                return Err(ApiError::conflict_message(format!(
                    "Operation cannot be fulfilled on {} {name:?}: Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    t.res.group_resource(), obj["metadata"]["uid"].as_str().unwrap_or_default()
                )));
            }
        }
        if let Some(rv) = &opts.precondition_rv {
            if *rv != kv.mod_revision.to_string() {
                return Err(ApiError::conflict_message(format!(
                    "Operation cannot be fulfilled on {} {name:?}: Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                    t.res.group_resource(), kv.mod_revision
                )));
            }
        }
        let mut next = obj.clone();
        to_storage_version(&t.res, &mut next);
        let mut finalizers: Vec<Value> = next["metadata"]["finalizers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let is_ns = t.res.group.is_empty() && t.res.kind == "Namespace";
        let already = !next["metadata"]["deletionTimestamp"].is_null();
        let add = |f: &str, list: &mut Vec<Value>| {
            if !list.iter().any(|x| x == f) {
                list.push(json!(f));
            }
        };
        match opts.propagation.as_deref() {
            Some("Foreground") if !already => add("foregroundDeletion", &mut finalizers),
            Some("Orphan") if !already => add("orphan", &mut finalizers),
            _ => {}
        }
        let grace = if t.res.kind == "Pod" && t.res.group.is_empty() {
            let default = next["spec"]["terminationGracePeriodSeconds"]
                .as_i64()
                .unwrap_or(30);
            let g = opts.grace.unwrap_or(default);
            // Pods never bound to a node have no kubelet to wait for.
            if next["spec"]["nodeName"].as_str().is_none_or(str::is_empty) {
                0
            } else {
                g.max(0)
            }
        } else {
            0
        };
        let graceful = grace > 0 && !already;
        if is_ns || !finalizers.is_empty() || graceful {
            if already && !graceful {
                return Ok((obj, false));
            }
            if !already {
                let at = Utc::now() + chrono::Duration::seconds(grace);
                next["metadata"]["deletionTimestamp"] =
                    json!(at.to_rfc3339_opts(SecondsFormat::Secs, true));
            }
            next["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
            next["metadata"]["finalizers"] = json!(finalizers);
            if finalizers.is_empty() {
                if let Some(m) = next["metadata"].as_object_mut() {
                    m.remove("finalizers");
                }
            }
            if is_ns {
                next["status"]["phase"] = json!("Terminating");
            }
            if opts.dry_run {
                return Ok((obj, false));
            }
            match state
                .store
                .update(&kv.key, to_stored(&next), kv.mod_revision)
                .await
            {
                Ok(kv2) => {
                    next["metadata"]["resourceVersion"] = json!(kv2.mod_revision.to_string());
                    crate::hooks::after_write(state, t, &next).await;
                    to_request_version(&t.res, &mut next);
                    return Ok((next, false));
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(StoreError::NotFound { .. }) => {
                    return Err(ApiError::not_found(&t.res.plural, &t.res.group, name))
                }
                Err(e) => return Err(e.into()),
            }
        }
        if opts.dry_run {
            return Ok((obj, true));
        }
        match state.store.delete(&kv.key, Some(kv.mod_revision)).await {
            Ok(_) => {
                crate::hooks::after_delete(state, t, &next).await;
                return Ok((obj, true));
            }
            Err(StoreError::Conflict { .. }) => continue,
            Err(StoreError::NotFound { .. }) => {
                return Err(ApiError::not_found(&t.res.plural, &t.res.group, name))
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::conflict(&t.res.plural, &t.res.group, name))
}

/// DELETE on an object.
pub async fn delete(state: &ApiState, t: &Target, name: &str, req: &Request) -> ApiResult<Reply> {
    let opts = DeleteOpts::from_request(req)?;
    let (obj, gone) = delete_object(state, t, name, &opts).await?;
    Ok(render_one(t, req, obj, if gone { 200 } else { 202 }))
}

/// DELETE on a collection.
pub async fn delete_collection(state: &ApiState, t: &Target, req: &Request) -> ApiResult<Reply> {
    let opts = DeleteOpts::from_request(req)?;
    let filters = Filters::from_request(&t.res, req)?;
    let mut list_req_items = vec![];
    let page = list_page(
        state,
        t,
        &Request {
            query: Default::default(),
            body: Bytes::new(),
            ..req.clone()
        },
        &filters,
    )
    .await?;
    for obj in page.items {
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let mut tt = t.clone();
        tt.ns = obj["metadata"]["namespace"]
            .as_str()
            .map(str::to_owned)
            .or(t.ns.clone());
        match delete_object(state, &tt, &name, &opts).await {
            Ok((o, _)) => list_req_items.push(o),
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Reply::json(
        200,
        json!({"kind": format!("{}List", t.res.kind), "apiVersion": t.res.api_version(),
            "metadata": {"resourceVersion": state.store.revision().to_string()}, "items": list_req_items}),
    ))
}

/// The Scale of a workload, as `autoscaling/v1`.
pub fn scale_of(t: &Target, obj: &Value) -> Value {
    let (spec_path, status_path, sel_path) = scale_paths(&t.res);
    let sel = mast_api::selectors::json_path(obj, &sel_path)
        .cloned()
        .unwrap_or(Value::Null);
    let selector = match &sel {
        Value::String(s) => s.clone(),
        Value::Object(_) => {
            let mut parts: Vec<String> = sel["matchLabels"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect();
            parts.sort();
            parts.join(",")
        }
        _ => String::new(),
    };
    json!({
        "kind": "Scale", "apiVersion": "autoscaling/v1",
        "metadata": {"name": obj["metadata"]["name"], "namespace": obj["metadata"]["namespace"],
            "uid": obj["metadata"]["uid"], "resourceVersion": obj["metadata"]["resourceVersion"],
            "creationTimestamp": obj["metadata"]["creationTimestamp"]},
        "spec": {"replicas": mast_api::selectors::json_path(obj, &spec_path).cloned().unwrap_or(json!(0))},
        "status": {"replicas": mast_api::selectors::json_path(obj, &status_path).cloned().unwrap_or(json!(0)), "selector": selector},
    })
}

fn scale_paths(res: &Resource) -> (String, String, String) {
    if let Some(scale) = res.custom.as_ref().and_then(|c| c.scale.clone()) {
        return (
            scale["specReplicasPath"]
                .as_str()
                .unwrap_or(".spec.replicas")
                .into(),
            scale["statusReplicasPath"]
                .as_str()
                .unwrap_or(".status.replicas")
                .into(),
            scale["labelSelectorPath"]
                .as_str()
                .unwrap_or(".status.selector")
                .into(),
        );
    }
    (
        ".spec.replicas".into(),
        ".status.replicas".into(),
        ".spec.selector".into(),
    )
}

fn set_path(obj: &mut Value, path: &str, v: Value) {
    let segs: Vec<&str> = path.trim_start_matches('.').split('.').collect();
    let mut cur = obj;
    for s in &segs[..segs.len() - 1] {
        if !cur[*s].is_object() {
            cur[*s] = json!({});
        }
        cur = &mut cur[*s];
    }
    cur[segs[segs.len() - 1]] = v;
}

/// GET, PUT or PATCH on the scale subresource.
pub async fn scale(state: &ApiState, t: &Target, name: &str, req: &Request) -> ApiResult<Reply> {
    if req.method == http::Method::GET {
        let (obj, _) = get(state, t, name).await?;
        return Ok(Reply::json(200, scale_of(t, &obj)));
    }
    let body = decode_body_def(state, "io.k8s.api.autoscaling.v1.Scale", req)?;
    for _ in 0..8 {
        let (obj, kv) = get(state, t, name).await?;
        let mut sc = scale_of(t, &obj);
        match req.method {
            http::Method::PUT => sc = body.clone(),
            _ => {
                let ct = req.content_type.split(';').next().unwrap_or("").trim();
                if ct == "application/json-patch+json" {
                    mast_api::patch::json_patch(&mut sc, &body)
                        .map_err(|e| ApiError::unprocessable_patch(e.to_string()))?;
                } else {
                    mast_api::patch::merge_patch(&mut sc, &body);
                }
            }
        }
        let replicas = sc["spec"]["replicas"].clone();
        if !replicas.is_i64() || replicas.as_i64().unwrap_or(-1) < 0 {
            return Err(ApiError::invalid(
                "Scale",
                "autoscaling",
                name,
                &[FieldError::invalid(
                    "spec.replicas",
                    &replicas,
                    "must be greater than or equal to 0",
                )],
            ));
        }
        if let Some(rv) = sc["metadata"]["resourceVersion"].as_str() {
            if rv != kv.mod_revision.to_string() && req.method == http::Method::PUT {
                return Err(ApiError::conflict(&t.res.plural, &t.res.group, name));
            }
        }
        let mut new = obj.clone();
        let (spec_path, _, _) = scale_paths(&t.res);
        set_path(&mut new, &spec_path, replicas);
        match write_update(
            state,
            t,
            &obj,
            &kv,
            new,
            WriteOpts {
                part: Part::Main,
                manager: Some((&req.manager(), "Update")),
                dry_run: req.param("dryRun").is_some(),
            },
        )
        .await
        {
            Err(e) if e.reason == "Conflict" => continue,
            Err(e) => return Err(e),
            Ok(out) => return Ok(Reply::json(200, scale_of(t, &out))),
        }
    }
    Err(ApiError::conflict(&t.res.plural, &t.res.group, name))
}

/// POST pods/<name>/binding (or a Binding object): assign a pod to a node.
pub async fn bind(state: &ApiState, t: &Target, pod_name: &str, req: &Request) -> ApiResult<Reply> {
    let b = decode_body_def(state, "io.k8s.api.core.v1.Binding", req)?;
    let node = b["target"]["name"]
        .as_str()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            ApiError::invalid(
                "Binding",
                "",
                pod_name,
                &[FieldError::required("target.name", "")],
            )
        })?;
    let mut pods = t.clone();
    pods.res = state
        .registry()
        .lookup("", "v1", "pods")
        .cloned()
        .ok_or_else(ApiError::path_not_found)?;
    for _ in 0..8 {
        let (pod, kv) = get(state, &pods, pod_name).await?;
        if let Some(cur) = pod["spec"]["nodeName"].as_str().filter(|s| !s.is_empty()) {
            return Err(ApiError::conflict_message(format!("Operation cannot be fulfilled on pods/binding {pod_name:?}: pod {pod_name} is already assigned to node {cur:?}")));
        }
        if !pod["metadata"]["deletionTimestamp"].is_null() {
            return Err(ApiError::conflict_message(format!("Operation cannot be fulfilled on pods/binding {pod_name:?}: pod {pod_name} is being deleted, cannot be assigned to a host")));
        }
        let mut new = pod.clone();
        new["spec"]["nodeName"] = json!(node);
        let mut conds: Vec<Value> = new["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        conds.retain(|c| c["type"] != "PodScheduled");
        conds.push(json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now()}));
        new["status"]["conditions"] = json!(conds);
        match state
            .store
            .update(&kv.key, to_stored(&new), kv.mod_revision)
            .await
        {
            Ok(_) => {
                return Ok(Reply::json(
                    201,
                    crate::status::success(json!({"name": pod_name, "kind": "pods"})),
                ))
            }
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::conflict(&pods.res.plural, "", pod_name))
}

#[cfg(test)]
mod splice_tests {
    use super::*;

    #[test]
    fn splice_matches_a_parsed_round_trip() {
        let obj = json!({"spec": {"template": {"metadata": {"labels": {"a": "b"}}}}, "kind": "Pod",
            "metadata": {"name": "x", "resourceVersion": "9"}, "apiVersion": "v1"});
        let stored = to_stored(&obj);
        let spliced = splice_resource_version(&stored, 42).unwrap();
        let v: Value = serde_json::from_slice(&spliced).unwrap();
        assert_eq!(v["metadata"]["resourceVersion"], "42");
        assert_eq!(v["metadata"]["name"], "x");
        assert_eq!(v["spec"]["template"]["metadata"]["labels"]["a"], "b");
        assert!(
            splice_resource_version(br#"{"kind":"Pod","apiVersion":"v1","metadata":{}}"#, 1)
                .is_none()
        );
        let empty =
            splice_resource_version(br#"{"apiVersion":"v1","kind":"X","metadata":{}}"#, 3).unwrap();
        assert_eq!(
            empty,
            br#"{"apiVersion":"v1","kind":"X","metadata":{"resourceVersion":"3"}}"#
        );
    }
}
