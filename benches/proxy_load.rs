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

mod load;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};

use latch::testing::{fixed_upstream, free_addr, wait_for, Proc};
use load::{closed_loop, compare, fixed_rate, get, report, Settings};

fn free_port() -> u16 {
    free_addr().port()
}

fn start_upstream() -> SocketAddr {
    fixed_upstream(br#"{"results":["a","b"]}"#)
}

fn start_latch(bin: &Path, dir: &Path, upstream: SocketAddr) -> (Proc, SocketAddr, SocketAddr) {
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
    let child = Command::new(bin)
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

fn main() {
    // `cargo test` runs benches only with --benches; ignore criterion-style flags.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let settings = Settings::from_env();
    let Settings {
        secs, rate, conns, ..
    } = settings;
    let dir = tempfile::tempdir().expect("tempdir");
    let upstream = start_upstream();
    let bin = Path::new(env!("CARGO_BIN_EXE_latch"));
    let (latch_proc, latch_addr, admin_addr) = start_latch(bin, dir.path(), upstream);
    publish_prompt(admin_addr);
    let nginx = start_nginx(dir.path(), upstream);
    // Another build beside this one, in its own directory and store.
    let other = std::env::var_os("LATCH_B").map(|b| {
        let dir = tempfile::tempdir().expect("tempdir");
        let (proc, addr, admin) = start_latch(Path::new(&b), dir.path(), upstream);
        (dir, proc, addr, admin)
    });

    let mut targets = vec![
        ("direct", get(format!("http://{upstream}/search?q=rego"))),
        (
            "latch",
            get(format!("http://{latch_addr}/tools/search?q=rego")),
        ),
    ];
    if let Some((_, addr)) = &nginx {
        targets.push(("nginx", get(format!("http://{addr}/tools/search/?q=rego"))));
    } else {
        eprintln!("nginx not found (apt-get install nginx-light); skipping the nginx comparison");
    }
    if let Some((_, _, addr, _)) = &other {
        targets.push(("latch-b", get(format!("http://{addr}/tools/search?q=rego"))));
    }
    let rt = load::runtime();
    let results = compare(&rt, &targets, settings);
    report(&results, "direct", "latch", rate);
    report(&results, "nginx", "latch", rate);
    if let Some((dir, proc, _, admin)) = other {
        report(&results, "direct", "latch-b", rate);
        report(&results, "nginx", "latch-b", rate);
        let answered = answered_allows(admin);
        drop(proc); // SIGKILL
        let records = decision_records(&dir.path().join("latch.db"));
        println!("latch-b decision records: {records} for {answered} allowed calls answered");
        assert_eq!(records, answered, "latch-b lost a decision record");
    }

    // Every call Latch answered as allowed has its decision record — even
    // after a kill -9 right now (records commit before the call is sent).
    let answered = answered_allows(admin_addr);

    // Prompt fetches: served from the registry's cache on the proxy listener.
    let prompt = get(format!(
        "http://{latch_addr}/latch/v1/prompts/reply?label=bench"
    ));
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
