//! Every way the admin listener refuses a request, mapped to its status and
//! `latch-error` code in one place (as [`crate::proxy::error`] does for the
//! data plane).

use std::time::Duration;

use http::{HeaderValue, Response, StatusCode};
use serde_json::json;

use crate::gate::GateError;
use crate::http_util::{json as json_response, Body};

/// An admin refusal, turned into a JSON answer at the edge.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// No such endpoint.
    #[error("no such admin endpoint")]
    NoEndpoint,
    /// The endpoint exists; the thing it names does not.
    #[error("{0}")]
    NotFound(String),
    /// The path exists with other methods (listed).
    #[error("use {0}")]
    WrongMethod(String),
    /// No credentials at all (not counted as a failed attempt).
    #[error("log in or send a bearer token")]
    NoCredentials,
    /// Wrong credentials.
    #[error("{0}")]
    Unauthenticated(String),
    /// `/metrics` needs its bearer token.
    #[error("send the metrics bearer token")]
    MetricsToken,
    /// A dashboard state change without the session's CSRF token.
    #[error("missing or wrong CSRF token")]
    Csrf {
        /// Whose session it was.
        principal: Option<String>,
    },
    /// An agent on the humans' API.
    #[error("agents cannot use the admin API")]
    Agent {
        /// The agent.
        principal: String,
    },
    /// Too many failed attempts; wait this long.
    #[error("too many failed attempts; try again later")]
    Throttled(Duration),
    /// A query parameter out of range or malformed.
    #[error("{message}")]
    BadQuery {
        /// The `latch-error` code (`bad_status`, `bad_limit`, …).
        code: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The request body is not a valid request.
    #[error("{0}")]
    Invalid(String),
    /// The body did not arrive in time.
    #[error("the request body was not received in time")]
    BodyTimeout,
    /// The body is over the limit.
    #[error("request body over {0} bytes or unreadable")]
    BodyTooLarge(usize),
    /// The gate refused.
    #[error("{0}")]
    Gate(#[from] GateError),
    /// The prompt registry refused.
    #[error("{0}")]
    Prompt(#[from] crate::prompts::PromptError),
    /// A policy reload was refused; the working set keeps deciding.
    #[error("{0}")]
    PolicyRejected(String),
    /// The store failed; nothing changed.
    #[error("the store is unavailable; nothing changed")]
    Store(#[source] anyhow::Error),
    /// Latch itself failed; details are logged.
    #[error("{0}")]
    Internal(&'static str),
}

/// Status and code for a refusal of the gate.
fn gate_status(g: &GateError) -> (StatusCode, &'static str) {
    match g {
        GateError::NotFound | GateError::GrantNotFound => (StatusCode::NOT_FOUND, "not_found"),
        GateError::Closed(_) | GateError::GrantClosed(_) => (StatusCode::CONFLICT, "closed"),
        GateError::BadGrant(_) => (StatusCode::BAD_REQUEST, "bad_grant"),
        GateError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
        GateError::AlreadyVoted(_) => (StatusCode::CONFLICT, "already_voted"),
        GateError::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid"),
        GateError::PolicyDenied { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "policy_denied"),
        GateError::TooManyPending(_) => (StatusCode::TOO_MANY_REQUESTS, "too_many_pending"),
        GateError::IdempotencyConflict => {
            (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_conflict")
        }
        GateError::AuditUnavailable => (StatusCode::SERVICE_UNAVAILABLE, "audit_unavailable"),
        GateError::Store(_) => (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable"),
    }
}

/// Status and code for a refusal of the prompt registry.
fn prompt_status(p: &crate::prompts::PromptError) -> (StatusCode, &'static str) {
    match (p, p.status_and_code()) {
        (_, Some(s)) => s,
        (crate::prompts::PromptError::Gate(g), None) => gate_status(g),
        (_, None) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    }
}

impl AdminError {
    /// Status and `latch-error` code.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        use AdminError as E;
        match self {
            E::NoEndpoint | E::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            E::WrongMethod(_) => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            E::NoCredentials | E::Unauthenticated(_) | E::MetricsToken => {
                (StatusCode::UNAUTHORIZED, "unauthenticated")
            }
            E::Csrf { .. } => (StatusCode::FORBIDDEN, "csrf"),
            E::Agent { .. } => (StatusCode::FORBIDDEN, "forbidden"),
            E::Throttled(_) => (StatusCode::TOO_MANY_REQUESTS, "throttled"),
            E::BadQuery { code, .. } => (StatusCode::BAD_REQUEST, code),
            E::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid"),
            E::BodyTimeout => (StatusCode::REQUEST_TIMEOUT, "body_timeout"),
            E::BodyTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            E::Gate(g) => gate_status(g),
            E::PolicyRejected(_) => (StatusCode::UNPROCESSABLE_ENTITY, "policy_rejected"),
            E::Store(_) => (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable"),
            E::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            E::Prompt(p) => prompt_status(p),
        }
    }

    /// The principal a refusal concerns, for throttling.
    pub fn principal(&self) -> Option<&str> {
        match self {
            AdminError::Csrf { principal } => principal.as_deref(),
            AdminError::Agent { principal } => Some(principal),
            _ => None,
        }
    }

    /// The answer: JSON `{"error": code, "message"}` with `latch-error: code`.
    pub fn into_response(self) -> Response<Body> {
        let (status, code) = self.status_and_code();
        let message = match &self {
            AdminError::Store(e)
            | AdminError::Gate(GateError::Store(e))
            | AdminError::Prompt(crate::prompts::PromptError::Store(e)) => {
                tracing::error!(error = %e, "store failure on the admin API");
                "the store is unavailable; nothing changed".to_string()
            }
            other => other.to_string(),
        };
        let mut r = json_response(status, &json!({"error": code, "message": message}));
        let h = r.headers_mut();
        h.insert("latch-error", HeaderValue::from_static(code));
        match &self {
            AdminError::Throttled(wait) => {
                h.insert(
                    http::header::RETRY_AFTER,
                    HeaderValue::from(wait.as_secs().max(1)),
                );
            }
            AdminError::WrongMethod(allow) => {
                if let Ok(v) = HeaderValue::from_str(allow) {
                    h.insert(http::header::ALLOW, v);
                }
            }
            AdminError::MetricsToken => {
                h.insert(
                    http::header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"latch-metrics\""),
                );
            }
            _ if status == StatusCode::UNAUTHORIZED => {
                h.insert(
                    http::header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"latch-admin\""),
                );
            }
            _ => {}
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_details_stay_in_the_log() {
        let r = AdminError::Store(anyhow::anyhow!("disk /var/secret full")).into_response();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()["latch-error"], "store_unavailable");
    }

    #[test]
    fn throttled_says_when_to_retry() {
        let r = AdminError::Throttled(Duration::from_millis(10)).into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[http::header::RETRY_AFTER], "1");
    }
}
