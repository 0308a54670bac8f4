//! Istio resources: any JSON (or YAML) as the spec of every Istio kind must
//! be validated without panicking, and any text as an Istio duration
//! parsed without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mast_api::istio::{parse_duration, validate, KINDS};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let _ = parse_duration(s);
    let spec: serde_json::Value = match serde_json::from_str(s) {
        Ok(v) => v,
        Err(_) => match serde_yaml_ng::from_str(s) {
            Ok(v) => v,
            Err(_) => return,
        },
    };
    for k in KINDS {
        let _ = validate(k, &spec);
    }
});
