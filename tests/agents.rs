//! The agent-side examples under `examples/agents/` run against the demo
//! (`latch.toml`, the shipped policies, the built-in demo tools) started by
//! the `latch` binary on free ports: allowed, denied with reasons the model
//! can use, and held until a reviewer approves through the admin API.
//! Debian's `python3-httpx`, `nodejs` and npm's `typescript` are needed (CI
//! installs them); without them a test is skipped unless
//! `LATCH_REQUIRE_EXAMPLES=1`.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;

use common::*;

const PYTHON: &str = "/usr/bin/python3";

/// The demo config on free ports, with its store in `dir`.
fn demo_config(dir: &Path) -> (String, std::net::SocketAddr, std::net::SocketAddr) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (proxy, admin, demo) = (free_addr(), free_addr(), free_addr());
    let text = std::fs::read_to_string(root.join("latch.toml"))
        .unwrap()
        .replace("127.0.0.1:8080", &proxy.to_string())
        .replace("127.0.0.1:8081", &admin.to_string())
        .replace("127.0.0.1:9001", &demo.to_string())
        .replace(
            "sqlite://latch.db",
            &format!("sqlite://{}", dir.join("latch.db").display()),
        )
        .replace(
            r#"dir = "policies""#,
            &format!(r#"dir = "{}""#, root.join("policies").display()),
        );
    (text, proxy, admin)
}

fn has_httpx() -> bool {
    Command::new(PYTHON)
        .args(["-c", "import httpx"])
        .status()
        .is_ok_and(|s| s.success())
}

/// Skip (or, with `LATCH_REQUIRE_EXAMPLES=1`, fail) when a tool is missing.
fn available(ok: bool, what: &str) -> bool {
    if !ok {
        assert!(
            std::env::var("LATCH_REQUIRE_EXAMPLES").as_deref() != Ok("1"),
            "LATCH_REQUIRE_EXAMPLES=1 but {what} is missing"
        );
        eprintln!("skipping: {what} is missing");
    }
    ok
}

/// Start the demo, run `agent` against it (approving what it holds); the
/// last event it reported for each step.
async fn drive(mut agent: Command) -> std::collections::BTreeMap<String, Value> {
    let dir = tempfile::tempdir().unwrap();
    let (config, proxy, admin_addr) = demo_config(dir.path());
    let path = dir.path().join("latch.toml");
    std::fs::write(&path, config).unwrap();
    let _latch = Proc(
        Command::new(env!("CARGO_BIN_EXE_latch"))
            .args(["serve", "--config"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for(proxy);
    wait_for(admin_addr);

    let mut agent = agent
        .env("LATCH_URL", format!("http://{proxy}"))
        .env("LATCH_POLL_S", "0.2")
        .env("LATCH_WAIT_S", "30")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Value>();
    let stdout = agent.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str(&line) {
                let _ = tx.send(v);
            }
        }
    });
    let mut steps = std::collections::BTreeMap::new();
    while let Some(event) = tokio::time::timeout(std::time::Duration::from_secs(30), rx.recv())
        .await
        .expect("the agent went quiet")
    {
        let step = event["step"].as_str().unwrap().to_string();
        if step == "held" {
            // A reviewer approves the held e-mail.
            let id = event["approval_id"].as_str().unwrap();
            let r = admin(
                admin_addr,
                "POST",
                &format!("/api/v1/approvals/{id}/approve"),
                "alice-demo-token",
                r#"{"comment": "ok"}"#,
            )
            .await;
            assert_eq!(r.status, 200, "{:?}", r.body);
        }
        steps.insert(step, event);
    }
    let out = agent.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    steps
}

/// The HTTP agents: allowed, denied with reasons, held then approved.
fn check_http_agent(steps: &std::collections::BTreeMap<String, Value>) {
    assert_eq!(steps["search"]["ok"], true, "{steps:?}");
    let trade = &steps["trade"];
    assert_eq!(trade["ok"], false);
    assert_eq!(trade["code"], "value_limit", "{trade}");
    let feedback = trade["feedback"].as_str().unwrap();
    assert!(
        feedback.starts_with("The approval gate denied this call (value_limit)"),
        "{feedback}"
    );
    assert!(steps.contains_key("held"), "the e-mail was held: {steps:?}");
    let email = &steps["email"];
    assert_eq!(email["ok"], true, "{email}");
    assert_eq!(email["result"]["status"], "sent", "{email}");
    assert_eq!(email["result"]["to"], "bob@example.com", "{email}");
}

fn examples() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/agents")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_agent_handles_allow_deny_and_held_calls_against_the_demo() {
    if !available(has_httpx(), "python3-httpx") {
        return;
    }
    let mut cmd = Command::new(PYTHON);
    cmd.arg(examples().join("python/agent.py"));
    check_http_agent(&drive(cmd).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_mcp_client_gets_results_refusals_and_progress_through_the_demo() {
    if !available(has_httpx(), "python3-httpx") {
        return;
    }
    let mut cmd = Command::new(PYTHON);
    cmd.arg(examples().join("python/mcp_agent.py"));
    let steps = drive(cmd).await;
    let tools = steps["tools"]["names"].as_array().unwrap();
    assert_eq!(tools.len(), 4, "{tools:?}");
    assert_eq!(steps["search"]["ok"], true, "{steps:?}");
    assert_eq!(steps["search"]["text"], "2 results for \"rego\"");
    let trade = &steps["trade"];
    assert_eq!(
        (&trade["ok"], &trade["code"]),
        (&Value::Bool(false), &Value::from("value_limit")),
        "{trade}"
    );
    assert!(
        trade["feedback"].as_str().unwrap().contains("hard limit"),
        "{trade}"
    );
    assert!(steps.contains_key("held"), "the e-mail was held: {steps:?}");
    assert!(
        steps["progress"]["message"]
            .as_str()
            .unwrap()
            .starts_with("waiting for"),
        "{steps:?}"
    );
    assert_eq!(steps["email"]["ok"], true, "{steps:?}");
    assert_eq!(steps["email"]["text"], "sent to \"bob@example.com\"");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_typescript_agent_handles_allow_deny_and_held_calls_against_the_demo() {
    let tools = Path::new("/usr/bin/node").exists()
        && Command::new("tsc")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
    if !available(tools, "node and tsc (npm install -g typescript)") {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let compiled = Command::new("tsc")
        .args([
            "--strict",
            "--target",
            "es2022",
            "--module",
            "nodenext",
            "--lib",
            "es2022,dom",
            "--outDir",
        ])
        .arg(out.path())
        .arg(examples().join("typescript/agent.ts"))
        .output()
        .unwrap();
    assert!(
        compiled.status.success(),
        "{}",
        String::from_utf8_lossy(&compiled.stdout)
    );
    let mut cmd = Command::new("/usr/bin/node");
    cmd.arg(out.path().join("agent.js"));
    check_http_agent(&drive(cmd).await);
}
