//! `managedFields`: which fields of an object a manager set, in the
//! `FieldsV1` format (`{"f:spec": {"f:replicas": {}}}`), and the conflicts
//! server-side apply reports when two managers disagree on a field.

use serde_json::{json, Map, Value};

/// Keys that identify an item of a list, tried in order: the merge keys
/// Kubernetes uses for its associative lists.
const ITEM_KEYS: &[&str] = &[
    "name",
    "containerPort",
    "port",
    "mountPath",
    "uid",
    "type",
    "ip",
    "devicePath",
    "topologyKey",
];

fn item_key(item: &Value) -> Option<String> {
    let m = item.as_object()?;
    let key = ITEM_KEYS.iter().find(|k| m.contains_key(**k))?;
    let mut k = Map::new();
    k.insert((*key).to_owned(), m[*key].clone());
    // containerPort lists are keyed by port and protocol in Kubernetes.
    if *key == "containerPort" || *key == "port" {
        if let Some(p) = m.get("protocol") {
            k.insert("protocol".into(), p.clone());
        }
    }
    Some(format!("k:{}", Value::Object(k)))
}

fn fields_value(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, child) in m {
                out.insert(format!("f:{k}"), fields_value(child));
            }
            Value::Object(out)
        }
        Value::Array(items) if items.iter().all(|i| item_key(i).is_some()) && !items.is_empty() => {
            let mut out = Map::new();
            for item in items {
                if let Some(k) = item_key(item) {
                    let mut inner = fields_value(item);
                    if let Some(m) = inner.as_object_mut() {
                        m.insert(".".into(), json!({}));
                    }
                    out.insert(k, inner);
                }
            }
            Value::Object(out)
        }
        _ => json!({}),
    }
}

/// The FieldsV1 set of everything `obj` sets, leaving out server-owned
/// metadata and status.
pub fn fields_of(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.as_object_mut() {
        m.remove("status");
        m.remove("apiVersion");
        m.remove("kind");
    }
    if let Some(meta) = o["metadata"].as_object_mut() {
        meta.retain(|k, _| {
            matches!(
                k.as_str(),
                "labels" | "annotations" | "finalizers" | "ownerReferences"
            )
        });
        if meta.is_empty() {
            if let Some(m) = o.as_object_mut() {
                m.remove("metadata");
            }
        }
    }
    fields_value(&o)
}

/// Leaf paths of a FieldsV1 set, e.g. `.spec.replicas`.
pub fn leaf_paths(fields: &Value) -> Vec<String> {
    let mut out = vec![];
    walk(fields, String::new(), &mut out);
    out
}

fn walk(v: &Value, prefix: String, out: &mut Vec<String>) {
    let Some(m) = v.as_object() else { return };
    let children: Vec<(&String, &Value)> = m.iter().filter(|(k, _)| k.as_str() != ".").collect();
    if children.is_empty() {
        if !prefix.is_empty() {
            out.push(prefix);
        }
        return;
    }
    for (k, child) in children {
        let seg = if let Some(f) = k.strip_prefix("f:") {
            format!(".{f}")
        } else if let Some(kk) = k.strip_prefix("k:") {
            format!("[{kk}]")
        } else {
            format!(".{k}")
        };
        walk(child, format!("{prefix}{seg}"), out);
    }
}

/// The value at a leaf path (as produced by [`leaf_paths`]) in `obj`.
pub fn value_at<'a>(obj: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = obj;
    let mut rest = path;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            cur = cur.get(&r[..end])?;
            rest = &r[end..];
        } else if let Some(r) = rest.strip_prefix('[') {
            // Find the matching ']' of the JSON key object.
            let mut depth = 0;
            let mut end = None;
            for (i, c) in r.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ']' if depth == 0 => {
                        end = Some(i);
                        break;
                    }
                    _ => {}
                }
            }
            let end = end?;
            let key: Value = serde_json::from_str(&r[..end]).ok()?;
            let km = key.as_object()?;
            cur = cur
                .as_array()?
                .iter()
                .find(|item| km.iter().all(|(k, v)| item.get(k) == Some(v)))?;
            rest = &r[end + 1..];
        } else {
            return None;
        }
    }
    Some(cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_follow_fieldsv1() {
        let d = json!({"apiVersion": "apps/v1", "metadata": {"name": "x", "labels": {"a": "b"}},
            "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "web", "image": "nginx"}]}}}});
        let f = fields_of(&d);
        assert_eq!(f["f:spec"]["f:replicas"], json!({}));
        assert!(
            f["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"web\"}"]["f:image"]
                .is_object()
        );
        assert!(f["f:metadata"].get("f:name").is_none());
        let leaves = leaf_paths(&f);
        assert!(leaves.contains(&".spec.replicas".to_string()));
        let img = leaves.iter().find(|l| l.ends_with(".image")).unwrap();
        assert_eq!(value_at(&d, img), Some(&json!("nginx")));
    }
}
