//! Black-box tests: Latch on 127.0.0.1:0 in front of a real recording
//! upstream, driven with real HTTP.

mod common;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde_json::{json, Value};

use common::*;

#[tokio::test]
async fn allow_reaches_upstream_with_injected_credential_and_without_agent_token() {
    let up = Upstream::start().await;
    let latch = TestLatch::start(&up.url()).await;
    let req = agent_request("POST", latch.proxy(), "/tools/echo/items/a%20b?x=1&y=2")
        .header("content-type", "application/json")
        .header("latch-reason", "customer asked")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-custom", "kept")
        .body(Full::new(Bytes::from_static(br#"{"item":"widget"}"#)))
        .unwrap();
    let a = send(req).await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(a.header("latch-decision"), "allow");
    assert!(!a.header("latch-request-id").is_empty());
    assert_eq!(a.json()["upstream"], "ok");

    let seen = up.requests();
    assert_eq!(seen.len(), 1);
    let r = &seen[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.uri, "/base/items/a%20b?x=1&y=2");
    assert_eq!(r.body.as_ref(), br#"{"item":"widget"}"#);
    assert_eq!(r.headers["authorization"], "Bearer upstream-secret");
    assert_eq!(r.headers["x-tool-version"], "7");
    assert_eq!(r.headers["x-custom"], "kept");
    assert_eq!(r.headers["x-forwarded-for"], "127.0.0.1");
    assert!(r.headers["forwarded"]
        .to_str()
        .unwrap()
        .starts_with("for=127.0.0.1;proto=http"));
    assert!(r.headers.get("latch-reason").is_none());
    for (name, value) in &r.headers {
        assert!(
            !value.to_str().unwrap_or("").contains(AGENT_TOKEN),
            "agent token leaked upstream in {name}"
        );
    }
}

#[tokio::test]
async fn deny_returns_reasons_and_reaches_nobody() {
    let up = Upstream::start().await;
    let latch = TestLatch::start(&up.url()).await;
    let a = call("POST", latch.proxy(), "/tools/echo/x", r#"{"block": true}"#).await;
    assert_eq!(a.status, 403);
    assert_eq!(a.header("latch-decision"), "deny");
    let body = a.json();
    assert_eq!(body["error"], "denied");
    assert_eq!(body["code"], "blocked");
    assert_eq!(
        body["reasons"],
        json!(["blocked by test policy", "try something else"])
    );
    assert_eq!(body["decision_id"], a.header("latch-request-id"));
    assert!(up.requests().is_empty());
}

#[tokio::test]
async fn missing_unknown_or_malformed_tokens_get_401() {
    let up = Upstream::start().await;
    let latch = TestLatch::start(&up.url()).await;
    let url = format!("http://{}/tools/echo/x", latch.proxy());
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("Basic Ym90OnB3"),
        Some("Bearer "),
    ] {
        let mut b = Request::builder().uri(&url);
        if let Some(v) = auth {
            b = b.header("authorization", v);
        }
        let a = send(b.body(Full::new(Bytes::new())).unwrap()).await;
        assert_eq!(a.status, 401, "{auth:?}");
        assert_eq!(a.header("latch-error"), "unauthenticated");
        assert!(a.header("www-authenticate").starts_with("Bearer"));
        assert_eq!(a.json()["error"], "unauthenticated");
    }
    assert!(up.requests().is_empty());
}

#[tokio::test]
async fn unknown_paths_get_404_and_latch_namespace_is_reserved() {
    let up = Upstream::start().await;
    let latch = TestLatch::start(&up.url()).await;
    for path in ["/nowhere", "/tools/echoes", "/latch/v2/anything"] {
        let a = call("GET", latch.proxy(), path, "").await;
        assert_eq!(a.status, 404, "{path}");
        assert_eq!(a.header("latch-error"), "no_route");
    }
    assert!(up.requests().is_empty());
}

#[tokio::test]
async fn ambiguous_paths_get_400_before_policy() {
    let up = Upstream::start().await;
    let latch = TestLatch::start(&up.url()).await;
    for path in [
        "/tools/echo/../admin",
        "/tools/echo/%2e%2e/admin",
        "/tools/echo%2fx",
        "/tools/echo/a;b=c",
        "/tools/echo/a\\b",
        "/tools/echo//x",
        "/tools/echo/%252e",
    ] {
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: latch\r\nAuthorization: Bearer {AGENT_TOKEN}\r\nConnection: close\r\n\r\n"
        );
        assert_eq!(raw_status(latch.proxy(), &req).await, 400, "{path}");
    }
    assert!(up.requests().is_empty());
}

#[tokio::test]
async fn bodies_over_the_limit_get_413() {
    let up = Upstream::start().await;
    let latch = TestLatch::start(&up.url()).await;
    let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(2000));
    let a = call("POST", latch.proxy(), "/tools/echo/x", &big).await;
    assert_eq!(a.status, 413);
    assert_eq!(a.header("latch-error"), "body_too_large");

    // Chunked, so no Content-Length to refuse up front.
    let chunk = "y".repeat(1500);
    let req = format!(
        "POST /tools/echo/x HTTP/1.1\r\nHost: latch\r\nAuthorization: Bearer {AGENT_TOKEN}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
        chunk.len()
    );
    assert_eq!(raw_status(latch.proxy(), &req).await, 413);

    // A streamed route enforces the limit while streaming.
    let req = format!(
        "POST /tools/stream/x HTTP/1.1\r\nHost: latch\r\nAuthorization: Bearer {AGENT_TOKEN}\r\nContent-Length: 1500\r\nConnection: close\r\n\r\n{chunk}"
    );
    assert_eq!(raw_status(latch.proxy(), &req).await, 413);
    assert!(up.requests().is_empty());
}

#[tokio::test]
async fn streamed_route_forwards_the_body() {
    let up = Upstream::start().await;
    let latch = TestLatch::start(&up.url()).await;
    let a = call(
        "PUT",
        latch.proxy(),
        "/tools/stream/upload",
        "raw bytes, not json",
    )
    .await;
    assert_eq!(a.status, 200);
    let seen = up.requests();
    assert_eq!(seen[0].uri, "/upload");
    assert_eq!(seen[0].body.as_ref(), b"raw bytes, not json");
}

#[tokio::test]
async fn upstream_down_is_502_and_slow_is_504() {
    let up = Upstream::start().await;
    let latch = TestLatch::start(&up.url()).await;
    let a = call("GET", latch.proxy(), "/tools/down/x", "").await;
    assert_eq!(a.status, 502);
    assert_eq!(a.header("latch-error"), "upstream_unavailable");

    let a = call("GET", latch.proxy(), "/tools/slow/x", "").await;
    assert_eq!(a.status, 504);
    assert_eq!(a.header("latch-error"), "upstream_timeout");
}

#[tokio::test]
async fn hop_by_hop_headers_are_stripped_both_ways() {
    let up = Upstream::start().await;
    let latch = TestLatch::start(&up.url()).await;
    let req = agent_request("GET", latch.proxy(), "/tools/echo/hop")
        .header("connection", "x-agent-hop, keep-alive")
        .header("x-agent-hop", "secret")
        .header("keep-alive", "timeout=5")
        .header("te", "trailers")
        .header("proxy-authorization", "Basic eA==")
        .header("x-agent-end", "kept")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let a = send(req).await;
    assert_eq!(a.status, 200);
    let seen = &up.requests()[0];
    for h in ["x-agent-hop", "keep-alive", "te", "proxy-authorization"] {
        assert!(seen.headers.get(h).is_none(), "{h} reached the upstream");
    }
    assert_eq!(seen.headers["x-agent-end"], "kept");
    assert!(a.headers.get("x-upstream-hop").is_none());
    assert!(a.headers.get("keep-alive").is_none());
    assert_eq!(a.header("x-upstream-end"), "kept");
}

#[tokio::test]
async fn policy_errors_and_timeouts_fail_closed() {
    let up = Upstream::start().await;
    let latch = TestLatch::start_with(&up.url(), "", BROKEN_POLICY).await;
    for (path, reason) in [
        ("/broken/error?n=nope", "policy error: evaluation failed"),
        ("/broken/slow?n=1", "policy error: evaluation timed out"),
        ("/broken/none", "policy error: no decision"),
    ] {
        let a = call("GET", latch.proxy(), path, "").await;
        assert_eq!(a.status, 403, "{path}");
        assert_eq!(a.header("latch-decision"), "deny");
        let body = a.json();
        assert_eq!(body["code"], "policy_error", "{path}");
        assert_eq!(body["reasons"], json!([reason]), "{path}");
    }
    assert!(up.requests().is_empty());
    let metrics = call("GET", latch.admin(), "/metrics", "").await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.contains("latch_policy_errors_total{reason=\"policy error: evaluation timed out\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn novelty_changes_after_the_first_call_and_survives_restart() {
    let up = Upstream::start().await;
    let mut latch = TestLatch::start(&up.url()).await;
    let body = r#"{"to": "a@example.com"}"#;
    let a = call("POST", latch.proxy(), "/tools/novel/send", body).await;
    assert_eq!(
        a.status, 200,
        "first call of a new class is allowed by the test policy"
    );
    let a = call(
        "POST",
        latch.proxy(),
        "/tools/novel/send",
        r#"{"to": "b@example.com"}"#,
    )
    .await;
    assert_eq!(a.status, 403);
    assert_eq!(a.json()["reasons"], json!(["seen 1 times"]));
    // A new argument shape is a new class.
    let a = call(
        "POST",
        latch.proxy(),
        "/tools/novel/send",
        r#"{"to": "a@example.com", "bcc": "x"}"#,
    )
    .await;
    assert_eq!(a.status, 200);

    latch.restart().await;
    let a = call("POST", latch.proxy(), "/tools/novel/send", body).await;
    assert_eq!(a.status, 403);
    assert_eq!(a.json()["code"], "seen_before");
    assert_eq!(up.requests().len(), 2);
}

#[tokio::test]
async fn the_policy_sees_the_contract_input() {
    let up = Upstream::start().await;
    let latch = TestLatch::start(&up.url()).await;
    let req = agent_request(
        "POST",
        latch.proxy(),
        "/tools/echo/send%20it?tag=a&tag=b&q=x+y",
    )
    .header("content-type", "application/json")
    .header("latch-reason", "user asked")
    .header("cookie", "session=1")
    .body(Full::new(Bytes::from_static(
        br#"{"echo_input": true, "amount": 5}"#,
    )))
    .unwrap();
    let a = send(req).await;
    assert_eq!(a.status, 403);
    let input: Value = serde_json::from_str(a.json()["reasons"][0].as_str().unwrap()).unwrap();
    let r = &input["request"];
    assert_eq!(r["method"], "POST");
    assert_eq!(r["path"], "/tools/echo/send it");
    assert_eq!(r["query"], json!({"tag": ["a", "b"], "q": ["x y"]}));
    assert_eq!(r["headers"]["latch-reason"], "user asked");
    assert_eq!(r["headers"]["content-type"], "application/json");
    assert!(r["headers"].get("authorization").is_none());
    assert!(r["headers"].get("cookie").is_none());
    assert_eq!(r["body"], json!({"echo_input": true, "amount": 5}));
    assert_eq!(r["size"], 33);
    assert_eq!(r["body_sha256"].as_str().unwrap().len(), 64);
    assert_eq!(r["content_type"], "application/json");
    assert_eq!(
        input["route"],
        json!({"name": "echo", "upstream": format!("{}/base", up.url()), "tool": "echo"})
    );
    assert_eq!(input["agent"], json!({"id": "bot", "roles": ["agent"]}));
    assert_eq!(input["action"]["tool"], "echo");
    assert_eq!(
        input["action"]["args"],
        json!({"echo_input": true, "amount": 5})
    );
    assert_eq!(input["action"]["class"].as_str().unwrap().len(), 32);
    assert_eq!(input["history"]["seen"], 0);
    assert!(input["now"]["unix"].as_i64().unwrap() > 1_700_000_000);
    assert!(input["now"]["weekday"].as_str().unwrap().ends_with("day"));
}

#[tokio::test]
async fn metrics_and_health() {
    let up = Upstream::start().await;
    let latch = TestLatch::start(&up.url()).await;
    call("GET", latch.proxy(), "/tools/echo/x", "").await;
    call("POST", latch.proxy(), "/tools/echo/x", r#"{"block": true}"#).await;
    let m = call("GET", latch.admin(), "/metrics", "").await;
    assert_eq!(m.status, 200);
    assert!(m
        .header("content-type")
        .starts_with("text/plain; version=0.0.4"));
    let text = String::from_utf8_lossy(&m.body).to_string();
    for needle in [
        "latch_requests_total{decision=\"allow\",route=\"echo\"} 1",
        "latch_requests_total{decision=\"deny\",route=\"echo\"} 1",
        "latch_policy_eval_seconds_count 2",
        "latch_upstream_seconds_count{route=\"echo\"} 1",
        "latch_requests_in_flight 0",
        "latch_policy_info{evaluator=\"vm\",hash=\"",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
    // Every sample line is `name{labels} value` with a numeric value.
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let value = line.rsplit(' ').next().unwrap();
        assert!(
            value.parse::<f64>().is_ok() || value == "+Inf",
            "bad sample: {line}"
        );
    }
    assert_eq!(call("GET", latch.admin(), "/healthz", "").await.status, 200);
    let ready = call("GET", latch.admin(), "/readyz", "").await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["store"], "ok");
    assert_eq!(call("GET", latch.admin(), "/nope", "").await.status, 404);
}

#[tokio::test]
async fn chunked_bodies_under_the_limit_arrive_intact() {
    let up = Upstream::start().await;
    let latch = TestLatch::start(&up.url()).await;
    let body = r#"{"item":"chunked"}"#;
    let req = format!(
        "POST /tools/echo/c HTTP/1.1\r\nHost: latch\r\nAuthorization: Bearer {AGENT_TOKEN}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
        body.len()
    );
    assert_eq!(raw_status(latch.proxy(), &req).await, 200);
    let seen = up.requests();
    assert_eq!(seen[0].body.as_ref(), body.as_bytes());
}

#[tokio::test]
async fn connect_is_refused_with_405() {
    let up = Upstream::start().await;
    let latch = TestLatch::start(&up.url()).await;
    let req = format!(
        "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\nAuthorization: Bearer {AGENT_TOKEN}\r\n\r\n"
    );
    assert_eq!(raw_status(latch.proxy(), &req).await, 405);
}

#[tokio::test]
async fn a_client_that_never_finishes_its_head_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = Upstream::start().await;
    let latch = TestLatch::start(&up.url()).await;
    let mut s = tokio::net::TcpStream::connect(latch.proxy()).await.unwrap();
    s.write_all(b"GET /tools/echo/x HTTP/1.1\r\nHost: latch\r\nX-Slow: ")
        .await
        .unwrap();
    // header_read_timeout_ms is 2000 in the test config: the server must
    // answer 408 or close well before this generous bound.
    let mut buf = Vec::new();
    let read =
        tokio::time::timeout(std::time::Duration::from_secs(8), s.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "connection was still open after 8 s");
    let text = String::from_utf8_lossy(&buf);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
    assert!(up.requests().is_empty());
}

/// A connection that never sends a byte (neither an HTTP/1.1 head nor the
/// HTTP/2 preface) is closed after the header read timeout.
#[tokio::test]
async fn a_silent_connection_is_cut_off() {
    use tokio::io::AsyncReadExt;
    let up = Upstream::start().await;
    let latch = TestLatch::start(&up.url()).await;
    let mut s = tokio::net::TcpStream::connect(latch.proxy()).await.unwrap();
    let mut buf = Vec::new();
    let read =
        tokio::time::timeout(std::time::Duration::from_secs(8), s.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "a silent connection was still open after 8 s");
}

/// Every allowed or denied call leaves exactly one decision record, whole,
/// under the id the agent was answered with (the evaluator thread that
/// decides commits it; nothing else may add a second).
#[tokio::test]
async fn each_decided_call_is_recorded_once_under_its_request_id() {
    let up = Upstream::start().await;
    let latch = TestLatch::start(&up.url()).await;
    let allowed = call("POST", latch.proxy(), "/tools/echo/send", r#"{"n": 1}"#).await;
    assert_eq!(allowed.status, 200);
    let denied = call(
        "POST",
        latch.proxy(),
        "/tools/echo/send",
        r#"{"echo_input": true}"#,
    )
    .await;
    assert_eq!(denied.status, 403);
    assert_eq!(up.requests().len(), 1);

    let audit = admin(
        latch.admin(),
        "GET",
        "/api/v1/audit?limit=100",
        "alice-token",
        "",
    )
    .await;
    assert_eq!(audit.status, 200, "{:?}", audit.body);
    let records = audit.json()["records"].as_array().cloned().unwrap();
    let decisions: Vec<&Value> = records
        .iter()
        .filter(|r| r["event"] == "decision")
        .collect();
    assert_eq!(decisions.len(), 2, "{decisions:?}");
    for (answer, body, action) in [
        (&allowed, r#"{"n": 1}"#, "allow"),
        (&denied, r#"{"echo_input": true}"#, "deny"),
    ] {
        let id = answer.header("latch-request-id");
        let mine: Vec<&&Value> = decisions.iter().filter(|r| r["subject"] == id).collect();
        assert_eq!(mine.len(), 1, "one record for {id}: {decisions:?}");
        let (r, d) = (mine[0], &mine[0]["details"]);
        assert_eq!(r["actor"], "bot");
        assert_eq!(d["action"], action);
        assert_eq!(d["route"], "echo");
        assert_eq!(d["tool"], "echo");
        assert_eq!(d["method"], "POST");
        assert_eq!(d["path"], "/tools/echo/send");
        assert_eq!(d["shadow"], false);
        assert_eq!(
            d["body_sha256"],
            latch::digest::body_sha256(body.as_bytes())
        );
        assert_eq!(d["policy"].as_str().unwrap().len(), 64);
        assert!(d["reasons"].is_array());
    }
    let refusal = decisions
        .iter()
        .find(|r| r["subject"] == denied.header("latch-request-id"));
    assert_eq!(refusal.unwrap()["details"]["code"], denied.json()["code"]);
}
