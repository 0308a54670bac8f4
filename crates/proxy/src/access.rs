//! Access logs in Envoy's default format, so the tools that read Envoy's
//! logs read these:
//!
//! `[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" "%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"`
//!
//! Byte counts come from Content-Length (0 for streamed bodies), and the
//! duration is to the response's headers; the upstream host and service
//! time are `-`.

use std::io::Write;

/// What is known of a request when it arrives.
pub struct Entry {
    start: chrono::DateTime<chrono::Utc>,
    t0: std::time::Instant,
    line: String,
    received: u64,
    tail: String,
}

fn header<B>(req: &http::Request<B>, name: &str) -> String {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned()
}

impl Entry {
    pub fn begin<B>(req: &http::Request<B>) -> Entry {
        let path = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let protocol = match req.version() {
            http::Version::HTTP_2 => "HTTP/2",
            http::Version::HTTP_10 => "HTTP/1.0",
            _ => "HTTP/1.1",
        };
        let authority = req
            .headers()
            .get(http::header::HOST)
            .and_then(|v| v.to_str().ok())
            .or_else(|| req.uri().authority().map(|a| a.as_str()))
            .unwrap_or("-");
        Entry {
            start: chrono::Utc::now(),
            t0: std::time::Instant::now(),
            line: format!("\"{} {path} {protocol}\"", req.method()),
            received: content_length(req.headers()),
            tail: format!(
                "\"{}\" \"{}\" \"{}\" \"{authority}\" \"-\"",
                header(req, "x-forwarded-for"),
                header(req, "user-agent"),
                header(req, "x-request-id")
            ),
        }
    }

    /// Write the entry for `resp` to standard output (or error).
    pub fn end<B>(self, resp: &http::Response<B>, stdout: bool) {
        let flags = resp
            .headers()
            .get("x-mast-response-flags")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-");
        let text = format!(
            "[{}] {} {} {flags} {} {} {} - {}\n",
            self.start.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
            self.line,
            resp.status().as_u16(),
            self.received,
            content_length(resp.headers()),
            self.t0.elapsed().as_millis(),
            self.tail
        );
        let _ = if stdout {
            std::io::stdout().lock().write_all(text.as_bytes())
        } else {
            std::io::stderr().lock().write_all(text.as_bytes())
        };
    }
}

fn content_length(h: &http::HeaderMap) -> u64 {
    h.get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
