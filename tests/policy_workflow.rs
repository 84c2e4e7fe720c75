//! The security team's loop on a running Latch: hot reload (file watcher
//! and API), refusal of broken or failing policies, shadow mode.

mod common;

use std::time::Duration;

use serde_json::json;

use common::*;

const ALLOW_ALL: &str = "package latch\nimport rego.v1\ndecision := {\"action\": \"allow\"}\n";
const DENY_ALL: &str =
    "package latch\nimport rego.v1\ndecision := {\"action\": \"deny\", \"code\": \"v2\", \"reasons\": [\"policy v2\"]}\n";

async fn ready(latch: &TestLatch) -> serde_json::Value {
    call("GET", latch.admin(), "/readyz", "").await.json()
}

#[tokio::test]
async fn editing_a_policy_file_changes_decisions_without_restart() {
    let up = Upstream::start().await;
    let latch = TestLatch::start_with(&up.url(), "", ALLOW_ALL).await;
    assert_eq!(
        call("GET", latch.proxy(), "/tools/echo/x", "").await.status,
        200
    );
    let before = ready(&latch).await["policy"]["hash"].clone();

    std::fs::write(latch.policy_dir().join("policies/test.rego"), DENY_ALL).unwrap();
    let mut denied = false;
    for _ in 0..100 {
        let a = call("GET", latch.proxy(), "/tools/echo/x", "").await;
        if a.status == 403 {
            assert_eq!(a.json()["code"], "v2");
            denied = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(denied, "the edited policy never took effect");
    let r = ready(&latch).await;
    assert_ne!(r["policy"]["hash"], before);
    assert_eq!(r["policy"]["last_reload_error"], json!(null));

    // Decisions carry the hash of the policy set that made them.
    let audit = admin(latch.admin(), "GET", "/api/v1/audit", "alice-token", "")
        .await
        .json();
    let last = audit["records"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["details"]["policy"], r["policy"]["hash"]);
}

#[tokio::test]
async fn a_broken_edit_leaves_the_old_policy_deciding_and_is_reported() {
    let up = Upstream::start().await;
    let latch = TestLatch::start_with(&up.url(), "", ALLOW_ALL).await;
    let hash = ready(&latch).await["policy"]["hash"].clone();
    std::fs::write(
        latch.policy_dir().join("policies/test.rego"),
        "package latch\ndecision := {\n",
    )
    .unwrap();
    let mut reported = None;
    for _ in 0..100 {
        let r = ready(&latch).await;
        if !r["policy"]["last_reload_error"].is_null() {
            reported = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = reported.expect("the broken edit was never reported");
    assert!(
        r["policy"]["last_reload_error"]
            .as_str()
            .unwrap()
            .contains("test.rego:"),
        "{r}"
    );
    assert_eq!(r["policy"]["hash"], hash);
    assert_eq!(
        call("GET", latch.proxy(), "/tools/echo/x", "").await.status,
        200
    );
    let m = call("GET", latch.admin(), "/metrics", "").await;
    assert!(
        String::from_utf8_lossy(&m.body).contains("latch_policy_reloads_total{result=\"error\"}")
    );
}

#[tokio::test]
async fn the_reload_api_refuses_a_policy_that_fails_its_own_tests() {
    let up = Upstream::start().await;
    let latch = TestLatch::start_with(&up.url(), "", ALLOW_ALL).await;
    let dir = latch.policy_dir().join("policies");
    std::fs::write(dir.join("test.rego"), DENY_ALL).unwrap();
    std::fs::write(
        dir.join("test.cases.json"),
        r#"{"cases": [{"name": "searches stay allowed", "input": {}, "expect": {"action": "allow"}}]}"#,
    )
    .unwrap();
    let r = admin(
        latch.admin(),
        "POST",
        "/api/v1/policy/reload",
        "alice-token",
        "",
    )
    .await;
    assert_eq!(r.status, 422);
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap()
            .contains("searches stay allowed"),
        "{:?}",
        r.json()
    );
    assert_eq!(
        call("GET", latch.proxy(), "/tools/echo/x", "").await.status,
        200
    );

    std::fs::write(
        dir.join("test.cases.json"),
        r#"{"cases": [{"name": "everything is denied", "input": {}, "expect": {"action": "deny"}}]}"#,
    )
    .unwrap();
    let r = admin(
        latch.admin(),
        "POST",
        "/api/v1/policy/reload",
        "alice-token",
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        call("GET", latch.proxy(), "/tools/echo/x", "").await.status,
        403
    );
    assert_eq!(
        admin(
            latch.admin(),
            "POST",
            "/api/v1/policy/reload",
            AGENT_TOKEN,
            ""
        )
        .await
        .status,
        403
    );
}

#[tokio::test]
async fn shadow_mode_forwards_what_the_policy_would_hold_and_counts_it() {
    let up = Upstream::start().await;
    let latch = TestLatch::start(&up.url()).await;
    let a = call(
        "POST",
        latch.proxy(),
        "/tools/shadow/x",
        r#"{"gate": true}"#,
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("latch-shadow"), "gate");
    let a = call(
        "POST",
        latch.proxy(),
        "/tools/shadow/x",
        r#"{"block": true}"#,
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("latch-shadow"), "deny");
    assert_eq!(up.requests().len(), 2);

    let m = call("GET", latch.admin(), "/metrics", "").await;
    let text = String::from_utf8_lossy(&m.body);
    assert!(
        text.contains("latch_shadow_total{route=\"shadowed\",would=\"gate\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("latch_shadow_total{route=\"shadowed\",would=\"deny\"} 1"),
        "{text}"
    );
    let audit = admin(latch.admin(), "GET", "/api/v1/audit", "alice-token", "")
        .await
        .json();
    let first = &audit["records"][0]["details"];
    assert_eq!(first["shadow"], true);
    assert_eq!(first["action"], "gate");
    // The same call on an enforcing route is held.
    let held = send(
        agent_request("POST", latch.proxy(), "/tools/echo/x")
            .header("prefer", "respond-async")
            .body(http_body_util::Full::new(bytes::Bytes::from_static(
                br#"{"gate": true}"#,
            )))
            .unwrap(),
    )
    .await;
    assert_eq!(held.status, 202);
}
