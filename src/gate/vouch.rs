//! The `approvals` table is a working copy; the audit chain is the record.
//! Before Latch sends an approved call it replays the chain's events for
//! that approval: only if they end in an approval of exactly these bytes
//! does the call go out. A row flipped to `approved` in the database, or a
//! body swapped under an approval, is refused — with `[audit] key_env`
//! cryptographically (every event's MAC is checked), without a key as a
//! consistency check against the hashed records.

use super::model::Approval;
use crate::audit::chain::{AuditKey, Record};

/// `Ok` when `records` (the approval's audit events, oldest first) vouch
/// that `a` is approved for its current body; otherwise why not.
pub fn vouched(a: &Approval, records: &[Record], key: Option<&AuditKey>) -> Result<(), String> {
    let mut approved = false;
    let mut closed = false;
    let mut sha: Option<&str> = None;
    for r in records {
        let authentic = match key {
            Some(k) => k.vouches_for(r),
            None => r.hash_matches(),
        };
        if !authentic {
            return Err(format!("audit record {} is not as Latch wrote it", r.seq));
        }
        let d = &r.details;
        let quorum = d["quorum_met"].as_bool() == Some(true);
        match r.event.as_str() {
            "gate" => {
                sha = d["body_sha256"].as_str();
                approved = false;
            }
            "approve" => approved |= quorum,
            "modify" => {
                sha = d["body_sha256"].as_str();
                approved = quorum;
            }
            "override" | "veto_window_passed" | "timeout_allow" => approved = true,
            "reject"
            | "expire"
            | "cancel"
            | "execute"
            | "execute_failed"
            | "execute_interrupted"
            | "execute_refused" => closed = true,
            _ => {}
        }
    }
    if closed {
        return Err("the audit trail shows this approval already closed".into());
    }
    if !approved {
        return Err("no approval of this call is in the audit trail".into());
    }
    if sha != Some(a.body_sha256.as_str()) {
        return Err("the body to send is not the one the audit trail shows approved".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::chain::{seal, Event, GENESIS};
    use serde_json::json;

    fn chain(events: &[(&str, serde_json::Value)], key: Option<&AuditKey>) -> Vec<Record> {
        let mut prev = GENESIS.to_string();
        events
            .iter()
            .enumerate()
            .map(|(i, (name, details))| {
                let r = seal(
                    i as i64 + 1,
                    "2026-11-22T00:00:00Z".into(),
                    Event::new("x", name, "a1", details.clone()),
                    prev.clone(),
                    key,
                );
                prev = r.hash.clone();
                r
            })
            .collect()
    }

    fn approval(sha: &str) -> Approval {
        let mut a: Approval = serde_json::from_value(json!({
            "id": "a1", "state": "approved", "agent": "bot", "route": "r", "tool": "t", "method": "POST",
            "path": "/", "target": "", "headers": [], "body_sha256": sha,
            "decision": {"action": "gate"}, "reason": null, "idempotency_key": null, "peer": "127.0.0.1:1",
            "tls": false, "created_at": 0, "deadline": 0, "level": 0, "votes": [], "outcome": null,
            "decided_at": null, "result": null, "version": 3
        }))
        .unwrap();
        a.body = b"{}".to_vec();
        a
    }

    #[test]
    fn only_an_approval_of_these_bytes_vouches() {
        let key = AuditKey::new(&[1; 32]);
        let k = Some(&key);
        let gated = ("gate", json!({"body_sha256": "aa"}));
        let one_vote = ("approve", json!({"quorum_met": false}));
        let quorum = ("approve", json!({"quorum_met": true}));
        assert!(vouched(
            &approval("aa"),
            &chain(&[gated.clone(), quorum.clone()], k),
            k
        )
        .is_ok());
        // Flipped in the table with no approval in the trail.
        assert!(vouched(&approval("aa"), &chain(&[gated.clone(), one_vote], k), k).is_err());
        // Body swapped under the approval.
        assert!(vouched(
            &approval("bb"),
            &chain(&[gated.clone(), quorum.clone()], k),
            k
        )
        .is_err());
        // Rejected, then flipped back.
        let rejected = ("reject", json!({"reason": "no"}));
        assert!(vouched(&approval("aa"), &chain(&[gated.clone(), rejected], k), k).is_err());
        // A forged approval record without the key.
        let mut forged = chain(&[gated.clone()], k);
        forged.extend(
            chain(&[gated.clone(), quorum.clone()], None)
                .into_iter()
                .skip(1),
        );
        assert!(vouched(&approval("aa"), &forged, k).is_err());
        // A modify that met the quorum vouches for the new bytes.
        let modified = ("modify", json!({"body_sha256": "cc", "quorum_met": true}));
        assert!(vouched(&approval("cc"), &chain(&[gated, modified], None), None).is_ok());
    }
}
