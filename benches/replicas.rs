//! Latch on PostgreSQL, measured: the allow path on PostgreSQL against the
//! same on SQLite (release binaries, same policy and upstream, one run), and
//! how fast a verdict given on replica B releases a call held on replica A.
//! Starts its own PostgreSQL (Debian's binaries), loopback only.
//!
//! `cargo bench --bench replicas` (see benches/README.md). Settings as for
//! `proxy_load` (`LOAD_SECS`, `LOAD_RATE`, `LOAD_ROUNDS`, `LOAD_CONNS`), and
//! `RELEASES` (default 200) held calls for the release latency.

mod load;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use latch::testing::{
    config_text, fixed_upstream, free_addr, test_env, wait_for, Postgres, Proc, TEST_POLICY,
};
use load::{compare, env_u64, get, percentile, report, Settings};

/// One `latch serve` on `store`, with listeners at the returned addresses.
fn start_latch(
    dir: &Path,
    name: &str,
    store: &str,
    upstream: SocketAddr,
) -> (Proc, SocketAddr, SocketAddr) {
    let (proxy, admin) = (free_addr(), free_addr());
    let dir = dir.join(name);
    std::fs::create_dir_all(dir.join("policies")).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(dir.join("policies/test.rego"), TEST_POLICY).unwrap_or_else(|e| panic!("{e}"));
    let text = config_text(
        &format!("http://{upstream}"),
        "\n[[principals]]\nid = \"bench-bot\"\nroles = [\"agent\"]\ntoken = \"bench-token\"\n",
    )
    .replacen(
        r#"listen = "127.0.0.1:0""#,
        &format!(r#"listen = "{proxy}""#),
        1,
    )
    .replacen(
        r#"listen = "127.0.0.1:0""#,
        &format!(r#"listen = "{admin}""#),
        1,
    )
    .replace(
        r#"url = "sqlite://latch.db""#,
        &format!(r#"url = "{store}""#),
    )
    .replace("max_body_bytes = 1024", "max_body_bytes = 65536");
    std::fs::write(dir.join("latch.toml"), text).unwrap_or_else(|e| panic!("{e}"));
    let child = Command::new(env!("CARGO_BIN_EXE_latch"))
        .envs(test_env())
        .args(["serve", "--config"])
        .arg(dir.join("latch.toml"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start latch: {e}"));
    let proc = Proc(child);
    wait_for(proxy);
    wait_for(admin);
    (proc, proxy, admin)
}

fn post(url: String, token: &str, body: &'static str) -> Request<Full<Bytes>> {
    Request::post(url)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap_or_default()
}

const GATED: &str = r#"{"gate": true, "approval": {"require": [{"role": "lead", "count": 1}]}}"#;

/// Hold a call on A, approve it on B, time approval → A's answer.
async fn release_latency(a: SocketAddr, b_admin: SocketAddr, n: u64) -> Vec<Duration> {
    let client: load::HttpClient =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let mut out = Vec::new();
    for _ in 0..n {
        let c = client.clone();
        let held = tokio::spawn(async move {
            let resp = c
                .request(post(
                    format!("http://{a}/tools/echo/x"),
                    "agent-token",
                    GATED,
                ))
                .await;
            let done = Instant::now();
            if let Ok(r) = resp {
                let _ = r.into_body().collect().await;
            }
            done
        });
        // Find it pending (on B), then approve it there.
        let id = loop {
            let req = Request::get(format!("http://{b_admin}/api/v1/approvals?status=pending"))
                .header("authorization", "Bearer alice-token")
                .body(Full::new(Bytes::new()))
                .unwrap_or_default();
            let body = match client.request(req).await {
                Ok(r) => r
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default(),
                Err(_) => Bytes::new(),
            };
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            if let Some(id) = v["approvals"][0]["id"].as_str() {
                break id.to_string();
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        let approve = post(
            format!("http://{b_admin}/api/v1/approvals/{id}/approve"),
            "alice-token",
            "{}",
        );
        let start = Instant::now();
        if let Ok(r) = client.request(approve).await {
            let _ = r.into_body().collect().await;
        }
        if let Ok(done) = held.await {
            out.push(done.saturating_duration_since(start));
        }
    }
    out.sort();
    out
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let settings = Settings::from_env();
    let releases = env_u64("RELEASES", 200);
    let Some(pg) = Postgres::start() else {
        eprintln!("PostgreSQL binaries missing (apt-get install postgresql); nothing measured");
        return;
    };
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let upstream = fixed_upstream(br#"{"results":["a","b"]}"#);
    let sqlite = format!("sqlite://{}", dir.path().join("latch.db").display());
    let (_s, sqlite_proxy, _) = start_latch(dir.path(), "sqlite", &sqlite, upstream);
    let (_a, a_proxy, _) = start_latch(dir.path(), "a", &pg.url, upstream);
    let (_b, _, b_admin) = start_latch(dir.path(), "b", &pg.url, upstream);

    let rt = load::runtime();
    let targets = vec![
        (
            "sqlite",
            get(format!("http://{sqlite_proxy}/tools/echo/x?q=1")),
        ),
        (
            "postgres",
            get(format!("http://{a_proxy}/tools/echo/x?q=1")),
        ),
    ];
    let results = compare(&rt, &targets, settings);
    report(&results, "sqlite", "postgres", settings.rate);
    let lat = rt.block_on(release_latency(a_proxy, b_admin, releases));
    println!(
        "approval on B → held call on A answered: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} calls)",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        percentile(&lat, 1.0),
        lat.len()
    );
}
