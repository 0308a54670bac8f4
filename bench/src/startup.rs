//! Pod startup latency on the process runtime: creates pods at a steady
//! rate and times each from its create request to the moment a watch shows
//! it Ready (all containers started; the pods have no probes), as the
//! Kubernetes pod-startup SLO measures it.
//!
//! `bench-startup --kubeconfig FILE [--pods 100] [--rate 20]`
//!
//! With `--wait-bound N`, it only watches instead: it prints the Unix time
//! at which N pods are bound to nodes and then Running, one line each, so
//! that bench/pods times the scheduler without polling the API server.

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;
use common::{arg, pct};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let kubeconfig = arg("--kubeconfig", "");
    let pods: usize = arg("--pods", "100").parse()?;
    let rate: f64 = arg("--rate", "20").parse()?;
    let kc = kube::config::Kubeconfig::read_from(&kubeconfig)?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    let client = kube::Client::try_from(cfg)?;
    let api: Api<Pod> = Api::namespaced(client.clone(), "default");
    let wait_bound: usize = arg("--wait-bound", "0").parse()?;
    if wait_bound > 0 {
        return wait_for_bound(api, wait_bound).await;
    }

    let ready_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let seen = ready_at.clone();
    let wc = watcher::Config::default().labels("bench=startup");
    let watch = tokio::spawn(async move {
        let mut s = std::pin::pin!(watcher(api_for(&client), wc).applied_objects());
        while let Some(Ok(p)) = s.next().await {
            let ready = p
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            if ready {
                let name = p.metadata.name.clone().unwrap_or_default();
                seen.lock()
                    .expect("lock")
                    .entry(name)
                    .or_insert_with(Instant::now);
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut created: HashMap<String, Instant> = HashMap::new();
    let gap = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now();
    for i in 0..pods {
        let name = format!("startup-{i}");
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {"bench": "startup"}},
            "spec": {"terminationGracePeriodSeconds": 1, "containers": [{"name": "echo", "image": "mast.dev/echo"}]}
        }))?;
        let next = start + gap * i as u32;
        tokio::time::sleep_until(next.into()).await;
        created.insert(name, Instant::now());
        api.create(&PostParams::default(), &pod).await?;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while ready_at.lock().expect("lock").len() < pods && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    watch.abort();
    let ready = ready_at.lock().expect("lock").clone();
    let mut lat: Vec<f64> = created
        .iter()
        .filter_map(|(n, t)| ready.get(n).map(|r| r.duration_since(*t).as_secs_f64()))
        .collect();
    lat.sort_by(|a, b| a.total_cmp(b));
    let (p50, p99, max) = (
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        lat.last().copied().unwrap_or(f64::NAN),
    );
    println!();
    println!("{:<46} {:>10}  unit", "measure", "value");
    println!(
        "{:<46} {:>10}  of {pods} created at {rate}/s",
        "pods Ready",
        lat.len()
    );
    println!(
        "{:<46} {:>10.0}  ms",
        "startup latency p50 (create → Ready)",
        p50 * 1000.0
    );
    println!(
        "{:<46} {:>10.0}  ms  (target 1000: ratio {:.2}x; Kubernetes SLO 5000: ratio {:.2}x)",
        "startup latency p99",
        p99 * 1000.0,
        p99 / 1.0,
        p99 / 5.0
    );
    println!("{:<46} {:>10.0}  ms", "startup latency max", max * 1000.0);
    let (n_shim, shim) = memory_of(|args| args.get(1).map(String::as_str) == Some("shim"));
    let (n_pause, pause) = memory_of(|args| args.get(1).map(String::as_str) == Some("pause"));
    let (_, agent) = memory_of(|args| {
        args.get(1).map(String::as_str) == Some("agent") && !args.iter().any(|a| a == "--hollow")
    });
    if n_shim > 0 && n_pause > 0 {
        println!(
            "{:<46} {:>10.2}  MB  (PSS: mast shim {:.2} + mast pause {:.2})",
            "memory per pod, beside the app",
            (shim / n_shim as f64) + (pause / n_pause as f64),
            shim / n_shim as f64,
            pause / n_pause as f64
        );
        println!("{:<46} {:>10.1}  MB  (PSS)", "agent with these pods", agent);
    }
    // Leave nothing behind.
    for n in created.keys() {
        let _ = api
            .delete(
                n,
                &DeleteParams {
                    grace_period_seconds: Some(1),
                    ..Default::default()
                },
            )
            .await;
    }
    if lat.len() < pods {
        anyhow::bail!(
            "only {} of {pods} pods became Ready within 120 s",
            lat.len()
        );
    }
    Ok(())
}

fn api_for(client: &kube::Client) -> Api<Pod> {
    Api::namespaced(client.clone(), "default")
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

async fn wait_for_bound(api: Api<Pod>, n: usize) -> anyhow::Result<()> {
    let mut bound = std::collections::HashSet::new();
    let mut running = std::collections::HashSet::new();
    let mut printed_bound = false;
    let mut s = std::pin::pin!(watcher(api, watcher::Config::default()).applied_objects());
    while let Some(p) = s.next().await {
        let p = p?;
        let name = p.metadata.name.clone().unwrap_or_default();
        if p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some() {
            bound.insert(name.clone());
        }
        if p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running") {
            running.insert(name);
        }
        if !printed_bound && bound.len() >= n {
            println!("bound {}", unix_now());
            printed_bound = true;
        }
        if running.len() >= n {
            println!("running {}", unix_now());
            return Ok(());
        }
    }
    anyhow::bail!("the watch ended early")
}

/// Processes whose mast arguments match, and their total PSS in MB.
fn memory_of(select: impl Fn(&[String]) -> bool) -> (usize, f64) {
    let mut n = 0;
    let mut kb = 0u64;
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let dir = e.path();
        let Ok(cmd) = std::fs::read(dir.join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmd
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if !args.first().is_some_and(|a| a.ends_with("/mast")) || !select(&args) {
            continue;
        }
        let pss = std::fs::read_to_string(dir.join("smaps_rollup"))
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| {
                    l.strip_prefix("Pss:")
                        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                })
            });
        if let Some(p) = pss {
            n += 1;
            kb += p;
        }
    }
    (n, kb as f64 / 1024.0)
}
