//! Watch: a stream of `{"type": ..., "object": ...}` events, one JSON
//! document per line, from a resourceVersion on, with selectors applied,
//! bookmarks, and an ERROR event with code 410 once history is compacted.

use crate::request::{Reply, Request, Wants};
use crate::rest::{from_stored, list_page, ApiResult, Filters, Target};
use crate::state::ApiState;
use crate::status::ApiError;
use bytes::Bytes;
use mast_store::{EventKind, RangeRequest, StoreError};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// One stored event, decoded once and shared by every watcher of it: with
/// dozens of watchers on pods (one per node agent), parsing and encoding
/// each event per watcher was the API server's main cost.
pub struct Decoded {
    pub obj: Value,
    /// The object as JSON with its resourceVersion, when the stored bytes
    /// can be served as they are (no version conversion).
    raw: Option<Bytes>,
}

type EventId = (String, i64);

/// Recently decoded events, keyed by (key, mod revision), oldest evicted first.
#[derive(Default)]
pub struct EventCache {
    inner: std::sync::Mutex<Entries>,
}

#[derive(Default)]
struct Entries {
    map: std::collections::HashMap<EventId, Arc<Decoded>>,
    order: std::collections::VecDeque<EventId>,
}

const EVENT_CACHE: usize = 4096;

impl EventCache {
    fn get(&self, t: &Target, kv: &mast_store::KeyValue, deleted: bool) -> Option<Arc<Decoded>> {
        let id = (kv.key.clone(), kv.mod_revision);
        if let Some(d) = self.inner.lock().ok()?.map.get(&id) {
            return Some(d.clone());
        }
        let mut obj = from_stored(&t.res, kv).ok()?;
        if deleted {
            obj["metadata"]["resourceVersion"] = json!(kv.mod_revision.to_string());
        }
        let raw = if t.res.storage_version.is_none() {
            crate::rest::splice_resource_version(&kv.value, kv.mod_revision).map(Bytes::from)
        } else {
            None
        };
        let d = Arc::new(Decoded { obj, raw });
        let mut g = self.inner.lock().ok()?;
        if g.map.insert(id.clone(), d.clone()).is_none() {
            g.order.push_back(id);
            while g.order.len() > EVENT_CACHE {
                if let Some(old) = g.order.pop_front() {
                    g.map.remove(&old);
                }
            }
        }
        Some(d)
    }
}

fn raw_line(ev_type: &str, raw: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(raw.len() + 32);
    out.extend_from_slice(b"{\"type\":\"");
    out.extend_from_slice(ev_type.as_bytes());
    out.extend_from_slice(b"\",\"object\":");
    out.extend_from_slice(raw);
    out.extend_from_slice(b"}\n");
    Bytes::from(out)
}

fn line(ev_type: &str, object: Value) -> Bytes {
    let mut s = json!({"type": ev_type, "object": object}).to_string();
    s.push('\n');
    Bytes::from(s)
}

struct Encoder {
    t: Target,
    wants: Wants,
    include: String,
}

impl Encoder {
    fn encode(&self, ev_type: &str, obj: Value) -> Bytes {
        match self.wants {
            Wants::Table if ev_type != "BOOKMARK" && ev_type != "ERROR" => {
                let rv = obj["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                line(
                    ev_type,
                    mast_api::table::table(
                        &self.t.res,
                        std::slice::from_ref(&obj),
                        &self.include,
                        &rv,
                        None,
                    ),
                )
            }
            _ => line(ev_type, obj),
        }
    }
}

/// Start a watch for a list request with `watch=true`.
pub async fn watch(state: Arc<ApiState>, t: &Target, req: &Request) -> ApiResult<Reply> {
    let filters = Filters::from_request(&t.res, req)?;
    let rv = req.param("resourceVersion").unwrap_or("");
    let bookmarks = req.flag("allowWatchBookmarks");
    let send_initial = req.flag("sendInitialEvents");
    let timeout = req
        .param("timeoutSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(1800)
        .min(24 * 3600);
    let enc = Encoder {
        t: t.clone(),
        wants: req.wants(),
        include: req.param("includeObject").unwrap_or("Metadata").to_owned(),
    };
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    // Initial state: for "" or "0" (or sendInitialEvents) the current
    // objects come first as ADDED events, as Kubernetes does.
    let mut initial = vec![];
    let start: i64;
    if rv.is_empty() || rv == "0" || send_initial {
        let list_req = Request {
            query: Default::default(),
            body: Bytes::new(),
            ..req.clone()
        };
        let page = list_page(&state, t, &list_req, &filters).await?;
        start = page.revision;
        initial = page.items;
    } else {
        start = rv
            .parse()
            .map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv:?}")))?;
    }
    let prefix = t.prefix();
    let stream = match state.store.watch(&prefix, start).await {
        Ok(w) => Some(w),
        Err(StoreError::Compacted {
            requested,
            compacted,
        }) => {
            let status = ApiError::gone(format!(
                "too old resource version: {requested} ({compacted})"
            ))
            .status();
            let _ = tx.send(line("ERROR", status)).await;
            None
        }
        Err(e) => return Err(e.into()),
    };
    // Which keys currently match the selectors, to turn label changes into
    // ADDED/DELETED as Kubernetes does.
    let mut matching: HashSet<String> = HashSet::new();
    let selective = !filters.labels.is_empty() || filters.fields.fields().next().is_some();
    if selective {
        if initial.is_empty() && !(rv.is_empty() || rv == "0") {
            if let Ok(r) = state
                .store
                .range(RangeRequest {
                    prefix: prefix.clone(),
                    revision: Some(start),
                    ..Default::default()
                })
                .await
            {
                for kv in r.kvs {
                    if let Ok(o) = from_stored(&t.res, &kv) {
                        if filters.matches(&o) {
                            matching.insert(kv.key.clone());
                        }
                    }
                }
            }
        }
        for o in &initial {
            let key = t.key(o["metadata"]["name"].as_str().unwrap_or_default());
            let key = match (&t.ns, o["metadata"]["namespace"].as_str()) {
                (None, Some(ns)) => mast_store::object_key(
                    &t.res.storage,
                    Some(ns),
                    o["metadata"]["name"].as_str().unwrap_or_default(),
                ),
                _ => key,
            };
            matching.insert(key);
        }
    }
    let t = t.clone();
    tokio::spawn(async move {
        for o in initial {
            if tx.send(enc.encode("ADDED", o)).await.is_err() {
                return;
            }
        }
        if send_initial {
            let bm = json!({"kind": t.res.kind, "apiVersion": t.res.api_version(),
                "metadata": {"resourceVersion": start.to_string(), "annotations": {"k8s.io/initial-events-end": "true"}}});
            if tx.send(line("BOOKMARK", bm)).await.is_err() {
                return;
            }
        }
        let Some(mut stream) = stream else { return };
        let deadline = tokio::time::sleep(Duration::from_secs(timeout));
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        tick.tick().await;
        let mut last = start;
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                _ = tick.tick(), if bookmarks => {
                    let bm = json!({"kind": t.res.kind, "apiVersion": t.res.api_version(), "metadata": {"resourceVersion": last.to_string()}});
                    if tx.send(line("BOOKMARK", bm)).await.is_err() { return; }
                }
                _ = tx.closed() => return,
                ev = stream.next() => {
                    let ev = match ev {
                        Some(Ok(ev)) => ev,
                        Some(Err(StoreError::Compacted { requested, compacted })) => {
                            let status = ApiError::gone(format!("too old resource version: {requested} ({compacted})")).status();
                            let _ = tx.send(line("ERROR", status)).await;
                            return;
                        }
                        _ => return,
                    };
                    last = ev.kv.mod_revision;
                    let Some(d) = state.event_cache.get(&t, &ev.kv, ev.kind == EventKind::Delete) else { continue };
                    let now_matches = !selective || filters.matches(&d.obj);
                    let ty = if selective {
                        let was = matching.contains(&ev.kv.key);
                        match (ev.kind, was, now_matches) {
                            (EventKind::Delete, true, _) => { matching.remove(&ev.kv.key); "DELETED" }
                            (EventKind::Delete, false, _) => continue,
                            (_, false, true) => { matching.insert(ev.kv.key.clone()); "ADDED" }
                            (_, true, true) => "MODIFIED",
                            (_, true, false) => { matching.remove(&ev.kv.key); "DELETED" }
                            (_, false, false) => continue,
                        }
                    } else {
                        match ev.kind {
                            EventKind::Create => "ADDED",
                            EventKind::Update => "MODIFIED",
                            EventKind::Delete => "DELETED",
                        }
                    };
                    let out = match (&d.raw, &enc.wants) {
                        (Some(raw), Wants::Object) => raw_line(ty, raw),
                        _ => enc.encode(ty, d.obj.clone()),
                    };
                    if tx.send(out).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    Ok(Reply::Stream { rx })
}
