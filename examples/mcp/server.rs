//! The demo MCP server (a code host) for `examples/mcp/latch.toml`:
//!
//! ```text
//! cargo run --example mcp-demo-server -- --listen 127.0.0.1:7000   # Streamable HTTP at /mcp
//! cargo run --example mcp-demo-server -- --stdio                   # stdio, for `command = [...]`
//! ```
//! `--log FILE` appends each tool call it runs to FILE.

mod tools;

use std::net::SocketAddr;

use rmcp::ServiceExt;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let host = tools::CodeHost {
        log: match value("--log") {
            Some(path) => tools::CallLog::to_file(path.into()),
            None => tools::CallLog::default(),
        },
    };
    let stdio = args.iter().any(|a| a == "--stdio");
    let listen = value("--listen").unwrap_or_else(|| "127.0.0.1:7000".into());
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        if stdio {
            let running = host.serve(rmcp::transport::stdio()).await?;
            running.waiting().await?;
            return Ok(());
        }
        let addr: SocketAddr = listen.parse()?;
        let listener = tokio::net::TcpListener::bind(addr).await?;
        eprintln!("demo MCP server on http://{}/mcp", listener.local_addr()?);
        tools::serve_http(listener, host).await
    })
}
