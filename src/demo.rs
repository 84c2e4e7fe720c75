//! A small built-in tool upstream for the README demo: e-mail, search and
//! trading endpoints that answer like real tools would, and the same tools
//! as an MCP server (`POST /mcp`, JSON answers, no sessions). It insists on
//! the credential Latch injects, which shows that the agent never needs it.

use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::http_util::{json as json_response, Body};
use crate::server::{self, ListenerOptions};

/// The credential the demo tools require (injected by Latch's demo routes).
pub const DEMO_TOOL_KEY: &str = "Bearer demo-tool-key";

/// Serve the demo tools until `shutdown` turns true.
pub async fn serve(listener: TcpListener, shutdown: watch::Receiver<bool>) {
    let opts = ListenerOptions {
        tls: None,
        directory: None,
        header_read_timeout: std::time::Duration::from_secs(10),
        max_connections: 1024,
    };
    server::serve(listener, opts, shutdown, |req, _conn| async move {
        match handle(req).await {
            Ok(r) | Err(r) => r,
        }
    })
    .await;
}

async fn handle(req: Request<Body>) -> Result<Response<Body>, Response<Body>> {
    let authorized = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .is_some_and(|v| v.as_bytes() == DEMO_TOOL_KEY.as_bytes());
    if !authorized {
        return Err(json_response(
            StatusCode::UNAUTHORIZED,
            &json!({"error": "this tool needs its API key (Latch injects it; agents never hold it)"}),
        ));
    }
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let bytes = Limited::new(req.into_body(), 1 << 20)
        .collect()
        .await
        .map_err(|_| {
            json_response(
                StatusCode::BAD_REQUEST,
                &json!({"error": "unreadable body"}),
            )
        })?
        .to_bytes();
    let body: Value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).map_err(|_| {
            json_response(
                StatusCode::BAD_REQUEST,
                &json!({"error": "body must be JSON"}),
            )
        })?
    };
    let id = uuid::Uuid::now_v7().to_string();
    if path == "/mcp" {
        return Ok(mcp(&method, &body));
    }
    let answer = match (&method, path.as_str()) {
        (&Method::POST, "/email/send") => {
            json!({"status": "sent", "message_id": id, "to": body.get("to")})
        }
        (&Method::GET, "/search") => {
            let q = crate::http_util::query::parse_query(Some(&query));
            let term = q.get("q").and_then(|v| v.first()).cloned();
            json!({"query": term, "results": [
                {"title": "Latch: an approval gate for agent tool calls", "url": "https://example.invalid/latch"},
                {"title": "Writing Rego policies", "url": "https://example.invalid/rego"}
            ]})
        }
        (&Method::POST, "/trade/orders") => json!({
            "status": "filled", "order_id": id,
            "symbol": body.get("symbol"), "amount": body.get("amount"), "currency": body.get("currency")
        }),
        (&Method::DELETE, p) if p.starts_with("/files/") => {
            json!({"status": "deleted", "path": &p[6..]})
        }
        _ => {
            return Err(json_response(
                StatusCode::NOT_FOUND,
                &json!({"error": "no such tool endpoint"}),
            ))
        }
    };
    Ok(json_response(StatusCode::OK, &answer))
}

/// The demo tools as an MCP server: `initialize`, `tools/list`,
/// `tools/call`, `ping`; notifications are taken with 202.
fn mcp(method: &Method, msg: &Value) -> Response<Body> {
    if method != Method::POST {
        return json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({"error": "POST JSON-RPC messages here"}),
        );
    }
    let Some(id) = msg.get("id").cloned() else {
        let mut r = Response::new(crate::http_util::full(bytes::Bytes::new()));
        *r.status_mut() = StatusCode::ACCEPTED;
        return r;
    };
    let params = &msg["params"];
    let result = match msg["method"].as_str().unwrap_or("") {
        "initialize" => json!({
            "protocolVersion": params["protocolVersion"].as_str().unwrap_or("2025-06-18"),
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "latch-demo-tools", "version": env!("CARGO_PKG_VERSION")},
        }),
        "ping" => json!({}),
        "tools/list" => json!({"tools": [
            {"name": "search", "description": "Search the web",
             "inputSchema": {"type": "object", "properties": {"q": {"type": "string"}}},
             "annotations": {"readOnlyHint": true}},
            {"name": "send_email", "description": "Send an e-mail",
             "inputSchema": {"type": "object", "properties": {"to": {"type": "string"}, "subject": {"type": "string"}, "body": {"type": "string"}}},
             "annotations": {"readOnlyHint": false, "destructiveHint": false}},
            {"name": "execute_trade", "description": "Buy or sell",
             "inputSchema": {"type": "object", "properties": {"symbol": {"type": "string"}, "amount": {"type": "number"}, "currency": {"type": "string"}}},
             "annotations": {"readOnlyHint": false}},
            {"name": "delete_file", "description": "Delete a file",
             "inputSchema": {"type": "object", "properties": {"path": {"type": "string"}}},
             "annotations": {"readOnlyHint": false, "destructiveHint": true}},
        ]}),
        "tools/call" => {
            let args = &params["arguments"];
            let text = match params["name"].as_str().unwrap_or("") {
                "search" => format!("2 results for {}", args["q"]),
                "send_email" => format!("sent to {}", args["to"]),
                "execute_trade" => format!(
                    "filled {} {} of {}",
                    args["amount"], args["currency"], args["symbol"]
                ),
                "delete_file" => format!("deleted {}", args["path"]),
                other => {
                    return json_response(
                        StatusCode::OK,
                        &json!({"jsonrpc": "2.0", "id": id,
                        "error": {"code": -32602, "message": format!("no tool {other}")}}),
                    )
                }
            };
            json!({"content": [{"type": "text", "text": text}], "isError": false})
        }
        other => {
            return json_response(
                StatusCode::OK,
                &json!({"jsonrpc": "2.0", "id": id,
                "error": {"code": -32601, "message": format!("no method {other}")}}),
            )
        }
    };
    json_response(
        StatusCode::OK,
        &json!({"jsonrpc": "2.0", "id": id, "result": result}),
    )
}
