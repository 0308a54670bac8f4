//! The parsed form of an API request and the replies handlers produce,
//! independent of the HTTP library.

use crate::auth::User;
use bytes::Bytes;
use serde_json::Value;
use std::collections::HashMap;
use tokio::sync::mpsc;

/// One API request, decoded from HTTP.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: http::Method,
    pub path: String,
    pub query: HashMap<String, String>,
    pub accept: String,
    pub content_type: String,
    pub user_agent: String,
    pub body: Bytes,
    pub user: User,
}

impl Request {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .get(name)
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }

    pub fn flag(&self, name: &str) -> bool {
        matches!(self.param(name), Some("true" | "1"))
    }

    /// The field manager for managedFields: `?fieldManager=` or the client
    /// name from the User-Agent (`kubectl/v1.32.4 (...)` → `kubectl`).
    pub fn manager(&self) -> String {
        if let Some(m) = self.param("fieldManager") {
            return m.to_owned();
        }
        let ua = self.user_agent.split('/').next().unwrap_or("unknown");
        if ua.is_empty() {
            "unknown".into()
        } else {
            ua.to_owned()
        }
    }

    /// What kind of representation the client wants back.
    pub fn wants(&self) -> Wants {
        for part in self.accept.split(',') {
            let p = part.replace(' ', "");
            if p.contains("as=Table") {
                return Wants::Table;
            }
            if p.contains("as=PartialObjectMetadataList") || p.contains("as=PartialObjectMetadata")
            {
                return Wants::Metadata;
            }
            if p.starts_with("application/json")
                || p.starts_with("application/yaml")
                || p.starts_with("*/*")
                || p.is_empty()
            {
                return Wants::Object;
            }
        }
        if self.accept.contains("protobuf") {
            return Wants::Protobuf;
        }
        Wants::Object
    }
}

/// The representation a client asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wants {
    Object,
    Table,
    Metadata,
    Protobuf,
}

/// What a handler answers.
#[derive(Debug)]
pub enum Reply {
    Json {
        code: u16,
        body: Value,
        warnings: Vec<String>,
    },
    Raw {
        code: u16,
        content_type: String,
        body: Bytes,
    },
    /// A watch: newline-delimited JSON events until the sender is dropped.
    Stream { rx: mpsc::Receiver<Bytes> },
}

impl Reply {
    pub fn json(code: u16, body: Value) -> Self {
        Reply::Json {
            code,
            body,
            warnings: vec![],
        }
    }

    pub fn with_warnings(mut self, w: Vec<String>) -> Self {
        if let Reply::Json { warnings, .. } = &mut self {
            warnings.extend(w);
        }
        self
    }
}

/// Parse a query string into a map (the last of repeated keys wins).
pub fn parse_query(q: Option<&str>) -> HashMap<String, String> {
    form_urlencoded::parse(q.unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}
