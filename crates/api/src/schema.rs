//! Walking objects against their OpenAPI schemas: unknown fields, type
//! mismatches and CRD structural validation.
//!
//! One walker serves built-in types (whose schemas come from k8s-openapi) and
//! custom resources (whose schemas come from their CRDs), so both report
//! errors in the same shape Kubernetes uses: `spec.replicas: Invalid value:
//! "string": spec.replicas in body must be of type integer: "string"`.

use crate::validation::FieldError;
use serde_json::{Map, Value};

/// The definitions an object is checked against.
#[derive(Debug, Clone, Default)]
pub struct SchemaIndex {
    pub defs: Map<String, Value>,
}

/// What the walk found.
#[derive(Debug, Default)]
pub struct WalkResult {
    /// Paths of fields no schema declares, e.g. `spec.containers[0].imagee`.
    pub unknown: Vec<String>,
    /// Type, enum, range and required-field violations.
    pub errors: Vec<FieldError>,
}

impl SchemaIndex {
    pub fn new(defs: Map<String, Value>) -> Self {
        Self { defs }
    }

    /// Follow `$ref` (and a lone `allOf: [$ref]`) to the schema it names.
    pub fn resolve<'a>(&'a self, mut s: &'a Value) -> &'a Value {
        for _ in 0..16 {
            if let Some(r) = s.get("$ref").and_then(Value::as_str) {
                let name = r.rsplit('/').next().unwrap_or(r);
                match self.defs.get(name) {
                    Some(d) => s = d,
                    None => return s,
                }
            } else if let Some([only]) = s.get("allOf").and_then(Value::as_array).map(Vec::as_slice)
            {
                s = only;
            } else {
                return s;
            }
        }
        s
    }

    /// The schema of `field` inside object schema `s`, if declared.
    pub fn property<'a>(&'a self, s: &'a Value, field: &str) -> Option<&'a Value> {
        let s = self.resolve(s);
        if let Some(p) = s.get("properties").and_then(|p| p.get(field)) {
            return Some(p);
        }
        match s.get("additionalProperties") {
            Some(ap @ Value::Object(_)) => Some(ap),
            _ => None,
        }
    }

    /// The schema of the items of array schema `s`.
    pub fn items<'a>(&'a self, s: &'a Value) -> Option<&'a Value> {
        self.resolve(s).get("items")
    }

    /// Check `obj` against schema `s`. `structural` turns on the checks that
    /// CRD schemas ask for (types, enums, ranges, required, patterns); the
    /// unknown-field walk always runs.
    pub fn walk(&self, obj: &Value, s: &Value, structural: bool) -> WalkResult {
        let mut out = WalkResult::default();
        self.walk_at(obj, s, "", structural, &mut out);
        out
    }

    fn walk_at(&self, v: &Value, s: &Value, path: &str, structural: bool, out: &mut WalkResult) {
        // A reference leads into a built-in definition (a custom resource's
        // ObjectMeta): from there on, built-in rules apply, where free-form
        // objects such as managedFields' FieldsV1 have no properties.
        let structural = structural && !builtin_ref(s);
        let s = self.resolve(s);
        let sm = match s.as_object() {
            Some(m) => m,
            None => return,
        };
        if v.is_null() {
            if structural && sm.get("nullable") != Some(&Value::Bool(true)) && !path.is_empty() {
                // Kubernetes drops nulls for non-nullable fields rather than
                // rejecting them; nothing to check below.
            }
            return;
        }
        let preserve = sm.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
        let int_or_string = sm.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
        let ty = sm.get("type").and_then(Value::as_str);
        if int_or_string {
            if !(v.is_i64() || v.is_u64() || v.is_string()) {
                out.errors
                    .push(FieldError::invalid_type(path, v, "integer or string"));
            }
            return;
        }
        if let Some(ty) = ty {
            if !type_matches(v, ty) {
                out.errors.push(FieldError::invalid_type(path, v, ty));
                return;
            }
        }
        if structural {
            self.check_constraints(v, sm, path, out);
        }
        match v {
            Value::Object(m) => {
                let props = sm.get("properties").and_then(Value::as_object);
                let additional = sm.get("additionalProperties");
                if structural {
                    for req in sm
                        .get("required")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                    {
                        if let Some(r) = req.as_str() {
                            if !m.contains_key(r) {
                                out.errors.push(FieldError::required(&join(path, r), ""));
                            }
                        }
                    }
                }
                for (k, child) in m {
                    let child_path = join(path, k);
                    if let Some(ps) = props.and_then(|p| p.get(k)) {
                        self.walk_at(child, ps, &child_path, structural, out);
                    } else if let Some(ap @ Value::Object(_)) = additional {
                        self.walk_at(child, ap, &child_path, structural, out);
                    } else if additional == Some(&Value::Bool(true)) || preserve {
                        continue;
                    } else if props.is_some() || (structural && ty == Some("object")) {
                        // Built-in schemas leave free-form objects (FieldsV1,
                        // RawExtension) without properties; CRD schemas must
                        // declare them or preserve unknown fields.
                        out.unknown.push(child_path);
                    }
                }
            }
            Value::Array(a) => {
                if let Some(items) = sm.get("items") {
                    for (i, child) in a.iter().enumerate() {
                        self.walk_at(child, items, &format!("{path}[{i}]"), structural, out);
                    }
                }
            }
            _ => {}
        }
    }

    /// Drop every field the schema does not declare, as Kubernetes' decoder
    /// (built-in types) and pruning (custom resources) do.
    pub fn prune(&self, v: &mut Value, s: &Value, structural: bool) {
        let structural = structural && !builtin_ref(s);
        let s = self.resolve(s);
        let Some(sm) = s.as_object() else { return };
        if sm.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true))
            || sm.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true))
        {
            return;
        }
        match v {
            Value::Object(m) => {
                let props = sm.get("properties").and_then(Value::as_object);
                let additional = sm.get("additionalProperties");
                if props.is_none()
                    && additional.is_none()
                    && !(structural && sm.get("type").and_then(Value::as_str) == Some("object"))
                {
                    return;
                }
                m.retain(|k, _| {
                    props.is_some_and(|p| p.contains_key(k))
                        || additional.is_some_and(|a| a != &Value::Bool(false))
                });
                for (k, child) in m.iter_mut() {
                    if let Some(ps) = props.and_then(|p| p.get(k)) {
                        self.prune(child, ps, structural);
                    } else if let Some(ap @ Value::Object(_)) = additional {
                        self.prune(child, ap, structural);
                    }
                }
            }
            Value::Array(a) => {
                if let Some(items) = sm.get("items") {
                    for child in a.iter_mut() {
                        self.prune(child, items, structural);
                    }
                }
            }
            _ => {}
        }
    }

    fn check_constraints(
        &self,
        v: &Value,
        sm: &Map<String, Value>,
        path: &str,
        out: &mut WalkResult,
    ) {
        if let Some(allowed) = sm.get("enum").and_then(Value::as_array) {
            if !allowed.contains(v) {
                let list: Vec<String> = allowed.iter().map(|a| a.to_string()).collect();
                out.errors.push(FieldError::not_supported(path, v, &list));
            }
        }
        if let Some(n) = v.as_f64() {
            if let Some(min) = sm.get("minimum").and_then(Value::as_f64) {
                if n < min {
                    out.errors.push(FieldError::invalid(
                        path,
                        v,
                        &format!(
                            "{} in body should be greater than or equal to {min}",
                            dotted(path)
                        ),
                    ));
                }
            }
            if let Some(max) = sm.get("maximum").and_then(Value::as_f64) {
                if n > max {
                    out.errors.push(FieldError::invalid(
                        path,
                        v,
                        &format!(
                            "{} in body should be less than or equal to {max}",
                            dotted(path)
                        ),
                    ));
                }
            }
        }
        if let Some(s) = v.as_str() {
            if let Some(max) = sm.get("maxLength").and_then(Value::as_u64) {
                if s.chars().count() as u64 > max {
                    out.errors.push(FieldError::too_long(path, max));
                }
            }
            if let Some(min) = sm.get("minLength").and_then(Value::as_u64) {
                if (s.chars().count() as u64) < min {
                    out.errors.push(FieldError::invalid(
                        path,
                        v,
                        &format!(
                            "{} in body should be at least {min} chars long",
                            dotted(path)
                        ),
                    ));
                }
            }
            if let Some(p) = sm.get("pattern").and_then(Value::as_str) {
                if let Ok(re) = regex::Regex::new(p) {
                    if !re.is_match(s) {
                        out.errors.push(FieldError::invalid(
                            path,
                            v,
                            &format!("{} in body should match '{p}'", dotted(path)),
                        ));
                    }
                }
            }
        }
        if let Some(a) = v.as_array() {
            if let Some(max) = sm.get("maxItems").and_then(Value::as_u64) {
                if a.len() as u64 > max {
                    out.errors.push(FieldError::too_many(path, a.len(), max));
                }
            }
            if let Some(min) = sm.get("minItems").and_then(Value::as_u64) {
                if (a.len() as u64) < min {
                    out.errors.push(FieldError::invalid(
                        path,
                        v,
                        &format!("{} in body should have at least {min} items", dotted(path)),
                    ));
                }
            }
        }
    }
}

fn dotted(path: &str) -> &str {
    path
}

fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_owned()
    } else {
        format!("{path}.{field}")
    }
}

fn type_matches(v: &Value, ty: &str) -> bool {
    match ty {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        _ => true,
    }
}

/// Whether a schema is a reference to a built-in Kubernetes definition.
fn builtin_ref(s: &Value) -> bool {
    s.get("$ref").and_then(Value::as_str).is_some_and(|r| {
        [
            "/io.k8s.api.",
            "/io.k8s.apimachinery.",
            "/io.k8s.apiextensions-apiserver.",
        ]
        .iter()
        .any(|p| r.contains(p))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn index() -> SchemaIndex {
        let defs = crate::openapi::builtin_definitions(&crate::registry::builtin_resources());
        SchemaIndex::new(defs)
    }

    #[test]
    fn finds_unknown_fields_in_builtin_types() {
        let idx = index();
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a", "labels": {"x": "y"}},
            "spec": {"containers": [{"name": "c", "imagee": "busybox", "resources": {"limits": {"cpu": "1"}}}]}});
        let r = idx.walk(
            &pod,
            &json!({"$ref": "#/definitions/io.k8s.api.core.v1.Pod"}),
            false,
        );
        assert_eq!(r.unknown, vec!["spec.containers[0].imagee"]);
        assert!(r.errors.is_empty(), "{:?}", r.errors);
    }

    #[test]
    fn reports_type_mismatches() {
        let idx = index();
        let d = json!({"spec": {"replicas": "three"}});
        let r = idx.walk(
            &d,
            &json!({"$ref": "#/definitions/io.k8s.api.apps.v1.Deployment"}),
            false,
        );
        assert_eq!(r.errors.len(), 1);
        assert_eq!(r.errors[0].field, "spec.replicas");
    }

    #[test]
    fn structural_checks_for_crds() {
        let idx = SchemaIndex::default();
        let s = json!({"type": "object", "required": ["spec"], "properties": {"spec": {"type": "object",
            "properties": {"weight": {"type": "integer", "minimum": 0}, "mode": {"type": "string", "enum": ["A", "B"]},
                           "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}}});
        let r = idx.walk(
            &json!({"spec": {"weight": -1, "mode": "C", "free": {"x": 1}, "extra": 1}}),
            &s,
            true,
        );
        assert_eq!(r.unknown, vec!["spec.extra"]);
        assert_eq!(r.errors.len(), 2, "{:?}", r.errors);
        let r = idx.walk(&json!({}), &s, true);
        assert_eq!(r.errors[0].to_string(), "spec: Required value");
    }
}
