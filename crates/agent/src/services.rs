//! The node's service proxy and cluster DNS (kube-proxy's and the node-local
//! CoreDNS's roles): Services and EndpointSlices, watched once, become the
//! node's nftables rules (`mast_net::proxy`), the load-balancer addresses on
//! its bridge, and the zone its DNS server answers from (`mast_dns`).

use crate::AgentConfig;
use futures::FutureExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use mast_net::proxy::{ProxiedService, Proxy, ProxyConfig, ServicePort};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The pod IPs the node's rules currently send traffic to. A terminating pod
/// waits to leave this set before it gets SIGTERM.
pub type Serving = watch::Receiver<Arc<HashSet<Ipv4Addr>>>;

/// Endpoints of one Service's slices: (IP, port name → port, ready, hostname).
struct SliceEndpoint {
    ip: Ipv4Addr,
    ports: BTreeMap<String, u16>,
    ready: bool,
    hostname: Option<String>,
}

fn slice_endpoints(
    slices: &Store<EndpointSlice>,
) -> BTreeMap<(String, String), Vec<SliceEndpoint>> {
    let mut out: BTreeMap<(String, String), Vec<SliceEndpoint>> = BTreeMap::new();
    for s in slices.state() {
        let Some(slice) = mast_watch::read_slice(&s) else {
            continue;
        };
        let list = out.entry((slice.namespace, slice.service)).or_default();
        for e in slice.endpoints {
            if let std::net::IpAddr::V4(ip) = e.ip {
                list.push(SliceEndpoint {
                    ip,
                    ports: slice.ports.clone(),
                    ready: e.ready,
                    hostname: e.hostname,
                });
            }
        }
    }
    out
}

/// The cluster DNS Service, as CoreDNS's is named: pods' resolv.conf names
/// its ClusterIP, and every node's proxy sends it to the node's own DNS
/// server (node-local, so DNS never crosses nodes).
const DNS_SERVICE: (&str, &str) = ("kube-system", "kube-dns");

/// The cluster DNS address pods use (`--cluster-dns`): the tenth address of
/// the Service range unless set.
pub fn cluster_dns(cfg: &AgentConfig) -> Ipv4Addr {
    cfg.cluster_dns
        .unwrap_or_else(|| Ipv4Addr::from(u32::from(cfg.service_cidr.0) + 10))
}

/// Create the `kube-dns` Service if it is missing. It is looked up first:
/// creating it again with its address fails on the address (422, as in
/// Kubernetes) before the name (409).
async fn ensure_dns_service(client: &Client, ip: Ipv4Addr) {
    let api: Api<Service> = Api::namespaced(client.clone(), DNS_SERVICE.0);
    if let Ok(Some(existing)) = api.get_opt(DNS_SERVICE.1).await {
        let have = existing.spec.and_then(|s| s.cluster_ip).unwrap_or_default();
        if have != ip.to_string() {
            tracing::warn!(%ip, have, "the kube-dns Service has another address than the one pods are given; set --cluster-dns to it");
        }
        return;
    }
    let svc: Service = match serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": DNS_SERVICE.1, "namespace": DNS_SERVICE.0,
            "labels": {"k8s-app": "kube-dns", "kubernetes.io/cluster-service": "true", "kubernetes.io/name": "CoreDNS"}},
        "spec": {"clusterIP": ip.to_string(), "ports": [
            {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
            {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53}]},
    })) {
        Ok(s) => s,
        Err(_) => return,
    };
    match api.create(&Default::default(), &svc).await {
        Ok(_) => tracing::info!(%ip, "created the kube-dns Service"),
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => {
            tracing::warn!(%ip, error = %e, "could not create the kube-dns Service; pods' DNS server address will not answer (set --cluster-dns to a free address of the Service range)")
        }
    }
}

/// What the node serves: the proxy's Services, the DNS zone, and the
/// load-balancer addresses. `dns` is this node's DNS server.
fn build(
    services: &Store<Service>,
    slices: &Store<EndpointSlice>,
    dns: Ipv4Addr,
) -> (Vec<ProxiedService>, mast_dns::Zone, BTreeSet<Ipv4Addr>) {
    let eps = slice_endpoints(slices);
    let mut proxied = vec![];
    let mut zone = mast_dns::Zone::default();
    let mut lb = BTreeSet::new();
    let none = vec![];
    for svc in services.state() {
        let (ns, name) = (svc.namespace().unwrap_or_default(), svc.name_any());
        let Some(spec) = svc.spec.as_ref() else {
            continue;
        };
        let ty = spec.type_.as_deref().unwrap_or("ClusterIP");
        let ends = eps.get(&(ns.clone(), name.clone())).unwrap_or(&none);
        let ports = spec.ports.as_deref().unwrap_or_default();
        let ready: Vec<&SliceEndpoint> = ends.iter().filter(|e| e.ready).collect();
        let mut seen = BTreeSet::new();
        let dns_endpoints = ready
            .iter()
            .filter(|e| seen.insert(e.ip))
            .map(|e| mast_dns::Endpoint {
                ip: e.ip,
                hostname: e.hostname.clone(),
            })
            .collect();
        let cluster_ip = spec
            .cluster_ip
            .as_deref()
            .filter(|ip| *ip != "None")
            .and_then(|ip| ip.parse().ok());
        zone.services.insert(
            (ns.clone(), name.clone()),
            mast_dns::Service {
                cluster_ip,
                external_name: if ty == "ExternalName" {
                    spec.external_name.clone()
                } else {
                    None
                },
                ports: ports
                    .iter()
                    .filter_map(|p| {
                        Some((
                            p.name.clone().unwrap_or_default(),
                            p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase(),
                            u16::try_from(p.port).ok()?,
                        ))
                    })
                    .collect(),
                endpoints: dns_endpoints,
            },
        );
        if ty == "ExternalName" {
            continue;
        }
        let mut addresses: Vec<Ipv4Addr> = spec
            .cluster_ips
            .iter()
            .flatten()
            .chain(spec.cluster_ip.iter())
            .filter_map(|ip| ip.parse().ok())
            .collect();
        let ingress: Vec<Ipv4Addr> = svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|l| l.ingress.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|i| i.ip.as_deref()?.parse().ok())
            .collect();
        if ty == "LoadBalancer" {
            lb.extend(ingress.iter().copied());
            addresses.extend(ingress);
        }
        addresses.extend(
            spec.external_ips
                .iter()
                .flatten()
                .filter_map(|ip| ip.parse::<Ipv4Addr>().ok()),
        );
        addresses.sort();
        addresses.dedup();
        if addresses.is_empty() {
            continue; // headless: DNS only
        }
        let affinity_timeout = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
            spec.session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .and_then(|t| u32::try_from(t).ok())
                .unwrap_or(10800)
        });
        let ports = ports
            .iter()
            .filter_map(|p| {
                let pname = p.name.clone().unwrap_or_default();
                let mut endpoints: Vec<(Ipv4Addr, u16)> =
                    if (ns.as_str(), name.as_str()) == DNS_SERVICE {
                        vec![(dns, 53)]
                    } else {
                        ready
                            .iter()
                            .filter_map(|e| e.ports.get(&pname).map(|port| (e.ip, *port)))
                            .collect()
                    };
                endpoints.sort();
                endpoints.dedup();
                Some(ServicePort {
                    name: pname,
                    protocol: p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase(),
                    port: u16::try_from(p.port).ok()?,
                    node_port: if ty == "NodePort" || ty == "LoadBalancer" {
                        p.node_port.and_then(|n| u16::try_from(n).ok())
                    } else {
                        None
                    },
                    endpoints,
                })
            })
            .collect();
        proxied.push(ProxiedService {
            namespace: ns,
            name,
            addresses,
            affinity_timeout,
            ports,
        });
    }
    proxied.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    (proxied, zone, lb)
}

/// Run the proxy and DNS for `bridge` (whose address is `gateway`) until
/// `shutdown`; `serving` gets the endpoints in force after every sync.
pub async fn run(
    client: Client,
    cfg: AgentConfig,
    bridge: String,
    gateway: Ipv4Addr,
    serving: watch::Sender<Arc<HashSet<Ipv4Addr>>>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    mast_net::prepare_services(&bridge, cfg.service_cidr).await?;
    ensure_dns_service(&client, cluster_dns(&cfg)).await;
    let (zone_tx, zone_rx) = watch::channel(Arc::new(mast_dns::Zone::default()));
    let dns = mast_dns::serve(
        std::net::SocketAddr::from((gateway, 53)),
        &cfg.cluster_domain,
        zone_rx,
        mast_dns::host_nameservers(gateway),
    )
    .await?;
    tracing::info!(address = %gateway, domain = %cfg.cluster_domain, "cluster DNS is serving");
    let mut proxy = Proxy::new(ProxyConfig {
        table: ProxyConfig::table_for(&bridge),
        bridge: bridge.clone(),
        cluster_cidr: cfg.cluster_cidr,
        service_cidr: cfg.service_cidr,
        node_port_cidrs: cfg.node_port_cidrs.clone(),
    });
    let all = watcher::Config::default;
    let (svc_store, c1) = mast_watch::cache(Api::<Service>::all(client.clone()), all(), ());
    let (eps_store, c2) = mast_watch::cache(Api::<EndpointSlice>::all(client), all(), ());
    let mut events = futures::stream::select(c1, c2);
    let mut lb_now: Option<BTreeSet<Ipv4Addr>> = None;
    let mut failed = false;
    let (mut svc_ready, mut eps_ready) = (false, false);
    // A burst of changes (settled for 20 ms) is one sync; a failed sync is
    // retried after 5 s even when nothing changes.
    while mast_watch::next_burst(
        &mut events,
        &mut shutdown,
        Duration::from_millis(20),
        failed.then_some(Duration::from_secs(5)),
    )
    .await
    {
        // Until both caches are listed, a sync would drop live rules.
        if !svc_ready {
            svc_ready = svc_store.wait_until_ready().now_or_never().is_some();
        }
        if !eps_ready {
            eps_ready = eps_store.wait_until_ready().now_or_never().is_some();
        }
        if !(svc_ready && eps_ready) {
            continue;
        }
        let (services, mut zone, lb) = build(&svc_store, &eps_store, gateway);
        zone.reverse = vec![cfg.service_cidr, cfg.cluster_cidr];
        zone_tx.send_if_modified(|z| {
            let changed = **z != zone;
            if changed {
                *z = Arc::new(zone);
            }
            changed
        });
        failed = false;
        if lb_now.as_ref() != Some(&lb) {
            let want: Vec<Ipv4Addr> = lb.iter().copied().collect();
            match mast_net::set_extra_addresses(&bridge, &want).await {
                Ok(()) => lb_now = Some(lb),
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "could not set the load-balancer addresses");
                    failed = true;
                }
            }
        }
        match proxy.sync(&services).await {
            Ok(()) => {
                let ips: HashSet<Ipv4Addr> = services
                    .iter()
                    .flat_map(|s| s.ports.iter())
                    .flat_map(|p| p.endpoints.iter().map(|(ip, _)| *ip))
                    .collect();
                if tracing::enabled!(tracing::Level::DEBUG) {
                    let per_service: Vec<String> = services
                        .iter()
                        .map(|s| {
                            let n = s.ports.first().map_or(0, |p| p.endpoints.len());
                            format!("{}/{}={n}", s.namespace, s.name)
                        })
                        .collect();
                    tracing::debug!(%bridge, endpoints = %per_service.join(" "), "the Service rules are in force");
                }
                serving.send_if_modified(|s| {
                    let changed = **s != ips;
                    if changed {
                        *s = Arc::new(ips);
                    }
                    changed
                });
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "could not sync the service rules; retrying");
                failed = true;
            }
        }
    }
    dns.abort();
    Ok(())
}
