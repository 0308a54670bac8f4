//! Outlier detection: an endpoint that fails `consecutive_5xx` times in a
//! row (or `consecutive_gateway_failure` times with 502, 503, 504 or a
//! connection failure) is ejected for `base_ejection_time` times the number
//! of its ejections, at most `max_ejection_time`, as Envoy ejects, while no
//! more than
//! `max_ejection_percent` of the endpoints are out. The state is per
//! cluster and shared by all workers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Outlier {
    pub consecutive_5xx: u32,
    pub consecutive_gateway: u32,
    pub base_ejection: Duration,
    pub max_ejection: Duration,
    pub max_percent: u32,
    /// `split_external_local_origin_errors`: connection failures, resets
    /// and timeouts eject after this many in a row (0: never), and no
    /// longer count as 5xx.
    pub local_origin: Option<u32>,
    state: Mutex<HashMap<SocketAddr, Health>>,
}

#[derive(Debug, Default)]
struct Health {
    five_xx: u32,
    gateway: u32,
    local: u32,
    ejections: u32,
    until: Option<Instant>,
}

/// What one attempt on an endpoint came to.
#[derive(Debug, Clone, Copy)]
pub enum Outcome {
    Status(u16),
    /// A connection failure, reset or timeout: a gateway failure.
    LocalFailure,
}

impl Outlier {
    pub fn new(
        consecutive_5xx: u32,
        consecutive_gateway: u32,
        base: Duration,
        max_ejection: Duration,
        max_percent: u32,
    ) -> Self {
        Outlier {
            consecutive_5xx,
            consecutive_gateway,
            base_ejection: base,
            max_ejection,
            max_percent,
            local_origin: None,
            state: Mutex::default(),
        }
    }

    /// Count local-origin failures apart, ejecting after `n` in a row.
    pub fn split_local_origin(mut self, n: Option<u32>) -> Self {
        self.local_origin = n;
        self
    }

    /// Record an attempt's outcome; it may eject the endpoint.
    pub fn report(&self, ep: SocketAddr, outcome: Outcome, endpoints: usize) {
        let (five_xx, gateway) = match outcome {
            Outcome::Status(s) if (502..=504).contains(&s) => (true, true),
            Outcome::Status(s) => (s >= 500, false),
            Outcome::LocalFailure => (true, true),
        };
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let ejected = st
            .values()
            .filter(|h| h.until.is_some_and(|u| u > now))
            .count();
        let h = st.entry(ep).or_default();
        let trip = match (self.local_origin, outcome) {
            // Split: a local failure counts only as one, and an answer
            // shows that the connection worked.
            (Some(n), Outcome::LocalFailure) => {
                h.local += 1;
                n > 0 && h.local >= n
            }
            _ => {
                h.local = 0;
                if !five_xx {
                    h.five_xx = 0;
                    h.gateway = 0;
                    return;
                }
                h.five_xx += 1;
                if gateway {
                    h.gateway += 1;
                }
                (self.consecutive_5xx > 0 && h.five_xx >= self.consecutive_5xx)
                    || (self.consecutive_gateway > 0 && h.gateway >= self.consecutive_gateway)
            }
        };
        let room = (ejected + 1) * 100 <= endpoints.max(1) * self.max_percent as usize;
        if trip && room && h.until.is_none_or(|u| u <= now) {
            h.ejections += 1;
            h.until = Some(now + self.ejection(h.ejections));
            h.five_xx = 0;
            h.gateway = 0;
            h.local = 0;
        }
    }

    /// How long ejection number `n` of an endpoint lasts.
    fn ejection(&self, n: u32) -> Duration {
        self.base_ejection
            .checked_mul(n)
            .map_or(self.max_ejection, |t| t.min(self.max_ejection))
    }

    /// The endpoints not ejected now.
    pub fn healthy(&self, eps: &[SocketAddr]) -> Vec<SocketAddr> {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        eps.iter()
            .filter(|e| st.get(e).and_then(|h| h.until).is_none_or(|u| u <= now))
            .copied()
            .collect()
    }

    /// Whether an endpoint is ejected now.
    #[cfg(test)]
    pub fn ejected(&self, ep: &SocketAddr) -> bool {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.get(ep)
            .and_then(|h| h.until)
            .is_some_and(|u| u > Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_failures_eject_within_the_percentage() {
        let o = Outlier::new(2, 0, Duration::from_secs(60), Duration::from_secs(300), 50);
        let (a, b): (SocketAddr, SocketAddr) = (
            "10.0.0.1:80".parse().unwrap(),
            "10.0.0.2:80".parse().unwrap(),
        );
        o.report(a, Outcome::Status(500), 2);
        assert!(!o.ejected(&a));
        o.report(a, Outcome::Status(200), 2);
        o.report(a, Outcome::Status(500), 2);
        assert!(!o.ejected(&a), "a success resets the count");
        o.report(a, Outcome::LocalFailure, 2);
        assert!(o.ejected(&a));
        // 50% of two endpoints: the second may not go too.
        o.report(b, Outcome::Status(503), 2);
        o.report(b, Outcome::Status(503), 2);
        assert!(!o.ejected(&b));
    }

    #[test]
    fn local_origin_failures_count_apart_when_split() {
        let a: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let o = Outlier::new(2, 0, Duration::from_secs(60), Duration::from_secs(300), 100)
            .split_local_origin(Some(3));
        o.report(a, Outcome::LocalFailure, 1);
        o.report(a, Outcome::Status(503), 1);
        assert!(!o.ejected(&a), "a failed connection is not a 5xx");
        o.report(a, Outcome::LocalFailure, 1);
        o.report(a, Outcome::LocalFailure, 1);
        assert!(!o.ejected(&a), "the answer between reset the local count");
        o.report(a, Outcome::LocalFailure, 1);
        assert!(o.ejected(&a), "three local failures in a row");
        let b: SocketAddr = "10.0.0.2:80".parse().unwrap();
        let never = Outlier::new(5, 0, Duration::from_secs(60), Duration::from_secs(300), 100)
            .split_local_origin(Some(0));
        for _ in 0..10 {
            never.report(b, Outcome::LocalFailure, 1);
        }
        assert!(!never.ejected(&b), "not enforced");
    }

    #[test]
    fn ejections_grow_by_the_base_up_to_the_longest() {
        let o = Outlier::new(1, 0, Duration::from_secs(60), Duration::from_secs(150), 100);
        let secs = |n| o.ejection(n).as_secs();
        assert_eq!(
            (secs(1), secs(2), secs(3), secs(u32::MAX)),
            (60, 120, 150, 150)
        );
    }
}
