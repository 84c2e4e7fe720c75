//! A small MCP server for the demo and the tests: a code host's tools with
//! honest annotations. Every `tools/call` it runs is appended to its log
//! (a file, or memory), so a test can check exactly what reached it.

use std::sync::{Arc, Mutex};

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ListToolsResult,
    PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool, ToolAnnotations,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde_json::{json, Map, Value};

/// Where the server notes each call it ran.
#[derive(Clone, Default)]
pub struct CallLog {
    calls: Arc<Mutex<Vec<Value>>>,
    file: Option<std::path::PathBuf>,
}

impl CallLog {
    /// Also append each call as a JSON line to `path`.
    pub fn to_file(path: std::path::PathBuf) -> CallLog {
        CallLog {
            calls: Arc::default(),
            file: Some(path),
        }
    }

    /// The calls so far: `{"name", "arguments"}` each.
    #[allow(dead_code)]
    pub fn calls(&self) -> Vec<Value> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }

    fn push(&self, call: Value) {
        if let Some(path) = &self.file {
            use std::io::Write;
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
            {
                let _ = writeln!(f, "{call}");
            }
        }
        if let Ok(mut c) = self.calls.lock() {
            c.push(call);
        }
    }
}

/// The demo code host.
#[derive(Clone, Default)]
pub struct CodeHost {
    /// What it ran.
    pub log: CallLog,
}

fn schema(props: Value, required: &[&str]) -> Arc<Map<String, Value>> {
    let doc = json!({"type": "object", "properties": props, "required": required});
    Arc::new(doc.as_object().cloned().unwrap_or_default())
}

/// The tools, with their annotations.
pub fn tools() -> Vec<Tool> {
    vec![
        Tool::new(
            "search_issues",
            "Search the issue tracker",
            schema(json!({"query": {"type": "string"}}), &["query"]),
        )
        .with_annotations(ToolAnnotations::new().read_only(true)),
        Tool::new(
            "create_issue",
            "Open an issue",
            schema(
                json!({"title": {"type": "string"}, "body": {"type": "string"}}),
                &["title"],
            ),
        )
        .with_annotations(ToolAnnotations::new().read_only(false).destructive(false)),
        Tool::new(
            "transfer_credits",
            "Move account credits to another account",
            schema(
                json!({"to": {"type": "string"}, "amount": {"type": "number"}}),
                &["to", "amount"],
            ),
        )
        .with_annotations(ToolAnnotations::new().read_only(false).destructive(false)),
        Tool::new(
            "delete_repo",
            "Delete a repository and everything in it",
            schema(json!({"repo": {"type": "string"}}), &["repo"]),
        )
        .with_annotations(ToolAnnotations::new().read_only(false).destructive(true)),
        Tool::new(
            "rotate_admin_keys",
            "Rotate the organisation's admin keys",
            schema(json!({}), &[]),
        )
        .with_annotations(ToolAnnotations::new().destructive(true)),
    ]
}

impl ServerHandler for CodeHost {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_instructions("A demo code host behind Latch")
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(tools()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let args = request.arguments.clone().unwrap_or_default();
        let arg = |k: &str| args.get(k).cloned().unwrap_or(Value::Null);
        let text = match request.name.as_ref() {
            "search_issues" => format!("3 issues match {}", arg("query")),
            "create_issue" => format!("opened issue #42: {}", arg("title")),
            "transfer_credits" => format!("moved {} credits to {}", arg("amount"), arg("to")),
            "delete_repo" => format!("deleted {}", arg("repo")),
            "rotate_admin_keys" => "rotated".to_string(),
            other => {
                return Err(ErrorData::invalid_params(format!("no tool {other}"), None));
            }
        };
        self.log
            .push(json!({"name": request.name, "arguments": Value::Object(args)}));
        Ok(CallToolResult::success(vec![ContentBlock::text(text)]).into())
    }
}

/// Serve `host` over Streamable HTTP at any path (sessions on) until the
/// process ends.
pub async fn serve_http(listener: tokio::net::TcpListener, host: CodeHost) -> anyhow::Result<()> {
    use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
    use rmcp::transport::streamable_http_server::{
        StreamableHttpServerConfig, StreamableHttpService,
    };
    let mut config = StreamableHttpServerConfig::default();
    config.legacy_session_mode = true;
    let service: StreamableHttpService<CodeHost, LocalSessionManager> =
        StreamableHttpService::new(move || Ok(host.clone()), Default::default(), config);
    loop {
        let (stream, _) = listener.accept().await?;
        // Event streams go out in small writes: no Nagle delay between them.
        stream.set_nodelay(true)?;
        let svc = hyper_util::service::TowerToHyperService::new(service.clone());
        tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, svc)
                .await;
        });
    }
}
