//! Active health checks (a cluster's `health_checks`): every `interval`,
//! each endpoint is asked (an HTTP/1.1 GET of `path`, healthy on 200, or a
//! TCP connect), within `timeout`. `unhealthy_threshold` failures in a row
//! take an endpoint out of balancing, `healthy_threshold` successes bring
//! it back. As in Envoy, an endpoint is out until its first check passes,
//! and the first pass brings it in at once; with several checks, an
//! endpoint is used only while it passes all of them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Mutex, Weak};
use std::time::Duration;

#[derive(Debug, Clone)]
pub enum Probe {
    Http { path: String, host: String },
    Tcp,
}

#[derive(Debug)]
pub struct Health {
    pub probe: Probe,
    pub interval: Duration,
    pub timeout: Duration,
    pub unhealthy_threshold: u32,
    pub healthy_threshold: u32,
    state: Mutex<HashMap<SocketAddr, Host>>,
    started: std::sync::atomic::AtomicBool,
}

#[derive(Debug, Default, Clone, Copy)]
struct Host {
    healthy: bool,
    checked: bool,
    passes: u32,
    fails: u32,
}

impl Health {
    pub fn new(
        probe: Probe,
        interval: Duration,
        timeout: Duration,
        unhealthy: u32,
        healthy: u32,
    ) -> Health {
        Health {
            probe,
            interval,
            timeout,
            unhealthy_threshold: unhealthy.max(1),
            healthy_threshold: healthy.max(1),
            state: Mutex::default(),
            started: Default::default(),
        }
    }

    /// The endpoints that pass.
    pub fn healthy(&self, eps: &[SocketAddr]) -> Vec<SocketAddr> {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        eps.iter()
            .filter(|e| st.get(e).is_some_and(|h| h.healthy))
            .copied()
            .collect()
    }

    pub(crate) fn record(&self, ep: SocketAddr, ok: bool) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let h = st.entry(ep).or_default();
        if ok {
            h.passes += 1;
            h.fails = 0;
            if !h.checked || h.passes >= self.healthy_threshold {
                h.healthy = true;
            }
        } else {
            h.fails += 1;
            h.passes = 0;
            if h.fails >= self.unhealthy_threshold {
                h.healthy = false;
            }
        }
        h.checked = true;
    }

    /// Whether the checks for this cluster still need starting (true once).
    pub fn start(&self) -> bool {
        !self.started.swap(true, std::sync::atomic::Ordering::SeqCst)
    }
}

/// One check of `ep`, over TLS if the cluster originates it (as Envoy's
/// checks use the cluster's transport socket).
async fn probe(
    p: &Probe,
    ep: SocketAddr,
    timeout: Duration,
    tls: Option<&crate::transport::Upstream>,
) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_util::either::Either;
    let once = async {
        let tcp = tokio::net::TcpStream::connect(ep).await.ok()?;
        let mut s = match tls {
            Some(t) => Either::Right(Box::new(t.handshake(tcp, ep).await.ok()?)),
            None => Either::Left(tcp),
        };
        let Probe::Http { path, host } = p else {
            return Some(true);
        };
        let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: mast-proxy-health-check\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut head = [0u8; 12];
        s.read_exact(&mut head).await.ok()?;
        Some(head.starts_with(b"HTTP/1.") && &head[8..12] == b" 200")
    };
    matches!(tokio::time::timeout(timeout, once).await, Ok(Some(true)))
}

/// Check a cluster's endpoints with its `i`th check until the cluster is
/// gone.
pub async fn run(cluster: Weak<crate::config::Cluster>, i: usize) {
    loop {
        let Some(c) = cluster.upgrade() else {
            return;
        };
        let Some(h) = c.health.get(i) else {
            return;
        };
        let eps = c.endpoints.load_full();
        let checks = eps.iter().map(|ep| {
            let (p, t, tls) = (h.probe.clone(), h.timeout, c.transport(*ep));
            async move { (*ep, probe(&p, *ep, t, tls).await) }
        });
        for (ep, ok) in futures::future::join_all(checks).await {
            h.record(ep, ok);
        }
        let interval = h.interval;
        drop(c);
        tokio::time::sleep(interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_move_endpoints_in_and_out() {
        let h = Health::new(
            Probe::Tcp,
            Duration::from_secs(1),
            Duration::from_secs(1),
            2,
            2,
        );
        let a: SocketAddr = "10.0.0.1:80".parse().unwrap();
        assert!(h.healthy(&[a]).is_empty(), "out until the first check");
        h.record(a, true);
        assert_eq!(h.healthy(&[a]), vec![a], "the first pass brings it in");
        h.record(a, false);
        assert_eq!(h.healthy(&[a]), vec![a], "one failure of two");
        h.record(a, false);
        assert!(h.healthy(&[a]).is_empty());
        h.record(a, true);
        assert!(h.healthy(&[a]).is_empty(), "one pass of two");
        h.record(a, true);
        assert_eq!(h.healthy(&[a]), vec![a]);
    }

    #[test]
    fn with_two_checks_an_endpoint_must_pass_both() {
        let yaml = r#"
static_resources:
  clusters:
  - name: c
    connect_timeout: 1s
    type: STATIC
    common_lb_config: {healthy_panic_threshold: {value: 0}}
    health_checks:
    - {timeout: 1s, interval: 1s, unhealthy_threshold: 1, healthy_threshold: 1, tcp_health_check: {}}
    - {timeout: 1s, interval: 1s, unhealthy_threshold: 1, healthy_threshold: 1, http_health_check: {path: /healthz}}
    load_assignment:
      cluster_name: c
      endpoints: [{lb_endpoints: [
        {endpoint: {address: {socket_address: {address: 10.0.0.1, port_value: 80}}}},
        {endpoint: {address: {socket_address: {address: 10.0.0.2, port_value: 80}}}}]}]
"#;
        let b = crate::bootstrap::parse(yaml).unwrap();
        let cfg = crate::config::Config::compile(&b, yaml.into()).unwrap();
        let c = &cfg.clusters["c"];
        assert_eq!(c.health.len(), 2);
        let (a, b): (SocketAddr, SocketAddr) = (
            "10.0.0.1:80".parse().unwrap(),
            "10.0.0.2:80".parse().unwrap(),
        );
        // Both pass the TCP check; only `a` passes the HTTP one.
        c.health[0].record(a, true);
        c.health[0].record(b, true);
        c.health[1].record(a, true);
        c.health[1].record(b, false);
        let pool = crate::http::Pool::default();
        let ctx = crate::http::Ctx {
            dst: a,
            peer: a,
            istio: None,
            clock: Default::default(),
            tls: false,
            peer_principal: None,
        };
        for _ in 0..10 {
            assert_eq!(pool.pick_endpoint(c, &ctx, None), Some(a));
        }
    }
}
