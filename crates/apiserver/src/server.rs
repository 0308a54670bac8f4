//! HTTPS serving and routing: TLS with optional client certificates,
//! authentication, URL → handler dispatch, and HTTP responses.

use crate::auth::{user_from_cert, User};
use crate::discovery;
use crate::request::{parse_query, Reply, Request};
use crate::rest::{self, Part, Target, MAX_BODY};
use crate::state::ApiState;
use crate::status::ApiError;
use bytes::Bytes;
use futures::StreamExt;
use http::{Method, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use serde_json::json;
use std::convert::Infallible;
use std::sync::Arc;

pub type Body = BoxBody<Bytes, Infallible>;

fn full(code: u16, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", content_type)
        .header("cache-control", "no-cache, private")
        .body(Full::new(body.into()).boxed())
        .expect("a valid response")
}

fn error_response(e: &ApiError) -> Response<Body> {
    full(e.code, "application/json", e.status().to_string())
}

fn reply_response(reply: Reply) -> Response<Body> {
    match reply {
        Reply::Json {
            code,
            body,
            warnings,
        } => {
            let mut resp = full(
                code,
                "application/json",
                serde_json::to_vec(&body).unwrap_or_default(),
            );
            for w in warnings {
                let v = format!("299 - {}", serde_json::to_string(&w).unwrap_or_default());
                if let Ok(h) = http::HeaderValue::from_str(&v) {
                    resp.headers_mut().append("warning", h);
                }
            }
            resp
        }
        Reply::Raw {
            code,
            content_type,
            body,
        } => full(code, &content_type, body),
        Reply::Stream { rx } => {
            let stream = tokio_stream_from(rx).map(|b| Ok::<_, Infallible>(Frame::data(b)));
            Response::builder()
                .status(200)
                .header("content-type", "application/json")
                .header("cache-control", "no-cache, private")
                .body(BodyExt::boxed(StreamBody::new(stream)))
                .expect("a valid response")
        }
    }
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Bytes>,
) -> impl futures::Stream<Item = Bytes> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Serve one HTTP request from an authenticated (or not) connection.
pub async fn handle(
    state: Arc<ApiState>,
    cert_user: Option<User>,
    req: http::Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let started = std::time::Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    if let Some((ns, name, sub)) = crate::proxy::match_path(&path) {
        let resp = match authenticate(&state, cert_user, req.headers()) {
            None => error_response(&ApiError::new(401, "Unauthorized", "Unauthorized")),
            Some(_) => crate::proxy::pod_subresource(state, req, &ns, &name, &sub)
                .await
                .unwrap_or_else(|e| error_response(&e)),
        };
        tracing::debug!(%method, %path, status = resp.status().as_u16(), "proxied request");
        return Ok(resp);
    }
    let resp = match serve(state, cert_user, req).await {
        Ok(r) => reply_response(r),
        Err(e) => error_response(&e),
    };
    tracing::debug!(%method, %path, status = resp.status().as_u16(), elapsed_ms = started.elapsed().as_millis() as u64, "request");
    Ok(resp)
}

fn authenticate(
    state: &ApiState,
    cert_user: Option<User>,
    headers: &http::HeaderMap,
) -> Option<User> {
    if let Some(auth) = headers.get("authorization").and_then(|h| h.to_str().ok()) {
        if let Some(token) = auth.strip_prefix("Bearer ").map(str::trim) {
            return state.tokens.get(token).cloned();
        }
        return None;
    }
    cert_user
}

async fn serve(
    state: Arc<ApiState>,
    cert_user: Option<User>,
    req: http::Request<Incoming>,
) -> Result<Reply, ApiError> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_owned();
    let public = matches!(path.as_str(), "/healthz" | "/livez" | "/readyz");
    let user = match authenticate(&state, cert_user, &parts.headers) {
        Some(u) => u,
        None if public => User {
            name: "system:anonymous".into(),
            groups: vec![],
        },
        None => return Err(ApiError::unauthorized()),
    };
    let body = read_body(body).await?;
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let request = Request {
        method: parts.method.clone(),
        path: path.clone(),
        query: parse_query(parts.uri.query()),
        accept: header("accept"),
        content_type: header("content-type"),
        user_agent: header("user-agent"),
        body,
        user,
    };
    route(state, request).await
}

/// Read a request body of at most [`MAX_BODY`] bytes. A larger one is read
/// to its end (up to a bound) and discarded, so that HTTP/2 clients get the
/// 413 answer instead of a reset stream.
async fn read_body(mut body: Incoming) -> Result<Bytes, ApiError> {
    const DRAIN_LIMIT: usize = 64 * 1024 * 1024;
    let mut buf = bytes::BytesMut::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame
            .map_err(|e| ApiError::bad_request(format!("could not read the request body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            seen += data.len();
            if seen <= MAX_BODY {
                buf.extend_from_slice(&data);
            } else if seen > DRAIN_LIMIT {
                break;
            }
        }
    }
    if seen > MAX_BODY {
        return Err(ApiError::too_large());
    }
    Ok(buf.freeze())
}

fn json(code: u16, v: serde_json::Value) -> Reply {
    Reply::json(code, v)
}

async fn route(state: Arc<ApiState>, req: Request) -> Result<Reply, ApiError> {
    let segs: Vec<&str> = req
        .path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let reg = state.registry();
    let get_only = |r: Result<Reply, ApiError>| {
        if req.method == Method::GET || req.method == Method::HEAD {
            r
        } else {
            Err(ApiError::method_not_allowed(
                "the server does not allow this method on the requested resource",
            ))
        }
    };
    match segs.as_slice() {
        [] => get_only(Ok(json(
            200,
            json!({"paths": ["/api", "/api/v1", "/apis", "/healthz", "/livez", "/openapi/v2", "/openapi/v3", "/readyz", "/version"]}),
        ))),
        ["healthz"] | ["livez"] | ["readyz"] => get_only(Ok(Reply::Raw {
            code: 200,
            content_type: "text/plain".into(),
            body: Bytes::from_static(b"ok"),
        })),
        ["version"] => get_only(Ok(json(
            200,
            json!({
                "major": "1", "minor": "33", "gitVersion": mast_api::GIT_VERSION, "gitCommit": "", "gitTreeState": "clean",
                "buildDate": "", "goVersion": "rust", "compiler": "rustc", "platform": format!("{}/{}", std::env::consts::OS, match std::env::consts::ARCH { "x86_64" => "amd64", "aarch64" => "arm64", a => a })
            }),
        ))),
        ["api"] => get_only(Ok(match discovery::wants_aggregated(&req.accept) {
            Some(v) => aggregated_reply(
                discovery::aggregated(&reg, true, &format!("apidiscovery.k8s.io/{v}")),
                v,
            ),
            None => json(
                200,
                discovery::api_versions(&format!(
                    "{}:{}",
                    state.settings.advertise_address, state.settings.port
                )),
            ),
        })),
        ["apis"] => get_only(Ok(match discovery::wants_aggregated(&req.accept) {
            Some(v) => aggregated_reply(
                discovery::aggregated(&reg, false, &format!("apidiscovery.k8s.io/{v}")),
                v,
            ),
            None => json(200, discovery::group_list(&reg)),
        })),
        ["api", v] => get_only(
            discovery::resource_list(&reg, "", v)
                .map(|d| json(200, d))
                .ok_or_else(ApiError::path_not_found),
        ),
        ["apis", g] => get_only(
            discovery::group(&reg, g)
                .map(|d| json(200, d))
                .ok_or_else(ApiError::path_not_found),
        ),
        ["apis", g, v] => get_only(
            discovery::resource_list(&reg, g, v)
                .map(|d| json(200, d))
                .ok_or_else(ApiError::path_not_found),
        ),
        ["openapi", "v2"] => get_only(Ok(if req.accept.contains("protobuf") {
            Reply::Raw {
                code: 200,
                content_type: "application/com.github.proto-openapi.spec.v2.v1.0+protobuf".into(),
                body: Bytes::from(reg.openapi_v2_proto().to_vec()),
            }
        } else {
            Reply::Raw {
                code: 200,
                content_type: "application/json".into(),
                body: Bytes::from(reg.openapi_v2_json()),
            }
        })),
        ["openapi", "v3"] => {
            let mut paths = serde_json::Map::new();
            let mut seen = std::collections::HashSet::new();
            for r in &reg.resources {
                let p = crate::state::gv_path_of(r);
                if seen.insert(p.clone()) {
                    paths.insert(p.clone(), json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={}", hash_of(&reg, &p))}));
                }
            }
            get_only(Ok(json(200, json!({"paths": paths}))))
        }
        ["openapi", "v3", rest @ ..] => {
            let p = rest.join("/");
            get_only(
                reg.openapi_v3(&p)
                    .map(|d| Reply::Raw {
                        code: 200,
                        content_type: "application/json".into(),
                        body: Bytes::from(d.to_vec()),
                    })
                    .ok_or_else(ApiError::path_not_found),
            )
        }
        ["api", v, rest @ ..] => resource(state.clone(), &reg, "", v, rest, &req).await,
        ["apis", g, v, rest @ ..] => resource(state.clone(), &reg, g, v, rest, &req).await,
        _ => Err(ApiError::path_not_found()),
    }
}

fn hash_of(reg: &crate::state::Registry, gv: &str) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for r in reg
        .resources
        .iter()
        .filter(|r| crate::state::gv_path_of(r) == gv)
    {
        h.update(r.plural.as_bytes());
        h.update(r.definition.as_bytes());
        if let Some(c) = &r.custom {
            h.update(
                c.schema
                    .as_ref()
                    .map(|s| s.to_string())
                    .unwrap_or_default()
                    .as_bytes(),
            );
        }
    }
    h.finalize()
        .iter()
        .take(16)
        .map(|b| format!("{b:02X}"))
        .collect()
}

fn aggregated_reply(body: serde_json::Value, version: &str) -> Reply {
    Reply::Raw {
        code: 200,
        content_type: format!(
            "application/json;g=apidiscovery.k8s.io;v={version};as=APIGroupDiscoveryList"
        ),
        body: Bytes::from(serde_json::to_vec(&body).unwrap_or_default()),
    }
}

async fn resource(
    state: Arc<ApiState>,
    reg: &crate::state::Registry,
    group: &str,
    version: &str,
    rest_segs: &[&str],
    req: &Request,
) -> Result<Reply, ApiError> {
    let mut segs = rest_segs;
    let mut watch_path = false;
    if segs.first() == Some(&"watch") {
        watch_path = true;
        segs = &segs[1..];
    }
    let (ns, plural, name, sub) = match segs {
        ["namespaces", ns, plural, rest @ ..]
            if reg
                .lookup(group, version, plural)
                .is_some_and(|r| r.namespaced) =>
        {
            (
                Some(ns.to_string()),
                *plural,
                rest.first().copied(),
                rest.get(1).copied(),
            )
        }
        [plural, rest @ ..] => (None, *plural, rest.first().copied(), rest.get(1).copied()),
        [] => return Err(ApiError::path_not_found()),
    };
    if segs.len() > 5 {
        return Err(ApiError::path_not_found());
    }
    let res = reg
        .lookup(group, version, plural)
        .cloned()
        .ok_or_else(ApiError::path_not_found)?;
    if res.namespaced && ns.is_none() && name.is_some() {
        return Err(ApiError::path_not_found());
    }
    if let Some(s) = sub {
        if !res.has_subresource(s) {
            return Err(ApiError::path_not_found());
        }
    }
    let deprecation = res.deprecated.clone();
    let t = Target {
        res,
        ns,
        name: name.map(str::to_owned),
        sub: sub.map(str::to_owned),
    };
    let reply = dispatch(state, t, watch_path, req).await?;
    // Every request to a deprecated API carries the warning, as in Kubernetes.
    Ok(match deprecation {
        Some(w) => reply.with_warnings(vec![w]),
        None => reply,
    })
}

async fn dispatch(
    state: Arc<ApiState>,
    t: Target,
    watch_path: bool,
    req: &Request,
) -> Result<Reply, ApiError> {
    let watching = watch_path || req.flag("watch");
    let m = &req.method;
    match (t.name.as_deref(), t.sub.as_deref()) {
        (None, None) if *m == Method::GET && watching => crate::watch::watch(state, &t, req).await,
        (None, None) if *m == Method::GET => rest::list(&state, &t, req).await,
        (None, None) if *m == Method::POST => {
            if t.res.kind == "Binding" {
                let b = rest::decode_body_def(&state, "io.k8s.api.core.v1.Binding", req)?;
                let pod = b["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                return rest::bind(&state, &t, &pod, req).await;
            }
            rest::create(&state, &t, req).await
        }
        (None, None) if *m == Method::DELETE => rest::delete_collection(&state, &t, req).await,
        (Some(name), None) if *m == Method::GET && watching => {
            let mut r = req.clone();
            r.query
                .insert("fieldSelector".into(), format!("metadata.name={name}"));
            let mut coll = t.clone();
            coll.name = None;
            crate::watch::watch(state, &coll, &r).await
        }
        (Some(name), None) if *m == Method::GET => {
            let (obj, _) = rest::get(&state, &t, name).await?;
            Ok(rest::render_one(&t, req, obj, 200))
        }
        (Some(name), None | Some("status")) if *m == Method::PUT => {
            let part = if t.sub.is_some() {
                Part::Status
            } else {
                Part::Main
            };
            rest::update(&state, &t, name, req, part).await
        }
        (Some(name), None | Some("status")) if *m == Method::PATCH => {
            let part = if t.sub.is_some() {
                Part::Status
            } else {
                Part::Main
            };
            rest::patch(&state, &t, name, req, part).await
        }
        (Some(name), Some("status")) if *m == Method::GET => {
            let (obj, _) = rest::get(&state, &t, name).await?;
            Ok(rest::render_one(&t, req, obj, 200))
        }
        (Some(name), None) if *m == Method::DELETE => {
            crate::hooks::before_delete(&t, name)?;
            rest::delete(&state, &t, name, req).await
        }
        (Some(name), Some("scale")) if matches!(*m, Method::GET | Method::PUT | Method::PATCH) => {
            rest::scale(&state, &t, name, req).await
        }
        (Some(name), Some("finalize")) if *m == Method::PUT => {
            rest::finalize_namespace(&state, &t, name, req).await
        }
        (Some(name), Some("binding")) if *m == Method::POST => {
            rest::bind(&state, &t, name, req).await
        }
        (Some(_), Some(sub)) => Err(ApiError::not_found_sub(sub)),
        _ => Err(ApiError::method_not_allowed(
            "the server does not allow this method on the requested resource",
        )),
    }
}

/// Accept TLS connections on `listener` and serve them until `shutdown`.
pub async fn serve_tls(
    state: Arc<ApiState>,
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => { tracing::warn!(error = %e, "accept failed"); continue; }
            },
            _ = shutdown.changed() => break,
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let state = state.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
            };
            let cert_user = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| user_from_cert(c.as_ref()));
            let svc = hyper::service::service_fn(move |req| {
                handle(state.clone(), cert_user.clone(), req)
            });
            let builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            let conn =
                builder.serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(tls), svc);
            let _ = watcher.watch(conn.into_owned()).await;
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), graceful.shutdown()).await;
}
