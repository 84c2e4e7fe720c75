//! Held calls end to end: a real upstream, Latch on 127.0.0.1:0, agents on
//! the proxy listener and reviewers on the admin API.

mod common;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use serde_json::{json, Value};

use common::*;

const LEAD_ONLY: &str = r#"{"require": [{"role": "lead", "count": 1}]}"#;

fn gated_body(approval: &str, extra: &str) -> String {
    format!(r#"{{"gate": true, "to": "bob@example.com", "approval": {approval}{extra}}}"#)
}

async fn gated_async(addr: std::net::SocketAddr, body: &str, key: Option<&str>) -> Answer {
    let mut req = agent_request("POST", addr, "/tools/echo/send?x=1")
        .header("content-type", "application/json")
        .header("prefer", "respond-async")
        .header("latch-reason", "the customer asked for it");
    if let Some(k) = key {
        req = req.header("idempotency-key", k);
    }
    send(req.body(Full::new(Bytes::from(body.to_string()))).unwrap()).await
}

fn audit_events(records: &Value) -> Vec<String> {
    records["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["event"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn a_held_call_is_released_by_approval_with_the_upstream_answer() {
    let up = Upstream::start().await;
    let latch = TestLatch::start(&up.url()).await;
    let proxy = latch.proxy();
    let body = gated_body(LEAD_ONLY, "");
    let agent = tokio::spawn(async move { call("POST", proxy, "/tools/echo/send", &body).await });

    let id = wait_pending(latch.admin()).await;
    assert!(up.requests().is_empty(), "nothing is sent before approval");
    let pending = admin(
        latch.admin(),
        "GET",
        &format!("/api/v1/approvals/{id}"),
        "dave-token",
        "",
    )
    .await;
    let p = pending.json();
    assert_eq!(p["agent"], "bot");
    assert_eq!(p["body"]["to"], "bob@example.com");
    assert_eq!(p["required"], json!([{"role": "lead", "count": 1}]));

    let ok = admin(
        latch.admin(),
        "POST",
        &format!("/api/v1/approvals/{id}/approve"),
        "alice-token",
        r#"{"comment": "fine"}"#,
    )
    .await;
    assert_eq!(ok.status, 200, "{:?}", ok.body);

    let a = agent.await.unwrap();
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(a.header("latch-approval"), id);
    assert_eq!(a.json()["upstream"], "ok");
    let seen = up.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].headers["authorization"], "Bearer upstream-secret");
    assert_eq!(seen[0].uri, "/base/send");
    let sent: Value = serde_json::from_slice(&seen[0].body).unwrap();
    assert_eq!(sent["to"], "bob@example.com");

    let audit = admin(
        latch.admin(),
        "GET",
        &format!("/api/v1/audit?subject={id}"),
        "alice-token",
        "",
    )
    .await;
    assert_eq!(audit_events(&audit.json()), ["gate", "approve", "execute"]);
}

#[tokio::test]
async fn rejection_returns_the_reason_to_the_agent() {
    let up = Upstream::start().await;
    let latch = TestLatch::start(&up.url()).await;
    let proxy = latch.proxy();
    let body = gated_body(LEAD_ONLY, "");
    let agent = tokio::spawn(async move { call("POST", proxy, "/tools/echo/send", &body).await });
    let id = wait_pending(latch.admin()).await;

    let missing = admin(
        latch.admin(),
        "POST",
        &format!("/api/v1/approvals/{id}/reject"),
        "alice-token",
        "{}",
    )
    .await;
    assert_eq!(missing.status, 422);
    let r = admin(
        latch.admin(),
        "POST",
        &format!("/api/v1/approvals/{id}/reject"),
        "alice-token",
        r#"{"reason": "wrong customer", "code": "wrong_recipient"}"#,
    )
    .await;
    assert_eq!(r.status, 200);
    let a = agent.await.unwrap();
    assert_eq!(a.status, 403);
    assert_eq!(a.header("latch-decision"), "rejected");
    assert_eq!(
        a.json(),
        json!({"error": "rejected", "approval_id": id, "reason": "wrong customer", "code": "wrong_recipient"})
    );
    assert!(up.requests().is_empty());
    // A closed approval cannot be decided again.
    let again = admin(
        latch.admin(),
        "POST",
        &format!("/api/v1/approvals/{id}/approve"),
        "erin-token",
        "{}",
    )
    .await;
    assert_eq!(again.status, 409);
}

#[tokio::test]
async fn lead_and_director_quorum_needs_two_distinct_people() {
    let up = Upstream::start().await;
    let latch = TestLatch::start(&up.url()).await;
    let a = gated_async(latch.proxy(), r#"{"gate": true}"#, None).await;
    assert_eq!(a.status, 202);
    let id = a.json()["approval_id"].as_str().unwrap().to_string();
    let url = format!("/api/v1/approvals/{id}/approve");

    // erin holds both roles but counts once.
    assert_eq!(
        admin(latch.admin(), "POST", &url, "erin-token", "{}")
            .await
            .status,
        200
    );
    assert_eq!(
        wait_state(latch.admin(), &id, "pending").await["state"],
        "pending"
    );
    let twice = admin(latch.admin(), "POST", &url, "erin-token", "{}").await;
    assert_eq!(twice.status, 409);
    assert_eq!(twice.json()["error"], "already_voted");
    // olga has no role at this level.
    assert_eq!(
        admin(latch.admin(), "POST", &url, "olga-token", "{}")
            .await
            .status,
        403
    );
    assert!(up.requests().is_empty());

    assert_eq!(
        admin(latch.admin(), "POST", &url, "dave-token", "{}")
            .await
            .status,
        200
    );
    wait_state(latch.admin(), &id, "executed").await;
    assert_eq!(up.requests().len(), 1);
}

#[tokio::test]
async fn self_approval_owners_and_agents_are_refused() {
    let up = Upstream::start().await;
    let latch = TestLatch::start(&up.url()).await;
    let a = gated_async(latch.proxy(), &gated_body(LEAD_ONLY, ""), None).await;
    let id = a.json()["approval_id"].as_str().unwrap().to_string();
    let url = format!("/api/v1/approvals/{id}/approve");

    let agent = admin(latch.admin(), "POST", &url, AGENT_TOKEN, "{}").await;
    assert_eq!(agent.status, 403);
    let owner = admin(latch.admin(), "POST", &url, "carol-token", "{}").await;
    assert_eq!(owner.status, 403);
    assert!(owner.json()["message"]
        .as_str()
        .unwrap()
        .contains("owns agent bot"));
    let nobody = admin(latch.admin(), "POST", &url, "wrong-token", "{}").await;
    assert_eq!(nobody.status, 401);
    assert_eq!(
        wait_state(latch.admin(), &id, "pending").await["votes"],
        json!([])
    );
    assert!(up.requests().is_empty());
}

#[tokio::test]
async fn modify_sends_the_modified_body_and_the_audit_holds_the_patch() {
    let up = Upstream::start().await;
    let latch = TestLatch::start(&up.url()).await;
    let a = gated_async(
        latch.proxy(),
        &gated_body(LEAD_ONLY, r#", "subject": "refund""#),
        None,
    )
    .await;
    let id = a.json()["approval_id"].as_str().unwrap().to_string();
    let url = format!("/api/v1/approvals/{id}/modify");

    let bad = admin(latch.admin(), "POST", &url, "alice-token", "{not json").await;
    assert_eq!(bad.status, 422);
    let no_body = admin(
        latch.admin(),
        "POST",
        &url,
        "alice-token",
        r#"{"comment": "x"}"#,
    )
    .await;
    assert_eq!(no_body.status, 422);

    let new_body = json!({"to": "carol@example.com", "subject": "refund"});
    let m = admin(
        latch.admin(),
        "POST",
        &url,
        "alice-token",
        &json!({"body": new_body, "comment": "right person"}).to_string(),
    )
    .await;
    assert_eq!(m.status, 200, "{:?}", m.body);
    wait_state(latch.admin(), &id, "executed").await;

    let seen = up.requests();
    assert_eq!(seen.len(), 1);
    let sent: Value = serde_json::from_slice(&seen[0].body).unwrap();
    assert_eq!(sent, new_body);
    assert_eq!(seen[0].headers["content-type"], "application/json");

    let audit = admin(
        latch.admin(),
        "GET",
        &format!("/api/v1/audit?subject={id}"),
        "alice-token",
        "",
    )
    .await
    .json();
    assert_eq!(audit_events(&audit), ["gate", "modify", "execute"]);
    let modify = &audit["records"][1];
    assert_eq!(modify["actor"], "alice");
    let patch = modify["details"]["patch"].as_array().unwrap();
    assert!(
        patch.contains(&json!({"op": "replace", "path": "/to", "value": "carol@example.com"})),
        "{patch:?}"
    );
    assert!(
        patch.contains(&json!({"op": "remove", "path": "/gate"})),
        "{patch:?}"
    );

    let result = call(
        "GET",
        latch.proxy(),
        &format!("/latch/v1/approvals/{id}/result"),
        "",
    )
    .await;
    assert_eq!(result.status, 200);
    assert_eq!(result.json()["upstream"], "ok");
}

#[tokio::test]
async fn a_modify_voids_earlier_approvals() {
    let up = Upstream::start().await;
    let latch = TestLatch::start(&up.url()).await;
    let a = gated_async(latch.proxy(), r#"{"gate": true, "amount": 5}"#, None).await;
    let id = a.json()["approval_id"].as_str().unwrap().to_string();
    let approve = format!("/api/v1/approvals/{id}/approve");
    assert_eq!(
        admin(latch.admin(), "POST", &approve, "dave-token", "{}")
            .await
            .status,
        200
    );
    // alice's modify counts as her lead approval of the new body, but dave's
    // director approval was for other bytes.
    let m = admin(
        latch.admin(),
        "POST",
        &format!("/api/v1/approvals/{id}/modify"),
        "alice-token",
        r#"{"body": {"amount": 4}}"#,
    )
    .await;
    assert_eq!(m.status, 200);
    assert_eq!(m.json()["state"], "pending");
    assert_eq!(
        admin(latch.admin(), "POST", &approve, "dave-token", "{}")
            .await
            .status,
        200
    );
    wait_state(latch.admin(), &id, "executed").await;
    assert_eq!(up.requests()[0].body.as_ref(), br#"{"amount":4}"#);
}

#[tokio::test]
async fn timeout_denies_by_default() {
    let up = Upstream::start().await;
    let latch = TestLatch::start(&up.url()).await;
    let body = gated_body(
        r#"{"require": [{"role": "lead", "count": 1}], "timeout_s": 1}"#,
        "",
    );
    let a = call("POST", latch.proxy(), "/tools/echo/send", &body).await;
    assert_eq!(a.status, 403);
    assert_eq!(a.json()["error"], "expired");
    assert_eq!(a.header("latch-decision"), "expired");
    assert!(up.requests().is_empty());
}

#[tokio::test]
async fn timeout_escalates_to_the_next_level() {
    let up = Upstream::start().await;
    let latch = TestLatch::start(&up.url()).await;
    let approval = r#"{"require": [{"role": "lead", "count": 1}], "timeout_s": 1, "on_timeout": "escalate",
                       "escalate": [{"require": [{"role": "director", "count": 1}], "timeout_s": 60}]}"#;
    let a = gated_async(latch.proxy(), &gated_body(approval, ""), None).await;
    let id = a.json()["approval_id"].as_str().unwrap().to_string();
    for _ in 0..100 {
        let v = admin(
            latch.admin(),
            "GET",
            &format!("/api/v1/approvals/{id}"),
            "alice-token",
            "",
        )
        .await
        .json();
        if v["level"] == 1 {
            assert_eq!(v["required"], json!([{"role": "director", "count": 1}]));
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let url = format!("/api/v1/approvals/{id}/approve");
    assert_eq!(
        admin(latch.admin(), "POST", &url, "alice-token", "{}")
            .await
            .status,
        403,
        "a lead no longer suffices"
    );
    assert_eq!(
        admin(latch.admin(), "POST", &url, "dave-token", "{}")
            .await
            .status,
        200
    );
    wait_state(latch.admin(), &id, "executed").await;
    let audit = admin(
        latch.admin(),
        "GET",
        &format!("/api/v1/audit?subject={id}"),
        "alice-token",
        "",
    )
    .await
    .json();
    assert_eq!(
        audit_events(&audit),
        ["gate", "escalate", "approve", "execute"]
    );
}

#[tokio::test]
async fn veto_mode_executes_at_the_deadline_unless_rejected() {
    let up = Upstream::start().await;
    let latch = TestLatch::start(&up.url()).await;
    let body = gated_body(
        r#"{"require": [{"role": "lead", "count": 1}], "timeout_s": 1, "mode": "veto"}"#,
        "",
    );
    let a = call("POST", latch.proxy(), "/tools/echo/send", &body).await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(up.requests().len(), 1);

    let vetoed = gated_async(latch.proxy(), &body, None).await;
    let id = vetoed.json()["approval_id"].as_str().unwrap().to_string();
    let r = admin(
        latch.admin(),
        "POST",
        &format!("/api/v1/approvals/{id}/reject"),
        "alice-token",
        r#"{"reason": "no"}"#,
    )
    .await;
    assert_eq!(r.status, 200);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        wait_state(latch.admin(), &id, "rejected").await["state"],
        "rejected"
    );
    assert_eq!(up.requests().len(), 1);
}

#[tokio::test]
async fn async_202_poll_and_result() {
    let up = Upstream::start().await;
    let latch = TestLatch::start(&up.url()).await;
    let a = gated_async(latch.proxy(), &gated_body(LEAD_ONLY, ""), None).await;
    assert_eq!(a.status, 202);
    assert_eq!(a.header("latch-decision"), "gate");
    assert_eq!(a.header("retry-after"), "5");
    let id = a.json()["approval_id"].as_str().unwrap().to_string();
    let poll = format!("/latch/v1/approvals/{id}");
    assert_eq!(a.header("location"), poll);
    assert_eq!(
        a.json(),
        json!({"status": "pending", "approval_id": id, "poll": poll})
    );

    let p = call("GET", latch.proxy(), &poll, "").await;
    assert_eq!(p.status, 200);
    assert_eq!(p.json()["status"], "pending");
    let early = call("GET", latch.proxy(), &format!("{poll}/result"), "").await;
    assert_eq!(early.status, 409);
    // Another agent cannot see it.
    let other = send(
        http::Request::get(format!("http://{}{poll}", latch.proxy()))
            .header("authorization", "Bearer bot2-token")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(other.status, 404);

    admin(
        latch.admin(),
        "POST",
        &format!("/api/v1/approvals/{id}/approve"),
        "alice-token",
        "{}",
    )
    .await;
    wait_state(latch.admin(), &id, "executed").await;
    let p = call("GET", latch.proxy(), &poll, "").await.json();
    assert_eq!(p["status"], "executed");
    assert_eq!(p["result"], format!("{poll}/result"));
    let r = call("GET", latch.proxy(), &format!("{poll}/result"), "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["upstream"], "ok");
    assert_eq!(r.header("latch-approval"), id);
}

#[tokio::test]
async fn an_idempotent_retry_attaches_and_executes_once() {
    let up = Upstream::start().await;
    let latch = TestLatch::start(&up.url()).await;
    let body = gated_body(LEAD_ONLY, "");
    let first = gated_async(latch.proxy(), &body, Some("order-7")).await;
    let id = first.json()["approval_id"].as_str().unwrap().to_string();
    let again = gated_async(latch.proxy(), &body, Some("order-7")).await;
    assert_eq!(again.status, 202);
    assert_eq!(again.json()["approval_id"], id);
    let different = gated_async(
        latch.proxy(),
        &gated_body(LEAD_ONLY, r#", "cc": "x""#),
        Some("order-7"),
    )
    .await;
    assert_eq!(different.status, 422);
    assert_eq!(different.header("latch-error"), "idempotency_conflict");

    admin(
        latch.admin(),
        "POST",
        &format!("/api/v1/approvals/{id}/approve"),
        "alice-token",
        "{}",
    )
    .await;
    wait_state(latch.admin(), &id, "executed").await;
    // A synchronous retry with the key gets the stored answer, not a second call.
    let req = agent_request("POST", latch.proxy(), "/tools/echo/send?x=1")
        .header("content-type", "application/json")
        .header("idempotency-key", "order-7")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let retry = send(req).await;
    assert_eq!(retry.status, 200);
    assert_eq!(retry.header("latch-approval"), id);
    assert_eq!(up.requests().len(), 1);
}

#[tokio::test]
async fn a_disconnected_sync_caller_cancels_its_approval() {
    let up = Upstream::start().await;
    let latch = TestLatch::start(&up.url()).await;
    let proxy = latch.proxy();
    let body = gated_body(LEAD_ONLY, "");
    let agent = tokio::spawn(async move { call("POST", proxy, "/tools/echo/send", &body).await });
    let id = wait_pending(latch.admin()).await;
    agent.abort();
    let _ = agent.await;
    wait_state(latch.admin(), &id, "cancelled").await;
    let late = admin(
        latch.admin(),
        "POST",
        &format!("/api/v1/approvals/{id}/approve"),
        "alice-token",
        "{}",
    )
    .await;
    assert_eq!(late.status, 409);
    assert!(up.requests().is_empty());

    // With an idempotency key the caller can come back, so nothing is cancelled.
    let body = gated_body(LEAD_ONLY, r#", "n": 2"#);
    let agent = tokio::spawn(async move {
        let req = agent_request("POST", proxy, "/tools/echo/send")
            .header("content-type", "application/json")
            .header("idempotency-key", "k2")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        send(req).await
    });
    let mut keyed = String::new();
    for _ in 0..100 {
        let list = admin(
            latch.admin(),
            "GET",
            "/api/v1/approvals?status=pending",
            "alice-token",
            "",
        )
        .await
        .json();
        if let Some(a) = list["approvals"].as_array().unwrap().first() {
            keyed = a["id"].as_str().unwrap().to_string();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    agent.abort();
    let _ = agent.await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        wait_state(latch.admin(), &keyed, "pending").await["state"],
        "pending"
    );
}

#[tokio::test]
async fn break_glass_override_executes_and_is_flagged() {
    let up = Upstream::start().await;
    let latch = TestLatch::start(&up.url()).await;
    let a = gated_async(latch.proxy(), r#"{"gate": true}"#, None).await;
    let id = a.json()["approval_id"].as_str().unwrap().to_string();
    let url = format!("/api/v1/approvals/{id}/override");
    assert_eq!(
        admin(
            latch.admin(),
            "POST",
            &url,
            "alice-token",
            r#"{"reason": "x"}"#
        )
        .await
        .status,
        403
    );
    assert_eq!(
        admin(
            latch.admin(),
            "POST",
            &url,
            "olga-token",
            r#"{"reason": " "}"#
        )
        .await
        .status,
        422
    );
    let o = admin(
        latch.admin(),
        "POST",
        &url,
        "olga-token",
        r#"{"reason": "outage, customer waiting"}"#,
    )
    .await;
    assert_eq!(o.status, 200);
    wait_state(latch.admin(), &id, "executed").await;
    let audit = admin(
        latch.admin(),
        "GET",
        &format!("/api/v1/audit?subject={id}"),
        "alice-token",
        "",
    )
    .await
    .json();
    let over = &audit["records"][1];
    assert_eq!(over["event"], "override");
    assert_eq!(over["details"]["break_glass"], true);
    let m = call("GET", latch.admin(), "/metrics", "").await;
    let text = String::from_utf8_lossy(&m.body);
    assert!(text.contains("latch_break_glass_total 1"), "{text}");
    assert!(
        text.contains("latch_approval_outcomes_total{outcome=\"overridden\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("latch_approval_executions_total{result=\"ok\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn pending_approvals_and_deadlines_survive_a_restart() {
    let up = Upstream::start().await;
    let mut latch = TestLatch::start(&up.url()).await;
    let keep = gated_async(latch.proxy(), &gated_body(LEAD_ONLY, ""), Some("keep")).await;
    let keep = keep.json()["approval_id"].as_str().unwrap().to_string();
    let expiring = gated_async(
        latch.proxy(),
        &gated_body(
            r#"{"require": [{"role": "lead", "count": 1}], "timeout_s": 2}"#,
            "",
        ),
        None,
    )
    .await;
    let expiring = expiring.json()["approval_id"].as_str().unwrap().to_string();

    latch.restart().await;
    let m = call("GET", latch.admin(), "/metrics", "").await;
    assert!(String::from_utf8_lossy(&m.body).contains("latch_approvals_pending{risk=\"high\"} 2"));
    wait_state(latch.admin(), &expiring, "expired").await;
    admin(
        latch.admin(),
        "POST",
        &format!("/api/v1/approvals/{keep}/approve"),
        "alice-token",
        "{}",
    )
    .await;
    wait_state(latch.admin(), &keep, "executed").await;
    let r = call(
        "GET",
        latch.proxy(),
        &format!("/latch/v1/approvals/{keep}/result"),
        "",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(up.requests().len(), 1);
}

#[tokio::test]
async fn an_unwritable_audit_log_means_503_and_no_upstream_call() {
    let up = Upstream::start().await;
    let latch = TestLatch::start(&up.url()).await;
    // Make the audit table refuse writes from outside, as a full or broken disk would.
    match &latch.postgres {
        None => {
            let db = rusqlite::Connection::open(latch.policy_dir().join("latch.db")).unwrap();
            db.execute_batch("CREATE TRIGGER audit_refuses BEFORE INSERT ON audit BEGIN SELECT RAISE(ABORT, 'read-only'); END;")
                .unwrap();
        }
        Some(pg) => {
            // The sync client runs its own runtime: off this one's threads.
            let url = pg.url.clone();
            std::thread::spawn(move || {
                let mut db = postgres::Client::connect(&url, postgres::NoTls).unwrap();
                db.batch_execute(
                    "CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'read-only'; END $$ LANGUAGE plpgsql;
                     CREATE TRIGGER audit_refuses BEFORE INSERT ON audit FOR EACH ROW EXECUTE FUNCTION refuse();",
                )
                .unwrap();
            })
            .join()
            .unwrap();
        }
    }
    let a = call("POST", latch.proxy(), "/tools/echo/x", "{}").await;
    assert_eq!(a.status, 503);
    assert_eq!(a.header("latch-error"), "audit_unavailable");
    let g = gated_async(latch.proxy(), &gated_body(LEAD_ONLY, ""), None).await;
    assert_eq!(g.status, 503);
    assert_eq!(g.header("latch-error"), "store_unavailable");
    assert!(up.requests().is_empty());
    // Nothing half-written: the gated call was not stored either.
    let list = admin(latch.admin(), "GET", "/api/v1/approvals", "alice-token", "")
        .await
        .json();
    assert_eq!(list["approvals"], json!([]));
}
