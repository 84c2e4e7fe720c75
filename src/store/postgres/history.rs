//! Action history on PostgreSQL: increments add up, so every replica's
//! counts land in the same rows.

use super::{i, u, PgStore};
use crate::history::stats::Stats;
use crate::store::HistoryRow;

pub(super) fn load(store: &PgStore) -> anyhow::Result<Vec<HistoryRow>> {
    let mut conn = store.conn()?;
    let rows = conn.query(
        "SELECT fingerprint, agent, tool, shape, seen, first_seen, last_seen, approved, rejected,
                last_decision, decision_ms_total
         FROM action_history",
        &[],
    )?;
    rows.iter()
        .map(|r| {
            Ok(HistoryRow {
                fingerprint: r.try_get(0)?,
                agent: r.try_get(1)?,
                tool: r.try_get(2)?,
                shape: r.try_get(3)?,
                stats: Stats {
                    seen: u(r.try_get(4)?),
                    first_seen: r.try_get(5)?,
                    last_seen: r.try_get(6)?,
                    approved: u(r.try_get(7)?),
                    rejected: u(r.try_get(8)?),
                    last_decision: r.try_get(9)?,
                    decision_ms_total: u(r.try_get(10)?),
                },
            })
        })
        .collect()
}

pub(super) fn add(store: &PgStore, rows: &[HistoryRow]) -> anyhow::Result<()> {
    let mut conn = store.conn()?;
    let mut tx = conn.transaction()?;
    let stmt = tx.prepare(
        "INSERT INTO action_history
           (fingerprint, agent, tool, shape, seen, first_seen, last_seen, approved, rejected,
            last_decision, decision_ms_total)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
         ON CONFLICT (fingerprint) DO UPDATE SET
           seen = action_history.seen + excluded.seen,
           first_seen = LEAST(action_history.first_seen, excluded.first_seen),
           last_seen = GREATEST(action_history.last_seen, excluded.last_seen),
           approved = action_history.approved + excluded.approved,
           rejected = action_history.rejected + excluded.rejected,
           last_decision = COALESCE(excluded.last_decision, action_history.last_decision),
           decision_ms_total = action_history.decision_ms_total + excluded.decision_ms_total",
    )?;
    for row in rows {
        let s = &row.stats;
        tx.execute(
            &stmt,
            &[
                &row.fingerprint,
                &row.agent,
                &row.tool,
                &row.shape,
                &i(s.seen),
                &s.first_seen,
                &s.last_seen,
                &i(s.approved),
                &i(s.rejected),
                &s.last_decision,
                &i(s.decision_ms_total),
            ],
        )?;
    }
    tx.commit()?;
    Ok(())
}
