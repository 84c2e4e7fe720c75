//! `latch approvals …` against a real running Latch.

mod common;

use std::process::Output;

use bytes::Bytes;
use http_body_util::Full;

use common::*;

async fn latch_cli(admin: std::net::SocketAddr, token: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_latch"));
    cmd.arg("approvals")
        .args(args)
        .env("LATCH_ADMIN_URL", format!("http://{admin}"));
    match token {
        Some(t) => cmd.env("LATCH_TOKEN", t),
        None => cmd.env_remove("LATCH_TOKEN"),
    };
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

async fn gated(latch: &TestLatch, body: &str) -> String {
    let req = agent_request("POST", latch.proxy(), "/tools/echo/send")
        .header("content-type", "application/json")
        .header("prefer", "respond-async")
        .header("latch-reason", "customer asked")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    send(req).await.json()["approval_id"]
        .as_str()
        .unwrap()
        .to_string()
}

const LEAD: &str = r#""approval": {"require": [{"role": "lead", "count": 1}]}"#;

#[tokio::test]
async fn operators_script_every_decision() {
    let up = Upstream::start().await;
    let latch = TestLatch::start(&up.url()).await;
    let adm = latch.admin();
    let first = gated(&latch, &format!(r#"{{"gate": true, "to": "a@x", {LEAD}}}"#)).await;
    let second = gated(&latch, &format!(r#"{{"gate": true, "to": "b@x", {LEAD}}}"#)).await;

    let list = latch_cli(adm, Some("alice-token"), &["list", "--status", "pending"]).await;
    assert!(list.status.success(), "{}", err(&list));
    let table = out(&list);
    assert!(table.starts_with("ID"), "{table}");
    assert!(table.contains(&first) && table.contains(&second), "{table}");
    assert!(table.contains("- / 1×lead"), "{table}");

    let json = latch_cli(adm, Some("alice-token"), &["list", "--json"]).await;
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["approvals"].as_array().unwrap().len(), 2);

    let show = latch_cli(adm, Some("alice-token"), &["show", &first]).await;
    assert!(
        out(&show).contains("agent says: customer asked"),
        "{}",
        out(&show)
    );
    assert!(out(&show).contains("\"to\": \"a@x\""), "{}", out(&show));

    let approve = latch_cli(
        adm,
        Some("alice-token"),
        &["approve", &first, "--comment", "fine"],
    )
    .await;
    assert!(approve.status.success(), "{}", err(&approve));
    assert!(
        out(&approve).contains("is now approved"),
        "{}",
        out(&approve)
    );
    wait_state(adm, &first, "executed").await;
    let again = latch_cli(adm, Some("alice-token"), &["approve", &first]).await;
    assert_eq!(again.status.code(), Some(1));
    assert!(
        err(&again).contains("409 closed: approval is already executed"),
        "{}",
        err(&again)
    );

    let no_reason = latch_cli(adm, Some("alice-token"), &["reject", &second]).await;
    assert_eq!(no_reason.status.code(), Some(1));
    assert!(err(&no_reason).contains("reject needs --reason"));
    let owner = latch_cli(
        adm,
        Some("carol-token"),
        &["reject", &second, "--reason", "x"],
    )
    .await;
    assert!(err(&owner).contains("403 forbidden"), "{}", err(&owner));

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("body.json");
    std::fs::write(&file, r#"{"to": "c@x"}"#).unwrap();
    let modify = latch_cli(
        adm,
        Some("alice-token"),
        &[
            "modify",
            &second,
            "--body",
            file.to_str().unwrap(),
            "--json",
        ],
    )
    .await;
    assert!(modify.status.success(), "{}", err(&modify));
    let v: serde_json::Value = serde_json::from_slice(&modify.stdout).unwrap();
    assert_eq!(v["body"], serde_json::json!({"to": "c@x"}));
    wait_state(adm, &second, "executed").await;
    assert_eq!(
        up.requests().last().unwrap().body.as_ref(),
        br#"{"to":"c@x"}"#
    );

    let third = gated(&latch, r#"{"gate": true}"#).await;
    let refused = latch_cli(
        adm,
        Some("alice-token"),
        &["override", &third, "--reason", "urgent"],
    )
    .await;
    assert!(err(&refused).contains("403"), "{}", err(&refused));
    let over = latch_cli(
        adm,
        Some("olga-token"),
        &["override", &third, "--reason", "urgent"],
    )
    .await;
    assert!(over.status.success(), "{}", err(&over));

    let anonymous = latch_cli(adm, None, &["list"]).await;
    assert_eq!(anonymous.status.code(), Some(1));
    assert!(err(&anonymous).contains("LATCH_TOKEN"));
    let bad_token = latch_cli(adm, Some("nope"), &["list"]).await;
    assert!(
        err(&bad_token).contains("401 unauthenticated"),
        "{}",
        err(&bad_token)
    );
}

/// The break-glass review lists every override with what it released and
/// flags a principal who keeps breaking the glass.
#[tokio::test]
async fn audit_report_reviews_break_glass_use() {
    let up = Upstream::start().await;
    let latch = TestLatch::start(&up.url()).await;
    for to in ["a@x", "b@x"] {
        let id = gated(
            &latch,
            &format!(r#"{{"gate": true, "to": "{to}", {LEAD}}}"#),
        )
        .await;
        let path = format!("/api/v1/approvals/{id}/override");
        let r = admin(
            latch.admin(),
            "POST",
            &path,
            "olga-token",
            r#"{"reason": "outage"}"#,
        )
        .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        wait_state(latch.admin(), &id, "executed").await;
    }
    let run = |args: &[&str]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_latch"));
        cmd.args(["audit", "report"])
            .args(args)
            .arg("--config")
            .arg(latch.config_path())
            .env("BOT_TOKEN", AGENT_TOKEN)
            .env("UPSTREAM_KEY", "x");
        cmd.output().unwrap()
    };
    let o = run(&["--since", "1d"]);
    let text = out(&o);
    assert!(o.status.success(), "{text}{}", err(&o));
    assert!(
        text.contains("break-glass overrides since 1d (2)"),
        "{text}"
    );
    assert!(text.contains("olga overrode"), "{text}");
    assert!(
        text.contains(
            "(echo POST /tools/echo/send by agent bot, risk high): \"outage\" → executed"
        ),
        "{text}"
    );
    assert!(text.contains("! olga broke the glass 2 times"), "{text}");
    let json: serde_json::Value =
        serde_json::from_slice(&run(&["--min", "3", "--json"]).stdout).unwrap();
    assert_eq!(json["repeat_users"], serde_json::json!([]));
    assert_eq!(json["overrides"][1]["outcome"]["status"], 200);
    let bad = run(&["--since", "soon"]);
    assert!(!bad.status.success());
    assert!(
        err(&bad).contains("--since must be a window"),
        "{}",
        err(&bad)
    );
}
