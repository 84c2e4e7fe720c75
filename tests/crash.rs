//! The real binary: pending approvals survive `kill -9`, and the audit CLI
//! verifies, exports and catches tampering.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::*;

struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn latch_cmd(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_latch"));
    c.current_dir(dir)
        .env("BOT_TOKEN", AGENT_TOKEN)
        .env("UPSTREAM_KEY", "Bearer upstream-secret")
        .env("HOOK_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
        .env("LATCH_AUDIT_KEY", "an-audit-key-of-at-least-32-bytes!");
    c
}

/// `latch serve`, its log (stderr, not a terminal) appended to `latch.log`.
async fn serve(dir: &Path, proxy: SocketAddr) -> Serve {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("latch.log"))
        .unwrap();
    let child = latch_cmd(dir)
        .args(["serve", "--config", "latch.toml"])
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(proxy).await.is_ok() {
            return Serve(child);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("latch did not start");
}

/// `text` with the proxy and admin listeners on these addresses.
fn listening_on(text: String, proxy: SocketAddr, adm: SocketAddr) -> String {
    text.replacen(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"{proxy}\""),
        1,
    )
    .replacen(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"{adm}\""),
        1,
    )
}

fn run(dir: &Path, args: &[&str]) -> Output {
    latch_cmd(dir).args(args).output().unwrap()
}

#[tokio::test]
async fn pending_approvals_survive_kill_9_and_the_audit_chain_verifies() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    std::fs::write(dir.path().join("policies/test.rego"), TEST_POLICY).unwrap();
    let (proxy, adm) = (free_addr(), free_addr());
    let text = listening_on(config_text(&up.url(), ""), proxy, adm);
    std::fs::write(dir.path().join("latch.toml"), text).unwrap();

    let mut server = serve(dir.path(), proxy).await;
    assert_eq!(call("POST", proxy, "/tools/echo/a", "{}").await.status, 200);
    // A log file gets plain lines, no terminal colour codes.
    let log = std::fs::read_to_string(dir.path().join("latch.log")).unwrap();
    assert!(log.contains("latch started"), "{log}");
    assert!(!log.contains('\x1b'), "ANSI codes in the log file: {log:?}");
    let body = r#"{"gate": true, "approval": {"require": [{"role": "lead", "count": 1}]}}"#;
    let req = |key: &str| {
        agent_request("POST", proxy, "/tools/echo/send")
            .header("content-type", "application/json")
            .header("prefer", "respond-async")
            .header("idempotency-key", key)
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .unwrap()
    };
    let held = send(req("crash-1")).await;
    assert_eq!(held.status, 202);
    let id = held.json()["approval_id"].as_str().unwrap().to_string();

    // SIGKILL: no shutdown code runs.
    server.0.kill().unwrap();
    server.0.wait().unwrap();
    drop(server);
    let _server = serve(dir.path(), proxy).await;

    let retry = send(req("crash-1")).await;
    assert_eq!(
        retry.json()["approval_id"],
        id,
        "the retry attaches to the approval from before the crash"
    );
    let ok = admin(
        adm,
        "POST",
        &format!("/api/v1/approvals/{id}/approve"),
        "alice-token",
        "{}",
    )
    .await;
    assert_eq!(ok.status, 200, "{:?}", ok.body);
    wait_state(adm, &id, "executed").await;
    assert_eq!(up.requests().len(), 2);

    let v = run(dir.path(), &["audit", "verify"]);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
    assert!(
        String::from_utf8_lossy(&v.stdout).starts_with("ok: 4 records"),
        "{}",
        String::from_utf8_lossy(&v.stdout)
    );

    let export = run(dir.path(), &["audit", "export"]);
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&export.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let events: Vec<&str> = lines.iter().map(|r| r["event"].as_str().unwrap()).collect();
    assert_eq!(events, ["decision", "gate", "approve", "execute"]);
    let none = run(
        dir.path(),
        &["audit", "export", "--since", "2999-01-01T00:00:00Z"],
    );
    assert!(none.status.success() && none.stdout.is_empty());

    // An archive an auditor can keep, checked on its own — whole, from a
    // point in time, and caught when altered or cut short.
    let archive = dir.path().join("audit.jsonl.gz");
    let a = archive.to_str().unwrap();
    assert!(run(dir.path(), &["audit", "export", "--archive", a])
        .status
        .success());
    let v = run(dir.path(), &["audit", "verify", "--file", a]);
    let said = String::from_utf8_lossy(&v.stdout);
    assert!(
        said.starts_with("ok: 4 records after record 0"),
        "{said}{}",
        String::from_utf8_lossy(&v.stderr)
    );
    let since = lines[2]["ts"].as_str().unwrap();
    let part = dir.path().join("part.jsonl.gz");
    let p = part.to_str().unwrap();
    assert!(run(
        dir.path(),
        &["audit", "export", "--since", since, "--archive", p]
    )
    .status
    .success());
    let v = run(dir.path(), &["audit", "verify", "--file", p]);
    let said = String::from_utf8_lossy(&v.stdout);
    assert!(said.starts_with("ok: 2 records after record 2"), "{said}");
    let text = {
        use std::io::Read;
        let mut s = String::new();
        flate2::read::GzDecoder::new(std::fs::File::open(&archive).unwrap())
            .read_to_string(&mut s)
            .unwrap();
        s
    };
    let forged = dir.path().join("forged.jsonl");
    std::fs::write(&forged, text.replace("\"approve\"", "\"reject\"")).unwrap();
    let v = run(
        dir.path(),
        &["audit", "verify", "--file", forged.to_str().unwrap()],
    );
    assert_eq!(v.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&v.stderr).contains("record 3: contents were altered"),
        "{}",
        String::from_utf8_lossy(&v.stderr)
    );
    let short = dir.path().join("short.jsonl");
    let kept: Vec<&str> = text.lines().take(4).collect();
    std::fs::write(&short, kept.join("\n")).unwrap();
    let v = run(
        dir.path(),
        &["audit", "verify", "--file", short.to_str().unwrap()],
    );
    assert!(
        String::from_utf8_lossy(&v.stderr).contains("the header says 4 records, the file has 3"),
        "{}",
        String::from_utf8_lossy(&v.stderr)
    );

    // Tamper with one record, then remove another: verify names each.
    let db = rusqlite::Connection::open(dir.path().join("latch.db")).unwrap();
    let original: String = db
        .query_row("SELECT details FROM audit WHERE seq = 2", [], |r| r.get(0))
        .unwrap();
    db.execute(
        "UPDATE audit SET details = '{\"risk\":\"low\"}' WHERE seq = 2",
        [],
    )
    .unwrap();
    let v = run(dir.path(), &["audit", "verify"]);
    assert_eq!(v.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&v.stderr).contains("record 2: contents were altered"),
        "{}",
        String::from_utf8_lossy(&v.stderr)
    );
    db.execute("UPDATE audit SET details = ?1 WHERE seq = 2", [original])
        .unwrap();
    assert!(run(dir.path(), &["audit", "verify"]).status.success());
    db.execute("DELETE FROM audit WHERE seq = 3", []).unwrap();
    let v = run(dir.path(), &["audit", "verify"]);
    assert_eq!(v.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&v.stderr).contains("record 4"),
        "{}",
        String::from_utf8_lossy(&v.stderr)
    );
}

#[tokio::test]
async fn a_notification_owed_before_kill_9_is_delivered_after_the_restart() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    std::fs::write(dir.path().join("policies/test.rego"), TEST_POLICY).unwrap();
    let (proxy, adm, down) = (free_addr(), free_addr(), free_addr());
    let config = |hook: &str| {
        let notify = format!(
            "[notify]\ndefault = [\"hooks\"]\nretry_base_ms = 50\ntimeout_ms = 500\n\n[[notify.channels]]\nname = \"hooks\"\nkind = \"webhook\"\nurl = \"{hook}/events\"\nsecret_env = \"HOOK_SECRET\"\n"
        );
        listening_on(config_text(&up.url(), &notify), proxy, adm)
    };
    std::fs::write(
        dir.path().join("latch.toml"),
        config(&format!("http://{down}")),
    )
    .unwrap();
    let mut server = serve(dir.path(), proxy).await;
    let body = r#"{"gate": true, "approval": {"require": [{"role": "lead", "count": 1}]}}"#;
    let held = send(
        agent_request("POST", proxy, "/tools/echo/send")
            .header("content-type", "application/json")
            .header("prefer", "respond-async")
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .unwrap(),
    )
    .await;
    assert_eq!(held.status, 202);
    let id = held.json()["approval_id"].as_str().unwrap().to_string();
    server.0.kill().unwrap();
    server.0.wait().unwrap();
    drop(server);

    let hooks = Stub::start(std::sync::Arc::new(|_: &str, _| {
        (204, vec![], String::new())
    }))
    .await;
    std::fs::write(dir.path().join("latch.toml"), config(&hooks.url())).unwrap();
    let _server = serve(dir.path(), proxy).await;
    let got = hooks.wait("/events", 1).await;
    let event: serde_json::Value = serde_json::from_slice(&got[0].1.body).unwrap();
    assert_eq!(
        (
            event["type"].as_str(),
            event["data"]["approval_id"].as_str()
        ),
        (Some("approval.requested"), Some(id.as_str()))
    );
}

#[tokio::test]
async fn retention_keeps_the_chain_verifiable_from_a_signed_checkpoint() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    std::fs::write(dir.path().join("policies/test.rego"), TEST_POLICY).unwrap();
    let (proxy, adm) = (free_addr(), free_addr());
    let retention =
        "[audit]\nkey_env = \"LATCH_AUDIT_KEY\"\nretain_decisions_days = 2\nretain_days = 30\n";
    let text = listening_on(config_text(&up.url(), retention), proxy, adm);
    std::fs::write(dir.path().join("latch.toml"), text).unwrap();
    let server = serve(dir.path(), proxy).await;
    for i in 0..5 {
        assert_eq!(
            call("POST", proxy, &format!("/tools/echo/{i}"), "{}")
                .await
                .status,
            200
        );
    }
    let body = r#"{"block": true}"#;
    assert_eq!(call("POST", proxy, "/tools/echo/x", body).await.status, 403);
    drop(server);

    let said = |o: &Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    let p = run(dir.path(), &["audit", "prune"]);
    assert!(
        p.status.success() && said(&p).contains("details of 0 decision records; dropped 0"),
        "{}",
        said(&p)
    );

    // As retention finds the log three days on, then a month on.
    let key = latch::audit::chain::AuditKey::new(b"an-audit-key-of-at-least-32-bytes!");
    let store =
        latch::store::sqlite::SqliteStore::open(&dir.path().join("latch.db"), Some(key.clone()))
            .unwrap();
    let now = chrono::Utc::now();
    let r = latch::audit::retain(
        &store,
        Some(2),
        Some(30),
        Some(&key),
        now + chrono::Duration::days(3),
    )
    .unwrap();
    assert_eq!((r.pruned, r.dropped), (6, 0));
    let v = run(dir.path(), &["audit", "verify"]);
    assert!(v.status.success(), "{}", said(&v));
    assert!(
        said(&v).contains("6 decision records keep only the digest"),
        "{}",
        said(&v)
    );
    let r = latch::audit::retain(
        &store,
        Some(2),
        Some(30),
        Some(&key),
        now + chrono::Duration::days(31),
    )
    .unwrap();
    assert_eq!(r.dropped, 5);
    drop(store);
    let v = run(dir.path(), &["audit", "verify"]);
    assert!(v.status.success(), "{}", said(&v));
    assert!(said(&v).contains("ok: 1 records"), "{}", said(&v));
    assert!(said(&v).contains("records up to 5"), "{}", said(&v));

    // A checkpoint moved by someone without the key is caught.
    let db = rusqlite::Connection::open(dir.path().join("latch.db")).unwrap();
    db.execute("UPDATE audit_checkpoint SET seq = 4", [])
        .unwrap();
    drop(db);
    let v = run(dir.path(), &["audit", "verify"]);
    assert_eq!(v.status.code(), Some(1));
    assert!(
        said(&v).contains("retention checkpoint at record 4 is forged"),
        "{}",
        said(&v)
    );
}
