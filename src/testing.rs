//! The harness tests and benches share (feature `test-util`): a recording
//! upstream, a fixed-answer upstream on its own thread, configs and
//! policies for tests, a Latch started on `127.0.0.1:0`, an in-process
//! Latch whose handlers are called directly, and small HTTP helpers.
//!
//! Helpers panic on setup failures: they are for tests.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::app::{build, start, Handles, Running};
use crate::config::Config;
use crate::gate::Clock;
use crate::http_util::{boxed_request, json, Body};
use crate::server::{self, ConnInfo, ListenerOptions};

mod fixtures;
mod postgres;
mod stub;
pub use fixtures::*;
pub use postgres::Postgres;
pub use stub::{Answerer, Stub};

/// What the upstream received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A real HTTP upstream on loopback that records every request.
/// `/slow…` answers after 3 s; `/hop…` answers with hop-by-hop headers;
/// everything else echoes a small JSON document.
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    stop: watch::Sender<bool>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (stop, rx) = watch::channel(false);
        let s = seen.clone();
        let opts = ListenerOptions {
            tls: None,
            directory: None,
            header_read_timeout: Duration::from_secs(5),
            max_connections: 1024,
        };
        tokio::spawn(server::serve(
            listener,
            opts,
            rx,
            move |req: Request<Body>, _| {
                let s = s.clone();
                async move { record(&s, req).await }
            },
        ));
        Upstream { addr, seen, stop }
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

async fn record(seen: &Mutex<Vec<Seen>>, req: Request<Body>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    seen.lock().unwrap().push(Seen {
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        headers: parts.headers.clone(),
        body: body.clone(),
    });
    let path = parts.uri.path().to_string();
    if path.contains("/slow") {
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let mut resp = json(
        StatusCode::OK,
        &serde_json::json!({"upstream": "ok", "path": path, "bytes": body.len()}),
    );
    if path.contains("/hop") {
        let h = resp.headers_mut();
        h.insert("connection", "x-upstream-hop".parse().unwrap());
        h.insert("x-upstream-hop", "secret".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("x-upstream-end", "kept".parse().unwrap());
    }
    resp
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// An upstream answering every request with `body` (JSON), on its own
/// thread and single-thread runtime, so it costs the measured process
/// nothing; for benches.
pub fn fixed_upstream(body: &'static [u8]) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind upstream");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt");
        rt.block_on(async move {
            listener.set_nonblocking(true).expect("nonblocking");
            let listener = TcpListener::from_std(listener).expect("listener");
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(|_req| async {
                        let mut r = Response::new(Full::new(Bytes::from_static(body)));
                        r.headers_mut()
                            .insert("content-type", "application/json".parse().expect("hv"));
                        Ok::<_, std::convert::Infallible>(r)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
    });
    addr
}

/// A loopback address nobody listens on (yet).
pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
}

/// Block until something accepts connections on `addr` (10 s at most).
pub fn wait_for(addr: SocketAddr) {
    for _ in 0..200 {
        if std::net::TcpStream::connect(addr).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{addr} did not come up");
}

/// A child process killed when dropped.
pub struct Proc(pub std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Latch built from a config in a temp directory, without listeners: tests
/// call the proxy and admin handlers directly, and reach into the gate.
pub struct InProcess {
    pub handles: Handles,
    pub dir: tempfile::TempDir,
    conn: Arc<ConnInfo>,
}

impl InProcess {
    /// Build from a whole config text (see [`config_text`]) and a policy,
    /// with the gate reading `clock`.
    pub fn new(config_text: &str, policy: &str, clock: Clock) -> InProcess {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("policies")).unwrap();
        std::fs::write(dir.path().join("policies/test.rego"), policy).unwrap();
        let path = dir.path().join("latch.toml");
        std::fs::write(&path, config_text).unwrap();
        let config =
            Config::parse(&path, config_text, &test_env()).unwrap_or_else(|e| panic!("{e:?}"));
        let handles = build(&config, clock).unwrap();
        let conn = Arc::new(ConnInfo {
            peer: "127.0.0.1:40000".parse().unwrap(),
            tls: false,
            cert_principal: None,
        });
        InProcess { handles, dir, conn }
    }

    /// Hand `req` to the proxy's handler.
    pub async fn proxy(&self, req: Request<Full<Bytes>>) -> Answer {
        let resp = crate::proxy::handle(
            self.handles.proxy.clone(),
            boxed_request(req),
            self.conn.clone(),
        )
        .await;
        read_answer(resp).await
    }

    /// An agent call with a JSON body, through the proxy's handler.
    pub async fn call(&self, method: &str, path: &str, body: &str) -> Answer {
        self.proxy(agent_call(method, "http://latch", path, body))
            .await
    }

    /// The admin API as `token`, through the admin handler.
    pub async fn admin(&self, method: &str, path: &str, token: &str, body: &str) -> Answer {
        let req = admin_request(method, "http://latch", path, token, body);
        let resp = crate::admin::handle(
            self.handles.admin.clone(),
            boxed_request(req),
            self.conn.clone(),
        )
        .await;
        read_answer(resp).await
    }
}

async fn read_answer<B>(resp: Response<B>) -> Answer
where
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let (parts, body) = resp.into_parts();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

fn agent_call(method: &str, base: &str, path: &str, body: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(format!("{base}{path}"))
        .header("authorization", format!("Bearer {AGENT_TOKEN}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

fn admin_request(
    method: &str,
    base: &str,
    path: &str,
    token: &str,
    body: &str,
) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(format!("{base}{path}"))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

/// A Latch process-in-a-task: started on `127.0.0.1:0` from a config in a
/// temp directory, restartable on the same directory.
pub struct TestLatch {
    pub running: Option<Running>,
    pub dir: tempfile::TempDir,
    pub config_text: String,
    pub env: BTreeMap<String, String>,
    /// With `LATCH_TEST_STORE=postgres`, the PostgreSQL this Latch uses
    /// instead of its SQLite file (stopped after Latch, being declared last).
    pub postgres: Option<Postgres>,
}

impl TestLatch {
    /// Start with the test policy.
    pub async fn start(upstream: &str) -> TestLatch {
        Self::start_with(upstream, "", TEST_POLICY).await
    }

    /// Start with `extra` config appended and `policy` as the only module.
    pub async fn start_with(upstream: &str, extra: &str, policy: &str) -> TestLatch {
        Self::start_text(config_text(upstream, extra), policy).await
    }

    /// Start from a whole config text (see [`config_text`]) and a policy.
    pub async fn start_text(config_text: String, policy: &str) -> TestLatch {
        Self::start_env(config_text, policy, &[]).await
    }

    /// Like [`TestLatch::start_text`], with extra environment variables.
    pub async fn start_env(config_text: String, policy: &str, env: &[(&str, &str)]) -> TestLatch {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("policies")).unwrap();
        std::fs::write(dir.path().join("policies/test.rego"), policy).unwrap();
        let postgres = match std::env::var("LATCH_TEST_STORE").as_deref() {
            Ok("postgres") => {
                Some(Postgres::start().expect("LATCH_TEST_STORE=postgres needs initdb and pg_ctl"))
            }
            _ => None,
        };
        let config_text = match &postgres {
            Some(pg) => config_text.replace(
                r#"url = "sqlite://latch.db""#,
                &format!(r#"url = "{}""#, pg.url),
            ),
            None => config_text,
        };
        let mut t = TestLatch {
            running: None,
            dir,
            config_text,
            env: test_env(),
            postgres,
        };
        for (k, v) in env {
            t.env.insert(k.to_string(), v.to_string());
        }
        t.boot().await;
        t
    }

    /// Start with the shipped policies (`policies/*.rego` and data).
    pub async fn start_shipped(upstream: &str, extra: &str) -> TestLatch {
        let t = Self::start_with(upstream, extra, TEST_POLICY).await;
        let mut t = t;
        if let Some(r) = t.running.take() {
            r.shutdown().await;
        }
        let dir = t.dir.path().join("policies");
        std::fs::remove_file(dir.join("test.rego")).unwrap();
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
        std::fs::create_dir(dir.join("rules")).unwrap();
        for f in ["latch.rego", "lib.rego", "prompts.rego", "data.json"] {
            std::fs::copy(shipped.join(f), dir.join(f)).unwrap();
        }
        for e in std::fs::read_dir(shipped.join("rules")).unwrap() {
            let p = e.unwrap().path();
            std::fs::copy(&p, dir.join("rules").join(p.file_name().unwrap())).unwrap();
        }
        t.boot().await;
        t
    }

    /// Where the config is written.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("latch.toml")
    }

    async fn boot(&mut self) {
        std::fs::write(self.config_path(), &self.config_text).unwrap();
        let config = Config::parse(&self.config_path(), &self.config_text, &self.env)
            .unwrap_or_else(|e| panic!("{e:?}"));
        self.running = Some(start(config).await.unwrap());
    }

    /// Stop gracefully and start again on the same directory.
    pub async fn restart(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
        self.boot().await;
    }

    /// The proxy listener.
    pub fn proxy(&self) -> SocketAddr {
        self.running.as_ref().unwrap().proxy_addr
    }

    /// The admin listener.
    pub fn admin(&self) -> SocketAddr {
        self.running.as_ref().unwrap().admin_addr
    }

    /// The temp directory (config, database, `policies/`).
    pub fn policy_dir(&self) -> &Path {
        self.dir.path()
    }
}

/// A plain HTTP/1.1 client.
pub fn client() -> Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A whole answer.
pub struct Answer {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl Answer {
    /// The body as JSON (panics if it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {:?}", self.body))
    }
    /// A header as text, or "".
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap())
            .unwrap_or("")
    }
}

/// Send `req` over a fresh client and read the whole answer.
pub async fn send(req: Request<Full<Bytes>>) -> Answer {
    let resp: Response<Incoming> = client().request(req).await.unwrap();
    read_answer(resp).await
}

/// A request with the agent's token.
pub fn agent_request(method: &str, addr: SocketAddr, path: &str) -> http::request::Builder {
    Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("authorization", format!("Bearer {AGENT_TOKEN}"))
}

/// An agent call with a JSON body.
pub async fn call(method: &str, addr: SocketAddr, path: &str, body: &str) -> Answer {
    send(agent_call(method, &format!("http://{addr}"), path, body)).await
}

/// A request to the admin API as `token`.
pub async fn admin(addr: SocketAddr, method: &str, path: &str, token: &str, body: &str) -> Answer {
    send(admin_request(
        method,
        &format!("http://{addr}"),
        path,
        token,
        body,
    ))
    .await
}

/// Poll the admin API until approval `id` is in `state` (10 s at most).
pub async fn wait_state(addr: SocketAddr, id: &str, state: &str) -> serde_json::Value {
    for _ in 0..200 {
        let a = admin(
            addr,
            "GET",
            &format!("/api/v1/approvals/{id}"),
            "alice-token",
            "",
        )
        .await;
        if a.status == 200 && a.json()["state"] == state {
            return a.json();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("approval {id} never reached {state}");
}

/// Poll until an approval is pending and return its id.
pub async fn wait_pending(addr: SocketAddr) -> String {
    wait_pending_n(addr, 1).await.remove(0)
}

/// Poll until at least `n` approvals are pending (10 s at most); their ids.
pub async fn wait_pending_n(addr: SocketAddr, n: usize) -> Vec<String> {
    for _ in 0..200 {
        let a = admin(
            addr,
            "GET",
            "/api/v1/approvals?status=pending",
            "alice-token",
            "",
        )
        .await;
        let ids: Vec<String> = a.json()["approvals"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a["id"].as_str().map(str::to_string))
            .collect();
        if ids.len() >= n {
            return ids;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("fewer than {n} approvals became pending");
}

/// Send raw bytes and return the status code of the answer.
pub async fn raw_status(addr: SocketAddr, request: &str) -> u16 {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    text.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}
