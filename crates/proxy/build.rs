//! Writes the protobuf descriptors of the xDS resources mast proxy reads
//! (`$OUT_DIR/xds.bin`), pruned from the descriptor set that envoy-types
//! ships (`src/generated/types.bin`, 3.3 MB, for every Envoy API) to the
//! files those resources need, so the running proxy holds a small pool.
//! envoy-types does not export its descriptor set, so the file is found in
//! cargo's registry; `MAST_ENVOY_DESCRIPTORS` names it elsewhere.

use prost::Message;
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;

/// The files that define the resources and extensions mast proxy reads.
const ROOTS: &[&str] = &[
    "envoy/config/listener/v3/listener.proto",
    "envoy/config/route/v3/route.proto",
    "envoy/config/cluster/v3/cluster.proto",
    "envoy/config/endpoint/v3/endpoint.proto",
    "envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto",
    "envoy/extensions/filters/network/tcp_proxy/v3/tcp_proxy.proto",
    "envoy/extensions/filters/http/router/v3/router.proto",
    "envoy/extensions/filters/http/fault/v3/fault.proto",
    "envoy/extensions/filters/http/cors/v3/cors.proto",
    "envoy/extensions/filters/listener/original_dst/v3/original_dst.proto",
    "envoy/extensions/filters/listener/tls_inspector/v3/tls_inspector.proto",
    "envoy/extensions/filters/listener/http_inspector/v3/http_inspector.proto",
    "envoy/extensions/upstreams/http/v3/http_protocol_options.proto",
    "envoy/extensions/access_loggers/stream/v3/stream.proto",
    "envoy/extensions/retry/host/previous_hosts/v3/previous_hosts.proto",
    "envoy/extensions/transport_sockets/tls/v3/tls.proto",
    "envoy/extensions/transport_sockets/raw_buffer/v3/raw_buffer.proto",
];

fn find() -> PathBuf {
    println!("cargo:rerun-if-env-changed=MAST_ENVOY_DESCRIPTORS");
    if let Some(p) = std::env::var_os("MAST_ENVOY_DESCRIPTORS") {
        return p.into();
    }
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .expect("neither CARGO_HOME nor HOME is set");
    let mut found: Vec<(Vec<u64>, PathBuf)> = vec![];
    for reg in std::fs::read_dir(home.join("registry/src"))
        .into_iter()
        .flatten()
        .flatten()
    {
        for krate in std::fs::read_dir(reg.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = krate.file_name().to_string_lossy().into_owned();
            let Some(v) = name.strip_prefix("envoy-types-0.7.") else {
                continue;
            };
            let bin = krate.path().join("src/generated/types.bin");
            if bin.exists() {
                let v = v.split('.').filter_map(|n| n.parse().ok()).collect();
                found.push((v, bin));
            }
        }
    }
    found.sort();
    found.pop().map(|(_, p)| p).unwrap_or_else(|| {
        panic!(
            "envoy-types 0.7's descriptor set (src/generated/types.bin) is not under {}; set MAST_ENVOY_DESCRIPTORS to its path",
            home.join("registry/src").display()
        )
    })
}

fn main() {
    let path = find();
    println!("cargo:rerun-if-changed={}", path.display());
    let bytes = std::fs::read(&path).expect("reading envoy-types' descriptor set");
    let set = prost_types::FileDescriptorSet::decode(bytes.as_slice())
        .expect("envoy-types' descriptor set does not decode");
    let by_name: HashMap<&str, &prost_types::FileDescriptorProto> =
        set.file.iter().map(|f| (f.name(), f)).collect();
    // Every file the roots depend on, dependencies first.
    let mut order = vec![];
    let mut seen = BTreeSet::new();
    fn visit<'a>(
        name: &'a str,
        by_name: &HashMap<&'a str, &'a prost_types::FileDescriptorProto>,
        seen: &mut BTreeSet<&'a str>,
        order: &mut Vec<prost_types::FileDescriptorProto>,
    ) {
        if !seen.insert(name) {
            return;
        }
        let f = by_name
            .get(name)
            .unwrap_or_else(|| panic!("{name} is not in envoy-types' descriptor set"));
        for d in &f.dependency {
            visit(d, by_name, seen, order);
        }
        let mut f = (*f).clone();
        // Comments are not needed to decode.
        f.source_code_info = None;
        order.push(f);
    }
    for r in ROOTS {
        visit(r, &by_name, &mut seen, &mut order);
    }
    let out = prost_types::FileDescriptorSet { file: order }.encode_to_vec();
    let dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    std::fs::write(dir.join("xds.bin"), out).expect("writing xds.bin");
}
