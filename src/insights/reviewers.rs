//! Rubber-stamp signals: per reviewer, how fast they decide and how often
//! they approve, by risk. A reviewer whose median time on high-risk calls is
//! a few seconds, or who never rejects anything, is probably not reading —
//! and the gate is theatre for those calls.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::{median, waited_ms, Thresholds};
use crate::audit::chain::Record;

/// One reviewer's decisions at one risk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AtRisk {
    /// Approving votes.
    pub approved: u64,
    /// Rejections.
    pub rejected: u64,
    /// Modifications (an approval of a changed body).
    pub modified: u64,
    /// Break-glass overrides.
    pub overridden: u64,
    /// Milliseconds taken per approve, reject or modify.
    pub decision_ms: Vec<i64>,
}

/// Reviewer → risk → decisions.
pub type Reviewers = BTreeMap<String, BTreeMap<String, AtRisk>>;

/// Tally every human decision in `records`.
pub fn tally(records: &[Record]) -> Reviewers {
    // Approval id → (risk, when it was gated).
    let mut gated: BTreeMap<&str, (&str, &str)> = BTreeMap::new();
    let mut out = Reviewers::new();
    for r in records {
        let d = &r.details;
        if r.event == "gate" {
            let risk = d["risk"].as_str().unwrap_or("unknown");
            gated.insert(&r.subject, (risk, &r.ts));
            continue;
        }
        if !matches!(
            r.event.as_str(),
            "approve" | "reject" | "modify" | "override"
        ) {
            continue;
        }
        let known = gated.get(r.subject.as_str());
        let risk = d["risk"]
            .as_str()
            .or(known.map(|k| k.0))
            .unwrap_or("unknown");
        let s = out
            .entry(r.actor.clone())
            .or_default()
            .entry(risk.to_string())
            .or_default();
        match r.event.as_str() {
            "approve" => s.approved += 1,
            "reject" => s.rejected += 1,
            "modify" => s.modified += 1,
            _ => {
                s.overridden += 1;
                continue;
            }
        }
        s.decision_ms.extend(waited_ms(r, known.map(|k| k.1)));
    }
    out
}

/// Why a reviewer looks like a rubber stamp (empty: no signal).
pub fn signals(by_risk: &BTreeMap<String, AtRisk>, t: Thresholds) -> Vec<String> {
    let mut out = Vec::new();
    let mut high: Vec<i64> = ["high", "critical"]
        .iter()
        .filter_map(|r| by_risk.get(*r))
        .flat_map(|s| s.decision_ms.iter().copied())
        .collect();
    if high.len() as u64 >= t.min {
        if let Some(m) = median(&mut high).filter(|m| *m < t.fast_ms) {
            out.push(format!(
                "median {:.1} s to decide {} high-risk calls (under {:.0} s)",
                m as f64 / 1000.0,
                high.len(),
                t.fast_ms as f64 / 1000.0
            ));
        }
    }
    let approved: u64 = by_risk.values().map(|s| s.approved + s.modified).sum();
    let rejected: u64 = by_risk.values().map(|s| s.rejected).sum();
    if approved >= t.min && rejected == 0 {
        out.push(format!("approved all {approved} calls, never rejected one"));
    }
    out
}

/// Per reviewer: counts and median time by risk, approval rate, signals.
pub fn to_json(reviewers: &Reviewers, t: Thresholds) -> Value {
    let list: Vec<Value> = reviewers
        .iter()
        .map(|(principal, by_risk)| {
            let risks: serde_json::Map<String, Value> = by_risk
                .iter()
                .map(|(risk, s)| {
                    let decided = s.approved + s.modified + s.rejected;
                    let rate = (decided > 0)
                        .then(|| (s.approved + s.modified) as f64 / decided as f64);
                    let mut times = s.decision_ms.clone();
                    let median_s = median(&mut times).map(|m| m as f64 / 1000.0);
                    let v = json!({"approved": s.approved, "rejected": s.rejected, "modified": s.modified,
                                   "overridden": s.overridden, "approval_rate": rate, "median_decision_s": median_s});
                    (risk.clone(), v)
                })
                .collect();
            json!({"principal": principal, "by_risk": risks, "signals": signals(by_risk, t)})
        })
        .collect();
    Value::Array(list)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::insights::tests::rec;

    fn vote(event: &str, who: &str, subject: &str, waited_ms: i64) -> Record {
        let mut r = rec(
            event,
            subject,
            json!({"risk": "high", "waited_ms": waited_ms, "quorum_met": true}),
        );
        r.actor = who.into();
        r
    }

    #[test]
    fn fast_high_risk_approvers_and_never_rejecters_are_named() {
        let t = Thresholds {
            min: 3,
            fast_ms: 10_000,
        };
        let mut records = Vec::new();
        for i in 0..4 {
            records.push(vote("approve", "speedy", &format!("a{i}"), 2_000));
            records.push(vote("approve", "careful", &format!("b{i}"), 120_000));
        }
        records.push(vote("reject", "careful", "b9", 300_000));
        let reviewers = tally(&records);
        let speedy = signals(&reviewers["speedy"], t);
        assert_eq!(speedy.len(), 2, "{speedy:?}");
        assert!(speedy[0].contains("median 2.0 s"), "{speedy:?}");
        assert!(speedy[1].contains("never rejected"), "{speedy:?}");
        assert!(signals(&reviewers["careful"], t).is_empty());
        let v = to_json(&reviewers, t);
        assert_eq!(v[0]["principal"], "careful");
        assert_eq!(v[0]["by_risk"]["high"]["approval_rate"], 0.8);
        assert_eq!(v[0]["by_risk"]["high"]["median_decision_s"], 120.0);
    }

    #[test]
    fn older_records_time_from_the_gate_record() {
        let mut gate = rec("gate", "a1", json!({"risk": "critical"}));
        gate.ts = "2026-11-22T10:00:00.000000Z".into();
        let mut approve = rec("approve", "a1", json!({}));
        approve.actor = "alice".into();
        approve.ts = "2026-11-22T10:00:04.500000Z".into();
        let reviewers = tally(&[gate, approve]);
        assert_eq!(reviewers["alice"]["critical"].decision_ms, vec![4_500]);
    }
}
