//! Istio's configuration API: the resources of networking.istio.io,
//! security.istio.io and telemetry.istio.io, as CRDs the API server installs
//! at start ([`crds`]), with schemas generated from the Rust types in
//! [`types`], and the semantic checks Istio's validating webhook makes
//! ([`validate`]), so that bad configuration is refused with Istio's own
//! words before it is stored.
//!
//! v1 is the stored version; v1beta1 (and v1alpha3 for networking,
//! v1alpha1 for telemetry) are served too, because Istio's samples still
//! use them. The versions share one schema, so no conversion is needed.

pub mod inject;
pub mod types;

use schemars::JsonSchema;
use serde_json::{json, Value};
use types::*;

/// One Istio resource kind.
#[derive(Debug)]
pub struct IstioKind {
    pub group: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub short: &'static [&'static str],
    /// The first is stored.
    pub versions: &'static [&'static str],
    /// Extra columns for `kubectl get`: (name, JSONPath).
    pub columns: &'static [(&'static str, &'static str)],
    schema: fn() -> Value,
    check: fn(&Value) -> Vec<String>,
}

const NETWORKING: &[&str] = &["v1", "v1beta1", "v1alpha3"];
const SECURITY: &[&str] = &["v1", "v1beta1"];
const TELEMETRY: &[&str] = &["v1", "v1alpha1"];

/// Every Istio kind mast serves.
pub const KINDS: &[IstioKind] = &[
    IstioKind {
        group: "networking.istio.io",
        kind: "VirtualService",
        plural: "virtualservices",
        short: &["vs"],
        versions: NETWORKING,
        columns: &[("Gateways", ".spec.gateways"), ("Hosts", ".spec.hosts")],
        schema: schema_of::<VirtualService>,
        check: check_as::<VirtualService>,
    },
    IstioKind {
        group: "networking.istio.io",
        kind: "DestinationRule",
        plural: "destinationrules",
        short: &["dr"],
        versions: NETWORKING,
        columns: &[("Host", ".spec.host")],
        schema: schema_of::<DestinationRule>,
        check: check_as::<DestinationRule>,
    },
    IstioKind {
        group: "networking.istio.io",
        kind: "Gateway",
        plural: "gateways",
        short: &["gw"],
        versions: NETWORKING,
        columns: &[],
        schema: schema_of::<Gateway>,
        check: check_as::<Gateway>,
    },
    IstioKind {
        group: "networking.istio.io",
        kind: "ServiceEntry",
        plural: "serviceentries",
        short: &["se"],
        versions: NETWORKING,
        columns: &[
            ("Hosts", ".spec.hosts"),
            ("Location", ".spec.location"),
            ("Resolution", ".spec.resolution"),
        ],
        schema: schema_of::<ServiceEntry>,
        check: check_as::<ServiceEntry>,
    },
    IstioKind {
        group: "networking.istio.io",
        kind: "Sidecar",
        plural: "sidecars",
        short: &[],
        versions: NETWORKING,
        columns: &[],
        schema: schema_of::<Sidecar>,
        check: check_as::<Sidecar>,
    },
    IstioKind {
        group: "networking.istio.io",
        kind: "WorkloadEntry",
        plural: "workloadentries",
        short: &["we"],
        versions: NETWORKING,
        columns: &[("Address", ".spec.address")],
        schema: schema_of::<WorkloadEntry>,
        check: check_as::<WorkloadEntry>,
    },
    IstioKind {
        group: "security.istio.io",
        kind: "PeerAuthentication",
        plural: "peerauthentications",
        short: &["pa"],
        versions: SECURITY,
        columns: &[("Mode", ".spec.mtls.mode")],
        schema: schema_of::<PeerAuthentication>,
        check: check_as::<PeerAuthentication>,
    },
    IstioKind {
        group: "security.istio.io",
        kind: "RequestAuthentication",
        plural: "requestauthentications",
        short: &["ra"],
        versions: SECURITY,
        columns: &[],
        schema: schema_of::<RequestAuthentication>,
        check: check_as::<RequestAuthentication>,
    },
    IstioKind {
        group: "security.istio.io",
        kind: "AuthorizationPolicy",
        plural: "authorizationpolicies",
        short: &["ap"],
        versions: SECURITY,
        columns: &[("Action", ".spec.action")],
        schema: schema_of::<AuthorizationPolicy>,
        check: check_as::<AuthorizationPolicy>,
    },
    IstioKind {
        group: "telemetry.istio.io",
        kind: "Telemetry",
        plural: "telemetries",
        short: &["telemetry"],
        versions: TELEMETRY,
        columns: &[],
        schema: schema_of::<Telemetry>,
        check: check_as::<Telemetry>,
    },
];

/// The Istio kind served at `group`/`kind`, if it is one.
pub fn lookup(group: &str, kind: &str) -> Option<&'static IstioKind> {
    KINDS.iter().find(|k| k.group == group && k.kind == kind)
}

/// A JSON schema from schemars, made structural as CRDs need it: inlined,
/// no `additionalProperties: false` (unknown fields are found by the API
/// server's field validation instead), no defaults (which the API server
/// would write into objects), and free-form values marked as such.
fn schema_of<T: JsonSchema>() -> Value {
    let settings = schemars::generate::SchemaSettings::openapi3().with(|s| {
        s.inline_subschemas = true;
        s.meta_schema = None;
    });
    let root = settings.into_generator().into_root_schema_for::<T>();
    let mut v = serde_json::to_value(root).unwrap_or(Value::Null);
    structural(&mut v);
    v
}

fn structural(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for k in [
                "$schema", "title", "default", "format", "minimum", "maximum",
            ] {
                m.remove(k);
            }
            if m.get("additionalProperties") == Some(&Value::Bool(false)) {
                m.remove("additionalProperties");
            }
            // `Option<T>` comes as `anyOf: [T, null]` or `nullable`.
            if let Some(Value::Array(any)) = m.remove("anyOf") {
                let inner = any
                    .into_iter()
                    .find(|s| s.get("type") != Some(&json!("null")));
                if let Some(Value::Object(inner)) = inner {
                    for (k, val) in inner {
                        m.entry(k).or_insert(val);
                    }
                }
            }
            m.remove("nullable");
            if let Some(Value::Array(ts)) = m.get("type").cloned() {
                if let Some(t) = ts.into_iter().find(|t| t != "null") {
                    m.insert("type".into(), t);
                }
            }
            for (_, child) in m.iter_mut() {
                structural(child);
            }
            if m.is_empty() {
                m.insert("x-kubernetes-preserve-unknown-fields".into(), json!(true));
            }
        }
        Value::Array(a) => a.iter_mut().for_each(structural),
        Value::Bool(true) => *v = json!({"x-kubernetes-preserve-unknown-fields": true}),
        _ => {}
    }
}

/// The CRD of one kind, as Istio's own install creates it.
pub fn crd(k: &IstioKind) -> Value {
    let spec_schema = (k.schema)();
    let mut columns: Vec<Value> = k
        .columns
        .iter()
        .map(|(name, path)| json!({"name": name, "type": "string", "jsonPath": path}))
        .collect();
    columns.push(json!({"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}));
    let versions: Vec<Value> = k
        .versions
        .iter()
        .enumerate()
        .map(|(i, v)| {
            json!({
                "name": v, "served": true, "storage": i == 0,
                "subresources": {"status": {}},
                "additionalPrinterColumns": columns,
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {
                        "spec": spec_schema,
                        "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                    },
                }},
            })
        })
        .collect();
    let singular = k.kind.to_ascii_lowercase();
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": format!("{}.{}", k.plural, k.group),
            "labels": {"app": "istio-pilot", "chart": "istio", "heritage": "mast"},
        },
        "spec": {
            "group": k.group,
            "names": {
                "kind": k.kind, "listKind": format!("{}List", k.kind), "plural": k.plural,
                "singular": singular, "shortNames": k.short,
                "categories": ["istio-io", format!("{}-istio-io", k.group.split('.').next().unwrap_or_default())],
            },
            "scope": "Namespaced",
            "versions": versions,
        },
    })
}

/// Every Istio CRD.
pub fn crds() -> Vec<Value> {
    KINDS.iter().map(crd).collect()
}

/// Istio's validation of a resource's spec: the errors, in Istio's words,
/// or none.
pub fn validate(k: &IstioKind, spec: &Value) -> Vec<String> {
    (k.check)(spec)
}

fn check_as<T: serde::de::DeserializeOwned + Check>(spec: &Value) -> Vec<String> {
    let spec = if spec.is_null() {
        json!({})
    } else {
        spec.clone()
    };
    match serde_json::from_value::<T>(spec) {
        Ok(t) => {
            let mut errs = vec![];
            t.check(&mut errs);
            errs
        }
        Err(e) => vec![e.to_string()],
    }
}

/// Semantic checks beyond the shape.
trait Check {
    fn check(&self, errs: &mut Vec<String>);
}

/// A Go/Istio duration (`7s`, `1.5s`, `100ms`, `1h30m`), in nanoseconds.
pub fn parse_duration(s: &str) -> Option<u128> {
    let mut rest = s.trim();
    if rest.is_empty() {
        return None;
    }
    let mut total: f64 = 0.0;
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..n].parse().ok()?;
        rest = &rest[n..];
        let (unit, len) = [
            ("ns", 1.0),
            ("us", 1e3),
            ("µs", 1e3),
            ("ms", 1e6),
            ("s", 1e9),
            ("m", 60e9),
            ("h", 3600e9),
        ]
        .iter()
        .filter(|(u, _)| rest.starts_with(u))
        .max_by_key(|(u, _)| u.len())
        .map(|(u, f)| (*f, u.len()))?;
        total += number * unit;
        rest = &rest[len..];
    }
    Some(total as u128)
}

/// The retry conditions a VirtualService's `retryOn` may name, as Istio
/// validates it (Envoy's `x-envoy-retry-on` and `x-envoy-retry-grpc-on`).
const RETRY_ON: [&str; 15] = [
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "envoy-ratelimited",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

/// A `retryOn` part that is an HTTP status code, as a number. Istio
/// counts those Go's net/http names (`http.StatusText`), so this does too.
pub fn retry_status_code(part: &str) -> Option<u32> {
    let code: u32 = part.parse().ok()?;
    let named = matches!(
        code,
        100..=103
            | 200..=208
            | 226
            | 300..=305
            | 307
            | 308
            | 400..=418
            | 421..=426
            | 428
            | 429
            | 431
            | 451
            | 500..=508
            | 510
            | 511
    );
    named.then_some(code)
}

fn duration(errs: &mut Vec<String>, what: &str, d: &Option<String>) {
    if let Some(d) = d {
        match parse_duration(d) {
            None => errs.push(format!(
                "{what}: invalid duration {d:?} (use a number and a unit, like 1.5s or 100ms)"
            )),
            Some(ns) if ns < 1_000_000 => {
                errs.push(format!("{what}: duration must be at least 1ms, not {d}"))
            }
            Some(_) => {}
        }
    }
}

fn percent(errs: &mut Vec<String>, what: &str, p: &Option<Percent>) {
    if let Some(p) = p {
        if !(0.0..=100.0).contains(&p.value) {
            errs.push(format!(
                "{what}: percentage {} is not in range 0..100",
                p.value
            ));
        }
    }
}

fn string_match(errs: &mut Vec<String>, what: &str, m: &StringMatch) {
    let set = [&m.exact, &m.prefix, &m.regex]
        .iter()
        .filter(|x| x.is_some())
        .count();
    if set > 1 {
        errs.push(format!(
            "{what}: only one of exact, prefix or regex may be set"
        ));
    }
    if let Some(re) = &m.regex {
        if let Err(e) = regex::Regex::new(re) {
            errs.push(format!(
                "{what}: {re:?} is not a valid regex: {}",
                e.to_string().lines().last().unwrap_or_default().trim()
            ));
        }
    }
}

fn destination(errs: &mut Vec<String>, what: &str, d: &Destination) {
    if d.host.trim().is_empty() {
        errs.push(format!("{what}: destination.host is required"));
    }
    if let Some(p) = d.port.as_ref().and_then(|p| p.number) {
        if p == 0 || p > 65535 {
            errs.push(format!(
                "{what}: port number {p} must be in the range 1..65535"
            ));
        }
    }
}

fn weights(errs: &mut Vec<String>, what: &str, ws: impl Iterator<Item = Option<i32>>) {
    let ws: Vec<Option<i32>> = ws.collect();
    for w in ws.iter().flatten() {
        if *w < 0 {
            errs.push(format!("{what}: weight {w} < 0"));
        }
    }
    if ws.len() > 1 && ws.iter().all(|w| w.unwrap_or(0) == 0) {
        errs.push(format!("{what}: total destination weight = 0 (weights are relative: give at least one destination a weight)"));
    }
}

impl Check for VirtualService {
    fn check(&self, errs: &mut Vec<String>) {
        let delegate = self.hosts.is_empty() && self.gateways.is_empty();
        if self.hosts.is_empty() && !delegate {
            errs.push("virtual service must have at least one host".into());
        }
        for h in &self.hosts {
            if h.trim().is_empty() {
                errs.push("hosts: a host may not be empty".into());
            }
        }
        if self.http.is_empty() && self.tcp.is_empty() && self.tls.is_empty() {
            errs.push("http, tcp or tls must be provided in virtual service".into());
        }
        for (i, r) in self.http.iter().enumerate() {
            let at = format!("http[{i}]");
            let has = [
                !r.route.is_empty(),
                r.redirect.is_some(),
                r.direct_response.is_some(),
                r.delegate.is_some(),
            ];
            if !has.iter().any(|h| *h) {
                errs.push(format!(
                    "{at}: HTTP route, redirect, direct response or delegate is required"
                ));
            }
            if has[0] && has[1] {
                errs.push(format!(
                    "{at}: HTTP route cannot contain both route and redirect"
                ));
            }
            if has[0] && has[2] {
                errs.push(format!(
                    "{at}: HTTP route cannot contain both route and direct response"
                ));
            }
            for (j, m) in r.matches.iter().enumerate() {
                let mat = format!("{at}.match[{j}]");
                for (name, sm) in [
                    ("uri", &m.uri),
                    ("scheme", &m.scheme),
                    ("method", &m.method),
                    ("authority", &m.authority),
                ] {
                    if let Some(sm) = sm {
                        string_match(errs, &format!("{mat}.{name}"), sm);
                    }
                }
                for (name, sm) in m
                    .headers
                    .iter()
                    .chain(m.query_params.iter())
                    .chain(m.without_headers.iter())
                {
                    string_match(errs, &format!("{mat}[{name}]"), sm);
                }
            }
            for (j, d) in r.route.iter().enumerate() {
                destination(errs, &format!("{at}.route[{j}]"), &d.destination);
            }
            weights(
                errs,
                &format!("{at}.route"),
                r.route.iter().map(|d| d.weight),
            );
            duration(errs, &format!("{at}.timeout"), &r.timeout);
            if let Some(rt) = &r.retries {
                if rt.attempts < 0 {
                    errs.push(format!("{at}.retries: attempts cannot be negative"));
                }
                duration(
                    errs,
                    &format!("{at}.retries.perTryTimeout"),
                    &rt.per_try_timeout,
                );
                duration(errs, &format!("{at}.retries.backoff"), &rt.backoff);
                // As Istio checks it: each part, untrimmed, is a condition
                // Envoy knows or a status code.
                for part in rt.retry_on.iter().flat_map(|on| on.split(',')) {
                    if retry_status_code(part).is_none() && !RETRY_ON.contains(&part) {
                        errs.push(format!(
                            "{at}.retries.retryOn: {part:?} is not a valid retryOn policy (use HTTP status codes or {})",
                            RETRY_ON.join(", ")
                        ));
                    }
                }
            }
            if let Some(f) = &r.fault {
                if f.delay.is_none() && f.abort.is_none() {
                    errs.push(format!(
                        "{at}.fault: HTTP fault injection must have an abort and/or a delay"
                    ));
                }
                if let Some(d) = &f.delay {
                    if d.fixed_delay.is_none() {
                        errs.push(format!("{at}.fault.delay: fixedDelay is required"));
                    }
                    duration(
                        errs,
                        &format!("{at}.fault.delay.fixedDelay"),
                        &d.fixed_delay,
                    );
                    percent(errs, &format!("{at}.fault.delay"), &d.percentage);
                    if let Some(p) = d.percent {
                        if !(0..=100).contains(&p) {
                            errs.push(format!(
                                "{at}.fault.delay: percent {p} is not in range 0..100"
                            ));
                        }
                    }
                }
                if let Some(a) = &f.abort {
                    match a.http_status {
                        Some(s) if !(200..=599).contains(&s) => {
                            errs.push(format!("{at}.fault.abort: invalid abort http status {s} (200..599)"))
                        }
                        None if a.grpc_status.is_none() && a.http2_error.is_none() => {
                            errs.push(format!("{at}.fault.abort: httpStatus, grpcStatus or http2Error is required"))
                        }
                        _ => {}
                    }
                    percent(errs, &format!("{at}.fault.abort"), &a.percentage);
                }
            }
            if let Some(m) = &r.mirror {
                destination(errs, &format!("{at}.mirror"), m);
            }
            percent(
                errs,
                &format!("{at}.mirrorPercentage"),
                &r.mirror_percentage,
            );
            if let Some(d) = &r.direct_response {
                if !(200..=599).contains(&d.status) {
                    errs.push(format!(
                        "{at}.directResponse: status {} must be in 200..599",
                        d.status
                    ));
                }
            }
            if let Some(rw) = &r.rewrite {
                if let Some(rr) = &rw.uri_regex_rewrite {
                    if let Err(e) = regex::Regex::new(&rr.matches) {
                        errs.push(format!(
                            "{at}.rewrite.uriRegexRewrite: {:?} is not a valid regex: {e}",
                            rr.matches
                        ));
                    }
                }
            }
            if let Some(c) = &r.cors_policy {
                for (j, o) in c.allow_origins.iter().enumerate() {
                    string_match(errs, &format!("{at}.corsPolicy.allowOrigins[{j}]"), o);
                }
                duration(errs, &format!("{at}.corsPolicy.maxAge"), &c.max_age);
            }
        }
        for (i, r) in self.tcp.iter().enumerate() {
            for (j, d) in r.route.iter().enumerate() {
                destination(errs, &format!("tcp[{i}].route[{j}]"), &d.destination);
            }
            weights(
                errs,
                &format!("tcp[{i}].route"),
                r.route.iter().map(|d| d.weight),
            );
        }
        for (i, r) in self.tls.iter().enumerate() {
            if r.matches.is_empty() {
                errs.push(format!(
                    "tls[{i}]: TLS route must have at least one match condition"
                ));
            }
            for (j, m) in r.matches.iter().enumerate() {
                if m.sni_hosts.is_empty() {
                    errs.push(format!(
                        "tls[{i}].match[{j}]: TLS match must have at least one SNI host"
                    ));
                }
            }
            for (j, d) in r.route.iter().enumerate() {
                destination(errs, &format!("tls[{i}].route[{j}]"), &d.destination);
            }
            weights(
                errs,
                &format!("tls[{i}].route"),
                r.route.iter().map(|d| d.weight),
            );
        }
    }
}

fn traffic_policy(errs: &mut Vec<String>, at: &str, p: &TrafficPolicy) {
    let lb = |errs: &mut Vec<String>, at: &str, lb: &Option<LoadBalancerSettings>| {
        if let Some(s) = lb.as_ref().and_then(|l| l.simple.as_deref()) {
            if ![
                "UNSPECIFIED",
                "LEAST_CONN",
                "RANDOM",
                "PASSTHROUGH",
                "ROUND_ROBIN",
                "LEAST_REQUEST",
            ]
            .contains(&s)
            {
                errs.push(format!("{at}.loadBalancer.simple: unknown load balancer {s:?} (ROUND_ROBIN, LEAST_REQUEST, RANDOM or PASSTHROUGH)"));
            }
        }
    };
    let od = |errs: &mut Vec<String>, at: &str, o: &Option<OutlierDetection>| {
        if let Some(o) = o {
            duration(
                errs,
                &format!("{at}.outlierDetection.interval"),
                &o.interval,
            );
            duration(
                errs,
                &format!("{at}.outlierDetection.baseEjectionTime"),
                &o.base_ejection_time,
            );
            if let Some(p) = o.max_ejection_percent {
                if !(0..=100).contains(&p) {
                    errs.push(format!(
                        "{at}.outlierDetection: maxEjectionPercent {p} is not in range 0..100"
                    ));
                }
            }
        }
    };
    lb(errs, at, &p.load_balancer);
    od(errs, at, &p.outlier_detection);
    if let Some(pool) = &p.connection_pool {
        connection_pool(errs, &format!("{at}.connectionPool"), pool);
    }
    client_tls(errs, &format!("{at}.tls"), &p.tls);
    for (i, pl) in p.port_level_settings.iter().enumerate() {
        let at = format!("{at}.portLevelSettings[{i}]");
        if pl.port.as_ref().and_then(|p| p.number).is_none() {
            errs.push(format!("{at}: port is required"));
        }
        lb(errs, &at, &pl.load_balancer);
        od(errs, &at, &pl.outlier_detection);
        if let Some(pool) = &pl.connection_pool {
            connection_pool(errs, &format!("{at}.connectionPool"), pool);
        }
        client_tls(errs, &format!("{at}.tls"), &pl.tls);
    }
}

/// A DestinationRule's `tls`, as Istio's `validateTLS` checks it.
fn client_tls(errs: &mut Vec<String>, at: &str, t: &Option<types::ClientTlsSettings>) {
    let Some(t) = t else {
        return;
    };
    let mode = t.mode.as_deref().unwrap_or("DISABLE");
    if !["DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL"].contains(&mode) {
        errs.push(format!(
            "{at}.mode: unknown mode {mode:?} (DISABLE, SIMPLE, MUTUAL or ISTIO_MUTUAL)"
        ));
        return;
    }
    let set = |v: &Option<String>| v.as_deref().is_some_and(|v| !v.is_empty());
    let (cert, key, ca, cred) = (
        set(&t.client_certificate),
        set(&t.private_key),
        set(&t.ca_certificates),
        set(&t.credential_name),
    );
    let sans = !t.subject_alt_names.is_empty();
    if t.insecure_skip_verify == Some(true) {
        if mode == "SIMPLE" && (ca || cred || sans) {
            errs.push(format!("{at}: cannot specify CaCertificates or CredentialName or SubjectAltNames when InsecureSkipVerify is set true"));
        }
        if mode == "MUTUAL" && (ca || sans) {
            errs.push(format!("{at}: cannot specify CaCertificates or SubjectAltNames when InsecureSkipVerify is set true"));
        }
    }
    if matches!(mode, "SIMPLE" | "MUTUAL") && cred {
        if cert || ca || key {
            errs.push(format!("{at}: cannot specify client certificates or CA certificate If credentialName is set"));
        }
        return;
    }
    if mode == "MUTUAL" {
        if !cert {
            errs.push(format!("{at}: client certificate required for mutual tls"));
        }
        if !key {
            errs.push(format!("{at}: private key required for mutual tls"));
        }
    }
}

/// As Istio's `validateConnectionPool`.
fn connection_pool(errs: &mut Vec<String>, at: &str, pool: &types::ConnectionPoolSettings) {
    let not_negative = |errs: &mut Vec<String>, what: &str, v: Option<i32>| {
        if let Some(v) = v.filter(|v| *v < 0) {
            errs.push(format!("{at}.{what}: {v} must not be negative"));
        }
    };
    if let Some(tcp) = &pool.tcp {
        not_negative(errs, "tcp.maxConnections", tcp.max_connections);
        for (what, d) in [
            ("connectTimeout", &tcp.connect_timeout),
            ("maxConnectionDuration", &tcp.max_connection_duration),
            ("idleTimeout", &tcp.idle_timeout),
        ] {
            duration(errs, &format!("{at}.tcp.{what}"), d);
        }
        if let Some(k) = &tcp.tcp_keepalive {
            duration(errs, &format!("{at}.tcp.tcpKeepalive.time"), &k.time);
            duration(
                errs,
                &format!("{at}.tcp.tcpKeepalive.interval"),
                &k.interval,
            );
        }
    }
    if let Some(http) = &pool.http {
        for (what, v) in [
            ("http1MaxPendingRequests", http.http1_max_pending_requests),
            ("http2MaxRequests", http.http2_max_requests),
            ("maxRequestsPerConnection", http.max_requests_per_connection),
            ("maxRetries", http.max_retries),
            ("maxConcurrentStreams", http.max_concurrent_streams),
        ] {
            not_negative(errs, &format!("http.{what}"), v);
        }
        duration(errs, &format!("{at}.http.idleTimeout"), &http.idle_timeout);
        match http.h2_upgrade_policy.as_deref() {
            None | Some("DEFAULT") | Some("DO_NOT_UPGRADE") => {}
            Some("UPGRADE") if http.use_client_protocol == Some(true) => errs.push(format!(
                "{at}.http: useClientProtocol must not be true when h2UpgradePolicy is UPGRADE"
            )),
            Some("UPGRADE") => {}
            Some(other) => errs.push(format!(
                "{at}.http.h2UpgradePolicy: {other:?} is not one of DEFAULT, DO_NOT_UPGRADE, UPGRADE"
            )),
        }
    }
}

impl Check for DestinationRule {
    fn check(&self, errs: &mut Vec<String>) {
        if self.host.trim().is_empty() {
            errs.push("host is required".into());
        }
        if let Some(p) = &self.traffic_policy {
            traffic_policy(errs, "trafficPolicy", p);
        }
        let mut seen = std::collections::HashSet::new();
        for (i, s) in self.subsets.iter().enumerate() {
            if s.name.trim().is_empty() {
                errs.push(format!("subsets[{i}]: subset name is required"));
            } else if !seen.insert(s.name.clone()) {
                errs.push(format!("subsets[{i}]: duplicate subset name {:?}", s.name));
            }
            if s.labels.is_empty() {
                errs.push(format!(
                    "subsets[{i}]: subset {:?} must have at least one label to select its pods",
                    s.name
                ));
            }
            if let Some(p) = &s.traffic_policy {
                traffic_policy(errs, &format!("subsets[{i}].trafficPolicy"), p);
            }
        }
    }
}

const PROTOCOLS: &[&str] = &[
    "HTTP", "HTTPS", "GRPC", "GRPC-WEB", "HTTP2", "MONGO", "MYSQL", "REDIS", "TCP", "TLS", "UDP",
];

fn port(errs: &mut Vec<String>, at: &str, p: &types::Port) {
    if p.number == 0 || p.number > 65535 {
        errs.push(format!(
            "{at}: port number {} must be in the range 1..65535",
            p.number
        ));
    }
    if let Some(proto) = &p.protocol {
        if !PROTOCOLS.contains(&proto.to_ascii_uppercase().as_str()) {
            errs.push(format!("{at}: unrecognized protocol {proto:?}"));
        }
    }
}

impl Check for Gateway {
    fn check(&self, errs: &mut Vec<String>) {
        if self.servers.is_empty() {
            errs.push("gateway must have at least one server".into());
        }
        for (i, s) in self.servers.iter().enumerate() {
            port(errs, &format!("servers[{i}].port"), &s.port);
            if s.port.protocol.is_none() {
                errs.push(format!("servers[{i}].port: protocol is required"));
            }
            if s.hosts.is_empty() {
                errs.push(format!(
                    "servers[{i}]: server config must contain at least one host"
                ));
            }
            server_tls(errs, &format!("servers[{i}]"), s);
        }
    }
}

/// A Gateway server's TLS, as Istio's `validateServer` and
/// `validateTLSOptions` check it.
fn server_tls(errs: &mut Vec<String>, at: &str, s: &Server) {
    let proto = s.port.protocol_upper();
    let is_tls = proto == "HTTPS" || proto == "TLS";
    let Some(t) = &s.tls else {
        if is_tls {
            errs.push(format!(
                "{at}: server must have TLS settings for HTTPS/TLS protocols"
            ));
        }
        return;
    };
    let mode = t.mode.as_deref().unwrap_or("PASSTHROUGH");
    const MODES: [&str; 6] = [
        "PASSTHROUGH",
        "SIMPLE",
        "MUTUAL",
        "AUTO_PASSTHROUGH",
        "ISTIO_MUTUAL",
        "OPTIONAL_MUTUAL",
    ];
    if !MODES.contains(&mode) {
        errs.push(format!(
            "{at}.tls.mode: unknown mode {mode:?} ({})",
            MODES.join(", ")
        ));
        return;
    }
    let set = |v: &Option<String>| v.as_deref().is_some_and(|v| !v.is_empty());
    let (cert, key, ca, cred) = (
        set(&t.server_certificate),
        set(&t.private_key),
        set(&t.ca_certificates),
        set(&t.credential_name),
    );
    if !is_tls {
        let http = matches!(proto.as_str(), "HTTP" | "HTTP2" | "GRPC" | "GRPC-WEB");
        if !http {
            errs.push(format!(
                "{at}: server cannot have TLS settings for non HTTPS/TLS ports"
            ));
        } else if !matches!(mode, "PASSTHROUGH" | "AUTO_PASSTHROUGH") || cert || key || ca {
            errs.push(format!(
                "{at}: server cannot have TLS settings for plain text HTTP ports"
            ));
        }
    }
    for v in [&t.min_protocol_version, &t.max_protocol_version]
        .into_iter()
        .flatten()
    {
        if !["TLS_AUTO", "TLSV1_0", "TLSV1_1", "TLSV1_2", "TLSV1_3"].contains(&v.as_str()) {
            errs.push(format!(
                "{at}.tls: unknown TLS version {v:?} (TLS_AUTO, TLSV1_0 to TLSV1_3)"
            ));
        }
    }
    match mode {
        "ISTIO_MUTUAL" => {
            for (what, has) in [
                ("server certificate", cert),
                ("private key", key),
                ("CA bundle", ca),
                ("credentialName", cred),
            ] {
                if has {
                    errs.push(format!(
                        "{at}.tls: ISTIO_MUTUAL TLS cannot have associated {what}"
                    ));
                }
            }
        }
        "SIMPLE" | "MUTUAL" | "OPTIONAL_MUTUAL" if !cred => {
            if !cert {
                errs.push(format!(
                    "{at}.tls: {mode} TLS requires a server certificate"
                ));
            }
            if !key {
                errs.push(format!("{at}.tls: {mode} TLS requires a private key"));
            }
            if mode != "SIMPLE" && !ca {
                errs.push(format!("{at}.tls: {mode} TLS requires a client CA bundle"));
            }
        }
        _ => {}
    }
}

impl Check for ServiceEntry {
    fn check(&self, errs: &mut Vec<String>) {
        if self.hosts.is_empty() {
            errs.push("service entry must have at least one host".into());
        }
        for (i, p) in self.ports.iter().enumerate() {
            port(errs, &format!("ports[{i}]"), p);
        }
        if let Some(l) = &self.location {
            if !["MESH_EXTERNAL", "MESH_INTERNAL"].contains(&l.as_str()) {
                errs.push(format!(
                    "location: unknown location {l:?} (MESH_EXTERNAL or MESH_INTERNAL)"
                ));
            }
        }
        if let Some(r) = &self.resolution {
            if !["NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN"].contains(&r.as_str()) {
                errs.push(format!(
                    "resolution: unknown resolution {r:?} (NONE, STATIC, DNS or DNS_ROUND_ROBIN)"
                ));
            }
            if r == "STATIC" && self.endpoints.is_empty() && self.workload_selector.is_none() {
                errs.push(
                    "endpoints must be provided if service entry resolution mode is STATIC".into(),
                );
            }
        }
    }
}

impl Check for Sidecar {
    fn check(&self, errs: &mut Vec<String>) {
        for (i, e) in self.egress.iter().enumerate() {
            if e.hosts.is_empty() {
                errs.push(format!(
                    "egress[{i}]: sidecar: egress listener must contain at least one host"
                ));
            }
        }
        if let Some(m) = self
            .outbound_traffic_policy
            .as_ref()
            .and_then(|o| o.mode.as_deref())
        {
            if !["REGISTRY_ONLY", "ALLOW_ANY"].contains(&m) {
                errs.push(format!(
                    "outboundTrafficPolicy.mode: unknown mode {m:?} (REGISTRY_ONLY or ALLOW_ANY)"
                ));
            }
        }
    }
}

impl Check for WorkloadEntry {
    fn check(&self, errs: &mut Vec<String>) {
        if self.address.as_deref().is_none_or(str::is_empty) && self.network.is_none() {
            errs.push("address is required".into());
        }
    }
}

fn mtls_mode(errs: &mut Vec<String>, at: &str, m: &Option<MutualTls>) {
    if let Some(mode) = m.as_ref().and_then(|m| m.mode.as_deref()) {
        if !["UNSET", "DISABLE", "PERMISSIVE", "STRICT"].contains(&mode) {
            errs.push(format!(
                "{at}: unknown mTLS mode {mode:?} (UNSET, DISABLE, PERMISSIVE or STRICT)"
            ));
        }
    }
}

impl Check for PeerAuthentication {
    fn check(&self, errs: &mut Vec<String>) {
        mtls_mode(errs, "mtls.mode", &self.mtls);
        for (p, m) in &self.port_level_mtls {
            if p.parse::<u16>().map_or(true, |p| p == 0) {
                errs.push(format!(
                    "portLevelMtls: port {p:?} must be in the range 1..65535"
                ));
            }
            mtls_mode(errs, &format!("portLevelMtls[{p}].mode"), &Some(m.clone()));
        }
        if !self.port_level_mtls.is_empty() && self.selector.is_none() {
            errs.push("portLevelMtls requires a workload selector".into());
        }
    }
}

impl Check for RequestAuthentication {
    fn check(&self, errs: &mut Vec<String>) {
        for (i, r) in self.jwt_rules.iter().enumerate() {
            if r.issuer.trim().is_empty() {
                errs.push(format!("jwtRules[{i}]: issuer must be set"));
            }
            if r.jwks.is_some() && r.jwks_uri.is_some() {
                errs.push(format!(
                    "jwtRules[{i}]: only one of jwks or jwksUri may be set"
                ));
            }
            duration(errs, &format!("jwtRules[{i}].timeout"), &r.timeout);
        }
    }
}

impl Check for AuthorizationPolicy {
    fn check(&self, errs: &mut Vec<String>) {
        let action = self.action.as_deref().unwrap_or("ALLOW");
        if !["ALLOW", "DENY", "AUDIT", "CUSTOM"].contains(&action) {
            errs.push(format!(
                "action: unknown action {action:?} (ALLOW, DENY, AUDIT or CUSTOM)"
            ));
        }
        if action == "CUSTOM" && self.provider.is_none() {
            errs.push("action CUSTOM needs a provider".into());
        }
        for (i, r) in self.rules.iter().enumerate() {
            for (j, w) in r.when.iter().enumerate() {
                if w.values.is_empty() && w.not_values.is_empty() {
                    errs.push(format!(
                        "rules[{i}].when[{j}]: condition {:?} needs values or notValues",
                        w.key
                    ));
                }
            }
        }
    }
}

impl Check for Telemetry {
    fn check(&self, _errs: &mut Vec<String>) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(kind: &str, spec: Value) -> Vec<String> {
        let k = KINDS.iter().find(|k| k.kind == kind).unwrap();
        validate(k, &spec)
    }

    #[test]
    fn destination_rule_tls_is_validated_as_istio_does() {
        let dr = |tls: Value| {
            errors(
                "DestinationRule",
                json!({"host": "api.example.com", "trafficPolicy": {"portLevelSettings": [{"port": {"number": 443}, "tls": tls}]}}),
            )
        };
        let ok = Vec::<String>::new();
        assert_eq!(dr(json!({"mode": "SIMPLE", "sni": "api.example.com"})), ok);
        assert_eq!(
            dr(json!({"mode": "MUTUAL", "credentialName": "client"})),
            ok
        );
        assert_eq!(
            dr(json!({"mode": "MUTUAL"})),
            [
                "trafficPolicy.portLevelSettings[0].tls: client certificate required for mutual tls",
                "trafficPolicy.portLevelSettings[0].tls: private key required for mutual tls"
            ]
        );
        assert_eq!(
            dr(json!({"mode": "SIMPLE", "insecureSkipVerify": true, "caCertificates": "/ca.pem"})),
            ["trafficPolicy.portLevelSettings[0].tls: cannot specify CaCertificates or CredentialName or SubjectAltNames when InsecureSkipVerify is set true"]
        );
        assert_eq!(
            dr(json!({"mode": "SIMPLE", "credentialName": "c", "caCertificates": "/ca.pem"})),
            ["trafficPolicy.portLevelSettings[0].tls: cannot specify client certificates or CA certificate If credentialName is set"]
        );
        assert_eq!(
            dr(json!({"mode": "STRICT"})),
            ["trafficPolicy.portLevelSettings[0].tls.mode: unknown mode \"STRICT\" (DISABLE, SIMPLE, MUTUAL or ISTIO_MUTUAL)"]
        );
    }

    #[test]
    fn gateway_tls_is_validated_as_istio_does() {
        let gw = |port: Value, tls: Value| {
            let mut server = json!({"port": port, "hosts": ["*.example.com"]});
            if !tls.is_null() {
                server["tls"] = tls;
            }
            errors("Gateway", json!({"servers": [server]}))
        };
        let https = json!({"number": 443, "name": "https", "protocol": "HTTPS"});
        let http = json!({"number": 80, "name": "http", "protocol": "HTTP"});
        let ok = Vec::<String>::new();
        assert_eq!(
            gw(
                https.clone(),
                json!({"mode": "SIMPLE", "credentialName": "c"})
            ),
            ok
        );
        assert_eq!(
            gw(
                https.clone(),
                json!({"mode": "MUTUAL", "serverCertificate": "/c.pem", "privateKey": "/k.pem", "caCertificates": "/ca.pem"})
            ),
            ok
        );
        assert_eq!(gw(http.clone(), json!({"httpsRedirect": true})), ok);
        assert_eq!(
            gw(https.clone(), Value::Null),
            ["servers[0]: server must have TLS settings for HTTPS/TLS protocols"]
        );
        assert_eq!(
            gw(
                https.clone(),
                json!({"mode": "MUTUAL", "serverCertificate": "/c.pem"})
            ),
            [
                "servers[0].tls: MUTUAL TLS requires a private key",
                "servers[0].tls: MUTUAL TLS requires a client CA bundle"
            ]
        );
        assert_eq!(
            gw(
                http.clone(),
                json!({"mode": "SIMPLE", "credentialName": "c"})
            ),
            ["servers[0]: server cannot have TLS settings for plain text HTTP ports"]
        );
        assert_eq!(
            gw(
                https.clone(),
                json!({"mode": "ISTIO_MUTUAL", "credentialName": "c"})
            ),
            ["servers[0].tls: ISTIO_MUTUAL TLS cannot have associated credentialName"]
        );
        assert_eq!(
            gw(https, json!({"mode": "STRICT"})),
            ["servers[0].tls.mode: unknown mode \"STRICT\" (PASSTHROUGH, SIMPLE, MUTUAL, AUTO_PASSTHROUGH, ISTIO_MUTUAL, OPTIONAL_MUTUAL)"]
        );
    }

    #[test]
    fn bookinfo_samples_are_valid() {
        let vs = json!({"hosts": ["ratings"], "http": [
            {"match": [{"headers": {"end-user": {"exact": "jason"}}}],
             "fault": {"delay": {"percent": 100, "fixedDelay": "7s"}},
             "route": [{"destination": {"host": "ratings", "subset": "v1"}}]},
            {"route": [{"destination": {"host": "ratings", "subset": "v1"}}]}]});
        assert_eq!(errors("VirtualService", vs), Vec::<String>::new());
        let gw = json!({"selector": {"istio": "ingressgateway"}, "servers": [{"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]}]});
        assert_eq!(errors("Gateway", gw), Vec::<String>::new());
        let dr =
            json!({"host": "reviews", "subsets": [{"name": "v1", "labels": {"version": "v1"}}]});
        assert_eq!(errors("DestinationRule", dr), Vec::<String>::new());
    }

    #[test]
    fn what_istio_rejects() {
        let route = |extra: Value| {
            let mut r = json!({"route": [{"destination": {"host": "a"}, "weight": 50}, {"destination": {"host": "b"}, "weight": 50}]});
            for (k, v) in extra.as_object().unwrap() {
                r[k] = v.clone();
            }
            json!({"hosts": ["a"], "http": [r]})
        };
        let neg = json!({"hosts": ["a"], "http": [{"route": [{"destination": {"host": "a"}, "weight": -10}]}]});
        assert_eq!(
            errors("VirtualService", neg),
            ["http[0].route: weight -10 < 0"]
        );
        let none = json!({"hosts": ["a"], "http": [{"match": [{"uri": {"prefix": "/"}}]}]});
        assert!(errors("VirtualService", none)[0]
            .contains("route, redirect, direct response or delegate is required"));
        let unknown = json!({"hosts": ["a"], "http": [{"rout": []}]});
        assert!(errors("VirtualService", unknown)[0].contains("unknown field `rout`"));
        let bad = errors("VirtualService", route(json!({"timeout": "ten seconds"})));
        assert!(bad[0].contains("invalid duration"), "{bad:?}");
        let re = errors(
            "VirtualService",
            route(json!({"match": [{"uri": {"regex": "(["}}]})),
        );
        assert!(re[0].contains("is not a valid regex"), "{re:?}");
        let dr = json!({"host": "reviews", "subsets": [{"name": "v1"}]});
        assert!(errors("DestinationRule", dr)[0].contains("must have at least one label"));
        let abort = errors(
            "VirtualService",
            route(json!({"fault": {"abort": {"httpStatus": 700, "percentage": {"value": 150}}}})),
        );
        assert_eq!(abort.len(), 2, "{abort:?}");
        assert!(errors(
            "VirtualService",
            route(json!({"timeout": "1.5s", "retries": {"attempts": 3, "perTryTimeout": "100ms"}}))
        )
        .is_empty());
        // retryOn: Envoy's conditions and status codes, as Istio checks.
        assert!(errors(
            "VirtualService",
            route(json!({"retries": {"attempts": 2, "retryOn": "gateway-error,503,unavailable", "backoff": "50ms", "retryIgnorePreviousHosts": false}}))
        )
        .is_empty());
        let bad = errors(
            "VirtualService",
            route(
                json!({"retries": {"attempts": 2, "retryOn": "5xx,599,server-error", "backoff": "fast"}}),
            ),
        );
        assert_eq!(bad.len(), 3, "{bad:?}");
        assert!(
            bad.iter()
                .any(|e| e.contains("\"599\" is not a valid retryOn policy")),
            "{bad:?}"
        );
        assert!(
            bad.iter()
                .any(|e| e.contains("\"server-error\" is not a valid retryOn policy")),
            "{bad:?}"
        );
        assert!(bad.iter().any(|e| e.contains("retries.backoff")), "{bad:?}");
        // connectionPool, as Istio's validateConnectionPool.
        let pool = |p: Value| {
            errors(
                "DestinationRule",
                json!({"host": "r", "trafficPolicy": {"connectionPool": p}}),
            )
        };
        assert!(pool(json!({"tcp": {"maxConnectionDuration": "1h", "idleTimeout": "10m", "tcpKeepalive": {"probes": 3, "time": "60s", "interval": "10s"}}, "http": {"maxRequestsPerConnection": 1, "idleTimeout": "30s", "h2UpgradePolicy": "UPGRADE", "maxConcurrentStreams": 100}})).is_empty());
        let bad = pool(json!({
            "tcp": {"maxConnectionDuration": "0.5ms", "tcpKeepalive": {"time": "soon"}},
            "http": {"maxRequestsPerConnection": -1, "h2UpgradePolicy": "UPGRADE", "useClientProtocol": true}
        }));
        assert_eq!(bad.len(), 4, "{bad:?}");
        assert!(
            bad.iter()
                .any(|e| e.contains("tcp.maxConnectionDuration: duration must be at least 1ms")),
            "{bad:?}"
        );
        assert!(
            bad.iter()
                .any(|e| e.contains("tcpKeepalive.time: invalid duration")),
            "{bad:?}"
        );
        assert!(
            bad.iter()
                .any(|e| e.contains("http.maxRequestsPerConnection: -1 must not be negative")),
            "{bad:?}"
        );
        assert!(
            bad.iter()
                .any(|e| e.contains("useClientProtocol must not be true")),
            "{bad:?}"
        );
        assert!(pool(json!({"http": {"h2UpgradePolicy": "SOMETIMES"}}))[0]
            .contains("is not one of DEFAULT"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("7s"), Some(7_000_000_000));
        assert_eq!(parse_duration("1.5s"), Some(1_500_000_000));
        assert_eq!(parse_duration("100ms"), Some(100_000_000));
        assert_eq!(parse_duration("1h30m"), Some(5_400_000_000_000));
        assert_eq!(parse_duration("10"), None);
        assert_eq!(parse_duration("s"), None);
    }

    #[test]
    fn crds_are_structural() {
        for c in crds() {
            let schema = &c["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
            let text = schema.to_string();
            assert!(
                !text.contains("\"$ref\"")
                    && !text.contains("anyOf")
                    && !text.contains("\"additionalProperties\":false"),
                "{text}"
            );
            assert_eq!(c["spec"]["versions"][0]["storage"], true);
        }
        let vs = crd(lookup("networking.istio.io", "VirtualService").unwrap());
        let http = &vs["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
            ["properties"]["http"];
        assert_eq!(http["type"], "array");
        assert_eq!(http["items"]["properties"]["timeout"]["type"], "string");
        assert_eq!(
            http["items"]["properties"]["route"]["items"]["properties"]["weight"]["type"],
            "integer"
        );
    }
}
