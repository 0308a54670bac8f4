//! mast's object store: a revisioned key-value store with etcd v3 semantics.
//!
//! Every write gets the next cluster-wide revision; reads can be served at a
//! past revision; watches replay history from a revision and then follow live
//! writes; compaction drops history that is no longer needed. The API server
//! is written against the [`Store`] trait only, so the embedded SQLite backend
//! ([`SqliteStore`], the default) and an etcd backend are interchangeable.
//!
//! Keys follow the layout Kubernetes uses in etcd:
//! `/registry/<resource>/<namespace>/<name>` (cluster-scoped objects omit the
//! namespace), so data moved between backends keeps its shape.

mod sqlite;

use async_trait::async_trait;
use bytes::Bytes;
use std::fmt;

pub use sqlite::{SqliteOptions, SqliteStore};

/// One stored value with the revisions etcd reports for it.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Bytes,
    /// Revision of the write that created this key (its current incarnation).
    pub create_revision: i64,
    /// Revision of the last write to this key; for a delete event, the
    /// revision of the delete.
    pub mod_revision: i64,
}

impl fmt::Debug for KeyValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyValue")
            .field("key", &self.key)
            .field("bytes", &self.value.len())
            .field("create_revision", &self.create_revision)
            .field("mod_revision", &self.mod_revision)
            .finish()
    }
}

/// What happened to a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Create,
    Update,
    Delete,
}

/// One change, as a watch delivers it. For deletes, `kv.value` is the last
/// value the key had before it was deleted.
#[derive(Clone, Debug)]
pub struct Event {
    pub kind: EventKind,
    pub kv: KeyValue,
}

/// A range read: keys starting with `prefix`, in key order.
#[derive(Clone, Debug, Default)]
pub struct RangeRequest {
    pub prefix: String,
    /// Continue after this key (exclusive); used for paginated lists.
    pub start_after: Option<String>,
    /// At most this many results; 0 means no limit.
    pub limit: usize,
    /// Read the state as of this revision; `None` means the latest.
    pub revision: Option<i64>,
}

/// The answer to a [`RangeRequest`].
#[derive(Clone, Debug)]
pub struct RangeResult {
    pub kvs: Vec<KeyValue>,
    /// True when `limit` cut the result short.
    pub more: bool,
    /// How many matching keys follow the returned ones (only when `more`).
    pub remaining: i64,
    /// The revision the read was served at.
    pub revision: i64,
}

/// Errors a store reports. Each carries the key or revision involved so the
/// API server can build a precise Kubernetes `Status` from it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("key {key} already exists")]
    AlreadyExists { key: String },
    #[error("key {key} not found")]
    NotFound { key: String },
    #[error("key {key} was modified at revision {actual}, not {expected}; re-read it and retry")]
    Conflict {
        key: String,
        expected: i64,
        actual: i64,
    },
    #[error("revision {requested} has been compacted; the oldest available is {compacted}")]
    Compacted { requested: i64, compacted: i64 },
    #[error("revision {requested} is newer than the store's current revision {current}")]
    FutureRevision { requested: i64, current: i64 },
    #[error("store backend failed: {0}")]
    Backend(String),
    #[error("store is shutting down")]
    Closed,
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A stream of events for keys under one prefix, in revision order.
#[derive(Debug)]
pub struct Watch {
    rx: tokio::sync::mpsc::Receiver<Result<Event>>,
}

impl Watch {
    /// The next event; `None` once the store shuts down. An `Err` ends the
    /// watch (for example when the watcher fell behind compaction).
    pub async fn next(&mut self) -> Option<Result<Event>> {
        self.rx.recv().await
    }
}

/// A revisioned key-value store with etcd v3 semantics.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The current value of a key.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>>;

    /// Keys under a prefix, optionally at a past revision and paginated.
    async fn range(&self, req: RangeRequest) -> Result<RangeResult>;

    /// Create a key that must not exist yet.
    async fn create(&self, key: &str, value: Bytes) -> Result<KeyValue>;

    /// Replace a key's value if its mod revision is still `expected_mod_revision`.
    async fn update(&self, key: &str, value: Bytes, expected_mod_revision: i64)
        -> Result<KeyValue>;

    /// Delete a key, optionally only if its mod revision matches. Returns the
    /// deleted value with `mod_revision` set to the revision of the delete.
    async fn delete(&self, key: &str, expected_mod_revision: Option<i64>) -> Result<KeyValue>;

    /// Events for keys under `prefix` with a revision greater than `after`.
    async fn watch(&self, prefix: &str, after: i64) -> Result<Watch>;

    /// Drop history older than `revision`, keeping each key's value as of it.
    async fn compact(&self, revision: i64) -> Result<()>;

    /// The latest committed revision.
    fn revision(&self) -> i64;

    /// The oldest revision that reads and watches can still be served at.
    fn compacted_revision(&self) -> i64;
}

/// The key Kubernetes would use in etcd for an object.
pub fn object_key(resource_prefix: &str, namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) => format!("/registry/{resource_prefix}/{ns}/{name}"),
        None => format!("/registry/{resource_prefix}/{name}"),
    }
}

/// The prefix holding every object of a resource, optionally in one namespace.
pub fn resource_prefix(resource_prefix: &str, namespace: Option<&str>) -> String {
    match namespace {
        Some(ns) => format!("/registry/{resource_prefix}/{ns}/"),
        None => format!("/registry/{resource_prefix}/"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_etcd_layout() {
        assert_eq!(
            object_key("pods", Some("default"), "web"),
            "/registry/pods/default/web"
        );
        assert_eq!(
            object_key("namespaces", None, "kube-system"),
            "/registry/namespaces/kube-system"
        );
        assert_eq!(resource_prefix("pods", None), "/registry/pods/");
        assert_eq!(resource_prefix("pods", Some("a")), "/registry/pods/a/");
    }
}
