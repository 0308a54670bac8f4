#!/usr/bin/env python3
"""Generate crates/api/src/proto_table.rs from the k8s-pb crate's sources.

kubectl's typed commands (`kubectl create namespace`, `create deployment`,
...) send Kubernetes protobuf, so the API server must decode it. k8s-pb (the
kube-rs project's prost bindings) has every message, but prost keeps field
numbers only in attributes, not at run time. This script reads those
attributes and writes a table: for each message reachable from the served
types, its fields' tag, Rust name, wire kind and message type. Field names
are matched to JSON names at run time through the OpenAPI schema.

Usage: tools/gen_k8s_proto_table.py [path/to/k8s-pb-x.y.z]
(default: the newest k8s-pb in ~/.cargo/registry; `cargo fetch` first).
"""
import glob, os, re, sys

ROOTS = [
    "io.k8s.api.core.v1." + k for k in ["Namespace", "Pod", "Service", "Endpoints", "ConfigMap", "Secret",
        "ServiceAccount", "Node", "Event", "Binding", "ResourceQuota", "LimitRange",
        "PersistentVolumeClaim", "PersistentVolume"]
] + ["io.k8s.api.apps.v1.Deployment", "io.k8s.api.apps.v1.ReplicaSet", "io.k8s.api.apps.v1.ControllerRevision",
     "io.k8s.api.networking.v1.Ingress", "io.k8s.api.networking.v1.IngressClass",
     "io.k8s.api.discovery.v1.EndpointSlice", "io.k8s.api.coordination.v1.Lease",
     "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.CustomResourceDefinition",
     "io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions", "io.k8s.api.autoscaling.v1.Scale",
     "io.k8s.apimachinery.pkg.runtime.Unknown"]

def find_crate():
    if len(sys.argv) > 1:
        return sys.argv[1]
    cands = sorted(glob.glob(os.path.expanduser("~/.cargo/registry/src/*/k8s-pb-*")))
    if not cands:
        sys.exit("k8s-pb not found in ~/.cargo/registry: run `cargo fetch` or pass its path")
    return cands[-1]

def def_prefix(mod_path):
    parts = list(mod_path)
    if parts and parts[0] in ("apiextensions_apiserver", "kube_aggregator"):
        parts[0] = parts[0].replace("_", "-")
    return "io.k8s." + ".".join(parts)

ATTR = re.compile(r'#\[prost\((?P<kind>[a-z0-9_]+)(?: = "(?P<arg>[^"]*)")?(?:, (?P<label>optional|repeated|required))?, tag = "(?P<tag>\d+)"\)\]')
FIELD = re.compile(r'pub (?:r#)?(?P<name>[a-z0-9_]+): (?P<ty>.+),$')
STRUCT = re.compile(r'pub struct (?P<name>[A-Za-z0-9_]+) \{')

def resolve(ty, mod_path):
    # Strip wrappers: Option<...>, Vec<...>, Box<...>, BTreeMap<String, ...>.
    inner = ty
    for w in ("::core::option::Option<", "::prost::alloc::vec::Vec<", "::prost::alloc::boxed::Box<"):
        while inner.startswith(w):
            inner = inner[len(w):-1]
    m = re.match(r"::prost::alloc::collections::BTreeMap<\s*::prost::alloc::string::String,\s*(.+)>$", inner)
    if m:
        inner = m.group(1)
    segs = inner.split("::")
    path = list(mod_path)
    while segs and segs[0] == "super":
        path.pop(); segs.pop(0)
    name = segs[-1]
    path += segs[:-1]
    return def_prefix(path) + "." + name

def main():
    root = find_crate()
    messages = {}
    for f in glob.glob(os.path.join(root, "src", "**", "mod.rs"), recursive=True):
        rel = os.path.relpath(os.path.dirname(f), os.path.join(root, "src"))
        if rel == ".":
            continue
        mod_path = rel.split(os.sep)
        cur = None
        pending = None
        buf = ""
        for raw in open(f):
            line = raw.strip()
            # Join a field declaration split over lines (long generic types).
            if buf or (pending and line.startswith("pub ") and not line.endswith(",")):
                buf += (" " if buf and not buf.endswith(("<", ":")) else "") + line
                if not buf.endswith(",") or buf.count("<") > buf.count(">"):
                    continue
                line, buf = buf.replace(",>", ">").replace(": ", ": ", 1), ""
                line = re.sub(r":\s*", ": ", line, count=1)
            m = STRUCT.match(line)
            if m:
                cur = def_prefix(mod_path) + "." + m.group("name")
                messages[cur] = []
                continue
            if line == "}":
                cur = None
                continue
            if cur is None:
                continue
            a = ATTR.match(line)
            if a:
                pending = a
                continue
            fm = FIELD.match(line)
            if fm and pending:
                kind, arg, label, tag = pending.group("kind", "arg", "label", "tag")
                msg = ""
                if kind == "message" or (kind == "btree_map" and arg.endswith("message")):
                    msg = resolve(fm.group("ty"), mod_path)
                if kind == "btree_map":
                    kind = "map_" + arg.split(", ")[1]
                elif kind == "bytes":
                    kind = "bytes"
                messages[cur].append((int(tag), fm.group("name"), kind, label == "repeated", msg))
                pending = None
    seen, todo = set(), list(ROOTS)
    while todo:
        n = todo.pop()
        if n in seen or n not in messages:
            continue
        seen.add(n)
        todo.extend(m for (_, _, _, _, m) in messages[n] if m)
    out = ["// @generated by tools/gen_k8s_proto_table.py from k8s-pb (" + os.path.basename(root) + "); do not edit.",
           "//! Field numbers of the Kubernetes protobuf messages mast decodes.",
           "",
           "use crate::proto::{Field, Kind};",
           "",
           "pub static MESSAGES: &[(&str, &[Field])] = &["]
    kinds = {"string": "Str", "int32": "Int", "int64": "Int", "bool": "Bool", "double": "Double", "bytes": "Bytes",
             "message": "Msg", "map_string": "MapStr", "map_message": "MapMsg", "map_bytes": "MapBytes"}
    for n in sorted(seen):
        fields = []
        for tag, name, kind, rep, msg in messages[n]:
            fields.append(f'Field {{ tag: {tag}, name: "{name}", kind: Kind::{kinds[kind]}, repeated: {str(rep).lower()}, msg: "{msg}" }}')
        out.append(f'    ("{n}", &[')
        out.extend("        " + f + "," for f in fields)
        out.append("    ]),")
    out.append("];")
    dest = os.path.join(os.path.dirname(__file__), "..", "crates", "api", "src", "proto_table.rs")
    open(dest, "w").write("\n".join(out) + "\n")
    print(f"{len(seen)} messages written to {os.path.normpath(dest)}")

main()
