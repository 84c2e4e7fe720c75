use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;

use super::*;

fn shipped() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("policies")
}

fn set_from(rego: &str, timeout: Duration) -> PolicySet {
    let sources = Sources {
        modules: vec![(PathBuf::from("test.rego"), rego.to_string())],
        ..Default::default()
    };
    PolicySet::compile(&sources, "data.latch.decision", timeout).unwrap()
}

fn eval(set: &PolicySet, input: serde_json::Value) -> Evaluation {
    set.evaluate(Value::from(input))
}

#[test]
fn shipped_policies_run_on_the_vm_and_agree_with_the_interpreter() {
    let sources = Sources::read_dir(&shipped(), false).unwrap();
    assert!(
        !sources.cases.is_empty(),
        "shipped policies must have case tables"
    );
    let set =
        PolicySet::compile(&sources, "data.latch.decision", Duration::from_millis(200)).unwrap();
    assert_eq!(set.evaluator(), Evaluator::Vm);
    let results = cases::run(&set, &sources.cases).unwrap();
    let failures: Vec<String> = results
        .iter()
        .filter_map(|r| r.failure.as_ref().map(|f| format!("{}: {f}", r.name)))
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(results.len() >= 10);
}

#[test]
fn vm_sees_each_new_input() {
    let set = set_from(
        "package latch\nimport rego.v1\ndecision := {\"action\": input.a}",
        Duration::from_millis(100),
    );
    assert_eq!(set.evaluator(), Evaluator::Vm);
    assert_eq!(
        eval(&set, json!({"a": "allow"})).decision.action,
        Action::Allow
    );
    assert_eq!(
        eval(&set, json!({"a": "deny"})).decision.action,
        Action::Deny
    );
    assert_eq!(
        eval(&set, json!({"a": "allow"})).decision.action,
        Action::Allow
    );
}

#[test]
fn undefined_decision_is_a_policy_error_deny() {
    let set = set_from(
        "package latch\nimport rego.v1\ndecision := {\"action\": \"allow\"} if input.never",
        Duration::from_millis(100),
    );
    let e = eval(&set, json!({}));
    assert_eq!(e.decision.action, Action::Deny);
    assert_eq!(e.decision.code, "policy_error");
    assert!(e.error.unwrap().contains("undefined"));
}

#[test]
fn malformed_decision_is_a_policy_error_deny() {
    let set = set_from(
        "package latch\nimport rego.v1\ndecision := {\"action\": \"yes please\"}",
        Duration::from_millis(100),
    );
    let e = eval(&set, json!({}));
    assert_eq!(e.decision.code, "policy_error");
    assert_eq!(
        e.decision.reasons,
        vec!["policy error: malformed decision".to_string()]
    );
}

#[test]
fn runtime_error_is_a_policy_error_deny() {
    let set = set_from(
        "package latch\nimport rego.v1\ndecision := {\"action\": \"allow\", \"n\": to_number(input.x)}",
        Duration::from_millis(100),
    );
    let e = eval(&set, json!({"x": "not a number"}));
    assert_eq!(e.decision.action, Action::Deny);
    assert_eq!(e.decision.code, "policy_error");
    let e = set.evaluate_interpreted(Value::from(json!({"x": "not a number"})));
    assert_eq!(e.decision.code, "policy_error");
}

#[test]
fn a_policy_that_never_finishes_is_cut_off_and_denied() {
    let set = set_from(
        "package latch\nimport rego.v1\n\
         n := count([1 | some a in numbers.range(1, 4000); some b in numbers.range(1, 4000); a != b])\n\
         decision := {\"action\": \"allow\", \"reasons\": [sprintf(\"%d\", [n])]}",
        Duration::from_millis(20),
    );
    for e in [
        eval(&set, json!({})),
        set.evaluate_interpreted(Value::from(json!({}))),
    ] {
        assert_eq!(e.decision.action, Action::Deny, "{e:?}");
        assert_eq!(
            e.decision.reasons,
            vec!["policy error: evaluation timed out".to_string()],
            "{e:?}"
        );
    }
}

#[test]
fn compile_errors_name_file_and_line() {
    let sources = Sources {
        modules: vec![(
            PathBuf::from("policies/bad.rego"),
            "package latch\nimport rego.v1\n\ndecision := {\"action\": }\n".to_string(),
        )],
        ..Default::default()
    };
    let err = PolicySet::compile(&sources, "data.latch.decision", Duration::from_millis(10))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("policies/bad.rego:4"), "{err}");
}

#[test]
fn bad_data_file_names_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("p.rego"),
        "package latch\ndecision := {\"action\": \"allow\"}\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("data.json"), "{\n  \"a\": [1,\n}\n").unwrap();
    let err = Sources::read_dir(dir.path(), false)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("data.json:3"), "{err}");
}

#[test]
fn hash_changes_with_content() {
    let a = Sources {
        modules: vec![(PathBuf::from("a.rego"), "package a".into())],
        ..Default::default()
    };
    let mut b = a.clone();
    b.modules[0].1.push('\n');
    assert_ne!(a.hash(), b.hash());
    assert_eq!(a.hash(), a.clone().hash());
}

#[test]
fn an_answer_past_the_time_limit_is_a_deny_whatever_it_says() {
    let allow = Value::from(json!({"action": "allow", "risk": "low", "reasons": [], "code": "ok"}));
    let on_time = finish(Ok(allow.clone()), Instant::now(), Duration::from_millis(50));
    assert_eq!(on_time.decision.action, Action::Allow);
    let started = Instant::now()
        .checked_sub(Duration::from_millis(211))
        .unwrap();
    let late = finish(Ok(allow), started, Duration::from_millis(50));
    assert_eq!(late.decision.action, Action::Deny);
    assert_eq!(late.decision.code, "policy_error");
    assert!(late.error.unwrap().contains("past the 50 ms limit"));
}

/// A security team extends the shipped policy by adding a package under
/// `latch.rules`: its findings count on the VM and the interpreter alike,
/// and the most serious finding names the code.
#[test]
fn a_new_rules_package_contributes_findings() {
    let mut sources = Sources::read_dir(&shipped(), false).unwrap();
    sources.modules.push((
        PathBuf::from("rules/dlp.rego"),
        r#"package latch.rules.dlp
import rego.v1
deny contains f if {
    contains(lower(object.get(input.action.args, "subject", "")), "password")
    f := data.latch.lib.finding("secret_in_mail", "critical", "mail must not carry passwords")
}
gate contains f if {
    input.action.args.attachment
    f := data.latch.lib.finding("attachment", "low", "attachments are reviewed")
}
"#
        .into(),
    ));
    for (_, data) in &mut sources.data {
        if let Some(list) = data["latch_settings"]["concerns"].as_array_mut() {
            list.push(json!("dlp"));
        }
    }
    let set =
        PolicySet::compile(&sources, "data.latch.decision", Duration::from_millis(200)).unwrap();
    assert_eq!(set.evaluator(), Evaluator::Vm);
    let call = |args: serde_json::Value| {
        json!({"request": {"method": "POST", "path": "/x", "query": {}, "headers": {}, "body": null},
               "route": {"name": "x", "tool": "send_email"}, "agent": {"id": "bot", "roles": ["agent"]},
               "action": {"tool": "send_email", "args": args}, "history": {"seen": 3}})
    };
    for input in [
        call(json!({"to": "a@b.test", "subject": "your PASSWORD"})),
        call(json!({"to": "a@b.test", "attachment": true})),
    ] {
        let vm = eval(&set, input.clone());
        let reference = set.evaluate_interpreted(Value::from(input));
        assert_eq!(vm.decision, reference.decision);
    }
    let denied = eval(
        &set,
        call(json!({"subject": "password", "attachment": true})),
    );
    assert_eq!(
        (denied.decision.action, denied.decision.code.as_str()),
        (Action::Deny, "secret_in_mail")
    );
    // Irreversible (medium) and attachment (low): the code is the riskier one's.
    let gated = eval(&set, call(json!({"to": "a@b.test", "attachment": true})));
    assert_eq!(
        (gated.decision.action, gated.decision.code.as_str()),
        (Action::Gate, "irreversible")
    );
    assert_eq!(gated.decision.reasons.len(), 2);
    // Without `quiet`, dlp is consulted even on the hot path.
    let familiar_search = json!({"request": {"method": "GET", "path": "/x", "query": {}, "headers": {}, "body": null},
        "route": {"name": "x", "tool": "search"}, "agent": {"id": "bot", "roles": ["agent"]},
        "action": {"tool": "search", "args": {"subject": "password"}}, "history": {"seen": 3}});
    assert_eq!(eval(&set, familiar_search).decision.code, "secret_in_mail");
}

#[test]
fn the_shipped_rego_tests_pass_and_catch_an_unlisted_concern() {
    let mut sources = Sources::read_dir(&shipped(), true).unwrap();
    let failures = |s: &Sources| -> Vec<String> {
        cases::run_rego_tests(s)
            .into_iter()
            .filter_map(|r| r.failure.map(|f| format!("{}: {f}", r.name)))
            .collect()
    };
    assert!(failures(&sources).is_empty(), "{:?}", failures(&sources));
    sources.modules.push((
        PathBuf::from("rules/forgotten.rego"),
        "package latch.rules.forgotten\nimport rego.v1\ndeny contains \"x\" if input.never\n"
            .into(),
    ));
    let found = failures(&sources);
    assert!(
        found
            .iter()
            .any(|f| f.contains("test_every_rules_package_is_a_concern")),
        "{found:?}"
    );
}

#[test]
fn include_toml_loads_rego_but_not_data_or_cases() {
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared");
    let pack = dir.path().join("pack");
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::create_dir_all(&pack).unwrap();
    std::fs::write(shared.join("lib.rego"), "package shared\nx := 1\n").unwrap();
    std::fs::write(shared.join("data.json"), "{\"not\": \"mine\"}").unwrap();
    std::fs::write(shared.join("x.cases.json"), "{}").unwrap();
    std::fs::write(
        pack.join("p.rego"),
        "package latch\ndecision := {\"action\": \"allow\"}\n",
    )
    .unwrap();
    std::fs::write(pack.join("include.toml"), "rego = [\"../shared\"]\n").unwrap();
    let s = Sources::read_dir(&pack, false).unwrap();
    assert_eq!(s.modules.len(), 2);
    assert!(s.data.is_empty() && s.cases.is_empty());

    std::fs::write(pack.join("include.toml"), "rego = [\"../missing\"]\n").unwrap();
    let err = format!("{:#}", Sources::read_dir(&pack, false).unwrap_err());
    assert!(err.contains("include.toml: rego[0]"), "{err}");
    std::fs::write(pack.join("include.toml"), "\nrego = \"../shared\"\n").unwrap();
    let err = format!("{:#}", Sources::read_dir(&pack, false).unwrap_err());
    assert!(err.contains("include.toml:2:"), "{err}");
}
