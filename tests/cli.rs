//! The `latch` binary: check, policy test, policy eval; and every example
//! config loads, so examples never rot.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn latch(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_latch"))
        .args(args)
        .current_dir(dir)
        .env("SUPPORT_BOT_TOKEN", "t")
        .env("EMAIL_API_KEY", "Bearer k")
        .env("LATCH_AUDIT_KEY", "an-audit-key-of-at-least-32-bytes!")
        .env("LATCH_METRICS_TOKEN", "scrape")
        .env("SLACK_BOT_TOKEN", "xoxb-1")
        .env("SLACK_SIGNING_SECRET", "s3cret")
        .env("SMTP_PASSWORD", "p")
        .env("PD_ROUTING_KEY", "k")
        .output()
        .unwrap()
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn check_accepts_the_demo_and_every_example() {
    let o = latch(&["check"], &root());
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("ok: latch.toml"), "{}", text(&o));
    let mut checked = 0;
    for entry in std::fs::read_dir(root().join("examples")).unwrap() {
        let path = entry.unwrap().path();
        let config = if path.is_dir() {
            path.join("latch.toml")
        } else {
            path.clone()
        };
        if config.extension().is_some_and(|e| e == "toml") && config.exists() {
            let o = latch(&["check", "--config", config.to_str().unwrap()], &root());
            assert!(o.status.success(), "{}: {}", config.display(), text(&o));
            checked += 1;
        }
    }
    assert!(
        checked >= 4,
        "examples/production.toml and three policy packs"
    );
}

#[test]
fn every_example_pack_passes_its_case_tables() {
    let mut packs = 0;
    for entry in std::fs::read_dir(root().join("examples")).unwrap() {
        let policies = entry.unwrap().path().join("policies");
        if policies.is_dir() {
            let o = latch(&["policy", "test", policies.to_str().unwrap()], &root());
            assert!(o.status.success(), "{}: {}", policies.display(), text(&o));
            assert!(text(&o).contains(" passed, 0 failed"), "{}", text(&o));
            packs += 1;
        }
    }
    assert_eq!(packs, 4);
}

#[test]
fn check_names_file_line_and_key_of_a_bad_config() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    std::fs::write(
        dir.path().join("policies/p.rego"),
        "package latch\ndecision := {\"action\": \"allow\"}\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("latch.toml"),
        "[proxy]\nlisten = \"127.0.0.1:0\"\n\n[[routes]]\nname = \"x\"\nprefix = \"/x\"\nupstream = \"http://h\"\ntimeout = 5\n",
    )
    .unwrap();
    let o = latch(&["check"], dir.path());
    assert_eq!(o.status.code(), Some(64), "{}", text(&o));
    assert!(text(&o).contains("latch.toml:8"), "{}", text(&o));
    assert!(text(&o).contains("timeout"), "{}", text(&o));
}

#[test]
fn check_names_file_and_line_of_bad_rego() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    std::fs::write(
        dir.path().join("policies/broken.rego"),
        "package latch\nimport rego.v1\n\ndecision := {\"action\": \"allow\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("latch.toml"),
        "[proxy]\nlisten = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let o = latch(&["check"], dir.path());
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("broken.rego:"), "{}", text(&o));
}

#[test]
fn policy_test_passes_on_the_shipped_policies() {
    let o = latch(&["policy", "test", "policies"], &root());
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains(" passed, 0 failed"), "{}", text(&o));
}

#[test]
fn policy_test_fails_and_names_the_case_and_the_rego_test() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("p.rego"),
        "package latch\nimport rego.v1\ndecision := {\"action\": \"deny\", \"code\": \"nope\"}\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("p_test.rego"),
        "package latch\nimport rego.v1\ntest_allows if decision.action == \"allow\"\ntest_denies if decision.action == \"deny\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("p.cases.json"),
        r#"{"cases": [{"name": "search is allowed", "input": {}, "expect": {"action": "allow"}},
                      {"name": "it denies", "input": {}, "expect": {"action": "deny", "code": "nope"}}]}"#,
    )
    .unwrap();
    let o = latch(&["policy", "test", dir.path().to_str().unwrap()], &root());
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let out = text(&o);
    assert!(
        out.contains("FAIL") && out.contains("search is allowed"),
        "{out}"
    );
    assert!(
        out.contains("expected action = \"allow\", got \"deny\""),
        "{out}"
    );
    assert!(
        out.contains("FAIL") && out.contains("data.latch.test_allows"),
        "{out}"
    );
    assert!(
        out.contains("PASS") && out.contains("data.latch.test_denies"),
        "{out}"
    );
    assert!(out.contains("2 passed, 2 failed"), "{out}");
}

#[test]
fn policy_eval_prints_the_decision() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.json");
    std::fs::write(
        &input,
        r#"{"request": {"method": "POST"}, "agent": {"id": "bot"}, "history": {"seen": 1},
            "action": {"tool": "execute_trade", "args": {"amount": 2000000}}}"#,
    )
    .unwrap();
    let o = latch(
        &["policy", "eval", "--input", input.to_str().unwrap()],
        &root(),
    );
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["decision"]["action"], "deny");
    assert_eq!(v["decision"]["code"], "value_limit");
    assert!(v["elapsed_us"].as_f64().unwrap() > 0.0);
}

#[test]
fn unknown_commands_print_usage() {
    let o = latch(&["frobnicate"], &root());
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("usage:"));
}
