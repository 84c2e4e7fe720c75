//! `/latch/v1/prompts/<name>` for apps and agents: the version a label
//! points at (`ETag`, 304 on `If-None-Match`), and `…/render` with variables.

use std::collections::BTreeMap;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};

use super::error::ProxyError;
use super::Proxy;
use crate::http_util::query::parse_query;
use crate::http_util::{full, json as json_response, Body};
use crate::prompts::PromptError;

/// Largest render request.
const MAX_RENDER_BODY: usize = 64 * 1024;

/// Serve `path` (under `/latch/v1/prompts/`).
pub(super) async fn serve(
    p: &Proxy,
    req: Request<Body>,
    path: &str,
) -> Result<Response<Body>, ProxyError> {
    let rest = path
        .strip_prefix("/latch/v1/prompts/")
        .ok_or(ProxyError::NoRoute)?;
    let (name, render) = match rest.strip_suffix("/render") {
        Some(name) => (name, true),
        None => (rest, false),
    };
    if name.is_empty() || name.contains('/') {
        return Err(ProxyError::NoRoute);
    }
    let query = parse_query(req.uri().query());
    let label = query
        .get("label")
        .and_then(|v| v.first())
        .cloned()
        .unwrap_or_else(|| "production".to_string());
    match (req.method().clone(), render) {
        (Method::GET, false) => {
            let served = p.prompts.serve(name, &label).await?;
            let etag = HeaderValue::from_str(&served.etag).map_err(|_| ProxyError::Internal)?;
            let fresh = req
                .headers()
                .get_all(http::header::IF_NONE_MATCH)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .any(|t| t.trim() == served.etag || t.trim() == "*");
            let mut resp = if fresh {
                let mut r = Response::new(full(Bytes::new()));
                *r.status_mut() = StatusCode::NOT_MODIFIED;
                r
            } else {
                let mut r = Response::new(full(served.json.clone()));
                r.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                r
            };
            let h = resp.headers_mut();
            h.insert(http::header::ETAG, etag);
            h.insert(
                http::header::CACHE_CONTROL,
                HeaderValue::from_static("no-cache"),
            );
            h.insert("latch-decision", HeaderValue::from_static("allow"));
            Ok(resp)
        }
        (Method::POST, true) => {
            let body = http_body_util::Limited::new(req.into_body(), MAX_RENDER_BODY);
            let bytes = tokio::time::timeout(p.body_read_timeout, body.collect())
                .await
                .map_err(|_| ProxyError::BodyTimeout)?
                .map_err(|_| ProxyError::BodyTooLarge(MAX_RENDER_BODY as u64))?
                .to_bytes();
            let doc: Value = serde_json::from_slice(&bytes).map_err(|e| {
                PromptError::Invalid(format!("a render request is JSON {{label?, vars}}: {e}"))
            })?;
            let label = doc["label"].as_str().unwrap_or(&label).to_string();
            let vars: BTreeMap<String, String> = match &doc["vars"] {
                Value::Null => BTreeMap::new(),
                v => serde_json::from_value(v.clone()).map_err(|_| {
                    PromptError::Invalid("`vars` must be an object of strings".into())
                })?,
            };
            let text = p.prompts.render(name, &label, &vars).await?;
            let mut resp = json_response(StatusCode::OK, &json!({"text": text}));
            resp.headers_mut()
                .insert("latch-decision", HeaderValue::from_static("allow"));
            Ok(resp)
        }
        _ => Err(ProxyError::MethodNotAllowed),
    }
}
