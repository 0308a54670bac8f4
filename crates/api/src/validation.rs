//! Validation of built-in objects, with the messages Kubernetes gives.
//!
//! Errors are [`FieldError`]s, printed exactly as Kubernetes' `field.Error`
//! (`spec.containers[0].image: Required value`) so that kubectl shows users
//! the message they already know.

use regex::Regex;
use serde_json::Value;
use std::fmt;
use std::sync::OnceLock;

/// The kind of a field error, as Kubernetes' `field.ErrorType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorType {
    Required,
    Invalid,
    NotSupported,
    Duplicate,
    Forbidden,
    TooLong,
    TooMany,
}

impl ErrorType {
    /// The `reason` of the StatusCause Kubernetes reports.
    pub fn cause_reason(self) -> &'static str {
        match self {
            ErrorType::Required => "FieldValueRequired",
            ErrorType::Invalid => "FieldValueInvalid",
            ErrorType::NotSupported => "FieldValueNotSupported",
            ErrorType::Duplicate => "FieldValueDuplicate",
            ErrorType::Forbidden => "FieldValueForbidden",
            ErrorType::TooLong => "FieldValueTooLong",
            ErrorType::TooMany => "FieldValueTooMany",
        }
    }
}

/// One invalid field.
#[derive(Clone, Debug, PartialEq)]
pub struct FieldError {
    pub kind: ErrorType,
    pub field: String,
    /// The offending value, rendered as Kubernetes renders it.
    pub value: Option<String>,
    pub detail: String,
}

fn render(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Object(_) => "object".into(),
        Value::Array(_) => "array".into(),
        other => other.to_string(),
    }
}

impl FieldError {
    pub fn required(field: &str, detail: &str) -> Self {
        Self {
            kind: ErrorType::Required,
            field: field.into(),
            value: None,
            detail: detail.into(),
        }
    }
    pub fn invalid(field: &str, value: &Value, detail: &str) -> Self {
        Self {
            kind: ErrorType::Invalid,
            field: field.into(),
            value: Some(render(value)),
            detail: detail.into(),
        }
    }
    pub fn invalid_type(field: &str, value: &Value, ty: &str) -> Self {
        let got = match value {
            Value::String(_) => "string",
            Value::Number(_) => "number",
            Value::Bool(_) => "boolean",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
            Value::Null => "null",
        };
        Self::invalid(
            field,
            &Value::String(got.into()),
            &format!("{field} in body must be of type {ty}: {got:?}"),
        )
    }
    pub fn not_supported(field: &str, value: &Value, supported: &[String]) -> Self {
        Self {
            kind: ErrorType::NotSupported,
            field: field.into(),
            value: Some(render(value)),
            detail: format!("supported values: {}", supported.join(", ")),
        }
    }
    pub fn duplicate(field: &str, value: &Value) -> Self {
        Self {
            kind: ErrorType::Duplicate,
            field: field.into(),
            value: Some(render(value)),
            detail: String::new(),
        }
    }
    pub fn forbidden(field: &str, detail: &str) -> Self {
        Self {
            kind: ErrorType::Forbidden,
            field: field.into(),
            value: None,
            detail: detail.into(),
        }
    }
    pub fn too_long(field: &str, max: u64) -> Self {
        Self {
            kind: ErrorType::TooLong,
            field: field.into(),
            value: None,
            detail: format!("may not be more than {max} bytes"),
        }
    }
    pub fn too_many(field: &str, got: usize, max: u64) -> Self {
        Self {
            kind: ErrorType::TooMany,
            field: field.into(),
            value: Some(got.to_string()),
            detail: format!("must have at most {max} items"),
        }
    }
    pub fn immutable(field: &str, value: &Value) -> Self {
        Self::invalid(field, value, "field is immutable")
    }

    /// The message without the field path, as a StatusCause carries it.
    pub fn message(&self) -> String {
        let head = match self.kind {
            ErrorType::Required => "Required value".to_string(),
            ErrorType::Invalid => format!("Invalid value: {}", self.value.as_deref().unwrap_or("")),
            ErrorType::NotSupported => {
                format!("Unsupported value: {}", self.value.as_deref().unwrap_or(""))
            }
            ErrorType::Duplicate => {
                format!("Duplicate value: {}", self.value.as_deref().unwrap_or(""))
            }
            ErrorType::Forbidden => "Forbidden".to_string(),
            ErrorType::TooLong => "Too long".to_string(),
            ErrorType::TooMany => {
                format!("Too many: {}", self.value.as_deref().unwrap_or(""))
            }
        };
        if self.detail.is_empty() {
            head
        } else {
            format!("{head}: {}", self.detail)
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message())
    }
}

fn re(cell: &'static OnceLock<Regex>, pattern: &str) -> &'static Regex {
    cell.get_or_init(|| Regex::new(pattern).expect("a valid built-in pattern"))
}

const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const DNS1035_LABEL_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";

/// Problems with `name` as an RFC 1123 label; empty when valid.
pub fn dns1123_label(name: &str) -> Vec<String> {
    static R: OnceLock<Regex> = OnceLock::new();
    let mut out = vec![];
    if name.len() > 63 {
        out.push("must be no more than 63 characters".into());
    }
    if !re(&R, "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$").is_match(name) {
        out.push(DNS1123_LABEL_MSG.into());
    }
    out
}

/// Problems with `name` as an RFC 1123 subdomain; empty when valid.
pub fn dns1123_subdomain(name: &str) -> Vec<String> {
    static R: OnceLock<Regex> = OnceLock::new();
    let mut out = vec![];
    if name.len() > 253 {
        out.push("must be no more than 253 characters".into());
    }
    if !re(
        &R,
        r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
    )
    .is_match(name)
    {
        out.push(DNS1123_SUBDOMAIN_MSG.into());
    }
    out
}

/// Problems with `name` as an RFC 1035 label (Service names); empty when valid.
pub fn dns1035_label(name: &str) -> Vec<String> {
    static R: OnceLock<Regex> = OnceLock::new();
    let mut out = vec![];
    if name.len() > 63 {
        out.push("must be no more than 63 characters".into());
    }
    if !re(&R, "^[a-z]([-a-z0-9]*[a-z0-9])?$").is_match(name) {
        out.push(DNS1035_LABEL_MSG.into());
    }
    out
}

/// How a kind's `metadata.name` is validated.
pub fn name_rule(group: &str, kind: &str) -> fn(&str) -> Vec<String> {
    match (group, kind) {
        ("", "Namespace") => dns1123_label,
        ("", "Service") => dns1035_label,
        _ => dns1123_subdomain,
    }
}

fn qualified_name(key: &str) -> Vec<String> {
    static R: OnceLock<Regex> = OnceLock::new();
    let name_re = re(&R, "^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$");
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let mut out = vec![];
    if let Some(p) = prefix {
        if p.is_empty() {
            out.push("prefix part must be non-empty".into());
        } else {
            out.extend(
                dns1123_subdomain(p)
                    .into_iter()
                    .map(|m| format!("prefix part {m}")),
            );
        }
    }
    if name.is_empty() {
        out.push("name part must be non-empty".into());
    } else if name.len() > 63 {
        out.push("name part must be no more than 63 characters".into());
    } else if !name_re.is_match(name) {
        out.push("name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')".into());
    }
    out
}

fn label_value(v: &str) -> Vec<String> {
    static R: OnceLock<Regex> = OnceLock::new();
    let mut out = vec![];
    if v.len() > 63 {
        out.push("must be no more than 63 characters".into());
    }
    if !v.is_empty() && !re(&R, "^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$").is_match(v) {
        out.push("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')".into());
    }
    out
}

/// Validate `metadata` of any object: name, labels, annotations.
pub fn validate_metadata(
    obj: &Value,
    name_check: fn(&str) -> Vec<String>,
    errs: &mut Vec<FieldError>,
) {
    let meta = &obj["metadata"];
    let name = meta["name"].as_str().unwrap_or_default();
    let generate = meta["generateName"].as_str().unwrap_or_default();
    if name.is_empty() && generate.is_empty() {
        errs.push(FieldError::required(
            "metadata.name",
            "name or generateName is required",
        ));
    } else if !name.is_empty() {
        for m in name_check(name) {
            errs.push(FieldError::invalid("metadata.name", &meta["name"], &m));
        }
    }
    if let Some(labels) = meta["labels"].as_object() {
        for (k, v) in labels {
            for m in qualified_name(k) {
                errs.push(FieldError::invalid(
                    "metadata.labels",
                    &Value::String(k.clone()),
                    &m,
                ));
            }
            match v.as_str() {
                Some(s) => {
                    for m in label_value(s) {
                        errs.push(FieldError::invalid("metadata.labels", v, &m));
                    }
                }
                None => errs.push(FieldError::invalid_type("metadata.labels", v, "string")),
            }
        }
    }
    if let Some(ann) = meta["annotations"].as_object() {
        let mut total = 0;
        for (k, v) in ann {
            total += k.len() + v.as_str().map(str::len).unwrap_or(0);
            for m in qualified_name(k) {
                errs.push(FieldError::invalid(
                    "metadata.annotations",
                    &Value::String(k.clone()),
                    &m,
                ));
            }
        }
        if total > 256 * 1024 {
            errs.push(FieldError::too_long("metadata.annotations", 256 * 1024));
        }
    }
}

fn port_range(field: &str, v: &Value, allow_zero: bool, errs: &mut Vec<FieldError>) {
    match v.as_i64() {
        Some(p) if (1..=65535).contains(&p) || (allow_zero && p == 0) => {}
        _ => errs.push(FieldError::invalid(
            field,
            v,
            "must be between 1 and 65535, inclusive",
        )),
    }
}

fn iana_svc_name(field: &str, v: &Value, errs: &mut Vec<FieldError>) {
    static R: OnceLock<Regex> = OnceLock::new();
    let s = v.as_str().unwrap_or_default();
    if s.len() > 15 {
        errs.push(FieldError::invalid(
            field,
            v,
            "must be no more than 15 characters",
        ));
    } else if !re(&R, "^[a-z0-9]([a-z0-9-]*[a-z0-9])?$").is_match(s)
        || !s.chars().any(|c| c.is_ascii_lowercase())
        || s.contains("--")
    {
        errs.push(FieldError::invalid(
            field,
            v,
            "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)",
        ));
    }
}

fn one_of(field: &str, v: &Value, allowed: &[&str], errs: &mut Vec<FieldError>) {
    if v.is_null() {
        return;
    }
    if !v.as_str().is_some_and(|s| allowed.contains(&s)) {
        let list: Vec<String> = allowed.iter().map(|a| format!("{a:?}")).collect();
        errs.push(FieldError::not_supported(field, v, &list));
    }
}

fn validate_containers(
    path: &str,
    list: &Value,
    required: bool,
    errs: &mut Vec<FieldError>,
    names: &mut Vec<String>,
) {
    let Some(cs) = list.as_array() else {
        if required {
            errs.push(FieldError::required(path, ""));
        }
        return;
    };
    if cs.is_empty() && required {
        errs.push(FieldError::required(path, ""));
    }
    for (i, c) in cs.iter().enumerate() {
        let p = format!("{path}[{i}]");
        match c["name"].as_str() {
            None | Some("") => errs.push(FieldError::required(&format!("{p}.name"), "")),
            Some(n) => {
                for m in dns1123_label(n) {
                    errs.push(FieldError::invalid(&format!("{p}.name"), &c["name"], &m));
                }
                if names.iter().any(|x| x == n) {
                    errs.push(FieldError::duplicate(&format!("{p}.name"), &c["name"]));
                }
                names.push(n.to_owned());
            }
        }
        if c["image"].as_str().is_none_or(|s| s.trim().is_empty()) {
            errs.push(FieldError::required(&format!("{p}.image"), ""));
        }
        let mut port_names = vec![];
        for (j, port) in c["ports"].as_array().into_iter().flatten().enumerate() {
            let pp = format!("{p}.ports[{j}]");
            if port["containerPort"].is_null() {
                errs.push(FieldError::required(&format!("{pp}.containerPort"), ""));
            } else {
                port_range(
                    &format!("{pp}.containerPort"),
                    &port["containerPort"],
                    false,
                    errs,
                );
            }
            if !port["hostPort"].is_null() {
                port_range(&format!("{pp}.hostPort"), &port["hostPort"], true, errs);
            }
            one_of(
                &format!("{pp}.protocol"),
                &port["protocol"],
                &["TCP", "UDP", "SCTP"],
                errs,
            );
            if let Some(n) = port["name"].as_str() {
                iana_svc_name(&format!("{pp}.name"), &port["name"], errs);
                if port_names.contains(&n) {
                    errs.push(FieldError::duplicate(&format!("{pp}.name"), &port["name"]));
                }
                port_names.push(n);
            }
        }
        let mut env_names = vec![];
        for (j, e) in c["env"].as_array().into_iter().flatten().enumerate() {
            match e["name"].as_str() {
                None | Some("") => {
                    errs.push(FieldError::required(&format!("{p}.env[{j}].name"), ""))
                }
                Some(n) => env_names.push(n),
            }
        }
        one_of(
            &format!("{p}.imagePullPolicy"),
            &c["imagePullPolicy"],
            &["Always", "IfNotPresent", "Never"],
            errs,
        );
    }
}

/// Validate a PodSpec found at `path` (`spec` or `spec.template.spec`).
pub fn validate_pod_spec(path: &str, spec: &Value, errs: &mut Vec<FieldError>) {
    let mut names = vec![];
    validate_containers(
        &format!("{path}.containers"),
        &spec["containers"],
        true,
        errs,
        &mut names,
    );
    validate_containers(
        &format!("{path}.initContainers"),
        &spec["initContainers"],
        false,
        errs,
        &mut names,
    );
    one_of(
        &format!("{path}.restartPolicy"),
        &spec["restartPolicy"],
        &["Always", "OnFailure", "Never"],
        errs,
    );
    one_of(
        &format!("{path}.dnsPolicy"),
        &spec["dnsPolicy"],
        &["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"],
        errs,
    );
    let mut vol_names = vec![];
    for (i, v) in spec["volumes"].as_array().into_iter().flatten().enumerate() {
        let f = format!("{path}.volumes[{i}].name");
        match v["name"].as_str() {
            None | Some("") => errs.push(FieldError::required(&f, "")),
            Some(n) => {
                for m in dns1123_label(n) {
                    errs.push(FieldError::invalid(&f, &v["name"], &m));
                }
                if vol_names.contains(&n) {
                    errs.push(FieldError::duplicate(&f, &v["name"]));
                }
                vol_names.push(n);
            }
        }
    }
}

fn selector_matches_labels(selector: &Value, labels: &Value) -> bool {
    let labels = labels.as_object();
    let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
    for (k, v) in selector["matchLabels"].as_object().into_iter().flatten() {
        if get(k) != v.as_str() {
            return false;
        }
    }
    for e in selector["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let key = e["key"].as_str().unwrap_or_default();
        let values: Vec<&str> = e["values"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let ok = match e["operator"].as_str().unwrap_or_default() {
            "In" => get(key).is_some_and(|v| values.contains(&v)),
            "NotIn" => get(key).is_none_or(|v| !values.contains(&v)),
            "Exists" => get(key).is_some(),
            "DoesNotExist" => get(key).is_none(),
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    true
}

fn validate_workload(obj: &Value, kind: &str, errs: &mut Vec<FieldError>) {
    let spec = &obj["spec"];
    if let Some(r) = spec.get("replicas") {
        if r.as_i64().is_some_and(|r| r < 0) {
            errs.push(FieldError::invalid(
                "spec.replicas",
                r,
                "must be greater than or equal to 0",
            ));
        }
    }
    let selector = &spec["selector"];
    let empty = selector["matchLabels"]
        .as_object()
        .is_none_or(|m| m.is_empty())
        && selector["matchExpressions"]
            .as_array()
            .is_none_or(|a| a.is_empty());
    if empty {
        errs.push(FieldError::required("spec.selector", ""));
        if selector.is_object() {
            errs.push(FieldError::invalid(
                "spec.selector",
                selector,
                "empty selector is invalid for deployment",
            ));
        }
    } else if !selector_matches_labels(selector, &spec["template"]["metadata"]["labels"]) {
        errs.push(FieldError::invalid(
            "spec.template.metadata.labels",
            &Value::String(label_map_string(&spec["template"]["metadata"]["labels"])),
            "`selector` does not match template `labels`",
        ));
    }
    validate_pod_spec("spec.template.spec", &spec["template"]["spec"], errs);
    let rp = &spec["template"]["spec"]["restartPolicy"];
    if !rp.is_null() && rp.as_str() != Some("Always") {
        errs.push(FieldError::not_supported(
            "spec.template.spec.restartPolicy",
            rp,
            &["\"Always\"".to_string()],
        ));
    }
    if kind == "Deployment" {
        one_of(
            "spec.strategy.type",
            &spec["strategy"]["type"],
            &["Recreate", "RollingUpdate"],
            errs,
        );
    }
}

fn label_map_string(labels: &Value) -> String {
    let pairs: Vec<String> = labels
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k:?}:{}", v))
        .collect();
    format!("map[string]string{{{}}}", pairs.join(", "))
}

fn validate_service(obj: &Value, errs: &mut Vec<FieldError>) {
    let spec = &obj["spec"];
    let ty = spec["type"].as_str().unwrap_or("ClusterIP");
    one_of(
        "spec.type",
        &spec["type"],
        &["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"],
        errs,
    );
    one_of(
        "spec.sessionAffinity",
        &spec["sessionAffinity"],
        &["None", "ClientIP"],
        errs,
    );
    let headless = spec["clusterIP"].as_str() == Some("None");
    let ports = spec["ports"].as_array().cloned().unwrap_or_default();
    if ports.is_empty() && ty != "ExternalName" && !headless {
        errs.push(FieldError::required("spec.ports", ""));
    }
    if ty == "ExternalName" && spec["externalName"].as_str().is_none_or(str::is_empty) {
        errs.push(FieldError::required("spec.externalName", ""));
    }
    let mut names = vec![];
    for (i, p) in ports.iter().enumerate() {
        let f = format!("spec.ports[{i}]");
        if p["port"].is_null() {
            errs.push(FieldError::required(&format!("{f}.port"), ""));
        } else {
            port_range(&format!("{f}.port"), &p["port"], false, errs);
        }
        match p["name"].as_str() {
            Some(n) if !n.is_empty() => {
                for m in dns1123_label(n) {
                    errs.push(FieldError::invalid(&format!("{f}.name"), &p["name"], &m));
                }
                if names.contains(&n) {
                    errs.push(FieldError::duplicate(&format!("{f}.name"), &p["name"]));
                }
                names.push(n);
            }
            _ if ports.len() > 1 => errs.push(FieldError::required(&format!("{f}.name"), "")),
            _ => {}
        }
        one_of(
            &format!("{f}.protocol"),
            &p["protocol"],
            &["TCP", "UDP", "SCTP"],
            errs,
        );
        match &p["targetPort"] {
            Value::Null => {}
            v @ Value::String(_) => iana_svc_name(&format!("{f}.targetPort"), v, errs),
            v => port_range(&format!("{f}.targetPort"), v, false, errs),
        }
        if let Some(np) = p["nodePort"].as_i64() {
            if np != 0 && ty == "ClusterIP" {
                errs.push(FieldError::forbidden(
                    &format!("{f}.nodePort"),
                    "may not be used when `type` is 'ClusterIP'",
                ));
            }
        }
    }
}

fn validate_data_keys(obj: &Value, errs: &mut Vec<FieldError>) {
    static R: OnceLock<Regex> = OnceLock::new();
    let key_re = re(&R, "^[-._a-zA-Z0-9]+$");
    for field in ["data", "binaryData", "stringData"] {
        for (k, v) in obj[field].as_object().into_iter().flatten() {
            if !key_re.is_match(k) || k == "." || k == ".." {
                errs.push(FieldError::invalid(
                    &format!("{field}[{k}]"),
                    &Value::String(k.clone()),
                    "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')",
                ));
            }
            if !v.is_string() {
                errs.push(FieldError::invalid_type(
                    &format!("{field}[{k}]"),
                    v,
                    "string",
                ));
            }
        }
    }
}

fn validate_ingress(obj: &Value, errs: &mut Vec<FieldError>) {
    let spec = &obj["spec"];
    let has_default = !spec["defaultBackend"].is_null();
    let rules = spec["rules"].as_array().cloned().unwrap_or_default();
    if rules.is_empty() && !has_default {
        errs.push(FieldError::invalid(
            "spec",
            &Value::Null,
            "either `defaultBackend` or `rules` must be specified",
        ));
    }
    for (i, r) in rules.iter().enumerate() {
        for (j, p) in r["http"]["paths"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            let f = format!("spec.rules[{i}].http.paths[{j}]");
            if p["pathType"].is_null() {
                errs.push(FieldError::required(
                    &format!("{f}.pathType"),
                    "pathType must be specified",
                ));
            } else {
                one_of(
                    &format!("{f}.pathType"),
                    &p["pathType"],
                    &["Exact", "Prefix", "ImplementationSpecific"],
                    errs,
                );
            }
            let path = p["path"].as_str().unwrap_or_default();
            if p["pathType"].as_str() != Some("ImplementationSpecific") && !path.starts_with('/') {
                errs.push(FieldError::invalid(
                    &format!("{f}.path"),
                    &p["path"],
                    "must be an absolute path",
                ));
            }
            let svc = &p["backend"]["service"];
            if p["backend"]["resource"].is_null() {
                if svc["name"].as_str().is_none_or(str::is_empty) {
                    errs.push(FieldError::required(
                        &format!("{f}.backend.service.name"),
                        "",
                    ));
                }
                if svc["port"]["number"].is_null() && svc["port"]["name"].is_null() {
                    errs.push(FieldError::required(
                        &format!("{f}.backend.service.port"),
                        "port name or number is required",
                    ));
                }
            }
        }
    }
}

fn validate_crd(obj: &Value, errs: &mut Vec<FieldError>) {
    let spec = &obj["spec"];
    let group = spec["group"].as_str().unwrap_or_default();
    let plural = spec["names"]["plural"].as_str().unwrap_or_default();
    if group.is_empty() {
        errs.push(FieldError::required("spec.group", ""));
    } else if !group.contains('.') {
        errs.push(FieldError::invalid(
            "spec.group",
            &spec["group"],
            "should be a domain with at least one dot",
        ));
    }
    if plural.is_empty() {
        errs.push(FieldError::required("spec.names.plural", ""));
    }
    if spec["names"]["kind"].as_str().is_none_or(str::is_empty) {
        errs.push(FieldError::required("spec.names.kind", ""));
    }
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    if !plural.is_empty() && !group.is_empty() && name != format!("{plural}.{group}") {
        errs.push(FieldError::invalid(
            "metadata.name",
            &obj["metadata"]["name"],
            "must be spec.names.plural+\".\"+spec.group",
        ));
    }
    one_of(
        "spec.scope",
        &spec["scope"],
        &["Cluster", "Namespaced"],
        errs,
    );
    let versions = spec["versions"].as_array().cloned().unwrap_or_default();
    if versions.is_empty() {
        errs.push(FieldError::required(
            "spec.versions",
            "must have exactly one version marked as storage version",
        ));
    } else {
        let storage = versions
            .iter()
            .filter(|v| v["storage"].as_bool() == Some(true))
            .count();
        if storage != 1 {
            errs.push(FieldError::invalid(
                "spec.versions",
                &Value::Null,
                "must have exactly one version marked as storage version",
            ));
        }
    }
}

/// Validate an object of a built-in kind on create. `kind` and `group` name
/// the type; errors come back in Kubernetes' order and wording.
pub fn validate_create(group: &str, kind: &str, obj: &Value) -> Vec<FieldError> {
    let mut errs = vec![];
    validate_metadata(obj, name_rule(group, kind), &mut errs);
    match (group, kind) {
        ("", "Pod") => validate_pod_spec("spec", &obj["spec"], &mut errs),
        ("apps", "Deployment" | "ReplicaSet") => validate_workload(obj, kind, &mut errs),
        ("", "Service") => validate_service(obj, &mut errs),
        ("", "ConfigMap" | "Secret") => validate_data_keys(obj, &mut errs),
        ("networking.k8s.io", "Ingress") => validate_ingress(obj, &mut errs),
        ("apiextensions.k8s.io", "CustomResourceDefinition") => validate_crd(obj, &mut errs),
        _ => {}
    }
    errs
}

/// Validate an update: everything [`validate_create`] checks, plus the
/// fields Kubernetes does not let change.
pub fn validate_update(group: &str, kind: &str, new: &Value, old: &Value) -> Vec<FieldError> {
    let mut errs = validate_create(group, kind, new);
    match (group, kind) {
        ("", "Pod") => {
            // Only images, activeDeadlineSeconds, tolerations and the grace
            // period may change on a running pod.
            let strip = |v: &Value| {
                let mut s = v["spec"].clone();
                for list in ["containers", "initContainers"] {
                    for c in crate::json::items_mut(&mut s, list) {
                        if let Some(m) = c.as_object_mut() {
                            m.remove("image");
                        }
                    }
                }
                for f in [
                    "activeDeadlineSeconds",
                    "tolerations",
                    "terminationGracePeriodSeconds",
                    "nodeName",
                ] {
                    if let Some(m) = s.as_object_mut() {
                        m.remove(f);
                    }
                }
                s
            };
            if strip(new) != strip(old) {
                errs.push(FieldError::forbidden("spec", "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)"));
            }
            let old_node = &old["spec"]["nodeName"];
            if !old_node.is_null() && new["spec"]["nodeName"] != *old_node {
                errs.push(FieldError::immutable(
                    "spec.nodeName",
                    &new["spec"]["nodeName"],
                ));
            }
        }
        ("apps", "Deployment") if new["spec"]["selector"] != old["spec"]["selector"] => {
            errs.push(FieldError::invalid(
                "spec.selector",
                &Value::String(format!(
                    "v1.LabelSelector{{MatchLabels:{}}}",
                    label_map_string(&new["spec"]["selector"]["matchLabels"])
                )),
                "field is immutable",
            ));
        }
        ("", "Service") => {
            let old_ip = &old["spec"]["clusterIP"];
            let new_ip = &new["spec"]["clusterIP"];
            if !old_ip.is_null()
                && old_ip.as_str() != Some("")
                && new_ip != old_ip
                && new["spec"]["type"].as_str() != Some("ExternalName")
            {
                errs.push(FieldError::invalid(
                    "spec.clusterIPs[0]",
                    new_ip,
                    "may not change once set",
                ));
            }
        }
        ("", "ConfigMap" | "Secret") => {
            if old["immutable"].as_bool() == Some(true) {
                for f in ["data", "binaryData"] {
                    if new[f] != old[f] {
                        errs.push(FieldError::forbidden(
                            f,
                            "field is immutable when `immutable` is set",
                        ));
                    }
                }
                if new["immutable"] != old["immutable"] {
                    errs.push(FieldError::forbidden(
                        "immutable",
                        "field is immutable when `immutable` is set",
                    ));
                }
            }
            if kind == "Secret" && new["type"] != old["type"] {
                errs.push(FieldError::immutable("type", &new["type"]));
            }
        }
        _ => {}
    }
    errs
}

/// The `The Pod "x" is invalid: ...` message of a set of errors.
pub fn invalid_message(kind: &str, name: &str, errs: &[FieldError]) -> String {
    let body = if errs.len() == 1 {
        errs[0].to_string()
    } else {
        format!(
            "[{}]",
            errs.iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    format!("{kind} {name:?} is invalid: {body}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pod_without_image_reads_like_kubernetes() {
        let pod = json!({"metadata": {"name": "x"}, "spec": {"containers": [{"name": "c"}]}});
        let errs = validate_create("", "Pod", &pod);
        assert_eq!(
            invalid_message("Pod", "x", &errs),
            "Pod \"x\" is invalid: spec.containers[0].image: Required value"
        );
    }

    #[test]
    fn names_are_checked_per_kind() {
        assert!(dns1123_subdomain("web.v1").is_empty());
        assert!(!dns1123_subdomain("Web").is_empty());
        assert!(!dns1035_label("1svc").is_empty());
        assert!(dns1123_label("1svc").is_empty());
        let svc = json!({"metadata": {"name": "1svc"}, "spec": {"ports": [{"port": 80}]}});
        let errs = validate_create("", "Service", &svc);
        assert_eq!(errs.len(), 1);
        assert!(errs[0]
            .to_string()
            .starts_with("metadata.name: Invalid value: \"1svc\": a DNS-1035 label"));
    }

    #[test]
    fn ports_and_selectors() {
        let svc = json!({"metadata": {"name": "s"}, "spec": {"ports": [{"port": 70000}]}});
        assert_eq!(
            validate_create("", "Service", &svc)[0].to_string(),
            "spec.ports[0].port: Invalid value: 70000: must be between 1 and 65535, inclusive"
        );
        let d = json!({"metadata": {"name": "d"}, "spec": {"selector": {"matchLabels": {"app": "a"}},
            "template": {"metadata": {"labels": {"app": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}});
        let errs = validate_create("apps", "Deployment", &d);
        assert_eq!(errs.len(), 1);
        assert!(errs[0]
            .to_string()
            .contains("`selector` does not match template `labels`"));
    }

    #[test]
    fn immutable_fields() {
        let old = json!({"metadata": {"name": "s"}, "spec": {"clusterIP": "10.43.0.5", "ports": [{"port": 80}]}});
        let mut new = old.clone();
        new["spec"]["clusterIP"] = json!("10.43.0.6");
        let errs = validate_update("", "Service", &new, &old);
        assert_eq!(errs[0].field, "spec.clusterIPs[0]");
        let old = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "a"}]}});
        let mut new = old.clone();
        new["spec"]["containers"][0]["image"] = json!("b");
        assert!(validate_update("", "Pod", &new, &old).is_empty());
        new["spec"]["containers"][0]["name"] = json!("d");
        assert_eq!(
            validate_update("", "Pod", &new, &old)[0].kind,
            ErrorType::Forbidden
        );
    }
}
