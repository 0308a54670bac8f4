//! A request body, as JSON or YAML, through everything the API server does
//! to it before storing: schema walk and pruning, defaulting, validation,
//! and the legacy Ingress conversion. None of it may panic.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use mast_api::{defaults, registry, validation};
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let parsed: Option<Value> = serde_json::from_slice(data)
        .ok()
        .or_else(|| serde_yaml_ng::from_slice(data).ok());
    let Some(obj) = parsed else { return };
    let (idx, rs) = common::index();
    for r in rs {
        let mut o = obj.clone();
        let schema = serde_json::json!({"$ref": format!("#/definitions/{}", r.definition)});
        let _ = idx.walk(&o, &schema, false);
        idx.prune(&mut o, &schema, false);
        if r.storage_version.is_some() {
            defaults::ingress_v1beta1_to_v1(&mut o);
            defaults::ingress_v1_to_v1beta1(&mut o.clone());
        }
        defaults::apply_defaults(&r.group, &r.kind, &mut o);
        let errs = validation::validate_create(&r.group, &r.kind, &o);
        let _ = validation::invalid_message(&r.kind, "x", &errs);
        let _ = validation::validate_update(&r.group, &r.kind, &o, &obj);
        let _ = mast_api::table::cells(r, &o, Default::default());
    }
    for crd_res in registry::resources_from_crd(&obj) {
        let _ = idx.walk(
            &obj,
            crd_res
                .custom
                .as_ref()
                .and_then(|c| c.schema.as_ref())
                .unwrap_or(&Value::Null),
            true,
        );
    }
});
