//! Case tables: policies tested as data.
//!
//! A `*.cases.json` file holds `{"base": {…input…}, "data"?: {…},
//! "cases": [{"name", "input", "expect"}]}` (`data` is merged into the
//! policy's data for these cases only). Each case's `input` is merged over `base` (objects
//! merge key by key, anything else replaces), evaluated with both the VM and
//! the interpreter, and compared with `expect`: a partial decision where
//! `reasons` lists substrings that must each appear in some reason and every
//! other key must equal the decision's value.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};
use serde::Deserialize;
use serde_json::Value;

use super::PolicySet;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    #[serde(default)]
    base: Value,
    /// Extra `data` these cases run with (merged over the policy's own).
    #[serde(default)]
    data: Option<Value>,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    #[serde(default)]
    input: Value,
    expect: serde_json::Map<String, Value>,
}

/// The outcome of one case.
#[derive(Debug, Clone)]
pub struct CaseResult {
    /// `file: name`.
    pub name: String,
    /// `None` when it passed; otherwise what differed.
    pub failure: Option<String>,
}

/// Merge `over` into `base`.
pub fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                merge(b.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (b, o) => *b = o.clone(),
    }
}

/// Run every case in `files` against `set`.
pub fn run(set: &PolicySet, files: &[PathBuf]) -> anyhow::Result<Vec<CaseResult>> {
    let mut out = Vec::new();
    for f in files {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        let file: CaseFile = serde_json::from_str(&text)
            .map_err(|e| anyhow!("{}:{}: invalid case table: {e}", f.display(), e.line()))?;
        let with_data;
        let set = match &file.data {
            None => set,
            Some(data) => {
                with_data = set
                    .with_data(data)
                    .map_err(|e| anyhow!("{}: its `data` does not merge: {e:#}", f.display()))?;
                &with_data
            }
        };
        for case in &file.cases {
            out.push(run_case(set, f, &file.base, case));
        }
    }
    Ok(out)
}

fn run_case(set: &PolicySet, file: &Path, base: &Value, case: &Case) -> CaseResult {
    let mut input = base.clone();
    if !case.input.is_null() {
        merge(&mut input, &case.input);
    }
    let name = format!("{}: {}", file.display(), case.name);
    let fast = set.evaluate(regorus::Value::from(input.clone()));
    let reference = set.evaluate_interpreted(regorus::Value::from(input));
    let mut problems = Vec::new();
    if fast.decision != reference.decision {
        problems.push(format!(
            "VM and interpreter disagree: vm={} interpreter={}",
            to_json(&fast.decision),
            to_json(&reference.decision)
        ));
    }
    if let Some(e) = &reference.error {
        problems.push(format!("policy error: {e}"));
    }
    let actual = serde_json::to_value(&reference.decision).unwrap_or(Value::Null);
    for (key, want) in &case.expect {
        let got = actual.get(key).unwrap_or(&Value::Null);
        if key == "reasons" {
            let wanted = want.as_array().cloned().unwrap_or_default();
            let reasons: Vec<&str> = got
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            for w in wanted {
                let w = w.as_str().unwrap_or_default();
                if !reasons.iter().any(|r| r.contains(w)) {
                    problems.push(format!(
                        "expected a reason containing {w:?}, got {reasons:?}"
                    ));
                }
            }
        } else if got != want {
            problems.push(format!("expected {key} = {want}, got {got}"));
        }
    }
    CaseResult {
        name,
        failure: if problems.is_empty() {
            None
        } else {
            Some(format!(
                "{}\n      decision: {}",
                problems.join("\n      "),
                actual
            ))
        },
    }
}

/// Evaluate every `test_*` rule (found at the start of a line in each
/// module, under that module's package); a test passes when it is `true`.
pub fn run_rego_tests(sources: &super::Sources) -> Vec<CaseResult> {
    let mut engine = regorus::Engine::new();
    let mut out = Vec::new();
    let mut tests = Vec::new();
    for (path, text) in &sources.modules {
        if let Err(e) = engine.add_policy(path.display().to_string(), text.clone()) {
            out.push(CaseResult {
                name: path.display().to_string(),
                failure: Some(e.to_string()),
            });
            return out;
        }
        let package = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("package "))
            .map(|p| p.trim().to_string());
        let Some(package) = package else { continue };
        for (n, line) in text.lines().enumerate() {
            if let Some(rest) = line.strip_prefix("test_") {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                let rule = format!("data.{package}.test_{name}");
                if !tests.iter().any(|(r, _): &(String, String)| *r == rule) {
                    tests.push((rule, format!("{}:{}", path.display(), n + 1)));
                }
            }
        }
    }
    for (path, data) in &sources.data {
        if let Err(e) = engine.add_data(regorus::Value::from(data.clone())) {
            out.push(CaseResult {
                name: path.display().to_string(),
                failure: Some(e.to_string()),
            });
            return out;
        }
    }
    for (rule, at) in tests {
        let failure = match engine.eval_rule(rule.clone()) {
            Ok(regorus::Value::Bool(true)) => None,
            Ok(regorus::Value::Undefined) => Some("undefined (a condition failed)".to_string()),
            Ok(v) => Some(format!("expected true, got {v}")),
            Err(e) => Some(format!("error: {e}")),
        };
        out.push(CaseResult {
            name: format!("{at}: {rule}"),
            failure,
        });
    }
    out
}

fn to_json(d: &super::Decision) -> String {
    serde_json::to_string(d).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_is_deep_for_objects_only() {
        let mut a = json!({"request": {"method": "GET", "headers": {"a": "1"}}, "list": [1, 2]});
        merge(
            &mut a,
            &json!({"request": {"method": "POST", "headers": {"b": "2"}}, "list": [3]}),
        );
        assert_eq!(
            a,
            json!({"request": {"method": "POST", "headers": {"a": "1", "b": "2"}}, "list": [3]})
        );
    }
}
