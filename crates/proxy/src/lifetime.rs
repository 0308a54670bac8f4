//! When an upstream connection stops being reused, by its cluster's
//! `common_http_protocol_options`, as Envoy decides it: after
//! `max_requests_per_connection` requests, after `idle_timeout` without a
//! request (1 h by default), or `max_connection_duration` after it opened.
//! Each ending is counted under Envoy's name for it.
//!
//! Connections are pooled per cluster, as in Envoy: by endpoint and
//! cluster ([`key`]). A cluster is known by its address, which cannot be
//! reused while a pooled connection holds the cluster. A cluster that a
//! configuration update replaces has its idle connections closed at the
//! next sweep.
//!
//! Times are milliseconds since the process started. For limits of
//! [`EXACT_BELOW`] and more they come from a clock that each worker's
//! one-second tick sets ([`tick`]), so a pooled request reads no system
//! clock (two reads, and the arithmetic on `Instant`s, cost about 50
//! instructions per request); a second either way does not matter to an
//! hour's idle timeout. Shorter limits read the system clock.

use crate::config::Cluster;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, LazyLock};
use std::time::Instant;

/// Limits shorter than this (in milliseconds) are timed by the system
/// clock.
pub const EXACT_BELOW: u64 = 10_000;

static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);
static COARSE: AtomicU64 = AtomicU64::new(0);

/// Milliseconds since the process started, by the system clock.
pub fn exact_now() -> u64 {
    u64::try_from(EPOCH.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Move the coarse clock on (every worker's tick, once a second).
pub fn tick() {
    COARSE.store(exact_now(), Relaxed);
}

/// A pool's key: an endpoint and a cluster, by its address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    ep: SocketAddr,
    cluster: usize,
}

/// The key of `cluster`'s connections to `ep`.
pub fn key(ep: SocketAddr, cluster: &Arc<Cluster>) -> Key {
    Key {
        ep,
        cluster: Arc::as_ptr(cluster) as usize,
    }
}

impl Hash for Key {
    /// One word for the hasher: hashing the address's parts one by one, as
    /// derived, cost 90 instructions per request (twice per request).
    fn hash<H: Hasher>(&self, h: &mut H) {
        let ep = match self.ep {
            SocketAddr::V4(a) => (u64::from(a.ip().to_bits()) << 16) | u64::from(a.port()),
            SocketAddr::V6(a) => {
                let b = a.ip().to_bits();
                (b as u64) ^ ((b >> 64) as u64) ^ u64::from(a.port())
            }
        };
        h.write_u64(ep ^ (self.cluster as u64).rotate_left(29));
    }
}

/// One upstream connection's age and use.
pub struct Life {
    cluster: Arc<Cluster>,
    /// Whether its limits need the system clock.
    exact: bool,
    born: u64,
    /// When it last took a request or went idle.
    last: u64,
    used: u32,
}

impl Life {
    pub fn new(cluster: &Arc<Cluster>) -> Life {
        let l = &cluster.limits;
        let exact = l.idle_ms < EXACT_BELOW || l.max_ms.is_some_and(|d| d < EXACT_BELOW);
        // Its birth is exact either way: a connection opens rarely.
        let now = exact_now();
        Life {
            cluster: cluster.clone(),
            exact,
            born: now,
            last: now,
            used: 0,
        }
    }

    /// The cluster it belongs to.
    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }

    fn now(&self) -> u64 {
        if self.exact {
            exact_now()
        } else {
            COARSE.load(Relaxed).max(self.last)
        }
    }

    /// Count a request it carries, from now.
    pub fn carry(&mut self) {
        self.carry_at(self.now());
    }

    fn carry_at(&mut self, now: u64) {
        self.used = self.used.saturating_add(1);
        self.last = now;
        if self.spent() {
            self.cluster
                .stats
                .upstream_cx_max_requests
                .fetch_add(1, Relaxed);
        }
    }

    /// Whether it has carried all the requests it may.
    pub fn spent(&self) -> bool {
        let max = self.cluster.limits.max_requests;
        max > 0 && self.used >= max
    }

    /// It went idle now.
    pub fn rest(&mut self) {
        self.last = self.now();
    }

    /// Whether it may take another request now: not past its longest
    /// life, and, if it was `idle`, not idle too long. When not, the
    /// reason is counted, so call this once before closing it.
    pub fn fresh(&self, idle: bool) -> bool {
        self.fresh_at(self.now(), idle)
    }

    /// An idle connection taken for a request: whether it is still fresh
    /// ([`Self::fresh`]), and if so the request counted ([`Self::carry`]),
    /// at one reading of the clock.
    pub fn reuse(&mut self) -> bool {
        let now = self.now();
        if !self.fresh_at(now, true) {
            return false;
        }
        self.carry_at(now);
        true
    }

    fn fresh_at(&self, now: u64, idle: bool) -> bool {
        let (limits, stats) = (&self.cluster.limits, &self.cluster.stats);
        if limits
            .max_ms
            .is_some_and(|d| now.saturating_sub(self.born) >= d)
        {
            stats.upstream_cx_max_duration_reached.fetch_add(1, Relaxed);
            return false;
        }
        if idle && now.saturating_sub(self.last) >= limits.idle_ms {
            stats.upstream_cx_idle_timeout.fetch_add(1, Relaxed);
            return false;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Limits;
    use std::time::Duration;

    fn cluster(limits: Limits) -> Arc<Cluster> {
        let mut c = Cluster::missing("c");
        c.limits = limits;
        Arc::new(c)
    }

    #[test]
    fn requests_idle_time_and_age_end_a_connection_and_are_counted() {
        let c = cluster(Limits {
            max_requests: 2,
            idle_ms: 10_000,
            max_ms: Some(60_000),
        });
        let mut l = Life::new(&c);
        assert!(!l.exact, "limits of 10 s and more use the coarse clock");
        let t0 = l.born;
        l.carry_at(t0);
        assert!(!l.spent());
        l.carry_at(t0);
        assert!(l.spent(), "two requests of two");
        assert_eq!(c.stats.upstream_cx_max_requests.load(Relaxed), 1);
        assert!(l.fresh_at(t0 + 9_000, true));
        assert!(l.fresh_at(t0 + 11_000, false), "busy, so not idle");
        assert!(!l.fresh_at(t0 + 11_000, true));
        assert_eq!(c.stats.upstream_cx_idle_timeout.load(Relaxed), 1);
        assert!(!l.fresh_at(t0 + 60_000, false));
        assert_eq!(c.stats.upstream_cx_max_duration_reached.load(Relaxed), 1);
        let unlimited = Life::new(&cluster(Limits::default()));
        assert!(unlimited.fresh_at(t0 + 3_599_000, true));
        assert!(!unlimited.spent());
        let short = Life::new(&cluster(Limits {
            idle_ms: 300,
            ..Limits::default()
        }));
        assert!(short.exact, "a short limit reads the system clock");
    }

    #[test]
    fn the_coarse_clock_never_runs_back_before_a_connection_s_last_use() {
        let mut l = Life::new(&cluster(Limits::default()));
        l.last = exact_now() + 5_000;
        assert!(l.now() >= l.last);
        std::thread::sleep(Duration::from_millis(5));
        tick();
        let coarse = COARSE.load(Relaxed);
        assert!(coarse >= 5 && coarse <= exact_now(), "{coarse}");
    }
}
