//! `?labelSelector=` and `?fieldSelector=` strings, parsed and matched.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mast_api::selectors::{json_path, FieldSelector, LabelSelector};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let obj = serde_json::json!({"metadata": {"name": "a", "labels": {"app": "web", "n": "5"}}, "status": {"phase": "Running"}});
    if let Ok(l) = LabelSelector::parse(s) {
        let _ = l.matches(&obj["metadata"]["labels"]);
    }
    if let Ok(f) = FieldSelector::parse(s) {
        let _ = f.matches(&obj);
    }
    let _ = json_path(&obj, s);
});
