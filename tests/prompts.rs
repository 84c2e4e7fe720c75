//! The prompt registry end to end, as the seed describes it: a product
//! manager pushes a prompt, support, safety and an engineer sign off its
//! promotion to production, an engineer's own change cannot be approved by
//! him, a failing version is refused, on-call rolls back, apps fetch and
//! render the live version — through the `latch` binary and real HTTP.

mod common;

use std::process::Output;

use bytes::Bytes;
use http_body_util::Full;
use serde_json::{json, Value};

use common::*;

const V1: &str = r#"---
variables = ["customer", "issue"]
message = "first draft"

[config]
model = "gpt-5"
temperature = 0.2

[[checks]]
name = "greets and stays short"
vars = { customer = "Ann", issue = "a late parcel" }
expect = { contains = ["Dear Ann"], max_chars = 400 }
---
Dear {{customer}},
thank you for telling us about {{issue}}.
We are on it.
"#;

async fn cli(latch: &TestLatch, token: &str, args: &[&str]) -> Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_latch"));
    cmd.args(args)
        .current_dir(latch.policy_dir())
        .env("LATCH_ADMIN_URL", format!("http://{}", latch.admin()))
        .env("LATCH_TOKEN", token)
        .env("BOT_TOKEN", AGENT_TOKEN)
        .env("UPSTREAM_KEY", "x");
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn write(latch: &TestLatch, file: &str, text: &str) -> String {
    let path = latch.policy_dir().join(file);
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

async fn fetch(latch: &TestLatch, path: &str, etag: Option<&str>) -> Answer {
    let mut req = agent_request("GET", latch.proxy(), path);
    if let Some(e) = etag {
        req = req.header("if-none-match", e);
    }
    send(req.body(Full::new(Bytes::new())).unwrap()).await
}

async fn render(latch: &TestLatch, vars: Value) -> Answer {
    let req = agent_request("POST", latch.proxy(), "/latch/v1/prompts/reply/render")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(json!({"vars": vars}).to_string())))
        .unwrap();
    send(req).await
}

/// Promote with the CLI as `who`; the approval id it was held under.
async fn promote_held(latch: &TestLatch, who: &str, version: &str) -> String {
    let out = ok(&cli(
        latch,
        who,
        &[
            "prompts",
            "promote",
            "reply",
            version,
            "--label",
            "production",
            "--json",
        ],
    )
    .await);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["status"], "pending", "{v}");
    v["approval_id"].as_str().unwrap().to_string()
}

async fn sign(latch: &TestLatch, id: &str, token: &str) -> Answer {
    let path = format!("/api/v1/approvals/{id}/approve");
    admin(latch.admin(), "POST", &path, token, "{}").await
}

#[tokio::test]
async fn a_prompt_reaches_production_only_through_three_reviewers_and_rolls_back() {
    let up = Upstream::start().await;
    let latch = TestLatch::start_shipped(&up.url(), PROMPT_PEOPLE).await;

    // The product manager pushes v1; pushing it again is not a new version.
    let v1 = write(&latch, "reply.prompt", V1);
    let pushed = ok(&cli(
        &latch,
        "paula-token",
        &["prompts", "push", &v1, "--name", "reply"],
    )
    .await);
    assert!(pushed.starts_with("reply v1 pushed"), "{pushed}");
    let again = ok(&cli(
        &latch,
        "paula-token",
        &["prompts", "push", &v1, "--name", "reply"],
    )
    .await);
    assert!(again.contains("unchanged"), "{again}");

    // Promotion to production is held for support + safety + an engineer.
    let id = promote_held(&latch, "paula-token", "1").await;
    let not_live = fetch(&latch, "/latch/v1/prompts/reply?label=production", None).await;
    assert_eq!(not_live.status, 404, "nothing is live before the sign-off");
    for token in ["sam-token", "sofia-token"] {
        assert_eq!(sign(&latch, &id, token).await.status, 200);
    }
    let pending = admin(
        latch.admin(),
        "GET",
        "/api/v1/prompts/reply",
        "sam-token",
        "",
    )
    .await;
    assert_eq!(pending.json()["pending"][0]["approval_id"], id.as_str());
    assert_eq!(sign(&latch, &id, "emma-token").await.status, 200);
    wait_state(latch.admin(), &id, "executed").await;

    // Apps fetch the live version, with an ETag, and render it.
    let live = fetch(&latch, "/latch/v1/prompts/reply?label=production", None).await;
    assert_eq!(live.status, 200, "{:?}", live.body);
    assert_eq!(live.json()["version"], 1);
    assert_eq!(live.json()["config"]["model"], "gpt-5");
    let etag = live.header("etag").to_string();
    let same = fetch(
        &latch,
        "/latch/v1/prompts/reply?label=production",
        Some(&etag),
    )
    .await;
    assert_eq!(same.status, 304);
    let text = render(&latch, json!({"customer": "Bo", "issue": "a refund"})).await;
    assert_eq!(text.status, 200, "{:?}", text.body);
    assert!(text.json()["text"]
        .as_str()
        .unwrap()
        .starts_with("Dear Bo,\nthank you for telling us about a refund."));
    let missing = render(&latch, json!({"customer": "Bo"})).await;
    assert_eq!(missing.status, 422, "{:?}", missing.body);
    assert!(missing.json()["message"]
        .as_str()
        .unwrap()
        .contains("issue"));

    // An engineer changes it; he cannot approve his own version.
    let v2 = write(
        &latch,
        "reply2.prompt",
        &V1.replace(
            "We are on it.",
            "We are on it and will write again within a day.",
        ),
    );
    let pushed = ok(&cli(
        &latch,
        "ed-token",
        &[
            "prompts",
            "push",
            &v2,
            "--name",
            "reply",
            "-m",
            "set expectations",
        ],
    )
    .await);
    assert!(pushed.starts_with("reply v2 pushed"), "{pushed}");
    let diff = ok(&cli(&latch, "ed-token", &["prompts", "diff", "reply", "1", "2"]).await);
    assert!(diff.starts_with("+1 -1"), "{diff}");
    assert!(
        diff.contains("+ We are on it and will write again within a day."),
        "{diff}"
    );
    // The product manager asks for the promotion; ed, the author, is
    // refused as an approver even though he holds the engineer role.
    let id2 = promote_held(&latch, "paula-token", "2").await;
    let shown = ok(&cli(&latch, "sam-token", &["approvals", "show", &id2]).await);
    assert!(shown.contains("change to production of reply:"), "{shown}");
    assert!(
        shown.contains("+ We are on it and will write again within a day."),
        "{shown}"
    );
    let own = sign(&latch, &id2, "ed-token").await;
    assert_eq!(own.status, 403, "{:?}", own.body);
    assert!(own.json()["message"]
        .as_str()
        .unwrap()
        .contains("wrote what it releases"));
    for token in ["sam-token", "sofia-token", "emma-token"] {
        assert_eq!(sign(&latch, &id2, token).await.status, 200);
    }
    wait_state(latch.admin(), &id2, "executed").await;
    let live = fetch(
        &latch,
        "/latch/v1/prompts/reply?label=production",
        Some(&etag),
    )
    .await;
    assert_eq!(
        live.status, 200,
        "the label moved, so the old ETag is stale"
    );
    assert_eq!(live.json()["version"], 2);

    // A version that fails its checks never goes to production; a label
    // that already points at a version cannot be "moved" there.
    let v3 = write(
        &latch,
        "reply3.prompt",
        &V1.replace("Dear {{customer}},", "Hi,"),
    );
    ok(&cli(
        &latch,
        "paula-token",
        &["prompts", "push", &v3, "--name", "reply"],
    )
    .await);
    let denied = cli(
        &latch,
        "paula-token",
        &["prompts", "promote", "reply", "3", "--label", "production"],
    )
    .await;
    assert!(!denied.status.success());
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("403 denied"),
        "{}",
        String::from_utf8_lossy(&denied.stderr)
    );
    let same = cli(
        &latch,
        "paula-token",
        &["prompts", "promote", "reply", "2", "--label", "production"],
    )
    .await;
    assert!(
        String::from_utf8_lossy(&same.stderr).contains("409"),
        "{}",
        String::from_utf8_lossy(&same.stderr)
    );

    // On-call rolls production back to v1 at once.
    let back = ok(&cli(
        &latch,
        "olga-token",
        &[
            "prompts",
            "rollback",
            "reply",
            "--label",
            "production",
            "--reason",
            "complaints",
        ],
    )
    .await);
    assert!(
        back.contains("production of reply now points at v1"),
        "{back}"
    );
    let live = fetch(&latch, "/latch/v1/prompts/reply?label=production", None).await;
    assert_eq!(live.json()["version"], 1);

    // An unprotected label moves at once for an editor.
    let staging = ok(&cli(
        &latch,
        "paula-token",
        &["prompts", "promote", "reply", "3", "--label", "staging"],
    )
    .await);
    assert!(
        staging.contains("staging of reply now points at v3"),
        "{staging}"
    );

    // The history and the audit chain have it all.
    let history = ok(&cli(&latch, "paula-token", &["prompts", "history", "reply"]).await);
    assert!(
        history.contains("production   - → v1 by paula approval"),
        "{history}"
    );
    assert!(
        history.contains("production   v2 → v1 by olga (rollback)"),
        "{history}"
    );
    let audit = admin(
        latch.admin(),
        "GET",
        "/api/v1/audit?subject=prompt:reply",
        "sam-token",
        "",
    )
    .await;
    let events: Vec<String> = audit.json()["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["event"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        events,
        [
            "prompt_version",
            "prompt_label_move",
            "prompt_version",
            "prompt_label_move",
            "prompt_version",
            "prompt_rollback",
            "prompt_label_move"
        ]
    );
    let verify = cli(
        &latch,
        "paula-token",
        &[
            "audit",
            "verify",
            "--config",
            latch.config_path().to_str().unwrap(),
        ],
    )
    .await;
    ok(&verify);
}

#[tokio::test]
async fn bad_prompt_requests_are_refused_and_change_nothing() {
    let up = Upstream::start().await;
    let latch = TestLatch::start_shipped(&up.url(), PROMPT_PEOPLE).await;
    let push = |token: &'static str, body: Value| {
        let adm = latch.admin();
        async move { admin(adm, "POST", "/api/v1/prompts", token, &body.to_string()).await }
    };
    let good = json!({"name": "reply", "template": "Hi {{name}}", "variables": ["name"]});
    for (token, body, status, says) in [
        ("sam-token", good.clone(), 403, "editor roles"),
        (
            "paula-token",
            json!({"name": "../etc", "template": "x"}),
            400,
            "no path characters",
        ),
        (
            "paula-token",
            json!({"name": "reply", "template": "Hi {{name}}"}),
            400,
            "undeclared variable(s): name",
        ),
        (
            "paula-token",
            json!({"name": "reply", "template": "Hi {{name", "variables": ["name"]}),
            400,
            "unclosed",
        ),
        (
            "paula-token",
            json!({"name": "reply", "template": "x".repeat(300_000)}),
            413,
            "at most",
        ),
        (
            "paula-token",
            json!({"name": "reply", "template": "x", "checks": [{"expect": {"matches": "("}}]}),
            400,
            "regular expression",
        ),
        (
            "paula-token",
            json!({"name": "reply", "template": "x", "colour": "red"}),
            400,
            "unknown field",
        ),
    ] {
        let r = push(token, body.clone()).await;
        assert_eq!(r.status, status, "{body}: {:?}", r.body);
        assert!(
            r.json()["message"].as_str().unwrap().contains(says),
            "{body}: {:?}",
            r.body
        );
    }
    let list = admin(latch.admin(), "GET", "/api/v1/prompts", "sam-token", "").await;
    assert_eq!(list.json()["prompts"], json!([]), "nothing half-written");

    assert_eq!(push("paula-token", good).await.status, 201);
    for (method, path, token, body, status) in [
        ("GET", "/api/v1/prompts/nope", "sam-token", "", 404),
        (
            "GET",
            "/api/v1/prompts/reply/versions/9",
            "sam-token",
            "",
            404,
        ),
        (
            "GET",
            "/api/v1/prompts/reply/versions/x",
            "sam-token",
            "",
            400,
        ),
        (
            "POST",
            "/api/v1/prompts/reply/labels/production",
            "paula-token",
            r#"{"version": 9}"#,
            404,
        ),
        (
            "POST",
            "/api/v1/prompts/reply/labels/staging",
            "sam-token",
            r#"{"version": 1}"#,
            403,
        ),
        (
            "POST",
            "/api/v1/prompts/reply/labels/production/rollback",
            "olga-token",
            "{}",
            404,
        ),
        (
            "POST",
            "/api/v1/prompts/reply/versions/1/evaluations",
            "ed-token",
            r#"{"name": "tone"}"#,
            400,
        ),
    ] {
        let r = admin(latch.admin(), method, path, token, body).await;
        assert_eq!(r.status, status, "{method} {path}: {:?}", r.body);
    }
    // CI attaches an evaluation; a failed one keeps the version out of production.
    let eval =
        r#"{"name": "tone", "score": 0.41, "passed": false, "url": "https://ci.example/run/7"}"#;
    let r = admin(
        latch.admin(),
        "POST",
        "/api/v1/prompts/reply/versions/1/evaluations",
        "ed-token",
        eval,
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["evaluations"][0]["by"], "ed");
    let r = admin(
        latch.admin(),
        "POST",
        "/api/v1/prompts/reply/labels/production",
        "paula-token",
        r#"{"version": 1}"#,
    )
    .await;
    assert_eq!(r.status, 403, "{:?}", r.body);
    assert_eq!(r.json()["error"], "denied");
    for path in [
        "/latch/v1/prompts/reply?label=production",
        "/latch/v1/prompts/nope",
        "/latch/v1/prompts/reply?label=../x",
    ] {
        let r = fetch(&latch, path, None).await;
        assert!(r.status == 404 || r.status == 400, "{path}: {:?}", r.body);
    }
    let anonymous = send(
        http::Request::get(format!("http://{}/latch/v1/prompts/reply", latch.proxy()))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(anonymous.status, 401);
}
