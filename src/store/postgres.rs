//! The PostgreSQL store, for several Latch replicas on one database: the
//! same tables and versioned migrations as SQLite (in PostgreSQL's dialect),
//! every change one transaction with its audit events, approvals guarded by
//! their version (so two replicas — or a reviewer and a deadline — cannot
//! both win), and one audit chain that every replica appends to under a
//! transaction-scoped advisory lock.
//!
//! Connections come from a small pool; a connection that broke is dropped
//! and the next call opens a new one, so a replica recovers by itself when
//! the database returns.

mod chain;
mod history;
mod listen;
pub mod migrations;
mod notify;
mod prompts;
pub mod tls;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, Context};
use postgres::{Client, Row, Transaction};

use super::{ApprovalQuery, ChangeHook, HistoryRow, Inserted, Store, StoredSession};
use crate::audit::chain::{AuditKey, Checkpoint, Event, Head, Record};
use crate::gate::model::{Approval, Grant, State};
use chain::{append, row_to_record, RECORD_COLUMNS};

/// Advisory lock key serialising migrations across replicas starting at once.
const MIGRATION_LOCK: i64 = 0x6c61_7463_6801;
/// Most idle connections kept.
const MAX_IDLE: usize = 16;

/// PostgreSQL-backed [`Store`].
pub struct PgStore {
    config: postgres::Config,
    tls: tls::Rustls,
    idle: Mutex<Vec<Client>>,
    /// Key for record MACs and the keyed head (never stored).
    key: Option<AuditKey>,
    /// Tells the change listener to stop.
    stop: Arc<AtomicBool>,
}

impl Drop for PgStore {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A pooled connection, returned to the pool when dropped (unless broken).
struct Conn<'a> {
    store: &'a PgStore,
    client: Option<Client>,
}

impl std::ops::Deref for Conn<'_> {
    type Target = Client;
    fn deref(&self) -> &Client {
        self.client.as_ref().unwrap_or_else(|| unreachable!())
    }
}

impl std::ops::DerefMut for Conn<'_> {
    fn deref_mut(&mut self) -> &mut Client {
        self.client.as_mut().unwrap_or_else(|| unreachable!())
    }
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.client.take() {
            if c.is_closed() {
                return;
            }
            if let Ok(mut idle) = self.store.idle.lock() {
                if idle.len() < MAX_IDLE {
                    idle.push(c);
                }
            }
        }
    }
}

impl PgStore {
    /// Connect to `url` (`postgres://user:pass@host:port/db[?sslmode=require]`)
    /// and migrate; TLS (when the server and `sslmode` call for it) trusts
    /// what `tls` trusts.
    pub fn connect(
        url: &str,
        key: Option<AuditKey>,
        tls: Arc<rustls::ClientConfig>,
    ) -> anyhow::Result<PgStore> {
        let mut config: postgres::Config = url
            .parse()
            .map_err(|e| anyhow!("the PostgreSQL URL does not parse: {e}"))?;
        config.connect_timeout(Duration::from_secs(5));
        config.application_name("latch");
        let store = PgStore {
            tls: tls::Rustls(tls),
            config,
            idle: Mutex::new(Vec::new()),
            key,
            stop: Arc::new(AtomicBool::new(false)),
        };
        store.migrate().context("migrating the PostgreSQL schema")?;
        Ok(store)
    }

    /// Apply the migrations this database lacks (one replica at a time).
    pub fn migrate(&self) -> anyhow::Result<u32> {
        let mut conn = self.conn()?;
        let mut tx = conn.transaction()?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
        tx.batch_execute("CREATE TABLE IF NOT EXISTS latch_schema (version BIGINT NOT NULL)")?;
        let version: i64 = match tx.query_opt("SELECT version FROM latch_schema", &[])? {
            Some(r) => r.get(0),
            None => {
                tx.execute("INSERT INTO latch_schema (version) VALUES (0)", &[])?;
                0
            }
        };
        let known = migrations::MIGRATIONS.len() as i64;
        if version > known {
            return Err(anyhow!(
                "database schema version {version} is newer than this Latch understands ({known}); upgrade Latch"
            ));
        }
        for (i, sql) in migrations::MIGRATIONS
            .iter()
            .enumerate()
            .skip(version as usize)
        {
            tx.batch_execute(sql)
                .with_context(|| format!("migration {}", i + 1))?;
            tx.execute("UPDATE latch_schema SET version = $1", &[&(i as i64 + 1)])?;
        }
        tx.commit()?;
        Ok((known - version) as u32)
    }

    fn conn(&self) -> anyhow::Result<Conn<'_>> {
        // Connections the server closed meanwhile are dropped, not handed out.
        let pooled = self.idle.lock().ok().and_then(|mut idle| {
            idle.retain(|c| !c.is_closed());
            idle.pop()
        });
        let client = match pooled {
            Some(c) => c,
            None => self
                .config
                .connect(self.tls.clone())
                .context("connecting to PostgreSQL")?,
        };
        Ok(Conn {
            store: self,
            client: Some(client),
        })
    }

    /// Run `body` in one transaction with the audit events it returns
    /// appended to the chain (and the outbox).
    fn with_audit<T>(
        &self,
        body: impl FnOnce(&mut Transaction<'_>) -> anyhow::Result<(T, Vec<Event>)>,
    ) -> anyhow::Result<T> {
        let mut conn = self.conn()?;
        let mut tx = conn.transaction()?;
        let (out, events) = body(&mut tx)?;
        let records = append(&mut tx, events, self.key.as_ref())?;
        notify::outbox(&mut tx, &records)?;
        tx.commit()?;
        Ok(out)
    }
}

const APPROVAL_COLUMNS: &str = "data, body, original_body, result_body";

fn row_to_approval(r: &Row) -> anyhow::Result<Approval> {
    let data: String = r.try_get(0)?;
    let mut a: Approval = serde_json::from_str(&data)?;
    a.body = r.try_get(1)?;
    a.original_body = r.try_get(2)?;
    if let (Some(result), Some(body)) = (a.result.as_mut(), r.try_get::<_, Option<Vec<u8>>>(3)?) {
        result.body = body;
    }
    Ok(a)
}

fn approvals(rows: Vec<Row>) -> anyhow::Result<Vec<Approval>> {
    rows.iter().map(row_to_approval).collect()
}

fn approval_params(a: &Approval) -> anyhow::Result<(String, Option<Vec<u8>>)> {
    let data = serde_json::to_string(a)?;
    let result_body = a.result.as_ref().map(|r| r.body.clone());
    Ok((data, result_body))
}

fn u(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

fn i(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Store for PgStore {
    fn load_history(&self) -> anyhow::Result<Vec<HistoryRow>> {
        history::load(self)
    }

    fn add_history(&self, rows: &[HistoryRow]) -> anyhow::Result<()> {
        history::add(self, rows)
    }

    fn shared(&self) -> bool {
        true
    }

    fn ping(&self) -> anyhow::Result<()> {
        let mut conn = self.conn()?;
        // Writable, not only reachable: a read-only standby is not ready.
        let row = conn
            .query_one("SELECT pg_is_in_recovery()", &[])
            .context("PostgreSQL does not answer")?;
        if row.get::<_, bool>(0) {
            return Err(anyhow!("PostgreSQL is a read-only standby"));
        }
        Ok(())
    }

    fn save_session(&self, s: &StoredSession) -> anyhow::Result<()> {
        self.conn()?.execute(
            "INSERT INTO sessions (id_sha256, principal, csrf, last_used) VALUES ($1, $2, $3, $4)
             ON CONFLICT (id_sha256) DO UPDATE SET last_used = excluded.last_used",
            &[&s.id_sha256, &s.principal, &s.csrf, &s.last_used],
        )?;
        Ok(())
    }

    fn session(&self, id_sha256: &str) -> anyhow::Result<Option<StoredSession>> {
        let row = self.conn()?.query_opt(
            "SELECT id_sha256, principal, csrf, last_used FROM sessions WHERE id_sha256 = $1",
            &[&id_sha256],
        )?;
        row.map(|r| {
            Ok(StoredSession {
                id_sha256: r.try_get(0)?,
                principal: r.try_get(1)?,
                csrf: r.try_get(2)?,
                last_used: r.try_get(3)?,
            })
        })
        .transpose()
    }

    fn delete_session(&self, id_sha256: &str) -> anyhow::Result<()> {
        self.conn()?
            .execute("DELETE FROM sessions WHERE id_sha256 = $1", &[&id_sha256])?;
        Ok(())
    }

    fn append_audit(&self, events: Vec<Event>) -> anyhow::Result<Vec<Record>> {
        let mut conn = self.conn()?;
        let mut tx = conn.transaction()?;
        let records = append(&mut tx, events, self.key.as_ref())?;
        tx.commit()?;
        Ok(records)
    }

    fn audit_head(&self) -> anyhow::Result<Option<Head>> {
        let row = self
            .conn()?
            .query_opt("SELECT seq, hash, mac FROM audit_head WHERE id = 1", &[])?;
        row.map(|r| {
            Ok(Head {
                seq: r.try_get(0)?,
                hash: r.try_get(1)?,
                mac: r.try_get(2)?,
            })
        })
        .transpose()
    }

    fn audit_of(&self, subject: &str) -> anyhow::Result<Vec<Record>> {
        let rows = self.conn()?.query(
            &format!("SELECT {RECORD_COLUMNS} FROM audit WHERE subject = $1 ORDER BY seq"),
            &[&subject],
        )?;
        rows.iter().map(row_to_record).collect()
    }

    fn audit_after(&self, after: i64, limit: usize) -> anyhow::Result<Vec<Record>> {
        let rows = self.conn()?.query(
            &format!("SELECT {RECORD_COLUMNS} FROM audit WHERE seq > $1 ORDER BY seq LIMIT $2"),
            &[&after, &(limit as i64)],
        )?;
        rows.iter().map(row_to_record).collect()
    }

    fn prune_decision_details(&self, up_to_seq: i64, limit: usize) -> anyhow::Result<u64> {
        let n = self.conn()?.execute(
            "UPDATE audit SET details = 'null' WHERE seq IN (
                SELECT seq FROM audit WHERE seq <= $1 AND event = 'decision'
                  AND details_sha256 IS NOT NULL AND details <> 'null' LIMIT $2)",
            &[&up_to_seq, &(limit as i64)],
        )?;
        Ok(n)
    }

    fn drop_audit_before(&self, cp: &Checkpoint) -> anyhow::Result<u64> {
        let mut conn = self.conn()?;
        let mut tx = conn.transaction()?;
        let n = tx.execute("DELETE FROM audit WHERE seq <= $1", &[&cp.seq])?;
        tx.execute("DELETE FROM notify_outbox WHERE seq <= $1", &[&cp.seq])?;
        tx.execute(
            "INSERT INTO audit_checkpoint (id, seq, hash, ts, mac) VALUES (1, $1, $2, $3, $4)
             ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, ts = excluded.ts,
                                            mac = excluded.mac",
            &[&cp.seq, &cp.hash, &cp.ts, &cp.mac],
        )?;
        tx.commit()?;
        Ok(n)
    }

    fn audit_checkpoint(&self) -> anyhow::Result<Option<Checkpoint>> {
        let row = self.conn()?.query_opt(
            "SELECT seq, hash, ts, mac FROM audit_checkpoint WHERE id = 1",
            &[],
        )?;
        row.map(|r| {
            Ok(Checkpoint {
                seq: r.try_get(0)?,
                hash: r.try_get(1)?,
                ts: r.try_get(2)?,
                mac: r.try_get(3)?,
            })
        })
        .transpose()
    }

    fn insert_approval(
        &self,
        a: &Approval,
        event: &Event,
        max_pending: u64,
    ) -> anyhow::Result<Inserted> {
        self.with_audit(|tx| {
            // One agent's proposals take turns, so its cap and its
            // idempotency keys hold across replicas.
            tx.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                &[&a.agent],
            )?;
            if let Some(key) = &a.idempotency_key {
                let existing = tx.query_opt(
                    &format!("SELECT {APPROVAL_COLUMNS} FROM approvals WHERE agent = $1 AND idempotency_key = $2"),
                    &[&a.agent, key],
                )?;
                if let Some(row) = existing {
                    return Ok((Inserted::Existing(Box::new(row_to_approval(&row)?)), vec![]));
                }
            }
            let pending: i64 = tx
                .query_one(
                    "SELECT COUNT(*) FROM approvals WHERE agent = $1 AND state = 'pending'",
                    &[&a.agent],
                )?
                .get(0);
            if u(pending) >= max_pending {
                return Ok((Inserted::TooMany(u(pending)), vec![]));
            }
            let (data, result_body) = approval_params(a)?;
            tx.execute(
                "INSERT INTO approvals (id, state, agent, idempotency_key, deadline, created_at, version,
                                        data, body, original_body, result_body)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                &[
                    &a.id,
                    &a.state.as_str(),
                    &a.agent,
                    &a.idempotency_key,
                    &a.deadline,
                    &a.created_at,
                    &a.version,
                    &data,
                    &a.body,
                    &a.original_body,
                    &result_body,
                ],
            )?;
            tx.execute("SELECT pg_notify($1, $2)", &[&listen::CHANNEL, &a.id])?;
            Ok((Inserted::New, vec![event.clone()]))
        })
    }

    fn approval(&self, id: &str) -> anyhow::Result<Option<Approval>> {
        let row = self.conn()?.query_opt(
            &format!("SELECT {APPROVAL_COLUMNS} FROM approvals WHERE id = $1"),
            &[&id],
        )?;
        row.as_ref().map(row_to_approval).transpose()
    }

    fn list_approvals(&self, q: &ApprovalQuery) -> anyhow::Result<Vec<Approval>> {
        let mut conn = self.conn()?;
        let limit = i64::try_from(q.limit).unwrap_or(i64::MAX);
        let (at, id) = match &q.after {
            Some(c) => (Some(c.at), Some(c.id.as_str())),
            None => (None, None),
        };
        let rows = if q.state == Some(State::Pending) {
            conn.query(
                &format!(
                    "SELECT {APPROVAL_COLUMNS} FROM approvals
                     WHERE state = 'pending' AND ($1::TEXT IS NULL OR agent = $1)
                       AND ($2::BIGINT IS NULL OR deadline > $2 OR (deadline = $2 AND id > $3))
                     ORDER BY deadline, id LIMIT $4"
                ),
                &[&q.agent, &at, &id, &limit],
            )?
        } else {
            conn.query(
                &format!(
                    "SELECT {APPROVAL_COLUMNS} FROM approvals
                     WHERE ($5::TEXT IS NULL OR state = $5) AND ($1::TEXT IS NULL OR agent = $1)
                       AND ($2::BIGINT IS NULL OR created_at < $2 OR (created_at = $2 AND id < $3))
                     ORDER BY created_at DESC, id DESC LIMIT $4"
                ),
                &[&q.agent, &at, &id, &limit, &q.state.map(State::as_str)],
            )?
        };
        approvals(rows)
    }

    fn count_approvals(&self, state: Option<State>, agent: Option<&str>) -> anyhow::Result<u64> {
        let n: i64 = self
            .conn()?
            .query_one(
                "SELECT COUNT(*) FROM approvals
                 WHERE ($1::TEXT IS NULL OR state = $1) AND ($2::TEXT IS NULL OR agent = $2)",
                &[&state.map(State::as_str), &agent],
            )?
            .get(0);
        Ok(u(n))
    }

    fn oldest_pending(&self) -> anyhow::Result<Vec<(String, i64)>> {
        let rows = self.conn()?.query(
            "SELECT COALESCE((data::jsonb) -> 'decision' ->> 'risk', '') AS risk, MIN(created_at)
             FROM approvals WHERE state = 'pending' GROUP BY risk",
            &[],
        )?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    fn due_approvals(&self, now_ms: i64) -> anyhow::Result<Vec<Approval>> {
        let rows = self.conn()?.query(
            &format!(
                "SELECT {APPROVAL_COLUMNS} FROM approvals
                 WHERE state = 'pending' AND deadline <= $1 ORDER BY deadline"
            ),
            &[&now_ms],
        )?;
        approvals(rows)
    }

    fn update_approval(
        &self,
        a: &Approval,
        expected_version: i64,
        events: &[Event],
        grant: Option<&Grant>,
    ) -> anyhow::Result<bool> {
        self.with_audit(|tx| {
            let (data, result_body) = approval_params(a)?;
            let changed = tx.execute(
                "UPDATE approvals SET state = $2, deadline = $3, version = $4, data = $5, body = $6,
                        original_body = $7, result_body = $8
                 WHERE id = $1 AND version = $9",
                &[
                    &a.id,
                    &a.state.as_str(),
                    &a.deadline,
                    &a.version,
                    &data,
                    &a.body,
                    &a.original_body,
                    &result_body,
                    &expected_version,
                ],
            )?;
            if changed == 0 {
                return Ok((false, vec![]));
            }
            // Delivered at commit to every replica listening.
            tx.execute("SELECT pg_notify($1, $2)", &[&listen::CHANNEL, &a.id])?;
            if let Some(g) = grant {
                let note = format!("grant:{}", g.id);
                tx.execute("SELECT pg_notify($1, $2)", &[&listen::CHANNEL, &note])?;
                tx.execute(
                    "INSERT INTO grants (id, agent, approval, created_at, expires_at, revoked_at, data)
                     VALUES ($1, $2, $3, $4, $5, NULL, $6)",
                    &[
                        &g.id,
                        &g.agent,
                        &g.approval,
                        &g.created_at,
                        &g.expires_at,
                        &serde_json::to_string(g)?,
                    ],
                )?;
            }
            Ok((true, events.to_vec()))
        })
    }

    fn grants(&self, live_at: Option<i64>, limit: usize) -> anyhow::Result<Vec<Grant>> {
        let rows = self.conn()?.query(
            "SELECT data FROM grants
             WHERE $1::BIGINT IS NULL OR (revoked_at IS NULL AND expires_at > $1)
             ORDER BY created_at DESC, id DESC LIMIT $2",
            &[&live_at, &(limit.min(i64::MAX as usize) as i64)],
        )?;
        rows.iter()
            .map(|r| Ok(serde_json::from_str(&r.try_get::<_, String>(0)?)?))
            .collect()
    }

    fn grant(&self, id: &str) -> anyhow::Result<Option<Grant>> {
        let row = self
            .conn()?
            .query_opt("SELECT data FROM grants WHERE id = $1", &[&id])?;
        row.map(|r| Ok(serde_json::from_str(&r.try_get::<_, String>(0)?)?))
            .transpose()
    }

    fn watch_changes(&self, changed: ChangeHook) -> anyhow::Result<()> {
        let (config, tls, stop) = (self.config.clone(), self.tls.clone(), self.stop.clone());
        std::thread::Builder::new()
            .name("latch-pg-listen".into())
            .spawn(move || listen::run(config, tls, changed, stop))?;
        Ok(())
    }

    fn revoke_grant(&self, g: &Grant, event: &Event) -> anyhow::Result<bool> {
        let Some(revoked) = &g.revoked else {
            anyhow::bail!("grant {} carries no revocation", g.id);
        };
        self.with_audit(|tx| {
            let changed = tx.execute(
                "UPDATE grants SET revoked_at = $2, data = $3 WHERE id = $1 AND revoked_at IS NULL",
                &[&g.id, &revoked.at, &serde_json::to_string(g)?],
            )?;
            let events = if changed == 0 {
                vec![]
            } else {
                let note = format!("grant:{}", g.id);
                tx.execute("SELECT pg_notify($1, $2)", &[&listen::CHANNEL, &note])?;
                vec![event.clone()]
            };
            Ok((changed > 0, events))
        })
    }
}
