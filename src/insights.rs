//! Learning from past approvals: which action classes humans approve again
//! and again without ever rejecting, proposed as data the shipped policy
//! reads to stop gating them — once a human has reviewed and committed it.
//!
//! The audit trail is the source: `gate` records name each approval's action
//! class; `approve` (with the quorum met), `modify` and `reject` records say
//! how humans decided, with server timestamps for the window.
//!
//! Against approval fatigue it also reports how much is decided without a
//! human ([`automation`]) and which reviewers or classes look rubber-stamped
//! ([`reviewers`]).

pub mod automation;
pub mod break_glass;
pub mod reviewers;

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::audit::chain::Record;

/// Thresholds for the report.
#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    /// Approvals a class (or decisions a reviewer) needs before it counts.
    pub min: u64,
    /// A median decision time under this many milliseconds is "fast".
    pub fast_ms: i64,
}

/// Milliseconds a reviewer took for vote record `r` on an approval gated at
/// `gated_ts`: recorded since wave 2, else from the two timestamps.
pub fn waited_ms(r: &Record, gated_ts: Option<&str>) -> Option<i64> {
    if let Some(ms) = r.details["waited_ms"].as_i64() {
        return Some(ms.max(0));
    }
    let at = |ts: &str| chrono::DateTime::parse_from_rfc3339(ts).ok();
    let (from, to) = (at(gated_ts?)?, at(&r.ts)?);
    Some((to - from).num_milliseconds().max(0))
}

/// The median of `v` (sorts it); `None` when empty.
pub fn median(v: &mut [i64]) -> Option<i64> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2
    })
}

/// The whole report as JSON (the API, the dashboard and `--json`).
pub fn report(records: &[Record], t: Thresholds, days: u64) -> Value {
    let mut classes = tally(records);
    let automation = automation::count(records, &classes, t.min);
    let reviewers = reviewers::tally(records);
    let fast: Vec<Value> = classes
        .iter_mut()
        .filter(|(_, s)| s.auto_approvable(t.min))
        .filter_map(|(class, s)| {
            let median = median(&mut s.decision_ms)?;
            (median < t.fast_ms).then(|| {
                json!({"class": class, "agent": s.agent, "tool": s.tool, "shape": s.shape,
                       "approved": s.approved, "median_decision_s": median as f64 / 1000.0})
            })
        })
        .collect();
    json!({
        "window_days": days,
        "thresholds": {"min": t.min, "fast_s": t.fast_ms as f64 / 1000.0},
        "automation": automation::to_json(&automation),
        "reviewers": reviewers::to_json(&reviewers, t),
        "rubber_stamped_classes": fast,
    })
}

/// What humans did with one action class in the window.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClassStats {
    /// Agent.
    pub agent: String,
    /// Tool.
    pub tool: String,
    /// Canonical argument shape.
    pub shape: String,
    /// Gated calls.
    pub gated: u64,
    /// Approved as proposed.
    pub approved: u64,
    /// Approved only after a reviewer changed the body.
    pub modified: u64,
    /// Rejected.
    pub rejected: u64,
    /// Milliseconds reviewers took, per approving vote.
    pub decision_ms: Vec<i64>,
}

impl ClassStats {
    /// Approved at least `min` times as proposed, never modified or rejected.
    pub fn auto_approvable(&self, min: u64) -> bool {
        self.approved >= min && self.modified == 0 && self.rejected == 0
    }
}

/// Tally the window's records by action class.
pub fn tally(records: &[Record]) -> BTreeMap<String, ClassStats> {
    // Approval id → (class, when it was gated).
    let mut class_of: BTreeMap<&str, (String, &str)> = BTreeMap::new();
    let mut out: BTreeMap<String, ClassStats> = BTreeMap::new();
    for r in records {
        let d = &r.details;
        match r.event.as_str() {
            "gate" => {
                let Some(class) = d["class"].as_str().filter(|c| !c.is_empty()) else {
                    continue;
                };
                class_of.insert(&r.subject, (class.to_string(), &r.ts));
                let s = out.entry(class.to_string()).or_default();
                s.agent = r.actor.clone();
                s.tool = d["tool"].as_str().unwrap_or_default().to_string();
                s.shape = d["shape"].as_str().unwrap_or_default().to_string();
                s.gated += 1;
            }
            "approve" | "modify" | "reject" => {
                let Some((class, gated_ts)) = class_of.get(r.subject.as_str()) else {
                    continue;
                };
                let Some(s) = out.get_mut(class) else {
                    continue;
                };
                if r.event == "approve" {
                    s.decision_ms.extend(waited_ms(r, Some(gated_ts)));
                }
                match r.event.as_str() {
                    "approve" if d["quorum_met"] == true => s.approved += 1,
                    "modify" => s.modified += 1,
                    "reject" => s.rejected += 1,
                    _ => {}
                }
            }
            _ => {}
        }
    }
    out
}

/// The data file the shipped policy reads (`data.latch_learned`).
pub fn learned_data(classes: &BTreeMap<String, ClassStats>, min: u64, days: u64) -> Value {
    let generated = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let auto: serde_json::Map<String, Value> = classes
        .iter()
        .filter(|(_, s)| s.auto_approvable(min))
        .map(|(class, s)| {
            (
                class.clone(),
                json!({"agent": s.agent, "tool": s.tool, "shape": s.shape, "approved": s.approved,
                       "window_days": days, "generated_at": generated}),
            )
        })
        .collect();
    json!({"latch_learned": {"auto_approve": auto}})
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn rec(event: &str, subject: &str, details: Value) -> Record {
        Record {
            mac: None,
            seq: 0,
            ts: String::new(),
            actor: "bot".into(),
            event: event.into(),
            subject: subject.into(),
            details,
            details_sha256: None,
            prev_hash: String::new(),
            hash: String::new(),
        }
    }

    #[test]
    fn only_clean_repeated_approvals_qualify() {
        let gate = |s: &str, class: &str| {
            rec(
                "gate",
                s,
                json!({"class": class, "tool": "send_email", "shape": "POST {to:s}"}),
            )
        };
        let approve = |s: &str| rec("approve", s, json!({"quorum_met": true}));
        let records = vec![
            gate("a1", "c1"),
            approve("a1"),
            gate("a2", "c1"),
            approve("a2"),
            gate("a3", "c1"),
            rec("approve", "a3", json!({"quorum_met": false})),
            approve("a3"),
            gate("b1", "c2"),
            approve("b1"),
            gate("b2", "c2"),
            rec("reject", "b2", json!({"reason": "no"})),
            gate("b3", "c2"),
            approve("b3"),
            gate("d1", "c3"),
            rec("modify", "d1", json!({"quorum_met": true})),
            gate("d2", "c3"),
            approve("d2"),
            gate("d3", "c3"),
            approve("d3"),
        ];
        let t = tally(&records);
        assert_eq!((t["c1"].gated, t["c1"].approved), (3, 3));
        assert!(t["c1"].auto_approvable(3));
        assert!(!t["c2"].auto_approvable(1), "a rejection disqualifies");
        assert!(!t["c3"].auto_approvable(1), "a modification disqualifies");
        let data = learned_data(&t, 3, 30);
        let auto = data["latch_learned"]["auto_approve"].as_object().unwrap();
        assert_eq!(auto.keys().collect::<Vec<_>>(), ["c1"]);
        assert_eq!(auto["c1"]["tool"], "send_email");
    }
}
