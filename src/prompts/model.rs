//! Prompt registry records: versions, checks and their results, evaluations
//! attached by CI, and label moves. Plain data, shared with the store.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What a check expects of the rendered text.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// Substrings that must appear.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub contains: Vec<String>,
    /// Substrings that must not appear.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_contains: Vec<String>,
    /// Longest allowed text, in characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_chars: Option<usize>,
    /// A regular expression the text must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matches: Option<String>,
}

/// One check: variables in, expectations on the rendered text.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Check {
    /// Name (defaults to its position).
    #[serde(default)]
    pub name: String,
    /// Variable values.
    #[serde(default)]
    pub vars: BTreeMap<String, String>,
    /// Expectations.
    #[serde(default)]
    pub expect: Expect,
}

/// A check's outcome, stored with the version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckResult {
    /// The check's name.
    pub name: String,
    /// All expectations held.
    pub passed: bool,
    /// What did not hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<String>,
}

/// An evaluation result attached to a version (e.g. by CI).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// Name of the evaluation.
    pub name: String,
    /// Score, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    /// Whether it passed.
    pub passed: bool,
    /// Where the details are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Who attached it.
    pub by: String,
    /// Unix milliseconds.
    pub at: i64,
}

/// One immutable version of a prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptVersion {
    /// Prompt name.
    pub name: String,
    /// 1, 2, … per prompt.
    pub version: u32,
    /// The template (`{{variable}}` placeholders).
    pub template: String,
    /// Declared variables.
    pub variables: Vec<String>,
    /// Model configuration (model, temperature, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<serde_json::Value>,
    /// What changed, in the author's words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Who pushed it.
    pub author: String,
    /// SHA-256 of the content (template, variables, config, checks).
    pub sha256: String,
    /// Checks, as pushed.
    #[serde(default)]
    pub checks: Vec<Check>,
    /// Their results, from when the version was created.
    #[serde(default)]
    pub check_results: Vec<CheckResult>,
    /// Evaluation results attached since.
    #[serde(default)]
    pub evaluations: Vec<Evaluation>,
    /// Unix milliseconds.
    pub created_at: i64,
}

impl PromptVersion {
    /// Checks passed and failed; each evaluation counts by its latest
    /// result (CI may run one again).
    pub fn check_counts(&self) -> (usize, usize) {
        let mut latest: BTreeMap<&str, bool> = BTreeMap::new();
        for e in &self.evaluations {
            latest.insert(&e.name, e.passed);
        }
        let passed = self.check_results.iter().filter(|c| c.passed).count()
            + latest.values().filter(|p| **p).count();
        let total = self.check_results.len() + latest.len();
        (passed, total - passed)
    }
}

/// A label moved from one version to another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelMove {
    /// Prompt name.
    pub name: String,
    /// Label.
    pub label: String,
    /// The version it pointed at before (none: new label).
    pub from: Option<u32>,
    /// The version it points at now.
    pub to: u32,
    /// Who asked for the move.
    pub by: String,
    /// The approval that released it (protected labels).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<String>,
    /// Back to the version that held the label before.
    pub rollback: bool,
    /// Unix milliseconds.
    pub at: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_evaluation_counts_by_its_latest_result() {
        let eval = |passed| Evaluation {
            name: "tone".into(),
            score: None,
            passed,
            url: None,
            by: "ci".into(),
            at: 0,
        };
        let mut v = PromptVersion {
            name: "p".into(),
            version: 1,
            template: String::new(),
            variables: vec![],
            config: None,
            message: None,
            author: "a".into(),
            sha256: String::new(),
            checks: vec![],
            check_results: vec![CheckResult {
                name: "c".into(),
                passed: true,
                failures: vec![],
            }],
            evaluations: vec![eval(false)],
            created_at: 0,
        };
        assert_eq!(v.check_counts(), (1, 1));
        v.evaluations.push(eval(true));
        assert_eq!(v.check_counts(), (2, 0));
    }
}
