//! The reviewers' dashboard in a real headless Chromium, driven over
//! WebDriver (chromedriver): log in, watch held calls appear live, approve,
//! reject and modify them, and check what the agent and the upstream saw.
//! Without chromedriver the browser test is skipped, unless
//! `LATCH_REQUIRE_BROWSER=1` (set by `.ci/run`, which installs it).

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

use common::*;

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

struct Driver {
    base: String,
    session: String,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    _process: Proc,
    _profile: tempfile::TempDir,
}

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Driver {
    async fn start() -> Option<Driver> {
        if !std::path::Path::new(CHROMEDRIVER).exists() {
            assert!(
                std::env::var("LATCH_REQUIRE_BROWSER").as_deref() != Ok("1"),
                "LATCH_REQUIRE_BROWSER=1 but {CHROMEDRIVER} is missing"
            );
            eprintln!("skipping the browser test: {CHROMEDRIVER} is not installed (apt-get install chromium chromium-driver)");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let process = Proc(child);
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let profile = tempfile::tempdir().unwrap();
        let mut d = Driver {
            base: format!("http://{addr}"),
            session: String::new(),
            client: Client::builder(TokioExecutor::new()).build_http(),
            _process: process,
            _profile: profile,
        };
        let args = json!([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1280,900",
            format!("--user-data-dir={}", d._profile.path().display()),
        ]);
        let caps = json!({"capabilities": {"alwaysMatch": {"browserName": "chrome",
                          "goog:chromeOptions": {"binary": CHROMIUM, "args": args}}}});
        let v = d.raw("POST", "/session", Some(caps)).await;
        d.session = v["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {v}"))
            .to_string();
        Some(d)
    }

    async fn raw(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let req = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(
                body.map(|b| b.to_string()).unwrap_or_default(),
            )))
            .unwrap();
        let resp = self.client.request(req).await.unwrap();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        v["value"].clone()
    }

    async fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.raw(method, &format!("/session/{}{path}", self.session), body)
            .await
    }

    async fn go(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({"url": url}))).await;
    }

    async fn find(&self, css: &str) -> Option<String> {
        let v = self
            .cmd(
                "POST",
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        v[ELEMENT].as_str().map(str::to_string)
    }

    /// Wait (10 s at most) for an element to exist.
    async fn wait(&self, css: &str) -> String {
        for _ in 0..200 {
            if let Some(e) = self.find(css).await {
                return e;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{css} never appeared");
    }

    /// Click `css`, finding it again if live updates replaced it between
    /// the find and the click (a stale element).
    async fn click(&self, css: &str) {
        for _ in 0..50 {
            let e = self.wait(css).await;
            let r = self
                .cmd("POST", &format!("/element/{e}/click"), Some(json!({})))
                .await;
            if r.get("error").is_none() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{css} could not be clicked");
    }

    async fn type_into(&self, css: &str, text: &str) {
        let e = self.wait(css).await;
        self.cmd(
            "POST",
            &format!("/element/{e}/value"),
            Some(json!({"text": text})),
        )
        .await;
    }

    async fn text(&self, css: &str) -> String {
        let e = self.wait(css).await;
        self.cmd("GET", &format!("/element/{e}/text"), None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    async fn script(&self, script: &str, args: Value) -> Value {
        self.cmd(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": args})),
        )
        .await
    }

    async fn quit(&self) {
        self.raw("DELETE", &format!("/session/{}", self.session), None)
            .await;
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let clean: Vec<u8> = s
        .bytes()
        .filter(|c| !matches!(c, b'=' | b'\n' | b'\r'))
        .collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for chunk in clean.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, c)| acc | (value(*c) as u32) << (18 - 6 * i));
        out.push((n >> 16) as u8);
        if chunk.len() > 2 {
            out.push((n >> 8) as u8);
        }
        if chunk.len() > 3 {
            out.push(n as u8);
        }
    }
    out
}

fn held_call(proxy: SocketAddr, body: &'static str) -> tokio::task::JoinHandle<Answer> {
    tokio::spawn(async move { call("POST", proxy, "/tools/echo/send", body).await })
}

/// The id on the one pending card (waits for it to arrive live).
async fn pending_card(d: &Driver, not: &[String]) -> String {
    for _ in 0..200 {
        let ids = d
            .script(
                "return Array.from(document.querySelectorAll('#pending .card')).map(c => c.dataset.id);",
                json!([]),
            )
            .await;
        if let Some(id) = ids
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .find(|id| !not.iter().any(|n| n == id))
        {
            return id.to_string();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no held call appeared on the dashboard");
}

/// Log in as `who` (token `<who>-token`) and wait for the page to say so.
async fn login(d: &Driver, dashboard: &str, who: &str) {
    d.go(dashboard).await;
    d.type_into("#token", &format!("{who}-token")).await;
    d.click("#login-button").await;
    d.wait("#whoami").await;
    for _ in 0..100 {
        if d.text("#whoami").await.contains(who) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(d.text("#whoami").await.contains(who));
}

/// Wait (10 s at most) until the text of `css` contains `needle`.
async fn wait_text(d: &Driver, css: &str, needle: &str) -> String {
    let mut text = String::new();
    for _ in 0..200 {
        text = d.text(css).await;
        if text.contains(needle) {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{css} never said {needle:?}: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reviewers_decide_held_calls_in_a_real_browser() {
    let Some(d) = Driver::start().await else {
        return;
    };
    let up = Upstream::start().await;
    let latch = TestLatch::start(&up.url()).await;
    let dashboard = format!("http://{}/", latch.admin());

    login(&d, &dashboard, "alice").await;

    // A held call appears without a reload; approving releases it with the upstream's answer.
    const LEAD: &str = r#"{"gate": true, "to": "bob@example.com", "approval": {"require": [{"role": "lead", "count": 1}]}}"#;
    let agent = held_call(latch.proxy(), LEAD);
    let first = pending_card(&d, &[]).await;
    d.click(&format!(".card[data-id=\"{first}\"]")).await;
    d.click("#approve").await;
    let a = tokio::time::timeout(Duration::from_secs(10), agent)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(a.json()["upstream"], "ok");

    // Reject with a reason: the agent gets it.
    let agent = held_call(latch.proxy(), LEAD);
    let second = pending_card(&d, std::slice::from_ref(&first)).await;
    d.click(&format!(".card[data-id=\"{second}\"]")).await;
    d.click("#reject").await; // without a reason: refused in the page
    assert!(d.text("#message").await.contains("needs a reason"));
    d.type_into("#reject-reason", "wrong customer").await;
    d.click("#reject").await;
    let a = tokio::time::timeout(Duration::from_secs(10), agent)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a.status, 403);
    assert_eq!(a.json()["reason"], "wrong customer");

    // Modify: edit the JSON, see the diff, approve the edited body.
    let agent = held_call(latch.proxy(), LEAD);
    let third = pending_card(&d, &[first.clone(), second.clone()]).await;
    d.click(&format!(".card[data-id=\"{third}\"]")).await;
    d.click("#modify-details summary").await;
    d.script(
        "const e = document.getElementById('modify-editor'); e.value = arguments[0]; e.dispatchEvent(new Event('input'));",
        json!([r#"{"to": "carol@example.com", "subject": "fixed"}"#]),
    )
    .await;
    d.click("#modify-preview").await;
    let diff = d.text("#modify-diff").await;
    assert!(diff.contains("+   \"to\": \"carol@example.com\""), "{diff}");
    assert!(diff.contains("-   \"to\": \"bob@example.com\""), "{diff}");
    d.click("#modify-submit").await;
    let a = tokio::time::timeout(Duration::from_secs(10), agent)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a.status, 200);
    let sent: Value = serde_json::from_slice(&up.requests().last().unwrap().body).unwrap();
    assert_eq!(sent, json!({"to": "carol@example.com", "subject": "fixed"}));

    // The audit trail of the approval is on its page.
    let mut audit = String::new();
    for _ in 0..100 {
        audit = d.text("#audit").await;
        if audit.contains("modify") && audit.contains("execute") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(audit.contains("alice · modify"), "{audit}");

    // Approve and grant, narrowed to the recipient: the same call then
    // passes without a human; the Grants tab lists the grant and revoking
    // it there restores the gate.
    let agent = held_call(latch.proxy(), LEAD);
    let fourth = pending_card(&d, &[first.clone(), second.clone(), third.clone()]).await;
    d.click(&format!(".card[data-id=\"{fourth}\"]")).await;
    d.click("#grant-details summary").await;
    d.click(".grant-arg[value=\"to\"]").await;
    d.click("#approve-grant").await;
    let a = tokio::time::timeout(Duration::from_secs(10), agent)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a.status, 200, "{:?}", a.body);
    let granted = call("POST", latch.proxy(), "/tools/echo/send", LEAD).await;
    assert_eq!(granted.status, 200, "{:?}", granted.body);
    let grant_id = granted.header("latch-grant").to_string();
    assert_eq!(grant_id, format!("grant-{fourth}"));
    d.click("#tab-grants").await;
    d.wait(&format!(".grant[data-id=\"{grant_id}\"]")).await;
    assert!(d
        .text("#grants")
        .await
        .contains("only with to = \"bob@example.com\""));
    d.click(".grant .revoke").await;
    let mut revoked = false;
    for _ in 0..100 {
        let g = admin(
            latch.admin(),
            "GET",
            &format!("/api/v1/grants/{grant_id}"),
            "alice-token",
            "",
        )
        .await;
        if g.json()["status"] == "revoked" {
            revoked = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(revoked, "the dashboard's revoke did not land");
    let req = agent_request("POST", latch.proxy(), "/tools/echo/send")
        .header("content-type", "application/json")
        .header("prefer", "respond-async")
        .body(Full::new(Bytes::from_static(LEAD.as_bytes())))
        .unwrap();
    assert_eq!(send(req).await.status, 202, "gated again after revoking");
    d.go(&dashboard).await;
    let summary = d.text("#automation-rate").await;
    assert!(summary.ends_with('%'), "{summary}");
    assert!(
        d.text("#summary").await.contains("1 granted"),
        "{}",
        d.text("#summary").await
    );

    // Phone width: no horizontal scrolling; keep a screenshot as an artifact.
    let _agent = held_call(latch.proxy(), LEAD);
    d.cmd(
        "POST",
        "/window/rect",
        Some(json!({"width": 375, "height": 812})),
    )
    .await;
    d.go(&dashboard).await;
    pending_card(&d, &[first, second, third]).await;
    let widths = d
        .script(
            "return [document.documentElement.scrollWidth, window.innerWidth];",
            json!([]),
        )
        .await;
    assert!(
        widths[0].as_i64().unwrap() <= widths[1].as_i64().unwrap(),
        "horizontal scroll at phone width: {widths}"
    );
    let png = base64_decode(d.cmd("GET", "/screenshot", None).await.as_str().unwrap());
    assert_eq!(&png[..4], b"\x89PNG");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("dashboard-375px.png"), png).unwrap();
    d.quit().await;
}

fn session_cookie(a: &Answer) -> String {
    a.header("set-cookie")
        .split(';')
        .next()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn a_post_without_the_csrf_token_is_refused() {
    let up = Upstream::start().await;
    let latch = TestLatch::start(&up.url()).await;
    let login = send(
        http::Request::post(format!("http://{}/login", latch.admin()))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from_static(b"token=alice-token")))
            .unwrap(),
    )
    .await;
    assert_eq!(login.status, 303);
    let set = login.header("set-cookie").to_string();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    let cookie = session_cookie(&login);
    let bad = send(
        http::Request::post(format!("http://{}/login", latch.admin()))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from_static(b"token=agent-token")))
            .unwrap(),
    )
    .await;
    assert_eq!(
        bad.header("location"),
        "/?login=failed",
        "agents cannot log in"
    );

    let held = send(
        agent_request("POST", latch.proxy(), "/tools/echo/x")
            .header("prefer", "respond-async")
            .body(Full::new(Bytes::from_static(
                br#"{"gate": true, "approval": {"require": [{"role": "lead", "count": 1}]}}"#,
            )))
            .unwrap(),
    )
    .await;
    let id = held.json()["approval_id"].as_str().unwrap().to_string();
    let with_cookie = |csrf: Option<String>| {
        let mut r = http::Request::post(format!(
            "http://{}/api/v1/approvals/{id}/approve",
            latch.admin()
        ))
        .header("cookie", cookie.clone())
        .header("content-type", "application/json");
        if let Some(t) = csrf {
            r = r.header("x-csrf-token", t);
        }
        r.body(Full::new(Bytes::from_static(b"{}"))).unwrap()
    };
    let refused = send(with_cookie(None)).await;
    assert_eq!(refused.status, 403);
    assert_eq!(refused.json()["error"], "csrf");
    let forged = send(with_cookie(Some("guessed".into()))).await;
    assert_eq!(forged.status, 403);
    assert!(up.requests().is_empty());

    let session = send(
        http::Request::get(format!("http://{}/api/v1/session", latch.admin()))
            .header("cookie", cookie.clone())
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await
    .json();
    assert_eq!(session["principal"], "alice");
    let ok = send(with_cookie(session["csrf"].as_str().map(str::to_string))).await;
    assert_eq!(ok.status, 200, "{:?}", ok.body);

    // Logging out needs the token too, and ends the session.
    let logout = |csrf: &str| {
        http::Request::post(format!("http://{}/logout", latch.admin()))
            .header("cookie", cookie.clone())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(format!("csrf={csrf}"))))
            .unwrap()
    };
    assert_eq!(send(logout("nope")).await.status, 403);
    assert_eq!(
        send(logout(session["csrf"].as_str().unwrap())).await.status,
        303
    );
    let after = send(
        http::Request::get(format!("http://{}/api/v1/approvals", latch.admin()))
            .header("cookie", cookie)
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(after.status, 401);
}

#[tokio::test]
async fn the_dashboard_is_self_contained_and_locked_down() {
    let up = Upstream::start().await;
    let latch = TestLatch::start(&up.url()).await;
    let page = call("GET", latch.admin(), "/", "").await;
    assert_eq!(page.status, 200);
    let html = String::from_utf8_lossy(&page.body);
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no external assets"
    );
    let csp = page.header("content-security-policy");
    assert!(
        csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    let nonce = csp
        .split("'nonce-")
        .nth(1)
        .unwrap()
        .split('\'')
        .next()
        .unwrap();
    assert!(html.contains(&format!("<script nonce=\"{nonce}\">")));
}

/// Open the `reply` prompt until its labels say `labels` (live updates
/// re-render the list, so a click can land on a card just replaced).
async fn open_prompt(d: &Driver, labels: &str) {
    for _ in 0..50 {
        d.click(".prompt[data-name=\"reply\"]").await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        if let Some(e) = d.find("#prompt-labels").await {
            let text = d.cmd("GET", &format!("/element/{e}/text"), None).await;
            if text.as_str().is_some_and(|t| t.contains(labels)) {
                return;
            }
        }
    }
    panic!("the prompt never showed {labels:?}");
}

/// The Prompts view: versions with their checks, a diff between any two,
/// the label history, and a pending promotion that opens as an approval
/// showing what would change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reviewers_review_prompt_promotions_in_a_real_browser() {
    let Some(d) = Driver::start().await else {
        return;
    };
    let up = Upstream::start().await;
    let latch = TestLatch::start_shipped(&up.url(), PROMPT_PEOPLE).await;
    let adm = latch.admin();
    let push = |token: &'static str, template: &'static str| async move {
        let body = json!({"name": "reply", "template": template, "variables": ["customer"],
                          "checks": [{"name": "greets", "vars": {"customer": "Ann"}, "expect": {"contains": ["Dear Ann"]}}]});
        let r = admin(adm, "POST", "/api/v1/prompts", token, &body.to_string()).await;
        assert_eq!(r.status, 201, "{:?}", r.body);
    };
    push("paula-token", "Dear {{customer}},\nwe are on it.").await;
    push(
        "ed-token",
        "Dear {{customer}},\nwe are on it and will write within a day.",
    )
    .await;
    let staging = admin(
        adm,
        "POST",
        "/api/v1/prompts/reply/labels/staging",
        "paula-token",
        r#"{"version": 1}"#,
    )
    .await;
    assert_eq!(staging.status, 200, "{:?}", staging.body);
    let held = admin(
        adm,
        "POST",
        "/api/v1/prompts/reply/labels/production",
        "paula-token",
        r#"{"version": 2}"#,
    )
    .await;
    assert_eq!(held.status, 202, "{:?}", held.body);
    let approval = held.json()["approval_id"].as_str().unwrap().to_string();

    let dashboard = format!("http://{adm}/");
    login(&d, &dashboard, "sam").await;
    d.click("#tab-prompts").await;
    open_prompt(&d, "staging → v1").await;
    let versions = d.text("#prompt-versions").await;
    assert!(
        versions.contains("v2") && versions.contains("ed"),
        "{versions}"
    );
    assert!(d.text("#prompt-checks").await.contains("greets: passed"));
    assert!(d
        .text("#prompt-history")
        .await
        .contains("staging – → v1 by paula"));

    // Any two versions side by side.
    d.script(
        "document.getElementById('diff-from').value = '1';",
        json!([]),
    )
    .await;
    d.click("#diff-show").await;
    let diff = wait_text(&d, "#prompt-diff", "+1 −1 lines").await;
    assert!(
        diff.contains("+ we are on it and will write within a day."),
        "{diff}"
    );
    assert!(diff.contains("- we are on it."), "{diff}");

    // The pending promotion opens as an approval with the new text shown.
    d.click(&format!(".pending-promotion[data-id=\"{approval}\"]"))
        .await;
    let shown = wait_text(&d, "#promotion-diff", "New on production: v2").await;
    assert!(
        shown.contains("+ we are on it and will write within a day."),
        "{shown}"
    );
    assert!(
        d.find("#modify-details").await.is_none(),
        "a promotion is not modified"
    );
    d.click("#approve").await;
    wait_text(&d, "#detail", "signed: sam").await;
    for token in ["sofia-token", "emma-token"] {
        let path = format!("/api/v1/approvals/{approval}/approve");
        assert_eq!(admin(adm, "POST", &path, token, "{}").await.status, 200);
    }
    wait_state(adm, &approval, "executed").await;
    d.click("#tab-prompts").await;
    open_prompt(&d, "production → v2").await;
    d.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_from_a_notification_opens_its_approval_and_dead_letters_are_retried() {
    let Some(d) = Driver::start().await else {
        return;
    };
    let up = Upstream::start().await;
    // The receiver fails the first message (given up at once), then recovers.
    let hooks = Stub::start(std::sync::Arc::new(|_: &str, n: usize| {
        if n == 0 {
            (500, vec![], "{}".into())
        } else {
            (200, vec![], "{}".into())
        }
    }))
    .await;
    let extra = format!(
        "[notify]\ndefault = [\"hooks\"]\nmax_attempts = 1\n\n[[notify.channels]]\nname = \"hooks\"\nkind = \"webhook\"\nurl = \"{}/events\"\nsecret_env = \"HOOK_SECRET\"\n",
        hooks.url()
    );
    let latch = TestLatch::start_env(
        config_text(&up.url(), &extra),
        TEST_POLICY,
        &[("HOOK_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")],
    )
    .await;
    const LEAD: &str = r#"{"gate": true, "to": "link@example.com", "approval": {"require": [{"role": "lead", "count": 1}]}}"#;
    let _agent = held_call(latch.proxy(), LEAD);
    let id = wait_pending(latch.admin()).await;
    hooks.wait("/events", 1).await;

    // The link in the message survives the login and opens the call.
    d.go(&format!("http://{}/#approval={id}", latch.admin()))
        .await;
    d.type_into("#token", "alice-token").await;
    d.click("#login-button").await;
    wait_text(&d, "#detail", "link@example.com").await;

    d.click("#tab-notify").await;
    wait_text(&d, "#dead", "approval.requested").await;
    assert!(d.text("#dead").await.contains("HTTP 500"));
    d.click(".dead .retry").await;
    hooks.wait("/events", 2).await;
    for _ in 0..200 {
        if d.find(".dead").await.is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        d.find(".dead").await.is_none(),
        "the retried letter is still listed"
    );
    d.quit().await;
}
