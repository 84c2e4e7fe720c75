//! The automation rate: of the calls that went through, the share decided
//! without a human (allowed by the policy, or by a grant) against the share
//! a human had to look at (gated) — per tool and overall, and what it would
//! become if the proposed learned classes were adopted.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::ClassStats;
use crate::audit::chain::Record;

/// Counts for one tool (or all).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Allowed by the policy.
    pub allowed: u64,
    /// Gated by the policy, allowed by a live grant.
    pub granted: u64,
    /// Denied (not part of the rate: nobody needed to look).
    pub denied: u64,
    /// Held for humans.
    pub gated: u64,
    /// Of `gated`, calls in classes the learned data would auto-approve.
    pub learnable: u64,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.allowed += o.allowed;
        self.granted += o.granted;
        self.denied += o.denied;
        self.gated += o.gated;
        self.learnable += o.learnable;
    }

    /// Share of allowed + granted among allowed + granted + gated.
    pub fn rate(&self) -> Option<f64> {
        let automatic = self.allowed + self.granted;
        let all = automatic + self.gated;
        (all > 0).then(|| automatic as f64 / all as f64)
    }

    /// The rate if the learned classes no longer needed a human.
    pub fn projected_rate(&self) -> Option<f64> {
        let automatic = self.allowed + self.granted + self.learnable;
        let all = self.allowed + self.granted + self.gated;
        (all > 0).then(|| automatic as f64 / all as f64)
    }
}

/// Count decisions by tool. `classes` (from [`super::tally`]) says which
/// gated classes the learned data would auto-approve after `min` approvals.
pub fn count(
    records: &[Record],
    classes: &BTreeMap<String, ClassStats>,
    min: u64,
) -> BTreeMap<String, Counts> {
    let mut out: BTreeMap<String, Counts> = BTreeMap::new();
    for r in records {
        let d = &r.details;
        let tool = d["tool"].as_str().or(d["route"].as_str()).unwrap_or("-");
        match r.event.as_str() {
            "decision" => {
                let c = out.entry(tool.to_string()).or_default();
                match (d["action"].as_str(), d["code"].as_str()) {
                    (Some("allow"), Some("granted")) => c.granted += 1,
                    (Some("allow"), _) => c.allowed += 1,
                    (Some("deny"), _) => c.denied += 1,
                    // A shadow-mode route records what the policy would do.
                    (Some("gate"), _) => c.gated += 1,
                    _ => {}
                }
            }
            "gate" => {
                let c = out.entry(tool.to_string()).or_default();
                c.gated += 1;
                let learnable = d["class"]
                    .as_str()
                    .and_then(|class| classes.get(class))
                    .is_some_and(|s| s.auto_approvable(min));
                if learnable {
                    c.learnable += 1;
                }
            }
            _ => {}
        }
    }
    out
}

/// `{overall, tools: {tool: …}}` with rates.
pub fn to_json(by_tool: &BTreeMap<String, Counts>) -> Value {
    let one = |c: &Counts| {
        json!({"allowed": c.allowed, "granted": c.granted, "denied": c.denied, "gated": c.gated,
               "learnable": c.learnable, "rate": c.rate(), "projected_rate": c.projected_rate()})
    };
    let mut all = Counts::default();
    for c in by_tool.values() {
        all.add(c);
    }
    let tools: serde_json::Map<String, Value> =
        by_tool.iter().map(|(t, c)| (t.clone(), one(c))).collect();
    json!({"overall": one(&all), "tools": tools})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::insights::tests::rec;

    #[test]
    fn allowed_and_granted_count_as_automatic_and_learned_classes_project() {
        let decision = |action: &str, code: &str| {
            rec(
                "decision",
                "r",
                json!({"action": action, "code": code, "tool": "send_email"}),
            )
        };
        let mut records = vec![
            decision("allow", "allowed"),
            decision("allow", "allowed"),
            decision("allow", "granted"),
            decision("deny", "denied"),
        ];
        for (i, class) in ["c1", "c1", "c2"].iter().enumerate() {
            let id = format!("a{i}");
            records.push(rec(
                "gate",
                &id,
                json!({"class": class, "tool": "send_email", "shape": "POST {to:s}"}),
            ));
            records.push(rec("approve", &id, json!({"quorum_met": true})));
        }
        let classes = super::super::tally(&records);
        let by_tool = count(&records, &classes, 2);
        let c = by_tool["send_email"];
        assert_eq!((c.allowed, c.granted, c.denied, c.gated), (2, 1, 1, 3));
        assert_eq!(c.learnable, 2, "c1 was approved twice, cleanly");
        assert_eq!(c.rate(), Some(0.5));
        assert_eq!(c.projected_rate(), Some(5.0 / 6.0));
        let v = to_json(&by_tool);
        assert_eq!(v["overall"]["gated"], 3);
        assert_eq!(Counts::default().rate(), None);
    }
}
