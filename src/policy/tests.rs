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
