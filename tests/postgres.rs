//! Latch on PostgreSQL: the store against a real server the test starts
//! (Debian's `postgresql` binaries, `initdb` in a temporary directory), the
//! gate end to end on it, and two replicas sharing it.

mod common;

use std::sync::Arc;

use latch::audit::chain::Event;
use latch::gate::model::State;
use latch::store::notify::{NewDelivery, NotifyStore};
use latch::store::postgres::PgStore;
use latch::store::{Inserted, Store};
use latch::testing::Postgres;
use serde_json::json;

/// A store on `url`, trusting nothing beyond the system roots for TLS.
fn store(url: &str) -> PgStore {
    let tls = latch::tls::client_config(&rustls::RootCertStore::empty(), None).unwrap();
    PgStore::connect(url, None, Arc::new(tls)).unwrap()
}

/// The test config (`latch::testing::config_text`) with `store` (a
/// `[store]` body: `url = …`, and whatever else) instead of its SQLite file.
fn with_store(upstream: &str, store: &str) -> String {
    latch::testing::config_text(upstream, "").replace(r#"url = "sqlite://latch.db""#, store)
}

/// The test config on PostgreSQL `pg`.
fn on_postgres(pg: &Postgres, upstream: &str) -> String {
    with_store(upstream, &format!(r#"url = "{}""#, pg.url))
}

fn event(subject: &str) -> Event {
    Event::new("bot", "decision", subject, json!({"action": "allow"}))
}

#[test]
fn two_stores_on_one_database_write_one_unbroken_chain() {
    let Some(pg) = Postgres::start() else { return };
    let a = Arc::new(store(&pg.url));
    // A second replica migrates nothing and shares everything.
    let b = Arc::new(store(&pg.url));
    assert_eq!(b.migrate().unwrap(), 0);
    let writers: Vec<_> = [a.clone(), b.clone()]
        .into_iter()
        .enumerate()
        .map(|(n, s)| {
            std::thread::spawn(move || {
                for i in 0..50 {
                    s.append_audit(vec![
                        event(&format!("r{n}-{i}")),
                        event(&format!("r{n}-{i}b")),
                    ])
                    .unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let head = a.audit_head().unwrap().unwrap();
    assert_eq!(head.seq, 200);
    let records = b.audit_after(0, 1000).unwrap();
    assert_eq!(records.len(), 200);
    for pair in records.windows(2) {
        assert_eq!(pair[1].prev_hash, pair[0].hash, "one chain, in order");
        assert_eq!(pair[1].seq, pair[0].seq + 1);
    }
    let verified = latch::audit::verify_store(a.as_ref(), None).unwrap();
    assert!(verified.is_ok(), "{verified:?}");
}

#[test]
fn approvals_are_shared_and_a_change_wins_once() {
    let Some(pg) = Postgres::start() else { return };
    let a = store(&pg.url);
    let b = store(&pg.url);
    let mut approval = latch::testing::sample_approval("ap-1", "bot");
    approval.idempotency_key = Some("k1".into());
    assert_eq!(
        a.insert_approval(&approval, &event("ap-1"), 10).unwrap(),
        Inserted::New
    );
    // The same key on another replica finds the first approval.
    let mut again = latch::testing::sample_approval("ap-2", "bot");
    again.idempotency_key = Some("k1".into());
    assert!(
        matches!(b.insert_approval(&again, &event("ap-2"), 10).unwrap(), Inserted::Existing(e) if e.id == "ap-1")
    );
    let stored = b.approval("ap-1").unwrap().unwrap();
    assert_eq!(stored.body, approval.body);
    // Two replicas expire it at once: one wins.
    let mut expired = stored.next_version();
    expired.state = State::Expired;
    let wins = [&a, &b]
        .iter()
        .filter(|s| {
            s.update_approval(&expired, stored.version, &[event("ap-1")], None)
                .unwrap()
        })
        .count();
    assert_eq!(wins, 1);
    assert_eq!(a.approval("ap-1").unwrap().unwrap().state, State::Expired);
    assert_eq!(
        b.count_approvals(Some(State::Expired), Some("bot"))
            .unwrap(),
        1
    );
    assert_eq!(
        a.audit_of("ap-1").unwrap().len(),
        2,
        "proposal and the one expiry"
    );
}

#[test]
fn each_notification_delivery_goes_to_one_replica() {
    let Some(pg) = Postgres::start() else { return };
    let a = store(&pg.url);
    let b = store(&pg.url);
    let d = |n: usize| NewDelivery {
        approval: format!("ap-{n}"),
        channel: "slack".into(),
        kind: "requested".into(),
        payload: json!({}),
        created_at: 1,
    };
    a.fan_out(&[], &(0..20).map(d).collect::<Vec<_>>()).unwrap();
    let mine = a.claim_deliveries(10, 1000, 15).unwrap();
    let theirs = b.claim_deliveries(10, 1000, 15).unwrap();
    assert_eq!(mine.len() + theirs.len(), 20);
    assert!(mine.iter().all(|m| theirs.iter().all(|t| t.id != m.id)));
}

mod replicas {
    use std::net::SocketAddr;
    use std::time::Duration;

    use bytes::Bytes;
    use http_body_util::Full;
    use latch::testing::*;
    use serde_json::{json, Value};

    const LEAD_ONLY: &str = r#"{"require": [{"role": "lead", "count": 1}]}"#;

    fn gated(approval: &str) -> String {
        format!(r#"{{"gate": true, "to": "bob@example.com", "approval": {approval}}}"#)
    }

    use super::on_postgres as config;

    async fn approve(admin_addr: SocketAddr, id: &str, token: &str) -> u16 {
        let path = format!("/api/v1/approvals/{id}/approve");
        admin(admin_addr, "POST", &path, token, "{}")
            .await
            .status
            .as_u16()
    }

    async fn events(admin_addr: SocketAddr, id: &str) -> Vec<String> {
        let path = format!("/api/v1/audit?subject={id}");
        let a = admin(admin_addr, "GET", &path, "alice-token", "")
            .await
            .json();
        a["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["event"].as_str().unwrap().to_string())
            .collect()
    }

    /// A replica as its own `latch serve` process: (process, proxy, admin).
    fn spawn_replica(
        pg: &Postgres,
        upstream: &str,
        dir: &std::path::Path,
    ) -> (Proc, SocketAddr, SocketAddr) {
        let (proxy, admin_addr) = (free_addr(), free_addr());
        let text = config(pg, upstream)
            .replacen(
                r#"listen = "127.0.0.1:0""#,
                &format!(r#"listen = "{proxy}""#),
                1,
            )
            .replacen(
                r#"listen = "127.0.0.1:0""#,
                &format!(r#"listen = "{admin_addr}""#),
                1,
            );
        std::fs::create_dir_all(dir.join("policies")).unwrap();
        std::fs::write(dir.join("policies/test.rego"), TEST_POLICY).unwrap();
        std::fs::write(dir.join("latch.toml"), &text).unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_latch"))
            .envs(test_env())
            .args(["serve", "--config"])
            .arg(dir.join("latch.toml"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        wait_for(proxy);
        wait_for(admin_addr);
        (Proc(child), proxy, admin_addr)
    }

    #[tokio::test]
    async fn a_call_held_on_one_replica_is_released_by_a_verdict_on_the_other() {
        let Some(pg) = Postgres::start() else { return };
        let up = Upstream::start().await;
        let dir = tempfile::tempdir().unwrap();
        let (_a, proxy, a_admin) = spawn_replica(&pg, &up.url(), dir.path());
        let b = TestLatch::start_text(config(&pg, &up.url()), TEST_POLICY).await;
        let held = tokio::spawn(async move {
            call("POST", proxy, "/tools/echo/send", &gated(LEAD_ONLY)).await
        });
        let id = wait_pending(b.admin()).await;
        assert_eq!(approve(b.admin(), &id, "alice-token").await, 200);
        let answer = held.await.unwrap();
        assert_eq!(answer.status, 200, "{:?}", answer.body);
        assert_eq!(answer.header("latch-approval"), id);
        assert_eq!(up.requests().len(), 1);
        assert_eq!(events(a_admin, &id).await, ["gate", "approve", "execute"]);
        crate::common::assert_audit_verifies(&b);
    }

    #[tokio::test]
    async fn concurrent_approvals_on_two_replicas_execute_once_and_deadlines_fire_once() {
        let Some(pg) = Postgres::start() else { return };
        let up = Upstream::start().await;
        let dir = tempfile::tempdir().unwrap();
        let (_a, a_proxy, a_admin) = spawn_replica(&pg, &up.url(), dir.path());
        let b = TestLatch::start_text(config(&pg, &up.url()), TEST_POLICY).await;
        for round in 0..5 {
            let key = format!("race-{round}");
            let req = agent_request("POST", a_proxy, "/tools/echo/send")
                .header("content-type", "application/json")
                .header("prefer", "respond-async")
                .header("idempotency-key", key.as_str())
                .body(Full::new(Bytes::from(gated(LEAD_ONLY))))
                .unwrap();
            let id = send(req).await.json()["approval_id"]
                .as_str()
                .unwrap()
                .to_string();
            // Two leads approve at once, one on each replica.
            let (x, y) = tokio::join!(
                approve(a_admin, &id, "alice-token"),
                approve(b.admin(), &id, "carol-token")
            );
            assert!(x == 200 || y == 200, "{x} {y}");
            wait_state(b.admin(), &id, "executed").await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(up.requests().len(), 5, "each approved call ran once");

        // A one-second deadline, watched by both replicas' deadline loops.
        let quick = r#"{"require": [{"role": "lead", "count": 1}], "timeout_s": 1}"#;
        let req = agent_request("POST", b.proxy(), "/tools/echo/send")
            .header("content-type", "application/json")
            .header("prefer", "respond-async")
            .body(Full::new(Bytes::from(gated(quick))))
            .unwrap();
        let id = send(req).await.json()["approval_id"]
            .as_str()
            .unwrap()
            .to_string();
        wait_state(a_admin, &id, "expired").await;
        tokio::time::sleep(Duration::from_millis(600)).await;
        let ev = events(a_admin, &id).await;
        assert_eq!(
            ev.iter().filter(|e| e.starts_with("expire")).count(),
            1,
            "{ev:?}"
        );
        assert_eq!(up.requests().len(), 5);
        crate::common::assert_audit_verifies(&b);
    }

    #[tokio::test]
    async fn a_replica_killed_with_pending_approvals_loses_none_of_them() {
        let Some(pg) = Postgres::start() else { return };
        let up = Upstream::start().await;
        let b = TestLatch::start_text(config(&pg, &up.url()), TEST_POLICY).await;
        // Replica A is a real process, killed with SIGKILL.
        let dir = tempfile::tempdir().unwrap();
        let (mut replica_a, proxy_a, _) = spawn_replica(&pg, &up.url(), dir.path());
        let mut ids = Vec::new();
        for n in 0..3 {
            let req = agent_request("POST", proxy_a, "/tools/echo/send")
                .header("content-type", "application/json")
                .header("prefer", "respond-async")
                .header("idempotency-key", format!("k{n}"))
                .body(Full::new(Bytes::from(gated(LEAD_ONLY))))
                .unwrap();
            let r = send(req).await;
            assert_eq!(r.status, 202);
            ids.push(r.json()["approval_id"].as_str().unwrap().to_string());
        }
        replica_a.0.kill().unwrap();
        replica_a.0.wait().unwrap();
        for id in &ids {
            assert_eq!(approve(b.admin(), id, "alice-token").await, 200);
            wait_state(b.admin(), id, "executed").await;
            // The agent reattaches through B with its key, and collects.
            let again = agent_request("POST", b.proxy(), "/tools/echo/send")
                .header("content-type", "application/json")
                .header("prefer", "respond-async")
                .header(
                    "idempotency-key",
                    format!("k{}", ids.iter().position(|i| i == id).unwrap()),
                )
                .body(Full::new(Bytes::from(gated(LEAD_ONLY))))
                .unwrap();
            let r = send(again).await;
            assert_eq!(r.header("latch-approval"), id.as_str(), "{:?}", r.body);
            let result = agent_request(
                "GET",
                b.proxy(),
                &format!("/latch/v1/approvals/{id}/result"),
            )
            .body(Full::new(Bytes::new()))
            .unwrap();
            let r = send(result).await;
            assert_eq!(r.status, 200);
            let v: Value = r.json();
            assert_eq!(v["upstream"], json!("ok"));
        }
        assert_eq!(up.requests().len(), 3);
        crate::common::assert_audit_verifies(&b);
    }
}

mod outage {
    use bytes::Bytes;
    use http_body_util::Full;
    use latch::testing::*;

    #[tokio::test]
    async fn without_its_database_latch_refuses_and_says_why_then_recovers() {
        let Some(pg) = Postgres::start() else { return };
        let up = Upstream::start().await;
        let text = super::on_postgres(&pg, &up.url());
        let latch = TestLatch::start_text(text, TEST_POLICY).await;
        assert_eq!(
            call("POST", latch.proxy(), "/tools/echo/x", "{}")
                .await
                .status,
            200
        );
        let ready = |addr| async move {
            send(
                http::Request::get(format!("http://{addr}/readyz"))
                    .body(Full::new(Bytes::new()))
                    .unwrap(),
            )
            .await
        };
        pg.stop();
        let refused = call("POST", latch.proxy(), "/tools/echo/x", "{}").await;
        assert_eq!(refused.status, 503, "{:?}", refused.body);
        assert_eq!(refused.header("latch-error"), "audit_unavailable");
        let r = ready(latch.admin()).await;
        assert_eq!(r.status, 503);
        assert!(
            String::from_utf8_lossy(&r.body).contains("store"),
            "{:?}",
            r.body
        );
        assert_eq!(up.requests().len(), 1, "nothing went out unaudited");

        pg.restart();
        let mut back = 0;
        for _ in 0..50 {
            back = call("POST", latch.proxy(), "/tools/echo/x", "{}")
                .await
                .status
                .as_u16();
            if back == 200 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert_eq!(back, 200, "Latch recovers by itself");
        assert_eq!(ready(latch.admin()).await.status, 200);
    }
}

mod grants {
    use bytes::Bytes;
    use http_body_util::Full;
    use latch::testing::*;

    fn email() -> String {
        r#"{"gate": true, "to": "bob@example.com", "risk": "medium", "approval": {"require": [{"role": "lead", "count": 1}]}}"#.into()
    }

    async fn call_async(latch: &TestLatch) -> Answer {
        let req = agent_request("POST", latch.proxy(), "/tools/echo/send")
            .header("content-type", "application/json")
            .header("prefer", "respond-async")
            .body(Full::new(Bytes::from(email())))
            .unwrap();
        send(req).await
    }

    #[tokio::test]
    async fn a_grant_given_on_one_replica_allows_on_the_other_until_revoked_there() {
        let Some(pg) = Postgres::start() else { return };
        let up = Upstream::start().await;
        let text = super::on_postgres(&pg, &up.url());
        let a = TestLatch::start_text(text.clone(), TEST_POLICY).await;
        let b = TestLatch::start_text(text, TEST_POLICY).await;
        let first = call_async(&a).await;
        let id = first.json()["approval_id"].as_str().unwrap().to_string();
        let body = r#"{"grant": {"ttl_s": 3600, "class_args": ["to"]}}"#;
        let approved = admin(
            b.admin(),
            "POST",
            &format!("/api/v1/approvals/{id}/approve"),
            "alice-token",
            body,
        )
        .await;
        assert_eq!(approved.status, 200, "{:?}", approved.body);
        let grant = approved.json()["grant_id"].as_str().unwrap().to_string();
        wait_state(a.admin(), &id, "executed").await;

        // A heard of the grant given on B.
        let mut allowed = None;
        for _ in 0..50 {
            let r = call_async(&a).await;
            if r.status == 200 {
                allowed = Some(r);
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let allowed = allowed.expect("the grant reached replica A");
        assert_eq!(allowed.header("latch-grant"), grant);

        // Revoked on B: A holds the next call for a human again.
        let revoked = admin(
            b.admin(),
            "DELETE",
            &format!("/api/v1/grants/{grant}"),
            "alice-token",
            "{}",
        )
        .await;
        assert!(revoked.status.is_success(), "{:?}", revoked.body);
        let mut gated = 0;
        for _ in 0..50 {
            gated = call_async(&a).await.status.as_u16();
            if gated == 202 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert_eq!(gated, 202, "a revocation on B ends the grant on A");
    }
}

#[test]
fn latch_migrate_brings_an_empty_database_up_to_date() {
    let Some(pg) = Postgres::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    std::fs::write(
        dir.path().join("policies/p.rego"),
        latch::testing::TEST_POLICY,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("latch.toml"),
        "[store]\nurl_env = \"LATCH_TEST_DB\"\n[policy]\ndir = \"policies\"\n",
    )
    .unwrap();
    let run = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_latch"))
            .args(["migrate", "--config"])
            .arg(dir.path().join("latch.toml"))
            .env("LATCH_TEST_DB", &pg.url)
            .output()
            .unwrap()
    };
    let out = run();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let n = latch::store::migrations::MIGRATIONS.len();
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("version {n}")));
    // Twice is fine: nothing left to apply.
    assert!(run().status.success());
    let store = store(&pg.url);
    assert_eq!(store.migrate().unwrap(), 0);
}

#[tokio::test]
async fn what_one_replica_carried_out_is_familiar_to_the_other() {
    use latch::testing::*;
    let Some(pg) = Postgres::start() else { return };
    let up = Upstream::start().await;
    let text = on_postgres(&pg, &up.url());
    let a = TestLatch::start_text(text.clone(), TEST_POLICY).await;
    let b = TestLatch::start_text(text, TEST_POLICY).await;
    // The test policy denies a call on route `novel` once its class was seen.
    assert_eq!(
        call("POST", a.proxy(), "/tools/novel/x", r#"{"n": 1}"#)
            .await
            .status,
        200
    );
    // B has not carried it out itself; it reads the shared history every
    // 2 s, so after two of its reads it knows.
    tokio::time::sleep(std::time::Duration::from_millis(4500)).await;
    let denied = call("POST", b.proxy(), "/tools/novel/x", r#"{"n": 2}"#).await;
    assert_eq!(denied.status, 403, "{:?}", denied.body);
    assert_eq!(denied.json()["code"], "seen_before");
}

mod tls {
    use std::path::PathBuf;
    use std::sync::Arc;

    use latch::store::postgres::PgStore;
    use latch::testing::*;

    fn fixture(name: &str) -> PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/tls")
            .join(name)
    }

    fn tls_config(ca: Option<&std::path::Path>) -> Arc<rustls::ClientConfig> {
        Arc::new(latch::tls::client_config(&rustls::RootCertStore::empty(), ca).unwrap())
    }

    #[tokio::test]
    async fn latch_talks_to_postgresql_over_verified_tls() {
        let Some(pg) = Postgres::start_tls(&fixture("server.pem"), &fixture("server.key")) else {
            return;
        };
        let url = format!(
            "postgres://latch@localhost:{}/postgres?sslmode=require",
            pg.port
        );
        // An unknown issuer is refused; the test CA is trusted through ca_file.
        let refused = std::thread::spawn({
            let url = url.clone();
            move || {
                PgStore::connect(&url, None, tls_config(None))
                    .err()
                    .map(|e| format!("{e:#}"))
            }
        })
        .join()
        .unwrap();
        assert!(
            refused.is_some_and(|e| e.contains("certificate") || e.contains("Certificate")),
            "an unverified server is refused"
        );
        let up = Upstream::start().await;
        let store = format!(
            "url = \"{url}\"\nca_file = \"{}\"",
            fixture("ca.pem").display()
        );
        let text = super::with_store(&up.url(), &store);
        let latch = TestLatch::start_text(text, TEST_POLICY).await;
        let ok = call("POST", latch.proxy(), "/tools/echo/x", "{}").await;
        assert_eq!(ok.status, 200);
        // The server saw encrypted connections from Latch.
        let port = pg.port;
        let count = std::thread::spawn(move || {
            let plain = format!("postgres://latch@127.0.0.1:{port}/postgres");
            let mut c = postgres::Client::connect(&plain, postgres::NoTls).unwrap();
            let sql = "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
                       WHERE s.ssl AND a.application_name = 'latch'";
            c.query_one(sql, &[]).unwrap().get::<_, i64>(0)
        })
        .join()
        .unwrap();
        assert!(count >= 1, "Latch's connections use TLS");
    }

    #[test]
    fn sslmode_require_against_a_server_without_tls_is_refused() {
        let Some(pg) = Postgres::start() else { return };
        let url = format!("{}?sslmode=require", pg.url);
        let err = PgStore::connect(&url, None, tls_config(None))
            .err()
            .map(|e| format!("{e:#}"));
        assert!(err.is_some(), "no silent fallback to plain text");
    }
}

#[tokio::test]
async fn a_dashboard_session_opened_on_one_replica_works_on_the_other() {
    use bytes::Bytes;
    use http_body_util::Full;
    use latch::testing::*;
    let Some(pg) = Postgres::start() else { return };
    let up = Upstream::start().await;
    let text = on_postgres(&pg, &up.url());
    let a = TestLatch::start_text(text.clone(), TEST_POLICY).await;
    let b = TestLatch::start_text(text, TEST_POLICY).await;
    let login = send(
        http::Request::post(format!("http://{}/login", a.admin()))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from_static(b"token=alice-token")))
            .unwrap(),
    )
    .await;
    assert_eq!(login.status, 303);
    let cookie = login
        .header("set-cookie")
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let on_b = send(
        http::Request::get(format!("http://{}/api/v1/session", b.admin()))
            .header("cookie", cookie)
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(on_b.status, 200, "{:?}", on_b.body);
    assert_eq!(on_b.json()["principal"], "alice");
}

/// A replica that approved a call and died before sending it: another
/// replica sends it (once), a few seconds later.
#[tokio::test]
async fn an_approved_call_left_unsent_by_a_gone_replica_is_sent_by_another() {
    use bytes::Bytes;
    use http_body_util::Full;
    use latch::testing::*;
    let Some(pg) = Postgres::start() else { return };
    let up = Upstream::start().await;
    let b = TestLatch::start_text(on_postgres(&pg, &up.url()), TEST_POLICY).await;
    let req = agent_request("POST", b.proxy(), "/tools/echo/send")
        .header("content-type", "application/json")
        .header("prefer", "respond-async")
        .body(Full::new(Bytes::from_static(
            br#"{"gate": true, "approval": {"require": [{"role": "lead", "count": 1}]}}"#,
        )))
        .unwrap();
    let id = send(req).await.json()["approval_id"]
        .as_str()
        .unwrap()
        .to_string();
    // What the gone replica committed: the approval (with its audit record),
    // ten seconds ago, and nothing after it.
    let url = pg.url.clone();
    let approval = id.clone();
    std::thread::spawn(move || {
        let s = store(&url);
        let a = s.approval(&approval).unwrap().unwrap();
        let mut next = a.next_version();
        next.state = State::Approved;
        next.decided_at = Some(chrono::Utc::now().timestamp_millis() - 10_000);
        let event = Event::new("alice", "approve", &approval, json!({"quorum_met": true}));
        assert!(s.update_approval(&next, a.version, &[event], None).unwrap());
    })
    .join()
    .unwrap();
    assert!(up.requests().is_empty());
    // B's sweep (every 5 s on a shared store) finds and sends it.
    for _ in 0..150 {
        if !up.requests().is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    wait_state(b.admin(), &id, "executed").await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(up.requests().len(), 1);
}
