//! Appending to the hash chain inside a transaction, reading records back,
//! and retention (pruning decision details, dropping the oldest records
//! behind a checkpoint).

use rusqlite::{params, OptionalExtension};

use super::SqliteStore;
use crate::audit::chain::{self as audit, AuditKey, Checkpoint, Event, Record};

/// The columns [`row_to_record`] reads, in order.
pub(super) const RECORD_COLUMNS: &str =
    "seq, ts, actor, event, subject, details, prev_hash, hash, mac, details_sha256";

/// Server-clock UTC time for audit records.
fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Append `events` inside the transaction open on `tx` and move the head
/// with them; the caller advances `tail` once it commits.
pub(super) fn append(
    tx: &rusqlite::Connection,
    tail: &(i64, String),
    events: Vec<Event>,
    key: Option<&AuditKey>,
) -> anyhow::Result<Vec<Record>> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let mut stmt = tx.prepare_cached(
        "INSERT INTO audit (seq, ts, actor, event, subject, details, prev_hash, hash, mac, details_sha256)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?;
    let (mut seq, mut prev) = tail.clone();
    let mut out = Vec::with_capacity(events.len());
    for e in events {
        seq += 1;
        let (r, details) = audit::seal_with_text(seq, now_rfc3339(), e, prev, key);
        stmt.execute(params![
            r.seq,
            r.ts,
            r.actor,
            r.event,
            r.subject,
            details,
            r.prev_hash,
            r.hash,
            r.mac,
            r.details_sha256
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
        details_sha256: r.get(9)?,
    })
}

/// Drop the details of up to `limit` decision records at or before `seq`
/// (only those with a digest, whose hash does not cover the details).
pub(super) fn prune_decision_details(
    store: &SqliteStore,
    seq: i64,
    limit: usize,
) -> anyhow::Result<u64> {
    let conn = store.conn()?;
    let n = conn.execute(
        "UPDATE audit SET details = 'null' WHERE seq IN (
            SELECT seq FROM audit WHERE seq <= ?1 AND event = 'decision'
              AND details_sha256 IS NOT NULL AND details <> 'null' LIMIT ?2)",
        params![seq, limit as i64],
    )?;
    Ok(n as u64)
}

/// Drop every record up to the checkpoint's, and store the checkpoint, in
/// one transaction.
pub(super) fn drop_before(store: &SqliteStore, cp: &Checkpoint) -> anyhow::Result<u64> {
    let mut conn = store.conn()?;
    let tx = conn.transaction()?;
    let n = tx.execute("DELETE FROM audit WHERE seq <= ?1", params![cp.seq])?;
    tx.execute("DELETE FROM notify_outbox WHERE seq <= ?1", params![cp.seq])?;
    tx.execute(
        "INSERT INTO audit_checkpoint (id, seq, hash, ts, mac) VALUES (1, ?1, ?2, ?3, ?4)
         ON CONFLICT(id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, ts = excluded.ts, mac = excluded.mac",
        params![cp.seq, cp.hash, cp.ts, cp.mac],
    )?;
    tx.commit()?;
    Ok(n as u64)
}

/// The checkpoint retention left, if any.
pub(super) fn checkpoint(store: &SqliteStore) -> anyhow::Result<Option<Checkpoint>> {
    let conn = store.conn()?;
    conn.query_row(
        "SELECT seq, hash, ts, mac FROM audit_checkpoint WHERE id = 1",
        [],
        |r| {
            Ok(Checkpoint {
                seq: r.get(0)?,
                hash: r.get(1)?,
                ts: r.get(2)?,
                mac: r.get(3)?,
            })
        },
    )
    .optional()
    .map_err(Into::into)
}
