//! The notification outbox and deliveries on PostgreSQL; replicas claim
//! deliveries with `SKIP LOCKED`, so each is handed to one of them.

use postgres::{Row, Transaction};

use super::chain::{row_to_record, RECORD_COLUMNS};
use super::PgStore;
use crate::audit::chain::Record;
use crate::store::notify::{Delivery, Finished, NewDelivery, NotifyStore, OUTBOX_EVENTS};

/// Inside an approval change's transaction: the records reviewers should
/// hear about go to the outbox.
pub(super) fn outbox(tx: &mut Transaction<'_>, records: &[Record]) -> anyhow::Result<()> {
    for r in records {
        if OUTBOX_EVENTS.contains(&r.event.as_str()) {
            tx.execute("INSERT INTO notify_outbox (seq) VALUES ($1)", &[&r.seq])?;
        }
    }
    Ok(())
}

const DELIVERY_COLUMNS: &str =
    "id, approval, channel, kind, payload, created_at, attempts, state, last_error, next_at";

fn row_to_delivery(r: &Row) -> anyhow::Result<Delivery> {
    let payload: String = r.try_get(4)?;
    Ok(Delivery {
        id: r.try_get(0)?,
        message: NewDelivery {
            approval: r.try_get(1)?,
            channel: r.try_get(2)?,
            kind: r.try_get(3)?,
            payload: serde_json::from_str(&payload).unwrap_or(serde_json::Value::Null),
            created_at: r.try_get(5)?,
        },
        attempts: u32::try_from(r.try_get::<_, i64>(6)?).unwrap_or(u32::MAX),
        state: r.try_get(7)?,
        last_error: r.try_get(8)?,
        next_at: r.try_get(9)?,
    })
}

fn deliveries(rows: Vec<Row>) -> anyhow::Result<Vec<Delivery>> {
    rows.iter().map(row_to_delivery).collect()
}

impl NotifyStore for PgStore {
    fn outbox(&self, limit: usize) -> anyhow::Result<Vec<Record>> {
        let rows = self.conn()?.query(
            &format!(
                "SELECT {RECORD_COLUMNS} FROM audit
                 WHERE seq IN (SELECT seq FROM notify_outbox ORDER BY seq LIMIT $1) ORDER BY seq"
            ),
            &[&(limit as i64)],
        )?;
        rows.iter().map(row_to_record).collect()
    }

    fn fan_out(&self, seqs: &[i64], new: &[NewDelivery]) -> anyhow::Result<()> {
        let mut conn = self.conn()?;
        let mut tx = conn.transaction()?;
        // Another replica may fan out the same records: only the one that
        // removes them from the outbox writes their deliveries.
        let mut taken = 0;
        for seq in seqs {
            taken += tx.execute("DELETE FROM notify_outbox WHERE seq = $1", &[seq])?;
        }
        if !seqs.is_empty() && taken < seqs.len() as u64 {
            return Ok(());
        }
        for d in new {
            tx.execute(
                "INSERT INTO notify_deliveries (approval, channel, kind, payload, created_at, next_at)
                 VALUES ($1, $2, $3, $4, $5, $5)",
                &[&d.approval, &d.channel, &d.kind, &d.payload.to_string(), &d.created_at],
            )?;
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
        let mut tx = conn.transaction()?;
        let claimed = deliveries(tx.query(
            &format!(
                "SELECT {DELIVERY_COLUMNS} FROM notify_deliveries d
                 WHERE state = 'pending' AND next_at <= $1 AND lease_until <= $1
                   AND NOT EXISTS (SELECT 1 FROM notify_deliveries e
                                   WHERE e.approval = d.approval AND e.channel = d.channel
                                     AND e.state = 'pending' AND e.id < d.id)
                 ORDER BY next_at, id LIMIT $2
                 FOR UPDATE SKIP LOCKED"
            ),
            &[&now, &(limit as i64)],
        )?)?;
        for d in &claimed {
            tx.execute(
                "UPDATE notify_deliveries SET lease_until = $2 WHERE id = $1",
                &[&d.id, &lease_until],
            )?;
        }
        tx.commit()?;
        Ok(claimed)
    }

    fn finish_delivery(&self, id: i64, how: &Finished) -> anyhow::Result<()> {
        let mut conn = self.conn()?;
        match how {
            Finished::Sent => {
                conn.execute("DELETE FROM notify_deliveries WHERE id = $1", &[&id])?;
            }
            Finished::Retry { at, error } => {
                conn.execute(
                    "UPDATE notify_deliveries SET attempts = attempts + 1, next_at = $2,
                            lease_until = 0, last_error = $3 WHERE id = $1",
                    &[&id, at, error],
                )?;
            }
            Finished::Dead { error } => {
                conn.execute(
                    "UPDATE notify_deliveries SET attempts = attempts + 1, state = 'dead',
                            lease_until = 0, last_error = $2 WHERE id = $1",
                    &[&id, error],
                )?;
            }
        }
        Ok(())
    }

    fn dead_letters(&self, limit: usize) -> anyhow::Result<Vec<Delivery>> {
        deliveries(self.conn()?.query(
            &format!(
                "SELECT {DELIVERY_COLUMNS} FROM notify_deliveries WHERE state = 'dead'
                 ORDER BY id DESC LIMIT $1"
            ),
            &[&(limit as i64)],
        )?)
    }

    fn requeue_dead(&self, id: i64, now: i64) -> anyhow::Result<bool> {
        let changed = self.conn()?.execute(
            "UPDATE notify_deliveries SET state = 'pending', attempts = 0, next_at = $2, lease_until = 0
             WHERE id = $1 AND state = 'dead'",
            &[&id, &now],
        )?;
        Ok(changed == 1)
    }

    fn notify_backlog(&self) -> anyhow::Result<(u64, u64)> {
        let row = self.conn()?.query_one(
            "SELECT (SELECT COUNT(*) FROM notify_outbox),
                    COUNT(*) FILTER (WHERE state = 'pending'), COUNT(*) FILTER (WHERE state = 'dead')
             FROM notify_deliveries",
            &[],
        )?;
        let (outbox, pending, dead): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
        Ok(((outbox + pending) as u64, dead as u64))
    }

    fn slack_message(
        &self,
        approval: &str,
        channel: &str,
    ) -> anyhow::Result<Option<(String, String)>> {
        let row = self.conn()?.query_opt(
            "SELECT slack_channel, ts FROM notify_slack WHERE approval = $1 AND channel = $2",
            &[&approval, &channel],
        )?;
        row.map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).transpose()
    }

    fn save_slack_message(
        &self,
        approval: &str,
        channel: &str,
        slack_channel: &str,
        ts: &str,
    ) -> anyhow::Result<()> {
        self.conn()?.execute(
            "INSERT INTO notify_slack (approval, channel, slack_channel, ts) VALUES ($1, $2, $3, $4)
             ON CONFLICT (approval, channel) DO UPDATE SET slack_channel = excluded.slack_channel,
                                                           ts = excluded.ts",
            &[&approval, &channel, &slack_channel, &ts],
        )?;
        Ok(())
    }

    fn forget_slack_message(&self, approval: &str, channel: &str) -> anyhow::Result<()> {
        self.conn()?.execute(
            "DELETE FROM notify_slack WHERE approval = $1 AND channel = $2",
            &[&approval, &channel],
        )?;
        Ok(())
    }
}
