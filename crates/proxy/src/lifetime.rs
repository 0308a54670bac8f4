//! When an upstream connection stops being reused, by its cluster's
//! `common_http_protocol_options`, as Envoy decides it: after
//! `max_requests_per_connection` requests, after `idle_timeout` without a
//! request (1 h by default), or `max_connection_duration` after it opened.
//! Each ending is counted under Envoy's name for it.
//!
//! Connections are pooled per cluster, as in Envoy: by endpoint and
//! [`key`], the cluster's address, which cannot be reused while a pooled
//! connection holds the cluster. A cluster that a configuration update
//! replaces has its idle connections closed at the next sweep.

/// A pool's key for `cluster`'s connections.
pub fn key(cluster: &Arc<Cluster>) -> usize {
    Arc::as_ptr(cluster) as usize
}

use crate::config::Cluster;
#[cfg(test)]
use crate::config::Limits;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

/// One upstream connection's age and use.
pub struct Life {
    cluster: Arc<Cluster>,
    born: Instant,
    /// When it last took a request or went idle.
    last: Instant,
    used: u32,
}

impl Life {
    pub fn new(cluster: &Arc<Cluster>) -> Life {
        let now = Instant::now();
        Life {
            cluster: cluster.clone(),
            born: now,
            last: now,
            used: 0,
        }
    }

    /// The cluster it belongs to.
    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }

    /// Count a request it carries, from `now`.
    pub fn carry(&mut self, now: Instant) {
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

    /// It went idle at `now`.
    pub fn rest(&mut self, now: Instant) {
        self.last = now;
    }

    /// Whether it may take another request at `now`: not past its longest
    /// life, and, if it was `idle`, not idle too long. When not, the
    /// reason is counted, so call this once before closing it.
    pub fn fresh(&self, now: Instant, idle: bool) -> bool {
        let (limits, stats) = (&self.cluster.limits, &self.cluster.stats);
        if limits
            .max_duration
            .is_some_and(|d| now.saturating_duration_since(self.born) >= d)
        {
            stats.upstream_cx_max_duration_reached.fetch_add(1, Relaxed);
            return false;
        }
        if idle && now.saturating_duration_since(self.last) >= limits.idle_timeout {
            stats.upstream_cx_idle_timeout.fetch_add(1, Relaxed);
            return false;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
            idle_timeout: Duration::from_secs(10),
            max_duration: Some(Duration::from_secs(60)),
        });
        let mut l = Life::new(&c);
        let t0 = l.born;
        l.carry(t0);
        assert!(!l.spent());
        l.carry(t0);
        assert!(l.spent(), "two requests of two");
        assert_eq!(c.stats.upstream_cx_max_requests.load(Relaxed), 1);
        l.rest(t0);
        assert!(l.fresh(t0 + Duration::from_secs(9), true));
        assert!(
            l.fresh(t0 + Duration::from_secs(11), false),
            "busy, so not idle"
        );
        assert!(!l.fresh(t0 + Duration::from_secs(11), true));
        assert_eq!(c.stats.upstream_cx_idle_timeout.load(Relaxed), 1);
        assert!(!l.fresh(t0 + Duration::from_secs(60), false));
        assert_eq!(c.stats.upstream_cx_max_duration_reached.load(Relaxed), 1);
        let unlimited = Life::new(&cluster(Limits::default()));
        assert!(unlimited.fresh(t0 + Duration::from_secs(3599), true));
        assert!(!unlimited.spent());
    }
}
