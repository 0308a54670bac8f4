//! mast's cluster DNS, served in-process on every node with hickory-server.
//!
//! It answers what CoreDNS's `kubernetes` plugin answers under the cluster
//! domain (`cluster.local`):
//! - `<svc>.<ns>.svc.cluster.local`: A for the ClusterIP, or, for a headless
//!   Service, one A per ready endpoint; CNAME for an ExternalName Service;
//! - `<host>.<svc>.<ns>.svc.cluster.local`: a headless Service's endpoint,
//!   by its hostname or its dashed IP (`10-42-0-5`);
//! - `_<port>._<proto>.<svc>.<ns>.svc.cluster.local`: SRV for named ports;
//! - `<a-b-c-d>.<ns>.pod.cluster.local`: A for the dashed pod IP.
//!
//! Every other name is relayed to the node's own resolver (from the host's
//! `/etc/resolv.conf`), as CoreDNS's `forward . /etc/resolv.conf` does. The
//! zone is a snapshot ([`Zone`]) that the agent replaces whenever Services or
//! EndpointSlices change.

use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Header, HeaderCounts, Message, Metadata, ResponseCode};
use hickory_server::proto::rr::rdata::{A, CNAME, PTR, SRV};
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Answers carry this TTL, as CoreDNS's kubernetes plugin does by default.
const TTL: u32 = 5;

/// One Service as DNS sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Service {
    /// The ClusterIP; `None` for a headless Service.
    pub cluster_ip: Option<Ipv4Addr>,
    /// `spec.externalName` of an ExternalName Service.
    pub external_name: Option<String>,
    /// Named ports: (name, protocol in lower case, port).
    pub ports: Vec<(String, String, u16)>,
    /// Ready endpoints (and not-ready ones when the Service publishes them).
    pub endpoints: Vec<Endpoint>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub ip: Ipv4Addr,
    pub hostname: Option<String>,
}

/// Everything the cluster domain holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Zone {
    /// (namespace, name) → Service.
    pub services: BTreeMap<(String, String), Service>,
    /// Address blocks whose reverse names (`in-addr.arpa`) this zone
    /// answers: the Service and pod ranges.
    pub reverse: Vec<(Ipv4Addr, u8)>,
}

/// What a name resolves to.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// The name does not exist.
    NxDomain,
    /// These records (empty: the name exists, with no data of this type).
    Records(Vec<Record>),
}

/// The name under the cluster domain, as labels, or `None` when the name is
/// outside it.
fn cluster_labels(name: &str, domain: &str) -> Option<Vec<String>> {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let rest = if name == domain {
        ""
    } else {
        name.strip_suffix(domain)?.strip_suffix('.')?
    };
    Some(
        rest.split('.')
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect(),
    )
}

fn dashed_ip(label: &str) -> Option<Ipv4Addr> {
    label.replace('-', ".").parse().ok()
}

/// The address a reverse name (`4.3.2.1.in-addr.arpa`) stands for.
fn reverse_ip(name: &str) -> Option<Ipv4Addr> {
    let rest = name.trim_end_matches('.').to_ascii_lowercase();
    let rest = rest.strip_suffix(".in-addr.arpa")?;
    let mut octets: Vec<u8> = rest
        .split('.')
        .map(|o| o.parse().ok())
        .collect::<Option<_>>()?;
    if octets.len() != 4 {
        return None;
    }
    octets.reverse();
    Some(Ipv4Addr::new(octets[0], octets[1], octets[2], octets[3]))
}

fn contains(block: &(Ipv4Addr, u8), ip: Ipv4Addr) -> bool {
    let mask = if block.1 == 0 {
        0
    } else {
        u32::MAX << (32 - block.1)
    };
    u32::from(ip) & mask == u32::from(block.0) & mask
}

impl Zone {
    /// PTR answers for the cluster's addresses: a ClusterIP names its
    /// Service, a headless Service's endpoint its own name; other addresses
    /// in the cluster's ranges do not exist.
    fn reverse_lookup(&self, domain: &str, qname: &Name, qtype: RecordType) -> Option<Answer> {
        let ip = reverse_ip(&qname.to_ascii())?;
        if !self.reverse.iter().any(|b| contains(b, ip)) {
            return None;
        }
        let mut names = BTreeSet::new();
        for ((ns, svc), s) in &self.services {
            match s.cluster_ip {
                Some(vip) if vip == ip => {
                    names.insert(format!("{svc}.{ns}.svc.{domain}."));
                }
                None => {
                    for e in s.endpoints.iter().filter(|e| e.ip == ip) {
                        let host = e
                            .hostname
                            .clone()
                            .unwrap_or_else(|| ip.to_string().replace('.', "-"));
                        names.insert(format!("{host}.{svc}.{ns}.svc.{domain}."));
                    }
                }
                _ => {}
            }
        }
        if names.is_empty() {
            return Some(Answer::NxDomain);
        }
        if qtype != RecordType::PTR && qtype != RecordType::ANY {
            return Some(Answer::Records(vec![]));
        }
        Some(Answer::Records(
            names
                .into_iter()
                .filter_map(|n| Name::from_ascii(n).ok())
                .map(|n| Record::from_rdata(qname.clone(), TTL, RData::PTR(PTR(n))))
                .collect(),
        ))
    }

    /// Answer `qtype` for `qname`; `None` when the name is outside the
    /// cluster domain and the cluster's reverse zones.
    pub fn lookup(&self, domain: &str, qname: &Name, qtype: RecordType) -> Option<Answer> {
        if let Some(a) = self.reverse_lookup(domain, qname, qtype) {
            return Some(a);
        }
        self.lookup_direct(domain, qname, qtype, 0)
    }

    /// `lookup` in the cluster domain; `depth` counts CNAMEs followed.
    fn lookup_direct(
        &self,
        domain: &str,
        qname: &Name,
        qtype: RecordType,
        depth: u8,
    ) -> Option<Answer> {
        let labels = cluster_labels(&qname.to_ascii(), domain)?;
        let owner = qname.clone();
        let a = |ip: Ipv4Addr| Record::from_rdata(owner.clone(), TTL, RData::A(A(ip)));
        let want = |t: RecordType| qtype == t || qtype == RecordType::ANY;
        let l: Vec<&str> = labels.iter().map(String::as_str).collect();
        let records = match l.as_slice() {
            // The domain itself, `svc`, `pod`, `<ns>.svc` and `<ns>.pod`
            // exist with no records of their own.
            [] | ["svc"] | ["pod"] | [_, "svc"] | [_, "pod"] => vec![],
            [ip, _ns, "pod"] => match dashed_ip(ip) {
                Some(ip) if want(RecordType::A) => vec![a(ip)],
                Some(_) => vec![],
                None => return Some(Answer::NxDomain),
            },
            [svc, ns, "svc"] => {
                let Some(s) = self.services.get(&(ns.to_string(), svc.to_string())) else {
                    return Some(Answer::NxDomain);
                };
                let mut out = vec![];
                if let Some(target) = &s.external_name {
                    let Ok(t) = Name::from_ascii(format!("{}.", target.trim_end_matches('.')))
                    else {
                        return Some(Answer::Records(out));
                    };
                    out.push(Record::from_rdata(
                        owner.clone(),
                        TTL,
                        RData::CNAME(CNAME(t.clone())),
                    ));
                    // A target inside the cluster is followed here, as a
                    // recursive server would (a bounded chain: no loops).
                    if qtype != RecordType::CNAME && depth < 8 {
                        if let Some(Answer::Records(more)) =
                            self.lookup_direct(domain, &t, qtype, depth + 1)
                        {
                            out.extend(more);
                        }
                    }
                    return Some(Answer::Records(out));
                }
                if want(RecordType::A) {
                    match s.cluster_ip {
                        Some(ip) => out.push(a(ip)),
                        None => out.extend(s.endpoints.iter().map(|e| a(e.ip))),
                    }
                }
                if want(RecordType::SRV) {
                    for (name, proto, _) in &s.ports {
                        if !name.is_empty() {
                            out.extend(self.srv(domain, &owner, ns, svc, s, name, proto));
                        }
                    }
                }
                out
            }
            [port, proto, svc, ns, "svc"] if port.starts_with('_') && proto.starts_with('_') => {
                let Some(s) = self.services.get(&(ns.to_string(), svc.to_string())) else {
                    return Some(Answer::NxDomain);
                };
                let (port, proto) = (&port[1..], &proto[1..]);
                if !s.ports.iter().any(|(n, p, _)| n == port && p == proto) {
                    return Some(Answer::NxDomain);
                }
                if want(RecordType::SRV) {
                    self.srv(domain, &owner, ns, svc, s, port, proto)
                } else {
                    vec![]
                }
            }
            [_, _, _, "svc"] if l[0].starts_with('_') => {
                // `_<proto>.<svc>.<ns>.svc` exists when the Service has a
                // named port of that protocol.
                let Some(s) = self.services.get(&(l[2].to_string(), l[1].to_string())) else {
                    return Some(Answer::NxDomain);
                };
                if s.ports
                    .iter()
                    .any(|(n, p, _)| !n.is_empty() && *p == l[0][1..])
                {
                    vec![]
                } else {
                    return Some(Answer::NxDomain);
                }
            }
            [host, svc, ns, "svc"] => {
                let Some(s) = self.services.get(&(ns.to_string(), svc.to_string())) else {
                    return Some(Answer::NxDomain);
                };
                let found: Vec<Ipv4Addr> = s
                    .endpoints
                    .iter()
                    .filter(|_| s.cluster_ip.is_none())
                    .filter(|e| {
                        e.hostname.as_deref() == Some(*host) || dashed_ip(host) == Some(e.ip)
                    })
                    .map(|e| e.ip)
                    .collect();
                if found.is_empty() {
                    return Some(Answer::NxDomain);
                }
                if want(RecordType::A) {
                    found.into_iter().map(a).collect()
                } else {
                    vec![]
                }
            }
            _ => return Some(Answer::NxDomain),
        };
        Some(Answer::Records(records))
    }

    /// SRV records for one named port: the Service's name, or for a
    /// headless Service each endpoint's own name.
    #[allow(clippy::too_many_arguments)]
    fn srv(
        &self,
        domain: &str,
        owner: &Name,
        ns: &str,
        svc: &str,
        s: &Service,
        port: &str,
        proto: &str,
    ) -> Vec<Record> {
        let Some((_, _, number)) = s.ports.iter().find(|(n, p, _)| n == port && p == proto) else {
            return vec![];
        };
        let targets: Vec<String> = match s.cluster_ip {
            Some(_) => vec![format!("{svc}.{ns}.svc.{domain}.")],
            None => {
                let names: BTreeSet<String> = s
                    .endpoints
                    .iter()
                    .map(|e| {
                        let host = e
                            .hostname
                            .clone()
                            .unwrap_or_else(|| e.ip.to_string().replace('.', "-"));
                        format!("{host}.{svc}.{ns}.svc.{domain}.")
                    })
                    .collect();
                names.into_iter().collect()
            }
        };
        let weight = (100 / targets.len().max(1)) as u16;
        targets
            .into_iter()
            .filter_map(|t| Name::from_ascii(t).ok())
            .map(|t| {
                Record::from_rdata(
                    owner.clone(),
                    TTL,
                    RData::SRV(SRV::new(0, weight, *number, t)),
                )
            })
            .collect()
    }
}

/// The nameservers of the host's `/etc/resolv.conf`, leaving out
/// `exclude` (this server itself).
pub fn host_nameservers(exclude: Ipv4Addr) -> Vec<SocketAddr> {
    std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse::<std::net::IpAddr>().ok())
        .filter(|a| *a != std::net::IpAddr::V4(exclude))
        .map(|a| SocketAddr::new(a, 53))
        .collect()
}

/// The request handler: the cluster zone, or the upstream resolvers.
struct Handler {
    domain: String,
    zone: watch::Receiver<Arc<Zone>>,
    upstreams: Vec<SocketAddr>,
}

impl Handler {
    /// Relay a query to the upstream resolvers, first answer wins.
    ///
    /// A relay by hand (a UDP round trip with the query's own bytes) keeps
    /// the upstream's answer exactly as it was, without the weight of a
    /// caching resolver in every node agent.
    async fn forward(&self, raw: &[u8]) -> Option<Message> {
        for up in &self.upstreams {
            let bind: SocketAddr = if up.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }
                .parse()
                .ok()?;
            let Ok(sock) = tokio::net::UdpSocket::bind(bind).await else {
                continue;
            };
            if sock.send_to(raw, up).await.is_err() {
                continue;
            }
            let mut buf = vec![0u8; 4096];
            match tokio::time::timeout(Duration::from_secs(2), sock.recv_from(&mut buf)).await {
                Ok(Ok((n, from))) if from == *up => {
                    if let Ok(m) = Message::from_vec(&buf[..n]) {
                        return Some(m);
                    }
                }
                _ => tracing::debug!(upstream = %up, "no answer from the upstream resolver"),
            }
        }
        None
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response: R,
    ) -> ResponseInfo {
        let builder = MessageResponseBuilder::from_message_request(request);
        let mut meta = Metadata::response_from_request(&request.metadata);
        meta.recursion_available = true;
        let Some(query) = request.queries.queries().first() else {
            let msg = builder.error_msg(&request.metadata, ResponseCode::FormErr);
            return send(&mut response, msg, &request.metadata).await;
        };
        let qname: Name = query.name().into();
        let zone = self.zone.borrow().clone();
        match zone.lookup(&self.domain, &qname, query.query_type()) {
            Some(Answer::NxDomain) => {
                meta.authoritative = true;
                meta.response_code = ResponseCode::NXDomain;
                let msg = builder.build_no_records(meta);
                send(&mut response, msg, &request.metadata).await
            }
            Some(Answer::Records(records)) => {
                meta.authoritative = true;
                let msg = builder.build(meta, records.iter(), [], [], []);
                send(&mut response, msg, &request.metadata).await
            }
            None => match self.forward(request.as_slice()).await {
                Some(up) => {
                    meta.response_code = up.metadata.response_code;
                    let msg = builder.build(
                        meta,
                        up.answers.iter(),
                        up.authorities.iter(),
                        [],
                        up.additionals.iter(),
                    );
                    send(&mut response, msg, &request.metadata).await
                }
                None => {
                    let msg = builder.error_msg(&request.metadata, ResponseCode::ServFail);
                    send(&mut response, msg, &request.metadata).await
                }
            },
        }
    }
}

async fn send<'a, R: ResponseHandler>(
    response: &mut R,
    msg: hickory_server::zone_handler::MessageResponse<
        '_,
        'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
    >,
    req: &Metadata,
) -> ResponseInfo {
    match response.send_response(msg).await {
        Ok(info) => info,
        Err(e) => {
            tracing::debug!(error = %e, "could not send a DNS answer");
            let mut metadata = Metadata::response_from_request(req);
            metadata.response_code = ResponseCode::ServFail;
            Header {
                metadata,
                counts: HeaderCounts::default(),
            }
            .into()
        }
    }
}

/// Serve `domain` from `zone` on `addr` (UDP and TCP) until the returned
/// handle is dropped or aborted.
pub async fn serve(
    addr: SocketAddr,
    domain: &str,
    zone: watch::Receiver<Arc<Zone>>,
    upstreams: Vec<SocketAddr>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    use anyhow::Context;
    let udp = tokio::net::UdpSocket::bind(addr)
        .await
        .with_context(|| format!("cluster DNS cannot listen on udp {addr}"))?;
    let tcp = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cluster DNS cannot listen on tcp {addr}"))?;
    let mut server = hickory_server::Server::new(Handler {
        domain: domain.trim_end_matches('.').to_ascii_lowercase(),
        zone,
        upstreams,
    });
    server.register_socket(udp);
    server.register_listener(tcp, Duration::from_secs(10), 64 << 10);
    Ok(tokio::spawn(async move {
        if let Err(e) = server.block_until_done().await {
            tracing::warn!(error = %e, "cluster DNS stopped");
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone() -> Zone {
        let mut z = Zone::default();
        z.services.insert(
            ("default".into(), "web".into()),
            Service {
                cluster_ip: Some("10.43.0.7".parse().unwrap()),
                ports: vec![("http".into(), "tcp".into(), 80)],
                ..Default::default()
            },
        );
        z.services.insert(
            ("default".into(), "db".into()),
            Service {
                cluster_ip: None,
                ports: vec![("pg".into(), "tcp".into(), 5432)],
                endpoints: vec![
                    Endpoint {
                        ip: "10.42.0.5".parse().unwrap(),
                        hostname: Some("db-0".into()),
                    },
                    Endpoint {
                        ip: "10.42.0.6".parse().unwrap(),
                        hostname: None,
                    },
                ],
                ..Default::default()
            },
        );
        z.services.insert(
            ("default".into(), "ext".into()),
            Service {
                external_name: Some("example.org".into()),
                ..Default::default()
            },
        );
        z
    }

    fn ask(name: &str, t: RecordType) -> Option<Vec<String>> {
        match zone().lookup("cluster.local", &Name::from_ascii(name).unwrap(), t)? {
            Answer::NxDomain => Some(vec!["NXDOMAIN".into()]),
            Answer::Records(r) => Some(r.iter().map(|r| r.data.to_string()).collect()),
        }
    }

    #[test]
    fn services_resolve_to_cluster_ips() {
        assert_eq!(
            ask("web.default.svc.cluster.local.", RecordType::A).unwrap(),
            ["10.43.0.7"]
        );
        assert_eq!(
            ask("WEB.default.svc.cluster.local", RecordType::A).unwrap(),
            ["10.43.0.7"]
        );
        assert_eq!(
            ask("web.default.svc.cluster.local.", RecordType::AAAA).unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(
            ask("nope.default.svc.cluster.local.", RecordType::A).unwrap(),
            ["NXDOMAIN"]
        );
        assert_eq!(
            ask("web.other.svc.cluster.local.", RecordType::A).unwrap(),
            ["NXDOMAIN"]
        );
        // Search-path expansions of a short name miss cleanly.
        assert_eq!(
            ask("web.default.default.svc.cluster.local.", RecordType::A).unwrap(),
            ["NXDOMAIN"]
        );
        assert_eq!(
            ask("default.svc.cluster.local.", RecordType::A).unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(ask("example.org.", RecordType::A), None);
        assert_eq!(ask("cluster.localhost.", RecordType::A), None);
    }

    #[test]
    fn headless_services_list_endpoints_and_hostnames() {
        assert_eq!(
            ask("db.default.svc.cluster.local.", RecordType::A).unwrap(),
            ["10.42.0.5", "10.42.0.6"]
        );
        assert_eq!(
            ask("db-0.db.default.svc.cluster.local.", RecordType::A).unwrap(),
            ["10.42.0.5"]
        );
        assert_eq!(
            ask("10-42-0-6.db.default.svc.cluster.local.", RecordType::A).unwrap(),
            ["10.42.0.6"]
        );
        assert_eq!(
            ask("db-9.db.default.svc.cluster.local.", RecordType::A).unwrap(),
            ["NXDOMAIN"]
        );
    }

    #[test]
    fn srv_cname_and_pods() {
        assert_eq!(
            ask("_http._tcp.web.default.svc.cluster.local.", RecordType::SRV).unwrap(),
            ["0 100 80 web.default.svc.cluster.local."]
        );
        assert_eq!(
            ask("_pg._tcp.db.default.svc.cluster.local.", RecordType::SRV).unwrap(),
            [
                "0 50 5432 10-42-0-6.db.default.svc.cluster.local.",
                "0 50 5432 db-0.db.default.svc.cluster.local."
            ]
        );
        assert_eq!(
            ask("_nope._tcp.web.default.svc.cluster.local.", RecordType::SRV).unwrap(),
            ["NXDOMAIN"]
        );
        assert_eq!(
            ask("ext.default.svc.cluster.local.", RecordType::A).unwrap(),
            ["example.org."]
        );
        let mut z = zone();
        z.services.insert(
            ("default".into(), "inner".into()),
            Service {
                external_name: Some("web.default.svc.cluster.local".into()),
                ..Default::default()
            },
        );
        z.services.insert(
            ("default".into(), "loop".into()),
            Service {
                external_name: Some("loop.default.svc.cluster.local".into()),
                ..Default::default()
            },
        );
        let got = |n: &str| match z.lookup(
            "cluster.local",
            &Name::from_ascii(n).unwrap(),
            RecordType::A,
        ) {
            Some(Answer::Records(r)) => r.iter().map(|r| r.data.to_string()).collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            got("inner.default.svc.cluster.local."),
            ["web.default.svc.cluster.local.", "10.43.0.7"]
        );
        assert_eq!(got("loop.default.svc.cluster.local.").len(), 9);
        assert_eq!(
            ask("10-42-0-9.default.pod.cluster.local.", RecordType::A).unwrap(),
            ["10.42.0.9"]
        );
        assert_eq!(
            ask("bogus.default.pod.cluster.local.", RecordType::A).unwrap(),
            ["NXDOMAIN"]
        );
    }

    #[test]
    fn reverse_names() {
        let mut z = zone();
        z.reverse = vec![
            ("10.43.0.0".parse().unwrap(), 16),
            ("10.42.0.0".parse().unwrap(), 16),
        ];
        let ask = |name: &str| match z.lookup(
            "cluster.local",
            &Name::from_ascii(name).unwrap(),
            RecordType::PTR,
        ) {
            None => vec!["FORWARD".to_string()],
            Some(Answer::NxDomain) => vec!["NXDOMAIN".into()],
            Some(Answer::Records(r)) => r.iter().map(|r| r.data.to_string()).collect(),
        };
        assert_eq!(
            ask("7.0.43.10.in-addr.arpa."),
            ["web.default.svc.cluster.local."]
        );
        assert_eq!(
            ask("5.0.42.10.in-addr.arpa."),
            ["db-0.db.default.svc.cluster.local."]
        );
        assert_eq!(
            ask("6.0.42.10.in-addr.arpa."),
            ["10-42-0-6.db.default.svc.cluster.local."]
        );
        assert_eq!(ask("9.9.43.10.in-addr.arpa."), ["NXDOMAIN"]);
        assert_eq!(ask("1.1.168.192.in-addr.arpa."), ["FORWARD"]);
    }
}
