//! Counters, named as Envoy names them, so `/stats` reads the same.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct ClusterStats {
    pub upstream_rq_total: AtomicU64,
    pub upstream_rq_2xx: AtomicU64,
    pub upstream_rq_3xx: AtomicU64,
    pub upstream_rq_4xx: AtomicU64,
    pub upstream_rq_5xx: AtomicU64,
    pub upstream_rq_retry: AtomicU64,
    pub upstream_rq_retry_overflow: AtomicU64,
    pub upstream_rq_timeout: AtomicU64,
    pub upstream_rq_active: AtomicU64,
    pub upstream_cx_total: AtomicU64,
    pub upstream_cx_connect_fail: AtomicU64,
    pub upstream_cx_idle_timeout: AtomicU64,
    pub upstream_cx_max_duration_reached: AtomicU64,
    pub upstream_cx_max_requests: AtomicU64,
    pub upstream_rq_pending_overflow: AtomicU64,
    /// TLS handshakes done and failed (`ssl.handshake`,
    /// `ssl.connection_error`).
    pub ssl_handshake: AtomicU64,
    pub ssl_connection_error: AtomicU64,
    /// Handshakes that failed on the server's certificate: its SANs
    /// (`ssl.fail_verify_san`), or its chain (`ssl.fail_verify_error`).
    pub ssl_fail_verify_san: AtomicU64,
    pub ssl_fail_verify_error: AtomicU64,
}

impl ClusterStats {
    pub fn status(&self, code: u16) {
        let c = match code / 100 {
            2 => &self.upstream_rq_2xx,
            3 => &self.upstream_rq_3xx,
            4 => &self.upstream_rq_4xx,
            _ => &self.upstream_rq_5xx,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    fn pairs(&self) -> [(&'static str, u64); 19] {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        [
            ("ssl.connection_error", g(&self.ssl_connection_error)),
            ("ssl.fail_verify_error", g(&self.ssl_fail_verify_error)),
            ("ssl.fail_verify_san", g(&self.ssl_fail_verify_san)),
            ("ssl.handshake", g(&self.ssl_handshake)),
            (
                "upstream_cx_connect_fail",
                g(&self.upstream_cx_connect_fail),
            ),
            (
                "upstream_cx_idle_timeout",
                g(&self.upstream_cx_idle_timeout),
            ),
            (
                "upstream_cx_max_duration_reached",
                g(&self.upstream_cx_max_duration_reached),
            ),
            (
                "upstream_cx_max_requests",
                g(&self.upstream_cx_max_requests),
            ),
            ("upstream_cx_total", g(&self.upstream_cx_total)),
            ("upstream_rq_2xx", g(&self.upstream_rq_2xx)),
            ("upstream_rq_3xx", g(&self.upstream_rq_3xx)),
            ("upstream_rq_4xx", g(&self.upstream_rq_4xx)),
            ("upstream_rq_5xx", g(&self.upstream_rq_5xx)),
            ("upstream_rq_active", g(&self.upstream_rq_active)),
            (
                "upstream_rq_pending_overflow",
                g(&self.upstream_rq_pending_overflow),
            ),
            ("upstream_rq_retry", g(&self.upstream_rq_retry)),
            (
                "upstream_rq_retry_overflow",
                g(&self.upstream_rq_retry_overflow),
            ),
            ("upstream_rq_timeout", g(&self.upstream_rq_timeout)),
            ("upstream_rq_total", g(&self.upstream_rq_total)),
        ]
    }
}

#[derive(Debug, Default)]
pub struct ListenerStats {
    pub downstream_cx_total: AtomicU64,
    pub downstream_cx_active: AtomicU64,
    pub downstream_rq_total: AtomicU64,
    pub ssl_handshake: AtomicU64,
    pub ssl_connection_error: AtomicU64,
}

/// Envoy's text format (`/stats`): `cluster.<name>.<counter>: <value>`.
pub fn text(cfg: &crate::config::Config) -> String {
    let mut out = String::new();
    let mut names: Vec<&String> = cfg.clusters.keys().collect();
    names.sort();
    for n in names {
        for (k, v) in cfg.clusters[n].stats.pairs() {
            let _ = writeln!(out, "cluster.{n}.{k}: {v}");
        }
    }
    for l in &cfg.listeners {
        let (name, s) = (&l.name, &l.stats);
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        for (k, v) in [
            ("downstream_cx_active", &s.downstream_cx_active),
            ("downstream_cx_total", &s.downstream_cx_total),
            ("downstream_rq_total", &s.downstream_rq_total),
            ("ssl.connection_error", &s.ssl_connection_error),
            ("ssl.handshake", &s.ssl_handshake),
        ] {
            let _ = writeln!(out, "listener.{name}.{k}: {}", g(v));
        }
    }
    out
}

/// The same counters in Prometheus' text format, as Envoy exports them
/// (`envoy_cluster_upstream_rq_total{envoy_cluster_name="..."}`).
pub fn prometheus(cfg: &crate::config::Config) -> String {
    let mut out = String::new();
    let mut names: Vec<&String> = cfg.clusters.keys().collect();
    names.sort();
    let first = names.first().map(|n| cfg.clusters[*n].stats.pairs());
    for (i, (k, _)) in first.into_iter().flatten().enumerate() {
        let k = k.replace('.', "_");
        let _ = writeln!(out, "# TYPE envoy_cluster_{k} counter");
        for n in &names {
            let v = cfg.clusters[*n].stats.pairs()[i].1;
            let _ = writeln!(out, "envoy_cluster_{k}{{envoy_cluster_name=\"{n}\"}} {v}");
        }
    }
    out
}
