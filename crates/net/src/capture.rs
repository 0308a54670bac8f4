//! Traffic capture for a mesh sidecar, installed in the pod's own network
//! namespace as istio-cni installs it: inbound TCP is redirected to the
//! proxy's port 15006 and outbound TCP to 15001, except what the proxy
//! itself (uid 1337) sends, loopback traffic, and the proxy's own ports.
//!
//! It is nftables `redirect`, the same NAT that iptables' `REDIRECT` target
//! does (Debian's iptables is nftables underneath): the proxy finds the
//! original destination with `SO_ORIGINAL_DST` either way. One table,
//! `ip mast_capture`, in one atomic transaction.

use anyhow::Result;

/// What to capture, from the pod's `traffic.sidecar.istio.io/*` annotations.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Capture {
    /// The proxy's uid: its own connections are never redirected.
    pub proxy_uid: u32,
    /// Inbound ports that skip the proxy (`excludeInboundPorts`).
    pub exclude_inbound_ports: Vec<u16>,
    /// Outbound ports that skip the proxy (`excludeOutboundPorts`).
    pub exclude_outbound_ports: Vec<u16>,
    /// Outbound destinations that skip the proxy (`excludeOutboundIPRanges`).
    pub exclude_outbound_cidrs: Vec<String>,
}

/// The proxy's own inbound ports, never redirected: 15008 (tunnel), 15020
/// (agent), 15021 (health), 15090 (Prometheus).
const PROXY_PORTS: [u16; 4] = [15008, 15020, 15021, 15090];

fn set(ports: impl IntoIterator<Item = u16>) -> String {
    let v: Vec<String> = ports.into_iter().map(|p| p.to_string()).collect();
    format!("{{ {} }}", v.join(", "))
}

impl Capture {
    /// The nftables script.
    pub fn render(&self) -> String {
        let mut s = String::from("table ip mast_capture {}\ndelete table ip mast_capture\n");
        s.push_str("table ip mast_capture {\n  chain inbound {\n");
        s.push_str("    type nat hook prerouting priority dstnat; policy accept;\n");
        s.push_str("    meta l4proto != tcp return\n    iifname \"lo\" return\n");
        let inbound = PROXY_PORTS
            .iter()
            .copied()
            .chain(self.exclude_inbound_ports.iter().copied());
        s.push_str(&format!("    tcp dport {} return\n", set(inbound)));
        s.push_str("    meta l4proto tcp redirect to :15006\n  }\n  chain outbound {\n");
        s.push_str("    type nat hook output priority -100; policy accept;\n");
        s.push_str("    meta l4proto != tcp return\n");
        s.push_str(&format!("    meta skuid {} return\n", self.proxy_uid));
        s.push_str("    ip daddr 127.0.0.0/8 return\n");
        // The proxy agent's probes of the application (from 127.0.0.6,
        // as Istio's agent sends them) reach it directly.
        s.push_str("    ip saddr 127.0.0.6 return\n");
        if !self.exclude_outbound_ports.is_empty() {
            s.push_str(&format!(
                "    tcp dport {} return\n",
                set(self.exclude_outbound_ports.iter().copied())
            ));
        }
        if !self.exclude_outbound_cidrs.is_empty() {
            s.push_str(&format!(
                "    ip daddr {{ {} }} return\n",
                self.exclude_outbound_cidrs.join(", ")
            ));
        }
        s.push_str("    meta l4proto tcp redirect to :15001\n  }\n}\n");
        s
    }

    /// Install it in the network namespace of process `pid` (the pod's
    /// sandbox).
    pub async fn install(&self, pid: i32) -> Result<()> {
        crate::proxy::nft_in(Some(pid), &self.render()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proxy_and_its_ports_are_never_captured() {
        let c = Capture {
            proxy_uid: 1337,
            exclude_inbound_ports: vec![8081],
            exclude_outbound_ports: vec![5432],
            exclude_outbound_cidrs: vec!["10.9.0.0/16".into()],
        };
        let s = c.render();
        assert!(s.contains("meta skuid 1337 return"), "{s}");
        assert!(
            s.contains("tcp dport { 15008, 15020, 15021, 15090, 8081 } return"),
            "{s}"
        );
        assert!(s.contains("tcp dport { 5432 } return"), "{s}");
        assert!(s.contains("ip daddr { 10.9.0.0/16 } return"), "{s}");
        assert!(s.contains("redirect to :15006") && s.contains("redirect to :15001"));
    }
}
