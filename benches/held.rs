//! Held calls: how many one Latch process keeps and what each costs in
//! memory, and the time from a reviewer's approval to the released answer.
//!
//! `cargo bench --bench held` (see benches/README.md). Settings: `HELD`
//! (default 10000 held calls), `RELEASES` (default 300 approvals timed),
//! `HELD_PROTOCOL` (`http1`, one connection per call, the default; or `h2`,
//! up to 1000 calls multiplexed on each HTTP/2 connection), `ASYNC_PENDING`
//! (default 0: then that many gated calls answered 202 at once with
//! `Prefer: respond-async`, the RSS with them all pending in the store, and
//! the latency of listing pending approvals).

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use latch::testing::{fixed_upstream, free_addr, Proc};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

const POLICY: &str = r#"package latch
import rego.v1
decision := {"action": "gate", "risk": "medium", "code": "held", "reasons": ["benchmark"],
             "approval": {"require": [{"role": "lead", "count": 1}], "timeout_s": 3600}}
"#;

async fn admin_post(addr: SocketAddr, path: &str) -> u16 {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("admin");
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer lead-token\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf).await;
    String::from_utf8_lossy(&buf)
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Up to 1000 pending approval ids, and how many are pending in all.
async fn pending_ids(addr: SocketAddr) -> (Vec<String>, u64) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("admin");
    let req = "GET /api/v1/approvals?status=pending&limit=1000 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer lead-token\r\nConnection: close\r\n\r\n";
    s.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf).await;
    let text = String::from_utf8_lossy(&buf);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("{}");
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    let ids = v["approvals"]
        .as_array()
        .map(|l| {
            l.iter()
                .filter_map(|a| a["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    (ids, v["total"].as_u64().unwrap_or(0))
}

/// Park `n` gated calls as pending approvals (202, no connection held),
/// then report RSS and the latency of `GET /api/v1/approvals?status=pending`.
async fn async_pending(n: usize, proxy: SocketAddr, admin: SocketAddr, pid: u32, base: u64) {
    use http_body_util::{BodyExt, Full};
    type C = hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Full<bytes::Bytes>,
    >;
    let client: C =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let started = Instant::now();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..16 {
        let (client, next) = (client.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            let mut accepted = 0usize;
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return accepted;
                }
                let req = http::Request::post(format!("http://{proxy}/tool/async"))
                    .header("authorization", "Bearer agent-token")
                    .header("content-type", "application/json")
                    .header("prefer", "respond-async")
                    .body(Full::new(bytes::Bytes::from(format!("{{\"n\":{i}}}"))))
                    .expect("request");
                if let Ok(resp) = client.request(req).await {
                    accepted += usize::from(resp.status() == 202);
                    let _ = resp.into_body().collect().await;
                }
            }
        }));
    }
    let mut accepted = 0;
    for w in workers {
        accepted += w.await.unwrap_or(0);
    }
    let secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss = rss_kib(pid);
    println!(
        "{accepted} of {n} calls pending after 202 in {secs:.1} s ({:.0}/s); RSS {:.1} MiB (idle {:.1} MiB)",
        accepted as f64 / secs,
        rss as f64 / 1024.0,
        base as f64 / 1024.0
    );
    let mut lat = Vec::new();
    for _ in 0..200 {
        let req = http::Request::get(format!("http://{admin}/api/v1/approvals?status=pending"))
            .header("authorization", "Bearer lead-token")
            .body(Full::new(bytes::Bytes::new()))
            .expect("request");
        let t0 = Instant::now();
        if let Ok(resp) = client.request(req).await {
            let ok = resp.status() == 200;
            let _ = resp.into_body().collect().await;
            if ok {
                lat.push(t0.elapsed().as_secs_f64() * 1e3);
            }
        }
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    println!(
        "GET /api/v1/approvals?status=pending with {accepted} pending: p50 {:.2} ms, p99 {:.2} ms",
        pct(0.5),
        pct(0.99)
    );
}

fn main() {
    let held = env_usize("HELD", 10_000);
    let releases = env_usize("RELEASES", 300).min(held);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(async move {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("policies")).expect("mkdir");
        std::fs::write(dir.path().join("policies/p.rego"), POLICY).expect("policy");
        let up = fixed_upstream(b"{\"ok\":true}");
        let (proxy, admin) = (free_addr(), free_addr());
        let config = format!(
            r#"[proxy]
listen = "{proxy}"
hold_s = 3600
max_connections = 20000
[admin]
listen = "{admin}"
[store]
url = "sqlite://latch.db"
[log]
level = "warn"
[gate]
max_pending_per_agent = 1000000
[[principals]]
id = "agent"
roles = ["agent"]
token = "agent-token"
[[principals]]
id = "lead"
roles = ["lead"]
token = "lead-token"
[[routes]]
name = "tool"
prefix = "/tool"
upstream = "http://{up}"
"#
        );
        std::fs::write(dir.path().join("latch.toml"), config).expect("config");
        // HELD_WRAP runs Latch under a tool, e.g. `heaptrack` to see where
        // the memory of held calls goes (on a binary built with
        // `--no-default-features`, so heaptrack sees the system allocator:
        // benches/README.md says how).
        let mut cmd = match std::env::var("HELD_WRAP") {
            Ok(wrap) => {
                let mut c = Command::new(wrap);
                c.arg(env!("CARGO_BIN_EXE_latch"));
                c
            }
            Err(_) => Command::new(env!("CARGO_BIN_EXE_latch")),
        };
        let child = cmd
            .args(["serve", "--config", "latch.toml"])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start latch");
        let pid = child.id();
        let _latch = Proc(child);
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(proxy).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let base = rss_kib(pid);

        // Hold `held` gated calls: one HTTP/1.1 connection each, or up to
        // 1000 streams on each HTTP/2 connection.
        let started = Instant::now();
        let h2 = std::env::var("HELD_PROTOCOL").as_deref() == Ok("h2");
        let mut waiters = Vec::with_capacity(held);
        let mut sender = None;
        for i in 0..held {
            if h2 {
                if i % 1000 == 0 {
                    let tcp = tokio::net::TcpStream::connect(proxy).await.expect("connect");
                    let (s, conn) = hyper::client::conn::http2::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .handshake(hyper_util::rt::TokioIo::new(tcp))
                    .await
                    .expect("h2 handshake");
                    tokio::spawn(conn);
                    sender = Some(s);
                }
                let mut s: hyper::client::conn::http2::SendRequest<String> =
                    sender.clone().expect("sender");
                let req = http::Request::post(format!("http://{proxy}/tool/x"))
                    .header("authorization", "Bearer agent-token")
                    .header("content-type", "application/json")
                    .body(format!("{{\"n\":{i}}}"))
                    .expect("request");
                waiters.push(tokio::spawn(async move {
                    match s.send_request(req).await {
                        Ok(resp) => {
                            let at = Instant::now();
                            let id = resp
                                .headers()
                                .get("latch-approval")
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_string);
                            (at, id, resp.status() == 200)
                        }
                        Err(_) => (Instant::now(), None, false),
                    }
                }));
                continue;
            }
            let mut s = tokio::net::TcpStream::connect(proxy).await.expect("connect");
            let body = format!("{{\"n\":{i}}}");
            let req = format!(
                "POST /tool/x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer agent-token\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            s.write_all(req.as_bytes()).await.expect("write");
            waiters.push(tokio::spawn(async move {
                let mut buf = vec![0u8; 2048];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let at = Instant::now();
                let head = String::from_utf8_lossy(&buf[..n]).to_string();
                let id = head
                    .lines()
                    .find_map(|l| l.strip_prefix("latch-approval: "))
                    .map(|v| v.trim().to_string());
                (at, id, head.starts_with("HTTP/1.1 200"))
            }));
        }
        // Wait until every call is stored and held.
        for _ in 0..1200 {
            tokio::time::sleep(Duration::from_millis(250)).await;
            if pending_ids(admin).await.1 >= held as u64 {
                break;
            }
        }
        let gate_secs = started.elapsed().as_secs_f64();
        // Then let the allocator hand back what the burst used (jemalloc
        // purges over ≈ 10 s) until RSS holds still for 3 s: the memory the
        // held calls keep, not the burst's.
        tokio::time::sleep(Duration::from_secs(10)).await;
        let (mut last, mut still) = (rss_kib(pid), 0);
        for _ in 0..120 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let now = rss_kib(pid);
            still = if now == last { still + 1 } else { 0 };
            last = now;
            if still >= 6 {
                break;
            }
        }
        let full = rss_kib(pid);
        let protocol = if h2 { "HTTP/2" } else { "HTTP/1.1" };
        println!("held {held} calls over {protocol} in {gate_secs:.1} s ({:.0} gated calls/s)", held as f64 / gate_secs);
        println!(
            "RSS: {:.1} MiB idle, {:.1} MiB holding {held} → {:.1} KiB per held call",
            base as f64 / 1024.0,
            full as f64 / 1024.0,
            (full.saturating_sub(base)) as f64 / held as f64
        );

        // Release some by approval and time each approval → released answer.
        let (ids, pending) = pending_ids(admin).await;
        println!("{pending} approvals pending in the store");
        let mut approved_at = std::collections::HashMap::new();
        for id in ids.iter().take(releases) {
            let t0 = Instant::now();
            if admin_post(admin, &format!("/api/v1/approvals/{id}/approve")).await == 200 {
                approved_at.insert(id.clone(), t0);
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut gaps = Vec::new();
        let mut ok = 0;
        for w in waiters {
            if !w.is_finished() {
                w.abort();
                continue;
            }
            if let Ok((at, Some(id), success)) = w.await {
                if let Some(t0) = approved_at.get(&id) {
                    ok += usize::from(success);
                    gaps.push(at.saturating_duration_since(*t0).as_secs_f64() * 1e3);
                }
            }
        }
        gaps.sort_by(|a, b| a.total_cmp(b));
        let pct = |p: f64| gaps.get(((gaps.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or(f64::NAN);
        println!(
            "approved {}, released {ok} with the upstream answer; approval → answer p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            approved_at.len(),
            pct(0.5),
            pct(0.99),
            gaps.last().copied().unwrap_or(f64::NAN)
        );
        let parked = env_usize("ASYNC_PENDING", 0);
        if parked > 0 {
            async_pending(parked, proxy, admin, pid, base).await;
        }
    });
}
