//! bench-xds: how fast the mesh control plane pushes a change to its
//! proxies. It creates `--services` Services, a Gateway and a
//! VirtualService bound to it, connects `--clients` lightweight ADS clients
//! that present themselves as that gateway and ACK everything, then changes
//! the VirtualService `--changes` times and measures, for every client, the
//! time from the change (the API's answer) to the new route configuration
//! arriving. Prints p50/p99 and the control plane's RSS (`--pid`).

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value as PbValue};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Mutex};

const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const LDS: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
const RDS: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";

fn node(i: usize) -> Node {
    let s = |v: &str| PbValue {
        kind: Some(Kind::StringValue(v.to_owned())),
    };
    let mut labels = Struct::default();
    labels.fields.insert("bench".into(), s("gw"));
    let mut md = Struct::default();
    md.fields.insert("NAMESPACE".into(), s("bench"));
    md.fields.insert(
        "LABELS".into(),
        PbValue {
            kind: Some(Kind::StructValue(labels)),
        },
    );
    Node {
        id: format!("router~127.0.0.1~bench-{i}.bench~bench.svc.cluster.local"),
        cluster: "bench".into(),
        metadata: Some(md),
        ..Default::default()
    }
}

/// One client: subscribes to CDS, LDS and the gateway's routes, ACKs every
/// response, and reports (type, version, when) for each.
async fn client(
    i: usize,
    xds: String,
    report: mpsc::UnboundedSender<(usize, String, u64, Instant)>,
) -> anyhow::Result<()> {
    let mut ads = AggregatedDiscoveryServiceClient::connect(format!("http://{xds}"))
        .await?
        .max_decoding_message_size(256 << 20);
    let (tx, rx) = mpsc::unbounded_channel::<DiscoveryRequest>();
    for (t, names) in [
        (CDS, vec![]),
        (LDS, vec![]),
        (RDS, vec!["http.8080".to_string()]),
    ] {
        tx.send(DiscoveryRequest {
            node: Some(node(i)),
            type_url: t.into(),
            resource_names: names,
            ..Default::default()
        })?;
    }
    let mut responses = ads
        .stream_aggregated_resources(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
        .await?
        .into_inner();
    while let Some(r) = responses.next().await {
        let r = r?;
        let now = Instant::now();
        let version: u64 = r.version_info.parse().unwrap_or(0);
        let _ = report.send((i, r.type_url.clone(), version, now));
        let names = if r.type_url == RDS {
            vec!["http.8080".to_string()]
        } else {
            vec![]
        };
        tx.send(DiscoveryRequest {
            node: Some(node(i)),
            type_url: r.type_url,
            version_info: r.version_info,
            response_nonce: r.nonce,
            resource_names: names,
            ..Default::default()
        })?;
    }
    Ok(())
}

/// The latest (version, arrival) per (client, type URL).
type Seen = BTreeMap<(usize, String), (u64, Instant)>;

mod common;
use common::{arg, pct, rss_mb};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let services: usize = arg("--services", "1000").parse()?;
    let clients: usize = arg("--clients", "50").parse()?;
    let changes: usize = arg("--changes", "10").parse()?;
    let xds = arg("--xds", "127.0.0.1:15010");
    let pid = arg("--pid", "");
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(arg("--kubeconfig", ""))?,
        &Default::default(),
    )
    .await?;
    let kc = kube::Client::try_from(config)?;
    // The Services, 50 at a time.
    let t = Instant::now();
    let svcs: Api<Service> = Api::namespaced(kc.clone(), "bench");
    futures::stream::iter(0..services)
        .map(|i| {
            let svcs = svcs.clone();
            async move {
                let s: Service = serde_json::from_value(serde_json::json!({
                    "metadata": {"name": format!("svc-{i}")},
                    "spec": {"selector": {"app": format!("svc-{i}")}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
                }))?;
                svcs.create(&PostParams::default(), &s).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(50)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<_>>>()?;
    println!(
        "created {services} Services in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let ar = |kind: &str, plural: &str| {
        ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("networking.istio.io", "v1", kind),
            plural,
        )
    };
    let gws: Api<DynamicObject> =
        Api::namespaced_with(kc.clone(), "bench", &ar("Gateway", "gateways"));
    let vss: Api<DynamicObject> = Api::namespaced_with(
        kc.clone(),
        "bench",
        &ar("VirtualService", "virtualservices"),
    );
    let obj =
        |v: serde_json::Value| -> anyhow::Result<DynamicObject> { Ok(serde_json::from_value(v)?) };
    gws.create(&PostParams::default(), &obj(serde_json::json!({"apiVersion": "networking.istio.io/v1", "kind": "Gateway",
        "metadata": {"name": "gw"}, "spec": {"selector": {"bench": "gw"}, "servers": [{"port": {"number": 8080, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]}]}}))?)
        .await?;
    let route = |i: usize| serde_json::json!({"hosts": ["*"], "gateways": ["gw"], "http": [{"route": [{"destination": {"host": format!("svc-{i}")}}]}]});
    vss.create(
        &PostParams::default(),
        &obj(
            serde_json::json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": "vs"}, "spec": route(0)}),
        )?,
    )
    .await?;
    // The clients, and what they receive.
    let (tx, mut rx) = mpsc::unbounded_channel();
    let t = Instant::now();
    for i in 0..clients {
        let (xds, tx) = (xds.clone(), tx.clone());
        tokio::spawn(async move {
            if let Err(e) = client(i, xds, tx).await {
                eprintln!("client {i}: {e}");
            }
        });
    }
    // Latest (version, arrival) per (client, type).
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let s2 = seen.clone();
    tokio::spawn(async move {
        while let Some((i, t, v, at)) = rx.recv().await {
            s2.lock().await.insert((i, t), (v, at));
        }
    });
    let synced = |min_version: u64| {
        let seen = seen.clone();
        async move {
            let s = seen.lock().await;
            (0..clients).all(|i| {
                s.get(&(i, RDS.to_string()))
                    .is_some_and(|(v, _)| *v >= min_version)
                    && s.get(&(i, CDS.to_string())).is_some()
            })
        }
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while !synced(1).await {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the clients never got their first configuration"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "{clients} clients got their first configuration ({services} Services) in {:.2} s",
        t.elapsed().as_secs_f64()
    );
    let mut lat = vec![];
    for n in 1..=changes {
        let before: BTreeMap<usize, u64> = {
            let s = seen.lock().await;
            (0..clients)
                .map(|i| {
                    (
                        i,
                        s.get(&(i, RDS.to_string())).map(|(v, _)| *v).unwrap_or(0),
                    )
                })
                .collect()
        };
        vss.patch(
            "vs",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": route(n % services)})),
        )
        .await?;
        let t0 = Instant::now();
        let deadline = t0 + Duration::from_secs(30);
        loop {
            let done: Vec<f64> = {
                let s = seen.lock().await;
                (0..clients)
                    .filter_map(|i| {
                        let (v, at) = s.get(&(i, RDS.to_string()))?;
                        (*v > before[&i])
                            .then(|| at.saturating_duration_since(t0).as_secs_f64() * 1000.0)
                    })
                    .collect()
            };
            if done.len() == clients {
                lat.extend(done);
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "change {n}: only {} of {clients} clients got it",
                done.len()
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    let (p50, p99) = (pct(&lat, 0.50), pct(&lat, 0.99));
    println!("push latency, change to new routes at every client ({} samples): p50 {p50:.1} ms, p99 {p99:.1} ms (target p99 < 200 ms: {})",
        lat.len(), if p99 < 200.0 { "met" } else { "NOT met" });
    let mb = rss_mb(&pid);
    if !mb.is_nan() {
        println!("control plane RSS with {services} Services and {clients} proxies: {mb:.1} MB (target < 100 MB: {}; istiod needs about 1.5 GB for 1000 Services and 2000 sidecars)",
            if mb < 100.0 { "met" } else { "NOT met" });
    }
    Ok(())
}
