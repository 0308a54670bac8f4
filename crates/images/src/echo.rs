//! `mast.dev/echo`: an HTTP server that says who it is and what it got.
//!
//! It listens on `$POD_IP` (else all addresses), port `--port`, `$PORT` or
//! 8080, and answers every request with JSON: its pod, namespace, node and
//! version (from `POD_NAME`/`HOSTNAME`, `POD_NAMESPACE`, `NODE_NAME`,
//! `VERSION`), the method, protocol (`HTTP/1.1`, `HTTP/2.0`), path and the
//! request's headers. It speaks HTTP/1.1 and h2c (HTTP/2 with prior
//! knowledge).
//!
//! For tests it can be told to misbehave, per request by query parameter or
//! header: `status=503` / `x-echo-status`, `delay=250ms` / `x-echo-delay`,
//! `fail=50` / `x-echo-fail` (fail half the requests at random, with 503 or
//! `status`); `/fail/on` makes every answer a 500 until `/fail/off`;
//! `GET /exit?code=N` exits the process; `/readyz` answers 200 until
//! `/readyz/off` (and again after `/readyz/on`); `/healthz` likewise with
//! `/healthz/off`. At start, `--exit-code N --exit-after 2s` exits on its own
//! and `--text S` adds a fixed `text` field to every answer.

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Map, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

struct State {
    info: Map<String, Value>,
    ready: AtomicBool,
    healthy: AtomicBool,
    /// `/fail/on`: every answer is a 500 until `/fail/off`.
    failing: AtomicBool,
}

fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit() && c != '.')?);
    let n: f64 = n.parse().ok()?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(secs).ok()
}

struct Args {
    port: u16,
    exit_code: i32,
    exit_after: Option<Duration>,
    text: Option<String>,
}

fn parse_args(args: &[String]) -> anyhow::Result<Args> {
    let env_port = std::env::var("PORT").ok().and_then(|p| p.parse().ok());
    let mut a = Args {
        port: env_port.unwrap_or(8080),
        exit_code: 0,
        exit_after: None,
        text: None,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n, Some(v.to_owned())),
            None => (flag.as_str(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .ok_or_else(|| anyhow::anyhow!("echo: {name} needs a value"))
        };
        match name {
            "--port" => a.port = value()?.parse()?,
            "--exit-code" => a.exit_code = value()?.parse()?,
            "--exit-after" => {
                let v = value()?;
                a.exit_after = Some(parse_duration(&v).ok_or_else(|| {
                    anyhow::anyhow!("echo: --exit-after {v:?} is not a duration like 2s")
                })?)
            }
            "--text" => a.text = Some(value()?),
            other => anyhow::bail!(
                "echo: unknown argument {other:?}; use --port, --exit-code, --exit-after or --text"
            ),
        }
    }
    Ok(a)
}

pub fn run(args: &[String]) -> anyhow::Result<i32> {
    let args = parse_args(args)?;
    let env = |k: &str| std::env::var(k).ok();
    let mut info = Map::new();
    info.insert(
        "pod".into(),
        json!(env("POD_NAME")
            .or_else(|| env("HOSTNAME"))
            .unwrap_or_default()),
    );
    info.insert(
        "namespace".into(),
        json!(env("POD_NAMESPACE").unwrap_or_default()),
    );
    info.insert("node".into(), json!(env("NODE_NAME").unwrap_or_default()));
    info.insert(
        "version".into(),
        json!(env("VERSION").unwrap_or_else(|| "v1".into())),
    );
    if let Some(t) = &args.text {
        info.insert("text".into(), json!(t));
    }
    let state = Arc::new(State {
        info,
        ready: AtomicBool::new(true),
        healthy: AtomicBool::new(true),
        failing: AtomicBool::new(false),
    });
    let ip = env("POD_IP").unwrap_or_else(|| "0.0.0.0".into());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let addr = format!("{ip}:{}", args.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|e| anyhow::anyhow!("echo: cannot listen on {addr}: {e}"))?;
        println!("echo: listening on {addr}");
        if let Some(after) = args.exit_after {
            let code = args.exit_code;
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                println!("echo: exiting with code {code} as told");
                std::process::exit(code);
            });
        }
        crate::http::serve("echo", listener, move |req| handle(state.clone(), req)).await
    })
}

fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

async fn handle(state: Arc<State>, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let control = |q: &str, h: &str| {
        query_param(&query, q).map(str::to_owned).or_else(|| {
            req.headers()
                .get(h)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        })
    };
    let delay = control("delay", "x-echo-delay").and_then(|d| parse_duration(&d));
    let mut status = control("status", "x-echo-status")
        .and_then(|s| s.parse::<u16>().ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    let flag = |f: &AtomicBool, on: bool| {
        f.store(on, Ordering::SeqCst);
        StatusCode::OK
    };
    match path.as_str() {
        "/readyz/off" => status = flag(&state.ready, false),
        "/readyz/on" => status = flag(&state.ready, true),
        "/healthz/off" => status = flag(&state.healthy, false),
        "/healthz/on" => status = flag(&state.healthy, true),
        "/fail/on" => status = flag(&state.failing, true),
        "/fail/off" => status = flag(&state.failing, false),
        _ if state.failing.load(Ordering::SeqCst) => status = StatusCode::INTERNAL_SERVER_ERROR,
        "/readyz" if !state.ready.load(Ordering::SeqCst) => {
            status = StatusCode::SERVICE_UNAVAILABLE
        }
        "/healthz" if !state.healthy.load(Ordering::SeqCst) => {
            status = StatusCode::INTERNAL_SERVER_ERROR
        }
        "/exit" => {
            let code: i32 = query_param(&query, "code")
                .and_then(|c| c.parse().ok())
                .unwrap_or(1);
            println!("echo: exiting with code {code} as asked by {path}?{query}");
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                std::process::exit(code);
            });
        }
        _ => {}
    }
    // `?fail=P`: fail (503, or ?status=) P% of the time, at random.
    if let Some(p) = control("fail", "x-echo-fail").and_then(|p| p.parse::<u32>().ok()) {
        let roll = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() / 7 % 100)
            .unwrap_or(0);
        if roll >= p {
            status = StatusCode::OK;
        } else if status == StatusCode::OK {
            status = StatusCode::SERVICE_UNAVAILABLE;
        }
    }
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    let mut body = state.info.clone();
    body.insert("method".into(), json!(req.method().as_str()));
    body.insert("protocol".into(), json!(format!("{:?}", req.version())));
    body.insert(
        "path".into(),
        json!(if query.is_empty() {
            path.clone()
        } else {
            format!("{path}?{query}")
        }),
    );
    let headers: Map<String, Value> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), json!(String::from_utf8_lossy(v.as_bytes()))))
        .collect();
    body.insert("headers".into(), Value::Object(headers));
    body.insert("status".into(), json!(status.as_u16()));
    let mut text = serde_json::to_vec(&Value::Object(body)).unwrap_or_default();
    text.push(b'\n');
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(text)))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_and_durations() {
        let a = parse_args(&["--port=9000".into(), "--exit-after".into(), "250ms".into()]).unwrap();
        assert_eq!(a.port, 9000);
        assert_eq!(a.exit_after, Some(Duration::from_millis(250)));
        assert!(parse_args(&["--bogus".into()]).is_err());
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("soon"), None);
        assert_eq!(query_param("a=1&delay=2s", "delay"), Some("2s"));
    }
}
