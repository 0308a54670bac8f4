//! A route's retry policy (`retry_policy`), compiled: which outcomes of an
//! attempt are retried, how long to wait before the next attempt, and how
//! hard a retry tries for an endpoint not yet tried. The semantics are
//! those of Envoy's router filter (its `x-envoy-retry-on` and
//! `x-envoy-retry-grpc-on` conditions, jittered exponential back-off and
//! the `previous_hosts` predicate), so one bootstrap retries alike under
//! Envoy and mast proxy. Unlike Envoy, which skips a condition it does not
//! know, mast proxy refuses it by name: a misspelt condition would
//! otherwise never retry, with nothing to say so.

use crate::bootstrap;
use crate::http::Fail;
use anyhow::{anyhow, bail, Result};
use http::{HeaderMap, StatusCode};
use std::time::Duration;

const SERVER_ERROR: u32 = 1;
const GATEWAY_ERROR: u32 = 1 << 1;
const RESET: u32 = 1 << 2;
const RESET_BEFORE_REQUEST: u32 = 1 << 3;
const CONNECT_FAILURE: u32 = 1 << 4;
const RATELIMITED: u32 = 1 << 5;
const RETRIABLE_4XX: u32 = 1 << 6;
const REFUSED_STREAM: u32 = 1 << 7;
const STATUS_CODES: u32 = 1 << 8;
/// Needs `retriable_headers`, which mast proxy refuses: matches nothing.
const HEADERS: u32 = 1 << 9;
/// mast proxy has no HTTP/3: matches nothing.
const HTTP3: u32 = 1 << 10;
const GRPC_CANCELLED: u32 = 1 << 11;
const GRPC_DEADLINE_EXCEEDED: u32 = 1 << 12;
const GRPC_INTERNAL: u32 = 1 << 13;
const GRPC_RESOURCE_EXHAUSTED: u32 = 1 << 14;
const GRPC_UNAVAILABLE: u32 = 1 << 15;

/// Envoy's retry conditions by name, and for the gRPC ones the
/// `grpc-status` they stand for.
const CONDITIONS: [(&str, u32, Option<u32>); 16] = [
    ("5xx", SERVER_ERROR, None),
    ("gateway-error", GATEWAY_ERROR, None),
    ("reset", RESET, None),
    ("reset-before-request", RESET_BEFORE_REQUEST, None),
    ("connect-failure", CONNECT_FAILURE, None),
    ("envoy-ratelimited", RATELIMITED, None),
    ("retriable-4xx", RETRIABLE_4XX, None),
    ("refused-stream", REFUSED_STREAM, None),
    ("retriable-status-codes", STATUS_CODES, None),
    ("retriable-headers", HEADERS, None),
    ("http3-post-connect-failure", HTTP3, None),
    ("cancelled", GRPC_CANCELLED, Some(1)),
    ("deadline-exceeded", GRPC_DEADLINE_EXCEEDED, Some(4)),
    ("resource-exhausted", GRPC_RESOURCE_EXHAUSTED, Some(8)),
    ("internal", GRPC_INTERNAL, Some(13)),
    ("unavailable", GRPC_UNAVAILABLE, Some(14)),
];

const GRPC: u32 = GRPC_CANCELLED
    | GRPC_DEADLINE_EXCEEDED
    | GRPC_INTERNAL
    | GRPC_RESOURCE_EXHAUSTED
    | GRPC_UNAVAILABLE;

/// The predicate Istio sets on its routes.
const PREVIOUS_HOSTS: &str = "envoy.retry_host_predicates.previous_hosts";

#[derive(Debug, Clone, PartialEq)]
pub struct Retry {
    /// Attempts after the first (`num_retries`).
    pub retries: u32,
    /// `retry_on`, as bits.
    on: u32,
    /// `retriable_status_codes`.
    codes: Vec<u32>,
    pub per_try_timeout: Option<Duration>,
    /// With `previous_hosts`, how many times a retry picks again when it
    /// drew an endpoint already tried (`host_selection_retry_max_attempts`);
    /// 0 without it.
    pub reselect: u32,
    /// `retry_back_off`: the base and the longest wait.
    base: Duration,
    max: Duration,
}

impl Default for Retry {
    /// No retry policy: one attempt.
    fn default() -> Self {
        Retry {
            retries: 0,
            on: 0,
            codes: vec![],
            per_try_timeout: None,
            reselect: 0,
            base: Duration::from_millis(25),
            max: Duration::from_millis(250),
        }
    }
}

fn duration(what: &str, s: &str) -> Result<Duration> {
    bootstrap::duration(s).ok_or_else(|| anyhow!("retry_policy.{what}: bad duration {s:?}"))
}

impl Retry {
    pub fn compile(p: &bootstrap::RetryPolicy) -> Result<Retry> {
        let mut on = 0;
        for name in p
            .retry_on
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            let Some((_, bit, _)) = CONDITIONS.iter().find(|(n, ..)| *n == name) else {
                let known: Vec<&str> = CONDITIONS.iter().map(|(n, ..)| *n).collect();
                bail!(
                    "retry_policy.retry_on: {name:?} is not a retry condition; Envoy's are {}",
                    known.join(", ")
                );
            };
            on |= bit;
        }
        for p in &p.retry_host_predicate {
            let previous = matches!(
                p.typed_config,
                Some(bootstrap::RetryHostPredicateConfig::PreviousHosts(_))
            ) || p.name == PREVIOUS_HOSTS;
            if !previous {
                bail!(
                    "retry_policy.retry_host_predicate {:?} is not implemented (only {PREVIOUS_HOSTS})",
                    p.name
                );
            }
        }
        let reselect = if p.retry_host_predicate.is_empty() {
            0
        } else {
            // Envoy's default is one more pick.
            p.host_selection_retry_max_attempts
                .unwrap_or(1)
                .clamp(0, 100) as u32
        };
        let mut retry = Retry {
            retries: p.num_retries.unwrap_or(1),
            on,
            codes: p.retriable_status_codes.clone(),
            per_try_timeout: p
                .per_try_timeout
                .as_deref()
                .map(|s| duration("per_try_timeout", s))
                .transpose()?,
            reselect,
            ..Retry::default()
        };
        if let Some(b) = &p.retry_back_off {
            retry.base = duration("retry_back_off.base_interval", &b.base_interval)?;
            retry.max = match &b.max_interval {
                Some(m) => duration("retry_back_off.max_interval", m)?,
                None => retry.base * 10,
            };
            if retry.base.is_zero() {
                bail!("retry_policy.retry_back_off.base_interval must be more than 0");
            }
            if retry.max < retry.base {
                bail!("retry_policy.retry_back_off.max_interval must be at least base_interval");
            }
        }
        Ok(retry)
    }

    /// Whether an attempt that came to `outcome` is retried (if attempts
    /// and time are left): an answer by its status and headers, or a
    /// failure.
    pub fn retriable(&self, outcome: Result<(StatusCode, &HeaderMap), &Fail>) -> bool {
        let has = |bits: u32| self.on & bits != 0;
        match outcome {
            // A full circuit breaker is not retried.
            Err(Fail::Overflow) => false,
            // An upstream reset counts as a 5xx, and a per-try timeout as
            // a reset.
            Err(f) => {
                has(RESET | SERVER_ERROR | GATEWAY_ERROR)
                    || (matches!(f, Fail::Connect) && has(CONNECT_FAILURE | RESET_BEFORE_REQUEST))
                    || (matches!(f, Fail::Refused) && has(REFUSED_STREAM))
            }
            Ok((status, headers)) => {
                if headers.contains_key("x-envoy-overloaded") {
                    return false;
                }
                let s = status.as_u16();
                (has(SERVER_ERROR) && s >= 500)
                    || (has(GATEWAY_ERROR) && matches!(s, 502..=504))
                    || (has(RETRIABLE_4XX) && s == 409)
                    || (has(STATUS_CODES) && self.codes.contains(&u32::from(s)))
                    || (has(RATELIMITED) && headers.contains_key("x-envoy-ratelimited"))
                    || (has(GRPC) && self.grpc_retriable(headers))
            }
        }
    }

    /// A trailers-only gRPC answer carries its status in the headers.
    fn grpc_retriable(&self, headers: &HeaderMap) -> bool {
        let Some(code) = headers
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u32>().ok())
        else {
            return false;
        };
        CONDITIONS
            .iter()
            .any(|(_, bit, grpc)| *grpc == Some(code) && self.on & bit != 0)
    }

    /// The wait before retry number `retry` (1 for the first), with
    /// `random` a random number: Envoy's fully jittered exponential
    /// back-off, a random time below (2^retry - 1) x base, at most max.
    pub fn back_off(&self, retry: u32, random: u64) -> Duration {
        let factor = (1u64 << retry.clamp(1, 32)) - 1;
        let ceiling = (self.base.as_nanos() as u64).saturating_mul(factor).max(1);
        Duration::from_nanos(random % ceiling).min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(yaml: &str) -> Result<Retry> {
        Retry::compile(&serde_yaml_ng::from_str(yaml).expect("yaml"))
    }

    fn answer(r: &Retry, status: u16, headers: &[(&'static str, &'static str)]) -> bool {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.insert(*k, http::HeaderValue::from_static(v));
        }
        r.retriable(Ok((StatusCode::from_u16(status).expect("status"), &h)))
    }

    #[test]
    fn istios_default_policy_retries_failed_connections_and_listed_codes_only() {
        let r = policy(
            "{retry_on: 'connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes', num_retries: 2, retriable_status_codes: [503]}",
        )
        .expect("policy");
        assert_eq!(r.retries, 2);
        assert!(r.retriable(Err(&Fail::Connect)));
        assert!(r.retriable(Err(&Fail::Refused)));
        assert!(!r.retriable(Err(&Fail::Reset)));
        assert!(!r.retriable(Err(&Fail::Timeout)));
        assert!(!r.retriable(Err(&Fail::Overflow)));
        assert!(answer(&r, 503, &[]));
        assert!(!answer(&r, 500, &[]));
        assert!(!answer(&r, 200, &[]));
        assert!(answer(&r, 200, &[("grpc-status", "14")]));
        assert!(answer(&r, 200, &[("grpc-status", "1")]));
        assert!(!answer(&r, 200, &[("grpc-status", "13")]));
        assert!(!answer(&r, 503, &[("x-envoy-overloaded", "true")]));
    }

    #[test]
    fn each_condition_retries_what_envoy_retries() {
        let r = |on: &str| policy(&format!("{{retry_on: '{on}'}}")).expect(on);
        assert!(answer(&r("5xx"), 500, &[]) && answer(&r("5xx"), 503, &[]));
        assert!(r("5xx").retriable(Err(&Fail::Timeout)) && r("5xx").retriable(Err(&Fail::Connect)));
        assert!(!answer(&r("gateway-error"), 500, &[]) && answer(&r("gateway-error"), 504, &[]));
        assert!(r("reset").retriable(Err(&Fail::Reset)) && !answer(&r("reset"), 503, &[]));
        assert!(r("reset-before-request").retriable(Err(&Fail::Connect)));
        assert!(!r("reset-before-request").retriable(Err(&Fail::Reset)));
        assert!(!r("connect-failure").retriable(Err(&Fail::Timeout)));
        assert!(answer(&r("retriable-4xx"), 409, &[]) && !answer(&r("retriable-4xx"), 404, &[]));
        assert!(answer(
            &r("envoy-ratelimited"),
            429,
            &[("x-envoy-ratelimited", "true")]
        ));
        assert!(!answer(&r("envoy-ratelimited"), 429, &[]));
        // Codes count only with the condition that names them.
        assert!(!answer(&r("retriable-status-codes"), 503, &[]));
        assert!(answer(
            &r("internal, deadline-exceeded"),
            200,
            &[("grpc-status", "4")]
        ));
        assert_eq!(
            r(" 5xx ,, reset").retries,
            1,
            "Envoy's default is one retry"
        );
    }

    #[test]
    fn unknown_conditions_and_predicates_are_refused_by_name() {
        let e = policy("{retry_on: '5xx,503'}").expect_err("503");
        assert!(
            e.to_string().contains("\"503\" is not a retry condition"),
            "{e}"
        );
        let e = policy("{retry_on: 5xx, retry_host_predicate: [{name: envoy.retry_host_predicates.omit_canary_hosts}]}")
            .expect_err("canary");
        assert!(e.to_string().contains("omit_canary_hosts"), "{e}");
        let e = policy("{retry_on: 5xx, retry_back_off: {base_interval: 1s, max_interval: 0.5s}}")
            .expect_err("max");
        assert!(e.to_string().contains("max_interval"), "{e}");
    }

    #[test]
    fn previous_hosts_picks_again_as_often_as_asked() {
        let typed = "{name: x, typed_config: {'@type': type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate}}";
        let r = policy(&format!("{{retry_on: 5xx, retry_host_predicate: [{typed}], host_selection_retry_max_attempts: 5}}"))
            .expect("typed");
        assert_eq!(r.reselect, 5);
        let r = policy("{retry_on: 5xx, retry_host_predicate: [{name: envoy.retry_host_predicates.previous_hosts}]}")
            .expect("named");
        assert_eq!(r.reselect, 1, "Envoy's default");
        assert_eq!(policy("{retry_on: 5xx}").expect("none").reselect, 0);
    }

    #[test]
    fn back_off_is_jittered_below_a_growing_ceiling() {
        let r = Retry::default();
        let ms = |n: u64| n * 1_000_000;
        let wait = |retry, random| r.back_off(retry, random).as_millis();
        // Ceilings of 25, 75 and 175 ms, then the 250 ms cap.
        assert_eq!(wait(1, ms(24)), 24);
        assert_eq!(wait(1, ms(25)), 0);
        assert_eq!(wait(2, ms(74)), 74);
        assert_eq!(wait(3, ms(174)), 174);
        assert_eq!(wait(4, ms(300)), 250);
        assert!(wait(40, u64::MAX) <= 250);
        let r = policy("{retry_back_off: {base_interval: 0.1s}}").expect("base");
        assert_eq!(
            r.back_off(9, ms(5000)),
            Duration::from_secs(1),
            "max is 10 x base"
        );
    }
}
