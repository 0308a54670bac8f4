//! mast's API types: what every served resource is, its schema, and the pure
//! rules applied to it (defaulting, validation, patching, selectors, tables).
//!
//! This crate does no I/O: it sits at the bottom of the workspace, below the
//! store and the API server, so its rules can be unit-tested and fuzzed alone.

pub mod defaults;
pub mod events;
pub mod istio;
pub mod json;
pub mod openapi;
pub mod patch;
pub mod proto;
#[rustfmt::skip]
pub mod proto_table;
pub mod quantity;
pub mod registry;
pub mod schema;
pub mod selectors;
pub mod table;
pub mod taints;
pub mod validation;

/// The Kubernetes release whose API mast serves.
pub const KUBERNETES_VERSION: &str = "v1.33.0";
/// `gitVersion` reported by `/version`: the Kubernetes version plus mast's.
pub const GIT_VERSION: &str = concat!("v1.33.0+mast-", env!("CARGO_PKG_VERSION"));
