use std::collections::BTreeMap;
use std::path::Path;

use super::*;
use crate::digest::{hex, sha256};

fn parse(text: &str) -> Result<Config, Vec<ConfigError>> {
    let mut env = BTreeMap::new();
    env.insert("BOT_TOKEN".to_string(), "secret".to_string());
    env.insert("API_KEY".to_string(), "Bearer upstream".to_string());
    Config::parse(Path::new("/etc/latch/latch.toml"), text, &env)
}

fn errors(text: &str) -> Vec<String> {
    match parse(text) {
        Ok(_) => panic!("config should have been refused"),
        Err(errs) => errs.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn defaults_and_relative_paths() {
    let c = parse("[store]\nurl = \"sqlite://data/latch.db\"\n").unwrap();
    assert_eq!(c.proxy.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(c.admin.listen.to_string(), "127.0.0.1:8081");
    assert_eq!(c.proxy.hold.as_secs(), 50);
    assert_eq!(
        c.store,
        StoreConfig::Sqlite("/etc/latch/data/latch.db".into())
    );
    assert_eq!(c.policy.entrypoint, "data.latch.decision");
    assert_eq!(c.policy.dir, Path::new("/etc/latch/policies"));
}

#[test]
fn unknown_key_is_named_with_its_line() {
    let errs = errors("[proxy]\nlisten = \"127.0.0.1:1\"\nholds = 3\n");
    assert!(errs[0].starts_with("/etc/latch/latch.toml:3:"), "{errs:?}");
    assert!(errs[0].contains("holds"), "{errs:?}");
}

#[test]
fn bad_values_name_key_and_line() {
    let errs = errors(
        "[proxy]\nlisten = \"nope\"\n\n[[routes]]\nname = \"a\"\nprefix = \"/a\"\nupstream = \"ftp://x\"\n",
    );
    assert!(
        errs.iter().any(|e| e.contains(":2: proxy.listen")),
        "{errs:?}"
    );
    assert!(
        errs.iter().any(|e| e.contains(":7: routes[0].upstream")),
        "{errs:?}"
    );
}

#[test]
fn secrets_come_from_env() {
    let c = parse(
        "[[principals]]\nid = \"bot\"\ntoken_env = \"BOT_TOKEN\"\n\n[[routes]]\nname = \"a\"\nprefix = \"/a/\"\nupstream = \"http://127.0.0.1:9\"\ninject_headers = { Authorization = \"env:API_KEY\", x-version = \"2\" }\n",
    )
    .unwrap();
    assert_eq!(c.principals[0].token_sha256, Some(sha256(b"secret")));
    let r = &c.routes[0];
    assert_eq!(r.prefix, "/a");
    assert_eq!(r.tool, "a");
    assert_eq!(r.inject_headers[0].0.as_str(), "authorization");
    assert_eq!(r.inject_headers[0].1, "Bearer upstream");
    assert_eq!(r.inject_headers[1].1, "2");
}

#[test]
fn missing_env_is_an_error() {
    let errs = errors("[[principals]]\nid = \"bot\"\ntoken_env = \"NOT_SET\"\n");
    assert!(
        errs[0].contains(":1: principals[0].token_env: environment variable NOT_SET is not set"),
        "{errs:?}"
    );
}

#[test]
fn duplicate_and_ambiguous_routes_are_refused() {
    let errs = errors(
        "[[routes]]\nname = \"a\"\nprefix = \"/a\"\nupstream = \"http://h\"\n[[routes]]\nname = \"a\"\nprefix = \"/a/../b\"\nupstream = \"http://h\"\n",
    );
    assert!(
        errs.iter().any(|e| e.contains("routes[1].name")),
        "{errs:?}"
    );
    assert!(
        errs.iter().any(|e| e.contains("routes[1].prefix")),
        "{errs:?}"
    );
}

#[test]
fn credentials_never_enter_policy_input() {
    let errs = errors("[policy]\ninput_headers = [\"Authorization\"]\n");
    assert!(errs[0].contains("policy.input_headers"), "{errs:?}");
}

#[test]
fn token_sha256_must_be_hex() {
    let errs = errors("[[principals]]\nid = \"x\"\ntoken_sha256 = \"abc\"\n");
    assert!(errs[0].contains("principals[0].token_sha256"), "{errs:?}");
    let good = hex(&sha256(b"t"));
    let c = parse(&format!(
        "[[principals]]\nid = \"x\"\ntoken_sha256 = \"{good}\"\n"
    ))
    .unwrap();
    assert_eq!(c.principals[0].token_sha256, Some(sha256(b"t")));
}

#[test]
fn hardening_keys_are_validated_with_their_lines() {
    let errs = errors(
        "[audit]\nkey_env = \"BOT_TOKEN\"\n\n[admin]\nmetrics_token_env = \"NOPE\"\nmax_connections = 0\n\n[gate]\nmax_pending_per_agent = 0\n\n[[routes]]\nname = \"a\"\nprefix = \"/a\"\nupstream = \"http://x\"\nbody = \"json\"\n",
    );
    for want in [
        ":2: audit.key_env",
        ":5: admin.metrics_token_env",
        ":6: admin.max_connections",
        ":9: gate.max_pending_per_agent",
        ":15: routes[0].body",
    ] {
        assert!(errs.iter().any(|e| e.contains(want)), "{want}: {errs:?}");
    }
    let c = parse("[[routes]]\nname = \"a\"\nprefix = \"/a\"\nupstream = \"http://x\"\nbody = \"opaque\"\n\n[[routes]]\nname = \"b\"\nprefix = \"/b\"\nupstream = \"http://x\"\nstream_body = true\n").unwrap();
    assert!(c.routes.iter().all(|r| r.opaque_body));
    assert_eq!(c.gate.max_pending_per_agent, 100);
    assert!(c.audit.key.is_none());
}

const NOTIFY: &str = r##"[notify]
default = ["approvals-slack", "nowhere"]

[[notify.channels]]
name = "approvals-slack"
kind = "slack"
channel = "#approvals"
bot_token_env = "SLACK_BOT_TOKEN"
signing_secret_env = "MISSING_SECRET"

[[notify.channels]]
name = "hooks"
kind = "webhook"
url = "https://hooks.example.com/latch"
secret_env = "API_KEY"
smtp_url = "smtp://x:25"

[[notify.channels]]
name = "mail"
kind = "email"
smtp_url = "smtp://mail.example.com?tls=starttls"
from = "latch@example.com"
to_roles = ["lead"]

[[notify.channels]]
name = "pager"
kind = "teams"
"##;

#[test]
fn notify_channels_name_their_problems_with_lines() {
    let errs = errors(NOTIFY);
    let has = |needle: &str| errs.iter().any(|e| e.contains(needle));
    // Unknown channel in default (line 2), missing secret env (line 9),
    // a non-whsec secret, a key of another kind, a role nobody can be
    // mailed at, an unknown kind (line 27).
    assert!(
        has(":2: notify.default: `nowhere` is not a channel"),
        "{errs:?}"
    );
    assert!(has(":9: notify.channels[0].signing_secret_env: environment variable MISSING_SECRET is not set"), "{errs:?}");
    assert!(
        has("notify.channels[1].secret_env: the secret in API_KEY must be whsec_"),
        "{errs:?}"
    );
    assert!(
        has(":16: notify.channels[1].smtp_url: does not apply to a webhook channel"),
        "{errs:?}"
    );
    assert!(
        has("notify.channels[2].to_roles: no principal with role `lead` has an email"),
        "{errs:?}"
    );
    assert!(
        has(":27: notify.channels[3].kind: `teams` must be slack"),
        "{errs:?}"
    );
}

#[test]
fn notify_channels_and_contact_points_parse() {
    let text = r#"[notify]
dashboard_url = "https://latch.example.com/"
default = ["hooks"]
max_attempts = 3

[[notify.channels]]
name = "hooks"
kind = "webhook"
url = "https://hooks.example.com/latch"
secret_env = "HOOK"

[[principals]]
id = "lena"
roles = ["lead"]
email = "lena@example.com"
slack_user = "U0LENA"

[[principals]]
id = "lars"
slack_user = "U0LENA"
"#;
    let mut env = BTreeMap::new();
    env.insert(
        "HOOK".to_string(),
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_string(),
    );
    let errs = Config::parse(Path::new("/l.toml"), text, &env).unwrap_err();
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(errs[0]
        .to_string()
        .contains("principals[1].slack_user: `U0LENA` must be unique"));
    let c = Config::parse(
        Path::new("/l.toml"),
        &text.replace("id = \"lars\"\nslack_user = \"U0LENA\"", "id = \"lars\""),
        &env,
    )
    .unwrap();
    assert_eq!(c.notify.dashboard_url, "https://latch.example.com");
    assert_eq!(
        (c.notify.default.as_slice(), c.notify.max_attempts),
        (&["hooks".to_string()][..], 3)
    );
    assert!(matches!(
        c.notify.channels[0].kind,
        ChannelKind::Webhook { .. }
    ));
    assert_eq!(c.principals[0].slack_user.as_deref(), Some("U0LENA"));
    assert!(
        !format!("{:?}", c.notify).contains("MfKQ9r8"),
        "secrets are not printed"
    );
}

#[test]
fn a_postgres_store_comes_from_url_or_url_env_and_never_echoes_its_password() {
    let c = parse("[store]\nurl = \"postgres://latch:pw@db:5432/latch\"\n").unwrap();
    assert!(
        matches!(&c.store, StoreConfig::Postgres { url: u, .. } if u.0 == "postgres://latch:pw@db:5432/latch")
    );
    assert!(
        !format!("{:?}", c.store).contains("pw"),
        "the Debug form hides the URL"
    );
    let e = errors("[store]\nurl_env = \"NO_SUCH_VAR\"\n");
    assert!(
        e.iter()
            .any(|e| e.contains("store.url_env") && e.contains("NO_SUCH_VAR")),
        "{e:?}"
    );
    let e = errors("[store]\nurl = \"sqlite://x.db\"\nurl_env = \"X\"\n");
    assert!(e.iter().any(|e| e.contains("not both")), "{e:?}");
    let e = errors("[store]\nurl = \"mysql://root:hunter2@db/latch\"\n");
    assert!(e.iter().any(|e| e.contains(":2: store.url")), "{e:?}");
    assert!(e.iter().all(|e| !e.contains("hunter2")), "{e:?}");
}
