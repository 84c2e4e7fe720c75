//! Notifications end to end: Latch on 127.0.0.1:0 talks to a Slack Web API
//! stand-in, webhook and PagerDuty receivers and an SMTP server, all started
//! here on loopback and speaking the real wire formats; reviewers click in
//! "Slack" with signed requests.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http::Request;
use http_body_util::Full;
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use common::*;

const SIGNING_SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
const WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// People who decide from Slack, and an agent whose owner is one of them.
const SLACK_PEOPLE: &str = r#"
[[principals]]
id = "lena"
roles = ["lead"]
token = "lena-token"
slack_user = "U0LENA"
email = "lena@example.com"

[[principals]]
id = "dan"
roles = ["director"]
token = "dan-token"
slack_user = "U0DAN"

[[principals]]
id = "owen"
roles = ["lead"]
token = "owen-token"
slack_user = "U0OWEN"

[[principals]]
id = "bot3"
roles = ["agent", "lead"]
owners = ["owen"]
token = "bot3-token"
slack_user = "U0BOT3"
"#;

fn env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("SLACK_BOT_TOKEN", "xoxb-test"),
        ("SLACK_SIGNING_SECRET", SIGNING_SECRET),
        ("HOOK_SECRET", WEBHOOK_SECRET),
        ("PD_KEY", "R0UTINGKEY"),
    ]
}

fn body_json(s: &Seen) -> Value {
    serde_json::from_slice(&s.body).unwrap()
}

/// A Slack Web API stand-in: the first chat.postMessage is rate limited.
async fn slack_api() -> Stub {
    Stub::start(Arc::new(|path: &str, n: usize| match (path, n) {
        ("/api/chat.postMessage", 0) => (
            429,
            vec![("retry-after", "1".into())],
            r#"{"ok":false,"error":"ratelimited"}"#.into(),
        ),
        ("/api/chat.postMessage", _) => (
            200,
            vec![],
            r#"{"ok":true,"channel":"C0APPROVALS","ts":"1700000000.000100"}"#.into(),
        ),
        _ => (200, vec![], r#"{"ok":true}"#.into()),
    }))
    .await
}

fn slack_config(api: &str) -> String {
    format!(
        r##"
[notify]
dashboard_url = "https://latch.example.com"
default = ["approvals-slack"]
retry_base_ms = 100

[[notify.channels]]
name = "approvals-slack"
kind = "slack"
channel = "#approvals"
bot_token_env = "SLACK_BOT_TOKEN"
signing_secret_env = "SLACK_SIGNING_SECRET"
api_url = "{api}/api"
{SLACK_PEOPLE}"##
    )
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// POST a Slack interaction payload signed at `ts` with `secret`.
async fn interact_signed(admin: SocketAddr, payload: &Value, ts: i64, secret: &str) -> Answer {
    let body = format!("payload={}", urlencode(&payload.to_string()));
    let sig = latch::notify::slack::sign(secret, ts, body.as_bytes());
    let req = Request::post(format!("http://{admin}/slack/interactions"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-slack-request-timestamp", ts.to_string())
        .header("x-slack-signature", sig)
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    send(req).await
}

async fn interact(admin: SocketAddr, payload: &Value) -> Answer {
    interact_signed(
        admin,
        payload,
        chrono::Utc::now().timestamp(),
        SIGNING_SECRET,
    )
    .await
}

fn click(user: &str, action: &str, id: &str) -> Value {
    json!({
        "type": "block_actions", "user": {"id": user}, "trigger_id": format!("trig-{user}"),
        "channel": {"id": "C0APPROVALS"}, "container": {"channel_id": "C0APPROVALS", "message_ts": "1700000000.000100"},
        "actions": [{"action_id": action, "value": id, "block_id": "latch_decide"}],
    })
}

fn submit(user: &str, metadata: &str, reason: &str) -> Value {
    json!({
        "type": "view_submission", "user": {"id": user},
        "view": {"callback_id": "latch_reject", "private_metadata": metadata,
                 "state": {"values": {"reason": {"reason": {"type": "plain_text_input", "value": reason}}}}},
    })
}

/// An async gated call by `token`'s agent; returns the approval id.
async fn gated(proxy: SocketAddr, token: &str, approval: &str) -> String {
    let body = format!(
        r#"{{"gate": true, "to": "bob@example.com", "subject": "<!channel> hi", "approval": {approval}}}"#
    );
    let req = Request::post(format!("http://{proxy}/tools/echo/send"))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .header("prefer", "respond-async")
        .header("latch-reason", "the customer asked for a refund")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let a = send(req).await;
    assert_eq!(a.status, 202, "{:?}", a.body);
    a.json()["approval_id"].as_str().unwrap().to_string()
}

async fn dead_letters(admin_addr: SocketAddr) -> Value {
    let path = "/api/v1/notify/dead-letters";
    admin(admin_addr, "GET", path, "alice-token", "")
        .await
        .json()
}

async fn approval(admin_addr: SocketAddr, id: &str) -> Value {
    admin(
        admin_addr,
        "GET",
        &format!("/api/v1/approvals/{id}"),
        "alice-token",
        "",
    )
    .await
    .json()
}

async fn metrics(admin_addr: SocketAddr) -> String {
    String::from_utf8(call("GET", admin_addr, "/metrics", "").await.body.to_vec()).unwrap()
}

/// The ephemeral messages sent to `user` so far.
fn told(slack: &Stub, user: &str) -> Vec<String> {
    slack
        .calls("/api/chat.postEphemeral")
        .iter()
        .map(|(_, s)| body_json(s))
        .filter(|b| b["user"] == user)
        .map(|b| b["text"].as_str().unwrap().to_string())
        .collect()
}

async fn wait_told(slack: &Stub, user: &str, n: usize) -> Vec<String> {
    for _ in 0..400 {
        let t = told(slack, user);
        if t.len() >= n {
            return t;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{user} was not told {n} things: {:?}", told(slack, user));
}

const LEAD_AND_DIRECTOR: &str =
    r#"{"require": [{"role": "lead", "count": 1}, {"role": "director", "count": 1}]}"#;

#[tokio::test]
async fn slack_posts_edits_in_place_and_decides_under_the_gates_rules() {
    let up = Upstream::start().await;
    let slack = slack_api().await;
    let config = config_text(&up.url(), &slack_config(&slack.url()));
    let latch = TestLatch::start_env(config, TEST_POLICY, &env()).await;
    let (proxy, adm) = (latch.proxy(), latch.admin());

    let id = gated(proxy, "bot3-token", LEAD_AND_DIRECTOR).await;
    // Rate limited once: the retry waits for Retry-After.
    let posts = slack.wait("/api/chat.postMessage", 2).await;
    assert!(
        posts[1].0 - posts[0].0 >= Duration::from_millis(950),
        "Retry-After was not respected"
    );
    let post = &posts[1].1;
    assert_eq!(post.headers["authorization"], "Bearer xoxb-test");
    let msg = body_json(post);
    assert_eq!(msg["channel"], "#approvals");
    let blocks = msg["blocks"].to_string();
    for expected in [
        "echo",
        "bot3",
        "the customer asked for a refund",
        "1× lead",
        "1× director",
        "Decide by",
        "Reject: the call is not sent",
        "latch_approve",
        "latch_reject",
        &format!("https://latch.example.com/#approval={id}"),
        "&lt;!channel&gt; hi",
    ] {
        assert!(
            blocks.contains(expected),
            "{expected} missing from {blocks}"
        );
    }
    assert!(
        !blocks.contains("<!channel>"),
        "agent text must not ping the channel"
    );
    assert!(blocks.contains(&format!("\"value\":\"{id}\"")));

    // Forged, stale or missing signatures: 401, nothing changes.
    let now = chrono::Utc::now().timestamp();
    let approve = click("U0LENA", "latch_approve", &id);
    assert_eq!(
        interact_signed(adm, &approve, now, "not-the-secret")
            .await
            .status,
        401
    );
    assert_eq!(
        interact_signed(adm, &approve, now - 400, SIGNING_SECRET)
            .await
            .status,
        401
    );
    let unsigned = Request::post(format!("http://{adm}/slack/interactions"))
        .body(Full::new(Bytes::from("payload=%7B%7D")))
        .unwrap();
    assert_eq!(send(unsigned).await.status, 401);
    let signed_garbage = {
        let body = "token=nope";
        let req = Request::post(format!("http://{adm}/slack/interactions"))
            .header("x-slack-request-timestamp", now.to_string())
            .header(
                "x-slack-signature",
                latch::notify::slack::sign(SIGNING_SECRET, now, body.as_bytes()),
            )
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        send(req).await
    };
    assert_eq!(signed_garbage.status, 400);
    assert_eq!(approval(adm, &id).await["votes"], json!([]));

    // An unmapped Slack user, the agent's owner and the agent itself are refused.
    assert_eq!(
        interact(adm, &click("U0NOBODY", "latch_approve", &id))
            .await
            .status,
        200
    );
    assert!(wait_told(&slack, "U0NOBODY", 1).await[0].contains("not mapped to a Latch principal"));
    interact(adm, &click("U0OWEN", "latch_approve", &id)).await;
    assert!(wait_told(&slack, "U0OWEN", 1).await[0].contains("Not done"));
    interact(adm, &click("U0BOT3", "latch_approve", &id)).await;
    assert!(wait_told(&slack, "U0BOT3", 1).await[0].contains("Not done"));
    let a = approval(adm, &id).await;
    assert_eq!(
        (a["state"].as_str(), a["votes"].clone()),
        (Some("pending"), json!([]))
    );

    // Lena signs: the message is edited to show it, the call still waits.
    interact(adm, &click("U0LENA", "latch_approve", &id)).await;
    assert!(wait_told(&slack, "U0LENA", 1).await[0].contains("still needs other signatures"));
    let updates = slack.wait("/api/chat.update", 1).await;
    let update = body_json(&updates[0].1);
    assert_eq!(
        (update["channel"].as_str(), update["ts"].as_str()),
        (Some("C0APPROVALS"), Some("1700000000.000100"))
    );
    assert!(update["blocks"]
        .to_string()
        .contains("1× lead (lena signed)"));
    interact(adm, &click("U0LENA", "latch_approve", &id)).await;
    assert!(wait_told(&slack, "U0LENA", 2).await[1].contains("already approved"));

    // Dan rejects: first a dialog for the reason, then the verdict.
    interact(adm, &click("U0DAN", "latch_reject", &id)).await;
    let opened = slack.wait("/api/views.open", 1).await;
    let view = body_json(&opened[0].1);
    assert_eq!(view["trigger_id"], "trig-U0DAN");
    assert_eq!(view["view"]["callback_id"], "latch_reject");
    let meta = view["view"]["private_metadata"]
        .as_str()
        .unwrap()
        .to_string();
    let empty = interact(adm, &submit("U0DAN", &meta, "  ")).await;
    assert_eq!(empty.json()["response_action"], "errors");
    assert_eq!(approval(adm, &id).await["state"], "pending");
    let done = interact(adm, &submit("U0DAN", &meta, "use the sandbox account")).await;
    assert_eq!((done.status.as_u16(), done.body.len()), (200, 0));
    let a = approval(adm, &id).await;
    assert_eq!(
        (a["state"].as_str(), a["outcome"].as_str()),
        (Some("rejected"), Some("use the sandbox account"))
    );

    // The agent gets the reason; the message shows who decided.
    let poll = Request::get(format!("http://{proxy}/latch/v1/approvals/{id}"))
        .header("authorization", "Bearer bot3-token")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let polled = send(poll).await.json();
    assert!(
        polled.to_string().contains("use the sandbox account"),
        "{polled}"
    );
    let mut rejected_shown = false;
    for _ in 0..200 {
        let updates = slack.calls("/api/chat.update");
        if updates.iter().any(|(_, s)| {
            body_json(s)["blocks"]
                .to_string()
                .contains("*Rejected* by dan")
        }) {
            rejected_shown = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        rejected_shown,
        "the Slack message was not edited to show the rejection"
    );
    // Nothing will edit a finished approval's message again: forgotten.
    let db = rusqlite::Connection::open(latch.dir.path().join("latch.db")).unwrap();
    let mut kept = 1;
    for _ in 0..200 {
        kept = db
            .query_row("SELECT COUNT(*) FROM notify_slack", [], |r| {
                r.get::<_, i64>(0)
            })
            .unwrap();
        if kept == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(
        kept, 0,
        "the finished approval's Slack message is still remembered"
    );

    // A click on a closed approval is told so and changes nothing.
    interact(adm, &click("U0LENA", "latch_approve", &id)).await;
    assert!(wait_told(&slack, "U0LENA", 3).await[2].contains("already rejected"));
    assert!(up.requests().is_empty(), "nothing reached the tool");
    let m = metrics(adm).await;
    assert!(m.contains(r#"latch_notify_sent_total{channel="approvals-slack",kind="requested",outcome="retry"} 1"#), "{m}");
    assert!(m.contains(
        r#"latch_notify_sent_total{channel="approvals-slack",kind="requested",outcome="sent"} 1"#
    ));
}

/// Standard Webhooks verification, as a receiver would write it.
fn verify_webhook(s: &Seen) -> bool {
    let h = |k: &str| {
        s.headers
            .get(k)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let key = base64::engine::general_purpose::STANDARD
        .decode(WEBHOOK_SECRET.trim_start_matches("whsec_"))
        .unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{}.{}.", h("webhook-id"), h("webhook-timestamp")).as_bytes());
    mac.update(&s.body);
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    h("webhook-signature")
        .split(' ')
        .any(|sig| sig == format!("v1,{expected}"))
}

#[tokio::test]
async fn webhooks_are_signed_and_pagerduty_pages_on_escalation_then_resolves() {
    let up = Upstream::start().await;
    // The webhook receiver fails once: the event is retried with the same id.
    let hooks = Stub::start(Arc::new(|_: &str, n: usize| {
        if n == 0 {
            (503, vec![], "{}".into())
        } else {
            (204, vec![], String::new())
        }
    }))
    .await;
    let pd = Stub::start(Arc::new(|_: &str, _| {
        (202, vec![], r#"{"status":"success"}"#.into())
    }))
    .await;
    let extra = format!(
        r#"
[notify]
dashboard_url = "https://latch.example.com"
retry_base_ms = 50

[[notify.channels]]
name = "hooks"
kind = "webhook"
url = "{}/latch-events"
secret_env = "HOOK_SECRET"

[[notify.channels]]
name = "oncall"
kind = "pagerduty"
routing_key_env = "PD_KEY"
events_url = "{}/v2/enqueue"
"#,
        hooks.url(),
        pd.url()
    );
    let latch = TestLatch::start_env(config_text(&up.url(), &extra), TEST_POLICY, &env()).await;
    let spec = r#"{"require": [{"role": "lead", "count": 1}], "timeout_s": 1, "on_timeout": "escalate", "notify": ["hooks"],
                   "escalate": [{"require": [{"role": "director", "count": 1}], "timeout_s": 60, "notify": ["oncall"]}]}"#;
    let id = gated(latch.proxy(), AGENT_TOKEN, spec).await;

    let first = hooks.wait("/latch-events", 2).await;
    assert_eq!(
        first[0].1.headers["webhook-id"], first[1].1.headers["webhook-id"],
        "a retry keeps its id"
    );
    assert!(verify_webhook(&first[1].1));
    let requested = body_json(&first[1].1);
    assert_eq!(requested["type"], "approval.requested");
    assert_eq!(requested["data"]["approval_id"], id.as_str());
    assert_eq!(
        requested["data"]["agent_reason"],
        "the customer asked for a refund"
    );
    assert!(
        pd.calls("/v2/enqueue").is_empty(),
        "PagerDuty is for the on-call level"
    );

    // The lead level times out: on-call is paged, keyed by the approval.
    let page = pd.wait("/v2/enqueue", 1).await;
    let trigger = body_json(&page[0].1);
    assert_eq!(trigger["event_action"], "trigger");
    assert_eq!(trigger["dedup_key"], id.as_str());
    assert_eq!(trigger["routing_key"], "R0UTINGKEY");
    assert_eq!(trigger["payload"]["severity"], "error");
    assert_eq!(
        trigger["links"][0]["href"],
        format!("https://latch.example.com/#approval={id}")
    );

    let a = admin(
        latch.admin(),
        "POST",
        &format!("/api/v1/approvals/{id}/approve"),
        "dave-token",
        "{}",
    )
    .await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    let resolved = pd.wait("/v2/enqueue", 2).await;
    let resolve = body_json(&resolved[1].1);
    assert_eq!(
        (
            resolve["event_action"].as_str(),
            resolve["dedup_key"].as_str()
        ),
        (Some("resolve"), Some(id.as_str()))
    );

    let events = hooks.wait("/latch-events", 5).await;
    let types: Vec<String> = events[1..]
        .iter()
        .map(|(_, s)| body_json(s)["type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        types,
        [
            "approval.requested",
            "approval.escalated",
            "approval.decided",
            "approval.executed"
        ]
    );
    assert!(events[1..].iter().all(|(_, s)| verify_webhook(s)));
    let decided = body_json(&events[3].1);
    assert_eq!(
        (
            decided["data"]["outcome"].as_str(),
            decided["data"]["actor"].as_str()
        ),
        (Some("approved"), Some("dave"))
    );
    assert_eq!(body_json(&events[4].1)["data"]["executed"], true);
    assert_eq!(up.requests().len(), 1, "the approved call ran once");
}

type Mails = Arc<Mutex<Vec<(Vec<String>, String)>>>;

/// How the test SMTP server wants to be spoken to.
#[derive(Clone, Copy, PartialEq)]
enum Smtp {
    Plain,
    /// Advertises and requires STARTTLS, then AUTH PLAIN.
    StartTls,
    /// TLS from the first byte (smtps), then AUTH PLAIN.
    Wrapper,
}

fn tls_acceptor() -> tokio_rustls::TlsAcceptor {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls");
    let config = latch::tls::server_config(&latch::config::TlsConfig {
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
        client_ca: None,
        client_auth_required: false,
    })
    .unwrap();
    tokio_rustls::TlsAcceptor::from(config)
}

/// A small SMTP server: records each message's envelope and data, and
/// the AUTH line as `AUTH …` in the envelope.
async fn smtp_server(mode: Smtp) -> (SocketAddr, Mails) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mails: Mails = Arc::default();
    let m = mails.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let m = m.clone();
            tokio::spawn(async move {
                match mode {
                    Smtp::Wrapper => {
                        let tls = tls_acceptor().accept(sock).await.unwrap();
                        smtp_session(Box::new(tls), m, None, true, true).await;
                    }
                    Smtp::StartTls => {
                        smtp_session(Box::new(sock), m, Some(tls_acceptor()), false, true).await
                    }
                    Smtp::Plain => smtp_session(Box::new(sock), m, None, false, true).await,
                }
            });
        }
    });
    (addr, mails)
}

trait Conn: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Conn for T {}

/// One SMTP session; `greet` is false after STARTTLS (no new greeting).
async fn smtp_session(
    sock: Box<dyn Conn>,
    m: Mails,
    starttls: Option<tokio_rustls::TlsAcceptor>,
    secure: bool,
    greet: bool,
) {
    let mut io = BufReader::new(sock);
    if greet {
        io.get_mut()
            .write_all(b"220 test.local ESMTP ready\r\n")
            .await
            .unwrap();
    }
    let mut envelope = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        if io.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let cmd = line.trim_end().to_string();
        let upper = cmd.to_ascii_uppercase();
        let reply: String = if upper.starts_with("EHLO") {
            match (&starttls, secure) {
                (Some(_), false) => "250-test.local\r\n250 STARTTLS\r\n".into(),
                (_, true) => "250-test.local\r\n250 AUTH PLAIN LOGIN\r\n".into(),
                _ => "250-test.local\r\n250 8BITMIME\r\n".into(),
            }
        } else if upper == "STARTTLS" {
            io.get_mut().write_all(b"220 go ahead\r\n").await.unwrap();
            let acceptor = starttls.clone().unwrap();
            let tls = acceptor.accept(io.into_inner()).await.unwrap();
            return Box::pin(smtp_session(Box::new(tls), m, None, true, false)).await;
        } else if upper.starts_with("AUTH") {
            envelope.push(cmd.clone());
            "235 accepted\r\n".into()
        } else if upper.starts_with("MAIL FROM:") && starttls.is_some() && !secure {
            "530 STARTTLS first\r\n".into()
        } else if upper.starts_with("RCPT TO:") {
            envelope.push(cmd[8..].trim().trim_matches(['<', '>']).to_string());
            "250 OK\r\n".into()
        } else if upper == "DATA" {
            io.get_mut().write_all(b"354 go ahead\r\n").await.unwrap();
            let mut data = String::new();
            loop {
                line.clear();
                io.read_line(&mut line).await.unwrap();
                if line.trim_end() == "." {
                    break;
                }
                data.push_str(line.trim_end_matches(['\r', '\n']));
                data.push('\n');
            }
            m.lock()
                .unwrap()
                .push((std::mem::take(&mut envelope), data));
            "250 queued\r\n".into()
        } else if upper == "QUIT" {
            io.get_mut().write_all(b"221 bye\r\n").await.unwrap();
            return;
        } else {
            "250 OK\r\n".into()
        };
        io.get_mut().write_all(reply.as_bytes()).await.unwrap();
    }
}

async fn first_mail(mails: &Mails) -> (Vec<String>, String) {
    for _ in 0..400 {
        if let Some(m) = mails.lock().unwrap().first().cloned() {
            return m;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("no mail arrived");
}

#[tokio::test]
async fn email_goes_to_the_roles_and_fixed_addresses_with_a_link_but_no_decision_link() {
    let up = Upstream::start().await;
    let (smtp, mails) = smtp_server(Smtp::Plain).await;
    let extra = format!(
        r#"
[notify]
dashboard_url = "https://latch.example.com"
default = ["leads-mail"]

[[notify.channels]]
name = "leads-mail"
kind = "email"
smtp_url = "smtp://{smtp}"
from = "latch@example.com"
to = ["audit@example.com"]
to_roles = ["lead"]
{SLACK_PEOPLE}"#
    );
    let latch = TestLatch::start_env(config_text(&up.url(), &extra), TEST_POLICY, &env()).await;
    let id = gated(latch.proxy(), AGENT_TOKEN, LEAD_AND_DIRECTOR).await;
    let (rcpt, data) = first_mail(&mails).await;
    assert_eq!(rcpt, ["audit@example.com", "lena@example.com"]);
    // Quoted-printable: join soft line breaks, decode "=3D".
    let unfolded = data.replace("=\n", "").replace("=3D", "=");
    assert!(
        data.contains("Subject: [Latch] Approval needed (high): echo POST /"),
        "{data}"
    );
    assert!(data.contains("multipart/alternative"));
    assert!(data.contains("text/plain") && data.contains("text/html"));
    assert!(unfolded.contains(&format!("https://latch.example.com/#approval={id}")));
    assert!(
        !unfolded.contains("/approve"),
        "no one-click decision links in mail"
    );
    assert!(unfolded.contains("the customer asked for a refund"));
}

#[tokio::test]
async fn undeliverable_messages_wait_out_restarts_become_dead_letters_and_never_block_the_call() {
    let up = Upstream::start().await;
    let down = free_addr(); // nothing listens here yet
    let channel = |url: &str, attempts: u32| {
        format!(
            r#"
[notify]
default = ["hooks"]
retry_base_ms = 50
max_attempts = {attempts}

[[notify.channels]]
name = "hooks"
kind = "webhook"
url = "{url}/events"
secret_env = "HOOK_SECRET"
"#
        )
    };
    let mut latch = TestLatch::start_env(
        config_text(&up.url(), &channel(&format!("http://{down}"), 1000)),
        TEST_POLICY,
        &env(),
    )
    .await;
    let id = gated(
        latch.proxy(),
        AGENT_TOKEN,
        r#"{"require": [{"role": "lead", "count": 1}]}"#,
    )
    .await;
    // The receiver is down: the call waits for its reviewer regardless.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(approval(latch.admin(), &id).await["state"], "pending");
    assert!(metrics(latch.admin())
        .await
        .contains("latch_notify_queue_depth 1"));

    // Restart with the receiver up: the stored message is delivered.
    let hooks = Stub::start(Arc::new(|_: &str, _| (200, vec![], "{}".into()))).await;
    latch.config_text = config_text(&up.url(), &channel(&hooks.url(), 1000));
    latch.restart().await;
    let got = hooks.wait("/events", 1).await;
    assert_eq!(body_json(&got[0].1)["data"]["approval_id"], id.as_str());

    // A receiver that keeps failing: given up after max_attempts, kept as a dead letter.
    let broken = Stub::start(Arc::new(|_: &str, n: usize| {
        if n < 2 {
            (500, vec![], "{}".into())
        } else {
            (200, vec![], "{}".into())
        }
    }))
    .await;
    latch.config_text = config_text(&up.url(), &channel(&broken.url(), 2));
    latch.restart().await;
    let approved = admin(
        latch.admin(),
        "POST",
        &format!("/api/v1/approvals/{id}/approve"),
        "alice-token",
        "{}",
    )
    .await;
    assert_eq!(approved.status, 200);
    wait_state(latch.admin(), &id, "executed").await;
    assert_eq!(
        up.requests().len(),
        1,
        "the call ran although its notification failed"
    );
    let mut dead = Value::Null;
    for _ in 0..400 {
        let d = dead_letters(latch.admin()).await;
        if d["dead_letters"].as_array().is_some_and(|l| !l.is_empty()) {
            dead = d["dead_letters"][0].clone();
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(dead["attempts"], 2, "{dead}");
    assert_eq!(dead["last_error"], "HTTP 500");
    assert_eq!(dead["payload"]["type"], "approval.decided");
    let mut gauge = String::new();
    for _ in 0..200 {
        gauge = metrics(latch.admin()).await;
        if gauge.contains("latch_notify_dead_letters 1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(gauge.contains("latch_notify_dead_letters 1"), "{gauge}");
    let forbidden = admin(latch.admin(), "GET", "/api/v1/notify/dead-letters", "", "").await;
    assert_eq!(forbidden.status, 401);

    // Retried by hand: delivered this time; the list empties.
    let dead_id = dead["id"].as_i64().unwrap();
    let retry_path = format!("/api/v1/notify/dead-letters/{dead_id}/retry");
    let retry = admin(latch.admin(), "POST", &retry_path, "alice-token", "").await;
    assert_eq!(retry.status, 200);
    let again = admin(latch.admin(), "POST", &retry_path, "alice-token", "").await;
    assert_eq!(again.status, 404);
    // The retried message keeps its webhook-id, so receivers can drop
    // duplicates; the executed event follows it.
    let delivered = broken.wait("/events", 4).await;
    let decided_id = &delivered[0].1.headers["webhook-id"];
    let later: Vec<(String, bool)> = delivered[2..]
        .iter()
        .map(|(_, s)| {
            (
                body_json(s)["type"].as_str().unwrap().to_string(),
                &s.headers["webhook-id"] == decided_id,
            )
        })
        .collect();
    assert!(
        later.contains(&("approval.decided".into(), true)),
        "{later:?}"
    );
    assert!(
        later.contains(&("approval.executed".into(), false)),
        "{later:?}"
    );
    for _ in 0..200 {
        let d = dead_letters(latch.admin()).await;
        if d["dead_letters"] == json!([]) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the retried dead letter stayed");
}

#[tokio::test]
async fn email_goes_over_starttls_and_smtps_with_credentials_from_the_environment() {
    let up = Upstream::start().await;
    let ca = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls/ca.pem");
    for (mode, scheme) in [
        (Smtp::StartTls, "smtp://localhost:{port}?tls=starttls"),
        (Smtp::Wrapper, "smtps://localhost:{port}"),
    ] {
        let (smtp, mails) = smtp_server(mode).await;
        let url = scheme.replace("{port}", &smtp.port().to_string());
        let extra = format!(
            r#"
[notify]
default = ["mail"]

[[notify.channels]]
name = "mail"
kind = "email"
smtp_url = "{url}"
username = "latch"
password_env = "SMTP_PASSWORD"
ca_file = "{}"
from = "latch@example.com"
to = ["oncall@example.com"]
"#,
            ca.display()
        );
        let latch = TestLatch::start_env(
            config_text(&up.url(), &extra),
            TEST_POLICY,
            &[("SMTP_PASSWORD", "hunter2")],
        )
        .await;
        gated(latch.proxy(), AGENT_TOKEN, LEAD_AND_DIRECTOR).await;
        let (envelope, data) = first_mail(&mails).await;
        let plain = base64::engine::general_purpose::STANDARD.encode("\0latch\0hunter2");
        assert_eq!(
            envelope,
            [
                format!("AUTH PLAIN {plain}"),
                "oncall@example.com".to_string()
            ],
            "{url}"
        );
        assert!(data.contains("Approval needed"));
    }
}

#[tokio::test]
async fn break_glass_is_announced_to_the_default_channels() {
    let up = Upstream::start().await;
    let hooks = Stub::start(Arc::new(|_: &str, _| (204, vec![], String::new()))).await;
    let extra = format!(
        "[notify]\ndefault = [\"hooks\"]\n\n[[notify.channels]]\nname = \"hooks\"\nkind = \"webhook\"\nurl = \"{}/events\"\nsecret_env = \"HOOK_SECRET\"\n",
        hooks.url()
    );
    let latch = TestLatch::start_env(config_text(&up.url(), &extra), TEST_POLICY, &env()).await;
    let id = gated(latch.proxy(), AGENT_TOKEN, LEAD_AND_DIRECTOR).await;
    let path = format!("/api/v1/approvals/{id}/override");
    let o = admin(
        latch.admin(),
        "POST",
        &path,
        "olga-token",
        r#"{"reason": "payments are down"}"#,
    )
    .await;
    assert_eq!(o.status, 200, "{:?}", o.body);
    let events = hooks.wait("/events", 4).await;
    let types: Vec<Value> = events.iter().map(|(_, s)| body_json(s)).collect();
    let announced = types
        .iter()
        .find(|e| e["type"] == "break_glass.used")
        .expect("no break-glass event");
    assert_eq!(announced["data"]["actor"], "olga");
    assert_eq!(announced["data"]["reason"], "payments are down");
    assert!(types
        .iter()
        .any(|e| e["type"] == "approval.decided" && e["data"]["outcome"] == "overridden"));
}
