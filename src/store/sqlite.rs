//! The embedded SQLite store: WAL journal, full sync on commit, versioned
//! migrations kept in `PRAGMA user_version`.

use std::path::Path;
use std::sync::Mutex;

use anyhow::{anyhow, Context};
use rusqlite::{params, Connection, OptionalExtension};

use super::{HistoryRow, Store};
use crate::history::Stats;

/// Schema changes, in order; entry `i` moves the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &["CREATE TABLE action_history (
        fingerprint   TEXT PRIMARY KEY,
        agent         TEXT NOT NULL,
        tool          TEXT NOT NULL,
        shape         TEXT NOT NULL,
        seen          INTEGER NOT NULL,
        first_seen    INTEGER,
        last_seen     INTEGER,
        approved      INTEGER NOT NULL,
        rejected      INTEGER NOT NULL,
        last_decision TEXT
    );"];

/// SQLite-backed [`Store`].
pub struct SqliteStore {
    conn: Mutex<Connection>,
}

impl SqliteStore {
    /// Open (creating if needed) the database file and migrate it.
    pub fn open(path: &Path) -> anyhow::Result<SqliteStore> {
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
        }
        let conn = Connection::open(path)
            .with_context(|| format!("opening SQLite database {}", path.display()))?;
        Self::init(conn).with_context(|| format!("preparing SQLite database {}", path.display()))
    }

    /// A private in-memory database (nothing survives the process).
    pub fn memory() -> anyhow::Result<SqliteStore> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(mut conn: Connection) -> anyhow::Result<SqliteStore> {
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
        Ok(SqliteStore {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> anyhow::Result<std::sync::MutexGuard<'_, Connection>> {
        self.conn.lock().map_err(|_| anyhow!("store lock poisoned"))
    }
}

impl Store for SqliteStore {
    fn load_history(&self) -> anyhow::Result<Vec<HistoryRow>> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(
            "SELECT fingerprint, agent, tool, shape, seen, first_seen, last_seen, approved, rejected, last_decision
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
                },
            })
        })?;
        rows.collect::<Result<Vec<_>, _>>().map_err(Into::into)
    }

    fn save_history(&self, rows: &[HistoryRow]) -> anyhow::Result<()> {
        let mut conn = self.conn()?;
        let tx = conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO action_history
                   (fingerprint, agent, tool, shape, seen, first_seen, last_seen, approved, rejected, last_decision)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                 ON CONFLICT(fingerprint) DO UPDATE SET
                   seen = excluded.seen, first_seen = excluded.first_seen, last_seen = excluded.last_seen,
                   approved = excluded.approved, rejected = excluded.rejected,
                   last_decision = excluded.last_decision",
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
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn ping(&self) -> anyhow::Result<()> {
        let conn = self.conn()?;
        let _: Option<i64> = conn.query_row("SELECT 1", [], |r| r.get(0)).optional()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(fp: &str, seen: u64) -> HistoryRow {
        HistoryRow {
            fingerprint: fp.into(),
            agent: "bot".into(),
            tool: "email".into(),
            shape: "{to:s}".into(),
            stats: Stats {
                seen,
                first_seen: Some(10),
                last_seen: Some(20),
                approved: 1,
                rejected: 0,
                last_decision: Some("allow".into()),
            },
        }
    }

    #[test]
    fn history_round_trips_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/latch.db");
        {
            let s = SqliteStore::open(&path).unwrap();
            s.save_history(&[row("a", 1), row("b", 2)]).unwrap();
            s.save_history(&[row("a", 5)]).unwrap();
        }
        let s = SqliteStore::open(&path).unwrap();
        let mut rows = s.load_history().unwrap();
        rows.sort_by(|x, y| x.fingerprint.cmp(&y.fingerprint));
        assert_eq!(rows, vec![row("a", 5), row("b", 2)]);
        s.ping().unwrap();
    }

    #[test]
    fn refuses_a_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("latch.db");
        drop(SqliteStore::open(&path).unwrap());
        let c = Connection::open(&path).unwrap();
        c.pragma_update(None, "user_version", 99).unwrap();
        drop(c);
        let err = SqliteStore::open(&path).err().unwrap();
        assert!(format!("{err:#}").contains("newer"), "{err:#}");
    }
}
