//! Node IPAM: gives every Node a `spec.podCIDR` (and `podCIDRs`) carved
//! from the cluster CIDR, as kube-controller-manager's range allocator does
//! (`--cluster-cidr`, `--node-cidr-mask-size`). The node's agent takes its
//! pods' IPs from that range.

use crate::Error;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;
use std::net::Ipv4Addr;
use std::sync::Arc;

/// An IPv4 range, `10.42.0.0/16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub base: Ipv4Addr,
    pub bits: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not an IPv4 CIDR like 10.42.0.0/16");
        let (ip, bits) = s.split_once('/').ok_or_else(bad)?;
        let base: Ipv4Addr = ip.parse().map_err(|_| bad())?;
        let bits: u8 = bits.parse().map_err(|_| bad())?;
        if bits > 32 {
            return Err(bad());
        }
        let mask = if bits == 0 {
            0
        } else {
            u32::MAX << (32 - bits)
        };
        Ok(Cidr {
            base: Ipv4Addr::from(u32::from(base) & mask),
            bits,
        })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.base, self.bits)
    }
}

/// The `index`-th subnet of size `/mask` inside `cluster`, if there is one.
pub fn subnet(cluster: Cidr, mask: u8, index: u32) -> Option<Cidr> {
    if mask < cluster.bits || mask > 32 {
        return None;
    }
    let count = 1u64 << (mask - cluster.bits);
    if u64::from(index) >= count {
        return None;
    }
    let size = 1u64 << (32 - mask);
    let base = u64::from(u32::from(cluster.base)) + u64::from(index) * size;
    Some(Cidr {
        base: Ipv4Addr::from(base as u32),
        bits: mask,
    })
}

/// How node ranges are carved.
#[derive(Debug, Clone, Copy)]
pub struct Ranges {
    pub cluster: Cidr,
    pub node_mask: u8,
}

struct IpamCtx {
    client: Client,
    ranges: Ranges,
    /// Allocation reads all nodes and writes one: one at a time.
    lock: tokio::sync::Mutex<()>,
}

pub async fn run(
    client: Client,
    shutdown: tokio::sync::watch::Receiver<bool>,
    ranges: Ranges,
) -> anyhow::Result<()> {
    let ctx = Arc::new(IpamCtx {
        client: client.clone(),
        ranges,
        lock: Default::default(),
    });
    let controller = Controller::new(Api::<Node>::all(client), watcher::Config::default());
    crate::drive(controller, shutdown, "nodeipam", reconcile, ctx).await;
    Ok(())
}

async fn reconcile(node: Arc<Node>, ctx: Arc<IpamCtx>) -> Result<Action, Error> {
    if node
        .spec
        .as_ref()
        .and_then(|s| s.pod_cidr.as_ref())
        .is_some()
    {
        return Ok(Action::await_change());
    }
    let _one = ctx.lock.lock().await;
    let api: Api<Node> = Api::all(ctx.client.clone());
    let nodes = api.list(&ListParams::default()).await?.items;
    let used: std::collections::HashSet<String> = nodes
        .iter()
        .filter_map(|n| n.spec.as_ref()?.pod_cidr.clone())
        .collect();
    let Ranges { cluster, node_mask } = ctx.ranges;
    let free = (0..)
        .map_while(|i| subnet(cluster, node_mask, i))
        .find(|c| !used.contains(&c.to_string()));
    let Some(cidr) = free else {
        return Err(Error::Malformed {
            kind: "Node",
            namespace: String::new(),
            name: node.name_any(),
            reason: format!("the cluster CIDR {cluster} has no /{node_mask} left for it"),
        });
    };
    let patch = json!({"spec": {"podCIDR": cidr.to_string(), "podCIDRs": [cidr.to_string()]}});
    api.patch(
        &node.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    tracing::info!(node = %node.name_any(), %cidr, "allocated the node's pod CIDR");
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets() {
        let c: Cidr = "10.42.7.9/16".parse().unwrap();
        assert_eq!(c.to_string(), "10.42.0.0/16");
        assert_eq!(subnet(c, 24, 0).unwrap().to_string(), "10.42.0.0/24");
        assert_eq!(subnet(c, 24, 3).unwrap().to_string(), "10.42.3.0/24");
        assert_eq!(subnet(c, 24, 255).unwrap().to_string(), "10.42.255.0/24");
        assert!(subnet(c, 24, 256).is_none());
        assert!(subnet(c, 8, 0).is_none());
        assert!("10.42.0.0".parse::<Cidr>().is_err());
    }
}
