//! core/v1 Events about pods and other objects, shaped as Kubernetes components write them,
//! so `kubectl describe pod` lists them the same way.

use serde_json::{json, Value};

/// Who reports an event: `default-scheduler`, or `kubelet` on a node.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    pub component: &'a str,
    pub host: Option<&'a str>,
}

/// A new Event about the core/v1 object `kind` `ns/name` (uid), `ty`
/// Normal or Warning.
#[allow(clippy::too_many_arguments)]
pub fn event(
    kind: &str,
    ns: &str,
    name: &str,
    uid: &str,
    src: Source,
    ty: &str,
    reason: &str,
    msg: &str,
) -> Value {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut source = json!({"component": src.component});
    if let Some(h) = src.host {
        source["host"] = json!(h);
    }
    json!({"apiVersion": "v1", "kind": "Event",
        "metadata": {"generateName": format!("{name}."), "namespace": ns},
        "involvedObject": {"apiVersion": "v1", "kind": kind, "name": name, "namespace": ns, "uid": uid},
        "reason": reason, "message": msg, "type": ty, "count": 1,
        "firstTimestamp": now, "lastTimestamp": now,
        "source": source, "reportingComponent": src.component, "reportingInstance": src.host.unwrap_or(src.component)})
}
