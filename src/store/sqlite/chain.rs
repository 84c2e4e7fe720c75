//! Appending to the hash chain inside a transaction, and reading records back.

use rusqlite::params;

use crate::audit::chain::{self as audit, AuditKey, Event, Record};

/// Server-clock UTC time for audit records.
fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Append `events` inside `tx` and move the head with them; the caller
/// advances `tail` once it commits.
pub(super) fn append(
    tx: &rusqlite::Transaction<'_>,
    tail: &(i64, String),
    events: &[Event],
    key: Option<&AuditKey>,
) -> anyhow::Result<Vec<Record>> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let mut stmt = tx.prepare_cached(
        "INSERT INTO audit (seq, ts, actor, event, subject, details, prev_hash, hash, mac)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?;
    let (mut seq, mut prev) = tail.clone();
    let mut out = Vec::with_capacity(events.len());
    for e in events {
        seq += 1;
        let r = audit::seal(seq, now_rfc3339(), e.clone(), prev, key);
        stmt.execute(params![
            r.seq,
            r.ts,
            r.actor,
            r.event,
            r.subject,
            r.details.to_string(),
            r.prev_hash,
            r.hash,
            r.mac
        ])?;
        prev = r.hash.clone();
        out.push(r);
    }
    tx.prepare_cached(
        "INSERT INTO audit_head (id, seq, hash, mac) VALUES (1, ?1, ?2, ?3)
         ON CONFLICT(id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, mac = excluded.mac",
    )?
    .execute(params![seq, prev, key.map(|k| k.head_mac(seq, &prev))])?;
    Ok(out)
}

pub(super) fn row_to_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<Record> {
    let details: String = r.get(5)?;
    Ok(Record {
        seq: r.get(0)?,
        ts: r.get(1)?,
        actor: r.get(2)?,
        event: r.get(3)?,
        subject: r.get(4)?,
        // A details column that no longer parses is kept as a string, so
        // verification reports the record as altered instead of failing to read.
        details: serde_json::from_str(&details).unwrap_or(serde_json::Value::String(details)),
        prev_hash: r.get(6)?,
        hash: r.get(7)?,
        mac: r.get(8)?,
    })
}
