//! The service proxy's data path: Services as nftables rules, the way
//! kube-proxy's nftables mode does it, chosen over an in-process L4 proxy
//! because the kernel forwards without copying each byte through a process
//! (`bench/service-path` shows the ClusterIP path at the pod IP's
//! throughput).
//!
//! One table per node bridge (`ip mast_<bridge>`) holds:
//! - `services`: a verdict map from (VIP, protocol, port) to the Service
//!   port's chain, for ClusterIPs and load-balancer addresses, and from
//!   (protocol, NodePort) for the node's own addresses;
//! - per Service port, a chain that keeps ClientIP affinity (a timed set per
//!   endpoint) and otherwise picks an endpoint with `numgen random`;
//! - per endpoint, a chain that DNATs to it, marking hairpin traffic (a pod
//!   reaching itself through its Service) for masquerade;
//! - masquerade for traffic from outside the pod network (the node itself),
//!   so that replies come back through the node;
//! - filters: a Service without endpoints, or an address in the Service
//!   range that is no Service, refuses connections (TCP reset); pods'
//!   traffic is never forwarded off the bridge, so nothing leaves the
//!   machine.
//!
//! Rules are replaced in one `nft -f` transaction, which is atomic; sets are
//! kept across syncs so that affinity survives changes. The `nft` program is
//! driven as kube-proxy drives it: its ruleset language is the stable
//! interface, where the netlink encoding of expressions is not.

use anyhow::{bail, Context, Result};
use std::collections::BTreeSet;
use std::fmt::Write;
use std::net::Ipv4Addr;

/// A CIDR block.
pub type Cidr = (Ipv4Addr, u8);

fn cidr(c: &Cidr) -> String {
    format!("{}/{}", c.0, c.1)
}

/// How the node's rules are laid out.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// The nftables table (family `ip`).
    pub table: String,
    /// The pods' bridge.
    pub bridge: String,
    /// All pod IPs of the cluster; other sources are masqueraded.
    pub cluster_cidr: Cidr,
    /// The Service ClusterIP range.
    pub service_cidr: Cidr,
    /// NodePorts answer on the node's addresses within these blocks; when
    /// empty, on every address of the node but loopback.
    pub node_port_cidrs: Vec<Cidr>,
}

impl ProxyConfig {
    /// The table name for a node bridge.
    pub fn table_for(bridge: &str) -> String {
        format!(
            "mast_{}",
            bridge.replace(|c: char| !c.is_ascii_alphanumeric(), "_")
        )
    }
}

/// One port of one Service, with the endpoints that serve it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    pub name: String,
    /// `tcp`, `udp` or `sctp`.
    pub protocol: String,
    pub port: u16,
    pub node_port: Option<u16>,
    /// Ready endpoints: (IP, target port).
    pub endpoints: Vec<(Ipv4Addr, u16)>,
}

/// A Service as the proxy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxiedService {
    pub namespace: String,
    pub name: String,
    /// ClusterIPs, load-balancer ingress IPs and `externalIPs`: every
    /// address that serves the Service's ports.
    pub addresses: Vec<Ipv4Addr>,
    /// ClientIP affinity timeout, in seconds.
    pub affinity_timeout: Option<u32>,
    pub ports: Vec<ServicePort>,
}

const MASQ_MARK: u32 = 0x4000;

/// Renders and applies the rules; remembers what the last sync created, so
/// that a sync deletes what is gone.
#[derive(Debug)]
pub struct Proxy {
    cfg: ProxyConfig,
    /// Chains and sets the last sync left: (`chain` or `set`, name).
    objects: BTreeSet<(&'static str, String)>,
    last: Option<String>,
}

impl Proxy {
    pub fn new(cfg: ProxyConfig) -> Self {
        Self {
            cfg,
            objects: BTreeSet::new(),
            last: None,
        }
    }

    /// The transaction that makes the table hold `services`, and the chains
    /// and sets it leaves.
    pub fn render(
        &self,
        services: &[ProxiedService],
    ) -> (String, BTreeSet<(&'static str, String)>) {
        let c = &self.cfg;
        let t = format!("ip {}", c.table);
        let br = &c.bridge;
        let mut objects = BTreeSet::new();
        let mut chains = String::new();
        let mut rules = String::new();
        let mut vips = vec![];
        let mut node_ports = vec![];
        let mut refused_vips = vec![];
        let mut refused_node_ports = vec![];
        for s in services {
            for p in &s.ports {
                let id = format!("{}/{}/{}/{}", s.namespace, s.name, p.protocol, p.port);
                let svc_chain = format!("svc-{id}");
                let targets: Vec<String> = s
                    .addresses
                    .iter()
                    .map(|a| format!("{a} . {} . {}", p.protocol, p.port))
                    .collect();
                if p.endpoints.is_empty() {
                    refused_vips.extend(targets);
                    if let Some(np) = p.node_port {
                        refused_node_ports.push(format!("{} . {np}", p.protocol));
                    }
                    continue;
                }
                vips.extend(
                    targets
                        .into_iter()
                        .map(|k| format!("{k} : goto {svc_chain}")),
                );
                if let Some(np) = p.node_port {
                    node_ports.push(format!("{} . {np} : goto {svc_chain}", p.protocol));
                }
                objects.insert(("chain", svc_chain.clone()));
                let mut picks = vec![];
                for (i, (ip, port)) in p.endpoints.iter().enumerate() {
                    let ep_chain = format!("ep-{id}__{ip}/{port}");
                    objects.insert(("chain", ep_chain.clone()));
                    if let Some(timeout) = s.affinity_timeout {
                        let set = format!("aff-{id}__{ip}/{port}/{timeout}");
                        let _ = writeln!(chains, "add set {t} {set} {{ type ipv4_addr; flags dynamic,timeout; timeout {timeout}s; }}");
                        objects.insert(("set", set.clone()));
                        let _ = writeln!(
                            rules,
                            "add rule {t} {svc_chain} ip saddr @{set} goto {ep_chain}"
                        );
                        let _ = writeln!(
                            rules,
                            "add rule {t} {ep_chain} update @{set} {{ ip saddr }}"
                        );
                    }
                    let _ = writeln!(rules, "add rule {t} {ep_chain} ip saddr {ip} meta mark set meta mark | {MASQ_MARK:#x}");
                    let _ = writeln!(
                        rules,
                        "add rule {t} {ep_chain} meta l4proto {} dnat to {ip}:{port}",
                        p.protocol
                    );
                    picks.push(format!("{i} : goto {ep_chain}"));
                }
                let _ = writeln!(
                    rules,
                    "add rule {t} {svc_chain} numgen random mod {} vmap {{ {} }}",
                    p.endpoints.len(),
                    picks.join(", ")
                );
            }
        }
        let local = if c.node_port_cidrs.is_empty() {
            "fib daddr type local ip daddr != 127.0.0.0/8".to_string()
        } else {
            let list: Vec<String> = c.node_port_cidrs.iter().map(cidr).collect();
            format!("fib daddr type local ip daddr {{ {} }}", list.join(", "))
        };
        let mut out = String::new();
        let _ = writeln!(out, "add table {t}");
        let _ = writeln!(out, "flush table {t}");
        for (name, hook) in [
            ("nat-prerouting", "type nat hook prerouting priority dstnat"),
            ("nat-output", "type nat hook output priority -100"),
            (
                "nat-postrouting",
                "type nat hook postrouting priority srcnat",
            ),
            ("filter-forward", "type filter hook forward priority filter"),
            ("filter-input", "type filter hook input priority filter"),
            ("filter-output", "type filter hook output priority filter"),
        ] {
            let _ = writeln!(out, "add chain {t} {name} {{ {hook}; policy accept; }}");
        }
        for name in ["services", "refuse", "refused"] {
            let _ = writeln!(out, "add chain {t} {name}");
        }
        for (_, chain) in objects.iter().filter(|(kind, _)| *kind == "chain") {
            let _ = writeln!(out, "add chain {t} {chain}");
        }
        out.push_str(&chains);
        // Where traffic enters the service path.
        let _ = writeln!(out, "add rule {t} nat-prerouting jump services");
        let _ = writeln!(out, "add rule {t} nat-output jump services");
        if !vips.is_empty() {
            let _ = writeln!(
                out,
                "add rule {t} services ip daddr . meta l4proto . th dport vmap {{ {} }}",
                vips.join(", ")
            );
        }
        if !node_ports.is_empty() {
            let _ = writeln!(
                out,
                "add rule {t} services {local} meta l4proto . th dport vmap {{ {} }}",
                node_ports.join(", ")
            );
        }
        // Replies must come back through the node: masquerade what does not
        // come from a pod, and a pod's own hairpin.
        let _ = writeln!(out, "add rule {t} nat-postrouting oifname \"{br}\" meta mark & {MASQ_MARK:#x} == {MASQ_MARK:#x} meta mark set meta mark & {:#x} masquerade", !MASQ_MARK);
        let _ = writeln!(out, "add rule {t} nat-postrouting oifname \"{br}\" ct status dnat ip saddr != {} masquerade", cidr(&c.cluster_cidr));
        // Refusals: Services without endpoints, and Service-range addresses
        // that no rule translated.
        if !refused_vips.is_empty() {
            let _ = writeln!(
                out,
                "add rule {t} refuse ip daddr . meta l4proto . th dport {{ {} }} goto refused",
                refused_vips.join(", ")
            );
        }
        if !refused_node_ports.is_empty() {
            let _ = writeln!(
                out,
                "add rule {t} refuse {local} meta l4proto . th dport {{ {} }} goto refused",
                refused_node_ports.join(", ")
            );
        }
        let _ = writeln!(
            out,
            "add rule {t} refuse ip daddr {} goto refused",
            cidr(&c.service_cidr)
        );
        let _ = writeln!(
            out,
            "add rule {t} refused meta l4proto tcp reject with tcp reset"
        );
        let _ = writeln!(out, "add rule {t} refused reject");
        for chain in ["filter-input", "filter-output", "filter-forward"] {
            let _ = writeln!(out, "add rule {t} {chain} ct state new jump refuse");
        }
        // No way out: what a pod sends is forwarded only back onto the
        // bridge.
        let _ = writeln!(
            out,
            "add rule {t} filter-forward iifname \"{br}\" oifname != \"{br}\" drop"
        );
        out.push_str(&rules);
        // What the last sync made and this one does not: gone (after the
        // flush above, nothing refers to it any more).
        for (kind, name) in self.objects.difference(&objects) {
            let _ = writeln!(out, "delete {kind} {t} {name}");
        }
        (out, objects)
    }

    /// Make the kernel's rules hold `services`. A sync that changes nothing
    /// runs nothing.
    pub async fn sync(&mut self, services: &[ProxiedService]) -> Result<()> {
        if self.last.is_none() {
            // A fresh start: whatever an earlier agent left goes first.
            let _ = nft(&format!("delete table ip {}\n", self.cfg.table)).await;
        }
        let (text, objects) = self.render(services);
        if self.last.as_deref() == Some(text.as_str()) {
            return Ok(());
        }
        nft(&text).await?;
        self.objects = objects;
        self.last = Some(text);
        Ok(())
    }
}

/// Run one `nft -f -` transaction.
pub async fn nft(script: &str) -> Result<()> {
    nft_in(None, script).await
}

/// Run one `nft -f -` transaction, in the network namespace of process
/// `pid` when given (through `nsenter`).
pub async fn nft_in(pid: Option<i32>, script: &str) -> Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut cmd = match pid {
        Some(pid) => {
            let mut c = tokio::process::Command::new("nsenter");
            c.arg(format!("--net=/proc/{pid}/ns/net")).arg("nft");
            c
        }
        None => tokio::process::Command::new("nft"),
    };
    let mut child = cmd
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("running nft (install the nftables package)")?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes()).await?;
    }
    let out = child.wait_with_output().await?;
    if !out.status.success() {
        bail!("nft: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Remove a node's table, if there is one.
pub async fn delete_table(table: &str) -> Result<()> {
    match nft(&format!("delete table ip {table}\n")).await {
        Err(e) if e.to_string().contains("No such file") => Ok(()),
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ProxyConfig {
        ProxyConfig {
            table: ProxyConfig::table_for("mast0"),
            bridge: "mast0".into(),
            cluster_cidr: ("10.42.0.0".parse().unwrap(), 16),
            service_cidr: ("10.43.0.0".parse().unwrap(), 16),
            node_port_cidrs: vec![],
        }
    }

    fn web(endpoints: Vec<(Ipv4Addr, u16)>, affinity: Option<u32>) -> ProxiedService {
        ProxiedService {
            namespace: "default".into(),
            name: "web".into(),
            addresses: vec!["10.43.0.7".parse().unwrap()],
            affinity_timeout: affinity,
            ports: vec![ServicePort {
                name: "http".into(),
                protocol: "tcp".into(),
                port: 80,
                node_port: Some(30080),
                endpoints,
            }],
        }
    }

    #[test]
    fn services_become_a_vmap_and_endpoint_chains() {
        let p = Proxy::new(cfg());
        let eps = vec![
            ("10.42.0.5".parse().unwrap(), 8080),
            ("10.42.0.6".parse().unwrap(), 8080),
        ];
        let (text, objects) = p.render(&[web(eps, None)]);
        assert!(text.contains("add rule ip mast_mast0 services ip daddr . meta l4proto . th dport vmap { 10.43.0.7 . tcp . 80 : goto svc-default/web/tcp/80 }"), "{text}");
        assert!(text.contains("fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap { tcp . 30080 : goto svc-default/web/tcp/80 }"), "{text}");
        assert!(text.contains("numgen random mod 2 vmap { 0 : goto ep-default/web/tcp/80__10.42.0.5/8080, 1 : goto ep-default/web/tcp/80__10.42.0.6/8080 }"), "{text}");
        assert!(text.contains("add rule ip mast_mast0 ep-default/web/tcp/80__10.42.0.6/8080 meta l4proto tcp dnat to 10.42.0.6:8080"), "{text}");
        assert!(!text.contains("add set"), "no affinity, no sets: {text}");
        assert_eq!(objects.len(), 3);
        let (with_affinity, _) =
            p.render(&[web(vec![("10.42.0.5".parse().unwrap(), 8080)], Some(60))]);
        // The kernel's own parser accepts both (nft's check mode changes
        // nothing); it needs root, which the CI has.
        if nix::unistd::Uid::effective().is_root() {
            for script in [&text, &with_affinity] {
                let out = std::process::Command::new("sh")
                    .args(["-c", "printf '%s' \"$0\" | nft -c -f -", script])
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "{}\n{script}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }

    #[test]
    fn no_endpoints_refuse_and_gone_chains_are_deleted() {
        let mut p = Proxy::new(cfg());
        let (_, objects) = p.render(&[web(vec![("10.42.0.5".parse().unwrap(), 8080)], Some(60))]);
        assert!(objects.contains(&(
            "set",
            "aff-default/web/tcp/80__10.42.0.5/8080/60".to_string()
        )));
        p.objects = objects;
        let (text, objects) = p.render(&[web(vec![], None)]);
        assert!(objects.is_empty());
        assert!(
            text.contains(
                "refuse ip daddr . meta l4proto . th dport { 10.43.0.7 . tcp . 80 } goto refused"
            ),
            "{text}"
        );
        assert!(text.contains("refuse fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport { tcp . 30080 } goto refused"), "{text}");
        assert!(
            text.contains("delete chain ip mast_mast0 ep-default/web/tcp/80__10.42.0.5/8080\n"),
            "{text}"
        );
        assert!(
            text.contains("delete set ip mast_mast0 aff-default/web/tcp/80__10.42.0.5/8080/60\n"),
            "{text}"
        );
    }
}
