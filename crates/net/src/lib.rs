//! mast's pod network: each pod's network namespace is joined to a bridge
//! on the node by a veth pair, as the bridge CNI plugin does. The pod's end
//! becomes `eth0` with the pod's IP; the bridge holds the gateway address
//! (the first of the node's podCIDR), so the node and the pods reach each
//! other directly. Pods get routes only to what the cluster serves, never a
//! default route: nothing from a pod leaves the machine.
//!
//! Netlink goes through `rtnetlink`. Configuring inside a pod's namespace
//! runs on a short-lived thread that has joined it with `setns` (a network
//! namespace is per thread), with its own netlink connection.

pub mod capture;
pub mod proxy;

use anyhow::{anyhow, Context, Result};
use futures::TryStreamExt;
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth, RouteMessageBuilder};
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;

/// How a pod is attached.
#[derive(Debug, Clone)]
pub struct Attachment {
    pub bridge: String,
    /// The host end of the veth pair (at most 15 characters).
    pub host_if: String,
    pub ip: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
    /// Extra destinations routed through the gateway (the Service CIDR).
    pub routes: Vec<(Ipv4Addr, u8)>,
}

fn connect() -> Result<Handle> {
    let (conn, handle, _) = rtnetlink::new_connection().context("opening a netlink socket")?;
    tokio::spawn(conn);
    Ok(handle)
}

async fn index_of(h: &Handle, name: &str) -> Result<Option<u32>> {
    let mut links = h.link().get().match_name(name.to_owned()).execute();
    match links.try_next().await {
        Ok(Some(l)) => Ok(Some(l.header.index)),
        Ok(None) => Ok(None),
        // The kernel answers "No such device" for a name it does not know.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -19 => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn exists(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -17)
}

/// The MAC address an interface with `ip` gets: `0a:58:` and the address's
/// four bytes (locally administered, unicast), as OVN-Kubernetes does.
///
/// Pods' IPs are reused, and a random MAC per pod would leave the node's
/// neighbour entry for a reused IP pointing at the previous pod's MAC until
/// it expires: tens of seconds in which the new pod cannot be reached (its
/// readiness probes fail, and Service traffic sent to it is lost). With the
/// MAC derived from the IP, a stale entry is still right. The bridge gets
/// one too, because a bridge without an address of its own takes the
/// lowest of its ports' and changes it when that port leaves, which would
/// make every pod's entry for its gateway stale.
pub fn mac_for(ip: Ipv4Addr) -> Vec<u8> {
    let [a, b, c, d] = ip.octets();
    vec![0x0a, 0x58, a, b, c, d]
}

/// Create the node's bridge with the gateway address, if it is not there.
pub async fn ensure_bridge(bridge: &str, gateway: Ipv4Addr, prefix: u8) -> Result<()> {
    let h = connect()?;
    let idx = match index_of(&h, bridge).await? {
        Some(i) => i,
        None => {
            if let Err(e) = h
                .link()
                .add(LinkBridge::new(bridge).build())
                .execute()
                .await
            {
                if !exists(&e) {
                    return Err(anyhow!("creating the bridge {bridge}: {e}"));
                }
            }
            index_of(&h, bridge)
                .await?
                .ok_or_else(|| anyhow!("the bridge {bridge} vanished"))?
        }
    };
    if let Err(e) = h
        .address()
        .add(idx, IpAddr::V4(gateway), prefix)
        .execute()
        .await
    {
        if !exists(&e) {
            return Err(anyhow!("adding {gateway}/{prefix} to {bridge}: {e}"));
        }
    }
    h.link()
        .set(
            LinkUnspec::new_with_index(idx)
                .address(mac_for(gateway))
                .up()
                .build(),
        )
        .execute()
        .await
        .with_context(|| format!("bringing {bridge} up"))?;
    Ok(())
}

/// Ready the node for Services on `bridge`: bridged traffic passes
/// netfilter (so replies between pods on one bridge are un-NATed), the
/// bridge forwards (pod → Service → pod comes back out of it), and the
/// Service range is routed onto the bridge, so that an address no rule
/// translates goes nowhere off the machine.
pub async fn prepare_services(bridge: &str, service_cidr: (Ipv4Addr, u8)) -> Result<()> {
    let call = "/proc/sys/net/bridge/bridge-nf-call-iptables";
    if !std::path::Path::new(call).exists() {
        let _ = std::process::Command::new("modprobe")
            .arg("br_netfilter")
            .status();
    }
    std::fs::write(call, "1").with_context(|| {
        format!("enabling {call} (load the br_netfilter kernel module: modprobe br_netfilter)")
    })?;
    let fwd = format!("/proc/sys/net/ipv4/conf/{bridge}/forwarding");
    std::fs::write(&fwd, "1").with_context(|| format!("enabling {fwd}"))?;
    let h = connect()?;
    let idx = index_of(&h, bridge)
        .await?
        .ok_or_else(|| anyhow!("the bridge {bridge} does not exist"))?;
    let route = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(service_cidr.0, service_cidr.1)
        .output_interface(idx)
        .build();
    if let Err(e) = h.route().add(route).execute().await {
        if !exists(&e) {
            return Err(anyhow!(
                "routing the Service range {}/{} to {bridge}: {e}",
                service_cidr.0,
                service_cidr.1
            ));
        }
    }
    Ok(())
}

/// Make `bridge` hold exactly these extra host addresses (as /32s, next to
/// its gateway address): the load-balancer addresses this node serves.
pub async fn set_extra_addresses(bridge: &str, want: &[Ipv4Addr]) -> Result<()> {
    use rtnetlink::packet_route::address::AddressAttribute;
    let h = connect()?;
    let idx = index_of(&h, bridge)
        .await?
        .ok_or_else(|| anyhow!("the bridge {bridge} does not exist"))?;
    let mut have = vec![];
    let mut list = h.address().get().set_link_index_filter(idx).execute();
    while let Some(msg) = list.try_next().await? {
        if msg.header.prefix_len != 32 {
            continue;
        }
        for a in &msg.attributes {
            if let AddressAttribute::Address(IpAddr::V4(ip)) = a {
                if !want.contains(ip) {
                    h.address()
                        .del(msg.clone())
                        .execute()
                        .await
                        .with_context(|| format!("removing {ip} from {bridge}"))?;
                }
                have.push(*ip);
            }
        }
    }
    for ip in want.iter().filter(|ip| !have.contains(ip)) {
        if let Err(e) = h.address().add(idx, IpAddr::V4(*ip), 32).execute().await {
            if !exists(&e) {
                return Err(anyhow!("adding {ip}/32 to {bridge}: {e}"));
            }
        }
    }
    Ok(())
}

/// Remove a link (a bridge, or a leftover veth), if it exists.
pub async fn delete_link(name: &str) -> Result<()> {
    let h = connect()?;
    if let Some(idx) = index_of(&h, name).await? {
        h.link()
            .del(idx)
            .execute()
            .await
            .with_context(|| format!("deleting {name}"))?;
    }
    Ok(())
}

/// Join the network namespace of process `pid` (a pod's pause process) to
/// the bridge: a veth pair whose pod end becomes `eth0` with the pod's IP.
pub async fn attach(pid: i32, a: &Attachment) -> Result<()> {
    let h = connect()?;
    let bridge = index_of(&h, &a.bridge)
        .await?
        .ok_or_else(|| anyhow!("the bridge {} does not exist", a.bridge))?;
    // A leftover from an earlier attempt would make the names collide.
    if let Some(old) = index_of(&h, &a.host_if).await? {
        let _ = h.link().del(old).execute().await;
    }
    let peer = format!("{}p", &a.host_if[..a.host_if.len().min(14)]);
    h.link()
        .add(LinkVeth::new(&a.host_if, &peer).build())
        .execute()
        .await
        .with_context(|| format!("creating the veth pair {}", a.host_if))?;
    let host = index_of(&h, &a.host_if)
        .await?
        .ok_or_else(|| anyhow!("{} vanished", a.host_if))?;
    let peer_idx = index_of(&h, &peer)
        .await?
        .ok_or_else(|| anyhow!("{peer} vanished"))?;
    let netns = std::fs::File::open(format!("/proc/{pid}/ns/net"))
        .with_context(|| format!("the pod sandbox (process {pid}) is gone"))?;
    h.link()
        .set(
            LinkUnspec::new_with_index(peer_idx)
                .address(mac_for(a.ip))
                .setns_by_fd(netns.as_raw_fd())
                .name("eth0".to_owned())
                .build(),
        )
        .execute()
        .await
        .context("moving eth0 into the pod's namespace")?;
    h.link()
        .set(
            LinkUnspec::new_with_index(host)
                .controller(bridge)
                .up()
                .build(),
        )
        .execute()
        .await
        .with_context(|| format!("attaching {} to {}", a.host_if, a.bridge))?;
    // Hairpin: a pod that reaches itself through its Service gets its own
    // packets back through this port.
    let _ = std::fs::write(
        format!("/sys/class/net/{}/brport/hairpin_mode", a.host_if),
        "1",
    );
    let inside = a.clone();
    let joined = std::thread::spawn(move || -> Result<()> {
        nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET)
            .context("joining the pod's network namespace")?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(configure_inside(&inside))
    })
    .join()
    .map_err(|_| anyhow!("the network setup thread panicked"))?;
    joined
}

/// Inside the pod's namespace: `lo` and `eth0` up, the address, the routes.
async fn configure_inside(a: &Attachment) -> Result<()> {
    let h = connect()?;
    let lo = index_of(&h, "lo")
        .await?
        .ok_or_else(|| anyhow!("no lo in the pod"))?;
    h.link()
        .set(LinkUnspec::new_with_index(lo).up().build())
        .execute()
        .await?;
    let eth0 = index_of(&h, "eth0")
        .await?
        .ok_or_else(|| anyhow!("no eth0 in the pod"))?;
    h.address()
        .add(eth0, IpAddr::V4(a.ip), a.prefix)
        .execute()
        .await
        .with_context(|| format!("adding {}/{}", a.ip, a.prefix))?;
    h.link()
        .set(LinkUnspec::new_with_index(eth0).up().build())
        .execute()
        .await?;
    for (dst, len) in &a.routes {
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(*dst, *len)
            .gateway(a.gateway)
            .output_interface(eth0)
            .build();
        if let Err(e) = h.route().add(route).execute().await {
            if !exists(&e) {
                return Err(anyhow!("adding the route to {dst}/{len}: {e}"));
            }
        }
    }
    Ok(())
}

/// The gateway (first address) and the usable range of a pod CIDR:
/// `10.42.3.0/24` → (10.42.3.1, first pod 10.42.3.2, count).
pub fn plan(cidr: &str) -> Result<(Ipv4Addr, u8, u32, u32)> {
    let (ip, bits) = cidr
        .split_once('/')
        .ok_or_else(|| anyhow!("{cidr:?} is not a CIDR"))?;
    let base: Ipv4Addr = ip
        .parse()
        .with_context(|| format!("{cidr:?} is not a CIDR"))?;
    let bits: u8 = bits
        .parse()
        .with_context(|| format!("{cidr:?} is not a CIDR"))?;
    if !(8..=30).contains(&bits) {
        return Err(anyhow!("a node's pod CIDR must be a /8 to /30, not {cidr}"));
    }
    let base = u32::from(base) & (u32::MAX << (32 - bits));
    Ok((Ipv4Addr::from(base + 1), bits, base, 1u32 << (32 - bits)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans() {
        let (gw, bits, base, size) = plan("10.42.3.0/24").unwrap();
        assert_eq!(gw, Ipv4Addr::new(10, 42, 3, 1));
        assert_eq!(bits, 24);
        assert_eq!(Ipv4Addr::from(base), Ipv4Addr::new(10, 42, 3, 0));
        assert_eq!(size, 256);
        assert!(plan("10.42.3.0").is_err());
        assert!(plan("10.42.3.0/31").is_err());
    }
}
