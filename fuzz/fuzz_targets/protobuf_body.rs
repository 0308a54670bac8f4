//! Kubernetes protobuf request bodies (what kubectl's typed commands send)
//! for every built-in type: decoding may fail, but never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mast_api::{openapi, registry, schema::SchemaIndex};
use std::sync::OnceLock;

fn index() -> &'static (SchemaIndex, Vec<registry::Resource>) {
    static I: OnceLock<(SchemaIndex, Vec<registry::Resource>)> = OnceLock::new();
    I.get_or_init(|| {
        let rs = registry::builtin_resources();
        (SchemaIndex::new(openapi::builtin_definitions(&rs)), rs)
    })
}

fuzz_target!(|data: &[u8]| {
    let (idx, rs) = index();
    let mut body = b"k8s\0".to_vec();
    body.extend_from_slice(data);
    for r in rs {
        let _ = mast_api::proto::decode_body(idx, &r.definition, &body);
        let _ = mast_api::proto::decode_message(idx, &r.definition, data, 0);
    }
});
