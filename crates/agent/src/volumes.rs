//! Pod volumes on the process runtime: each volume becomes a host directory
//! (or file) that the pod's containers see at their `mountPath` through a
//! bind mount in their own mount namespace.

use crate::spec::{field_value, resource_value, PodFacts};
use crate::sys::BindMount;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, DownwardAPIVolumeFile, KeyToPath, Pod, Secret, Volume,
};
use kube::{Api, Client};
use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Where each of a pod's volumes lives on the host.
pub type VolumePaths = HashMap<String, PathBuf>;

/// Read one object and turn it into its keys; `None` if it does not exist.
async fn keys_of<K>(
    client: &Client,
    ns: &str,
    name: &str,
    what: &str,
    keys: fn(K) -> BTreeMap<String, Vec<u8>>,
) -> Result<Option<BTreeMap<String, Vec<u8>>>, String>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    match api.get_opt(name).await {
        Ok(found) => Ok(found.map(keys)),
        Err(e) => Err(format!("fetching {what} {name:?}: {e}")),
    }
}

/// A ConfigMap's keys (`data` and `binaryData`), or `None` if it does not exist.
pub(crate) async fn configmap(
    client: &Client,
    ns: &str,
    name: &str,
) -> Result<Option<BTreeMap<String, Vec<u8>>>, String> {
    keys_of(client, ns, name, "configmap", |cm: ConfigMap| {
        let text = cm
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes()));
        let binary = cm
            .binary_data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0));
        text.chain(binary).collect()
    })
    .await
}

/// A Secret's keys (`data` and `stringData`), or `None` if it does not exist.
pub(crate) async fn secret(
    client: &Client,
    ns: &str,
    name: &str,
) -> Result<Option<BTreeMap<String, Vec<u8>>>, String> {
    keys_of(client, ns, name, "secret", |s: Secret| {
        let data = s
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0));
        let text = s
            .string_data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes()));
        data.chain(text).collect()
    })
    .await
}

fn write_file(dir: &Path, rel: &str, data: &[u8], mode: i32) -> Result<(), String> {
    if rel.starts_with('/') || rel.split('/').any(|c| c == "..") {
        return Err(format!(
            "invalid path {rel:?}: must be relative and may not contain '..'"
        ));
    }
    let p = dir.join(rel);
    let io = |e: std::io::Error| format!("writing {}: {e}", p.display());
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    std::fs::write(&p, data).map_err(io)?;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode as u32 & 0o777))
        .map_err(io)?;
    Ok(())
}

/// Write a ConfigMap's or Secret's keys (all, or the listed `items`).
fn write_keys(
    dir: &Path,
    data: &BTreeMap<String, Vec<u8>>,
    items: &Option<Vec<KeyToPath>>,
    mode: i32,
    what: &str,
    optional: bool,
) -> Result<(), String> {
    match items {
        Some(items) => {
            for it in items {
                match data.get(&it.key) {
                    Some(v) => write_file(dir, &it.path, v, it.mode.unwrap_or(mode))?,
                    None if optional => {}
                    None => {
                        return Err(format!(
                            "configuration key {:?} not found in {what}",
                            it.key
                        ))
                    }
                }
            }
        }
        None => {
            for (k, v) in data {
                write_file(dir, k, v, mode)?;
            }
        }
    }
    Ok(())
}

fn write_downward(
    dir: &Path,
    pod: &Pod,
    items: &[DownwardAPIVolumeFile],
    mode: i32,
    facts: &PodFacts,
) -> Result<(), String> {
    let first = pod
        .spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .cloned()
        .unwrap_or_default();
    for it in items {
        let v = if let Some(f) = &it.field_ref {
            field_value(pod, f, facts)?
        } else if let Some(r) = &it.resource_field_ref {
            resource_value(pod, &first, r, facts)?
        } else {
            continue;
        };
        write_file(dir, &it.path, v.as_bytes(), it.mode.unwrap_or(mode))?;
    }
    Ok(())
}

/// Create every volume of the pod under `dir`. The error is the message of
/// the kubelet's `FailedMount` event: `MountVolume.SetUp failed for volume ...`.
pub async fn prepare(
    client: &Client,
    pod: &Pod,
    dir: &Path,
    facts: &PodFacts,
) -> Result<VolumePaths, String> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let mut out = HashMap::new();
    for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        let path = prepare_one(client, &ns, pod, v, &dir.join(&v.name), facts)
            .await
            .map_err(|e| format!("MountVolume.SetUp failed for volume {:?} : {e}", v.name))?;
        out.insert(v.name.clone(), path);
    }
    Ok(out)
}

async fn prepare_one(
    client: &Client,
    ns: &str,
    pod: &Pod,
    v: &Volume,
    dir: &Path,
    facts: &PodFacts,
) -> Result<PathBuf, String> {
    let mkdir =
        |d: &Path| std::fs::create_dir_all(d).map_err(|e| format!("creating {}: {e}", d.display()));
    if v.empty_dir.is_some() {
        mkdir(dir)?;
        // Anyone in the pod may write to an emptyDir, as in Kubernetes.
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777));
        return Ok(dir.to_owned());
    }
    if let Some(h) = &v.host_path {
        let p = PathBuf::from(&h.path);
        match h.type_.as_deref().unwrap_or("") {
            "DirectoryOrCreate" => mkdir(&p)?,
            "FileOrCreate" if !p.exists() => {
                if let Some(parent) = p.parent() {
                    mkdir(parent)?;
                }
                std::fs::write(&p, b"").map_err(|e| format!("creating {}: {e}", p.display()))?;
            }
            "Directory" if !p.is_dir() => {
                return Err(format!(
                    "hostPath type check failed: {} is not a directory",
                    h.path
                ))
            }
            "File" if !p.is_file() => {
                return Err(format!(
                    "hostPath type check failed: {} is not a file",
                    h.path
                ))
            }
            "Socket" | "CharDevice" | "BlockDevice" if !p.exists() => {
                return Err(format!(
                    "hostPath type check failed: {} does not exist",
                    h.path
                ))
            }
            _ => {}
        }
        return Ok(p);
    }
    // Content volumes are written to a staging directory and then moved
    // into place file by file, so that the directory a running container has
    // mounted stays the same and sees the new data (as the kubelet refreshes
    // ConfigMap and Secret volumes).
    let staging = dir.with_extension("staging");
    let _ = std::fs::remove_dir_all(&staging);
    mkdir(&staging)?;
    let filled = fill_content(client, ns, pod, v, &staging, facts).await;
    let synced = filled.and_then(|_| sync_dir(&staging, dir));
    let _ = std::fs::remove_dir_all(&staging);
    synced.map(|_| dir.to_owned())
}

/// Move every file of `src` into `dst` (replacing, atomically per file) and
/// remove what `dst` has that `src` does not.
fn sync_dir(src: &Path, dst: &Path) -> Result<(), String> {
    fn files(root: &Path, at: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(at).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                files(root, &p, out);
            } else if let Ok(rel) = p.strip_prefix(root) {
                out.push(rel.to_owned());
            }
        }
    }
    let io = |e: std::io::Error| format!("updating {}: {e}", dst.display());
    std::fs::create_dir_all(dst).map_err(io)?;
    let mut new = vec![];
    files(src, src, &mut new);
    for rel in &new {
        let to = dst.join(rel);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        std::fs::rename(src.join(rel), &to).map_err(io)?;
    }
    let mut old = vec![];
    files(dst, dst, &mut old);
    for rel in old.iter().filter(|r| !new.contains(r)) {
        let _ = std::fs::remove_file(dst.join(rel));
    }
    Ok(())
}

/// Write a content volume's files (configMap, secret, downwardAPI,
/// projected) into `dir`.
async fn fill_content(
    client: &Client,
    ns: &str,
    pod: &Pod,
    v: &Volume,
    dir: &Path,
    facts: &PodFacts,
) -> Result<(), String> {
    let src = |kind, name: &str, items, mode: Option<i32>, optional: Option<bool>| KeySource {
        kind,
        name: name.to_owned(),
        items,
        mode: mode.unwrap_or(0o644),
        optional: optional.unwrap_or(false),
    };
    if let Some(c) = &v.config_map {
        let s = src("configmap", &c.name, &c.items, c.default_mode, c.optional);
        s.write(client, ns, dir).await?;
        return Ok(());
    }
    if let Some(sec) = &v.secret {
        let name = sec.secret_name.clone().unwrap_or_default();
        let s = src("secret", &name, &sec.items, sec.default_mode, sec.optional);
        s.write(client, ns, dir).await?;
        return Ok(());
    }
    if let Some(d) = &v.downward_api {
        write_downward(
            dir,
            pod,
            d.items.as_deref().unwrap_or(&[]),
            d.default_mode.unwrap_or(0o644),
            facts,
        )?;
        return Ok(());
    }
    if let Some(p) = &v.projected {
        let mode = p.default_mode.unwrap_or(0o644);
        for source in p.sources.iter().flatten() {
            if let Some(c) = &source.config_map {
                let s = src("configmap", &c.name, &c.items, Some(mode), c.optional);
                s.write(client, ns, dir).await?;
            }
            if let Some(sec) = &source.secret {
                let s = src("secret", &sec.name, &sec.items, Some(mode), sec.optional);
                s.write(client, ns, dir).await?;
            }
            if let Some(d) = &source.downward_api {
                write_downward(dir, pod, d.items.as_deref().unwrap_or(&[]), mode, facts)?;
            }
            if let Some(t) = &source.service_account_token {
                // Bound service account tokens need the TokenRequest API,
                // which mast does not serve yet; an empty file keeps paths
                // valid for programs that only check for it.
                write_file(dir, &t.path, b"", mode)?;
            }
        }
        return Ok(());
    }
    Err("this volume type is not supported by mast's process runtime (supported: emptyDir, hostPath, configMap, secret, downwardAPI, projected)".into())
}

/// A ConfigMap or Secret whose keys become files.
struct KeySource<'a> {
    kind: &'static str,
    name: String,
    items: &'a Option<Vec<KeyToPath>>,
    mode: i32,
    optional: bool,
}

impl KeySource<'_> {
    async fn write(&self, client: &Client, ns: &str, dir: &Path) -> Result<(), String> {
        let data = if self.kind == "configmap" {
            configmap(client, ns, &self.name).await?
        } else {
            secret(client, ns, &self.name).await?
        };
        let what = format!("{} {:?}", self.kind, self.name);
        match data {
            Some(d) => write_keys(dir, &d, self.items, self.mode, &what, self.optional),
            None if self.optional => Ok(()),
            None => Err(format!("{what} not found")),
        }
    }
}

/// The bind mounts of one container.
pub fn container_mounts(c: &Container, paths: &VolumePaths) -> Result<Vec<BindMount>, String> {
    let mut out = vec![];
    for m in c.volume_mounts.iter().flatten() {
        let src = paths
            .get(&m.name)
            .ok_or_else(|| format!("volumeMount {:?} names no volume of the pod", m.name))?;
        let source = match m.sub_path.as_deref() {
            Some(sp) if !sp.is_empty() => {
                if sp.starts_with('/') || sp.split('/').any(|c| c == "..") {
                    return Err(format!(
                        "subPath {sp:?} must be relative and may not contain '..'"
                    ));
                }
                let p = src.join(sp);
                if !p.exists() {
                    std::fs::create_dir_all(&p)
                        .map_err(|e| format!("creating subPath {}: {e}", p.display()))?;
                }
                p
            }
            _ => src.clone(),
        };
        out.push(BindMount {
            source,
            target: PathBuf::from(&m.mount_path),
            read_only: m.read_only.unwrap_or(false),
        });
    }
    Ok(out)
}

/// Make sure each mount target exists on the host (the pod's mount
/// namespace shares the host's files). Returns what had to be created, so
/// that it is removed with the pod.
pub fn ensure_mountpoints(mounts: &[BindMount]) -> Result<Vec<PathBuf>, String> {
    let mut created = vec![];
    for m in mounts {
        if m.target.exists() {
            continue;
        }
        let mut first_missing = m.target.clone();
        while let Some(parent) = first_missing.parent() {
            if parent.exists() {
                break;
            }
            first_missing = parent.to_owned();
        }
        let res = if m.source.is_dir() {
            std::fs::create_dir_all(&m.target)
        } else {
            m.target
                .parent()
                .map(std::fs::create_dir_all)
                .unwrap_or(Ok(()))
                .and_then(|_| std::fs::write(&m.target, b""))
        };
        res.map_err(|e| format!("creating mount point {}: {e}", m.target.display()))?;
        created.push(first_missing);
    }
    Ok(created)
}

/// Remove mount points the agent created, if nothing was put in them.
pub fn remove_mountpoints(created: &[PathBuf]) {
    for p in created {
        if p.is_file() && p.metadata().map(|m| m.len() == 0).unwrap_or(false) {
            let _ = std::fs::remove_file(p);
        } else {
            // remove_dir only succeeds on empty directories; walk down-up.
            remove_empty_tree(p);
        }
    }
}

fn remove_empty_tree(p: &Path) {
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let path = e.path();
            if path.is_dir() && !path.is_symlink() {
                remove_empty_tree(&path);
            } else if path.is_file() && e.metadata().map(|m| m.len() == 0).unwrap_or(false) {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    let _ = std::fs::remove_dir(p);
}
