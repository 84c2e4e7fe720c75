//! Load harness for the allow path: the same upstream measured directly,
//! through Latch (the release binary, shipped policies), and through nginx
//! when it is installed — in one run, on loopback only.
//!
//! `cargo bench --bench proxy_load` (see benches/README.md). Settings:
//! `LOAD_SECS` (per phase, default 5), `LOAD_RATE` (fixed-rate phase,
//! default 1000 req/s), `LOAD_ROUNDS` (fixed-rate rounds, default 3, medians
//! reported), `LOAD_CONNS` (closed-loop phase, default 32).
//!
//! Then prompt fetches (`GET /latch/v1/prompts/<name>?label=…` on the proxy
//! listener, the registry's memory cache) in the same closed loop.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use latch::testing::{fixed_upstream, free_addr, wait_for, Proc};

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn free_port() -> u16 {
    free_addr().port()
}

fn start_upstream() -> SocketAddr {
    fixed_upstream(br#"{"results":["a","b"]}"#)
}

fn start_latch(dir: &Path, upstream: SocketAddr) -> (Proc, SocketAddr, SocketAddr) {
    let port = free_port();
    let admin = free_port();
    let policies = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let config = format!(
        r#"[proxy]
listen = "127.0.0.1:{port}"
[admin]
listen = "127.0.0.1:{admin}"
[store]
url = "sqlite://{db}"
[policy]
dir = "{policies}"
[log]
level = "info"
format = "json"
[[principals]]
id = "bench-bot"
roles = ["agent"]
token = "bench-token"
[[principals]]
id = "bench-editor"
roles = ["engineer"]
token = "editor-token"
[[routes]]
name = "search"
prefix = "/tools/search"
upstream = "http://{upstream}/search"
tool = "search"
inject_headers = {{ authorization = "Bearer upstream-key" }}
"#,
        db = dir.join("latch.db").display(),
        policies = policies.display(),
    );
    let path = dir.join("latch.toml");
    std::fs::write(&path, config).expect("write config");
    let log = std::fs::File::create(dir.join("latch.log")).expect("log file");
    let child = Command::new(env!("CARGO_BIN_EXE_latch"))
        .args(["serve", "--config"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start latch");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let admin: SocketAddr = format!("127.0.0.1:{admin}").parse().expect("addr");
    let proc = Proc(child);
    wait_for(addr);
    wait_for(admin);
    (proc, addr, admin)
}

/// One admin API call over a plain HTTP/1.1 connection; the status code.
fn admin_post(admin: SocketAddr, path: &str, body: &str) -> u16 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(admin).expect("connect admin");
    let req = format!(
        "POST {path} HTTP/1.1\r\nhost: latch\r\nauthorization: Bearer editor-token\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).expect("send");
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// How many allowed calls on route `search` Latch says it answered
/// (`latch_requests_total` on its own `/metrics`).
fn answered_allows(admin: SocketAddr) -> u64 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(admin).expect("connect admin");
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: latch\r\nconnection: close\r\n\r\n")
        .expect("send");
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.lines()
        .find(|l| {
            l.starts_with("latch_requests_total{")
                && l.contains(r#"route="search""#)
                && l.contains(r#"decision="allow""#)
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse::<f64>().ok())
        .map_or(0, |n| n as u64)
}

/// Allow decision records for route `search` in the audit log at `db`.
fn decision_records(db: &Path) -> u64 {
    use latch::store::Store;
    let store = latch::store::sqlite::SqliteStore::open(db, None).expect("open the audit log");
    let upto = store.audit_head().expect("head").map_or(0, |h| h.seq);
    let mut n = 0;
    latch::audit::each_record(&store, 0, upto, |r| {
        if r.event == "decision" && r.details["route"] == "search" && r.details["action"] == "allow"
        {
            n += 1;
        }
        Ok(())
    })
    .expect("read the audit log");
    n
}

/// A prompt with a label that moves at once (not protected), to fetch.
fn publish_prompt(admin: SocketAddr) {
    let template = "You draft replies to customers. Be brief and kind.\\n\\nCustomer: {{customer}}\\nIssue: {{issue}}";
    let push = format!(
        r#"{{"name": "reply", "template": "{template}", "variables": ["customer", "issue"], "config": {{"model": "m", "temperature": 0.2}}}}"#
    );
    assert_eq!(
        admin_post(admin, "/api/v1/prompts", &push),
        201,
        "push a prompt"
    );
    let moved = admin_post(
        admin,
        "/api/v1/prompts/reply/labels/bench",
        r#"{"version": 1}"#,
    );
    assert_eq!(moved, 200, "label the prompt");
}

fn start_nginx(dir: &Path, upstream: SocketAddr) -> Option<(Proc, SocketAddr)> {
    let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| Path::new(p).exists())?;
    let port = free_port();
    let conf = format!(
        r#"worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log {dir}/nginx-access.log;
  client_body_temp_path {dir}; proxy_temp_path {dir}; fastcgi_temp_path {dir}; uwsgi_temp_path {dir}; scgi_temp_path {dir};
  upstream tool {{ server {upstream}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port};
    location /tools/search/ {{
      proxy_pass http://tool/search/;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Authorization "Bearer upstream-key";
    }}
  }}
}}
"#,
        dir = dir.display()
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).ok()?;
    let child = Command::new(nginx)
        .args(["-e", "stderr", "-g", "daemon off;", "-c"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().ok()?;
    let proc = Proc(child);
    wait_for(addr);
    Some((proc, addr))
}

async fn one(client: &HttpClient, url: &str) -> Option<Duration> {
    let req = Request::get(url)
        .header("authorization", "Bearer bench-token")
        .body(Empty::new())
        .ok()?;
    let start = Instant::now();
    let resp = client.request(req).await.ok()?;
    let ok = resp.status() == StatusCode::OK;
    resp.into_body().collect().await.ok()?;
    ok.then(|| start.elapsed())
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

struct Result {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
}

/// Closed loop: `conns` workers send back to back for `secs`.
async fn closed_loop(url: &str, conns: u64, secs: u64) -> Result {
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    let start = Instant::now();
    for _ in 0..conns {
        let client = client.clone();
        let url = url.to_string();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let (mut lat, mut errors) = (Vec::new(), 0u64);
            while !stop.load(Ordering::Relaxed) {
                match one(&client, &url).await {
                    Some(d) => lat.push(d),
                    None => errors += 1,
                }
            }
            (lat, errors)
        }));
    }
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut all, mut errors) = (Vec::new(), 0);
    for t in tasks {
        let (l, e) = t.await.expect("worker");
        all.extend(l);
        errors += e;
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort();
    Result {
        rps: all.len() as f64 / elapsed,
        p50_ms: percentile(&all, 0.5),
        p99_ms: percentile(&all, 0.99),
        errors,
    }
}

/// Open loop at a fixed rate: requests start on schedule whatever the
/// previous ones do, so queueing shows in the latency.
async fn fixed_rate(url: &str, rate: u64, secs: u64) -> Result {
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let total = rate * secs;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let due = start + interval * i as u32;
        tokio::time::sleep_until(due.into()).await;
        let client = client.clone();
        let url = url.to_string();
        tasks.push(tokio::spawn(async move { one(&client, &url).await }));
    }
    let (mut all, mut errors) = (Vec::new(), 0);
    for t in tasks {
        match t.await.expect("request") {
            Some(d) => all.push(d),
            None => errors += 1,
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort();
    Result {
        rps: all.len() as f64 / elapsed,
        p50_ms: percentile(&all, 0.5),
        p99_ms: percentile(&all, 0.99),
        errors,
    }
}

fn main() {
    // `cargo test` runs benches only with --benches; ignore criterion-style flags.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let secs = env_u64("LOAD_SECS", 5);
    let rate = env_u64("LOAD_RATE", 1000);
    let conns = env_u64("LOAD_CONNS", 32);
    let rounds_n = env_u64("LOAD_ROUNDS", 3).max(1);
    let dir = tempfile::tempdir().expect("tempdir");
    let upstream = start_upstream();
    let (latch_proc, latch_addr, admin_addr) = start_latch(dir.path(), upstream);
    publish_prompt(admin_addr);
    let nginx = start_nginx(dir.path(), upstream);

    let mut targets = vec![
        ("direct", format!("http://{upstream}/search?q=rego")),
        ("latch", format!("http://{latch_addr}/tools/search?q=rego")),
    ];
    if let Some((_, addr)) = &nginx {
        targets.push(("nginx", format!("http://{addr}/tools/search/?q=rego")));
    } else {
        eprintln!("nginx not found (apt-get install nginx-light); skipping the nginx comparison");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("rt");
    println!("phase        target   req/s      p50 ms   p99 ms   errors");
    // Warm up connection pools and caches.
    for (_, url) in &targets {
        rt.block_on(closed_loop(url, 4, 1));
    }
    // Fixed-rate rounds interleave the targets, so a passing hiccup of the
    // shared machine hits one round of each rather than one target.
    let mut rounds: Vec<Vec<Result>> = targets.iter().map(|_| Vec::new()).collect();
    for round in 0..rounds_n {
        for (i, (name, url)) in targets.iter().enumerate() {
            let r = rt.block_on(fixed_rate(url, rate, secs));
            println!(
                "rate={rate:<6} {name:<8} {:>9.0} {:>8.3} {:>8.3} {:>8}   (round {})",
                r.rps,
                r.p50_ms,
                r.p99_ms,
                r.errors,
                round + 1
            );
            rounds[i].push(r);
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let mut fixed = Vec::new();
    for ((name, _), rs) in targets.iter().zip(rounds) {
        let r = Result {
            rps: median(rs.iter().map(|r| r.rps).collect()),
            p50_ms: median(rs.iter().map(|r| r.p50_ms).collect()),
            p99_ms: median(rs.iter().map(|r| r.p99_ms).collect()),
            errors: rs.iter().map(|r| r.errors).sum(),
        };
        println!(
            "median       {name:<8} {:>9.0} {:>8.3} {:>8.3} {:>8}",
            r.rps, r.p50_ms, r.p99_ms, r.errors
        );
        fixed.push((name.to_string(), r));
    }
    let mut closed = Vec::new();
    for (name, url) in &targets {
        let r = rt.block_on(closed_loop(url, conns, secs));
        println!(
            "conns={conns:<5} {name:<8} {:>9.0} {:>8.3} {:>8.3} {:>8}",
            r.rps, r.p50_ms, r.p99_ms, r.errors
        );
        closed.push((name.to_string(), r));
    }
    let find = |v: &Vec<(String, Result)>, n: &str| {
        v.iter()
            .find(|(k, _)| k == n)
            .map(|(_, r)| (r.rps, r.p50_ms, r.p99_ms))
    };
    if let (Some(d), Some(l)) = (find(&fixed, "direct"), find(&fixed, "latch")) {
        println!(
            "at {rate} req/s Latch adds p50 {:+.3} ms, p99 {:+.3} ms over direct",
            l.1 - d.1,
            l.2 - d.2
        );
    }
    if let (Some(d), Some(l)) = (find(&closed, "direct"), find(&closed, "latch")) {
        println!(
            "closed loop: Latch/direct throughput ratio {:.2}",
            l.0 / d.0
        );
    }
    if let (Some(n), Some(l)) = (find(&closed, "nginx"), find(&closed, "latch")) {
        println!("closed loop: Latch/nginx throughput ratio {:.2}", l.0 / n.0);
    }

    // Every call Latch answered as allowed has its decision record — even
    // after a kill -9 right now (records commit before the call is sent).
    let answered = answered_allows(admin_addr);

    // Prompt fetches: served from the registry's cache on the proxy listener.
    let prompt = format!("http://{latch_addr}/latch/v1/prompts/reply?label=bench");
    rt.block_on(closed_loop(&prompt, 4, 1));
    let r = rt.block_on(closed_loop(&prompt, conns, secs));
    println!(
        "conns={conns:<5} prompts  {:>9.0} {:>8.3} {:>8.3} {:>8}   (GET /latch/v1/prompts/reply)",
        r.rps, r.p50_ms, r.p99_ms, r.errors
    );
    let r = rt.block_on(fixed_rate(&prompt, rate, secs));
    println!(
        "rate={rate:<6} prompts  {:>9.0} {:>8.3} {:>8.3} {:>8}",
        r.rps, r.p50_ms, r.p99_ms, r.errors
    );
    drop(latch_proc); // SIGKILL
    let records = decision_records(&dir.path().join("latch.db"));
    println!(
        "decision records: {records} for {answered} allowed calls answered{}",
        if records == answered {
            " (none lost)"
        } else {
            " — MISMATCH"
        }
    );
    assert_eq!(records, answered, "a decision record is missing");
}
