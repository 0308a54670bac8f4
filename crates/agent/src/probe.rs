//! Probes and lifecycle hooks: httpGet, tcpSocket and exec actions, run the
//! way the kubelet runs them (HTTP status 200–399 passes, `User-Agent:
//! kube-probe/...`, a per-attempt timeout).

use k8s_openapi::api::core::v1::{Container, ExecAction, HTTPGetAction, TCPSocketAction};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One probe or hook action.
#[derive(Debug, Clone)]
pub enum Action {
    Http(HTTPGetAction),
    Tcp(TCPSocketAction),
    Exec(ExecAction),
    Unsupported(&'static str),
}

impl Action {
    pub fn from_parts(
        http: Option<&HTTPGetAction>,
        tcp: Option<&TCPSocketAction>,
        exec: Option<&ExecAction>,
        grpc: bool,
    ) -> Option<Self> {
        if let Some(h) = http {
            Some(Action::Http(h.clone()))
        } else if let Some(t) = tcp {
            Some(Action::Tcp(t.clone()))
        } else if let Some(e) = exec {
            Some(Action::Exec(e.clone()))
        } else if grpc {
            Some(Action::Unsupported(
                "grpc probes are not supported by mast yet",
            ))
        } else {
            None
        }
    }
}

/// Resolve a probe port: a number, or the name of one of the container's ports.
pub fn resolve_port(port: &IntOrString, c: &Container) -> Result<u16, String> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n).map_err(|_| format!("invalid port {n}")),
        IntOrString::String(name) => {
            if let Ok(n) = name.parse::<u16>() {
                return Ok(n);
            }
            c.ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .and_then(|p| u16::try_from(p.container_port).ok())
                .ok_or_else(|| format!("the container has no port named {name:?}"))
        }
    }
}

/// Where an action runs: the pod's IP, and the container's main process
/// for exec actions.
#[derive(Debug, Clone)]
pub struct Target<'a> {
    pub pod_ip: &'a str,
    pub container: &'a Container,
    pub pid: Option<i32>,
    pub exe: &'a Path,
}

/// Run an action once. `Ok(())` passes; `Err` says why it failed, in the
/// kubelet's words.
pub async fn run(action: &Action, t: &Target<'_>, timeout: Duration) -> Result<(), String> {
    match tokio::time::timeout(timeout, run_inner(action, t)).await {
        Ok(r) => r,
        Err(_) => Err(match action {
            Action::Http(h) => format!(
                "Get \"http://{}:{}{}\": context deadline exceeded (Client.Timeout exceeded while awaiting headers)",
                h.host.as_deref().unwrap_or(t.pod_ip),
                resolve_port(&h.port, t.container).unwrap_or(0),
                h.path.as_deref().unwrap_or("/")
            ),
            Action::Exec(_) => format!("command timed out after {}s", timeout.as_secs()),
            _ => "timeout".into(),
        }),
    }
}

async fn run_inner(action: &Action, t: &Target<'_>) -> Result<(), String> {
    match action {
        Action::Unsupported(why) => Err((*why).into()),
        Action::Tcp(tcp) => {
            let port = resolve_port(&tcp.port, t.container)?;
            let host = tcp.host.as_deref().unwrap_or(t.pod_ip);
            tokio::net::TcpStream::connect((host, port))
                .await
                .map(|_| ())
                .map_err(|e| format!("dial tcp {host}:{port}: connect: {e}"))
        }
        Action::Http(h) => {
            let port = resolve_port(&h.port, t.container)?;
            let host = h.host.as_deref().unwrap_or(t.pod_ip);
            let path = h.path.as_deref().unwrap_or("/");
            let url = format!("http://{host}:{port}{path}");
            if h.scheme
                .as_deref()
                .is_some_and(|s| s.eq_ignore_ascii_case("HTTPS"))
            {
                return Err(format!(
                    "Get \"{url}\": HTTPS probes are not supported by mast yet"
                ));
            }
            let mut s = tokio::net::TcpStream::connect((host, port))
                .await
                .map_err(|e| format!("Get \"{url}\": dial tcp {host}:{port}: connect: {e}"))?;
            let mut req = format!("GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n");
            let mut has_ua = false;
            for hh in h.http_headers.iter().flatten() {
                has_ua |= hh.name.eq_ignore_ascii_case("user-agent");
                req.push_str(&format!("{}: {}\r\n", hh.name, hh.value));
            }
            if !has_ua {
                req.push_str("User-Agent: kube-probe/1.33\r\n");
            }
            req.push_str("Accept: */*\r\nConnection: close\r\n\r\n");
            s.write_all(req.as_bytes())
                .await
                .map_err(|e| format!("Get \"{url}\": {e}"))?;
            let mut buf = vec![0u8; 256];
            let mut n = 0;
            while n < 12 {
                let m = s
                    .read(&mut buf[n..])
                    .await
                    .map_err(|e| format!("Get \"{url}\": {e}"))?;
                if m == 0 {
                    break;
                }
                n += m;
            }
            let line = String::from_utf8_lossy(&buf[..n]);
            let code: u16 = line
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| format!("Get \"{url}\": malformed HTTP response"))?;
            if (200..400).contains(&code) {
                Ok(())
            } else {
                Err(format!("HTTP probe failed with statuscode: {code}"))
            }
        }
        Action::Exec(e) => {
            let cmd = e.command.clone().unwrap_or_default();
            if cmd.is_empty() {
                return Err("exec action has no command".into());
            }
            let pid = t.pid.ok_or("the container is not running")?;
            let out = tokio::process::Command::new(t.exe)
                .arg("nsexec")
                .arg(format!("--target={pid}"))
                .arg("--")
                .args(&cmd)
                .stdin(std::process::Stdio::null())
                .kill_on_drop(true)
                .output()
                .await
                .map_err(|e| format!("running the exec action: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                let mut msg = String::from_utf8_lossy(&out.stdout).into_owned();
                msg.push_str(&String::from_utf8_lossy(&out.stderr));
                let code = out.status.code().unwrap_or(-1);
                Err(if msg.trim().is_empty() {
                    format!("command {cmd:?} exited with {code}")
                } else {
                    format!("command {cmd:?} exited with {code}: {}", msg.trim())
                })
            }
        }
    }
}
