//! The notification outbox and deliveries on SQLite.

use rusqlite::{params, OptionalExtension};

use super::chain::{row_to_record, RECORD_COLUMNS};
use super::SqliteStore;
use crate::audit::chain::Record;
use crate::store::notify::{Delivery, Finished, NewDelivery, NotifyStore, OUTBOX_EVENTS};

/// Inside an approval change's transaction: put the records a reviewer
/// should hear about in the outbox, so a crash cannot separate the change
/// from its notification.
pub(super) fn outbox(tx: &rusqlite::Transaction<'_>, records: &[Record]) -> anyhow::Result<()> {
    for r in records {
        if OUTBOX_EVENTS.contains(&r.event.as_str()) {
            tx.prepare_cached("INSERT INTO notify_outbox (seq) VALUES (?1)")?
                .execute(params![r.seq])?;
        }
    }
    Ok(())
}

const DELIVERY_COLUMNS: &str =
    "id, approval, channel, kind, payload, created_at, attempts, state, last_error, next_at";

fn row_to_delivery(r: &rusqlite::Row<'_>) -> rusqlite::Result<Delivery> {
    let payload: String = r.get(4)?;
    Ok(Delivery {
        id: r.get(0)?,
        message: NewDelivery {
            approval: r.get(1)?,
            channel: r.get(2)?,
            kind: r.get(3)?,
            payload: serde_json::from_str(&payload).unwrap_or(serde_json::Value::Null),
            created_at: r.get(5)?,
        },
        attempts: r.get(6)?,
        state: r.get(7)?,
        last_error: r.get(8)?,
        next_at: r.get(9)?,
    })
}

impl NotifyStore for SqliteStore {
    fn outbox(&self, limit: usize) -> anyhow::Result<Vec<Record>> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {RECORD_COLUMNS} FROM audit
             WHERE seq IN (SELECT seq FROM notify_outbox ORDER BY seq LIMIT ?1) ORDER BY seq"
        ))?;
        let rows = stmt.query_map(params![limit as i64], row_to_record)?;
        rows.collect::<Result<_, _>>().map_err(Into::into)
    }

    fn fan_out(&self, seqs: &[i64], deliveries: &[NewDelivery]) -> anyhow::Result<()> {
        let mut conn = self.conn()?;
        let tx = conn.transaction()?;
        for d in deliveries {
            tx.prepare_cached(
                "INSERT INTO notify_deliveries (approval, channel, kind, payload, created_at, next_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
            )?
            .execute(params![
                d.approval,
                d.channel,
                d.kind,
                d.payload.to_string(),
                d.created_at
            ])?;
        }
        for seq in seqs {
            tx.prepare_cached("DELETE FROM notify_outbox WHERE seq = ?1")?
                .execute(params![seq])?;
        }
        tx.commit()?;
        Ok(())
    }

    fn claim_deliveries(
        &self,
        now: i64,
        lease_until: i64,
        limit: usize,
    ) -> anyhow::Result<Vec<Delivery>> {
        let mut conn = self.conn()?;
        let tx = conn.transaction()?;
        let claimed: Vec<Delivery> = {
            let mut stmt = tx.prepare_cached(&format!(
                "SELECT {DELIVERY_COLUMNS} FROM notify_deliveries d
                 WHERE state = 'pending' AND next_at <= ?1 AND lease_until <= ?1
                   AND NOT EXISTS (SELECT 1 FROM notify_deliveries e
                                   WHERE e.approval = d.approval AND e.channel = d.channel
                                     AND e.state = 'pending' AND e.id < d.id)
                 ORDER BY next_at, id LIMIT ?2"
            ))?;
            let rows = stmt.query_map(params![now, limit as i64], row_to_delivery)?;
            rows.collect::<Result<_, _>>()?
        };
        for d in &claimed {
            tx.prepare_cached("UPDATE notify_deliveries SET lease_until = ?2 WHERE id = ?1")?
                .execute(params![d.id, lease_until])?;
        }
        tx.commit()?;
        Ok(claimed)
    }

    fn finish_delivery(&self, id: i64, how: &Finished) -> anyhow::Result<()> {
        let conn = self.conn()?;
        match how {
            Finished::Sent => {
                conn.prepare_cached("DELETE FROM notify_deliveries WHERE id = ?1")?
                    .execute(params![id])?;
            }
            Finished::Retry { at, error } => {
                conn.prepare_cached(
                    "UPDATE notify_deliveries SET attempts = attempts + 1, next_at = ?2,
                            lease_until = 0, last_error = ?3 WHERE id = ?1",
                )?
                .execute(params![id, at, error])?;
            }
            Finished::Dead { error } => {
                conn.prepare_cached(
                    "UPDATE notify_deliveries SET attempts = attempts + 1, state = 'dead',
                            lease_until = 0, last_error = ?2 WHERE id = ?1",
                )?
                .execute(params![id, error])?;
            }
        }
        Ok(())
    }

    fn dead_letters(&self, limit: usize) -> anyhow::Result<Vec<Delivery>> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM notify_deliveries WHERE state = 'dead'
             ORDER BY id DESC LIMIT ?1"
        ))?;
        let rows = stmt.query_map(params![limit as i64], row_to_delivery)?;
        rows.collect::<Result<_, _>>().map_err(Into::into)
    }

    fn requeue_dead(&self, id: i64, now: i64) -> anyhow::Result<bool> {
        let conn = self.conn()?;
        let changed = conn.execute(
            "UPDATE notify_deliveries SET state = 'pending', attempts = 0, next_at = ?2, lease_until = 0
             WHERE id = ?1 AND state = 'dead'",
            params![id, now],
        )?;
        Ok(changed == 1)
    }

    fn notify_backlog(&self) -> anyhow::Result<(u64, u64)> {
        let conn = self.conn()?;
        let outbox: i64 = conn.query_row("SELECT COUNT(*) FROM notify_outbox", [], |r| r.get(0))?;
        let (pending, dead): (i64, i64) = conn.query_row(
            "SELECT COALESCE(SUM(state = 'pending'), 0), COALESCE(SUM(state = 'dead'), 0)
             FROM notify_deliveries",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok(((outbox + pending) as u64, dead as u64))
    }

    fn slack_message(
        &self,
        approval: &str,
        channel: &str,
    ) -> anyhow::Result<Option<(String, String)>> {
        let conn = self.conn()?;
        conn.query_row(
            "SELECT slack_channel, ts FROM notify_slack WHERE approval = ?1 AND channel = ?2",
            params![approval, channel],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(Into::into)
    }

    fn save_slack_message(
        &self,
        approval: &str,
        channel: &str,
        slack_channel: &str,
        ts: &str,
    ) -> anyhow::Result<()> {
        let conn = self.conn()?;
        conn.execute(
            "INSERT INTO notify_slack (approval, channel, slack_channel, ts) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(approval, channel) DO UPDATE SET slack_channel = excluded.slack_channel, ts = excluded.ts",
            params![approval, channel, slack_channel, ts],
        )?;
        Ok(())
    }

    fn forget_slack_message(&self, approval: &str, channel: &str) -> anyhow::Result<()> {
        let conn = self.conn()?;
        conn.execute(
            "DELETE FROM notify_slack WHERE approval = ?1 AND channel = ?2",
            params![approval, channel],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::chain::Event;
    use crate::store::Store;

    fn delivery(approval: &str, channel: &str, kind: &str) -> NewDelivery {
        NewDelivery {
            approval: approval.into(),
            channel: channel.into(),
            kind: kind.into(),
            payload: serde_json::json!({"k": kind}),
            created_at: 10,
        }
    }

    #[test]
    fn deliveries_go_in_order_per_approval_and_channel_and_dead_letters_stay() {
        let s = SqliteStore::memory(None).unwrap();
        // Plain decisions never reach the outbox.
        s.append_audit(vec![Event::new(
            "bot",
            "decision",
            "r1",
            serde_json::json!({}),
        )])
        .unwrap();
        assert!(s.outbox(10).unwrap().is_empty());
        s.fan_out(
            &[],
            &[
                delivery("a1", "slack", "requested"),
                delivery("a1", "slack", "decided"),
                delivery("a1", "hooks", "requested"),
            ],
        )
        .unwrap();
        let first = s.claim_deliveries(20, 1000, 10).unwrap();
        let kinds: Vec<_> = first
            .iter()
            .map(|d| (d.message.channel.as_str(), d.message.kind.as_str()))
            .collect();
        assert_eq!(kinds, [("slack", "requested"), ("hooks", "requested")]);
        // Leased: not handed out twice.
        assert!(s.claim_deliveries(20, 1000, 10).unwrap().is_empty());
        s.finish_delivery(first[0].id, &Finished::Sent).unwrap();
        let at = 5000;
        s.finish_delivery(
            first[1].id,
            &Finished::Retry {
                at,
                error: "503".into(),
            },
        )
        .unwrap();
        let next = s.claim_deliveries(20, 1000, 10).unwrap();
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].message.kind, "decided");
        s.finish_delivery(
            next[0].id,
            &Finished::Dead {
                error: "invalid_auth".into(),
            },
        )
        .unwrap();
        assert_eq!(s.notify_backlog().unwrap(), (1, 1));
        let retry = s.claim_deliveries(at, at + 1000, 10).unwrap();
        assert_eq!(
            (retry[0].attempts, retry[0].last_error.as_deref()),
            (1, Some("503"))
        );
        let dead = s.dead_letters(10).unwrap();
        assert_eq!((dead[0].state.as_str(), dead[0].attempts), ("dead", 1));
        assert!(s.requeue_dead(dead[0].id, 30).unwrap());
        assert!(!s.requeue_dead(dead[0].id, 30).unwrap());
        assert_eq!(s.notify_backlog().unwrap(), (2, 0));
    }
}
