//! Applying patches: strategic merge (for built-in types), JSON merge
//! (RFC 7386) and JSON patch (RFC 6902).
//!
//! Strategic merge is Kubernetes' own format: lists with a merge key (such as
//! containers by `name`) merge item by item instead of being replaced, and
//! `$patch`, `$retainKeys`, `$deleteFromPrimitiveList/` and
//! `$setElementOrder/` directives steer the merge. The merge keys come from
//! the schema, so the same code serves every type.

use crate::schema::SchemaIndex;
use serde_json::{Map, Value};

/// Why a patch could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    #[error("the patch is not valid JSON: {0}")]
    Json(String),
    #[error("{0}")]
    Invalid(String),
}

/// Apply an RFC 7386 JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    json_patch::merge(target, patch);
}

/// Apply an RFC 6902 JSON patch.
pub fn json_patch(target: &mut Value, patch: &Value) -> Result<(), PatchError> {
    let p: json_patch::Patch =
        serde_json::from_value(patch.clone()).map_err(|e| PatchError::Json(e.to_string()))?;
    json_patch::patch(target, &p).map_err(|e| PatchError::Invalid(e.to_string()))
}

/// Apply a strategic merge patch to `target`, whose schema is `schema`
/// (`None` merges like a JSON merge patch, as for unknown types).
pub fn strategic_merge(
    idx: &SchemaIndex,
    target: &mut Value,
    patch: &Value,
    schema: Option<&Value>,
) -> Result<(), PatchError> {
    merge_value(idx, target, patch, schema.cloned().as_ref(), None)
}

fn definition_name(idx: &SchemaIndex, s: &Value) -> Option<String> {
    let mut cur = s;
    for _ in 0..4 {
        if let Some(r) = cur.get("$ref").and_then(Value::as_str) {
            return r.rsplit('/').next().map(str::to_owned);
        }
        match cur
            .get("allOf")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
        {
            Some([only]) => cur = only,
            _ => break,
        }
    }
    let _ = idx;
    None
}

fn merge_value(
    idx: &SchemaIndex,
    target: &mut Value,
    patch: &Value,
    schema: Option<&Value>,
    _field: Option<&str>,
) -> Result<(), PatchError> {
    let Value::Object(pm) = patch else {
        *target = patch.clone();
        return Ok(());
    };
    match pm.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            let mut m = pm.clone();
            m.remove("$patch");
            *target = Value::Object(m);
            return Ok(());
        }
        Some("delete") => {
            *target = Value::Object(Map::new());
            return Ok(());
        }
        Some(other) => {
            return Err(PatchError::Invalid(format!(
                "unknown patch type: {other:?} in map: {}",
                Value::Object(pm.clone())
            )))
        }
        None => {}
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let def = schema.and_then(|s| definition_name(idx, s));
    let resolved = schema.map(|s| idx.resolve(s).clone());
    let retain: Option<Vec<String>> = pm.get("$retainKeys").and_then(Value::as_array).map(|a| {
        a.iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    });
    for (k, v) in pm {
        if k == "$retainKeys" || k.starts_with("$setElementOrder/") {
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            let tm = target.as_object_mut().expect("target is an object");
            if let (Some(Value::Array(list)), Some(del)) = (tm.get_mut(field), v.as_array()) {
                list.retain(|x| !del.contains(x));
            }
            continue;
        }
        let tm = target.as_object_mut().expect("target is an object");
        if v.is_null() {
            tm.remove(k);
            continue;
        }
        let child_schema = resolved.as_ref().and_then(|s| idx.property(s, k)).cloned();
        let merge_key: Option<String> = def
            .as_deref()
            .and_then(|d| crate::openapi::patch_merge_key(d, k))
            .map(str::to_owned)
            .or_else(|| {
                // Custom types may declare the strategy in their schema.
                let s = child_schema.as_ref()?;
                (s.get("x-kubernetes-patch-strategy")?.as_str()? == "merge").then(|| {
                    s.get("x-kubernetes-patch-merge-key")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned()
                })
            });
        match (v, tm.get_mut(k)) {
            (Value::Object(_), Some(existing)) if existing.is_object() => {
                merge_value(idx, existing, v, child_schema.as_ref(), Some(k))?;
            }
            (Value::Array(items), Some(Value::Array(existing))) if merge_key.is_some() => {
                let item_schema = child_schema.as_ref().and_then(|s| idx.items(s)).cloned();
                merge_list(
                    idx,
                    existing,
                    items,
                    merge_key.as_deref().unwrap_or_default(),
                    item_schema.as_ref(),
                )?;
            }
            (Value::Object(_), _) => {
                let mut fresh = Value::Object(Map::new());
                merge_value(idx, &mut fresh, v, child_schema.as_ref(), Some(k))?;
                tm.insert(k.clone(), fresh);
            }
            (Value::Array(items), _) => {
                // A list with directives inside but nothing to merge into.
                let cleaned: Vec<Value> = items
                    .iter()
                    .filter(|i| i.get("$patch").and_then(Value::as_str) != Some("delete"))
                    .cloned()
                    .collect();
                tm.insert(k.clone(), Value::Array(cleaned));
            }
            _ => {
                tm.insert(k.clone(), v.clone());
            }
        }
    }
    if let (Some(keep), Some(tm)) = (retain, target.as_object_mut()) {
        tm.retain(|k, _| keep.contains(k));
    }
    Ok(())
}

fn merge_list(
    idx: &SchemaIndex,
    existing: &mut Vec<Value>,
    items: &[Value],
    key: &str,
    item_schema: Option<&Value>,
) -> Result<(), PatchError> {
    if items
        .iter()
        .any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        *existing = items
            .iter()
            .filter(|i| i.get("$patch").is_none())
            .cloned()
            .collect();
        return Ok(());
    }
    if key.is_empty() {
        // A set of primitives: add what is missing.
        for i in items {
            if !existing.contains(i) {
                existing.push(i.clone());
            }
        }
        return Ok(());
    }
    for item in items {
        let Some(kv) = item.get(key) else {
            return Err(PatchError::Invalid(format!(
                "map: {item} does not contain declared merge key: {key}"
            )));
        };
        let pos = existing.iter().position(|e| e.get(key) == Some(kv));
        if item.get("$patch").and_then(Value::as_str) == Some("delete") {
            if let Some(p) = pos {
                existing.remove(p);
            }
            continue;
        }
        match pos {
            Some(p) => merge_value(idx, &mut existing[p], item, item_schema, None)?,
            None => {
                let mut fresh = Value::Object(Map::new());
                merge_value(idx, &mut fresh, item, item_schema, None)?;
                existing.push(fresh);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn idx() -> SchemaIndex {
        SchemaIndex::new(crate::openapi::builtin_definitions(
            &crate::registry::builtin_resources(),
        ))
    }

    fn pod_schema() -> Value {
        json!({"$ref": "#/definitions/io.k8s.api.core.v1.Pod"})
    }

    #[test]
    fn containers_merge_by_name() {
        let mut pod = json!({"metadata": {"labels": {"a": "1"}}, "spec": {"containers": [
            {"name": "web", "image": "nginx", "ports": [{"containerPort": 80}]},
            {"name": "side", "image": "envoy"}]}});
        let patch = json!({"metadata": {"labels": {"tier": "frontend", "a": null}},
            "spec": {"containers": [{"name": "web", "image": "nginx:2"}, {"name": "new", "image": "x"}]}});
        strategic_merge(&idx(), &mut pod, &patch, Some(&pod_schema())).unwrap();
        assert_eq!(pod["metadata"]["labels"], json!({"tier": "frontend"}));
        let cs = pod["spec"]["containers"].as_array().unwrap();
        assert_eq!(cs.len(), 3);
        assert_eq!(cs[0]["image"], "nginx:2");
        assert_eq!(cs[0]["ports"][0]["containerPort"], 80);
    }

    #[test]
    fn directives_delete_and_replace() {
        let mut pod = json!({"metadata": {"finalizers": ["a", "b"]}, "spec": {"containers": [
            {"name": "web", "image": "nginx"}, {"name": "side", "image": "envoy"}], "tolerations": [{"key": "x"}]}});
        let patch = json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]},
            "spec": {"containers": [{"name": "side", "$patch": "delete"}], "tolerations": [{"key": "y"}],
                     "$setElementOrder/containers": [{"name": "web"}]}});
        strategic_merge(&idx(), &mut pod, &patch, Some(&pod_schema())).unwrap();
        assert_eq!(pod["metadata"]["finalizers"], json!(["b"]));
        assert_eq!(pod["spec"]["containers"].as_array().unwrap().len(), 1);
        // Lists without a merge key are replaced.
        assert_eq!(pod["spec"]["tolerations"], json!([{"key": "y"}]));
    }

    #[test]
    fn merge_and_json_patches() {
        let mut v = json!({"a": {"b": 1, "c": 2}});
        merge_patch(&mut v, &json!({"a": {"b": null, "d": 3}}));
        assert_eq!(v, json!({"a": {"c": 2, "d": 3}}));
        json_patch(
            &mut v,
            &json!([{"op": "replace", "path": "/a/c", "value": 9}]),
        )
        .unwrap();
        assert_eq!(v["a"]["c"], 9);
        assert!(json_patch(&mut v, &json!([{"op": "remove", "path": "/nope"}])).is_err());
        assert!(json_patch(&mut v, &json!({"op": "x"})).is_err());
    }
}
