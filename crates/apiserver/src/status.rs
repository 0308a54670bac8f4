//! API errors and the Kubernetes `Status` objects they become.
//!
//! Every failure a client can cause maps to the `reason` and HTTP code the
//! Kubernetes API server uses, with the message kubectl prints after
//! `Error from server (<reason>): `.

use mast_api::validation::{invalid_message, FieldError};
use serde_json::{json, Value};

/// An error answered to the client as a `Status`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    fn with_details(mut self, name: &str, group: &str, kind: &str) -> Self {
        let mut d = json!({"name": name, "kind": kind});
        if !group.is_empty() {
            d["group"] = json!(group);
        }
        self.details = Some(d);
        self
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }
    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(403, "Forbidden", message)
    }
    pub fn not_found(plural: &str, group: &str, name: &str) -> Self {
        let gr = if group.is_empty() {
            plural.to_owned()
        } else {
            format!("{plural}.{group}")
        };
        Self::new(404, "NotFound", format!("{gr} \"{name}\" not found"))
            .with_details(name, group, plural)
    }
    pub fn path_not_found() -> Self {
        Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    }
    pub fn not_found_sub(sub: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!(
                "the {sub} subresource is not served yet by mast; it arrives with the node agent"
            ),
        )
    }
    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(405, "MethodNotAllowed", message)
    }
    pub fn not_acceptable(message: impl Into<String>) -> Self {
        Self::new(406, "NotAcceptable", message)
    }
    pub fn already_exists(plural: &str, group: &str, name: &str) -> Self {
        let gr = if group.is_empty() {
            plural.to_owned()
        } else {
            format!("{plural}.{group}")
        };
        Self::new(
            409,
            "AlreadyExists",
            format!("{gr} \"{name}\" already exists"),
        )
        .with_details(name, group, plural)
    }
    pub fn conflict(plural: &str, group: &str, name: &str) -> Self {
        let gr = if group.is_empty() {
            plural.to_owned()
        } else {
            format!("{plural}.{group}")
        };
        Self::new(
            409,
            "Conflict",
            format!("Operation cannot be fulfilled on {gr} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"),
        )
        .with_details(name, group, plural)
    }
    pub fn conflict_message(message: impl Into<String>) -> Self {
        Self::new(409, "Conflict", message)
    }
    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }
    pub fn too_large() -> Self {
        Self::new(
            413,
            "RequestEntityTooLarge",
            "Request entity too large: limit is 3145728",
        )
    }
    pub fn unsupported_media_type(ct: &str) -> Self {
        Self::new(415, "UnsupportedMediaType", format!("the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf (got {ct:?})"))
    }
    pub fn invalid(kind: &str, group: &str, name: &str, errs: &[FieldError]) -> Self {
        let causes: Vec<Value> = errs
            .iter()
            .map(|e| json!({"reason": e.kind.cause_reason(), "message": e.message(), "field": e.field}))
            .collect();
        let mut d = json!({"name": name, "kind": kind, "causes": causes});
        if !group.is_empty() {
            d["group"] = json!(group);
        }
        Self {
            code: 422,
            reason: "Invalid",
            message: invalid_message(kind, name, errs),
            details: Some(d),
        }
    }
    pub fn unprocessable_patch(message: impl Into<String>) -> Self {
        Self::new(422, "Invalid", message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalError", message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(503, "ServiceUnavailable", message)
    }

    /// The `Status` object for this error.
    pub fn status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        s
    }
}

impl From<mast_store::StoreError> for ApiError {
    fn from(e: mast_store::StoreError) -> Self {
        use mast_store::StoreError as S;
        match e {
            S::Compacted {
                requested,
                compacted,
            } => ApiError::gone(format!(
                "too old resource version: {requested} ({compacted})"
            )),
            S::FutureRevision { requested, current } => ApiError::new(
                504,
                "Timeout",
                format!("Too large resource version: {requested}, current: {current}"),
            ),
            S::Closed => ApiError::unavailable("the API server is shutting down"),
            other => ApiError::internal(other.to_string()),
        }
    }
}

/// A success `Status`, as returned by some deletes.
pub fn success(details: Value) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_read_like_kubernetes() {
        let e = ApiError::not_found("deployments", "apps", "web");
        assert_eq!(e.message, "deployments.apps \"web\" not found");
        assert_eq!(e.status()["code"], 404);
        assert_eq!(e.status()["details"]["group"], "apps");
        let e = ApiError::conflict("pods", "", "p");
        assert!(e
            .message
            .starts_with("Operation cannot be fulfilled on pods \"p\""));
    }
}
