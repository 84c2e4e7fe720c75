//! Grants: stored with the approval that creates them (see
//! `update_approval`), listed, and revoked with their audit record.

use rusqlite::{params, OptionalExtension};

use super::SqliteStore;
use crate::audit::chain::Event;
use crate::gate::model::Grant;

/// Store a new grant inside the transaction of the approval that creates it.
pub(super) fn insert(tx: &rusqlite::Transaction<'_>, g: &Grant) -> anyhow::Result<()> {
    tx.execute(
        "INSERT INTO grants (id, agent, approval, created_at, expires_at, revoked_at, data)
         VALUES (?1, ?2, ?3, ?4, ?5, NULL, ?6)",
        params![
            g.id,
            g.agent,
            g.approval,
            g.created_at,
            g.expires_at,
            serde_json::to_string(g)?
        ],
    )?;
    Ok(())
}

pub(super) fn list(
    store: &SqliteStore,
    live_at: Option<i64>,
    limit: usize,
) -> anyhow::Result<Vec<Grant>> {
    let conn = store.conn()?;
    let mut stmt = conn.prepare_cached(
        "SELECT data FROM grants
         WHERE ?1 IS NULL OR (revoked_at IS NULL AND expires_at > ?1)
         ORDER BY created_at DESC, id DESC LIMIT ?2",
    )?;
    let rows = stmt.query_map(
        params![live_at, limit.min(i64::MAX as usize) as i64],
        row_to_grant,
    )?;
    rows.collect::<Result<Vec<_>, _>>().map_err(Into::into)
}

pub(super) fn one(store: &SqliteStore, id: &str) -> anyhow::Result<Option<Grant>> {
    let conn = store.conn()?;
    conn.query_row(
        "SELECT data FROM grants WHERE id = ?1",
        params![id],
        row_to_grant,
    )
    .optional()
    .map_err(Into::into)
}

pub(super) fn revoke(store: &SqliteStore, g: &Grant, event: &Event) -> anyhow::Result<bool> {
    let Some(revoked) = &g.revoked else {
        anyhow::bail!("grant {} carries no revocation", g.id);
    };
    store.with_audit(|tx| {
        let changed = tx.execute(
            "UPDATE grants SET revoked_at = ?2, data = ?3 WHERE id = ?1 AND revoked_at IS NULL",
            params![g.id, revoked.at, serde_json::to_string(g)?],
        )?;
        // Already revoked: nothing changes and nothing is recorded.
        let events = if changed == 0 {
            vec![]
        } else {
            vec![event.clone()]
        };
        Ok((changed > 0, events))
    })
}

fn row_to_grant(r: &rusqlite::Row<'_>) -> rusqlite::Result<Grant> {
    let data: String = r.get(0)?;
    serde_json::from_str(&data).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}
