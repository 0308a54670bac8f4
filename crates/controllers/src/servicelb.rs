//! ServiceLB, as k3s ships it: every Service of type LoadBalancer (with no
//! `loadBalancerClass`) gets an address from a pool (`--service-lb-pool`)
//! in `status.loadBalancer.ingress`, so `kubectl get svc` shows its
//! EXTERNAL-IP. Node agents put the address on their bridge and serve the
//! Service's ports on it. `spec.loadBalancerIP`, when set and free in the
//! pool, is honoured; a Service that stops being a LoadBalancer gives its
//! address back.

use crate::nodeipam::Cidr;
use crate::Error;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;
use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::Arc;

struct LbCtx {
    client: Client,
    pool: Cidr,
    /// Allocation reads all Services and writes one: one at a time.
    lock: tokio::sync::Mutex<()>,
}

pub async fn run(
    client: Client,
    shutdown: tokio::sync::watch::Receiver<bool>,
    pool: Cidr,
) -> anyhow::Result<()> {
    let ctx = Arc::new(LbCtx {
        client: client.clone(),
        pool,
        lock: Default::default(),
    });
    let controller = Controller::new(Api::<Service>::all(client), watcher::Config::default());
    crate::drive(controller, shutdown, "servicelb", reconcile, ctx).await;
    Ok(())
}

fn ingress_ips(svc: &Service) -> Vec<String> {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|l| l.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.clone())
        .collect()
}

fn in_pool(pool: Cidr, ip: Ipv4Addr) -> bool {
    let mask = if pool.bits == 0 {
        0
    } else {
        u32::MAX << (32 - pool.bits)
    };
    u32::from(ip) & mask == u32::from(pool.base)
}

/// The pool's usable addresses (not its network or broadcast address, for
/// blocks larger than a /31).
fn pool_addresses(pool: Cidr) -> impl Iterator<Item = Ipv4Addr> {
    let size = 1u64 << (32 - pool.bits);
    let (first, last) = if size > 2 {
        (1, size - 2)
    } else {
        (0, size - 1)
    };
    (first..=last).map(move |i| Ipv4Addr::from((u64::from(u32::from(pool.base)) + i) as u32))
}

async fn reconcile(svc: Arc<Service>, ctx: Arc<LbCtx>) -> Result<Action, Error> {
    let spec = svc.spec.as_ref();
    let wants = spec.and_then(|s| s.type_.as_deref()) == Some("LoadBalancer")
        && spec
            .and_then(|s| s.load_balancer_class.as_deref())
            .is_none()
        && svc.metadata.deletion_timestamp.is_none();
    let have = ingress_ips(&svc);
    let api: Api<Service> =
        Api::namespaced(ctx.client.clone(), &svc.namespace().unwrap_or_default());
    let name = svc.name_any();
    let patch_status = |ingress: serde_json::Value| async move {
        api.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"loadBalancer": {"ingress": ingress}}})),
        )
        .await
    };
    if !wants {
        // Another kind of Service keeps no address of ours.
        if spec
            .and_then(|s| s.load_balancer_class.as_deref())
            .is_none()
            && !have.is_empty()
        {
            patch_status(serde_json::Value::Null).await?;
        }
        return Ok(Action::await_change());
    }
    if !have.is_empty() {
        return Ok(Action::await_change());
    }
    let _one = ctx.lock.lock().await;
    let all = Api::<Service>::all(ctx.client.clone())
        .list(&ListParams::default())
        .await?
        .items;
    let used: HashSet<Ipv4Addr> = all
        .iter()
        .filter(|s| s.uid() != svc.uid())
        .flat_map(ingress_ips)
        .filter_map(|ip| ip.parse().ok())
        .collect();
    let requested = spec
        .and_then(|s| s.load_balancer_ip.as_deref())
        .filter(|ip| !ip.is_empty());
    let ip = match requested {
        Some(r) => {
            let ip: Option<Ipv4Addr> = r.parse().ok();
            match ip {
                Some(ip) if in_pool(ctx.pool, ip) && !used.contains(&ip) => ip,
                _ => {
                    let why = format!("spec.loadBalancerIP {r} is not a free address of the load-balancer pool {}", ctx.pool);
                    return allocation_failed(&ctx, &svc, why).await;
                }
            }
        }
        None => match pool_addresses(ctx.pool).find(|ip| !used.contains(ip)) {
            Some(ip) => ip,
            None => {
                let why = format!("the load-balancer pool {} has no free address; widen it with --service-lb-pool", ctx.pool);
                return allocation_failed(&ctx, &svc, why).await;
            }
        },
    };
    patch_status(json!([{"ip": ip.to_string(), "ipMode": "VIP"}])).await?;
    tracing::info!(service = %svc.name_any(), %ip, "allocated a load-balancer address");
    Ok(Action::await_change())
}

/// Say why on the Service (as a Warning event `kubectl describe` shows),
/// and try again later.
async fn allocation_failed(ctx: &LbCtx, svc: &Service, why: String) -> Result<Action, Error> {
    let ns = svc.namespace().unwrap_or_default();
    let src = mast_api::events::Source {
        component: "service-lb-controller",
        host: None,
    };
    let ev = mast_api::events::event(
        "Service",
        &ns,
        &svc.name_any(),
        &svc.uid().unwrap_or_default(),
        src,
        "Warning",
        "AllocationFailed",
        &why,
    );
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(ctx.client.clone(), &ns);
    if let Ok(ev) = serde_json::from_value(ev) {
        let _ = events.create(&Default::default(), &ev).await;
    }
    tracing::warn!(service = %svc.name_any(), "{why}");
    Ok(Action::requeue(std::time::Duration::from_secs(30)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools() {
        let pool: Cidr = "10.44.0.0/30".parse().unwrap();
        let all: Vec<String> = pool_addresses(pool).map(|i| i.to_string()).collect();
        assert_eq!(all, ["10.44.0.1", "10.44.0.2"]);
        assert!(in_pool(pool, "10.44.0.3".parse().unwrap()));
        assert!(!in_pool(pool, "10.44.0.4".parse().unwrap()));
        let one: Cidr = "10.44.0.9/32".parse().unwrap();
        assert_eq!(
            pool_addresses(one)
                .map(|i| i.to_string())
                .collect::<Vec<_>>(),
            ["10.44.0.9"]
        );
    }
}
