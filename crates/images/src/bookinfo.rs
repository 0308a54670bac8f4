//! The demo app: four small services shaped like Istio's Bookinfo, as the
//! built-in images `mast.dev/demo/{productpage,details,reviews,ratings}`.
//! Each listens on `$POD_IP:9080` and answers as Bookinfo's do:
//! - `productpage` serves `/productpage`, an HTML page built from `details`
//!   and `reviews` (3 s timeout, one retry, as Bookinfo's), with the
//!   signed-in user (`/login`, the `session` cookie) sent on as `end-user`;
//! - `details` serves `/details/<id>`;
//! - `reviews` serves `/reviews/<id>`; its version comes from
//!   `$SERVICE_VERSION`: v1 shows no stars, v2 black stars, v3 red stars
//!   (`$ENABLE_RATINGS` and `$STAR_COLOR` override); v2 and v3 ask `ratings`
//!   (10 s and 2.5 s timeouts, as in Bookinfo);
//! - `ratings` serves `/ratings/<id>`.
//!
//! Every call forwards the request's tracing headers (and `end-user`), as
//! Istio requires of applications. Service addresses can be changed with
//! `$DETAILS_HOSTNAME`, `$REVIEWS_HOSTNAME` and `$RATINGS_HOSTNAME`, and
//! `$SERVICES_DOMAIN`.

use crate::http::{reply, Reply};
use hyper::Request;
use serde_json::{json, Value};
use std::time::Duration;

/// The headers a request passes on, as Bookinfo's productpage lists them.
const PROPAGATE: &[&str] = &[
    "x-request-id",
    "traceparent",
    "tracestate",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "x-ot-span-context",
    "x-cloud-trace-context",
    "grpc-trace-bin",
    "x-datadog-trace-id",
    "x-datadog-parent-id",
    "x-datadog-sampling-priority",
    "sw8",
    "end-user",
    "user-agent",
    "cookie",
];

fn forwarded(req: &Request<hyper::body::Incoming>) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = PROPAGATE
        .iter()
        .filter_map(|h| {
            let v = req.headers().get(*h)?.to_str().ok()?;
            Some(((*h).to_owned(), v.to_owned()))
        })
        .collect();
    // The signed-in user, from Bookinfo's session cookie.
    if !out.iter().any(|(k, _)| k == "end-user") {
        if let Some(u) = session_user(req) {
            out.push(("end-user".into(), u));
        }
    }
    out
}

fn session_user(req: &Request<hyper::body::Incoming>) -> Option<String> {
    req.headers()
        .get_all(hyper::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| kv.trim().strip_prefix("session=").map(str::to_owned))
        .filter(|u| !u.is_empty())
}

fn env_or(k: &str, d: &str) -> String {
    std::env::var(k).unwrap_or_else(|_| d.to_owned())
}

/// `name:9080` for a peer service, with the optional domain suffix.
fn peer(var: &str, name: &str) -> String {
    let host = env_or(var, name);
    match std::env::var("SERVICES_DOMAIN") {
        Ok(d) if !d.is_empty() => format!("{host}.{d}:9080"),
        _ => format!("{host}:9080"),
    }
}

fn pod_name() -> String {
    std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_default()
}

fn product_id(path: &str, prefix: &str) -> Option<u32> {
    path.strip_prefix(prefix)?.trim_matches('/').parse().ok()
}

fn json_reply(status: u16, v: Value) -> Reply {
    reply(status, "application/json", v.to_string())
}

fn serve<F, Fut>(name: &'static str, handler: F) -> anyhow::Result<i32>
where
    F: Fn(Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Reply> + Send + 'static,
{
    let port: u16 = env_or("PORT", "9080").parse().unwrap_or(9080);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let addr = crate::http::listen_addr(port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|e| anyhow::anyhow!("{name}: cannot listen on {addr}: {e}"))?;
        println!("{name}: listening on {addr}");
        crate::http::serve(name, listener, handler).await
    })
}

pub fn details(_: &[String]) -> anyhow::Result<i32> {
    serve("details", |req| async move {
        let path = req.uri().path();
        if path == "/health" {
            return json_reply(200, json!({"status": "Details is healthy"}));
        }
        match product_id(path, "/details") {
            Some(id) => json_reply(
                200,
                json!({"id": id, "author": "William Shakespeare", "year": 1595, "type": "paperback",
                       "pages": 200, "publisher": "PublisherA", "language": "English",
                       "ISBN-10": "1234567890", "ISBN-13": "123-1234567890"}),
            ),
            None => json_reply(400, json!({"error": "please provide numeric product id"})),
        }
    })
}

pub fn ratings(_: &[String]) -> anyhow::Result<i32> {
    serve("ratings", |req| async move {
        let path = req.uri().path();
        if path == "/health" {
            return json_reply(200, json!({"status": "Ratings is healthy"}));
        }
        match product_id(path, "/ratings") {
            Some(id) => json_reply(
                200,
                json!({"id": id, "ratings": {"Reviewer1": 5, "Reviewer2": 4}}),
            ),
            None => json_reply(400, json!({"error": "please provide numeric product ID"})),
        }
    })
}

pub fn reviews(_: &[String]) -> anyhow::Result<i32> {
    let version = env_or("SERVICE_VERSION", "v1");
    let ratings_on = env_or(
        "ENABLE_RATINGS",
        if version == "v1" { "false" } else { "true" },
    ) == "true";
    let color = env_or("STAR_COLOR", if version == "v3" { "red" } else { "black" });
    // Bookinfo's reviews v2 waits 10 s for ratings; v3 fixed that to 2.5 s.
    let timeout = if version == "v3" {
        Duration::from_millis(2500)
    } else {
        Duration::from_secs(10)
    };
    serve("reviews", move |req| {
        let color = color.clone();
        async move {
            let path = req.uri().path().to_owned();
            if path == "/health" {
                return json_reply(200, json!({"status": "Reviews is healthy"}));
            }
            let Some(id) = product_id(&path, "/reviews") else {
                return json_reply(400, json!({"error": "please provide numeric product ID"}));
            };
            let mut reviews = vec![
                json!({"reviewer": "Reviewer1", "text": "An extremely entertaining play by Shakespeare. The slapstick humour is refreshing!"}),
                json!({"reviewer": "Reviewer2", "text": "Absolutely fun and entertaining. The play lacks thematic depth when compared to other plays by Shakespeare."}),
            ];
            if ratings_on {
                let got = crate::http::request(
                    "GET",
                    &peer("RATINGS_HOSTNAME", "ratings"),
                    &format!("/ratings/{id}"),
                    &forwarded(&req),
                    timeout,
                )
                .await;
                let stars: Option<Value> = got
                    .ok()
                    .filter(|g| g.status == 200)
                    .and_then(|g| serde_json::from_slice::<Value>(&g.body).ok())
                    .map(|v| v["ratings"].clone());
                for (i, r) in reviews.iter_mut().enumerate() {
                    r["rating"] = match &stars {
                        Some(s) => {
                            json!({"stars": s[format!("Reviewer{}", i + 1)], "color": color})
                        }
                        None => json!({"error": "Ratings service is currently unavailable"}),
                    };
                }
            }
            json_reply(
                200,
                json!({"id": id.to_string(), "podname": pod_name(), "clustername": "null", "reviews": reviews}),
            )
        }
    })
}

/// An HTML-escaped string.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn stars(r: &Value) -> String {
    let rating = &r["rating"];
    if let Some(e) = rating["error"].as_str() {
        return format!("<p class=\"rating-error\"><i>{}</i></p>", esc(e));
    }
    let Some(n) = rating["stars"].as_u64() else {
        return String::new();
    };
    let color = esc(rating["color"].as_str().unwrap_or("black"));
    let full = "&#9733;".repeat(n as usize);
    let empty = "&#9734;".repeat(5usize.saturating_sub(n as usize));
    format!("<p class=\"stars\"><font color=\"{color}\">{full}{empty}</font></p>")
}

/// Ask a service, retrying once, as Bookinfo's productpage does.
async fn ask(authority: &str, path: &str, headers: &[(String, String)]) -> Option<Value> {
    for _ in 0..2 {
        if let Ok(g) =
            crate::http::request("GET", authority, path, headers, Duration::from_secs(3)).await
        {
            if g.status == 200 {
                return serde_json::from_slice(&g.body).ok();
            }
        }
    }
    None
}

async fn page(req: Request<hyper::body::Incoming>) -> Reply {
    let headers = forwarded(&req);
    let user = headers
        .iter()
        .find(|(k, _)| k == "end-user")
        .map(|(_, v)| v.clone());
    let details_addr = peer("DETAILS_HOSTNAME", "details");
    let reviews_addr = peer("REVIEWS_HOSTNAME", "reviews");
    let (details, reviews) = tokio::join!(
        ask(&details_addr, "/details/0", &headers),
        ask(&reviews_addr, "/reviews/0", &headers)
    );
    let mut html = String::from("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Simple Bookstore App</title></head><body>\n");
    html.push_str("<nav><b>BookInfo Sample</b> ");
    match &user {
        Some(u) => html.push_str(&format!("<span id=\"user\">signed in as {}</span> <a href=\"/logout\">sign out</a>", esc(u))),
        None => html.push_str("<form method=\"post\" action=\"/login\"><input name=\"username\" placeholder=\"user\"><button>Sign in</button></form>"),
    }
    html.push_str("</nav>\n<h1>The Comedy of Errors</h1>\n<p>Summary: Wikipedia Summary: The Comedy of Errors is one of William Shakespeare's early plays.</p>\n");
    html.push_str("<h2>Book Details</h2>\n");
    match details {
        Some(d) => html.push_str(&format!(
            "<dl><dt>Type:</dt><dd>{}</dd><dt>Pages:</dt><dd>{}</dd><dt>Publisher:</dt><dd>{}</dd><dt>Language:</dt><dd>{}</dd><dt>ISBN-10:</dt><dd>{}</dd><dt>ISBN-13:</dt><dd>{}</dd></dl>\n",
            esc(d["type"].as_str().unwrap_or("")), d["pages"], esc(d["publisher"].as_str().unwrap_or("")),
            esc(d["language"].as_str().unwrap_or("")), esc(d["ISBN-10"].as_str().unwrap_or("")), esc(d["ISBN-13"].as_str().unwrap_or("")))),
        None => html.push_str("<p class=\"error\">Error fetching product details!</p>\n<p>Sorry, product details are currently unavailable for this book.</p>\n"),
    }
    html.push_str("<h2>Book Reviews</h2>\n");
    match reviews {
        Some(r) => {
            for rv in r["reviews"].as_array().into_iter().flatten() {
                html.push_str(&format!(
                    "<blockquote><p>{}</p><small>{}</small>{}</blockquote>\n",
                    esc(rv["text"].as_str().unwrap_or("")),
                    esc(rv["reviewer"].as_str().unwrap_or("")),
                    stars(rv)
                ));
            }
            html.push_str(&format!(
                "<dl><dt>Reviews served by:</dt><dd><u>{}</u></dd></dl>\n",
                esc(r["podname"].as_str().unwrap_or(""))
            ));
        }
        None => html.push_str("<p class=\"error\">Error fetching product reviews!</p>\n<p>Sorry, product reviews are currently unavailable for this book.</p>\n"),
    }
    html.push_str("</body></html>\n");
    reply(200, "text/html; charset=utf-8", html)
}

fn redirect(to: &str, cookie: &str) -> Reply {
    let mut r = reply(302, "text/plain", "");
    r.headers_mut()
        .insert(hyper::header::LOCATION, to.parse().expect("a valid path"));
    if let Ok(v) = cookie.parse() {
        r.headers_mut().insert(hyper::header::SET_COOKIE, v);
    }
    r
}

pub fn productpage(_: &[String]) -> anyhow::Result<i32> {
    serve("productpage", |req| async move {
        let path = req.uri().path().to_owned();
        match path.as_str() {
            "/" => reply(
                200,
                "text/html; charset=utf-8",
                "<!DOCTYPE html><html><body><h1>Bookinfo</h1><p><a href=\"/productpage\">/productpage</a></p></body></html>\n",
            ),
            "/productpage" => page(req).await,
            "/health" => json_reply(200, json!({"status": "Product page is healthy"})),
            "/login" => {
                use http_body_util::BodyExt;
                let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                let user = String::from_utf8_lossy(&body)
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("username=").map(str::to_owned))
                    .unwrap_or_default();
                let user: String = user.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_').collect();
                redirect("/productpage", &format!("session={user}; Path=/"))
            }
            "/logout" => redirect("/productpage", "session=; Path=/; Max-Age=0"),
            "/api/v1/products" => json_reply(
                200,
                json!([{"id": 0, "title": "The Comedy of Errors", "descriptionHtml": "<a href=\"https://en.wikipedia.org/wiki/The_Comedy_of_Errors\">Wikipedia Summary</a>: The Comedy of Errors is one of William Shakespeare's early plays."}]),
            ),
            p => {
                let headers = forwarded(&req);
                let sub = p.strip_prefix("/api/v1/products/").and_then(|r| r.split_once('/'));
                let target = match sub {
                    Some((id, "reviews")) => Some((peer("REVIEWS_HOSTNAME", "reviews"), format!("/reviews/{id}"))),
                    Some((id, "ratings")) => Some((peer("RATINGS_HOSTNAME", "ratings"), format!("/ratings/{id}"))),
                    Some((id, "")) | Some((id, "details")) => Some((peer("DETAILS_HOSTNAME", "details"), format!("/details/{id}"))),
                    _ => None,
                };
                match target {
                    Some((authority, path)) => match ask(&authority, &path, &headers).await {
                        Some(v) => json_reply(200, v),
                        None => json_reply(503, json!({"error": format!("{authority} is currently unavailable")})),
                    },
                    None => reply(404, "text/plain", "not found\n"),
                }
            }
        }
    })
}
