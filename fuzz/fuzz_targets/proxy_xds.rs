//! mast proxy's xDS conversion: any bytes, as a Listener, RouteConfiguration,
//! Cluster, ClusterLoadAssignment or Secret from a control plane, must be
//! decoded, read and compiled without panicking (refusals are NACKs).
//! Selector 4 feeds the TLS inspector's ClientHello parser instead. DNS
//! clusters and data sources read from files are left out, so fuzzing
//! never resolves names or reads files.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mast_proxy::xds;

const BOOTSTRAP: &str = "dynamic_resources:\n  ads_config: {api_type: GRPC, grpc_services: [{envoy_grpc: {cluster_name: xds}}]}\nstatic_resources:\n  clusters: [{name: xds, type: STATIC, load_assignment: {cluster_name: xds, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 15010}}}}]}]}}]\n";

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let type_url = match which % 6 {
        0 => xds::LISTENER,
        1 => xds::ROUTE,
        2 => xds::CLUSTER,
        3 => xds::ENDPOINT,
        5 => xds::SECRET,
        _ => {
            let _ = mast_proxy::tls::client_hello(rest);
            return;
        }
    };
    let any = envoy_types::pb::google::protobuf::Any {
        type_url: type_url.to_owned(),
        value: rest.to_vec(),
    };
    let Ok(r) = xds::Resources::default().with(type_url, &[any]) else {
        return;
    };
    if r
        .clusters
        .values()
        .any(|c| matches!(c.type_.as_deref(), Some("STRICT_DNS" | "LOGICAL_DNS")))
    {
        return;
    }
    if format!("{r:?}").contains("filename: Some") {
        return;
    }
    let Ok(b) = mast_proxy::bootstrap::parse(BOOTSTRAP) else {
        return;
    };
    let _ = mast_proxy::config::Config::build(&b, BOOTSTRAP.to_owned(), &r, None);
});
