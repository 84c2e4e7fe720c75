//! The typed decision a policy returns, and the strict parser that turns a
//! Rego value into it. Whatever does not parse is a deny (`policy_error`).

use regorus::Value;
use serde::{Deserialize, Serialize};

/// What to do with the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Forward it.
    Allow,
    /// Refuse it.
    Deny,
    /// Hold it for human approval.
    Gate,
}

impl Action {
    /// Lower-case name, as in the contract and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
            Action::Gate => "gate",
        }
    }
}

/// How bad it is if the call goes wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Risk {
    /// Low.
    Low,
    /// Medium.
    Medium,
    /// High.
    High,
    /// Critical.
    Critical,
}

impl Risk {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Risk::Low => "low",
            Risk::Medium => "medium",
            Risk::High => "high",
            Risk::Critical => "critical",
        }
    }
}

/// What happens when an approval level's deadline passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnTimeout {
    /// Refuse (default).
    Deny,
    /// Execute (low/medium risk only).
    Allow,
    /// Move to the next `escalate` level.
    Escalate,
}

/// Approval mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Needs the required approvals.
    Explicit,
    /// Executes at the deadline unless someone eligible rejects.
    Veto,
}

/// `count` distinct humans holding `role`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Requirement {
    /// Role.
    pub role: String,
    /// How many distinct people.
    pub count: u32,
}

/// A later approval level.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Escalation {
    /// Requirements at this level.
    pub require: Vec<Requirement>,
    /// Seconds before this level times out.
    #[serde(default = "default_timeout")]
    pub timeout_s: u64,
    /// Channels told when the approval reaches this level (`[[notify.channels]]` names).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notify: Vec<String>,
}

/// Who must approve a gated call, and by when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalSpec {
    /// Requirements; all must be met.
    pub require: Vec<Requirement>,
    /// Seconds before the first level times out.
    #[serde(default = "default_timeout")]
    pub timeout_s: u64,
    /// What a timeout does.
    #[serde(default = "default_on_timeout")]
    pub on_timeout: OnTimeout,
    /// Further levels for `on_timeout = "escalate"`.
    #[serde(default)]
    pub escalate: Vec<Escalation>,
    /// Explicit approval or veto window.
    #[serde(default = "default_mode")]
    pub mode: Mode,
    /// Whether an approver may grant the same class for a while
    /// (`false`: every such call needs its own approval).
    #[serde(default = "default_grantable", skip_serializing_if = "is_true")]
    pub grantable: bool,
    /// Channels told about this call besides `[notify] default`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notify: Vec<String>,
}

fn default_timeout() -> u64 {
    300
}
fn default_on_timeout() -> OnTimeout {
    OnTimeout::Deny
}
fn default_mode() -> Mode {
    Mode::Explicit
}
fn default_grantable() -> bool {
    true
}
fn is_true(b: &bool) -> bool {
    *b
}

/// A policy decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// allow / deny / gate.
    pub action: Action,
    /// Risk level.
    #[serde(default = "default_risk")]
    pub risk: Risk,
    /// Human- and agent-readable reasons.
    #[serde(default)]
    pub reasons: Vec<String>,
    /// Machine-readable code.
    #[serde(default)]
    pub code: String,
    /// Approval requirements (gate only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalSpec>,
    /// Money value at stake, if the policy extracted one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<serde_json::Value>,
    /// What happens if this goes wrong (shown to reviewers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consequences: Option<serde_json::Value>,
}

fn default_risk() -> Risk {
    Risk::Low
}

impl Decision {
    /// This gate tightened by `other` (a later judgement of the same call,
    /// e.g. of a reviewer's modified body) at approval level `level`: the
    /// higher risk, every requirement of both (per role the larger count),
    /// the stricter timeout behaviour and mode. Nothing gets looser.
    pub fn tightened(&self, other: &Decision, level: u32) -> Decision {
        let mut d = self.clone();
        d.risk = d.risk.max(other.risk);
        for r in &other.reasons {
            if !d.reasons.contains(r) {
                d.reasons.push(r.clone());
            }
        }
        let (Some(spec), Some(extra)) = (d.approval.as_mut(), other.approval.as_ref()) else {
            return d;
        };
        let current = match level {
            0 => Some(&mut spec.require),
            n => spec
                .escalate
                .get_mut(n as usize - 1)
                .map(|e| &mut e.require),
        };
        if let Some(require) = current {
            for r in &extra.require {
                match require.iter_mut().find(|have| have.role == r.role) {
                    Some(have) => have.count = have.count.max(r.count),
                    None => require.push(r.clone()),
                }
            }
        }
        spec.on_timeout = match (spec.on_timeout, extra.on_timeout) {
            (OnTimeout::Deny, _) | (_, OnTimeout::Deny) => OnTimeout::Deny,
            (OnTimeout::Allow, other) => other,
            (OnTimeout::Escalate, _) => OnTimeout::Escalate,
        };
        if spec.on_timeout == OnTimeout::Allow && d.risk >= Risk::High {
            spec.on_timeout = OnTimeout::Deny;
        }
        if extra.mode == Mode::Explicit {
            spec.mode = Mode::Explicit;
        }
        spec.grantable &= extra.grantable;
        for n in &extra.notify {
            if !spec.notify.contains(n) {
                spec.notify.push(n.clone());
            }
        }
        d
    }

    /// The fail-closed deny for any policy failure.
    pub fn policy_error(reason: &str) -> Decision {
        Decision {
            action: Action::Deny,
            risk: Risk::High,
            reasons: vec![format!("policy error: {reason}")],
            code: "policy_error".to_string(),
            approval: None,
            value: None,
            consequences: None,
        }
    }

    /// Parse and check a decision object; `Err` names what is wrong.
    /// Reads the regorus value directly (the hot path); only the rarer
    /// `approval`, `value` and `consequences` go through serde.
    pub fn parse(v: &Value) -> Result<Decision, String> {
        let obj = v
            .as_object()
            .map_err(|_| format!("decision must be an object, got {}", kind(v)))?;
        let mut action = None;
        let mut d = Decision::policy_error("");
        d.risk = Risk::Low;
        d.reasons.clear();
        d.code.clear();
        for (key, value) in obj.iter() {
            let Ok(key) = key.as_string() else { continue };
            match key.as_ref() {
                "action" => {
                    action = Some(match text(value, "action")? {
                        "allow" => Action::Allow,
                        "deny" => Action::Deny,
                        "gate" => Action::Gate,
                        other => {
                            return Err(format!("malformed decision: unknown action {other:?}"))
                        }
                    })
                }
                "risk" => {
                    d.risk = match text(value, "risk")? {
                        "low" => Risk::Low,
                        "medium" => Risk::Medium,
                        "high" => Risk::High,
                        "critical" => Risk::Critical,
                        other => return Err(format!("malformed decision: unknown risk {other:?}")),
                    }
                }
                "reasons" => {
                    let items = value.as_array().map_err(|_| {
                        "malformed decision: reasons must be an array of strings".to_string()
                    })?;
                    for r in items.iter() {
                        d.reasons.push(text(r, "reasons[]")?.to_string());
                    }
                }
                "code" => d.code = text(value, "code")?.to_string(),
                "approval" => {
                    let json = serde_json::to_value(value).map_err(|e| e.to_string())?;
                    d.approval = Some(
                        serde_json::from_value(json)
                            .map_err(|e| format!("malformed decision: approval: {e}"))?,
                    );
                }
                "value" | "consequences" if *value != Value::Null => {
                    let json = serde_json::to_value(value).map_err(|e| e.to_string())?;
                    if key.as_ref() == "value" {
                        d.value = Some(json);
                    } else {
                        d.consequences = Some(json);
                    }
                }
                _ => {}
            }
        }
        d.action = action.ok_or("malformed decision: missing action")?;
        if d.code.is_empty() {
            d.code = match d.action {
                Action::Allow => "allowed",
                Action::Deny => "denied",
                Action::Gate => "gated",
            }
            .to_string();
        }
        match (&d.action, &d.approval) {
            (Action::Gate, None) => return Err("a gate decision needs `approval.require`".into()),
            (Action::Gate, Some(a)) => check_approval(a, d.risk)?,
            _ => {}
        }
        Ok(d)
    }
}

fn text<'a>(v: &'a Value, what: &str) -> Result<&'a str, String> {
    v.as_string().map(|s| s.as_ref()).map_err(|_| {
        format!(
            "malformed decision: {what} must be a string, got {}",
            kind(v)
        )
    })
}

fn check_requirements(require: &[Requirement], at: &str) -> Result<(), String> {
    if require.is_empty() {
        return Err(format!("{at}.require must name at least one role"));
    }
    for r in require {
        if r.role.is_empty() || r.count == 0 {
            return Err(format!(
                "{at}.require entries need a role and a count of at least 1"
            ));
        }
    }
    Ok(())
}

fn check_approval(a: &ApprovalSpec, risk: Risk) -> Result<(), String> {
    check_requirements(&a.require, "approval")?;
    if a.timeout_s == 0 {
        return Err("approval.timeout_s must be greater than 0".into());
    }
    if a.on_timeout == OnTimeout::Allow && risk >= Risk::High {
        return Err(format!(
            "on_timeout \"allow\" is refused for {} risk",
            risk.as_str()
        ));
    }
    if a.on_timeout == OnTimeout::Escalate && a.escalate.is_empty() {
        return Err("on_timeout \"escalate\" needs at least one escalate level".into());
    }
    for (i, e) in a.escalate.iter().enumerate() {
        check_requirements(&e.require, &format!("approval.escalate[{i}]"))?;
        if e.timeout_s == 0 {
            return Err(format!(
                "approval.escalate[{i}].timeout_s must be greater than 0"
            ));
        }
    }
    Ok(())
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Undefined => "undefined",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Set(_) => "a set",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn gate(v: serde_json::Value) -> Decision {
        Decision::parse(&Value::from(v)).unwrap()
    }

    #[test]
    fn tightening_never_loosens() {
        let lead = gate(json!({"action": "gate", "risk": "medium", "reasons": ["a"],
            "approval": {"require": [{"role": "lead", "count": 1}], "on_timeout": "allow", "mode": "veto"}}));
        let stricter = gate(json!({"action": "gate", "risk": "high", "reasons": ["b"],
            "approval": {"require": [{"role": "lead", "count": 2}, {"role": "director", "count": 1}]}}));
        let t = lead.tightened(&stricter, 0);
        let spec = t.approval.clone().unwrap();
        assert_eq!(t.risk, Risk::High);
        assert_eq!(t.reasons, vec!["a", "b"]);
        assert_eq!(
            serde_json::to_value(&spec.require).unwrap(),
            json!([{"role": "lead", "count": 2}, {"role": "director", "count": 1}])
        );
        assert_eq!(spec.on_timeout, OnTimeout::Deny);
        assert_eq!(spec.mode, Mode::Explicit);
        // The looser one changes nothing.
        let again = t.tightened(&lead, 0);
        assert_eq!(again.approval, t.approval);
        assert_eq!(again.risk, Risk::High);
    }

    #[test]
    fn minimal_allow() {
        let d = Decision::parse(&Value::from(json!({"action": "allow"}))).unwrap();
        assert_eq!(d.action, Action::Allow);
        assert_eq!(d.risk, Risk::Low);
        assert_eq!(d.code, "allowed");
    }

    #[test]
    fn gate_with_levels() {
        let d = Decision::parse(&Value::from(json!({
            "action": "gate", "risk": "high", "reasons": ["big"], "code": "value",
            "approval": {"require": [{"role": "lead", "count": 1}], "on_timeout": "escalate",
                         "escalate": [{"require": [{"role": "director", "count": 1}], "timeout_s": 600}]}
        })))
        .unwrap();
        let a = d.approval.unwrap();
        assert_eq!(a.timeout_s, 300);
        assert_eq!(a.escalate[0].timeout_s, 600);
        assert_eq!(a.mode, Mode::Explicit);
    }

    #[test]
    fn malformed_is_refused() {
        for v in [
            json!(true),
            json!("allow"),
            json!({}),
            json!({"action": "maybe"}),
            json!({"action": "allow", "risk": "extreme"}),
            json!({"action": "allow", "reasons": "one"}),
            json!({"action": "gate"}),
            json!({"action": "gate", "approval": {"require": []}}),
            json!({"action": "gate", "approval": {"require": [{"role": "lead", "count": 0}]}}),
            json!({"action": "gate", "risk": "high", "approval": {"require": [{"role": "lead", "count": 1}], "on_timeout": "allow"}}),
            json!({"action": "gate", "approval": {"require": [{"role": "lead", "count": 1}], "on_timeout": "escalate"}}),
        ] {
            assert!(
                Decision::parse(&Value::from(v.clone())).is_err(),
                "{v} should be refused"
            );
        }
    }
}
