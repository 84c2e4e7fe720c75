//! Prompt templates: text with `{{variable}}` placeholders (spaces inside
//! the braces allowed), nothing else — no logic, so what reviewers read is
//! what the model gets. A `{{` that does not open a well-formed placeholder
//! is an error, naming its line and column.

use std::collections::{BTreeMap, BTreeSet};

use super::model::{Check, CheckResult};

/// A piece of a parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece<'t> {
    /// Literal text.
    Text(&'t str),
    /// A placeholder.
    Var(&'t str),
}

fn position(t: &str, at: usize) -> String {
    let before = &t[..at];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    format!("line {line}, column {col}")
}

fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Split `t` into text and placeholders.
pub fn parse(t: &str) -> Result<Vec<Piece<'_>>, String> {
    let mut out = Vec::new();
    let mut rest = 0;
    while let Some(open) = t[rest..].find("{{").map(|i| rest + i) {
        if open > rest {
            out.push(Piece::Text(&t[rest..open]));
        }
        let Some(close) = t[open + 2..].find("}}").map(|i| open + 2 + i) else {
            return Err(format!("unclosed `{{{{` at {}", position(t, open)));
        };
        let name = t[open + 2..close].trim();
        if !is_name(name) {
            return Err(format!(
                "`{{{{{}}}}}` at {} is not a variable name (letters, digits, _)",
                &t[open + 2..close],
                position(t, open)
            ));
        }
        out.push(Piece::Var(name));
        rest = close + 2;
    }
    if rest < t.len() {
        out.push(Piece::Text(&t[rest..]));
    }
    if let Some(stray) = t.find("}}").filter(|_| !t.contains("{{")) {
        return Err(format!("`}}}}` without `{{{{` at {}", position(t, stray)));
    }
    Ok(out)
}

/// Variables the template uses.
pub fn referenced(t: &str) -> Result<BTreeSet<String>, String> {
    Ok(parse(t)?
        .into_iter()
        .filter_map(|p| match p {
            Piece::Var(v) => Some(v.to_string()),
            Piece::Text(_) => None,
        })
        .collect())
}

/// Fill the placeholders; a variable without a value is an error.
pub fn render(t: &str, vars: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::with_capacity(t.len());
    let mut missing = BTreeSet::new();
    for p in parse(t)? {
        match p {
            Piece::Text(s) => out.push_str(s),
            Piece::Var(v) => match vars.get(v) {
                Some(value) => out.push_str(value),
                None => {
                    missing.insert(v);
                }
            },
        }
    }
    if !missing.is_empty() {
        let names: Vec<&str> = missing.into_iter().collect();
        return Err(format!("no value for {}", names.join(", ")));
    }
    Ok(out)
}

/// Check a new version: the template parses, uses only declared variables,
/// and every check's regular expression compiles. Returns the checks'
/// results (a check whose expectations fail is a result, not an error).
pub fn check(
    template: &str,
    variables: &[String],
    checks: &[Check],
) -> Result<Vec<CheckResult>, String> {
    let declared: BTreeSet<&str> = variables.iter().map(String::as_str).collect();
    if let Some(bad) = variables.iter().find(|v| !is_name(v)) {
        return Err(format!(
            "variable {bad:?} is not a name (letters, digits, _)"
        ));
    }
    let undeclared: Vec<String> = referenced(template)?
        .into_iter()
        .filter(|v| !declared.contains(v.as_str()))
        .collect();
    if !undeclared.is_empty() {
        return Err(format!(
            "the template uses undeclared variable(s): {}",
            undeclared.join(", ")
        ));
    }
    checks
        .iter()
        .enumerate()
        .map(|(i, c)| run(template, c, i))
        .collect()
}

fn run(template: &str, c: &Check, i: usize) -> Result<CheckResult, String> {
    let name = if c.name.is_empty() {
        format!("check {}", i + 1)
    } else {
        c.name.clone()
    };
    let pattern = match &c.expect.matches {
        Some(p) => Some(
            regex::Regex::new(p)
                .map_err(|e| format!("{name}: `matches` is not a regular expression: {e}"))?,
        ),
        None => None,
    };
    let mut failures = Vec::new();
    match render(template, &c.vars) {
        Err(e) => failures.push(e),
        Ok(text) => {
            for s in &c.expect.contains {
                if !text.contains(s.as_str()) {
                    failures.push(format!("does not contain {s:?}"));
                }
            }
            for s in &c.expect.not_contains {
                if text.contains(s.as_str()) {
                    failures.push(format!("contains {s:?}"));
                }
            }
            if let Some(max) = c.expect.max_chars {
                let n = text.chars().count();
                if n > max {
                    failures.push(format!("{n} characters, more than {max}"));
                }
            }
            if let Some(re) = &pattern {
                if !re.is_match(&text) {
                    failures.push(format!("does not match /{}/", re.as_str()));
                }
            }
        }
    }
    Ok(CheckResult {
        name,
        passed: failures.is_empty(),
        failures,
    })
}

/// Lines added and removed from `a` to `b` (a longest-common-subsequence
/// line diff), and the unified lines (`+`, `-`, ` `).
pub fn diff(a: &str, b: &str) -> (usize, usize, Vec<String>) {
    let x: Vec<&str> = a.lines().collect();
    let y: Vec<&str> = b.lines().collect();
    let (n, m) = (x.len(), y.len());
    let mut l = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            l[i][j] = if x[i] == y[j] {
                l[i + 1][j + 1] + 1
            } else {
                l[i + 1][j].max(l[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut added, mut removed) = (0, 0, 0, 0);
    let mut lines = Vec::new();
    while i < n || j < m {
        if i < n && j < m && x[i] == y[j] {
            lines.push(format!("  {}", x[i]));
            i += 1;
            j += 1;
        } else if i < n && (j == m || l[i + 1][j] >= l[i][j + 1]) {
            lines.push(format!("- {}", x[i]));
            removed += 1;
            i += 1;
        } else {
            lines.push(format!("+ {}", y[j]));
            added += 1;
            j += 1;
        }
    }
    (added, removed, lines)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prompts::model::Expect;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn placeholders_render_and_bad_ones_are_named() {
        let t = "Dear {{ customer }},\nre: {{ticket}}";
        assert_eq!(
            render(t, &vars(&[("customer", "Ann"), ("ticket", "#4")])).unwrap(),
            "Dear Ann,\nre: #4"
        );
        assert_eq!(
            render(t, &vars(&[])).unwrap_err(),
            "no value for customer, ticket"
        );
        assert!(parse("hi {{ name")
            .unwrap_err()
            .contains("line 1, column 4"));
        assert!(parse("a\n{{two words}}")
            .unwrap_err()
            .contains("line 2, column 1"));
        assert!(parse("only }} closes").is_err());
        assert_eq!(
            render("no placeholders", &vars(&[])).unwrap(),
            "no placeholders"
        );
    }

    #[test]
    fn checks_run_and_undeclared_variables_are_refused() {
        let t = "Hello {{name}}, your refund of {{amount}} is on its way.";
        let declared = vec!["name".to_string(), "amount".to_string()];
        let err = check(t, &declared[..1], &[]).unwrap_err();
        assert!(err.contains("undeclared variable(s): amount"), "{err}");
        let c = |expect: Expect| Check {
            name: String::new(),
            vars: vars(&[("name", "Ann"), ("amount", "€5")]),
            expect,
        };
        let results = check(
            t,
            &declared,
            &[
                c(Expect {
                    contains: vec!["refund".into()],
                    max_chars: Some(80),
                    matches: Some("^Hello [A-Z]".into()),
                    ..Default::default()
                }),
                c(Expect {
                    not_contains: vec!["refund".into()],
                    max_chars: Some(10),
                    ..Default::default()
                }),
            ],
        )
        .unwrap();
        assert!(results[0].passed, "{results:?}");
        assert_eq!(results[1].name, "check 2");
        assert_eq!(results[1].failures.len(), 2, "{results:?}");
        let bad_re = c(Expect {
            matches: Some("(".into()),
            ..Default::default()
        });
        assert!(check(t, &declared, &[bad_re]).is_err());
    }

    #[test]
    fn diffs_count_lines() {
        let (added, removed, lines) = diff("a\nb\nc", "a\nB\nc\nd");
        assert_eq!((added, removed), (2, 1));
        assert_eq!(lines, ["  a", "- b", "+ B", "  c", "+ d"]);
    }
}
