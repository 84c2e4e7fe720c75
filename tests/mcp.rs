//! MCP routes end to end, with the official Rust SDK (rmcp) on both sides:
//! a real client as the agent, a real server as the tool (over Streamable
//! HTTP, and over stdio through Latch's bridge). Each test checks what the
//! server ran, not only what the client was told.

mod common;

#[path = "../examples/mcp/tools.rs"]
#[allow(dead_code)]
mod tools;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use latch::testing::{self, TestLatch};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ClientCapabilities, ClientConfig,
    ClientRequest, GetTaskParams, ProgressNotificationParam, ProtocolVersion, Request,
    ServerResult,
};
use rmcp::service::{
    ClientLifecycleMode, ClientServiceExt, NotificationContext, PeerRequestOptions, RunningService,
};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{ClientHandler, RoleClient, ServiceExt};
use serde_json::{json, Value};

/// Destructive tools (by the server's own hint) are refused, transfers of
/// 100 or more credits need a lead, the admin tool is offered to bot2 only.
const POLICY: &str = r#"
package latch
import rego.v1

default tool_visible := true

tool_visible := false if {
	input.action.tool == "rotate_admin_keys"
	input.agent.id != "bot2"
}

decision := {"action": "deny", "risk": "high", "code": "destructive",
	"reasons": [sprintf("%s on %s may destroy data", [input.action.tool, input.mcp.server])]} if {
	input.mcp.method == "tools/call"
	input.mcp.annotations.destructiveHint == true
} else := {"action": "gate", "risk": "medium", "code": "transfer",
	"reasons": [sprintf("moves %v credits to %v", [input.action.args.amount, input.action.args.to])],
	"approval": {"require": [{"role": "lead", "count": 1}], "timeout_s": 60, "on_timeout": "deny"}} if {
	input.action.tool == "transfer_credits"
	input.action.args.amount >= 100
} else := {"action": "allow", "risk": "low", "code": "ok", "reasons": []}
"#;

const ROUTE: &str = "/mcp/codehost";

fn route(upstream: &str) -> String {
    format!(
        "\n[[routes]]\nname = \"codehost\"\nprefix = \"{ROUTE}\"\nprotocol = \"mcp\"\n{upstream}\nmax_body_bytes = 65536\n"
    )
}

async fn latch_for(upstream: &str) -> TestLatch {
    let text = testing::config_text("http://127.0.0.1:9", &route(upstream))
        .replace("hold_s = 5", "hold_s = 5\nprogress_ms = 150");
    TestLatch::start_text(text, POLICY).await
}

/// An in-process rmcp server on loopback; its call log.
async fn http_server() -> (String, tools::CallLog) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let host = tools::CodeHost::default();
    let log = host.log.clone();
    tokio::spawn(tools::serve_http(listener, host));
    (format!("upstream = \"http://{addr}/mcp\""), log)
}

/// The agent: an rmcp client that counts progress notifications.
#[derive(Clone)]
struct Agent {
    info: ClientConfig,
    progress: Arc<AtomicUsize>,
    messages: Arc<Mutex<Vec<String>>>,
}

impl ClientHandler for Agent {
    fn get_info(&self) -> ClientConfig {
        self.info.clone()
    }

    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.progress.fetch_add(1, Ordering::SeqCst);
        if let Some(m) = params.message {
            self.messages.lock().unwrap().push(m);
        }
    }
}

fn agent(version: ProtocolVersion, tasks: bool) -> Agent {
    let mut info = ClientConfig::default();
    info.protocol_version = version;
    if tasks {
        info.capabilities = ClientCapabilities::builder().enable_tasks().build();
    }
    Agent {
        info,
        progress: Arc::default(),
        messages: Arc::default(),
    }
}

type Client = RunningService<RoleClient, Agent>;

async fn connect(proxy: SocketAddr, token: &str, a: Agent) -> Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = StreamableHttpClientTransportConfig::with_uri(format!("http://{proxy}{ROUTE}"))
        .auth_header(token);
    let transport = StreamableHttpClientTransport::from_config(config);
    let version = a.info.protocol_version.clone();
    if version.has_initialize() {
        a.serve(transport)
            .await
            .expect("client starts through Latch")
    } else {
        a.serve_with_lifecycle(
            transport,
            ClientLifecycleMode::Discover {
                preferred_versions: vec![version],
            },
        )
        .await
        .expect("client discovers through Latch")
    }
}

fn call(name: &str, args: Value) -> CallToolRequestParams {
    CallToolRequestParams::new(name.to_string()).with_arguments(args.as_object().cloned().unwrap())
}

/// Alice (a lead) approves approval `id`.
async fn approve(latch: &TestLatch, id: &str) {
    let path = format!("/api/v1/approvals/{id}/approve");
    let r = testing::admin(latch.admin(), "POST", &path, "alice-token", "{}").await;
    assert_eq!(r.status, 200, "{}", r.json());
}

/// Call a tool from another task (a held call waits there).
fn in_background(
    client: &Arc<Client>,
    params: CallToolRequestParams,
) -> tokio::task::JoinHandle<Result<CallToolResult, rmcp::ServiceError>> {
    let c = client.clone();
    tokio::spawn(async move { c.call_tool(params).await })
}

fn text(r: &CallToolResult) -> String {
    serde_json::to_value(&r.content).unwrap()[0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn names(log: &tools::CallLog) -> Vec<String> {
    log.calls()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn tool_calls_are_judged_by_name_and_arguments_on_every_protocol_revision() {
    let (upstream, log) = http_server().await;
    let latch = latch_for(&upstream).await;
    for version in [
        ProtocolVersion::V_2025_06_18,
        ProtocolVersion::V_2025_11_25,
        ProtocolVersion::V_2026_07_28,
    ] {
        let client = connect(
            latch.proxy(),
            testing::AGENT_TOKEN,
            agent(version.clone(), false),
        )
        .await;
        // The admin tool is not offered to this agent; the others are.
        let listed: Vec<String> = client
            .list_all_tools()
            .await
            .unwrap()
            .iter()
            .map(|t| t.name.to_string())
            .collect();
        assert!(
            listed.contains(&"search_issues".to_string()),
            "{version}: {listed:?}"
        );
        assert!(
            !listed.contains(&"rotate_admin_keys".to_string()),
            "{version}: {listed:?}"
        );

        let ok = client
            .call_tool(call("search_issues", json!({"query": "flaky test"})))
            .await
            .unwrap();
        assert_eq!(ok.is_error, Some(false), "{version}");
        assert_eq!(text(&ok), "3 issues match \"flaky test\"");

        // Denied: a tool result the model can read, with the decision in _meta.
        let denied = client
            .call_tool(call("delete_repo", json!({"repo": "prod"})))
            .await
            .unwrap();
        assert_eq!(denied.is_error, Some(true), "{version}");
        assert!(
            text(&denied).contains("delete_repo on codehost may destroy data"),
            "{}",
            text(&denied)
        );
        let meta = serde_json::to_value(&denied.meta).unwrap();
        assert_eq!(meta["latch/code"], "destructive");
        assert!(meta["latch/decision_id"].is_string());
        client.cancel().await.unwrap();
    }
    // The server ran the allowed calls and never saw the denied ones.
    assert_eq!(names(&log), vec!["search_issues"; 3]);

    // Another agent is offered the admin tool.
    let other = connect(
        latch.proxy(),
        "bot2-token",
        agent(ProtocolVersion::V_2025_11_25, false),
    )
    .await;
    let listed = other.list_all_tools().await.unwrap();
    assert!(listed.iter().any(|t| t.name == "rotate_admin_keys"));
    other.cancel().await.unwrap();

    // Every call is in the audit trail, allowed, denied or passed through.
    let audit = testing::admin(
        latch.admin(),
        "GET",
        "/api/v1/audit?limit=500",
        "alice-token",
        "",
    )
    .await;
    let records = audit.json()["records"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let tools: Vec<&str> = records
        .iter()
        .filter(|r| r["event"] == "decision")
        .filter_map(|r| r["details"]["tool"].as_str())
        .collect();
    assert!(
        tools.contains(&"delete_repo") && tools.contains(&"tools/list"),
        "{tools:?}"
    );
}

/// Hold a transfer; the client's timeout (shorter than the wait) resets on
/// each progress notification; approval runs the call once.
#[tokio::test]
async fn a_held_call_streams_progress_and_runs_once_when_approved() {
    let (upstream, log) = http_server().await;
    let latch = latch_for(&upstream).await;
    let a = agent(ProtocolVersion::V_2025_11_25, false);
    let progress = a.progress.clone();
    let messages = a.messages.clone();
    let client = connect(latch.proxy(), testing::AGENT_TOKEN, a).await;
    let request = ClientRequest::CallToolRequest(Request::new(call(
        "transfer_credits",
        json!({"to": "acct-9", "amount": 500}),
    )));
    let options =
        PeerRequestOptions::with_timeout(Duration::from_millis(700)).reset_timeout_on_progress();
    let handle = client
        .send_request_with_option(request, options)
        .await
        .unwrap();
    let waiting = tokio::spawn(handle.await_response());

    let id = testing::wait_pending(latch.admin()).await;
    let a = testing::admin(
        latch.admin(),
        "GET",
        &format!("/api/v1/approvals/{id}"),
        "alice-token",
        "",
    )
    .await;
    assert_eq!(a.json()["tool"], "transfer_credits");
    assert!(log.calls().is_empty(), "nothing runs before approval");
    // Longer than the client's timeout: only progress keeps it waiting.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    approve(&latch, &id).await;

    let answer = waiting.await.unwrap().expect("the held call completes");
    let ServerResult::CallToolResult(result) = answer else {
        panic!("not a tool result: {answer:?}");
    };
    assert_eq!(text(&result), "moved 500 credits to \"acct-9\"");
    assert!(
        progress.load(Ordering::SeqCst) >= 3,
        "progress: {}",
        progress.load(Ordering::SeqCst)
    );
    assert!(
        messages.lock().unwrap()[0].contains("waiting for 1× lead"),
        "{:?}",
        messages.lock().unwrap()
    );
    testing::wait_state(latch.admin(), &id, "executed").await;
    assert_eq!(
        log.calls(),
        vec![json!({"name": "transfer_credits", "arguments": {"to": "acct-9", "amount": 500}})]
    );
    client.cancel().await.unwrap();
    common::assert_audit_verifies(&latch);
}

#[tokio::test]
async fn rejected_calls_answer_with_the_reason_and_modified_ones_send_the_new_arguments() {
    let (upstream, log) = http_server().await;
    let latch = latch_for(&upstream).await;
    let client = Arc::new(
        connect(
            latch.proxy(),
            testing::AGENT_TOKEN,
            agent(ProtocolVersion::V_2025_06_18, false),
        )
        .await,
    );

    let rejected = in_background(
        &client,
        call("transfer_credits", json!({"to": "acct-1", "amount": 900})),
    );
    let id = testing::wait_pending(latch.admin()).await;
    let body = json!({"reason": "acct-1 is closed; use acct-2"}).to_string();
    let r = testing::admin(
        latch.admin(),
        "POST",
        &format!("/api/v1/approvals/{id}/reject"),
        "alice-token",
        &body,
    )
    .await;
    assert_eq!(r.status, 200);
    let result = rejected.await.unwrap().unwrap();
    assert_eq!(result.is_error, Some(true));
    assert!(
        text(&result).contains("acct-1 is closed; use acct-2"),
        "{}",
        text(&result)
    );
    assert_eq!(
        serde_json::to_value(&result.meta).unwrap()["latch/decision"],
        "rejected"
    );

    // A reviewer lowers the amount: the policy judges the new arguments,
    // the modifier's approval counts, and the server gets exactly them.
    let modified = in_background(
        &client,
        call("transfer_credits", json!({"to": "acct-2", "amount": 900})),
    );
    let id = testing::wait_pending(latch.admin()).await;
    let not_object = testing::admin(
        latch.admin(),
        "POST",
        &format!("/api/v1/approvals/{id}/modify"),
        "alice-token",
        r#"{"body": [1]}"#,
    )
    .await;
    assert_eq!(not_object.status, 422, "{}", not_object.json());
    let body =
        json!({"body": {"to": "acct-2", "amount": 150}, "comment": "150 is enough"}).to_string();
    let r = testing::admin(
        latch.admin(),
        "POST",
        &format!("/api/v1/approvals/{id}/modify"),
        "alice-token",
        &body,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.json());
    let result = modified.await.unwrap().unwrap();
    assert_eq!(text(&result), "moved 150 credits to \"acct-2\"");
    assert_eq!(
        log.calls(),
        vec![json!({"name": "transfer_credits", "arguments": {"to": "acct-2", "amount": 150}})]
    );
}

#[tokio::test]
async fn a_client_that_declares_tasks_gets_a_task_to_poll() {
    let (upstream, log) = http_server().await;
    let latch = latch_for(&upstream).await;
    let client = connect(
        latch.proxy(),
        testing::AGENT_TOKEN,
        agent(ProtocolVersion::V_2025_11_25, true),
    )
    .await;
    let answer = client
        .call_tool_once(call(
            "transfer_credits",
            json!({"to": "acct-3", "amount": 250}),
        ))
        .await
        .unwrap();
    let CallToolResponse::Task(created) = answer else {
        panic!("not a task: {answer:?}");
    };
    let task_id = created.task.task_id.clone();
    let polled = client
        .get_task(GetTaskParams::new(task_id.clone()))
        .await
        .unwrap();
    assert_eq!(serde_json::to_value(&polled).unwrap()["status"], "working");

    approve(&latch, &task_id).await;
    let mut done = Value::Null;
    for _ in 0..100 {
        let polled = client
            .get_task(GetTaskParams::new(task_id.clone()))
            .await
            .unwrap();
        done = serde_json::to_value(&polled).unwrap();
        if done["status"] != "working" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(
        done["result"]["content"][0]["text"],
        "moved 250 credits to \"acct-3\""
    );
    assert_eq!(names(&log), vec!["transfer_credits"]);
    client.cancel().await.unwrap();
}

/// Raw Streamable HTTP, for what an SDK will not send.
async fn post(
    proxy: SocketAddr,
    session: Option<&str>,
    body: &str,
    extra: &[(&str, &str)],
) -> testing::Answer {
    let mut req = testing::agent_request("POST", proxy, ROUTE)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream");
    if let Some(s) = session {
        req = req
            .header("mcp-session-id", s)
            .header("mcp-protocol-version", "2025-06-18");
    }
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    testing::send(
        req.body(http_body_util::Full::new(bytes::Bytes::from(
            body.to_string(),
        )))
        .unwrap(),
    )
    .await
}

/// The JSON-RPC messages of an answer (JSON or event stream).
fn rpc(a: &testing::Answer) -> Vec<Value> {
    let framing = latch::mcp::Framing::of(Some(a.header("content-type"))).expect("an MCP answer");
    latch::mcp::messages(framing, &a.body).unwrap()
}

async fn session(proxy: SocketAddr) -> String {
    let init = post(
        proxy,
        None,
        r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}"#,
        &[],
    )
    .await;
    assert_eq!(init.status, 200);
    let s = init.header("mcp-session-id").to_string();
    let done = post(
        proxy,
        Some(&s),
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
        &[],
    )
    .await;
    assert_eq!(done.status, 202);
    s
}

#[tokio::test]
async fn bad_messages_get_json_rpc_errors_and_batches_go_out_whole_or_not_at_all() {
    let (upstream, log) = http_server().await;
    let latch = latch_for(&upstream).await;
    let p = latch.proxy();
    let s = session(p).await;

    let cases: &[(&str, u16, i64)] = &[
        ("{not json", 400, -32700),
        (r#"{"id":1,"method":"tools/call"}"#, 400, -32600),
        (
            r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"arguments":{}}}"#,
            200,
            -32602,
        ),
        (
            r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"search_issues","arguments":["x"]}}"#,
            200,
            -32602,
        ),
        ("[]", 400, -32600),
    ];
    for (body, status, code) in cases {
        let a = post(p, Some(&s), body, &[]).await;
        assert_eq!(
            a.status,
            *status,
            "{body}: {}",
            String::from_utf8_lossy(&a.body)
        );
        assert_eq!(a.json()["error"]["code"], *code, "{body}");
    }
    // A header that names another tool than the body is refused.
    let a = post(
        p,
        Some(&s),
        r#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"delete_repo","arguments":{"repo":"x"}}}"#,
        &[("mcp-method", "tools/call"), ("mcp-name", "search_issues")],
    )
    .await;
    assert_eq!(a.status, 400);
    assert!(a.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("Mcp-Name"));

    // A batch with a denied call: nothing is sent, each request is answered.
    let batch = r#"[
        {"jsonrpc":"2.0","id":10,"method":"tools/call","params":{"name":"search_issues","arguments":{"query":"a"}}},
        {"jsonrpc":"2.0","id":11,"method":"tools/call","params":{"name":"delete_repo","arguments":{"repo":"prod"}}},
        {"jsonrpc":"2.0","id":12,"method":"ping"}
    ]"#;
    let a = post(p, Some(&s), batch, &[]).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("latch-decision"), "deny");
    let answers = rpc(&a);
    assert_eq!(answers.len(), 3);
    assert_eq!(answers[0]["id"], 10);
    assert!(answers[0]["result"]["content"][0]["text"]
        .as_str()
        .unwrap()
        .contains("batch goes out whole"));
    assert_eq!(answers[1]["result"]["isError"], true);
    assert_eq!(answers[1]["result"]["_meta"]["latch/code"], "destructive");
    assert_eq!(answers[2]["error"]["code"], -32600);
    assert!(log.calls().is_empty());
}

#[tokio::test]
async fn a_client_that_goes_away_cancels_its_held_call() {
    let (upstream, log) = http_server().await;
    let latch = latch_for(&upstream).await;
    let p = latch.proxy();
    let s = session(p).await;
    let body = r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"transfer_credits","arguments":{"to":"a","amount":300},"_meta":{"progressToken":"t7"}}}"#;
    let request = format!(
        "POST {ROUTE} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nMcp-Session-Id: {s}\r\nContent-Length: {}\r\n\r\n{body}",
        testing::AGENT_TOKEN,
        body.len()
    );
    let mut conn = tokio::net::TcpStream::connect(p).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut conn, request.as_bytes())
        .await
        .unwrap();
    let id = testing::wait_pending(latch.admin()).await;
    let mut head = vec![0u8; 4096];
    let n = tokio::io::AsyncReadExt::read(&mut conn, &mut head)
        .await
        .unwrap();
    let seen = String::from_utf8_lossy(&head[..n]).to_string();
    assert!(seen.contains("text/event-stream"), "{seen}");
    drop(conn);
    testing::wait_state(latch.admin(), &id, "cancelled").await;
    assert!(log.calls().is_empty());
}

#[tokio::test]
async fn an_upstream_that_is_not_mcp_or_dies_gives_json_rpc_errors() {
    // A plain web server where an MCP server should be.
    let html = testing::fixed_upstream(b"<html>hello</html>");
    let latch = latch_for(&format!("upstream = \"http://{html}/\"")).await;
    let a = post(latch.proxy(), None, r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search_issues","arguments":{"query":"x"}}}"#, &[]).await;
    assert_eq!(a.status, 502, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.json()["id"], 1);
    assert_eq!(a.header("latch-error"), "upstream_not_mcp");
    drop(latch);

    // A server process killed while a call waits for approval.
    let log = tempfile::NamedTempFile::new().unwrap();
    let addr = testing::free_addr();
    let mut server = spawn_server(&format!("listen={addr}"), log.path());
    testing::wait_for(addr);
    let latch = latch_for(&format!("upstream = \"http://{addr}/mcp\"")).await;
    let client = Arc::new(
        connect(
            latch.proxy(),
            testing::AGENT_TOKEN,
            agent(ProtocolVersion::V_2025_11_25, false),
        )
        .await,
    );
    let held = in_background(
        &client,
        call("transfer_credits", json!({"to": "b", "amount": 400})),
    );
    let id = testing::wait_pending(latch.admin()).await;
    server.kill().unwrap();
    server.wait().unwrap();
    approve(&latch, &id).await;
    let result = held.await.unwrap().unwrap();
    assert_eq!(result.is_error, Some(true));
    assert!(
        text(&result).contains("sending it to the server failed"),
        "{}",
        text(&result)
    );
    testing::wait_state(latch.admin(), &id, "failed").await;
}

/// This test binary doubles as the MCP server process for the stdio and
/// killed-server tests: `mcp_server_process --exact --ignored -- log=… (stdio|listen=…)`.
fn spawn_server(mode: &str, log: &std::path::Path) -> std::process::Child {
    std::process::Command::new(std::env::current_exe().unwrap())
        .args(server_args(mode, log))
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

fn server_args(mode: &str, log: &std::path::Path) -> Vec<String> {
    vec![
        "mcp_server_process".into(),
        "--exact".into(),
        "--ignored".into(),
        "--nocapture".into(),
        "--test-threads=1".into(),
        format!("log={}", log.display()),
        mode.into(),
    ]
}

#[test]
#[ignore = "run as a child process by other tests"]
fn mcp_server_process() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |k: &str| {
        args.iter()
            .find_map(|a| a.strip_prefix(k))
            .map(str::to_string)
    };
    let Some(log) = arg("log=") else { return };
    let listen = arg("listen=");
    let host = tools::CodeHost {
        log: tools::CallLog::to_file(log.clone().into()),
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        if let Some(addr) = listen {
            let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
            tools::serve_http(listener, host).await.unwrap();
        } else {
            // End the harness's "test … " line: stdout is the protocol now.
            println!();
            // Say who we are, so a test can kill this process.
            std::fs::write(format!("{log}.pid"), std::process::id().to_string()).unwrap();
            let running = host.serve(rmcp::transport::stdio()).await.unwrap();
            let _ = running.waiting().await;
        }
    });
}

#[tokio::test]
async fn a_stdio_server_is_served_over_streamable_http_and_restarted_when_it_dies() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("calls.jsonl");
    let mut command = vec![std::env::current_exe().unwrap().display().to_string()];
    command.extend(server_args("stdio", &log));
    let command = serde_json::to_string(&command).unwrap();
    let latch = latch_for(&format!("command = {command}")).await;
    let client = Arc::new(
        connect(
            latch.proxy(),
            testing::AGENT_TOKEN,
            agent(ProtocolVersion::V_2025_06_18, false),
        )
        .await,
    );
    let listed = client.list_all_tools().await.unwrap();
    assert!(listed.iter().any(|t| t.name == "delete_repo"));
    assert!(!listed.iter().any(|t| t.name == "rotate_admin_keys"));
    let ok = client
        .call_tool(call("search_issues", json!({"query": "q"})))
        .await
        .unwrap();
    assert_eq!(text(&ok), "3 issues match \"q\"");
    let denied = client
        .call_tool(call("delete_repo", json!({"repo": "r"})))
        .await
        .unwrap();
    assert_eq!(denied.is_error, Some(true));

    let held = in_background(
        &client,
        call("transfer_credits", json!({"to": "s", "amount": 120})),
    );
    let id = testing::wait_pending(latch.admin()).await;
    approve(&latch, &id).await;
    assert_eq!(
        text(&held.await.unwrap().unwrap()),
        "moved 120 credits to \"s\""
    );

    // Kill the server: the bridge starts it again, replays `initialize`,
    // and the session goes on.
    let pid = std::fs::read_to_string(format!("{}.pid", log.display())).unwrap();
    assert!(std::process::Command::new("kill")
        .args(["-9", pid.trim()])
        .status()
        .unwrap()
        .success());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut again = None;
    for _ in 0..40 {
        match client
            .call_tool(call("search_issues", json!({"query": "after"})))
            .await
        {
            Ok(r) if r.is_error != Some(true) => {
                again = Some(r);
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
    assert_eq!(
        text(&again.expect("the restarted server answers")),
        "3 issues match \"after\""
    );
    let new_pid = std::fs::read_to_string(format!("{}.pid", log.display())).unwrap();
    assert_ne!(pid, new_pid, "a new server process answered");
    // A batch of allowed calls goes out whole (rmcp's HTTP server no longer
    // takes batches; the bridge does).
    let s = session(latch.proxy()).await;
    let batch = r#"[
        {"jsonrpc":"2.0","id":20,"method":"tools/call","params":{"name":"search_issues","arguments":{"query":"b1"}}},
        {"jsonrpc":"2.0","id":21,"method":"tools/call","params":{"name":"search_issues","arguments":{"query":"b2"}}}
    ]"#;
    let a = post(latch.proxy(), Some(&s), batch, &[]).await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    let answers = rpc(&a);
    assert_eq!(answers.len(), 2);
    assert_eq!(
        answers[1]["result"]["content"][0]["text"],
        "3 issues match \"b2\""
    );

    let calls: Vec<Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ran: Vec<&str> = calls.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(
        ran,
        vec![
            "search_issues",
            "transfer_credits",
            "search_issues",
            "search_issues",
            "search_issues"
        ]
    );
}

#[tokio::test]
async fn tasks_requested_per_call_can_be_waited_for_or_cancelled() {
    let (upstream, log) = http_server().await;
    let latch = latch_for(&upstream).await;
    let p = latch.proxy();
    let s = session(p).await;
    let transfer = |id: u64, amount: u64| {
        format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"transfer_credits","arguments":{{"to":"t","amount":{amount}}},"task":{{"ttl":60000}}}}}}"#
        )
    };
    let created = post(p, Some(&s), &transfer(1, 300), &[]).await;
    assert_eq!(created.header("latch-decision"), "gate");
    let task = created.json()["result"].clone();
    assert_eq!(task["resultType"], "task", "{task}");
    let first = task["taskId"].as_str().unwrap().to_string();
    assert_eq!(
        task["task"]["taskId"],
        first.as_str(),
        "2025-11-25 clients read `task`"
    );

    let get = |id: &str| {
        format!(r#"{{"jsonrpc":"2.0","id":2,"method":"tasks/get","params":{{"taskId":"{id}"}}}}"#)
    };
    assert_eq!(
        post(p, Some(&s), &get(&first), &[]).await.json()["result"]["status"],
        "working"
    );
    let cancel = format!(
        r#"{{"jsonrpc":"2.0","id":3,"method":"tasks/cancel","params":{{"taskId":"{first}"}}}}"#
    );
    let cancelled = post(p, Some(&s), &cancel, &[]).await;
    assert_eq!(
        cancelled.json()["result"]["status"],
        "cancelled",
        "{}",
        cancelled.json()
    );
    testing::wait_state(latch.admin(), &first, "cancelled").await;

    // Another agent cannot read this agent's task: it is passed on to the
    // server, which knows no such task.
    let other = testing::send(
        http::Request::post(format!("http://{p}{ROUTE}"))
            .header("authorization", "Bearer bot2-token")
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-session-id", s.as_str())
            .body(http_body_util::Full::new(bytes::Bytes::from(get(&first))))
            .unwrap(),
    )
    .await;
    assert_ne!(other.header("latch-decision"), "gate");

    // tasks/result waits for the verdict, then answers with the result.
    let second = post(p, Some(&s), &transfer(4, 200), &[]).await.json()["result"]["taskId"]
        .as_str()
        .unwrap()
        .to_string();
    let result = format!(
        r#"{{"jsonrpc":"2.0","id":5,"method":"tasks/result","params":{{"taskId":"{second}"}}}}"#
    );
    let waiting = tokio::spawn(async move {
        let req = testing::agent_request("POST", p, ROUTE)
            .header("content-type", "application/json")
            .header("accept", "application/json")
            .header("mcp-session-id", s.as_str())
            .body(http_body_util::Full::new(bytes::Bytes::from(result)))
            .unwrap();
        testing::send(req).await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    approve(&latch, &second).await;
    let answer = waiting.await.unwrap().json();
    assert_eq!(answer["id"], 5);
    assert_eq!(
        answer["result"]["content"][0]["text"],
        "moved 200 credits to \"t\""
    );
    assert_eq!(
        answer["result"]["_meta"]["io.modelcontextprotocol/related-task"]["taskId"],
        second.as_str()
    );
    assert_eq!(
        log.calls(),
        vec![json!({"name": "transfer_credits", "arguments": {"to": "t", "amount": 200}})]
    );
}

#[tokio::test]
async fn shadow_mode_lets_refused_calls_through_and_says_what_would_have_happened() {
    let (upstream, log) = http_server().await;
    let text = testing::config_text(
        "http://127.0.0.1:9",
        &route(&format!("{upstream}\nmode = \"shadow\"")),
    );
    let latch = TestLatch::start_text(text, POLICY).await;
    let p = latch.proxy();
    let s = session(p).await;
    let delete = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"delete_repo","arguments":{"repo":"old"}}}"#;
    let a = post(p, Some(&s), delete, &[]).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("latch-shadow"), "deny");
    assert_eq!(
        rpc(&a)[0]["result"]["content"][0]["text"],
        "deleted \"old\""
    );
    assert_eq!(names(&log), vec!["delete_repo"]);
    let metrics = testing::send(
        http::Request::get(format!("http://{}/metrics", latch.admin()))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap(),
    )
    .await;
    let metrics = String::from_utf8_lossy(&metrics.body).to_string();
    assert!(
        metrics.contains(r#"latch_shadow_total{route="codehost",would="deny"} 1"#),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("shadow"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// An MCP server that answers a POST on an event stream and then keeps the
/// stream open (the spec only says it SHOULD close it).
async fn lingering_server() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let calls = counted.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: http::Request<hyper::body::Incoming>| {
                        let calls = calls.clone();
                        async move {
                            use http_body_util::BodyExt;
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let msg: Value = serde_json::from_slice(&body).unwrap();
                            if msg["method"] == "tools/call" {
                                calls.fetch_add(1, Ordering::SeqCst);
                            }
                            let (tx, rx) = tokio::sync::mpsc::channel(1);
                            let answer = json!({"jsonrpc": "2.0", "id": msg["id"], "result": {"content": [{"type": "text", "text": "done"}]}});
                            tx.send(bytes::Bytes::from(format!("data: {answer}\n\n")))
                                .await
                                .unwrap();
                            // Keep the stream open for good.
                            std::mem::forget(tx);
                            let mut resp = http::Response::new(latch::http_util::ChannelBody(rx));
                            resp.headers_mut()
                                .insert("content-type", "text/event-stream".parse().unwrap());
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    },
                );
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await;
            });
        }
    });
    (addr, calls)
}

#[tokio::test]
async fn an_approved_call_completes_when_the_answer_arrives_even_if_the_stream_stays_open() {
    let (addr, calls) = lingering_server().await;
    let latch = latch_for(&format!(
        "upstream = \"http://{addr}/mcp\"\ntimeout_ms = 60000"
    ))
    .await;
    let p = latch.proxy();
    let body = r#"{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"transfer_credits","arguments":{"to":"x","amount":150}}}"#;
    let waiting = tokio::spawn(async move { post(p, None, body, &[]).await });
    let id = testing::wait_pending(latch.admin()).await;
    approve(&latch, &id).await;
    // Well within the route's 60 s timeout.
    testing::wait_state(latch.admin(), &id, "executed").await;
    let answer = rpc(&waiting.await.unwrap()).remove(0);
    assert_eq!(answer["result"]["content"][0]["text"], "done");
    assert_eq!(answer["id"], 9);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}
