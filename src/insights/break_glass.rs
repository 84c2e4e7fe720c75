//! The break-glass review: every override in a window with who, why, what
//! it released and what became of it — and who keeps breaking the glass.
//! An emergency path used routinely is a governance problem.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::audit::chain::Record;

/// Overrides in `records`, oldest first, and principals with at least
/// `repeat` of them.
pub fn report(records: &[Record], repeat: u64) -> Value {
    let mut gated: BTreeMap<&str, &Record> = BTreeMap::new();
    let mut outcome: BTreeMap<&str, Value> = BTreeMap::new();
    for r in records {
        match r.event.as_str() {
            "gate" => {
                gated.insert(&r.subject, r);
            }
            "execute" => {
                outcome.insert(
                    &r.subject,
                    json!({"result": "executed", "status": r.details["status"]}),
                );
            }
            "execute_failed" | "execute_refused" | "execute_interrupted" => {
                outcome.insert(
                    &r.subject,
                    json!({"result": r.event, "error": r.details.get("error").or(r.details.get("reason"))}),
                );
            }
            _ => {}
        }
    }
    let mut by: BTreeMap<&str, u64> = BTreeMap::new();
    let overrides: Vec<Value> = records
        .iter()
        .filter(|r| r.event == "override")
        .map(|r| {
            *by.entry(&r.actor).or_default() += 1;
            let g = gated.get(r.subject.as_str()).map(|g| &g.details);
            let field = |k: &str| g.map(|d| d[k].clone()).unwrap_or(Value::Null);
            json!({
                "at": r.ts, "principal": r.actor, "approval": r.subject, "reason": r.details["reason"],
                "agent": gated.get(r.subject.as_str()).map(|g| g.actor.clone()),
                "tool": field("tool"), "route": field("route"), "method": field("method"),
                "path": field("path"), "risk": field("risk"), "agent_reason": field("agent_reason"),
                "outcome": outcome.get(r.subject.as_str()).cloned().unwrap_or(json!({"result": "not executed"})),
            })
        })
        .collect();
    let repeaters: Vec<Value> = by
        .iter()
        .filter(|(_, n)| **n >= repeat)
        .map(|(p, n)| json!({"principal": p, "overrides": n}))
        .collect();
    json!({"overrides": overrides, "repeat_users": repeaters, "repeat_threshold": repeat})
}

/// A window such as `7d`, `24h` or `90m`, or an RFC 3339 time: its start.
pub fn since(s: &str, now: chrono::DateTime<chrono::Utc>) -> Option<chrono::DateTime<chrono::Utc>> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&chrono::Utc));
    }
    let (n, unit) = s.split_at(s.len().checked_sub(1)?);
    let n: i64 = n.parse().ok().filter(|n| *n > 0)?;
    let d = match unit {
        "d" => chrono::Duration::days(n),
        "h" => chrono::Duration::hours(n),
        "m" => chrono::Duration::minutes(n),
        _ => return None,
    };
    Some(now - d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::insights::tests::rec;

    #[test]
    fn overrides_are_listed_with_what_they_released_and_repeaters_flagged() {
        let mut o1 = rec(
            "override",
            "a1",
            json!({"reason": "outage", "break_glass": true}),
        );
        o1.actor = "olga".into();
        let mut o2 = rec("override", "a2", json!({"reason": "again"}));
        o2.actor = "olga".into();
        let mut o3 = rec("override", "a3", json!({"reason": "once"}));
        o3.actor = "omar".into();
        let records = vec![
            rec(
                "gate",
                "a1",
                json!({"tool": "deploy", "route": "ops", "path": "/deploy", "risk": "critical"}),
            ),
            o1,
            rec("execute", "a1", json!({"status": 200})),
            rec("gate", "a2", json!({"tool": "deploy"})),
            o2,
            rec(
                "execute_failed",
                "a2",
                json!({"error": "upstream is unavailable"}),
            ),
            o3,
        ];
        let r = report(&records, 2);
        let list = r["overrides"].as_array().unwrap();
        assert_eq!(list.len(), 3);
        assert_eq!(list[0]["tool"], "deploy");
        assert_eq!(list[0]["agent"], "bot");
        assert_eq!(
            list[0]["outcome"],
            json!({"result": "executed", "status": 200})
        );
        assert_eq!(list[1]["outcome"]["result"], "execute_failed");
        assert_eq!(list[2]["outcome"]["result"], "not executed");
        assert_eq!(
            r["repeat_users"],
            json!([{"principal": "olga", "overrides": 2}])
        );
    }

    #[test]
    fn windows_read_as_durations_or_times() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-11-22T12:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        assert_eq!(
            since("7d", now).unwrap().to_rfc3339(),
            "2026-11-15T12:00:00+00:00"
        );
        assert_eq!(
            since("90m", now).unwrap().to_rfc3339(),
            "2026-11-22T10:30:00+00:00"
        );
        assert!(since("2026-11-01T00:00:00Z", now).is_some());
        for bad in ["", "7", "0d", "-1d", "7w", "d"] {
            assert!(since(bad, now).is_none(), "{bad}");
        }
    }
}
