//! The embedded SQLite backend, like k3s's kine but in-process.
//!
//! Two tables: `kv` holds the current value of every live key (fast reads and
//! lists), `log` holds one row per revision (watch replay and reads at a past
//! revision). Both are written in the same transaction.
//!
//! All writes go through one writer thread. It takes every write queued at that
//! moment into a single transaction, so one fsync covers a whole batch (group
//! commit): a write is acknowledged only after its batch is durable, yet many
//! concurrent writers do not each pay for a disk flush. Reads use a small pool
//! of separate connections; WAL mode lets them run beside the writer, each in a
//! consistent snapshot.

use crate::{
    Event, EventKind, KeyValue, RangeRequest, RangeResult, Result, Store, StoreError, Watch,
};
use async_trait::async_trait;
use bytes::Bytes;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{broadcast, mpsc, oneshot};

/// How to open a [`SqliteStore`].
#[derive(Clone, Debug)]
pub struct SqliteOptions {
    pub path: PathBuf,
    /// Flush to disk on every commit (`synchronous=FULL`). Turning it off is
    /// only for throwaway stores in tests.
    pub durable: bool,
    /// Read connections kept open beside the writer.
    pub readers: usize,
}

impl SqliteOptions {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            durable: true,
            readers: 4,
        }
    }
}

/// Writes queued for the writer thread.
enum Op {
    Create {
        key: String,
        value: Bytes,
    },
    Update {
        key: String,
        value: Bytes,
        expected: i64,
    },
    Delete {
        key: String,
        expected: Option<i64>,
    },
    Compact {
        revision: i64,
    },
}

type Reply = oneshot::Sender<Result<KeyValue>>;

struct Shared {
    revision: AtomicI64,
    compacted: AtomicI64,
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
    events: broadcast::Sender<Arc<Vec<Event>>>,
}

/// The default object store: a SQLite database file in WAL mode.
#[derive(Clone)]
pub struct SqliteStore {
    shared: Arc<Shared>,
    writes: mpsc::Sender<(Op, Reply)>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("revision", &self.shared.revision.load(Ordering::Relaxed))
            .finish()
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY,
    create_rev INTEGER NOT NULL,
    mod_rev INTEGER NOT NULL,
    value BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS log (
    rev INTEGER PRIMARY KEY,
    key TEXT NOT NULL,
    create_rev INTEGER NOT NULL,
    deleted INTEGER NOT NULL,
    value BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS log_key_rev ON log(key, rev);
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
";

fn backend(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn open_connection(path: &Path, durable: bool) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", if durable { "FULL" } else { "OFF" })?;
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    Ok(conn)
}

fn meta(conn: &Connection, name: &str) -> rusqlite::Result<i64> {
    Ok(conn
        .query_row("SELECT value FROM meta WHERE name = ?1", [name], |r| {
            r.get(0)
        })
        .optional()?
        .unwrap_or(0))
}

/// The smallest string greater than every string that starts with `prefix`.
fn prefix_end(prefix: &str) -> String {
    let mut bytes = prefix.as_bytes().to_vec();
    while let Some(last) = bytes.pop() {
        if last < 0x7f {
            bytes.push(last + 1);
            return String::from_utf8(bytes).unwrap_or_else(|_| "\u{10ffff}".into());
        }
    }
    "\u{10ffff}".into()
}

impl SqliteStore {
    /// Open (creating if needed) the database at `opts.path`.
    pub fn open(opts: SqliteOptions) -> Result<Self> {
        if let Some(dir) = opts.path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Backend(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let writer = open_connection(&opts.path, opts.durable).map_err(backend)?;
        writer.execute_batch(SCHEMA).map_err(backend)?;
        let revision = meta(&writer, "revision").map_err(backend)?;
        let compacted = meta(&writer, "compacted").map_err(backend)?;
        let readers = (0..opts.readers.max(1))
            .map(|_| open_connection(&opts.path, opts.durable).map(Mutex::new))
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(backend)?;
        // Recent batches for live watchers; one that falls further behind
        // catches up from the log table instead, so this bounds memory only.
        let (events, _) = broadcast::channel(256);
        let shared = Arc::new(Shared {
            revision: AtomicI64::new(revision),
            compacted: AtomicI64::new(compacted),
            readers,
            next_reader: AtomicUsize::new(0),
            events,
        });
        let (writes, rx) = mpsc::channel(4096);
        let thread_shared = shared.clone();
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer_loop(writer, rx, thread_shared))
            .map_err(|e| StoreError::Backend(format!("cannot start the writer thread: {e}")))?;
        Ok(Self { shared, writes })
    }

    async fn write(&self, op: Op) -> Result<KeyValue> {
        let (tx, rx) = oneshot::channel();
        self.writes
            .send((op, tx))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Run `f` on a read connection, off the async runtime.
    async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || {
            let n = shared.readers.len();
            let start = shared.next_reader.fetch_add(1, Ordering::Relaxed);
            // Prefer an idle connection; wait on one only when all are busy.
            for i in 0..n {
                if let Ok(mut conn) = shared.readers[(start + i) % n].try_lock() {
                    return f(&mut conn);
                }
            }
            let mut conn = shared.readers[start % n]
                .lock()
                .map_err(|_| StoreError::Backend("a read connection was poisoned".into()))?;
            f(&mut conn)
        })
        .await
        .map_err(|e| StoreError::Backend(format!("read task failed: {e}")))?
    }
}

fn row_kv(r: &rusqlite::Row<'_>) -> rusqlite::Result<KeyValue> {
    Ok(KeyValue {
        key: r.get(0)?,
        create_revision: r.get(1)?,
        mod_revision: r.get(2)?,
        value: Bytes::from(r.get::<_, Vec<u8>>(3)?),
    })
}

/// Replay `log` rows for `prefix` after revision `after`, at most `limit`.
fn log_events(conn: &Connection, prefix: &str, after: i64, limit: i64) -> Result<Vec<Event>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT key, create_rev, rev, value, deleted FROM log
             WHERE rev > ?1 AND key >= ?2 AND key < ?3 ORDER BY rev LIMIT ?4",
        )
        .map_err(backend)?;
    let rows = stmt
        .query_map(params![after, prefix, prefix_end(prefix), limit], |r| {
            let kv = row_kv(r)?;
            let deleted: bool = r.get(4)?;
            Ok(Event {
                kind: if deleted {
                    EventKind::Delete
                } else if kv.create_revision == kv.mod_revision {
                    EventKind::Create
                } else {
                    EventKind::Update
                },
                kv,
            })
        })
        .map_err(backend)?;
    rows.collect::<rusqlite::Result<Vec<_>>>().map_err(backend)
}

#[async_trait]
impl Store for SqliteStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let key = key.to_owned();
        self.read(move |conn| {
            conn.prepare_cached("SELECT key, create_rev, mod_rev, value FROM kv WHERE key = ?1")
                .map_err(backend)?
                .query_row([key], row_kv)
                .optional()
                .map_err(backend)
        })
        .await
    }

    async fn range(&self, req: RangeRequest) -> Result<RangeResult> {
        let current = self.revision();
        if let Some(rev) = req.revision {
            let compacted = self.compacted_revision();
            if rev < compacted {
                return Err(StoreError::Compacted {
                    requested: rev,
                    compacted,
                });
            }
            if rev > current {
                return Err(StoreError::FutureRevision {
                    requested: rev,
                    current,
                });
            }
        }
        self.read(move |conn| {
            let tx = conn.transaction().map_err(backend)?;
            let end = prefix_end(&req.prefix);
            let lower = match &req.start_after {
                Some(k) if k.as_str() >= req.prefix.as_str() => format!("{k}\0"),
                _ => req.prefix.clone(),
            };
            let (revision, mut kvs) = match req.revision {
                None => {
                    let revision = meta(&tx, "revision").map_err(backend)?;
                    let limit = if req.limit == 0 {
                        -1
                    } else {
                        req.limit as i64 + 1
                    };
                    let mut stmt = tx
                        .prepare_cached(
                            "SELECT key, create_rev, mod_rev, value FROM kv
                             WHERE key >= ?1 AND key < ?2 ORDER BY key LIMIT ?3",
                        )
                        .map_err(backend)?;
                    let kvs = stmt
                        .query_map(params![lower, end, limit], row_kv)
                        .map_err(backend)?
                        .collect::<rusqlite::Result<Vec<_>>>()
                        .map_err(backend)?;
                    (revision, kvs)
                }
                Some(rev) => {
                    // The latest row of each key at or before `rev`; SQLite
                    // takes the bare columns from the row holding MAX(rev).
                    let mut stmt = tx
                        .prepare_cached(
                            "SELECT key, create_rev, MAX(rev), value, deleted FROM log
                             WHERE key >= ?1 AND key < ?2 AND rev <= ?3
                             GROUP BY key ORDER BY key",
                        )
                        .map_err(backend)?;
                    let rows = stmt
                        .query_map(params![lower, end, rev], |r| {
                            Ok((row_kv(r)?, r.get::<_, bool>(4)?))
                        })
                        .map_err(backend)?;
                    let mut kvs = Vec::new();
                    for row in rows {
                        let (kv, deleted) = row.map_err(backend)?;
                        if !deleted {
                            kvs.push(kv);
                            if req.limit != 0 && kvs.len() > req.limit {
                                break;
                            }
                        }
                    }
                    (rev, kvs)
                }
            };
            let more = req.limit != 0 && kvs.len() > req.limit;
            let mut remaining = 0;
            if more {
                kvs.truncate(req.limit);
                if req.revision.is_none() {
                    let last = kvs.last().map(|kv| kv.key.clone()).unwrap_or_default();
                    remaining = tx
                        .query_row(
                            "SELECT COUNT(*) FROM kv WHERE key > ?1 AND key < ?2",
                            params![last, end],
                            |r| r.get(0),
                        )
                        .map_err(backend)?;
                }
            }
            Ok(RangeResult {
                kvs,
                more,
                remaining,
                revision,
            })
        })
        .await
    }

    async fn create(&self, key: &str, value: Bytes) -> Result<KeyValue> {
        self.write(Op::Create {
            key: key.to_owned(),
            value,
        })
        .await
    }

    async fn update(&self, key: &str, value: Bytes, expected: i64) -> Result<KeyValue> {
        self.write(Op::Update {
            key: key.to_owned(),
            value,
            expected,
        })
        .await
    }

    async fn delete(&self, key: &str, expected: Option<i64>) -> Result<KeyValue> {
        self.write(Op::Delete {
            key: key.to_owned(),
            expected,
        })
        .await
    }

    async fn watch(&self, prefix: &str, after: i64) -> Result<Watch> {
        let compacted = self.compacted_revision();
        if after < compacted {
            return Err(StoreError::Compacted {
                requested: after,
                compacted,
            });
        }
        // Subscribe before replaying, so nothing committed in between is lost;
        // duplicates are dropped by revision below.
        let mut live = self.shared.events.subscribe();
        let (tx, rx) = mpsc::channel(1024);
        let store = self.clone();
        let prefix = prefix.to_owned();
        tokio::spawn(async move {
            let mut last = after;
            'replay: loop {
                // Replay history in chunks until caught up with the log.
                loop {
                    let p = prefix.clone();
                    let chunk = store
                        .read(move |conn| log_events(conn, &p, last, 1000))
                        .await;
                    let chunk = match chunk {
                        Ok(c) => c,
                        Err(e) => {
                            let _ = tx.send(Err(e)).await;
                            return;
                        }
                    };
                    let done = chunk.len() < 1000;
                    for ev in chunk {
                        last = ev.kv.mod_revision;
                        if tx.send(Ok(ev)).await.is_err() {
                            return;
                        }
                    }
                    if done {
                        break;
                    }
                }
                loop {
                    match live.recv().await {
                        Ok(batch) => {
                            for ev in batch.iter() {
                                if ev.kv.mod_revision <= last || !ev.kv.key.starts_with(&prefix) {
                                    continue;
                                }
                                last = ev.kv.mod_revision;
                                if tx.send(Ok(ev.clone())).await.is_err() {
                                    return;
                                }
                            }
                        }
                        // Fell behind the live feed: catch up from the log again.
                        Err(broadcast::error::RecvError::Lagged(_)) => continue 'replay,
                        Err(broadcast::error::RecvError::Closed) => return,
                    }
                }
            }
        });
        Ok(Watch { rx })
    }

    async fn compact(&self, revision: i64) -> Result<()> {
        self.write(Op::Compact { revision }).await.map(|_| ())
    }

    fn revision(&self) -> i64 {
        self.shared.revision.load(Ordering::Acquire)
    }

    fn compacted_revision(&self) -> i64 {
        self.shared.compacted.load(Ordering::Acquire)
    }
}

/// What one queued write produced inside the batch transaction.
struct Applied {
    kv: KeyValue,
    event: Option<Event>,
}

fn writer_loop(mut conn: Connection, mut rx: mpsc::Receiver<(Op, Reply)>, shared: Arc<Shared>) {
    const MAX_BATCH: usize = 256;
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let base = shared.revision.load(Ordering::Acquire);
        match apply_batch(&mut conn, &batch, base) {
            Ok((results, revision, compacted)) => {
                shared.revision.store(revision, Ordering::Release);
                shared.compacted.store(compacted, Ordering::Release);
                let mut events = Vec::new();
                for ((_, reply), result) in batch.drain(..).zip(results) {
                    let result = result.map(|a| {
                        events.extend(a.event);
                        a.kv
                    });
                    let _ = reply.send(result);
                }
                if !events.is_empty() {
                    let _ = shared.events.send(Arc::new(events));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "store transaction failed; its writes were not applied");
                for (_, reply) in batch.drain(..) {
                    let _ = reply.send(Err(StoreError::Backend(e.to_string())));
                }
            }
        }
    }
}

type BatchOutcome = (Vec<Result<Applied>>, i64, i64);

fn apply_batch(
    conn: &mut Connection,
    batch: &[(Op, Reply)],
    base: i64,
) -> rusqlite::Result<BatchOutcome> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut rev = base;
    let mut compacted = meta(&tx, "compacted")?;
    let mut results = Vec::with_capacity(batch.len());
    for (op, _) in batch {
        results.push(apply_one(&tx, op, &mut rev, &mut compacted)?);
    }
    if rev != base {
        tx.execute(
            "INSERT INTO meta(name, value) VALUES('revision', ?1)
             ON CONFLICT(name) DO UPDATE SET value = excluded.value",
            [rev],
        )?;
    }
    tx.commit()?;
    Ok((results, rev, compacted))
}

/// Apply one write. The outer `Result` is a SQLite failure (it aborts the
/// batch); the inner one is this write's own outcome, such as a conflict.
fn apply_one(
    tx: &rusqlite::Transaction<'_>,
    op: &Op,
    rev: &mut i64,
    compacted: &mut i64,
) -> rusqlite::Result<Result<Applied>> {
    let current = |key: &str| {
        tx.prepare_cached("SELECT key, create_rev, mod_rev, value FROM kv WHERE key = ?1")?
            .query_row([key], row_kv)
            .optional()
    };
    let insert_log = |rev: i64, key: &str, create: i64, deleted: bool, value: &[u8]| {
        tx.prepare_cached(
            "INSERT INTO log(rev, key, create_rev, deleted, value) VALUES(?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![rev, key, create, deleted, value])
    };
    match op {
        Op::Create { key, value } => {
            if current(key)?.is_some() {
                return Ok(Err(StoreError::AlreadyExists { key: key.clone() }));
            }
            *rev += 1;
            tx.prepare_cached(
                "INSERT INTO kv(key, create_rev, mod_rev, value) VALUES(?1, ?2, ?2, ?3)",
            )?
            .execute(params![key, *rev, value.as_ref()])?;
            insert_log(*rev, key, *rev, false, value)?;
            let kv = KeyValue {
                key: key.clone(),
                value: value.clone(),
                create_revision: *rev,
                mod_revision: *rev,
            };
            Ok(Ok(Applied {
                event: Some(Event {
                    kind: EventKind::Create,
                    kv: kv.clone(),
                }),
                kv,
            }))
        }
        Op::Update {
            key,
            value,
            expected,
        } => {
            let Some(old) = current(key)? else {
                return Ok(Err(StoreError::NotFound { key: key.clone() }));
            };
            if old.mod_revision != *expected {
                return Ok(Err(StoreError::Conflict {
                    key: key.clone(),
                    expected: *expected,
                    actual: old.mod_revision,
                }));
            }
            *rev += 1;
            tx.prepare_cached("UPDATE kv SET mod_rev = ?2, value = ?3 WHERE key = ?1")?
                .execute(params![key, *rev, value.as_ref()])?;
            insert_log(*rev, key, old.create_revision, false, value)?;
            let kv = KeyValue {
                key: key.clone(),
                value: value.clone(),
                create_revision: old.create_revision,
                mod_revision: *rev,
            };
            Ok(Ok(Applied {
                event: Some(Event {
                    kind: EventKind::Update,
                    kv: kv.clone(),
                }),
                kv,
            }))
        }
        Op::Delete { key, expected } => {
            let Some(old) = current(key)? else {
                return Ok(Err(StoreError::NotFound { key: key.clone() }));
            };
            if let Some(expected) = expected {
                if old.mod_revision != *expected {
                    return Ok(Err(StoreError::Conflict {
                        key: key.clone(),
                        expected: *expected,
                        actual: old.mod_revision,
                    }));
                }
            }
            *rev += 1;
            tx.prepare_cached("DELETE FROM kv WHERE key = ?1")?
                .execute([key])?;
            insert_log(*rev, key, old.create_revision, true, &old.value)?;
            let kv = KeyValue {
                mod_revision: *rev,
                ..old
            };
            Ok(Ok(Applied {
                event: Some(Event {
                    kind: EventKind::Delete,
                    kv: kv.clone(),
                }),
                kv,
            }))
        }
        Op::Compact { revision } => {
            if *revision > *rev {
                return Ok(Err(StoreError::FutureRevision {
                    requested: *revision,
                    current: *rev,
                }));
            }
            if *revision <= *compacted {
                return Ok(Ok(Applied {
                    kv: KeyValue {
                        key: String::new(),
                        value: Bytes::new(),
                        create_revision: 0,
                        mod_revision: *compacted,
                    },
                    event: None,
                }));
            }
            // Keep, for every key, its latest row at or before `revision`
            // (reads at that revision still need it); drop older rows, then
            // drop tombstones that nothing at or after `revision` needs.
            tx.execute(
                "DELETE FROM log WHERE rev < ?1 AND EXISTS (
                    SELECT 1 FROM log newer
                    WHERE newer.key = log.key AND newer.rev > log.rev AND newer.rev <= ?1)",
                [*revision],
            )?;
            tx.execute(
                "DELETE FROM log WHERE deleted = 1 AND rev <= ?1",
                [*revision],
            )?;
            tx.execute(
                "INSERT INTO meta(name, value) VALUES('compacted', ?1)
                 ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                [*revision],
            )?;
            *compacted = *revision;
            Ok(Ok(Applied {
                kv: KeyValue {
                    key: String::new(),
                    value: Bytes::new(),
                    create_revision: 0,
                    mod_revision: *revision,
                },
                event: None,
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &tempfile::TempDir) -> SqliteStore {
        let mut opts = SqliteOptions::new(dir.path().join("state.db"));
        opts.durable = false;
        SqliteStore::open(opts).unwrap()
    }

    fn b(s: &str) -> Bytes {
        Bytes::from(s.to_owned())
    }

    #[tokio::test]
    async fn create_update_delete_with_compare_and_swap() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(&dir);
        let a = s.create("/registry/pods/ns/a", b("1")).await.unwrap();
        assert_eq!((a.create_revision, a.mod_revision), (1, 1));
        assert!(matches!(
            s.create("/registry/pods/ns/a", b("x")).await,
            Err(StoreError::AlreadyExists { .. })
        ));
        let a2 = s.update("/registry/pods/ns/a", b("2"), 1).await.unwrap();
        assert_eq!((a2.create_revision, a2.mod_revision), (1, 2));
        match s.update("/registry/pods/ns/a", b("3"), 1).await {
            Err(StoreError::Conflict { actual, .. }) => assert_eq!(actual, 2),
            other => panic!("expected a conflict, got {other:?}"),
        }
        assert!(matches!(
            s.delete("/registry/pods/ns/a", Some(1)).await,
            Err(StoreError::Conflict { .. })
        ));
        let d = s.delete("/registry/pods/ns/a", Some(2)).await.unwrap();
        assert_eq!(d.mod_revision, 3);
        assert_eq!(d.value, b("2"));
        assert!(s.get("/registry/pods/ns/a").await.unwrap().is_none());
        assert_eq!(s.revision(), 3);
    }

    #[tokio::test]
    async fn range_pages_and_reads_the_past() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(&dir);
        for i in 0..5 {
            s.create(&format!("/registry/cm/ns/{i}"), b("v1"))
                .await
                .unwrap();
        }
        s.create("/registry/cmx/other", b("no")).await.unwrap();
        let page = s
            .range(RangeRequest {
                prefix: "/registry/cm/".into(),
                limit: 2,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(page.kvs.len(), 2);
        assert!(page.more);
        assert_eq!(page.remaining, 3);
        let rest = s
            .range(RangeRequest {
                prefix: "/registry/cm/".into(),
                start_after: Some(page.kvs[1].key.clone()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(rest.kvs.len(), 3);
        assert!(!rest.more);

        s.update("/registry/cm/ns/0", b("v2"), 1).await.unwrap();
        s.delete("/registry/cm/ns/1", None).await.unwrap();
        let past = s
            .range(RangeRequest {
                prefix: "/registry/cm/".into(),
                revision: Some(5),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(past.kvs.len(), 5);
        assert_eq!(past.kvs[0].value, b("v1"));
        let now = s
            .range(RangeRequest {
                prefix: "/registry/cm/".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(now.kvs.len(), 4);
        assert_eq!(now.kvs[0].value, b("v2"));
    }

    #[tokio::test]
    async fn watch_replays_then_follows_and_compaction_expires_history() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(&dir);
        s.create("/registry/a/1", b("x")).await.unwrap();
        s.create("/registry/b/1", b("x")).await.unwrap();
        s.update("/registry/a/1", b("y"), 1).await.unwrap();
        let mut w = s.watch("/registry/a/", 0).await.unwrap();
        let e1 = w.next().await.unwrap().unwrap();
        assert_eq!((e1.kind, e1.kv.mod_revision), (EventKind::Create, 1));
        let e2 = w.next().await.unwrap().unwrap();
        assert_eq!((e2.kind, e2.kv.mod_revision), (EventKind::Update, 3));
        s.delete("/registry/a/1", None).await.unwrap();
        let e3 = w.next().await.unwrap().unwrap();
        assert_eq!((e3.kind, e3.kv.mod_revision), (EventKind::Delete, 4));
        assert_eq!(e3.kv.value, b("y"));

        s.compact(3).await.unwrap();
        assert!(matches!(
            s.watch("/registry/a/", 1).await,
            Err(StoreError::Compacted { .. })
        ));
        // State as of the compacted revision is still readable.
        let at3 = s
            .range(RangeRequest {
                prefix: "/registry/".into(),
                revision: Some(3),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(at3.kvs.len(), 2);
    }

    #[tokio::test]
    async fn a_watcher_that_falls_behind_catches_up_from_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(&dir);
        let mut w = s.watch("/registry/x/", 0).await.unwrap();
        // Far more batches than the live ring holds, while nobody reads.
        for i in 0..3000 {
            s.create(&format!("/registry/x/{i:04}"), b("v"))
                .await
                .unwrap();
        }
        for want in 1..=3000 {
            let ev = w.next().await.unwrap().unwrap();
            assert_eq!(
                ev.kv.mod_revision, want,
                "events arrive once each, in order"
            );
        }
    }

    #[tokio::test]
    async fn state_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = open(&dir);
            s.create("/registry/x/1", b("x")).await.unwrap();
            s.create("/registry/x/2", b("x")).await.unwrap();
        }
        let s = open(&dir);
        assert_eq!(s.revision(), 2);
        let kv = s.create("/registry/x/3", b("x")).await.unwrap();
        assert_eq!(kv.mod_revision, 3);
    }

    #[test]
    fn prefix_end_is_the_next_string() {
        assert_eq!(prefix_end("/registry/pods/"), "/registry/pods0");
        assert_eq!(prefix_end("a"), "b");
    }
}
