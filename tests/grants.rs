//! Time-boxed grants end to end: a reviewer approves with a grant (through
//! the `latch` binary), later calls of the same class pass without a human
//! and are audited as granted, everything else is still gated, and revoking
//! or expiry restores the gate.

mod common;

use std::process::Output;

use bytes::Bytes;
use http_body_util::Full;
use latch::gate::Clock;
use serde_json::{json, Value};

use common::*;

const LEAD: &str = r#""approval": {"require": [{"role": "lead", "count": 1}]}"#;

/// A gated e-mail at medium risk (the test policy takes the risk from the
/// arguments; a different value keeps the argument shape).
fn email(to: &str, extra: &str) -> String {
    format!(
        r#"{{"gate": true, "to": "{to}", "subject": "refund", "risk": "medium"{extra}, {LEAD}}}"#
    )
}

async fn latch_cli(admin: std::net::SocketAddr, args: &[&str]) -> Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_latch"));
    cmd.args(args)
        .env("LATCH_ADMIN_URL", format!("http://{admin}"))
        .env("LATCH_TOKEN", "alice-token");
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

fn stdout(o: &Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A call as agent `token`, answered at once (202 if gated).
async fn as_agent(latch: &TestLatch, token: &str, body: &str) -> Answer {
    to_path(latch, token, "/tools/echo/send", body).await
}

async fn to_path(latch: &TestLatch, token: &str, path: &str, body: &str) -> Answer {
    let req = http::Request::post(format!("http://{}{path}", latch.proxy()))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .header("prefer", "respond-async")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    send(req).await
}

/// `POST …/approve` on approval `id` as `token` with `body`.
async fn approve(latch: &TestLatch, id: &str, token: &str, body: &str) -> Answer {
    let path = format!("/api/v1/approvals/{id}/approve");
    admin(latch.admin(), "POST", &path, token, body).await
}

/// Assert that `/metrics` has every line of `lines`.
async fn metrics_have(latch: &TestLatch, lines: &[&str]) {
    let metrics = admin(latch.admin(), "GET", "/metrics", "alice-token", "").await;
    let text = String::from_utf8_lossy(&metrics.body);
    for line in lines {
        assert!(text.contains(line), "{line}: {text}");
    }
}

async fn decision_record(latch: &TestLatch, request_id: &str) -> Value {
    let path = format!("/api/v1/audit?subject={request_id}");
    let audit = admin(latch.admin(), "GET", &path, "alice-token", "").await;
    audit.json()["records"][0].clone()
}

#[tokio::test]
async fn a_grant_lets_the_same_class_through_until_it_is_revoked() {
    let up = Upstream::start().await;
    let mut latch = TestLatch::start(&up.url()).await;
    let adm = latch.admin();

    // The first call is held; alice approves it with a grant narrowed to
    // the recipient, from the command line.
    let first = as_agent(&latch, AGENT_TOKEN, &email("bob@example.com", "")).await;
    assert_eq!(first.status, 202, "{:?}", first.body);
    let id = first.json()["approval_id"].as_str().unwrap().to_string();
    let approved = latch_cli(
        adm,
        &[
            "approvals",
            "approve",
            &id,
            "--grant-s",
            "3600",
            "--grant-args",
            "to",
            "--json",
        ],
    )
    .await;
    let a: Value = serde_json::from_str(&stdout(&approved)).unwrap();
    let grant_id = a["grant_id"].as_str().expect("a grant id").to_string();
    wait_state(adm, &id, "executed").await;
    assert_eq!(up.requests().len(), 1);

    // The same class (same agent, shape, recipient): allowed without a human.
    let again = as_agent(&latch, AGENT_TOKEN, &email("bob@example.com", "")).await;
    assert_eq!(again.status, 200, "{:?}", again.body);
    assert_eq!(again.header("latch-grant"), grant_id);
    assert_eq!(up.requests().len(), 2, "the granted call reached the tool");
    let sent: Value = serde_json::from_slice(&up.requests()[1].body).unwrap();
    assert_eq!(sent["to"], "bob@example.com");
    let record = decision_record(&latch, again.header("latch-request-id")).await;
    assert_eq!(record["event"], "decision");
    assert_eq!(
        (&record["details"]["action"], &record["details"]["code"]),
        (&json!("allow"), &json!("granted"))
    );
    assert_eq!(record["details"]["grant"], grant_id.as_str());
    assert_eq!(record["details"]["granted_by"], json!(["alice"]));

    // Anything else is still gated (or denied): another recipient, another
    // argument shape, another agent, a higher risk; a deny stays a deny.
    for (token, body) in [
        (AGENT_TOKEN, email("eve@example.com", "")),
        (
            AGENT_TOKEN,
            email("bob@example.com", r#", "bcc": "eve@example.com""#),
        ),
        ("bot2-token", email("bob@example.com", "")),
        (
            AGENT_TOKEN,
            email("bob@example.com", "").replace("medium", "high"),
        ),
    ] {
        let r = as_agent(&latch, token, &body).await;
        assert_eq!(r.status, 202, "{body}: {:?}", r.body);
    }
    let elsewhere = to_path(
        &latch,
        AGENT_TOKEN,
        "/tools/echo/delete",
        &email("bob@example.com", ""),
    )
    .await;
    assert_eq!(elsewhere.status, 202, "another path: {:?}", elsewhere.body);
    let blocked = as_agent(
        &latch,
        AGENT_TOKEN,
        &email("bob@example.com", "").replace(r#""gate": true"#, r#""gate": true, "block": true"#),
    )
    .await;
    assert_eq!(blocked.status, 403, "{:?}", blocked.body);
    assert_eq!(up.requests().len(), 2);

    // The grant is listed, survives a restart, and revoking restores the gate.
    let list = latch_cli(adm, &["grants", "list"]).await;
    let table = stdout(&list);
    assert!(
        table.contains(&grant_id) && table.contains("live"),
        "{table}"
    );
    metrics_have(
        &latch,
        &[
            "latch_grant_events_total{event=\"created\"} 1",
            "latch_grant_events_total{event=\"used\"} 1",
            "latch_grants_active 1",
            "latch_reviewer_decision_seconds_count{principal=\"alice\",risk=\"medium\"} 1",
        ],
    )
    .await;
    latch.restart().await;
    let adm = latch.admin();
    let after_restart = as_agent(&latch, AGENT_TOKEN, &email("bob@example.com", "")).await;
    assert_eq!(after_restart.status, 200, "{:?}", after_restart.body);

    let revoked = latch_cli(adm, &["grants", "revoke", &grant_id, "--reason", "enough"]).await;
    assert!(stdout(&revoked).contains("revoked"), "{}", stdout(&revoked));
    let gated = as_agent(&latch, AGENT_TOKEN, &email("bob@example.com", "")).await;
    assert_eq!(gated.status, 202, "{:?}", gated.body);
    let again = admin(
        adm,
        "DELETE",
        &format!("/api/v1/grants/{grant_id}"),
        "alice-token",
        "",
    )
    .await;
    assert_eq!(again.status, 409, "{:?}", again.body);
    let all = admin(adm, "GET", "/api/v1/grants?status=all", "alice-token", "").await;
    assert_eq!(all.json()["grants"][0]["status"], "revoked");
    assert_eq!(all.json()["grants"][0]["revoked"]["by"], "alice");
    let live = admin(adm, "GET", "/api/v1/grants", "alice-token", "").await;
    assert_eq!(live.json()["grants"], json!([]));
    let audit = admin(
        adm,
        "GET",
        &format!("/api/v1/audit?subject={grant_id}"),
        "alice-token",
        "",
    )
    .await;
    let records = audit.json()["records"].clone();
    let events: Vec<&str> = records
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["event"].as_str().unwrap())
        .collect();
    assert_eq!(events, ["grant", "grant_revoke"]);

    // The automation report counts the granted calls.
    let report = admin(adm, "GET", "/api/v1/insights?days=1", "alice-token", "").await;
    assert_eq!(report.status, 200, "{:?}", report.body);
    let echo = &report.json()["automation"]["tools"]["echo"];
    assert_eq!(echo["granted"], 2, "{echo}");
    assert_eq!(echo["denied"], 1, "{echo}");
    assert_eq!(echo["gated"], 7, "{echo}");
    // Counters start again at a restart: one use since.
    metrics_have(
        &latch,
        &[
            "latch_grant_events_total{event=\"revoked\"} 1",
            "latch_grant_events_total{event=\"used\"} 1",
            "latch_grants_active 0",
        ],
    )
    .await;
}

#[tokio::test]
async fn bad_grants_get_clear_errors_and_change_nothing() {
    let up = Upstream::start().await;
    let latch = TestLatch::start_with(&up.url(), "", TEST_POLICY).await;
    let adm = latch.admin();
    let first = as_agent(&latch, AGENT_TOKEN, &email("bob@example.com", "")).await;
    let id = first.json()["approval_id"].as_str().unwrap().to_string();
    for (token, body, status, says) in [
        (
            "alice-token",
            r#"{"grant": {"ttl_s": 28801}}"#,
            400,
            "max_grant_s",
        ),
        (
            "alice-token",
            r#"{"grant": {"ttl_s": "1h"}}"#,
            400,
            "whole number",
        ),
        (
            "alice-token",
            r#"{"grant": 3600}"#,
            400,
            "must be an object",
        ),
        (
            "alice-token",
            r#"{"grant": {"ttl_s": 60, "until": 5}}"#,
            400,
            "grant.until",
        ),
        (
            "alice-token",
            r#"{"grant": {"ttl_s": 60, "class_args": ["bcc"]}}"#,
            400,
            "no argument `bcc`",
        ),
        (
            "carol-token",
            r#"{"grant": {"ttl_s": 60}}"#,
            403,
            "owns agent bot",
        ),
        (
            "dave-token",
            r#"{"grant": {"ttl_s": 60}}"#,
            403,
            "none of the roles",
        ),
    ] {
        let r = approve(&latch, &id, token, body).await;
        assert_eq!(r.status, status, "{body}: {:?}", r.body);
        assert!(
            r.json()["message"].as_str().unwrap().contains(says),
            "{body}: {:?}",
            r.body
        );
    }
    let still = admin(
        adm,
        "GET",
        &format!("/api/v1/approvals/{id}"),
        "alice-token",
        "",
    )
    .await;
    assert_eq!(still.json()["state"], "pending", "nothing changed");
    assert_eq!(still.json()["votes"], json!([]));

    // A grant only comes with an approve; a closed approval grants nothing.
    let modify = format!("/api/v1/approvals/{id}/modify");
    let body = r#"{"body": {"gate": true, "to": "x"}, "grant": {"ttl_s": 60}}"#;
    assert_eq!(
        admin(adm, "POST", &modify, "alice-token", body)
            .await
            .status,
        400
    );
    let reject = format!("/api/v1/approvals/{id}/reject");
    let r = admin(adm, "POST", &reject, "alice-token", r#"{"reason": "no"}"#).await;
    assert_eq!(r.status, 200);
    let late = approve(&latch, &id, "alice-token", r#"{"grant": {"ttl_s": 60}}"#).await;
    assert_eq!(late.status, 409, "{:?}", late.body);

    for (method, path, token, status) in [
        ("DELETE", "/api/v1/grants/grant-nope", "alice-token", 404),
        ("GET", "/api/v1/grants/grant-nope", "alice-token", 404),
        ("DELETE", "/api/v1/grants/grant-nope", AGENT_TOKEN, 403),
        ("GET", "/api/v1/grants?status=maybe", "alice-token", 400),
        ("GET", "/api/v1/insights?days=0", "alice-token", 400),
    ] {
        let r = admin(adm, method, path, token, "").await;
        assert_eq!(r.status, status, "{method} {path}: {:?}", r.body);
    }
    let all = admin(adm, "GET", "/api/v1/grants?status=all", "alice-token", "").await;
    assert_eq!(all.json()["grants"], json!([]));
}

/// A policy-level opt-out: `grantable: false` means every call needs its
/// own approval; and a grant requires every approver of a quorum.
#[tokio::test]
async fn grants_follow_the_policy_and_the_quorum() {
    let up = Upstream::start().await;
    let latch = TestLatch::start(&up.url()).await;
    let adm = latch.admin();
    let closed = r#"{"gate": true, "approval": {"require": [{"role": "lead", "count": 1}], "grantable": false}}"#;
    let id = as_agent(&latch, AGENT_TOKEN, closed).await.json()["approval_id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = approve(&latch, &id, "alice-token", r#"{"grant": {"ttl_s": 60}}"#).await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .contains("not grantable"));

    // The default quorum is a lead and a director: only alice grants.
    let quorum = r#"{"gate": true, "to": "q@example.com"}"#;
    let id = as_agent(&latch, AGENT_TOKEN, quorum).await.json()["approval_id"]
        .as_str()
        .unwrap()
        .to_string();
    for (token, body) in [
        ("alice-token", r#"{"grant": {"ttl_s": 600}}"#),
        ("dave-token", "{}"),
    ] {
        assert_eq!(approve(&latch, &id, token, body).await.status, 200);
    }
    let done = wait_state(adm, &id, "executed").await;
    assert_eq!(done["grant_id"], Value::Null, "dave did not grant");
    let next = as_agent(&latch, AGENT_TOKEN, quorum).await;
    assert_eq!(next.status, 202, "{:?}", next.body);
}

/// Expiry restores the gate: on a manual clock, a grant allows until its
/// last millisecond and never after.
#[tokio::test]
async fn an_expired_grant_allows_nothing() {
    let up = Upstream::start().await;
    let now = chrono::Utc::now().timestamp_millis();
    let clock = Clock::manual(now);
    let latch = InProcess::new(&config_text(&up.url(), ""), TEST_POLICY, clock.clone());
    let body = email("bob@example.com", "");
    let req = |body: &str| {
        http::Request::post("http://latch/tools/echo/send")
            .header("authorization", format!("Bearer {AGENT_TOKEN}"))
            .header("content-type", "application/json")
            .header("prefer", "respond-async")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap()
    };
    let first = latch.proxy(req(&body)).await;
    let id = first.json()["approval_id"].as_str().unwrap().to_string();
    let path = format!("/api/v1/approvals/{id}/approve");
    let r = latch
        .admin("POST", &path, "alice-token", r#"{"grant": {"ttl_s": 600}}"#)
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);

    clock.advance(599_999);
    assert_eq!(
        latch.proxy(req(&body)).await.status,
        200,
        "one millisecond left"
    );
    clock.advance(1);
    let expired = latch.proxy(req(&body)).await;
    assert_eq!(expired.status, 202, "{:?}", expired.body);
    latch.handles.gate.expire_due().await;
    let grants = latch
        .admin("GET", "/api/v1/grants?status=all", "alice-token", "")
        .await;
    assert_eq!(grants.json()["grants"][0]["status"], "expired");
    let revoke = format!("/api/v1/grants/grant-{id}");
    let r = latch.admin("DELETE", &revoke, "alice-token", "").await;
    assert_eq!(r.status, 409, "an expired grant is closed: {:?}", r.body);
}

/// The policy sees live grants in `input.grants` and may deny on its own
/// terms; a deny is never turned into an allow by a grant.
#[tokio::test]
async fn the_policy_sees_grants_and_its_deny_wins() {
    const POLICY: &str = r#"package latch
import rego.v1

decision := {"action": "deny", "code": "inspected", "reasons": [json.marshal(input.grants)]} if {
    input.action.args.mode == "inspect"
} else := {"action": "gate", "risk": "medium", "code": "held",
           "approval": {"require": [{"role": "lead", "count": 1}]}}
"#;
    let up = Upstream::start().await;
    let latch = TestLatch::start_with(&up.url(), "", POLICY).await;
    let adm = latch.admin();
    let inspect = as_agent(&latch, AGENT_TOKEN, r#"{"mode": "inspect"}"#).await;
    assert_eq!(inspect.json()["reasons"][0], "[]", "no grant yet");

    let first = as_agent(&latch, AGENT_TOKEN, r#"{"mode": "go"}"#).await;
    let id = first.json()["approval_id"].as_str().unwrap().to_string();
    let r = approve(&latch, &id, "alice-token", r#"{"grant": {"ttl_s": 300}}"#).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    wait_state(adm, &id, "executed").await;

    // Same shape (mode: string), so the grant covers it — but the policy denies.
    let inspect = as_agent(&latch, AGENT_TOKEN, r#"{"mode": "inspect"}"#).await;
    assert_eq!(inspect.status, 403, "{:?}", inspect.body);
    let seen: Value = serde_json::from_str(inspect.json()["reasons"][0].as_str().unwrap()).unwrap();
    assert_eq!(seen[0]["id"], format!("grant-{id}"));
    assert_eq!(
        (&seen[0]["risk"], &seen[0]["granted_by"]),
        (&json!("medium"), &json!(["alice"]))
    );
    let go = as_agent(&latch, AGENT_TOKEN, r#"{"mode": "go"}"#).await;
    assert_eq!(go.status, 200, "the gate is granted: {:?}", go.body);
    assert_eq!(
        up.requests().len(),
        2,
        "the approved call and the granted one"
    );
}
