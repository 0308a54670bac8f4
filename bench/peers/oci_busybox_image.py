"""Build a minimal OCI image archive whose whole rootfs is Debian's
busybox-static (`bin/busybox`, `bin/sh`, `bin/sleep`), so containerd can run
it without a registry: `python3 oci_busybox_image.py OUT.tar`."""
import hashlib, io, json, os, sys, tarfile, time
out = sys.argv[1]
def blob(data):
    return "sha256:" + hashlib.sha256(data).hexdigest(), data
layer = io.BytesIO()
with tarfile.open(fileobj=layer, mode="w") as t:
    ti = tarfile.TarInfo("bin"); ti.type = tarfile.DIRTYPE; ti.mode = 0o755; t.addfile(ti)
    data = open("/usr/bin/busybox", "rb").read()
    ti = tarfile.TarInfo("bin/busybox"); ti.size = len(data); ti.mode = 0o755; t.addfile(ti, io.BytesIO(data))
    for name in ["sh", "sleep"]:
        ti = tarfile.TarInfo("bin/" + name); ti.type = tarfile.SYMTYPE; ti.linkname = "busybox"; t.addfile(ti)
layer_d, layer_b = blob(layer.getvalue())
config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"]},
    "rootfs": {"type": "layers", "diff_ids": [layer_d]}}).encode()
config_d, config_b = blob(config)
manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_d, "size": len(config_b)},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_d, "size": len(layer_b)}]}).encode()
manifest_d, manifest_b = blob(manifest)
index = json.dumps({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
    "digest": manifest_d, "size": len(manifest_b), "annotations": {"org.opencontainers.image.ref.name": "docker.io/library/bb:latest", "io.containerd.image.name": "docker.io/library/bb:latest"}}]}).encode()
with tarfile.open(out, "w") as t:
    def add(name, data):
        ti = tarfile.TarInfo(name); ti.size = len(data); t.addfile(ti, io.BytesIO(data))
    add("oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
    add("index.json", index)
    for d, b in [(layer_d, layer_b), (config_d, config_b), (manifest_d, manifest_b)]:
        add("blobs/sha256/" + d.split(":")[1], b)
