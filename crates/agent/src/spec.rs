//! From a pod's spec to what a process needs: the program an image names,
//! the command line, the environment (with `valueFrom` and `$(VAR)`
//! expansion) and cgroup limits. Pure functions, so they are unit-tested
//! without running anything.

use k8s_openapi::api::core::v1::{
    Container, EnvVar, ObjectFieldSelector, Pod, ResourceFieldSelector,
};
use mast_api::quantity::milli;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// The default PATH of a container, as container images commonly set it.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What an image reference runs as on the process runtime.
#[derive(Debug, Clone, PartialEq)]
pub enum ImageRef {
    /// A built-in `mast.dev/` image, run as `mast image NAME`.
    Builtin(&'static str),
    /// A program on the host's PATH.
    Program(PathBuf),
}

/// The last path component of an image reference, without tag or digest:
/// `docker.io/library/busybox:1.36` → `busybox`.
pub fn image_program_name(image: &str) -> &str {
    let no_digest = image.split('@').next().unwrap_or(image);
    let last = no_digest.rsplit('/').next().unwrap_or(no_digest);
    last.split(':').next().unwrap_or(last)
}

/// Resolve an image, or say why it cannot run and what to do.
pub fn resolve_image(image: &str, path: &str) -> Result<ImageRef, String> {
    if let Some(i) = mast_images::lookup(image) {
        return Ok(ImageRef::Builtin(i.name));
    }
    if image.starts_with(mast_images::PREFIX) {
        let names: Vec<String> = mast_images::IMAGES
            .iter()
            .map(|i| format!("{}{}", mast_images::PREFIX, i.name))
            .collect();
        return Err(format!(
            "failed to pull image {image:?}: mast has no built-in image by that name; built-in images are: {}",
            names.join(", ")
        ));
    }
    let prog = image_program_name(image);
    if prog.is_empty()
        || !prog
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-+".contains(c))
    {
        return Err(format!(
            "failed to pull image {image:?}: invalid image reference"
        ));
    }
    match find_on_path(prog, path) {
        Some(p) => Ok(ImageRef::Program(p)),
        None => Err(format!(
            "failed to pull image {image:?}: the process runtime runs an image as the program named by its last path component, and there is no {prog:?} on PATH ({path}); install it (for example `apt-get install {prog}`), or use a built-in image such as mast.dev/echo"
        )),
    }
}

/// For an image that is a multi-call binary (busybox), a directory of its
/// applets as symlinks, created once under `data_dir`: appended to the
/// container's PATH, `nslookup` or `wget` run as they do in the busybox
/// image, while the host's own programs still come first. `nslookup` is
/// mast's own (`exe`), which resolves as busybox 1.28 did (see
/// `mast_images::nslookup`).
pub fn applet_dir(data_dir: &Path, program: &Path, exe: &Path) -> Option<PathBuf> {
    if program.file_name()? != "busybox" {
        return None;
    }
    let dir = data_dir.join("applets").join("busybox");
    if !dir.join(".done").exists() {
        let out = std::process::Command::new(program)
            .arg("--list")
            .output()
            .ok()?;
        std::fs::create_dir_all(&dir).ok()?;
        for applet in String::from_utf8_lossy(&out.stdout).lines() {
            let applet = applet.trim();
            if !applet.is_empty() && !applet.contains('/') && applet != "nslookup" {
                let _ = std::os::unix::fs::symlink(program, dir.join(applet));
            }
        }
        std::fs::write(dir.join(".done"), "").ok()?;
    }
    // This binary may have moved since the directory was made.
    let link = dir.join("nslookup");
    if std::fs::read_link(&link).ok().as_deref() != Some(exe) {
        let _ = std::fs::remove_file(&link);
        let _ = std::os::unix::fs::symlink(exe, &link);
    }
    Some(dir)
}

/// Look a program up on a PATH string.
pub fn find_on_path(prog: &str, path: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    if prog.contains('/') {
        let p = PathBuf::from(prog);
        return p.is_file().then_some(p);
    }
    path.split(':').filter(|d| !d.is_empty()).find_map(|d| {
        let p = Path::new(d).join(prog);
        let ok = p
            .metadata()
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false);
        ok.then_some(p)
    })
}

/// The command line: `command` replaces the image's entrypoint, `args`
/// follow it, as in Kubernetes (images here have no default cmd).
pub fn argv(entrypoint: Vec<String>, c: &Container, env: &HashMap<String, String>) -> Vec<String> {
    let expand = |v: &Vec<String>| v.iter().map(|s| expand_vars(s, env)).collect::<Vec<_>>();
    let mut out = match &c.command {
        Some(cmd) if !cmd.is_empty() => expand(cmd),
        _ => entrypoint,
    };
    if let Some(args) = &c.args {
        out.extend(expand(args));
    }
    out
}

/// Kubernetes' `$(VAR)` expansion: known variables are replaced, unknown
/// ones are left as written, and `$$` escapes a dollar.
pub fn expand_vars(s: &str, env: &HashMap<String, String>) -> String {
    let mut out = String::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' && i + 1 < b.len() {
            if b[i + 1] == b'$' {
                out.push('$');
                i += 2;
                continue;
            }
            if b[i + 1] == b'(' {
                if let Some(end) = s[i + 2..].find(')') {
                    let name = &s[i + 2..i + 2 + end];
                    if let Some(v) = env.get(name) {
                        out.push_str(v);
                        i += 3 + end;
                        continue;
                    }
                }
            }
        }
        let ch = s[i..].chars().next().unwrap_or('\u{fffd}');
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

/// A ConfigMap's or Secret's data, as the agent fetched it; `None` when the
/// object does not exist.
pub type Sources = HashMap<(&'static str, String), Option<BTreeMap<String, String>>>;

/// The ConfigMaps and Secrets a container's environment reads.
pub fn env_sources(c: &Container) -> Vec<(&'static str, String)> {
    let mut out = vec![];
    for e in c.env_from.iter().flatten() {
        if let Some(r) = &e.config_map_ref {
            out.push(("configmap", r.name.clone()));
        }
        if let Some(r) = &e.secret_ref {
            out.push(("secret", r.name.clone()));
        }
    }
    for e in c.env.iter().flatten() {
        if let Some(vf) = &e.value_from {
            if let Some(r) = &vf.config_map_key_ref {
                out.push(("configmap", r.name.clone()));
            }
            if let Some(r) = &vf.secret_key_ref {
                out.push(("secret", r.name.clone()));
            }
        }
    }
    out
}

/// What the downward API may read about a pod.
#[derive(Debug, Clone, Default)]
pub struct PodFacts {
    pub pod_ip: String,
    pub host_ip: String,
    /// Node allocatable, the default for unset limits.
    pub node_cpu: String,
    pub node_memory: String,
}

/// The value of a `fieldRef`.
pub fn field_value(pod: &Pod, f: &ObjectFieldSelector, facts: &PodFacts) -> Result<String, String> {
    let m = &pod.metadata;
    let quoted = |map: &Option<BTreeMap<String, String>>| {
        map.iter()
            .flatten()
            .map(|(k, v)| format!("{k}={v:?}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let subscript = |path: &str, prefix: &str| {
        path.strip_prefix(prefix)
            .and_then(|r| r.strip_prefix("['"))
            .and_then(|r| r.strip_suffix("']"))
            .map(str::to_owned)
    };
    let p = f.field_path.as_str();
    Ok(match p {
        "metadata.name" => m.name.clone().unwrap_or_default(),
        "metadata.namespace" => m.namespace.clone().unwrap_or_default(),
        "metadata.uid" => m.uid.clone().unwrap_or_default(),
        "metadata.labels" => quoted(&m.labels),
        "metadata.annotations" => quoted(&m.annotations),
        "spec.nodeName" => pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default(),
        "spec.serviceAccountName" => pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into()),
        "status.hostIP" | "status.hostIPs" => facts.host_ip.clone(),
        "status.podIP" | "status.podIPs" => facts.pod_ip.clone(),
        _ => {
            if let Some(k) = subscript(p, "metadata.labels") {
                m.labels
                    .as_ref()
                    .and_then(|l| l.get(&k).cloned())
                    .unwrap_or_default()
            } else if let Some(k) = subscript(p, "metadata.annotations") {
                m.annotations
                    .as_ref()
                    .and_then(|l| l.get(&k).cloned())
                    .unwrap_or_default()
            } else {
                return Err(format!("unsupported fieldRef fieldPath {p:?}"));
            }
        }
    })
}

/// The value of a `resourceFieldRef`: the container's limit or request,
/// divided by the divisor and rounded up, as the kubelet computes it.
pub fn resource_value(
    pod: &Pod,
    own: &Container,
    r: &ResourceFieldSelector,
    facts: &PodFacts,
) -> Result<String, String> {
    let c = match &r.container_name {
        Some(n) if !n.is_empty() => pod
            .spec
            .iter()
            .flat_map(|s| s.containers.iter())
            .find(|c| &c.name == n)
            .ok_or_else(|| format!("resourceFieldRef names no container {n:?}"))?,
        _ => own,
    };
    let (kind, res) = r
        .resource
        .split_once('.')
        .ok_or_else(|| format!("unsupported resourceFieldRef resource {:?}", r.resource))?;
    let res_of = |m: &Option<
        BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
    >| { m.as_ref().and_then(|m| m.get(res)).map(|q| q.0.clone()) };
    let value = match kind {
        "limits" => res_of(&c.resources.as_ref().and_then(|r| r.limits.clone())),
        "requests" => res_of(&c.resources.as_ref().and_then(|r| r.requests.clone())),
        _ => None,
    };
    let value = value.unwrap_or_else(|| match res {
        "cpu" if kind == "limits" => facts.node_cpu.clone(),
        "memory" if kind == "limits" => facts.node_memory.clone(),
        _ => "0".into(),
    });
    let divisor = r
        .divisor
        .as_ref()
        .map(|d| d.0.clone())
        .unwrap_or_else(|| "1".into());
    let (v, d) = (milli(&value), milli(&divisor));
    match (v, d) {
        (Some(v), Some(d)) if d > 0 => Ok(((v + d - 1) / d).to_string()),
        _ => Err(format!(
            "cannot compute {} with divisor {divisor:?}",
            r.resource
        )),
    }
}

/// Why a container's environment cannot be built yet: `CreateContainerConfigError`.
pub type ConfigError = String;

/// The container's environment: defaults, then `envFrom`, then `env`, each
/// value with `$(VAR)` expanded against what came before.
pub fn build_env(
    pod: &Pod,
    c: &Container,
    base: Vec<(String, String)>,
    sources: &Sources,
    facts: &PodFacts,
) -> Result<Vec<(String, String)>, ConfigError> {
    let mut order: Vec<String> = vec![];
    let mut map: HashMap<String, String> = HashMap::new();
    let set = |k: String, v: String, order: &mut Vec<String>, map: &mut HashMap<String, String>| {
        if !map.contains_key(&k) {
            order.push(k.clone());
        }
        map.insert(k, v);
    };
    for (k, v) in base {
        set(k, v, &mut order, &mut map);
    }
    let fetch = |kind: &'static str,
                 name: &str,
                 optional: bool|
     -> Result<Option<&BTreeMap<String, String>>, ConfigError> {
        match sources.get(&(kind, name.to_owned())) {
            Some(Some(d)) => Ok(Some(d)),
            _ if optional => Ok(None),
            _ => Err(format!("{kind} {name:?} not found")),
        }
    };
    for e in c.env_from.iter().flatten() {
        let prefix = e.prefix.clone().unwrap_or_default();
        let data = if let Some(r) = &e.config_map_ref {
            fetch("configmap", &r.name, r.optional.unwrap_or(false))?
        } else if let Some(r) = &e.secret_ref {
            fetch("secret", &r.name, r.optional.unwrap_or(false))?
        } else {
            None
        };
        for (k, v) in data.into_iter().flatten() {
            set(format!("{prefix}{k}"), v.clone(), &mut order, &mut map);
        }
    }
    for EnvVar {
        name,
        value,
        value_from,
    } in c.env.iter().flatten()
    {
        let v = if let Some(vf) = value_from {
            if let Some(f) = &vf.field_ref {
                Some(field_value(pod, f, facts)?)
            } else if let Some(r) = &vf.resource_field_ref {
                Some(resource_value(pod, c, r, facts)?)
            } else if let Some(r) = &vf.config_map_key_ref {
                let optional = r.optional.unwrap_or(false);
                match fetch("configmap", &r.name, optional)? {
                    Some(d) => match d.get(&r.key) {
                        Some(v) => Some(v.clone()),
                        None if optional => None,
                        None => {
                            return Err(format!(
                                "couldn't find key {} in ConfigMap {}/{}",
                                r.key,
                                pod.metadata.namespace.as_deref().unwrap_or(""),
                                r.name
                            ))
                        }
                    },
                    None => None,
                }
            } else if let Some(r) = &vf.secret_key_ref {
                let optional = r.optional.unwrap_or(false);
                match fetch("secret", &r.name, optional)? {
                    Some(d) => match d.get(&r.key) {
                        Some(v) => Some(v.clone()),
                        None if optional => None,
                        None => {
                            return Err(format!(
                                "couldn't find key {} in Secret {}/{}",
                                r.key,
                                pod.metadata.namespace.as_deref().unwrap_or(""),
                                r.name
                            ))
                        }
                    },
                    None => None,
                }
            } else {
                None
            }
        } else {
            Some(expand_vars(value.as_deref().unwrap_or(""), &map))
        };
        if let Some(v) = v {
            set(name.clone(), v, &mut order, &mut map);
        }
    }
    Ok(order
        .into_iter()
        .map(|k| {
            let v = map.remove(&k).unwrap_or_default();
            (k, v)
        })
        .collect())
}

/// The kubelet's Service environment variables (`FOO_SERVICE_HOST`,
/// `FOO_SERVICE_PORT`, `FOO_SERVICE_PORT_<NAME>`, `FOO_PORT` and the
/// `FOO_PORT_<port>_<PROTO>` family) for the Services that exist when the
/// container starts. Services without a cluster IP (headless, ExternalName)
/// get none. `services` come sorted by name, as the kubelet orders them.
pub fn service_env(services: &[k8s_openapi::api::core::v1::Service]) -> Vec<(String, String)> {
    let mut out = vec![];
    for svc in services {
        let Some(spec) = &svc.spec else { continue };
        let ip = spec.cluster_ip.clone().unwrap_or_default();
        if ip.is_empty() || ip == "None" {
            continue;
        }
        let name = svc
            .metadata
            .name
            .clone()
            .unwrap_or_default()
            .to_ascii_uppercase()
            .replace('-', "_");
        let ports = spec.ports.clone().unwrap_or_default();
        let Some(first) = ports.first() else { continue };
        out.push((format!("{name}_SERVICE_HOST"), ip.clone()));
        out.push((format!("{name}_SERVICE_PORT"), first.port.to_string()));
        for p in &ports {
            if let Some(pn) = p.name.as_deref().filter(|n| !n.is_empty()) {
                out.push((
                    format!(
                        "{name}_SERVICE_PORT_{}",
                        pn.to_ascii_uppercase().replace('-', "_")
                    ),
                    p.port.to_string(),
                ));
            }
        }
        let proto = |p: &k8s_openapi::api::core::v1::ServicePort| {
            p.protocol.clone().unwrap_or_else(|| "TCP".into())
        };
        out.push((
            format!("{name}_PORT"),
            format!(
                "{}://{ip}:{}",
                proto(first).to_ascii_lowercase(),
                first.port
            ),
        ));
        for p in &ports {
            let pr = proto(p);
            let prefix = format!("{name}_PORT_{}_{}", p.port, pr.to_ascii_uppercase());
            out.push((
                prefix.clone(),
                format!("{}://{ip}:{}", pr.to_ascii_lowercase(), p.port),
            ));
            out.push((format!("{prefix}_PROTO"), pr.to_ascii_lowercase()));
            out.push((format!("{prefix}_PORT"), p.port.to_string()));
            out.push((format!("{prefix}_ADDR"), ip.clone()));
        }
    }
    out
}

/// A pod's `/etc/resolv.conf`, as the kubelet writes it for its
/// `dnsPolicy`, or `None` when the pod sees the host's own file.
/// `cluster_dns` is the cluster DNS server, when the pod can reach one.
pub fn resolv_conf(
    pod: &Pod,
    cluster_dns: Option<std::net::Ipv4Addr>,
    domain: &str,
    host: &str,
) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    let host_network = spec.host_network.unwrap_or(false);
    let policy = spec.dns_policy.as_deref().unwrap_or("ClusterFirst");
    type Options = Vec<(String, Option<String>)>;
    let (mut servers, mut search, mut options): (Vec<String>, Vec<String>, Options) = match policy {
        "None" => (vec![], vec![], vec![]),
        "ClusterFirst" | "ClusterFirstWithHostNet"
            if cluster_dns.is_some() && (!host_network || policy == "ClusterFirstWithHostNet") =>
        {
            let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
            let mut search = vec![
                format!("{ns}.svc.{domain}"),
                format!("svc.{domain}"),
                domain.to_string(),
            ];
            search.extend(
                host.lines()
                    .filter_map(|l| l.trim().strip_prefix("search"))
                    .flat_map(|l| l.split_whitespace().map(str::to_owned)),
            );
            (
                vec![cluster_dns?.to_string()],
                search,
                vec![("ndots".into(), Some("5".into()))],
            )
        }
        _ if spec.dns_config.is_none() => return None,
        _ => {
            let servers = host
                .lines()
                .filter_map(|l| l.trim().strip_prefix("nameserver"))
                .map(|l| l.trim().to_owned())
                .collect();
            (servers, vec![], vec![])
        }
    };
    if let Some(c) = &spec.dns_config {
        servers.extend(c.nameservers.iter().flatten().cloned());
        search.extend(c.searches.iter().flatten().cloned());
        for o in c.options.iter().flatten() {
            let Some(name) = o.name.clone() else { continue };
            options.retain(|(n, _)| *n != name);
            options.push((name, o.value.clone()));
        }
    }
    let mut seen = std::collections::HashSet::new();
    search.retain(|s| seen.insert(s.clone()));
    let mut out = String::new();
    for s in servers.iter().take(3) {
        out.push_str(&format!("nameserver {s}\n"));
    }
    if !search.is_empty() {
        out.push_str(&format!("search {}\n", search.join(" ")));
    }
    if !options.is_empty() {
        let opts: Vec<String> = options
            .iter()
            .map(|(n, v)| match v {
                Some(v) => format!("{n}:{v}"),
                None => n.clone(),
            })
            .collect();
        out.push_str(&format!("options {}\n", opts.join(" ")));
    }
    Some(out)
}

/// A pod's `/etc/hosts`, as the kubelet writes it for a pod with its own
/// network namespace.
pub fn hosts_file(pod: &Pod, ip: &str, domain: &str) -> String {
    let mut out = String::from(
        "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n",
    );
    let spec = pod.spec.as_ref();
    let hostname = spec
        .and_then(|s| s.hostname.clone())
        .or_else(|| pod.metadata.name.clone())
        .unwrap_or_default();
    let names = match spec.and_then(|s| s.subdomain.as_deref()) {
        Some(sub) if !sub.is_empty() => {
            let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
            format!("{hostname}.{sub}.{ns}.svc.{domain}\t{hostname}")
        }
        _ => hostname,
    };
    out.push_str(&format!("{ip}\t{names}\n"));
    let aliases: Vec<_> = spec
        .and_then(|s| s.host_aliases.clone())
        .unwrap_or_default();
    if !aliases.is_empty() {
        out.push_str("\n# Entries added by HostAliases.\n");
        for a in aliases {
            out.push_str(&format!(
                "{}\t{}\n",
                a.ip,
                a.hostnames.unwrap_or_default().join("\t")
            ));
        }
    }
    out
}

/// cgroup v1 limits for a container, as files and values.
pub fn cgroup_limits(
    c: &Container,
    pids_max: Option<u64>,
) -> Vec<(&'static str, &'static str, String)> {
    let get = |which: &str, res: &str| {
        let r = c.resources.as_ref()?;
        let m = if which == "limits" {
            r.limits.as_ref()
        } else {
            r.requests.as_ref()
        }?;
        milli(&m.get(res)?.0)
    };
    let mut out = vec![];
    if let Some(mem) = get("limits", "memory") {
        out.push(("memory", "memory.limit_in_bytes", (mem / 1000).to_string()));
    }
    let period = 100_000i128;
    if let Some(cpu) = get("limits", "cpu") {
        // 1 CPU = one period of quota; at least 1 ms, as the kubelet does.
        out.push(("cpu", "cpu.cfs_period_us", period.to_string()));
        out.push((
            "cpu",
            "cpu.cfs_quota_us",
            (cpu * period / 1000).max(1000).to_string(),
        ));
    }
    let shares = get("requests", "cpu").or_else(|| get("limits", "cpu"));
    if let Some(cpu) = shares {
        out.push(("cpu", "cpu.shares", (cpu * 1024 / 1000).max(2).to_string()));
    }
    if let Some(p) = pids_max {
        out.push(("pids", "pids.max", p.to_string()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn image_names() {
        assert_eq!(image_program_name("busybox"), "busybox");
        assert_eq!(
            image_program_name("docker.io/library/busybox:1.36"),
            "busybox"
        );
        assert_eq!(
            image_program_name("registry:5000/x/sleep@sha256:abc"),
            "sleep"
        );
        assert_eq!(
            resolve_image("mast.dev/echo:v2", ""),
            Ok(ImageRef::Builtin("echo"))
        );
        let e = resolve_image("mast.dev/nope", "").unwrap_err();
        assert!(e.contains("mast.dev/echo"), "{e}");
        let e = resolve_image("no-such-prog-xyz:1", "/usr/bin").unwrap_err();
        assert!(e.contains("apt-get install no-such-prog-xyz"), "{e}");
        assert_eq!(resolve_image("sh", "/bin:/usr/bin").map(|_| ()), Ok(()));
    }

    #[test]
    fn expansion() {
        let env: HashMap<String, String> = [("A".to_owned(), "x".to_owned())].into();
        assert_eq!(expand_vars("$(A)-$(B)-$$(A)-$", &env), "x-$(B)-$(A)-$");
        assert_eq!(expand_vars("héllo $(A)", &env), "héllo x");
    }

    #[test]
    fn command_and_args() {
        let c: Container =
            serde_json::from_value(json!({"name": "c", "args": ["sleep", "$(T)"]})).unwrap();
        let env: HashMap<String, String> = [("T".to_owned(), "5".to_owned())].into();
        assert_eq!(
            argv(vec!["busybox".into()], &c, &env),
            ["busybox", "sleep", "5"]
        );
        let c: Container =
            serde_json::from_value(json!({"name": "c", "command": ["sh", "-c"], "args": ["true"]}))
                .unwrap();
        assert_eq!(argv(vec!["busybox".into()], &c, &env), ["sh", "-c", "true"]);
    }

    #[test]
    fn env_value_from() {
        let p = pod(
            json!({"metadata": {"name": "p", "namespace": "ns", "labels": {"app": "a"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "resources": {"limits": {"memory": "64Mi"}},
              "envFrom": [{"prefix": "CM_", "configMapRef": {"name": "cm"}}],
              "env": [
                {"name": "NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
                {"name": "PASS", "valueFrom": {"secretKeyRef": {"name": "s", "key": "pw"}}},
                {"name": "GREETING", "value": "hi $(NAME) on $(CM_K)"}]}]}}),
        );
        let c = p.spec.as_ref().unwrap().containers[0].clone();
        let mut sources: Sources = HashMap::new();
        sources.insert(
            ("configmap", "cm".into()),
            Some([("K".to_owned(), "v".to_owned())].into()),
        );
        sources.insert(
            ("secret", "s".into()),
            Some([("pw".to_owned(), "sekret".to_owned())].into()),
        );
        let facts = PodFacts {
            pod_ip: "127.1.0.5".into(),
            ..Default::default()
        };
        let env = build_env(&p, &c, vec![], &sources, &facts).unwrap();
        let m: HashMap<_, _> = env.into_iter().collect();
        assert_eq!(m["NAME"], "p");
        assert_eq!(m["APP"], "a");
        assert_eq!(m["IP"], "127.1.0.5");
        assert_eq!(m["MEM"], "64");
        assert_eq!(m["PASS"], "sekret");
        assert_eq!(m["GREETING"], "hi p on v");
        sources.remove(&("secret", "s".into()));
        let e = build_env(&p, &c, vec![], &sources, &facts).unwrap_err();
        assert_eq!(e, "secret \"s\" not found");
    }

    #[test]
    fn service_links() {
        let svc: k8s_openapi::api::core::v1::Service = serde_json::from_value(json!({
            "metadata": {"name": "my-db"},
            "spec": {"clusterIP": "10.43.0.9", "ports": [{"name": "sql", "port": 5432}, {"port": 53, "protocol": "UDP"}]}}))
        .unwrap();
        let headless: k8s_openapi::api::core::v1::Service = serde_json::from_value(json!({
            "metadata": {"name": "h"}, "spec": {"clusterIP": "None", "ports": [{"port": 1}]}}))
        .unwrap();
        let env: HashMap<String, String> = service_env(&[svc, headless]).into_iter().collect();
        assert_eq!(env["MY_DB_SERVICE_HOST"], "10.43.0.9");
        assert_eq!(env["MY_DB_SERVICE_PORT"], "5432");
        assert_eq!(env["MY_DB_SERVICE_PORT_SQL"], "5432");
        assert_eq!(env["MY_DB_PORT"], "tcp://10.43.0.9:5432");
        assert_eq!(env["MY_DB_PORT_5432_TCP"], "tcp://10.43.0.9:5432");
        assert_eq!(env["MY_DB_PORT_5432_TCP_PROTO"], "tcp");
        assert_eq!(env["MY_DB_PORT_5432_TCP_PORT"], "5432");
        assert_eq!(env["MY_DB_PORT_5432_TCP_ADDR"], "10.43.0.9");
        assert_eq!(env["MY_DB_PORT_53_UDP"], "udp://10.43.0.9:53");
        assert!(!env.keys().any(|k| k.starts_with("H_")));
    }

    #[test]
    fn limits() {
        let c: Container = serde_json::from_value(
            json!({"name": "c", "resources": {"limits": {"memory": "128Mi", "cpu": "500m"}}}),
        )
        .unwrap();
        let l = cgroup_limits(&c, Some(100));
        assert!(l.contains(&("memory", "memory.limit_in_bytes", "134217728".into())));
        assert!(l.contains(&("cpu", "cpu.cfs_quota_us", "50000".into())));
        assert!(l.contains(&("cpu", "cpu.shares", "512".into())));
        assert!(l.contains(&("pids", "pids.max", "100".into())));
    }

    #[test]
    fn resolv_conf_follows_dns_policy() {
        let pod = |spec: serde_json::Value| -> Pod {
            serde_json::from_value(
                serde_json::json!({"metadata": {"name": "p", "namespace": "shop"}, "spec": spec}),
            )
            .unwrap()
        };
        let host = "nameserver 10.255.255.53\nsearch corp.example\n";
        let dns = Some("10.42.0.1".parse().unwrap());
        let base = serde_json::json!({"containers": []});
        assert_eq!(
            resolv_conf(&pod(base.clone()), dns, "cluster.local", host).unwrap(),
            "nameserver 10.42.0.1\nsearch shop.svc.cluster.local svc.cluster.local cluster.local corp.example\noptions ndots:5\n"
        );
        // Without a reachable cluster DNS, or on the host network, the pod
        // sees the host's file.
        assert_eq!(
            resolv_conf(&pod(base.clone()), None, "cluster.local", host),
            None
        );
        assert_eq!(
            resolv_conf(
                &pod(serde_json::json!({"containers": [], "hostNetwork": true})),
                dns,
                "cluster.local",
                host
            ),
            None
        );
        assert_eq!(
            resolv_conf(
                &pod(serde_json::json!({"containers": [], "dnsPolicy": "None",
                    "dnsConfig": {"nameservers": ["1.2.3.4"], "searches": ["a.b"], "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]}})),
                dns, "cluster.local", host
            )
            .unwrap(),
            "nameserver 1.2.3.4\nsearch a.b\noptions ndots:2 edns0\n"
        );
        let merged = resolv_conf(
            &pod(serde_json::json!({"containers": [], "dnsConfig": {"options": [{"name": "ndots", "value": "1"}]}})),
            dns, "cluster.local", host,
        )
        .unwrap();
        assert!(merged.ends_with("options ndots:1\n"), "{merged}");
    }

    #[test]
    fn hosts_file_names_the_pod() {
        let pod: Pod = serde_json::from_value(serde_json::json!({"metadata": {"name": "web-0", "namespace": "shop"},
            "spec": {"containers": [], "subdomain": "web", "hostAliases": [{"ip": "10.1.2.3", "hostnames": ["foo", "bar"]}]}}))
        .unwrap();
        let h = hosts_file(&pod, "10.42.0.9", "cluster.local");
        assert!(
            h.contains("\n10.42.0.9\tweb-0.web.shop.svc.cluster.local\tweb-0\n"),
            "{h}"
        );
        assert!(h.contains("10.1.2.3\tfoo\tbar\n"), "{h}");
        assert!(h.starts_with("# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n"));
    }
}
