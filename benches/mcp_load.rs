//! Load harness for MCP `tools/call` on the allow path: an rmcp server (the
//! demo code host, in this process) called directly and through Latch (the
//! release binary, the `examples/mcp` policy pack on the shipped rules) in
//! one run, on loopback only. Each target gets its own MCP session; the
//! call is `search_issues`, allowed by the pack.
//!
//! `cargo bench --bench mcp_load` (see benches/README.md). Settings as for
//! `proxy_load`: `LOAD_SECS`, `LOAD_RATE`, `LOAD_ROUNDS`, `LOAD_CONNS`.

#[path = "../examples/mcp/tools.rs"]
#[allow(dead_code)]
mod tools;

mod load;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use latch::testing::{free_addr, wait_for, Proc};
use load::{compare, report, MakeRequest, Settings};

/// A `search_issues` call with request id `id` (ids in a session are unique).
fn call(id: u64) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"search_issues","arguments":{{"query":"flaky"}}}}}}"#
    )
}

fn start_latch(dir: &Path, upstream: SocketAddr) -> (Proc, SocketAddr) {
    let (proxy, admin) = (free_addr(), free_addr());
    let policies = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/mcp/policies");
    let config = format!(
        r#"[proxy]
listen = "{proxy}"
[admin]
listen = "{admin}"
[store]
url = "sqlite://{db}"
[policy]
dir = "{policies}"
[log]
level = "warn"
format = "json"
[[principals]]
id = "bench-bot"
roles = ["agent"]
token = "bench-token"
[[routes]]
name = "codehost"
prefix = "/mcp/codehost"
protocol = "mcp"
upstream = "http://{upstream}/mcp"
"#,
        db = dir.join("latch.db").display(),
        policies = policies.display(),
    );
    let path = dir.join("latch.toml");
    std::fs::write(&path, config).unwrap_or_else(|e| panic!("config: {e}"));
    let child = Command::new(env!("CARGO_BIN_EXE_latch"))
        .args(["serve", "--config"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("start latch: {e}"));
    let proc = Proc(child);
    wait_for(proxy);
    (proc, proxy)
}

fn post(url: &str, session: Option<&str>, body: String) -> Request<Full<Bytes>> {
    let mut req = Request::post(url)
        .header("authorization", "Bearer bench-token")
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream");
    if let Some(s) = session {
        req = req
            .header("mcp-session-id", s)
            .header("mcp-protocol-version", "2025-06-18");
    }
    req.body(Full::new(Bytes::from(body))).unwrap_or_default()
}

/// Open a session at `url`; the target that calls the tool in it.
async fn session(url: String) -> MakeRequest {
    let client: load::HttpClient =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let init = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"bench","version":"1"}}}"#;
    let resp = client
        .request(post(&url, None, init.to_string()))
        .await
        .unwrap_or_else(|e| panic!("initialize {url}: {e}"));
    let id = resp
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("no session from {url}"))
        .to_string();
    let _ = resp.into_body().collect().await;
    let note = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
    let resp = client
        .request(post(&url, Some(&id), note.to_string()))
        .await
        .unwrap_or_else(|e| panic!("initialized {url}: {e}"));
    let _ = resp.into_body().collect().await;
    let next = Arc::new(AtomicU64::new(1));
    Arc::new(move || post(&url, Some(&id), call(next.fetch_add(1, Ordering::Relaxed))))
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let settings = Settings::from_env();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));

    // The server runs on its own runtime, so the load generator's threads
    // and the server's do not queue behind each other.
    let server_rt = load::runtime();
    let listener = server_rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap_or_else(|e| panic!("bind: {e}"));
    let upstream = listener
        .local_addr()
        .unwrap_or_else(|e| panic!("addr: {e}"));
    server_rt.spawn(tools::serve_http(listener, tools::CodeHost::default()));
    let (_latch, proxy) = start_latch(dir.path(), upstream);

    let rt = load::runtime();
    let targets = vec![
        (
            "direct",
            rt.block_on(session(format!("http://{upstream}/mcp"))),
        ),
        (
            "latch",
            rt.block_on(session(format!("http://{proxy}/mcp/codehost"))),
        ),
    ];
    let results = compare(&rt, &targets, settings);
    report(&results, "direct", "latch", settings.rate);
}
