//! Decoding Kubernetes protobuf request bodies into JSON objects.
//!
//! kubectl's typed commands (`create namespace`, `create deployment`, ...)
//! send `application/vnd.kubernetes.protobuf`: the magic `k8s\0`, then a
//! `runtime.Unknown` envelope holding the type and the object's own message.
//! Field numbers come from a table generated from the k8s-pb crate
//! ([`crate::proto_table`]); JSON names come from the OpenAPI schema, so one
//! walker serves every built-in type. Wire parsing uses prost's primitives.
//!
//! Kubernetes' Go encoder writes every non-pointer field even when empty, so
//! zero values are dropped, as JSON's `omitempty` would, except for the
//! pointer fields where zero means something (`replicas: 0`).

use crate::schema::SchemaIndex;
use prost::bytes::Buf;
use prost::encoding::{decode_key, decode_varint, WireType};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::OnceLock;

/// Wire kind of a field, as the generated table records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Str,
    Int,
    Bool,
    Double,
    Bytes,
    Msg,
    MapStr,
    MapMsg,
    MapBytes,
}

/// One field of a message.
#[derive(Clone, Copy, Debug)]
pub struct Field {
    pub tag: u32,
    pub name: &'static str,
    pub kind: Kind,
    pub repeated: bool,
    pub msg: &'static str,
}

/// Why a protobuf body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    #[error("the protobuf body does not start with the Kubernetes magic bytes \"k8s\\0\"")]
    Magic,
    #[error("malformed protobuf: {0}")]
    Wire(String),
    #[error("protobuf is not supported for {0}; send JSON or YAML")]
    Unsupported(String),
}

/// Pointer fields whose zero or false value must be kept.
const KEEP_ZERO: &[&str] = &[
    "replicas",
    "automountServiceAccountToken",
    "enableServiceLinks",
    "terminationGracePeriodSeconds",
    "runAsUser",
    "runAsGroup",
    "runAsNonRoot",
    "privileged",
    "allowPrivilegeEscalation",
    "readOnlyRootFilesystem",
    "defaultMode",
    "mode",
    "optional",
    "immutable",
    "revisionHistoryLimit",
    "progressDeadlineSeconds",
    "activeDeadlineSeconds",
    "setHostnameAsFQDN",
    "shareProcessNamespace",
    "allocateLoadBalancerNodePorts",
    "ready",
    "serving",
    "terminating",
    "hostUsers",
    "fsGroup",
    "deletionGracePeriodSeconds",
    "gracePeriodSeconds",
    "tolerationSeconds",
    "expirationSeconds",
    "controller",
    "blockOwnerDeletion",
    "leaseDurationSeconds",
    "leaseTransitions",
    "weight",
];

fn table() -> &'static HashMap<&'static str, &'static [Field]> {
    static T: OnceLock<HashMap<&'static str, &'static [Field]>> = OnceLock::new();
    T.get_or_init(|| {
        crate::proto_table::MESSAGES
            .iter()
            .map(|(n, f)| (*n, *f))
            .collect()
    })
}

fn norm(s: &str) -> String {
    s.chars()
        .filter(|c| *c != '_')
        .flat_map(char::to_lowercase)
        .collect()
}

fn wire(e: impl std::fmt::Display) -> ProtoError {
    ProtoError::Wire(e.to_string())
}

fn take_bytes<'a>(buf: &mut &'a [u8]) -> Result<&'a [u8], ProtoError> {
    let len = decode_varint(buf).map_err(wire)? as usize;
    if len > buf.len() {
        return Err(ProtoError::Wire(format!(
            "field of {len} bytes runs past the end"
        )));
    }
    let (head, tail) = buf.split_at(len);
    *buf = tail;
    Ok(head)
}

fn skip(buf: &mut &[u8], wt: WireType) -> Result<(), ProtoError> {
    match wt {
        WireType::Varint => {
            decode_varint(buf).map_err(wire)?;
        }
        WireType::SixtyFourBit => {
            if buf.len() < 8 {
                return Err(ProtoError::Wire("truncated 64-bit field".into()));
            }
            buf.advance(8);
        }
        WireType::ThirtyTwoBit => {
            if buf.len() < 4 {
                return Err(ProtoError::Wire("truncated 32-bit field".into()));
            }
            buf.advance(4);
        }
        WireType::LengthDelimited => {
            take_bytes(buf)?;
        }
        _ => return Err(ProtoError::Wire("groups are not used by Kubernetes".into())),
    }
    Ok(())
}

/// One field as read off the wire: tag, wire type, bytes (length-delimited)
/// or number (varint and fixed).
type RawField = (u32, WireType, Vec<u8>, u64);

/// Raw fields of one message, in wire order.
fn fields(mut buf: &[u8]) -> Result<Vec<RawField>, ProtoError> {
    let mut out = vec![];
    while buf.has_remaining() {
        let (tag, wt) = decode_key(&mut buf).map_err(wire)?;
        match wt {
            WireType::Varint => out.push((tag, wt, vec![], decode_varint(&mut buf).map_err(wire)?)),
            WireType::LengthDelimited => out.push((tag, wt, take_bytes(&mut buf)?.to_vec(), 0)),
            WireType::SixtyFourBit => {
                if buf.len() < 8 {
                    return Err(ProtoError::Wire("truncated 64-bit field".into()));
                }
                out.push((tag, wt, vec![], buf.get_u64_le()));
            }
            other => skip(&mut buf, other)?,
        }
    }
    Ok(out)
}

fn string(b: &[u8]) -> Result<String, ProtoError> {
    String::from_utf8(b.to_vec())
        .map_err(|_| ProtoError::Wire("a string field is not UTF-8".into()))
}

fn b64(b: &[u8]) -> Value {
    use base64::Engine;
    Value::String(base64::engine::general_purpose::STANDARD.encode(b))
}

fn time(msg: &[u8], micro: bool) -> Result<Value, ProtoError> {
    let mut secs = 0i64;
    let mut nanos = 0i64;
    for (tag, _, _, v) in fields(msg)? {
        match tag {
            1 => secs = v as i64,
            2 => nanos = v as i64,
            _ => {}
        }
    }
    let t = chrono::DateTime::from_timestamp(secs, nanos as u32)
        .ok_or_else(|| ProtoError::Wire(format!("time {secs}s is out of range")))?;
    Ok(json!(if micro {
        t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
    } else {
        t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
    }))
}

fn raw_json(msg: &[u8]) -> Result<Value, ProtoError> {
    for (tag, _, bytes, _) in fields(msg)? {
        if tag == 1 {
            return serde_json::from_slice(&bytes)
                .map_err(|e| ProtoError::Wire(format!("embedded JSON: {e}")));
        }
    }
    Ok(Value::Null)
}

fn is_zero(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(m) => m.is_empty(),
    }
}

fn scalar(kind: Kind, wt: WireType, bytes: &[u8], v: u64) -> Result<Value, ProtoError> {
    Ok(match (kind, wt) {
        (Kind::Str, _) => Value::String(string(bytes)?),
        (Kind::Int, _) => json!(v as i64),
        (Kind::Bool, _) => json!(v != 0),
        (Kind::Double, _) => json!(f64::from_bits(v)),
        (Kind::Bytes, _) => b64(bytes),
        _ => Value::Null,
    })
}

/// Decode one message of definition `def` into its JSON form.
pub fn decode_message(
    idx: &SchemaIndex,
    def: &str,
    msg: &[u8],
    depth: usize,
) -> Result<Value, ProtoError> {
    if depth > 64 {
        return Err(ProtoError::Wire("messages nest too deeply".into()));
    }
    let short = def.rsplit('.').next().unwrap_or(def);
    match def {
        "io.k8s.apimachinery.pkg.apis.meta.v1.Time" => return time(msg, false),
        "io.k8s.apimachinery.pkg.apis.meta.v1.MicroTime" => return time(msg, true),
        "io.k8s.apimachinery.pkg.runtime.RawExtension"
        | "io.k8s.apimachinery.pkg.apis.meta.v1.FieldsV1"
        | "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.JSON" => return raw_json(msg),
        "io.k8s.apimachinery.pkg.api.resource.Quantity" => {
            for (tag, _, bytes, _) in fields(msg)? {
                if tag == 1 {
                    return Ok(Value::String(string(&bytes)?));
                }
            }
            return Ok(json!("0"));
        }
        "io.k8s.apimachinery.pkg.util.intstr.IntOrString" => {
            let (mut ty, mut i, mut s) = (0u64, 0i64, String::new());
            for (tag, _, bytes, v) in fields(msg)? {
                match tag {
                    1 => ty = v,
                    2 => i = v as i64 as i32 as i64,
                    3 => s = string(&bytes)?,
                    _ => {}
                }
            }
            return Ok(if ty == 1 { json!(s) } else { json!(i) });
        }
        _ => {}
    }
    let fields_table = table()
        .get(def)
        .ok_or_else(|| ProtoError::Unsupported(short.to_owned()))?;
    // The table names types as Rust does (`HttpIngressRuleValue`), the
    // OpenAPI document as Go does (`HTTPIngressRuleValue`).
    let schema = idx
        .defs
        .get(def)
        .or_else(|| {
            idx.defs
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(def))
                .map(|(_, v)| v)
        })
        .cloned();
    let props: Vec<String> = schema
        .as_ref()
        .and_then(|s| s["properties"].as_object())
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    let json_name = |rust: &str| -> Option<String> {
        let n = norm(rust);
        match props.iter().find(|p| norm(p) == n) {
            Some(p) => Some(p.clone()),
            // A type the OpenAPI document does not list is itself inlined
            // in its parent (`IngressRuleValue`): its fields keep their
            // own names. In a listed type, a field missing from the schema
            // is an embedded struct (`None`), whose fields are the parent's.
            None if schema.is_none() => Some(camel(rust)),
            None => None,
        }
    };
    let mut out = Map::new();
    for (tag, wt, bytes, v) in fields(msg)? {
        let Some(f) = fields_table.iter().find(|f| f.tag == tag) else {
            continue;
        };
        let value = match f.kind {
            Kind::Msg => decode_message(idx, f.msg, &bytes, depth + 1)?,
            Kind::MapStr | Kind::MapMsg | Kind::MapBytes => {
                let (mut k, mut val) = (String::new(), Value::Null);
                for (etag, _, ebytes, _) in fields(&bytes)? {
                    match etag {
                        1 => k = string(&ebytes)?,
                        2 => {
                            val = match f.kind {
                                Kind::MapStr => Value::String(string(&ebytes)?),
                                Kind::MapBytes => b64(&ebytes),
                                _ => decode_message(idx, f.msg, &ebytes, depth + 1)?,
                            }
                        }
                        _ => {}
                    }
                }
                if val.is_null() && f.kind == Kind::MapStr {
                    val = json!("");
                }
                let name = json_name(f.name).unwrap_or_else(|| f.name.to_owned());
                let entry = out.entry(name).or_insert_with(|| json!({}));
                entry[k] = val;
                continue;
            }
            k => scalar(k, wt, &bytes, v)?,
        };
        match json_name(f.name) {
            Some(name) => {
                if f.repeated {
                    let e = out.entry(name).or_insert_with(|| json!([]));
                    if let Some(a) = e.as_array_mut() {
                        a.push(value);
                    }
                } else {
                    out.insert(name, value);
                }
            }
            // An embedded Go struct (`json:",inline"`): its fields are ours.
            None if f.kind == Kind::Msg => {
                if let Value::Object(m) = value {
                    out.extend(m);
                }
            }
            None => {}
        }
    }
    out.retain(|k, v| !is_zero(v) || (KEEP_ZERO.contains(&k.as_str()) && !v.is_null()));
    Ok(Value::Object(out))
}

/// `path_type` → `pathType`.
fn camel(snake: &str) -> String {
    let mut out = String::new();
    let mut up = false;
    for c in snake.chars() {
        if c == '_' {
            up = true;
        } else if up {
            out.extend(c.to_uppercase());
            up = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// Decode a `application/vnd.kubernetes.protobuf` body whose object is of
/// definition `def` (e.g. `io.k8s.api.core.v1.Namespace`).
pub fn decode_body(idx: &SchemaIndex, def: &str, body: &[u8]) -> Result<Value, ProtoError> {
    let rest = body.strip_prefix(b"k8s\0").ok_or(ProtoError::Magic)?;
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), Vec::new());
    for (tag, _, bytes, _) in fields(rest)? {
        match tag {
            1 => {
                for (t, _, b, _) in fields(&bytes)? {
                    match t {
                        1 => api_version = string(&b)?,
                        2 => kind = string(&b)?,
                        _ => {}
                    }
                }
            }
            2 => raw = bytes,
            _ => {}
        }
    }
    let mut obj = decode_message(idx, def, &raw, 0)?;
    if !api_version.is_empty() {
        obj["apiVersion"] = json!(api_version);
    }
    if !kind.is_empty() {
        obj["kind"] = json!(kind);
    }
    Ok(obj)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::encoding::{encode_key, encode_varint};

    fn ld(tag: u32, payload: &[u8], out: &mut Vec<u8>) {
        encode_key(tag, WireType::LengthDelimited, out);
        encode_varint(payload.len() as u64, out);
        out.extend_from_slice(payload);
    }

    fn varint(tag: u32, v: u64, out: &mut Vec<u8>) {
        encode_key(tag, WireType::Varint, out);
        encode_varint(v, out);
    }

    fn idx() -> SchemaIndex {
        SchemaIndex::new(crate::openapi::builtin_definitions(
            &crate::registry::builtin_resources(),
        ))
    }

    #[test]
    fn decodes_a_deployment_envelope() {
        // metadata{name=web, generateName=""}, spec{replicas=0, selector{matchLabels{app=web}},
        // template{spec{containers[{name=nginx, image=nginx}]}}}
        let mut meta = vec![];
        ld(1, b"web", &mut meta);
        ld(2, b"", &mut meta);
        let mut entry = vec![];
        ld(1, b"app", &mut entry);
        ld(2, b"web", &mut entry);
        let mut selector = vec![];
        ld(1, &entry, &mut selector);
        let mut container = vec![];
        ld(1, b"nginx", &mut container);
        ld(2, b"nginx", &mut container);
        let mut pod_spec = vec![];
        ld(2, &container, &mut pod_spec);
        let mut template = vec![];
        ld(2, &pod_spec, &mut template);
        let mut spec = vec![];
        varint(1, 0, &mut spec);
        ld(2, &selector, &mut spec);
        ld(3, &template, &mut spec);
        let mut deploy = vec![];
        ld(1, &meta, &mut deploy);
        ld(2, &spec, &mut deploy);
        let mut tm = vec![];
        ld(1, b"apps/v1", &mut tm);
        ld(2, b"Deployment", &mut tm);
        let mut body = b"k8s\0".to_vec();
        ld(1, &tm, &mut body);
        ld(2, &deploy, &mut body);
        let v = decode_body(&idx(), "io.k8s.api.apps.v1.Deployment", &body).unwrap();
        assert_eq!(v["apiVersion"], "apps/v1");
        assert_eq!(v["metadata"], json!({"name": "web"}));
        assert_eq!(v["spec"]["replicas"], 0);
        assert_eq!(v["spec"]["selector"]["matchLabels"]["app"], "web");
        assert_eq!(
            v["spec"]["template"]["spec"]["containers"][0]["image"],
            "nginx"
        );
    }

    #[test]
    fn rejects_garbage() {
        assert!(matches!(
            decode_body(&idx(), "io.k8s.api.core.v1.Namespace", b"nope"),
            Err(ProtoError::Magic)
        ));
        let mut body = b"k8s\0".to_vec();
        body.extend_from_slice(&[0x12, 0xff, 0xff, 0x01]);
        assert!(decode_body(&idx(), "io.k8s.api.core.v1.Namespace", &body).is_err());
    }
}
