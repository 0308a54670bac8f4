//! Kubernetes protobuf request bodies (what kubectl's typed commands send)
//! for every built-in type: decoding may fail, but never panic.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (idx, rs) = common::index();
    let mut body = b"k8s\0".to_vec();
    body.extend_from_slice(data);
    for r in rs {
        let _ = mast_api::proto::decode_body(idx, &r.definition, &body);
        let _ = mast_api::proto::decode_message(idx, &r.definition, data, 0);
    }
});
