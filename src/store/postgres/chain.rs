//! The one audit chain every replica appends to: an append takes a
//! transaction-scoped advisory lock, reads the head, writes the records and
//! moves the head, all in the caller's transaction.

use postgres::{Row, Transaction};

use crate::audit::chain::{self as audit, AuditKey, Event, Record};

/// The columns [`row_to_record`] reads, in order.
pub(super) const RECORD_COLUMNS: &str =
    "seq, ts, actor, event, subject, details, prev_hash, hash, mac, details_sha256";

/// Advisory lock key serialising appends to the chain across replicas.
const CHAIN_LOCK: i64 = 0x6c61_7463_6802;

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Append `events` inside `tx`, after whatever any replica appended last.
pub(super) fn append(
    tx: &mut Transaction<'_>,
    events: Vec<Event>,
    key: Option<&AuditKey>,
) -> anyhow::Result<Vec<Record>> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&CHAIN_LOCK])?;
    let (mut seq, mut prev): (i64, String) =
        match tx.query_opt("SELECT seq, hash FROM audit_head WHERE id = 1", &[])? {
            Some(r) => (r.try_get(0)?, r.try_get(1)?),
            None => (0, audit::GENESIS.to_string()),
        };
    let stmt = tx.prepare(
        "INSERT INTO audit (seq, ts, actor, event, subject, details, prev_hash, hash, mac, details_sha256)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )?;
    let mut out = Vec::with_capacity(events.len());
    for e in events {
        seq += 1;
        let (r, details) = audit::seal_with_text(seq, now_rfc3339(), e, prev, key);
        tx.execute(
            &stmt,
            &[
                &r.seq,
                &r.ts,
                &r.actor,
                &r.event,
                &r.subject,
                &details,
                &r.prev_hash,
                &r.hash,
                &r.mac,
                &r.details_sha256,
            ],
        )?;
        prev = r.hash.clone();
        out.push(r);
    }
    tx.execute(
        "INSERT INTO audit_head (id, seq, hash, mac) VALUES (1, $1, $2, $3)
         ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, mac = excluded.mac",
        &[&seq, &prev, &key.map(|k| k.head_mac(seq, &prev))],
    )?;
    Ok(out)
}

pub(super) fn row_to_record(r: &Row) -> anyhow::Result<Record> {
    let details: String = r.try_get(5)?;
    Ok(Record {
        seq: r.try_get(0)?,
        ts: r.try_get(1)?,
        actor: r.try_get(2)?,
        event: r.try_get(3)?,
        subject: r.try_get(4)?,
        // Kept as a string when it no longer parses: verification then
        // reports the record as altered instead of failing to read it.
        details: serde_json::from_str(&details).unwrap_or(serde_json::Value::String(details)),
        prev_hash: r.try_get(6)?,
        hash: r.try_get(7)?,
        mac: r.try_get(8)?,
        details_sha256: r.try_get(9)?,
    })
}
