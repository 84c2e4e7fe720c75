//! The store's one read-write connection: how its commits are synced, and
//! the transactions decision records and history commit in.

use rusqlite::Connection;

/// The connection and the tail of the audit chain, guarded together so
/// appends are serialised and never race for a sequence number.
pub(super) struct Db {
    pub(super) conn: Connection,
    /// `(seq, hash)` of the last audit record.
    pub(super) tail: (i64, String),
    /// Whether commits are synced (`PRAGMA synchronous=FULL`), if known.
    pub(super) synced: Option<bool>,
}

impl Db {
    /// Sync the commits that follow (`FULL`) or not (`NORMAL`). Only when
    /// that changes: the PRAGMA is prepared anew each time it runs (≈ 3.5k
    /// instructions), and back-to-back decision records need no change.
    pub(super) fn sync(&mut self, full: bool) -> anyhow::Result<()> {
        if self.synced == Some(full) {
            return Ok(());
        }
        self.synced = None; // unknown until the PRAGMA has run
        self.conn.execute_batch(if full {
            "PRAGMA synchronous=FULL"
        } else {
            "PRAGMA synchronous=NORMAL"
        })?;
        self.synced = Some(full);
        Ok(())
    }
}

/// Run `body` in a transaction committed without an fsync (WAL with
/// `synchronous=NORMAL`): the commit survives a crash of Latch (the OS has
/// the pages), and the next synced commit or checkpoint makes it durable
/// on disk too. [`super::SqliteStore`]'s `db()` syncs the connection's commits again.
///
/// `BEGIN` and `COMMIT` are cached statements: rusqlite's transactions
/// parse them anew each time (≈ 16k instructions per decision record).
pub(super) fn unsynced<T>(
    db: &mut Db,
    body: impl FnOnce(&Connection) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    db.sync(false)?;
    let conn = &db.conn;
    conn.prepare_cached("BEGIN")?.execute([])?;
    let _open = Open(conn);
    let out = body(conn)?;
    conn.prepare_cached("COMMIT")?.execute([])?;
    Ok(out)
}

/// Rolls back the connection's transaction if it is still open when this
/// goes (the body or the commit failed).
struct Open<'c>(&'c Connection);

impl Drop for Open<'_> {
    fn drop(&mut self) {
        if !self.0.is_autocommit() {
            if let Err(e) = self.0.execute_batch("ROLLBACK") {
                tracing::error!(error = %e, "rolling back a failed store transaction");
            }
        }
    }
}
