//! Learning from approvals: `latch insights` proposes a class humans keep
//! approving, and the shipped policy stops gating it once the data is committed.

mod common;

use std::process::Command;

use bytes::Bytes;
use http_body_util::Full;

use common::*;

const EMAIL_ROUTE: &str = r#"
[[routes]]
name = "email"
prefix = "/tools/email"
upstream = "{upstream}"
tool = "send_email"
class_args = ["to"]
"#;

async fn email(latch: &TestLatch, to: &str, asynchronous: bool) -> Answer {
    let mut req = agent_request("POST", latch.proxy(), "/tools/email/send")
        .header("content-type", "application/json");
    if asynchronous {
        req = req.header("prefer", "respond-async");
    }
    let body = format!(r#"{{"to": "{to}", "subject": "weekly report"}}"#);
    send(req.body(Full::new(Bytes::from(body))).unwrap()).await
}

#[tokio::test]
async fn insights_propose_a_class_and_the_shipped_policy_honours_the_committed_data() {
    let up = Upstream::start().await;
    let latch =
        TestLatch::start_shipped(&up.url(), &EMAIL_ROUTE.replace("{upstream}", &up.url())).await;

    // E-mail is irreversible, so each one is held; a lead approves three times.
    for _ in 0..3 {
        let a = email(&latch, "bob@example.com", true).await;
        assert_eq!(a.status, 202, "{:?}", a.body);
        let id = a.json()["approval_id"].as_str().unwrap().to_string();
        let ok = admin(
            latch.admin(),
            "POST",
            &format!("/api/v1/approvals/{id}/approve"),
            "alice-token",
            "{}",
        )
        .await;
        assert_eq!(ok.status, 200);
        wait_state(latch.admin(), &id, "executed").await;
    }
    // Another recipient is another class (class_args = ["to"]); it was rejected once.
    let a = email(&latch, "mallory@example.com", true).await;
    let id = a.json()["approval_id"].as_str().unwrap().to_string();
    admin(
        latch.admin(),
        "POST",
        &format!("/api/v1/approvals/{id}/reject"),
        "alice-token",
        r#"{"reason": "unknown"}"#,
    )
    .await;

    let suggested = latch.policy_dir().join("learned.json.suggested");
    let out = Command::new(env!("CARGO_BIN_EXE_latch"))
        .args(["insights", "--min", "3", "--write"])
        .arg(&suggested)
        .arg("--config")
        .arg(latch.config_path())
        .env("BOT_TOKEN", AGENT_TOKEN)
        .env("UPSTREAM_KEY", "x")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("1 class(es) marked *"), "{stdout}");
    assert!(stdout.contains("automation over 30 days"), "{stdout}");
    assert!(
        stdout.contains("classes approved every time, fast"),
        "three approvals within milliseconds are a rubber stamp: {stdout}"
    );

    // The same report as JSON: four calls gated, three of them in a class
    // the learned data would stop gating; alice's decisions by risk.
    let json = Command::new(env!("CARGO_BIN_EXE_latch"))
        .args(["insights", "--min", "3", "--json", "--config"])
        .arg(latch.config_path())
        .env("BOT_TOKEN", AGENT_TOKEN)
        .env("UPSTREAM_KEY", "x")
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let mail = &report["automation"]["tools"]["send_email"];
    assert_eq!(
        (&mail["gated"], &mail["learnable"]),
        (&4.into(), &3.into()),
        "{mail}"
    );
    assert_eq!(mail["rate"], 0.0);
    assert_eq!(mail["projected_rate"], 0.75);
    let alice = &report["reviewers"][0];
    assert_eq!(alice["principal"], "alice");
    assert_eq!(alice["by_risk"]["medium"]["approved"], 3, "{alice}");
    assert_eq!(alice["by_risk"]["medium"]["rejected"], 1, "{alice}");
    assert_eq!(
        report["rubber_stamped_classes"].as_array().unwrap().len(),
        1
    );
    let data: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&suggested).unwrap()).unwrap();
    let auto = data["latch_learned"]["auto_approve"].as_object().unwrap();
    assert_eq!(auto.len(), 1);
    let (_, entry) = auto.iter().next().unwrap();
    assert_eq!(entry["tool"], "send_email");
    assert_eq!(entry["approved"], 3);

    // Nothing changes until a human commits the file into the policy directory.
    assert_eq!(email(&latch, "bob@example.com", true).await.status, 202);
    let learned = latch.policy_dir().join("policies/data");
    std::fs::create_dir_all(&learned).unwrap();
    std::fs::copy(&suggested, learned.join("learned.json")).unwrap();
    let r = admin(
        latch.admin(),
        "POST",
        "/api/v1/policy/reload",
        "alice-token",
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);

    let before = up.requests().len();
    let a = email(&latch, "bob@example.com", false).await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(a.header("latch-decision"), "allow");
    assert_eq!(up.requests().len(), before + 1);
    // The rejected class is still held.
    assert_eq!(email(&latch, "mallory@example.com", true).await.status, 202);

    // input.history carries the same statistics.
    let hist = latch.running.as_ref().unwrap().handles.history.get(
        &latch::history::ActionClass::from_parts(
            auto.keys().next().unwrap(),
            "bot",
            "send_email",
            "",
        )
        .unwrap(),
    );
    assert_eq!(hist.approved, 3, "{hist:?}");
    assert_eq!(hist.rejected, 0);
    assert_eq!(
        hist.seen, 4,
        "three approved executions and one learned allow"
    );
}
