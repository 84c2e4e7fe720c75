//! Outcome: deny. The agent gets the policy's code and reasons, so it can
//! replan.

use http::{HeaderValue, Response, StatusCode};
use serde_json::json;

use crate::http_util::{json as json_response, Body};
use crate::policy::Decision;

/// 403 with the decision.
pub(super) fn deny(id: &str, d: &Decision) -> Response<Body> {
    let mut resp = json_response(
        StatusCode::FORBIDDEN,
        &json!({"error": "denied", "decision_id": id, "code": d.code, "risk": d.risk, "reasons": d.reasons}),
    );
    resp.headers_mut()
        .insert("latch-decision", HeaderValue::from_static("deny"));
    resp
}
