//! mast's built-in container images. An image named `mast.dev/<name>[:tag]`
//! runs as `mast image <name> ARGS...`, so the process runtime needs nothing
//! pulled or installed for them. Tests and the demo app use them; adding an
//! image is one entry in [`IMAGES`].
//!
//! [`nslookup`] is a tool rather than an image: the runtime gives it to
//! containers of the busybox image, as busybox 1.28 behaved.

mod bookinfo;
mod echo;
mod http;
pub mod nslookup;
mod proxyv2;

/// A built-in image: its name under `mast.dev/` and its entrypoint.
#[derive(Debug)]
pub struct Image {
    pub name: &'static str,
    pub about: &'static str,
    /// Runs the image's program with the container's args; returns the exit code.
    pub run: fn(&[String]) -> anyhow::Result<i32>,
}

/// Every built-in image.
pub const IMAGES: &[Image] = &[
    Image {
        name: "echo",
        about: "HTTP server on $PORT (8080) that answers with its pod, namespace, node, version and the request's headers; can be told to fail, delay or exit",
        run: echo::run,
    },
    Image {
        name: "proxyv2",
        about: "the mesh's proxy agent (Istio's pilot-agent): runs the sidecar or gateway proxy, relays xDS, answers :15021/healthz/ready, drains on SIGTERM",
        run: proxyv2::run,
    },
    Image {
        name: "demo/productpage",
        about: "Bookinfo-shaped demo: the product page on :9080, built from details and reviews",
        run: bookinfo::productpage,
    },
    Image {
        name: "demo/details",
        about: "Bookinfo-shaped demo: book details on :9080",
        run: bookinfo::details,
    },
    Image {
        name: "demo/reviews",
        about: "Bookinfo-shaped demo: reviews on :9080; $SERVICE_VERSION v1 (no stars), v2 (black), v3 (red)",
        run: bookinfo::reviews,
    },
    Image {
        name: "demo/ratings",
        about: "Bookinfo-shaped demo: ratings on :9080",
        run: bookinfo::ratings,
    },
];

/// The registry prefix of built-in images.
pub const PREFIX: &str = "mast.dev/";

/// The built-in image an image reference names, if any:
/// `mast.dev/echo`, `mast.dev/echo:v2` and `mast.dev/echo@sha256:...` all name `echo`.
pub fn lookup(image: &str) -> Option<&'static Image> {
    let rest = image.strip_prefix(PREFIX)?;
    let name = rest.split(['@', ':']).next().unwrap_or(rest);
    IMAGES.iter().find(|i| i.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_strips_tags_and_digests() {
        assert_eq!(lookup("mast.dev/echo").map(|i| i.name), Some("echo"));
        assert_eq!(lookup("mast.dev/echo:v2").map(|i| i.name), Some("echo"));
        assert_eq!(
            lookup("mast.dev/echo@sha256:00").map(|i| i.name),
            Some("echo")
        );
        assert!(lookup("mast.dev/nope").is_none());
        assert!(lookup("docker.io/echo").is_none());
    }
}
