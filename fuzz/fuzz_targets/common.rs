//! The built-in resources and their schema index, built once per process.

use mast_api::{openapi, registry, schema::SchemaIndex};
use std::sync::OnceLock;

pub fn index() -> &'static (SchemaIndex, Vec<registry::Resource>) {
    static I: OnceLock<(SchemaIndex, Vec<registry::Resource>)> = OnceLock::new();
    I.get_or_init(|| {
        let rs = registry::builtin_resources();
        (SchemaIndex::new(openapi::builtin_definitions(&rs)), rs)
    })
}
