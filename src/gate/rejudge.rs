//! A reviewer's modified body goes back through the policy before anyone's
//! vote counts: a modify can never turn a small gated call into one the
//! policy denies outright, nor into one that needs more approvers than the
//! modifier alone.

use bytes::Bytes;
use serde_json::Value as Json;

use super::model::Approval;
use super::{Gate, GateError};
use crate::history::ActionClass;
use crate::http_util::query::parse_query;
use crate::policy::body::{self, Format};
use crate::policy::input::{self, RequestFacts};
use crate::policy::{Action, Decision};

impl Gate {
    /// The route `a` was proposed on.
    pub(super) fn route_of(&self, a: &Approval) -> Result<&crate::upstream::Route, GateError> {
        if self.executor(&a.route).is_some() {
            return Err(GateError::Invalid(format!(
                "this request releases a {} action, not an HTTP call: it can be approved or rejected, not modified",
                a.tool
            )));
        }
        self.parts()
            .routes
            .iter()
            .find(|r| r.config.name == a.route)
            .ok_or_else(|| GateError::Invalid(format!("route {} no longer exists", a.route)))
    }
}

/// A modified body, judged.
#[derive(Debug)]
pub struct Rejudged {
    /// The bytes that will be sent.
    pub bytes: Vec<u8>,
    /// Their SHA-256.
    pub sha256: String,
    /// What the policy said of them.
    pub verdict: Decision,
    /// The approval's decision from now on (never looser than before).
    pub decision: Decision,
}

impl Gate {
    /// Encode `new` as the call's own media type and judge it as the proxy
    /// would have judged the agent's call.
    pub(super) async fn rejudge(&self, a: &Approval, new: &Json) -> Result<Rejudged, GateError> {
        let parts = self.parts();
        let route = self.route_of(a)?;
        let agent = parts
            .directory
            .get(&a.agent)
            .ok_or_else(|| GateError::Invalid(format!("agent {} no longer exists", a.agent)))?;
        let headers = a.header_map();
        let invalid = |e: body::BodyError| GateError::Invalid(e.to_string());
        let limit = route.config.max_body_bytes;
        let current = body::judge(
            &headers,
            Bytes::from(a.body.clone()),
            u64::MAX,
            route.config.opaque_body,
        )
        .map_err(invalid)?;
        let mcp = route.config.protocol == crate::config::Protocol::Mcp;
        let bytes = match current.format {
            // An MCP call: the reviewer edits the tool's arguments; the
            // message around them (method, tool, id) stays as it was.
            Format::Json if mcp => {
                if !new.is_object() {
                    return Err(GateError::Invalid(
                        "an MCP tool call is modified by its arguments: the new body must be a JSON object".into(),
                    ));
                }
                let mut msg: Json = serde_json::from_slice(&current.bytes)
                    .map_err(|e| GateError::Invalid(e.to_string()))?;
                let params = msg
                    .get_mut("params")
                    .and_then(Json::as_object_mut)
                    .ok_or_else(|| {
                        GateError::Invalid("the stored MCP call has no params".into())
                    })?;
                params.insert("arguments".into(), new.clone());
                serde_json::to_vec(&msg).map_err(|e| GateError::Invalid(e.to_string()))?
            }
            Format::Json => {
                let was: Json = serde_json::from_slice(&current.bytes).unwrap_or(Json::Null);
                if kind(&was) != kind(new) {
                    return Err(GateError::Invalid(format!(
                        "the call's body is a JSON {}; the new body must be one too, not a {}",
                        kind(&was),
                        kind(new)
                    )));
                }
                serde_json::to_vec(new).map_err(|e| GateError::Invalid(e.to_string()))?
            }
            Format::Form => encode_form(new)?,
            Format::None | Format::Opaque => {
                return Err(GateError::Invalid(
                    "this call has no JSON or form body a reviewer can modify".into(),
                ))
            }
        };
        if bytes.len() as u64 > limit {
            return Err(GateError::Invalid(format!(
                "the new body exceeds the route's {limit} bytes"
            )));
        }
        let judged = body::judge(&headers, Bytes::from(bytes), limit, false).map_err(invalid)?;
        let (path, query) = match a.target.split_once('?') {
            Some((_, q)) => (a.path.as_str(), Some(q)),
            None => (a.path.as_str(), None),
        };
        let query = parse_query(query);
        let args = if mcp {
            regorus::Value::from(new.clone())
        } else {
            body::check_overlap(&judged.value, &query).map_err(invalid)?;
            input::args(&judged.value, &query)
        };
        let class = ActionClass::with_values(
            &a.agent,
            &a.tool,
            &a.method,
            &args,
            &route.config.class_args,
        );
        let sha256 = crate::digest::body_sha256(&judged.bytes);
        let facts = RequestFacts {
            method: &a.method,
            path,
            query: &query,
            headers: &headers,
            allowed_headers: &parts.input_headers,
            body: &judged.value,
            body_format: judged.format.as_str(),
            body_sha256: Some(&sha256),
            size: Some(judged.bytes.len() as u64),
        };
        let mut doc = input::build(
            &facts,
            &route.input,
            &agent.input,
            (&a.tool, args, &class.fingerprint()),
            &parts.history.get(&class),
            chrono::Utc::now(),
        );
        if mcp {
            let hints = route.tool_hint(&a.tool).unwrap_or(regorus::Value::Null);
            let facts = input::mcp_facts("tools/call", &route.config.name, hints);
            input::set(&mut doc, "mcp", facts);
        }
        let (_, eval) = parts.policy.evaluate(doc).await;
        let verdict = eval.decision;
        let decision = match verdict.action {
            Action::Deny => {
                return Err(GateError::PolicyDenied {
                    code: verdict.code,
                    reasons: verdict.reasons,
                })
            }
            Action::Allow => a.decision.clone(),
            Action::Gate => a.decision.tightened(&verdict, a.level),
        };
        Ok(Rejudged {
            bytes: judged.bytes.to_vec(),
            sha256,
            verdict,
            decision,
        })
    }
}

fn kind(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "boolean",
        Json::Number(_) => "number",
        Json::String(_) => "string",
        Json::Array(_) => "array",
        Json::Object(_) => "object",
    }
}

/// An object of strings as `application/x-www-form-urlencoded`.
fn encode_form(v: &Json) -> Result<Vec<u8>, GateError> {
    let obj = v.as_object().ok_or_else(|| {
        GateError::Invalid(
            "the call's body is a form; the new body must be an object of strings".into(),
        )
    })?;
    let mut out = String::new();
    for (k, v) in obj {
        let Json::String(v) = v else {
            return Err(GateError::Invalid(format!(
                "form field {k:?} must be a string"
            )));
        };
        if !out.is_empty() {
            out.push('&');
        }
        push_encoded(&mut out, k);
        out.push('=');
        push_encoded(&mut out, v);
    }
    Ok(out.into_bytes())
}

fn push_encoded(out: &mut String, s: &str) {
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_encode_and_parse_back() {
        let v = serde_json::json!({"to": "a@x.com", "note": "50% off & more"});
        let bytes = encode_form(&v).unwrap();
        let back = body::parse_form(&bytes).unwrap();
        assert_eq!(serde_json::to_value(&back).unwrap(), v);
        assert!(encode_form(&serde_json::json!({"n": 5})).is_err());
        assert!(encode_form(&serde_json::json!([1])).is_err());
    }
}
