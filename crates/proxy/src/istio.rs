//! Istio's standard metrics, with Istio's names and labels, for proxies
//! whose bootstrap node is Istio-shaped (its metadata has `NAMESPACE`):
//! `istio_requests_total`, `istio_request_duration_milliseconds`,
//! `istio_request_bytes`, `istio_response_bytes`, and for TCP
//! `istio_tcp_connections_opened_total`, `..._closed_total`,
//! `istio_tcp_sent_bytes_total` and `istio_tcp_received_bytes_total`.
//!
//! An outbound proxy reports as `source`, an inbound one as
//! `destination`; a gateway reports as `source`. Who is on the other side
//! comes from the peer: two mast proxies tell each other their workload in
//! the `x-mast-peer` header (the request carries the source's, the answer
//! the destination's), and take it off before the application sees it, as
//! Istio's proxies exchange `x-envoy-peer-metadata`. Without a mast proxy
//! on the other side, the peer's labels are `unknown`, as in Istio.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The peer-exchange header.
pub const PEER: &str = "x-mast-peer";

/// Istio's default buckets, in milliseconds and in bytes.
const DURATION_BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];
const BYTE_BUCKETS: [f64; 10] = [1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9];

/// A workload, as the labels name it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Workload {
    pub namespace: String,
    pub workload: String,
    pub app: String,
    pub version: String,
    pub canonical_service: String,
    pub canonical_revision: String,
    pub service_account: String,
    pub cluster: String,
}

impl Workload {
    fn unknown() -> Workload {
        let u = || "unknown".to_owned();
        Workload {
            namespace: u(),
            workload: u(),
            app: u(),
            version: u(),
            canonical_service: u(),
            canonical_revision: u(),
            service_account: String::new(),
            cluster: u(),
        }
    }

    /// This proxy's workload, from Istio's node metadata; `None` for a
    /// node that is not Istio's.
    pub fn from_node(md: &serde_json::Map<String, serde_json::Value>) -> Option<Workload> {
        let s = |k: &str| md.get(k).and_then(|v| v.as_str()).unwrap_or("").to_owned();
        let namespace = s("NAMESPACE");
        if namespace.is_empty() {
            return None;
        }
        let labels = md.get("LABELS").and_then(|l| l.as_object());
        let label = |k: &str| {
            labels
                .and_then(|l| l.get(k))
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        };
        let pod = s("NAME");
        // A Deployment's pod is `<workload>-<pod-template-hash>-<suffix>`.
        let workload = match (s("WORKLOAD_NAME"), label("pod-template-hash")) {
            (w, _) if !w.is_empty() => w,
            (_, Some(h)) => pod
                .split_once(&format!("-{h}-"))
                .map(|(w, _)| w.to_owned())
                .unwrap_or_else(|| pod.clone()),
            _ => pod.clone(),
        };
        let app = label("app").unwrap_or_else(|| "unknown".into());
        let version = label("version").unwrap_or_else(|| "unknown".into());
        Some(Workload {
            canonical_service: label("service.istio.io/canonical-name").unwrap_or_else(|| {
                if app != "unknown" {
                    app.clone()
                } else {
                    workload.clone()
                }
            }),
            canonical_revision: label("service.istio.io/canonical-revision").unwrap_or_else(|| {
                if version != "unknown" {
                    version.clone()
                } else {
                    "latest".into()
                }
            }),
            namespace,
            workload,
            app,
            version,
            service_account: s("SERVICE_ACCOUNT"),
            cluster: Some(s("CLUSTER_ID"))
                .filter(|c| !c.is_empty())
                .unwrap_or_else(|| "Kubernetes".into()),
        })
    }

    /// As the peer header carries it.
    pub fn header(&self) -> String {
        [
            &self.namespace,
            &self.workload,
            &self.app,
            &self.version,
            &self.canonical_service,
            &self.canonical_revision,
            &self.service_account,
            &self.cluster,
        ]
        .map(|s| s.replace(';', ""))
        .join(";")
    }

    pub fn parse(h: &str) -> Option<Workload> {
        let p: Vec<&str> = h.split(';').collect();
        let [ns, wl, app, ver, cs, cr, sa, cl] = p.as_slice() else {
            return None;
        };
        let o = |s: &&str| s.to_string();
        Some(Workload {
            namespace: o(ns),
            workload: o(wl),
            app: o(app),
            version: o(ver),
            canonical_service: o(cs),
            canonical_revision: o(cr),
            service_account: o(sa),
            cluster: o(cl),
        })
    }

    /// Its SPIFFE identity in `trust_domain`, as Istio's CA names it.
    fn principal(&self, trust_domain: &str) -> String {
        let sa = if self.service_account.is_empty() {
            "default"
        } else {
            &self.service_account
        };
        format!("spiffe://{trust_domain}/ns/{}/sa/{sa}", self.namespace)
    }
}

/// One series' labels, apart from the two workloads.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    source: bool,
    peer: Workload,
    service: String,
    protocol: &'static str,
    code: u16,
    /// gRPC's status (`grpc-status`), for gRPC requests that carried one.
    grpc_status: Option<u32>,
    flags: String,
    /// Destination side: the client's identity, proven by mutual TLS.
    principal: Option<Arc<str>>,
}

#[derive(Debug, Default)]
struct Histogram {
    buckets: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, bounds: &[f64], v: f64) {
        if self.buckets.is_empty() {
            self.buckets = vec![0; bounds.len()];
        }
        for (b, le) in self.buckets.iter_mut().zip(bounds) {
            if v <= *le {
                *b += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }
}

#[derive(Debug, Default)]
struct Http {
    requests: u64,
    duration: Histogram,
    request_bytes: Histogram,
    response_bytes: Histogram,
}

#[derive(Debug, Default)]
struct Tcp {
    opened: u64,
    closed: u64,
    sent: u64,
    received: u64,
}

/// This proxy's Istio metrics.
#[derive(Debug)]
pub struct Metrics {
    pub me: Workload,
    pub me_header: http::HeaderValue,
    http: Mutex<HashMap<Key, Http>>,
    tcp: Mutex<HashMap<Key, Tcp>>,
}

/// One finished HTTP request.
pub struct Request<'a> {
    /// Reported by the source side (outbound, gateways).
    pub source: bool,
    /// The other side's peer header, if it sent one.
    pub peer: Option<&'a http::HeaderValue>,
    /// The client's identity, when mutual TLS proved it (destination
    /// side).
    pub principal: Option<&'a Arc<str>>,
    /// The destination Service's host name.
    pub service: &'a str,
    pub grpc: bool,
    pub code: u16,
    pub grpc_status: Option<u32>,
    pub flags: &'a str,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub duration: Duration,
}

impl Metrics {
    pub fn new(me: Workload) -> Metrics {
        Metrics {
            me_header: me
                .header()
                .parse()
                .unwrap_or(http::HeaderValue::from_static("")),
            me,
            http: Mutex::default(),
            tcp: Mutex::default(),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn key(
        &self,
        source: bool,
        peer: Option<&http::HeaderValue>,
        principal: Option<&Arc<str>>,
        service: &str,
        protocol: &'static str,
        (code, grpc_status): (u16, Option<u32>),
        flags: &str,
    ) -> Key {
        Key {
            source,
            peer: peer
                .and_then(|p| p.to_str().ok())
                .and_then(Workload::parse)
                .unwrap_or_else(Workload::unknown),
            service: if service.is_empty() {
                "unknown".into()
            } else {
                service.to_owned()
            },
            protocol,
            code,
            grpc_status,
            flags: if flags.is_empty() {
                "-".into()
            } else {
                flags.to_owned()
            },
            principal: principal.cloned(),
        }
    }

    pub fn http(&self, r: Request<'_>) {
        let key = self.key(
            r.source,
            r.peer,
            r.principal,
            r.service,
            if r.grpc { "grpc" } else { "http" },
            (r.code, r.grpc_status.filter(|_| r.grpc)),
            r.flags,
        );
        let mut m = self.http.lock().unwrap_or_else(|e| e.into_inner());
        let s = m.entry(key).or_default();
        s.requests += 1;
        s.duration
            .observe(&DURATION_BUCKETS, r.duration.as_secs_f64() * 1000.0);
        s.request_bytes
            .observe(&BYTE_BUCKETS, r.request_bytes as f64);
        s.response_bytes
            .observe(&BYTE_BUCKETS, r.response_bytes as f64);
    }

    /// A TCP connection opened (`bytes` None) or closed with the bytes
    /// it received from and sent to the downstream side.
    pub fn tcp(
        &self,
        source: bool,
        service: &str,
        principal: Option<&str>,
        bytes: Option<(u64, u64)>,
    ) {
        let principal = principal.map(Arc::from);
        let key = self.key(
            source,
            None,
            principal.as_ref(),
            service,
            "tcp",
            (0, None),
            "-",
        );
        let mut m = self.tcp.lock().unwrap_or_else(|e| e.into_inner());
        let s = m.entry(key).or_default();
        match bytes {
            None => s.opened += 1,
            Some((received, sent)) => {
                s.closed += 1;
                s.received += received;
                s.sent += sent;
            }
        }
    }

    fn labels(&self, k: &Key) -> String {
        let (src, dst) = if k.source {
            (&self.me, &k.peer)
        } else {
            (&k.peer, &self.me)
        };
        let (svc_name, svc_ns) = match k.service.split('.').collect::<Vec<_>>().as_slice() {
            [name, ns, ..] => (name.to_string(), ns.to_string()),
            _ => (k.service.clone(), "unknown".into()),
        };
        let mut out = String::new();
        let mut put = |name: &str, v: &str| {
            if !out.is_empty() {
                out.push(',');
            }
            let _ = write!(
                out,
                "{name}=\"{}\"",
                v.replace('\\', "\\\\").replace('"', "\\\"")
            );
        };
        put("reporter", if k.source { "source" } else { "destination" });
        put("source_workload", &src.workload);
        put("source_canonical_service", &src.canonical_service);
        put("source_canonical_revision", &src.canonical_revision);
        put("source_workload_namespace", &src.namespace);
        // Identities are proven by mutual TLS: on the destination side,
        // the client's certificate (its trust domain is this proxy's too).
        let (src_principal, dst_principal) = match &k.principal {
            Some(p) => {
                let domain = p
                    .strip_prefix("spiffe://")
                    .and_then(|r| r.split('/').next())
                    .unwrap_or("cluster.local");
                (p.to_string(), self.me.principal(domain))
            }
            None => ("unknown".into(), "unknown".into()),
        };
        put("source_principal", &src_principal);
        put("source_app", &src.app);
        put("source_version", &src.version);
        put("source_cluster", &src.cluster);
        put("destination_workload", &dst.workload);
        put("destination_workload_namespace", &dst.namespace);
        put("destination_principal", &dst_principal);
        put("destination_app", &dst.app);
        put("destination_version", &dst.version);
        put("destination_service", &k.service);
        put("destination_canonical_service", &dst.canonical_service);
        put("destination_canonical_revision", &dst.canonical_revision);
        put("destination_service_name", &svc_name);
        put("destination_service_namespace", &svc_ns);
        put("destination_cluster", &dst.cluster);
        put("request_protocol", k.protocol);
        if k.protocol != "tcp" {
            put("response_code", &k.code.to_string());
            put(
                "grpc_response_status",
                &k.grpc_status.map(|s| s.to_string()).unwrap_or_default(),
            );
        }
        put("response_flags", &k.flags);
        put(
            "connection_security_policy",
            match (k.source, &k.principal) {
                (true, _) => "unknown",
                (false, Some(_)) => "mutual_tls",
                (false, None) => "none",
            },
        );
        out
    }

    /// The metrics in Prometheus' text format.
    pub fn prometheus(&self, out: &mut String) {
        let http = self.http.lock().unwrap_or_else(|e| e.into_inner());
        let mut series: Vec<(String, &Http)> =
            http.iter().map(|(k, v)| (self.labels(k), v)).collect();
        series.sort_by(|a, b| a.0.cmp(&b.0));
        if !series.is_empty() {
            let _ = writeln!(out, "# TYPE istio_requests_total counter");
            for (l, s) in &series {
                let _ = writeln!(out, "istio_requests_total{{{l}}} {}", s.requests);
            }
            for (name, bounds, pick) in [
                (
                    "istio_request_duration_milliseconds",
                    &DURATION_BUCKETS[..],
                    0,
                ),
                ("istio_request_bytes", &BYTE_BUCKETS[..], 1),
                ("istio_response_bytes", &BYTE_BUCKETS[..], 2),
            ] {
                let _ = writeln!(out, "# TYPE {name} histogram");
                for (l, s) in &series {
                    let h = [&s.duration, &s.request_bytes, &s.response_bytes][pick];
                    for (le, n) in bounds.iter().zip(&h.buckets) {
                        let _ = writeln!(out, "{name}_bucket{{{l},le=\"{le}\"}} {n}");
                    }
                    let _ = writeln!(out, "{name}_bucket{{{l},le=\"+Inf\"}} {}", h.count);
                    let _ = writeln!(out, "{name}_sum{{{l}}} {}", h.sum);
                    let _ = writeln!(out, "{name}_count{{{l}}} {}", h.count);
                }
            }
        }
        drop(http);
        let tcp = self.tcp.lock().unwrap_or_else(|e| e.into_inner());
        let mut series: Vec<(String, &Tcp)> =
            tcp.iter().map(|(k, v)| (self.labels(k), v)).collect();
        series.sort_by(|a, b| a.0.cmp(&b.0));
        if !series.is_empty() {
            for (name, pick) in [
                ("istio_tcp_connections_opened_total", 0),
                ("istio_tcp_connections_closed_total", 1),
                ("istio_tcp_received_bytes_total", 2),
                ("istio_tcp_sent_bytes_total", 3),
            ] {
                let _ = writeln!(out, "# TYPE {name} counter");
                for (l, s) in &series {
                    let v = [s.opened, s.closed, s.received, s.sent][pick];
                    let _ = writeln!(out, "{name}{{{l}}} {v}");
                }
            }
        }
    }
}

/// The Service host of an Istio cluster name (`outbound|9080|v1|host`).
pub fn service_of_cluster(name: &str) -> &str {
    name.rsplit('|').next().unwrap_or("")
}

/// A response on its way to the downstream side, recorded when its body
/// ends (or the downstream goes away), as Envoy's stats filter does: the
/// duration runs to the last byte, the response size counts the body, and
/// a gRPC status comes from the trailers (or from the headers of a
/// trailers-only answer).
pub struct Pending {
    pub metrics: Arc<Metrics>,
    pub source: bool,
    pub peer: Option<http::HeaderValue>,
    pub principal: Option<Arc<str>>,
    pub service: String,
    pub grpc: bool,
    pub code: u16,
    pub grpc_status: Option<u32>,
    pub flags: String,
    pub request_bytes: u64,
    pub started: std::time::Instant,
    response_bytes: u64,
}

impl Pending {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        metrics: Arc<Metrics>,
        source: bool,
        (peer, principal): (Option<http::HeaderValue>, Option<Arc<str>>),
        service: String,
        grpc: bool,
        response: (http::StatusCode, &http::HeaderMap),
        flags: String,
        request_bytes: u64,
        started: std::time::Instant,
    ) -> Pending {
        Pending {
            metrics,
            source,
            peer,
            principal,
            service,
            grpc,
            code: response.0.as_u16(),
            grpc_status: grpc_status(response.1),
            flags,
            request_bytes,
            started,
            response_bytes: 0,
        }
    }

    fn record(self) {
        self.metrics.http(Request {
            source: self.source,
            peer: self.peer.as_ref(),
            principal: self.principal.as_ref(),
            service: &self.service,
            grpc: self.grpc,
            code: self.code,
            grpc_status: self.grpc_status,
            flags: &self.flags,
            request_bytes: self.request_bytes,
            response_bytes: self.response_bytes,
            duration: self.started.elapsed(),
        });
    }
}

fn grpc_status(h: &http::HeaderMap) -> Option<u32> {
    h.get("grpc-status")?.to_str().ok()?.trim().parse().ok()
}

/// A response body that records its [`Pending`] metrics at its end.
pub struct Metered<B: http_body::Body> {
    inner: B,
    pending: Option<Box<Pending>>,
}

impl<B: http_body::Body> Metered<B> {
    pub fn new(inner: B, pending: Option<Box<Pending>>) -> Self {
        Metered { inner, pending }
    }

    fn finish(&mut self) {
        if let Some(p) = self.pending.take() {
            p.record();
        }
    }
}

impl<B: http_body::Body> Drop for Metered<B> {
    fn drop(&mut self) {
        // The downstream went away before the body's end: Envoy's `DC`.
        if let Some(p) = self.pending.as_mut() {
            if !self.inner.is_end_stream() && p.flags.is_empty() {
                p.flags = "DC".into();
            }
        }
        self.finish();
    }
}

impl<B: http_body::Body<Data = bytes::Bytes> + Unpin> http_body::Body for Metered<B> {
    type Data = bytes::Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, B::Error>>> {
        let this = &mut *self;
        let frame = std::task::ready!(std::pin::Pin::new(&mut this.inner).poll_frame(cx));
        if let Some(p) = this.pending.as_mut() {
            match &frame {
                Some(Ok(f)) => {
                    if let Some(d) = f.data_ref() {
                        p.response_bytes += d.len() as u64;
                    } else if let Some(t) = f.trailers_ref() {
                        if let Some(s) = grpc_status(t) {
                            p.grpc_status = Some(s);
                        }
                    }
                }
                // A body cut off midway: Envoy's downstream flag.
                Some(Err(_)) => p.flags = "UR".into(),
                None => {}
            }
        }
        if !matches!(frame, Some(Ok(_))) || this.inner.is_end_stream() {
            this.finish();
        }
        std::task::Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workloads_come_from_istio_node_metadata_and_round_trip() {
        let md = serde_json::json!({
            "NAMESPACE": "default", "NAME": "reviews-v2-5b64f7b9d6-x7x2k",
            "LABELS": {"app": "reviews", "version": "v2", "pod-template-hash": "5b64f7b9d6"},
            "SERVICE_ACCOUNT": "bookinfo-reviews"
        });
        let w = Workload::from_node(md.as_object().unwrap()).unwrap();
        assert_eq!(w.workload, "reviews-v2");
        assert_eq!(w.canonical_service, "reviews");
        assert_eq!(w.canonical_revision, "v2");
        assert_eq!(Workload::parse(&w.header()), Some(w));
        assert!(Workload::from_node(&serde_json::Map::new()).is_none());
    }

    /// A 200 from reviews, 120 bytes in 3 ms.
    fn reviews_ok<'a>(
        source: bool,
        peer: Option<&'a http::HeaderValue>,
        principal: Option<&'a Arc<str>>,
    ) -> Request<'a> {
        Request {
            source,
            peer,
            principal,
            service: "reviews.default.svc.cluster.local",
            grpc: false,
            code: 200,
            grpc_status: None,
            flags: "",
            request_bytes: 0,
            response_bytes: 120,
            duration: Duration::from_millis(3),
        }
    }

    #[test]
    fn series_carry_istios_labels() {
        let md = serde_json::json!({"NAMESPACE": "default", "NAME": "productpage-v1-1-2", "LABELS": {"app": "productpage", "version": "v1", "pod-template-hash": "1"}});
        let m = Metrics::new(Workload::from_node(md.as_object().unwrap()).unwrap());
        let peer: http::HeaderValue = "default;reviews-v2;reviews;v2;reviews;v2;sa;Kubernetes"
            .parse()
            .unwrap();
        m.http(reviews_ok(true, Some(&peer), None));
        let mut out = String::new();
        m.prometheus(&mut out);
        let line = out
            .lines()
            .find(|l| l.starts_with("istio_requests_total{"))
            .unwrap();
        for want in [
            "reporter=\"source\"",
            "source_workload=\"productpage-v1\"",
            "destination_workload=\"reviews-v2\"",
            "destination_version=\"v2\"",
            "destination_service_name=\"reviews\"",
            "response_code=\"200\"",
            "response_flags=\"-\"",
            "connection_security_policy=\"unknown\"",
        ] {
            assert!(line.contains(want), "{want} not in {line}");
        }
        assert!(line.ends_with(" 1"));
        assert!(out.contains("istio_request_duration_milliseconds_bucket{"));
        assert!(out.contains("le=\"5\"} 1"));
    }

    #[test]
    fn mutual_tls_proves_the_principals_on_the_destination_side() {
        let md = serde_json::json!({"NAMESPACE": "default", "NAME": "reviews-v1-1-2",
            "SERVICE_ACCOUNT": "bookinfo-reviews", "LABELS": {"app": "reviews", "pod-template-hash": "1"}});
        let m = Metrics::new(Workload::from_node(md.as_object().unwrap()).unwrap());
        let client: Arc<str> =
            Arc::from("spiffe://cluster.local/ns/default/sa/bookinfo-productpage");
        for principal in [Some(&client), None] {
            m.http(reviews_ok(false, None, principal));
        }
        m.tcp(
            false,
            "reviews.default.svc.cluster.local",
            Some(&client),
            None,
        );
        let mut out = String::new();
        m.prometheus(&mut out);
        let lines =
            |metric: &str| -> Vec<&str> { out.lines().filter(|l| l.starts_with(metric)).collect() };
        let requests = lines("istio_requests_total{");
        let mtls = requests
            .iter()
            .find(|l| l.contains("connection_security_policy=\"mutual_tls\""))
            .expect("a mutual TLS series");
        assert!(
            mtls.contains(
                "source_principal=\"spiffe://cluster.local/ns/default/sa/bookinfo-productpage\""
            ),
            "{mtls}"
        );
        assert!(
            mtls.contains(
                "destination_principal=\"spiffe://cluster.local/ns/default/sa/bookinfo-reviews\""
            ),
            "{mtls}"
        );
        let plain = requests
            .iter()
            .find(|l| l.contains("connection_security_policy=\"none\""))
            .expect("a plain-text series");
        assert!(plain.contains("source_principal=\"unknown\""), "{plain}");
        let tcp = lines("istio_tcp_connections_opened_total{");
        assert!(
            tcp.iter()
                .any(|l| l.contains("connection_security_policy=\"mutual_tls\"")),
            "{tcp:?}"
        );
    }

    /// A body of given frames, for the metered body's tests.
    struct Frames(std::collections::VecDeque<http_body::Frame<bytes::Bytes>>);

    impl http_body::Body for Frames {
        type Data = bytes::Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
            std::task::Poll::Ready(self.0.pop_front().map(Ok))
        }
        fn is_end_stream(&self) -> bool {
            self.0.is_empty()
        }
    }

    fn metered(m: &Arc<Metrics>, grpc: bool, headers: &http::HeaderMap) -> Metered<Frames> {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", "14".parse().unwrap());
        let frames = [
            http_body::Frame::data(bytes::Bytes::from_static(b"hello ")),
            http_body::Frame::data(bytes::Bytes::from_static(b"world")),
            http_body::Frame::trailers(trailers),
        ];
        let pending = Pending::new(
            m.clone(),
            false,
            (None, None),
            "echo.default.svc.cluster.local".into(),
            grpc,
            (http::StatusCode::OK, headers),
            String::new(),
            7,
            std::time::Instant::now(),
        );
        Metered::new(Frames(frames.into()), Some(Box::new(pending)))
    }

    fn series(m: &Metrics) -> String {
        let mut out = String::new();
        m.prometheus(&mut out);
        out.lines()
            .filter(|l| {
                l.starts_with("istio_requests_total{") || l.starts_with("istio_response_bytes_sum{")
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[tokio::test]
    async fn a_grpc_answer_is_recorded_at_its_end_with_the_status_of_its_trailers() {
        use http_body_util::BodyExt;
        let m = Arc::new(Metrics::new(Workload::unknown()));
        let body = metered(&m, true, &http::HeaderMap::new());
        assert_eq!(series(&m), "", "recorded before the body ended");
        let got = body.collect().await.unwrap().to_bytes();
        assert_eq!(&got[..], b"hello world");
        let s = series(&m);
        assert!(s.contains("grpc_response_status=\"14\""), "{s}");
        assert!(s.contains("request_protocol=\"grpc\""), "{s}");
        assert!(s.contains("response_flags=\"-\""), "{s}");
        assert!(
            s.lines()
                .any(|l| l.starts_with("istio_response_bytes_sum{") && l.ends_with(" 11")),
            "{s}"
        );
    }

    #[tokio::test]
    async fn trailers_only_grpc_answers_and_plain_http_have_their_status() {
        let m = Arc::new(Metrics::new(Workload::unknown()));
        let mut h = http::HeaderMap::new();
        h.insert("grpc-status", "5".parse().unwrap());
        let mut frames = metered(&m, true, &h);
        frames.inner.0.clear();
        drop(frames);
        assert!(
            series(&m).contains("grpc_response_status=\"5\""),
            "{}",
            series(&m)
        );
        let m = Arc::new(Metrics::new(Workload::unknown()));
        let mut plain = metered(&m, false, &h);
        plain.inner.0.clear();
        drop(plain);
        let s = series(&m);
        assert!(s.contains("grpc_response_status=\"\""), "{s}");
    }

    #[tokio::test]
    async fn a_body_the_downstream_abandons_is_recorded_as_dc() {
        use http_body_util::BodyExt;
        let m = Arc::new(Metrics::new(Workload::unknown()));
        let mut body = metered(&m, false, &http::HeaderMap::new());
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.data_ref().map(|d| d.len()), Some(6));
        drop(body);
        let s = series(&m);
        assert!(s.contains("response_flags=\"DC\""), "{s}");
        assert!(
            s.lines()
                .any(|l| l.starts_with("istio_response_bytes_sum{") && l.ends_with(" 6")),
            "{s}"
        );
    }
}
