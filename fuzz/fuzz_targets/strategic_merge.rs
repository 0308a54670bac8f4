//! Strategic merge, JSON merge and JSON patches from arbitrary bodies onto a
//! pod: they may be rejected, but never panic.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use mast_api::patch;

fuzz_target!(|data: &[u8]| {
    let Ok(p) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let pod = serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": {"a": "b"}, "finalizers": ["x"]},
        "spec": {"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 80}], "env": [{"name": "A", "value": "1"}]}],
                 "volumes": [{"name": "v", "emptyDir": {}}]}});
    let schema = serde_json::json!({"$ref": "#/definitions/io.k8s.api.core.v1.Pod"});
    let mut a = pod.clone();
    let _ = patch::strategic_merge(&common::index().0, &mut a, &p, Some(&schema));
    let mut b = pod.clone();
    patch::merge_patch(&mut b, &p);
    let mut c = pod;
    let _ = patch::json_patch(&mut c, &p);
});
