//! The embedded SQLite store: WAL journal, full sync on commit, versioned
//! migrations kept in `PRAGMA user_version`.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, Context};
use rusqlite::{params, Connection, OptionalExtension};

use super::migrations::MIGRATIONS;
use super::{ApprovalQuery, HistoryRow, Inserted, Store, StoredSession};
use crate::audit::chain::{self as audit, AuditKey, Checkpoint, Event, Head, Record};
use crate::gate::model::{Approval, Grant, State};
use crate::history::stats::Stats;
use chain::{append, row_to_record, RECORD_COLUMNS};
use db::{unsynced, Db};

/// SQLite-backed [`Store`].
pub struct SqliteStore {
    conn: Mutex<Db>,
    /// Key for record MACs and the keyed head (never stored).
    key: Option<AuditKey>,
    /// Tells the checkpoint thread to stop.
    stop: Arc<AtomicBool>,
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Copy the WAL back into the database from a separate connection, so the
/// writer never pays for a checkpoint inside a commit (SQLite's automatic
/// checkpoint would stall whichever request happened to cross the threshold).
fn checkpointer(path: std::path::PathBuf, stop: Arc<AtomicBool>) {
    let conn = match Connection::open(&path) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "checkpoint connection failed; the WAL will grow");
            return;
        }
    };
    let _ = conn.busy_timeout(std::time::Duration::from_millis(100));
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(std::time::Duration::from_millis(500));
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::debug!(error = %e, "checkpoint skipped");
        }
    }
}

impl SqliteStore {
    /// Open (creating if needed) the database file and migrate it.
    pub fn open(path: &Path, key: Option<AuditKey>) -> anyhow::Result<SqliteStore> {
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
        }
        let conn = Connection::open(path)
            .with_context(|| format!("opening SQLite database {}", path.display()))?;
        let store = Self::init(conn, key)
            .with_context(|| format!("preparing SQLite database {}", path.display()))?;
        store
            .db()?
            .conn
            .pragma_update(None, "wal_autocheckpoint", 0)?;
        let (path, stop) = (path.to_path_buf(), store.stop.clone());
        std::thread::Builder::new()
            .name("latch-checkpoint".into())
            .spawn(move || checkpointer(path, stop))?;
        Ok(store)
    }

    /// A private in-memory database (nothing survives the process).
    pub fn memory(key: Option<AuditKey>) -> anyhow::Result<SqliteStore> {
        Self::init(Connection::open_in_memory()?, key)
    }

    fn init(mut conn: Connection, key: Option<AuditKey>) -> anyhow::Result<SqliteStore> {
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // WAL lets readers run beside the writer; FULL sync makes a commit
        // durable before we act on it.
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if mode != "wal" && mode != "memory" {
            return Err(anyhow!("SQLite refused WAL mode (got {mode})"));
        }
        conn.execute_batch("PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;")?;
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Err(anyhow!(
                "database schema version {version} is newer than this Latch understands ({known}); upgrade Latch"
            ));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = conn.transaction()?;
            tx.execute_batch(sql)
                .with_context(|| format!("migration {}", i + 1))?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
            tx.commit()?;
        }
        // The head, not the newest row: retention may have dropped every record.
        let tail = conn
            .query_row("SELECT seq, hash FROM audit_head WHERE id = 1", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?
            .unwrap_or((0, audit::GENESIS.to_string()));
        Ok(SqliteStore {
            key,
            conn: Mutex::new(Db {
                conn,
                tail,
                synced: Some(true),
            }),
            stop: Arc::new(AtomicBool::new(false)),
        })
    }

    /// The connection, with its commits synced.
    fn db(&self) -> anyhow::Result<std::sync::MutexGuard<'_, Db>> {
        let mut db = self.lock()?;
        db.sync(true)?;
        Ok(db)
    }

    /// The connection as it is (for [`unsynced`]).
    fn lock(&self) -> anyhow::Result<std::sync::MutexGuard<'_, Db>> {
        self.conn.lock().map_err(|_| anyhow!("store lock poisoned"))
    }

    fn conn(&self) -> anyhow::Result<ConnGuard<'_>> {
        Ok(ConnGuard(self.db()?))
    }

    /// Run `body` in one synced transaction with the audit events it
    /// returns appended to the chain.
    fn with_audit<T>(
        &self,
        body: impl FnOnce(&rusqlite::Transaction<'_>) -> anyhow::Result<(T, Vec<Event>)>,
    ) -> anyhow::Result<T> {
        let mut db = self.db()?;
        let Db { conn, tail, .. } = &mut *db;
        let tx = conn.transaction()?;
        let (out, events) = body(&tx)?;
        let records = append(&tx, tail, events, self.key.as_ref())?;
        notify::outbox(&tx, &records)?;
        tx.commit()?;
        if let Some(last) = records.last() {
            *tail = (last.seq, last.hash.clone());
        }
        Ok(out)
    }
}

struct ConnGuard<'a>(std::sync::MutexGuard<'a, Db>);

impl std::ops::Deref for ConnGuard<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        &self.0.conn
    }
}

impl std::ops::DerefMut for ConnGuard<'_> {
    fn deref_mut(&mut self) -> &mut Connection {
        &mut self.0.conn
    }
}

const APPROVAL_COLUMNS: &str = "data, body, original_body, result_body";

fn row_to_approval(r: &rusqlite::Row<'_>) -> rusqlite::Result<Approval> {
    let data: String = r.get(0)?;
    let mut a: Approval = serde_json::from_str(&data).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })?;
    a.body = r.get(1)?;
    a.original_body = r.get(2)?;
    if let (Some(result), Some(body)) = (a.result.as_mut(), r.get::<_, Option<Vec<u8>>>(3)?) {
        result.body = body;
    }
    Ok(a)
}

fn approval_params(a: &Approval) -> anyhow::Result<(String, Option<Vec<u8>>)> {
    let data = serde_json::to_string(a)?;
    let result_body = a.result.as_ref().map(|r| r.body.clone());
    Ok((data, result_body))
}

impl Store for SqliteStore {
    fn load_history(&self) -> anyhow::Result<Vec<HistoryRow>> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(
            "SELECT fingerprint, agent, tool, shape, seen, first_seen, last_seen, approved, rejected, last_decision,
                    decision_ms_total
             FROM action_history",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(HistoryRow {
                fingerprint: r.get(0)?,
                agent: r.get(1)?,
                tool: r.get(2)?,
                shape: r.get(3)?,
                stats: Stats {
                    seen: r.get::<_, i64>(4)? as u64,
                    first_seen: r.get(5)?,
                    last_seen: r.get(6)?,
                    approved: r.get::<_, i64>(7)? as u64,
                    rejected: r.get::<_, i64>(8)? as u64,
                    last_decision: r.get(9)?,
                    decision_ms_total: r.get::<_, i64>(10)? as u64,
                },
            })
        })?;
        rows.collect::<Result<Vec<_>, _>>().map_err(Into::into)
    }

    fn add_history(&self, rows: &[HistoryRow]) -> anyhow::Result<()> {
        // Written behind already (a crash loses the last window anyway), so
        // an fsync would buy nothing, and it would hold up every decision
        // record queued behind this connection for the length of one.
        let mut db = self.lock()?;
        unsynced(&mut db, |tx| {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO action_history
                   (fingerprint, agent, tool, shape, seen, first_seen, last_seen, approved, rejected, last_decision,
                    decision_ms_total)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
                 ON CONFLICT(fingerprint) DO UPDATE SET
                   seen = seen + excluded.seen,
                   first_seen = MIN(COALESCE(first_seen, excluded.first_seen), COALESCE(excluded.first_seen, first_seen)),
                   last_seen = MAX(COALESCE(last_seen, excluded.last_seen), COALESCE(excluded.last_seen, last_seen)),
                   approved = approved + excluded.approved, rejected = rejected + excluded.rejected,
                   last_decision = COALESCE(excluded.last_decision, last_decision),
                   decision_ms_total = decision_ms_total + excluded.decision_ms_total",
            )?;
            for row in rows {
                let s = &row.stats;
                stmt.execute(params![
                    row.fingerprint,
                    row.agent,
                    row.tool,
                    row.shape,
                    s.seen as i64,
                    s.first_seen,
                    s.last_seen,
                    s.approved as i64,
                    s.rejected as i64,
                    s.last_decision,
                    s.decision_ms_total as i64,
                ])?;
            }
            Ok(())
        })
    }

    fn ping(&self) -> anyhow::Result<()> {
        let conn = self.conn()?;
        let _: Option<i64> = conn.query_row("SELECT 1", [], |r| r.get(0)).optional()?;
        // Readable is not enough: take the write lock (and give it back) so a
        // read-only, locked or broken database shows as not ready. Briefly:
        // real writers queue behind this probe.
        conn.busy_timeout(std::time::Duration::from_millis(250))?;
        let probe = conn.execute_batch("BEGIN IMMEDIATE; ROLLBACK;");
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        probe.context("the database cannot be written")?;
        Ok(())
    }

    fn save_session(&self, s: &StoredSession) -> anyhow::Result<()> {
        let conn = self.conn()?;
        conn.prepare_cached(
            "INSERT INTO sessions (id_sha256, principal, csrf, last_used) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(id_sha256) DO UPDATE SET last_used = excluded.last_used",
        )?
        .execute(params![s.id_sha256, s.principal, s.csrf, s.last_used])?;
        Ok(())
    }

    fn session(&self, id_sha256: &str) -> anyhow::Result<Option<StoredSession>> {
        let conn = self.conn()?;
        conn.query_row(
            "SELECT id_sha256, principal, csrf, last_used FROM sessions WHERE id_sha256 = ?1",
            params![id_sha256],
            |r| {
                Ok(StoredSession {
                    id_sha256: r.get(0)?,
                    principal: r.get(1)?,
                    csrf: r.get(2)?,
                    last_used: r.get(3)?,
                })
            },
        )
        .optional()
        .map_err(Into::into)
    }

    fn delete_session(&self, id_sha256: &str) -> anyhow::Result<()> {
        let conn = self.conn()?;
        conn.execute(
            "DELETE FROM sessions WHERE id_sha256 = ?1",
            params![id_sha256],
        )?;
        Ok(())
    }

    fn append_audit(&self, events: Vec<Event>) -> anyhow::Result<Vec<Record>> {
        let mut db = self.lock()?;
        let tail = db.tail.clone();
        let records = unsynced(&mut db, |conn| {
            append(conn, &tail, events, self.key.as_ref())
        })?;
        if let Some(last) = records.last() {
            db.tail = (last.seq, last.hash.clone());
        }
        Ok(records)
    }

    fn audit_head(&self) -> anyhow::Result<Option<Head>> {
        let conn = self.conn()?;
        conn.query_row(
            "SELECT seq, hash, mac FROM audit_head WHERE id = 1",
            [],
            |r| {
                Ok(Head {
                    seq: r.get(0)?,
                    hash: r.get(1)?,
                    mac: r.get(2)?,
                })
            },
        )
        .optional()
        .map_err(Into::into)
    }

    fn audit_of(&self, subject: &str) -> anyhow::Result<Vec<Record>> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {RECORD_COLUMNS} FROM audit WHERE subject = ?1 ORDER BY seq"
        ))?;
        let rows = stmt.query_map(params![subject], row_to_record)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(Into::into)
    }

    fn audit_after(&self, after: i64, limit: usize) -> anyhow::Result<Vec<Record>> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {RECORD_COLUMNS} FROM audit WHERE seq > ?1 ORDER BY seq LIMIT ?2"
        ))?;
        let rows = stmt.query_map(params![after, limit as i64], row_to_record)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(Into::into)
    }

    fn prune_decision_details(&self, up_to_seq: i64, limit: usize) -> anyhow::Result<u64> {
        chain::prune_decision_details(self, up_to_seq, limit)
    }

    fn drop_audit_before(&self, checkpoint: &Checkpoint) -> anyhow::Result<u64> {
        chain::drop_before(self, checkpoint)
    }

    fn audit_checkpoint(&self) -> anyhow::Result<Option<Checkpoint>> {
        chain::checkpoint(self)
    }

    fn insert_approval(
        &self,
        a: &Approval,
        event: &Event,
        max_pending: u64,
    ) -> anyhow::Result<Inserted> {
        self.with_audit(|tx| {
            if let Some(key) = &a.idempotency_key {
                let existing = tx
                    .query_row(
                        &format!("SELECT {APPROVAL_COLUMNS} FROM approvals WHERE agent = ?1 AND idempotency_key = ?2"),
                        params![a.agent, key],
                        row_to_approval,
                    )
                    .optional()?;
                if let Some(existing) = existing {
                    return Ok((Inserted::Existing(Box::new(existing)), vec![]));
                }
            }
            let pending: i64 = tx.query_row(
                "SELECT COUNT(*) FROM approvals WHERE agent = ?1 AND state = 'pending'",
                params![a.agent],
                |r| r.get(0),
            )?;
            if pending as u64 >= max_pending {
                return Ok((Inserted::TooMany(pending as u64), vec![]));
            }
            let (data, result_body) = approval_params(a)?;
            tx.execute(
                "INSERT INTO approvals (id, state, agent, idempotency_key, deadline, created_at, version, data, body, original_body, result_body)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                params![a.id, a.state.as_str(), a.agent, a.idempotency_key, a.deadline, a.created_at, a.version, data, a.body, a.original_body, result_body],
            )?;
            Ok((Inserted::New, vec![event.clone()]))
        })
    }

    fn approval(&self, id: &str) -> anyhow::Result<Option<Approval>> {
        let conn = self.conn()?;
        conn.query_row(
            &format!("SELECT {APPROVAL_COLUMNS} FROM approvals WHERE id = ?1"),
            params![id],
            row_to_approval,
        )
        .optional()
        .map_err(Into::into)
    }

    fn list_approvals(&self, q: &ApprovalQuery) -> anyhow::Result<Vec<Approval>> {
        let conn = self.conn()?;
        // Pending: soonest deadline first; otherwise newest first. The id
        // breaks ties so a cursor names one exact position.
        let sql = if q.state == Some(State::Pending) {
            format!(
                "SELECT {APPROVAL_COLUMNS} FROM approvals
                 WHERE state = 'pending' AND (?1 IS NULL OR agent = ?1)
                   AND (?2 IS NULL OR deadline > ?2 OR (deadline = ?2 AND id > ?3))
                 ORDER BY deadline, id LIMIT ?4"
            )
        } else {
            format!(
                "SELECT {APPROVAL_COLUMNS} FROM approvals
                 WHERE (?5 IS NULL OR state = ?5) AND (?1 IS NULL OR agent = ?1)
                   AND (?2 IS NULL OR created_at < ?2 OR (created_at = ?2 AND id < ?3))
                 ORDER BY created_at DESC, id DESC LIMIT ?4"
            )
        };
        let mut stmt = conn.prepare_cached(&sql)?;
        let limit = i64::try_from(q.limit).unwrap_or(i64::MAX);
        let (at, id) = match &q.after {
            Some(c) => (Some(c.at), Some(c.id.as_str())),
            None => (None, None),
        };
        let rows = if q.state == Some(State::Pending) {
            stmt.query_map(params![q.agent, at, id, limit], row_to_approval)?
                .collect::<Result<Vec<_>, _>>()
        } else {
            stmt.query_map(
                params![q.agent, at, id, limit, q.state.map(State::as_str)],
                row_to_approval,
            )?
            .collect::<Result<Vec<_>, _>>()
        };
        rows.map_err(Into::into)
    }

    fn count_approvals(&self, state: Option<State>, agent: Option<&str>) -> anyhow::Result<u64> {
        let conn = self.conn()?;
        let n: i64 = conn.query_row(
            "SELECT COUNT(*) FROM approvals WHERE (?1 IS NULL OR state = ?1) AND (?2 IS NULL OR agent = ?2)",
            params![state.map(State::as_str), agent],
            |r| r.get(0),
        )?;
        Ok(n as u64)
    }

    fn oldest_pending(&self) -> anyhow::Result<Vec<(String, i64)>> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare_cached(
            "SELECT json_extract(data, '$.decision.risk') AS risk, MIN(created_at)
             FROM approvals WHERE state = 'pending' GROUP BY risk",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, Option<String>>(0)?.unwrap_or_default(),
                r.get(1)?,
            ))
        })?;
        rows.collect::<Result<Vec<_>, _>>().map_err(Into::into)
    }

    fn due_approvals(&self, now_ms: i64) -> anyhow::Result<Vec<Approval>> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {APPROVAL_COLUMNS} FROM approvals WHERE state = 'pending' AND deadline <= ?1 ORDER BY deadline"
        ))?;
        let rows = stmt.query_map(params![now_ms], row_to_approval)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(Into::into)
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
                "UPDATE approvals SET state = ?2, deadline = ?3, version = ?4, data = ?5, body = ?6,
                        original_body = ?7, result_body = ?8
                 WHERE id = ?1 AND version = ?9",
                params![
                    a.id,
                    a.state.as_str(),
                    a.deadline,
                    a.version,
                    data,
                    a.body,
                    a.original_body,
                    result_body,
                    expected_version
                ],
            )?;
            if changed == 0 {
                return Ok((false, vec![]));
            }
            if let Some(g) = grant {
                grants::insert(tx, g)?;
            }
            Ok((true, events.to_vec()))
        })
    }

    fn grants(&self, live_at: Option<i64>, limit: usize) -> anyhow::Result<Vec<Grant>> {
        grants::list(self, live_at, limit)
    }

    fn grant(&self, id: &str) -> anyhow::Result<Option<Grant>> {
        grants::one(self, id)
    }

    fn revoke_grant(&self, g: &Grant, event: &Event) -> anyhow::Result<bool> {
        grants::revoke(self, g, event)
    }
}

mod chain;
mod db;
mod grants;
mod notify;
mod prompts;
#[cfg(test)]
mod tests;
