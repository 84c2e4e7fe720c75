//! Stdio MCP servers behind Streamable HTTP. A route with `command = [...]`
//! gets a bridge: a loopback listener that speaks Streamable HTTP and runs
//! one child process per MCP session, newline-delimited JSON-RPC on its
//! stdin and stdout. The route's upstream is the bridge, so allowed calls
//! and approved executions leave through the same [`crate::upstream`] path
//! as for any other server; only Latch knows the bridge's token.
//!
//! A child that dies is started again on the session's next message (after
//! a back-off that doubles up to 30 s), and Latch replays the session's
//! `initialize` to it; calls in flight when it died get an error. Its
//! stderr goes to Latch's log. Server-to-client messages reach a client
//! that holds the session's `GET` stream.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use subtle::ConstantTimeEq;
use tokio::sync::{broadcast, watch, Mutex};

mod child;

use child::{call, send, spawn, Proc};

use crate::http_util::{full, Body, ChannelBody};
use crate::mcp::{self as wire, Message};
use crate::server::{ConnInfo, ListenerOptions};

/// The header carrying the bridge's token (injected by the route).
pub const TOKEN_HEADER: &str = "x-latch-bridge-token";
/// Most sessions (child processes) one bridge runs at once.
const MAX_SESSIONS: usize = 64;
/// Largest message accepted from a client.
const MAX_BODY: usize = 16 << 20;
/// A session nobody used for this long is ended (its child stopped).
const SESSION_IDLE: Duration = Duration::from_secs(30 * 60);

/// A running bridge for one route.
pub struct Bridge {
    /// Where it listens (loopback).
    pub addr: SocketAddr,
    /// The token the route must send.
    pub token: String,
    stop: watch::Sender<bool>,
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

impl Bridge {
    /// Listen on loopback and serve `command` (run in `dir`) for `route`.
    pub async fn start(route: &str, command: Vec<String>, dir: &Path) -> anyhow::Result<Bridge> {
        Self::start_with(route, command, dir, SESSION_IDLE).await
    }

    /// [`Bridge::start`], ending sessions idle for `idle`.
    pub async fn start_with(
        route: &str,
        command: Vec<String>,
        dir: &Path,
        idle: Duration,
    ) -> anyhow::Result<Bridge> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let token = uuid::Uuid::new_v4().simple().to_string();
        let (stop, stop_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            route: route.to_string(),
            command,
            dir: dir.to_path_buf(),
            token: token.clone(),
            sessions: DashMap::new(),
            stop: stop_rx.clone(),
        });
        let opts = ListenerOptions {
            tls: None,
            directory: None,
            header_read_timeout: Duration::from_secs(10),
            max_connections: 1024,
        };
        tokio::spawn(reap(shared.clone(), idle));
        tokio::spawn(crate::server::serve(
            listener,
            opts,
            stop_rx,
            move |req, conn| handle(shared.clone(), req, conn),
        ));
        tracing::info!(route, %addr, "stdio MCP bridge listening");
        Ok(Bridge { addr, token, stop })
    }

    /// The upstream URL for the route.
    pub fn url(&self) -> String {
        format!("http://{}/mcp", self.addr)
    }
}

pub(super) struct Shared {
    route: String,
    command: Vec<String>,
    dir: PathBuf,
    token: String,
    sessions: DashMap<String, Arc<Session>>,
    stop: watch::Receiver<bool>,
}

/// One MCP session: its `initialize`, its current child, its listeners.
pub(super) struct Session {
    init: Value,
    initialized: std::sync::Mutex<Option<Value>>,
    child: Mutex<Option<Proc>>,
    events: broadcast::Sender<Value>,
    backoff: std::sync::Mutex<(Duration, Instant)>,
    /// Last request, for idle reaping.
    used: std::sync::Mutex<Instant>,
}

impl Session {
    fn touch(&self) {
        if let Ok(mut t) = self.used.lock() {
            *t = Instant::now();
        }
    }

    fn idle(&self) -> Duration {
        self.used.lock().map(|t| t.elapsed()).unwrap_or_default()
    }
}

/// End sessions idle longer than `idle` (dropping one stops its child).
async fn reap(shared: Arc<Shared>, idle: Duration) {
    let mut stop = shared.stop.clone();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(idle / 10) => {}
            _ = stop.changed() => return,
        }
        shared.sessions.retain(|id, s| {
            let keep = s.idle() < idle;
            if !keep {
                tracing::info!(route = %shared.route, session = %id, "ending an idle stdio MCP session");
            }
            keep
        });
    }
}

async fn handle(shared: Arc<Shared>, req: Request<Body>, _conn: Arc<ConnInfo>) -> Response<Body> {
    let authorised = req
        .headers()
        .get(TOKEN_HEADER)
        .is_some_and(|v| bool::from(v.as_bytes().ct_eq(shared.token.as_bytes())));
    if !authorised {
        return plain(StatusCode::UNAUTHORIZED, "this bridge serves Latch only");
    }
    let session_id = req
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let session = session_id
        .as_ref()
        .and_then(|id| shared.sessions.get(id).map(|s| s.clone()));
    if let Some(s) = &session {
        s.touch();
    }
    match (req.method().clone(), session) {
        (Method::DELETE, Some(_)) => {
            if let Some(id) = &session_id {
                shared.sessions.remove(id);
            }
            plain(StatusCode::OK, "")
        }
        (Method::GET, Some(s)) => events(&s),
        (Method::POST, s) => {
            let body = match http_body_util::Limited::new(req.into_body(), MAX_BODY)
                .collect()
                .await
            {
                Ok(b) => b.to_bytes(),
                Err(_) => return plain(StatusCode::PAYLOAD_TOO_LARGE, "message too large"),
            };
            post(&shared, s, session_id.is_some(), &body).await
        }
        (Method::GET | Method::DELETE, None) if session_id.is_some() => {
            plain(StatusCode::NOT_FOUND, "no such session")
        }
        (Method::GET | Method::DELETE, None) => {
            plain(StatusCode::BAD_REQUEST, "Mcp-Session-Id required")
        }
        _ => plain(StatusCode::METHOD_NOT_ALLOWED, "POST, GET or DELETE"),
    }
}

async fn post(
    shared: &Arc<Shared>,
    session: Option<Arc<Session>>,
    named: bool,
    body: &[u8],
) -> Response<Body> {
    let doc: Value = match serde_json::from_slice(body) {
        Ok(d) => d,
        Err(e) => {
            return rpc(
                StatusCode::BAD_REQUEST,
                &wire::error(None, wire::PARSE_ERROR, &e.to_string(), None),
                None,
            )
        }
    };
    let (batch, items) = match &doc {
        Value::Array(items) => (true, items.clone()),
        single => (false, vec![single.clone()]),
    };
    let session = match (session, named) {
        (Some(s), _) => s,
        (None, true) => return plain(StatusCode::NOT_FOUND, "no such session"),
        (None, false) => {
            let init = match items.as_slice() {
                [m] if m.get("method").and_then(Value::as_str) == Some("initialize") => m.clone(),
                _ => {
                    let e = wire::error(
                        None,
                        wire::INVALID_REQUEST,
                        "this stdio server needs `initialize` first (no Mcp-Session-Id given)",
                        None,
                    );
                    return rpc(StatusCode::BAD_REQUEST, &e, None);
                }
            };
            if shared.sessions.len() >= MAX_SESSIONS {
                return plain(StatusCode::SERVICE_UNAVAILABLE, "too many sessions");
            }
            return initialize(shared, init).await;
        }
    };
    let mut answers = Vec::new();
    for m in &items {
        match wire::message(m) {
            Ok(Message::Request { id, .. }) => answers.push(call(shared, &session, m, id).await),
            Ok(Message::Notification { method }) => {
                if method == "notifications/initialized" {
                    if let Ok(mut slot) = session.initialized.lock() {
                        *slot = Some(m.clone());
                    }
                }
                if let Err(e) = send(shared, &session, m).await {
                    tracing::warn!(route = %shared.route, error = %e, "stdio MCP server unavailable");
                }
            }
            Ok(Message::Response) => {
                let _ = send(shared, &session, m).await;
            }
            Err(e) => answers.push(e.to_json()),
        }
    }
    match (answers.len(), batch) {
        (0, _) => plain(StatusCode::ACCEPTED, ""),
        (_, true) => rpc(StatusCode::OK, &Value::Array(answers), None),
        _ => rpc(StatusCode::OK, &answers.remove(0), None),
    }
}

async fn initialize(shared: &Arc<Shared>, init: Value) -> Response<Body> {
    let (events, _) = broadcast::channel(64);
    let session = Arc::new(Session {
        init: init.clone(),
        initialized: std::sync::Mutex::new(None),
        child: Mutex::new(None),
        events,
        backoff: std::sync::Mutex::new((Duration::ZERO, Instant::now())),
        used: std::sync::Mutex::new(Instant::now()),
    });
    let id = init.get("id").cloned().unwrap_or(Value::Null);
    let mut slot = session.child.lock().await;
    let answer = match spawn(shared, &session).await {
        Ok((proc, answer)) => {
            *slot = Some(proc);
            answer
        }
        Err(e) => {
            tracing::warn!(route = %shared.route, error = %e, "stdio MCP server failed to start");
            let e = wire::error(
                Some(&id),
                wire::INTERNAL_ERROR,
                &format!("the stdio MCP server did not start: {e}"),
                None,
            );
            return rpc(StatusCode::BAD_GATEWAY, &e, None);
        }
    };
    drop(slot);
    let session_id = uuid::Uuid::new_v4().to_string();
    shared.sessions.insert(session_id.clone(), session);
    rpc(StatusCode::OK, &answer, Some(&session_id))
}

/// The session's server-to-client messages as an event stream.
fn events(session: &Arc<Session>) -> Response<Body> {
    let mut rx = session.events.subscribe();
    let (tx, body_rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    tokio::spawn(async move {
        loop {
            let msg = match rx.recv().await {
                Ok(m) => m,
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return,
            };
            if tx.send(wire::sse_event(&msg)).await.is_err() {
                return;
            }
        }
    });
    let mut resp = Response::new(BodyExt::boxed(ChannelBody(body_rx)));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    resp
}

fn rpc(status: StatusCode, body: &Value, session: Option<&str>) -> Response<Body> {
    let mut resp = crate::http_util::json(status, body);
    if let Some(v) = session.and_then(|s| HeaderValue::from_str(s).ok()) {
        resp.headers_mut().insert("mcp-session-id", v);
    }
    resp
}

fn plain(status: StatusCode, text: &str) -> Response<Body> {
    let mut resp = Response::new(full(text.to_string()));
    *resp.status_mut() = status;
    resp
}

/// Start a bridge for every route with a `command`, pointing the route at
/// it; the bridges run as long as they are kept.
pub async fn start_all(
    routes: &mut [crate::config::RouteConfig],
    dir: &Path,
) -> anyhow::Result<Vec<Bridge>> {
    let mut bridges = Vec::new();
    for r in routes.iter_mut() {
        let Some(command) = r.command.clone() else {
            continue;
        };
        let b = Bridge::start(&r.name, command, dir).await?;
        r.upstream = b.url().parse()?;
        let mut token = HeaderValue::from_str(&b.token)?;
        token.set_sensitive(true);
        r.inject_headers
            .push((http::HeaderName::from_static(TOKEN_HEADER), token));
        bridges.push(b);
    }
    Ok(bridges)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A "server" that answers every line with an empty result for id 0.
    fn answering_shell() -> Vec<String> {
        let script = r#"while read -r line; do echo '{"jsonrpc":"2.0","id":0,"result":{}}'; done"#;
        vec!["sh".into(), "-c".into(), script.into()]
    }

    async fn post(
        bridge: &Bridge,
        session: Option<&str>,
        token: &str,
        body: &str,
    ) -> (u16, Option<String>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(bridge.addr).await.unwrap();
        let session = session
            .map(|s| format!("mcp-session-id: {s}\r\n"))
            .unwrap_or_default();
        let req = format!(
            "POST /mcp HTTP/1.1\r\nhost: x\r\n{TOKEN_HEADER}: {token}\r\n{session}content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        let status = out.split(' ').nth(1).unwrap().parse().unwrap();
        let sid = out
            .lines()
            .find_map(|l| l.strip_prefix("mcp-session-id: "))
            .map(str::to_string);
        (status, sid)
    }

    const INIT: &str = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{}}"#;

    #[tokio::test]
    async fn only_latch_may_call_and_idle_sessions_end() {
        let dir = tempfile::tempdir().unwrap();
        let bridge = Bridge::start_with(
            "t",
            answering_shell(),
            dir.path(),
            Duration::from_millis(300),
        )
        .await
        .unwrap();
        assert_eq!(post(&bridge, None, "wrong", INIT).await.0, 401);
        let (status, sid) = post(&bridge, None, &bridge.token, INIT).await;
        assert_eq!(status, 200);
        let sid = sid.unwrap();
        let ping = r#"{"jsonrpc":"2.0","id":0,"method":"ping"}"#;
        assert_eq!(post(&bridge, Some(&sid), &bridge.token, ping).await.0, 200);
        let other = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;
        assert_eq!(
            post(&bridge, None, &bridge.token, other).await.0,
            400,
            "initialize comes first"
        );
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert_eq!(
            post(&bridge, Some(&sid), &bridge.token, ping).await.0,
            404,
            "the idle session ended"
        );
    }
}
