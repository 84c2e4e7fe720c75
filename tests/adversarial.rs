//! The HTTP-layer suite of the adversarial round (issue 8): one test per
//! attack vector, named by its number, each checking what reached the
//! upstream tool — not only the status code the agent got.

mod common;

use std::io::Write;

use bytes::Bytes;
use http_body_util::Full;

use common::*;

/// A small payments policy: amounts over 100 are denied, deletes are
/// denied, a dry run (by header) is allowed at any amount, and opaque
/// bodies are refused when the agent asks for it through the query.
const POLICY: &str = r#"package latch
import rego.v1

decision := {"action": "deny", "code": "wrong_tool", "reasons": ["the tool is not the route's"]} if {
    input.action.tool != input.route.tool
} else := {"action": "deny", "code": "opaque_body", "reasons": ["opaque body"]} if {
    input.request.body_format == "opaque"
    input.request.body == null
    input.action.args.deny_opaque == "1"
} else := {"action": "deny", "code": "no_delete", "reasons": ["deletes are not allowed"]} if {
    input.request.method == "DELETE"
} else := {"action": "allow", "risk": "low", "code": "dry_run", "reasons": []} if {
    input.request.headers["x-dry-run"] == "true"
} else := {"action": "deny", "code": "over_limit", "reasons": ["amount over 100"]} if {
    to_number(input.action.args.amount) > 100
} else := {"action": "allow", "risk": "low", "code": "ok", "reasons": []}
"#;

const ROUTES: &str = r#"
[[routes]]
name = "pay"
prefix = "/tools/pay"
upstream = "{upstream}"
tool = "pay"

[[routes]]
name = "files"
prefix = "/tools/files"
upstream = "{upstream}"
body = "opaque"
"#;

async fn start(up: &Upstream) -> TestLatch {
    let text = config_text(&up.url(), &ROUTES.replace("{upstream}", &up.url())).replace(
        "timeout_ms = 50\n",
        "timeout_ms = 50\ninput_headers = [\"content-type\", \"x-dry-run\"]\n",
    );
    TestLatch::start_text(text, POLICY).await
}

async fn post(
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Answer {
    let mut req = agent_request("POST", addr, path);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(req.body(Full::new(Bytes::from(body))).unwrap()).await
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

const JSON: (&str, &str) = ("content-type", "application/json");

#[tokio::test]
async fn v01_a_json_rpc_envelope_on_a_plain_route_is_judged_as_the_route_tool() {
    let up = Upstream::start().await;
    let t = start(&up).await;
    // Before: `params.name` became the tool and only `params.arguments`
    // were judged, so the amount beside them went through unseen.
    let envelope = br#"{"jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "search", "arguments": {"q": "x"}}, "amount": 5000}"#;
    let a = post(t.proxy(), "/tools/pay/send", &[JSON], envelope.to_vec()).await;
    assert_eq!(a.status, 403, "{:?}", a.body);
    assert_eq!(a.json()["code"], "over_limit");
    assert!(up.requests().is_empty(), "the envelope reached the tool");

    // A small one goes through, byte for byte, judged as `pay`.
    let small =
        br#"{"jsonrpc": "2.0", "method": "tools/call", "params": {"name": "search"}, "amount": 5}"#;
    let a = post(t.proxy(), "/tools/pay/send", &[JSON], small.to_vec()).await;
    assert_eq!(a.status, 200);
    assert_eq!(&up.requests()[0].body[..], &small[..]);
}

#[tokio::test]
async fn v02a_a_leading_bom_is_judged_and_not_forwarded() {
    let up = Upstream::start().await;
    let t = start(&up).await;
    let a = post(
        t.proxy(),
        "/tools/pay/x",
        &[JSON],
        b"\xEF\xBB\xBF{\"amount\": 5000}".to_vec(),
    )
    .await;
    assert_eq!(a.status, 403);
    assert_eq!(a.json()["code"], "over_limit");
    assert!(up.requests().is_empty());

    let a = post(
        t.proxy(),
        "/tools/pay/x",
        &[JSON],
        b"\xEF\xBB\xBF{\"amount\": 5}".to_vec(),
    )
    .await;
    assert_eq!(a.status, 200);
    let seen = &up.requests()[0];
    assert_eq!(&seen.body[..], b"{\"amount\": 5}");
    assert_eq!(seen.headers["content-length"], "13");
}

#[tokio::test]
async fn v02b_json_the_parser_cannot_read_faithfully_is_refused() {
    let up = Upstream::start().await;
    let t = start(&up).await;
    let cases: &[(&[u8], u16)] = &[
        (b"\xFF\xFE{\x00\"\x00a\x00\"\x00:\x001\x00}\x00", 415), // UTF-16
        (b"{\"amount\": NaN}", 400),
        (b"{\"amount\": Infinity}", 400),
        (b"{\"amount\": 1e400}", 400),
        (b"{\"amount\": 5} {\"amount\": 5000}", 400), // trailing data
        (b"{\"amount\": 5, \"amount\": 5000}", 400),  // duplicate key
        (b"{\"amount\": 5", 400),
    ];
    for (body, status) in cases {
        let a = post(t.proxy(), "/tools/pay/x", &[JSON], body.to_vec()).await;
        assert_eq!(a.status, *status, "{:?}", String::from_utf8_lossy(body));
        assert!(!a.header("latch-error").is_empty());
    }
    assert!(up.requests().is_empty(), "a refused body reached the tool");
}

#[tokio::test]
async fn v02c_compressed_bodies_are_decoded_judged_and_sent_decoded() {
    let up = Upstream::start().await;
    let t = start(&up).await;
    let gz = ("content-encoding", "gzip");
    let a = post(
        t.proxy(),
        "/tools/pay/x",
        &[JSON, gz],
        gzip(br#"{"amount": 5000}"#),
    )
    .await;
    assert_eq!(a.status, 403);
    assert_eq!(a.json()["code"], "over_limit");
    assert!(up.requests().is_empty());

    let a = post(
        t.proxy(),
        "/tools/pay/x",
        &[JSON, gz],
        gzip(br#"{"amount": 5}"#),
    )
    .await;
    assert_eq!(a.status, 200);
    let seen = &up.requests()[0];
    assert_eq!(&seen.body[..], br#"{"amount": 5}"#);
    assert!(seen.headers.get("content-encoding").is_none());

    // A bomb: 1 KiB limit in the test config, 256 KiB inside.
    let bomb = gzip(&vec![b' '; 256 << 10]);
    assert!(bomb.len() < 1024);
    let a = post(t.proxy(), "/tools/pay/x", &[JSON, gz], bomb).await;
    assert_eq!(a.status, 413);
    let a = post(
        t.proxy(),
        "/tools/pay/x",
        &[JSON, ("content-encoding", "zstd")],
        b"x".to_vec(),
    )
    .await;
    assert_eq!(a.status, 415);
    assert_eq!(up.requests().len(), 1);
}

#[tokio::test]
async fn v02d_form_bodies_become_the_arguments() {
    let up = Upstream::start().await;
    let t = start(&up).await;
    let form = ("content-type", "application/x-www-form-urlencoded");
    let a = post(
        t.proxy(),
        "/tools/pay/x",
        &[form],
        b"amount=5000&to=x".to_vec(),
    )
    .await;
    assert_eq!(a.status, 403);
    assert_eq!(a.json()["code"], "over_limit");
    for repeated in [
        &b"amount=5&amount=5000"[..],
        b"amount[]=5000",
        b"amount=%GG",
    ] {
        let a = post(t.proxy(), "/tools/pay/x", &[form], repeated.to_vec()).await;
        assert_eq!(a.status, 400, "{:?}", String::from_utf8_lossy(repeated));
    }
    assert!(up.requests().is_empty());
    let a = post(
        t.proxy(),
        "/tools/pay/x",
        &[form],
        b"amount=5&to=x".to_vec(),
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(&up.requests()[0].body[..], b"amount=5&to=x");
}

#[tokio::test]
async fn v02e_unjudgeable_media_types_are_refused_unless_the_route_is_opaque() {
    let up = Upstream::start().await;
    let t = start(&up).await;
    let multipart = ("content-type", "multipart/form-data; boundary=XX");
    let body = b"--XX\r\nContent-Disposition: form-data; name=\"amount\"\r\n\r\n5000\r\n--XX--\r\n"
        .to_vec();
    let a = post(t.proxy(), "/tools/pay/x", &[multipart], body.clone()).await;
    assert_eq!(a.status, 415);
    assert_eq!(a.header("latch-error"), "unsupported_body");
    // JSON sent as text/plain: many frameworks parse it anyway.
    let a = post(
        t.proxy(),
        "/tools/pay/x",
        &[("content-type", "text/plain")],
        br#"{"amount": 5000}"#.to_vec(),
    )
    .await;
    assert_eq!(a.status, 415);
    // No content type and not JSON.
    let a = post(t.proxy(), "/tools/pay/x", &[], b"amount=5000".to_vec()).await;
    assert_eq!(a.status, 415);
    assert!(up.requests().is_empty());

    // An opaque route forwards it, and the policy is told it saw no body.
    let a = post(
        t.proxy(),
        "/tools/files/up?deny_opaque=1",
        &[multipart],
        body.clone(),
    )
    .await;
    assert_eq!(a.status, 403);
    assert_eq!(a.json()["code"], "opaque_body");
    let a = post(t.proxy(), "/tools/files/up", &[multipart], body.clone()).await;
    assert_eq!(a.status, 200);
    assert_eq!(up.requests()[0].body, body);
}

#[tokio::test]
async fn v02f_a_parameter_in_both_query_and_body_is_refused() {
    let up = Upstream::start().await;
    let t = start(&up).await;
    let a = post(
        t.proxy(),
        "/tools/pay/x?amount=5000",
        &[JSON],
        br#"{"amount": 5}"#.to_vec(),
    )
    .await;
    assert_eq!(a.status, 400);
    assert!(a.json()["message"].as_str().unwrap().contains("amount"));
    assert!(up.requests().is_empty());
}

#[tokio::test]
async fn v03_methods_must_be_upper_case_tokens() {
    let up = Upstream::start().await;
    let t = start(&up).await;
    let req = format!(
        "delete /tools/pay/1 HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {AGENT_TOKEN}\r\ncontent-length: 0\r\n\r\n"
    );
    assert_eq!(raw_status(t.proxy(), &req).await, 400);
    assert!(up.requests().is_empty());
    let req = format!(
        "DELETE /tools/pay/1 HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {AGENT_TOKEN}\r\ncontent-length: 0\r\n\r\n"
    );
    assert_eq!(raw_status(t.proxy(), &req).await, 403);
    assert!(up.requests().is_empty());
}

#[tokio::test]
async fn v08_a_header_named_in_connection_is_not_judged() {
    let up = Upstream::start().await;
    let t = start(&up).await;
    // `x-dry-run: true` would make the policy allow any amount, but the
    // agent names it in `Connection`, so the tool never gets it: the policy
    // must not see it either.
    let a = post(
        t.proxy(),
        "/tools/pay/x",
        &[JSON, ("connection", "x-dry-run"), ("x-dry-run", "true")],
        br#"{"amount": 5000}"#.to_vec(),
    )
    .await;
    assert_eq!(a.status, 403, "{:?}", a.body);
    assert_eq!(a.json()["code"], "over_limit");
    assert!(up.requests().is_empty());

    // Sent plainly it is judged, and the tool gets it.
    let a = post(
        t.proxy(),
        "/tools/pay/x",
        &[JSON, ("x-dry-run", "true")],
        br#"{"amount": 5000}"#.to_vec(),
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(up.requests()[0].headers["x-dry-run"], "true");
}

/// Start with the shared test policy (gates on `gate: true`, denies on
/// `block: true`), optionally with more break-glass roles.
async fn start_gate(up: &Upstream, break_glass: &str) -> TestLatch {
    let text = config_text(&up.url(), "").replace(
        "break_glass_roles = [\"oncall\"]",
        &format!("break_glass_roles = [{break_glass}]"),
    );
    TestLatch::start_text(text, TEST_POLICY).await
}

async fn gated(t: &TestLatch, body: &str) -> String {
    let req = agent_request("POST", t.proxy(), "/tools/echo/pay")
        .header("content-type", "application/json")
        .header("prefer", "respond-async")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let a = send(req).await;
    assert_eq!(a.status, 202, "{:?}", a.body);
    a.json()["approval_id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn v04_a_modified_body_goes_back_through_the_policy() {
    let up = Upstream::start().await;
    let t = start_gate(&up, "\"oncall\"").await;
    let one_lead = r#"{"require": [{"role": "lead", "count": 1}]}"#;
    let id = gated(
        &t,
        &format!(r#"{{"gate": true, "approval": {one_lead}, "amount": 1}}"#),
    )
    .await;
    let modify = |body: String| {
        let path = format!("/api/v1/approvals/{id}/modify");
        let addr = t.admin();
        async move {
            admin(
                addr,
                "POST",
                &path,
                "alice-token",
                &format!(r#"{{"body": {body}}}"#),
            )
            .await
        }
    };

    // Into something the policy denies outright: refused, nothing sent.
    let a = modify(r#"{"gate": true, "block": true, "amount": 1}"#.into()).await;
    assert_eq!(a.status, 422, "{:?}", a.body);
    assert_eq!(a.json()["error"], "policy_denied");
    assert!(a.json()["message"].as_str().unwrap().contains("blocked"));
    // Not the call's content type: a JSON object call stays an object.
    let a = modify("[1, 2]".into()).await;
    assert_eq!(a.status, 422);
    assert_eq!(
        wait_state(t.admin(), &id, "pending").await["votes"],
        serde_json::json!([])
    );

    // Into one that needs a director too: the lead's modify alone is not enough.
    let both = r#"{"require": [{"role": "lead", "count": 1}, {"role": "director", "count": 1}]}"#;
    let a = modify(format!(
        r#"{{"gate": true, "approval": {both}, "amount": 2}}"#
    ))
    .await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(a.json()["state"], "pending");
    assert!(
        up.requests().is_empty(),
        "executed on the modifier's vote alone"
    );

    let a = admin(
        t.admin(),
        "POST",
        &format!("/api/v1/approvals/{id}/approve"),
        "dave-token",
        "{}",
    )
    .await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    wait_state(t.admin(), &id, "executed").await;
    let seen = up.requests();
    assert_eq!(seen.len(), 1);
    let sent: serde_json::Value = serde_json::from_slice(&seen[0].body).unwrap();
    assert_eq!(sent["amount"], 2);
    assert_eq!(seen[0].headers["content-type"], "application/json");
}

#[tokio::test]
async fn v05_owners_cannot_break_glass_on_their_own_agents_calls() {
    let up = Upstream::start().await;
    // carol is a lead and owns `bot`; leads may break glass here.
    let t = start_gate(&up, "\"oncall\", \"lead\"").await;
    let id = gated(&t, r#"{"gate": true}"#).await;
    let path = format!("/api/v1/approvals/{id}/override");
    let a = admin(
        t.admin(),
        "POST",
        &path,
        "carol-token",
        r#"{"reason": "trust me"}"#,
    )
    .await;
    assert_eq!(a.status, 403, "{:?}", a.body);
    assert!(a.json()["message"]
        .as_str()
        .unwrap()
        .contains("owns agent bot"));
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert!(up.requests().is_empty());

    let a = admin(
        t.admin(),
        "POST",
        &path,
        "alice-token",
        r#"{"reason": "incident 7"}"#,
    )
    .await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    wait_state(t.admin(), &id, "executed").await;
    assert_eq!(up.requests().len(), 1);
}

/// One builtin that runs far past a 50 ms limit and then allows.
const SLOW_POLICY: &str = r#"package latch
import rego.v1

slow if count(numbers.range(1, 3000000)) > 0

decision := {"action": "allow", "risk": "low", "code": "slow", "reasons": []} if {
    input.request.path == "/tools/echo/slow-allow"
    slow
} else := {"action": "allow", "risk": "low", "code": "ok", "reasons": []}
"#;

#[tokio::test]
async fn v09_a_late_evaluation_is_a_deny_and_does_not_stall_other_calls() {
    let up = Upstream::start().await;
    let t = TestLatch::start_text(config_text(&up.url(), ""), SLOW_POLICY).await;
    let addr = t.proxy();
    let slow =
        tokio::spawn(async move { call("POST", addr, "/tools/echo/slow-allow", "{}").await });
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    // The slow evaluation runs on a policy thread, not on the (single, in
    // this test) async worker: a fast call is answered meanwhile.
    let fast = call("POST", addr, "/tools/echo/fast", "{}").await;
    assert_eq!(fast.status, 200);
    assert!(
        !slow.is_finished(),
        "the slow evaluation finished first; the test proves nothing"
    );
    let slow = slow.await.unwrap();
    assert_eq!(slow.status, 403, "{:?}", slow.body);
    assert_eq!(slow.json()["code"], "policy_error");
    assert_eq!(
        slow.json()["reasons"][0],
        "policy error: evaluation timed out"
    );
    let seen = up.requests();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].uri.ends_with("/fast"));
}

#[tokio::test]
async fn v07_pending_approvals_are_capped_per_agent_and_listed_in_pages() {
    let up = Upstream::start().await;
    let text =
        config_text(&up.url(), "").replace("[gate]\n", "[gate]\nmax_pending_per_agent = 3\n");
    let t = TestLatch::start_text(text, TEST_POLICY).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(gated(&t, r#"{"gate": true}"#).await);
    }
    let req = agent_request("POST", t.proxy(), "/tools/echo/pay")
        .header("content-type", "application/json")
        .header("prefer", "respond-async")
        .body(Full::new(Bytes::from(r#"{"gate": true}"#)))
        .unwrap();
    let a = send(req).await;
    assert_eq!(a.status, 429, "{:?}", a.body);
    assert_eq!(a.header("latch-error"), "too_many_pending");
    assert_eq!(a.header("retry-after"), "30");
    // Another agent is not held back by this one's flood.
    let req = http::Request::post(format!("http://{}/tools/echo/pay", t.proxy()))
        .header("authorization", "Bearer bot2-token")
        .header("content-type", "application/json")
        .header("prefer", "respond-async")
        .body(Full::new(Bytes::from(r#"{"gate": true}"#)))
        .unwrap();
    assert_eq!(send(req).await.status, 202);
    assert!(up.requests().is_empty());

    // The refusal is in the audit trail.
    let audit = admin(t.admin(), "GET", "/api/v1/audit", "alice-token", "")
        .await
        .json();
    assert!(audit["records"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["details"]["code"] == "too_many_pending"));

    // Paging by agent reaches every pending approval exactly once.
    let mut seen = Vec::new();
    let mut path = "/api/v1/approvals?status=pending&agent=bot&limit=2".to_string();
    loop {
        let page = admin(t.admin(), "GET", &path, "alice-token", "")
            .await
            .json();
        assert_eq!(page["total"], 3);
        for a in page["approvals"].as_array().unwrap() {
            assert_eq!(a["agent"], "bot");
            seen.push(a["id"].as_str().unwrap().to_string());
        }
        match page["next_cursor"].as_str() {
            Some(c) => {
                path = format!("/api/v1/approvals?status=pending&agent=bot&limit=2&cursor={c}")
            }
            None => break,
        }
    }
    seen.sort();
    ids.sort();
    assert_eq!(seen, ids);
    let all = admin(
        t.admin(),
        "GET",
        "/api/v1/approvals?limit=1000",
        "alice-token",
        "",
    )
    .await
    .json();
    assert_eq!(all["total"], 4);
    assert!(all["next_cursor"].is_null());
}

#[tokio::test]
async fn v06_slow_admin_clients_cannot_starve_the_listeners() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = Upstream::start().await;
    let text = config_text(&up.url(), "").replace(
        "[admin]\nlisten = \"127.0.0.1:0\"\n",
        "[admin]\nlisten = \"127.0.0.1:0\"\nmax_connections = 4\nheader_read_timeout_ms = 500\nbody_read_timeout_ms = 500\n",
    );
    let t = TestLatch::start_text(text, TEST_POLICY).await;
    // Fill every admin slot: two trickle a /login body, two never finish their head.
    let mut stalled = Vec::new();
    for i in 0..4 {
        let mut s = tokio::net::TcpStream::connect(t.admin()).await.unwrap();
        let head = if i % 2 == 0 {
            "POST /login HTTP/1.1\r\nhost: x\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: 1000\r\n\r\ntoken="
        } else {
            "GET /healthz HTTP/1.1\r\nhost: x\r\n"
        };
        s.write_all(head.as_bytes()).await.unwrap();
        stalled.push(s);
    }
    // The agents' listener does not share the admin listener's slots.
    let a = call("POST", t.proxy(), "/tools/echo/x", "{}").await;
    assert_eq!(a.status, 200);
    // The stalled clients are cut off, which frees the slots for /healthz.
    let health = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        let req = http::Request::get(format!("http://{}/healthz", t.admin()))
            .body(Full::new(Bytes::new()))
            .unwrap();
        send(req).await
    })
    .await
    .expect("/healthz never answered");
    assert_eq!(health.status, 200);
    for mut s in stalled {
        let mut buf = Vec::new();
        let _ =
            tokio::time::timeout(std::time::Duration::from_secs(3), s.read_to_end(&mut buf)).await;
        let text = String::from_utf8_lossy(&buf);
        assert!(buf.is_empty() || text.starts_with("HTTP/1.1 408"), "{text}");
    }
}

#[tokio::test]
async fn v11_guessing_tokens_and_logins_is_throttled() {
    let up = Upstream::start().await;
    let t = TestLatch::start(&up.url()).await;
    let with_token = |token: &str| {
        http::Request::post(format!("http://{}/tools/echo/x", t.proxy()))
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from("{}")))
            .unwrap()
    };
    for i in 0..20 {
        assert_eq!(send(with_token(&format!("guess-{i}"))).await.status, 401);
    }
    // Now even the right token is refused from this address, or guessing
    // would go on and learn which guess was right.
    let a = send(with_token(AGENT_TOKEN)).await;
    assert_eq!(a.status, 429);
    assert_eq!(a.header("latch-error"), "throttled");
    assert!(a.header("retry-after").parse::<u64>().unwrap() > 0);
    assert!(up.requests().is_empty());
    // One count per source across both listeners: guessing on one blocks both.
    let a = admin(t.admin(), "GET", "/api/v1/approvals", "alice-token", "").await;
    assert_eq!(a.status, 429);

    // Failed dashboard logins count too.
    let t = TestLatch::start(&up.url()).await;
    let login = |token: &str| {
        http::Request::post(format!("http://{}/login", t.admin()))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(format!("token={token}"))))
            .unwrap()
    };
    for i in 0..20 {
        let a = send(login(&format!("nope-{i}"))).await;
        assert_eq!(a.status, 303);
        assert!(a.header("location").contains("failed"));
    }
    let a = send(login("alice-token")).await;
    assert_eq!(a.status, 429);
    let a = admin(t.admin(), "GET", "/api/v1/approvals", "alice-token", "").await;
    assert_eq!(a.status, 429);
}

#[tokio::test]
async fn v10_a_keyed_chain_catches_rewrites_truncation_and_flipped_approvals() {
    let up = Upstream::start().await;
    let mut t = TestLatch::start(&up.url()).await;
    t.env.insert("LATCH_AUDIT_KEY".into(), "k".repeat(40));
    t.config_text
        .push_str("\n[audit]\nkey_env = \"LATCH_AUDIT_KEY\"\n");
    t.restart().await;
    let one_lead = r#"{"require": [{"role": "lead", "count": 1}]}"#;
    let id = gated(&t, &format!(r#"{{"gate": true, "approval": {one_lead}}}"#)).await;
    if let Some(r) = t.running.take() {
        r.shutdown().await;
    }

    // An insider flips the row to approved; the chain never approved it.
    let db = rusqlite::Connection::open(t.dir.path().join("latch.db")).unwrap();
    db.execute(
        "UPDATE approvals SET state = 'approved', data = json_set(data, '$.state', 'approved') WHERE id = ?1",
        [&id],
    )
    .unwrap();
    t.restart().await;
    let a = wait_state(t.admin(), &id, "failed").await;
    assert!(
        a["outcome"].as_str().unwrap().contains("no approval"),
        "{a}"
    );
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert!(up.requests().is_empty(), "a flipped row executed");
    if let Some(r) = t.running.take() {
        r.shutdown().await;
    }

    let config = latch::config::Config::parse(&t.config_path(), &t.config_text, &t.env).unwrap();
    assert_eq!(latch::cli::audit_verify(&config), 0);

    // Rewrite record 1 and recompute every later hash: consistent, but
    // the MACs cannot be recomputed without the key.
    let saved: Vec<(i64, String, String)> = db
        .prepare("SELECT seq, details, hash FROM audit ORDER BY seq")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let records: Vec<latch::audit::chain::Record> = {
        let store = latch::app::open_store(&config).unwrap();
        store.audit_after(0, 1000).unwrap()
    };
    let mut prev = latch::audit::chain::GENESIS.to_string();
    for (i, r) in records.iter().enumerate() {
        let mut details = r.details.clone();
        if i == 0 {
            details["risk"] = serde_json::json!("low");
        }
        let e = latch::audit::chain::Event::new(&r.actor, &r.event, &r.subject, details.clone());
        let sealed = latch::audit::chain::seal(r.seq, r.ts.clone(), e, prev.clone(), None);
        db.execute(
            "UPDATE audit SET details = ?1, prev_hash = ?2, hash = ?3 WHERE seq = ?4",
            rusqlite::params![details.to_string(), sealed.prev_hash, sealed.hash, r.seq],
        )
        .unwrap();
        prev = sealed.hash;
    }
    db.execute("UPDATE audit_head SET hash = ?1", [&prev])
        .unwrap();
    assert_eq!(latch::cli::audit_verify(&config), 1);

    // Restore, then drop the newest record: the keyed head notices.
    for (seq, details, hash) in &saved {
        db.execute(
            "UPDATE audit SET details = ?1, hash = ?2, prev_hash = COALESCE((SELECT hash FROM audit WHERE seq = ?3 - 1), ?4) WHERE seq = ?3",
            rusqlite::params![details, hash, seq, latch::audit::chain::GENESIS],
        )
        .unwrap();
    }
    db.execute(
        "UPDATE audit_head SET hash = ?1",
        [&saved.last().unwrap().2],
    )
    .unwrap();
    assert_eq!(latch::cli::audit_verify(&config), 0);
    db.execute(
        "DELETE FROM audit WHERE seq = (SELECT MAX(seq) FROM audit)",
        [],
    )
    .unwrap();
    assert_eq!(latch::cli::audit_verify(&config), 1);
}

#[tokio::test]
async fn also_readyz_says_not_ready_while_the_store_cannot_be_written() {
    let up = Upstream::start().await;
    let t = TestLatch::start(&up.url()).await;
    let readyz = || async {
        let req = http::Request::get(format!("http://{}/readyz", t.admin()))
            .body(Full::new(Bytes::new()))
            .unwrap();
        send(req).await
    };
    assert_eq!(readyz().await.status, 200);
    // Another process holds the write lock: reads work, writes cannot.
    let db = rusqlite::Connection::open(t.dir.path().join("latch.db")).unwrap();
    db.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let a = readyz().await;
    assert_eq!(a.status, 503, "{:?}", a.body);
    assert!(a.json()["store"]
        .as_str()
        .unwrap()
        .contains("cannot be written"));
    db.execute_batch("ROLLBACK").unwrap();
    assert_eq!(readyz().await.status, 200);
}

#[tokio::test]
async fn also_metrics_can_require_a_bearer_token() {
    let up = Upstream::start().await;
    let mut t = TestLatch::start(&up.url()).await;
    t.env.insert("METRICS_TOKEN".into(), "scrape-me".into());
    t.config_text = t.config_text.replace(
        "[admin]\nlisten = \"127.0.0.1:0\"\n",
        "[admin]\nlisten = \"127.0.0.1:0\"\nmetrics_token_env = \"METRICS_TOKEN\"\n",
    );
    t.restart().await;
    let get = |token: Option<&str>| {
        let mut req = http::Request::get(format!("http://{}/metrics", t.admin()));
        if let Some(tok) = token {
            req = req.header("authorization", format!("Bearer {tok}"));
        }
        send(req.body(Full::new(Bytes::new())).unwrap())
    };
    assert_eq!(get(None).await.status, 401);
    assert_eq!(get(Some("wrong")).await.status, 401);
    let a = get(Some("scrape-me")).await;
    assert_eq!(a.status, 200);
    assert!(String::from_utf8_lossy(&a.body).contains("latch_requests_in_flight"));
}

#[tokio::test]
async fn also_dashboard_sessions_survive_a_restart() {
    let up = Upstream::start().await;
    let mut t = TestLatch::start(&up.url()).await;
    let req = http::Request::post(format!("http://{}/login", t.admin()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from("token=alice-token")))
        .unwrap();
    let a = send(req).await;
    assert_eq!(a.status, 303);
    let cookie = a
        .header("set-cookie")
        .split(';')
        .next()
        .unwrap()
        .to_string();
    t.restart().await;
    let req = http::Request::get(format!("http://{}/api/v1/session", t.admin()))
        .header("cookie", &cookie)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let a = send(req).await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(a.json()["principal"], "alice");
    // The cookie itself is not in the database, only its digest.
    let db = rusqlite::Connection::open(t.dir.path().join("latch.db")).unwrap();
    let id = cookie.split_once('=').unwrap().1;
    let n: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM sessions WHERE id_sha256 = ?1",
            [id],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 0);
}
