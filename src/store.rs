//! Durable state behind one trait, so a PostgreSQL backend can stand beside
//! the embedded SQLite default without touching the pipeline.

pub mod sqlite;

use crate::history::Stats;

/// One persisted action class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryRow {
    /// Hex fingerprint (agent, tool, method, argument shape).
    pub fingerprint: String,
    /// Agent id.
    pub agent: String,
    /// Tool name.
    pub tool: String,
    /// Canonical argument shape, e.g. `{amount:#,currency:s}`.
    pub shape: String,
    /// Counters.
    pub stats: Stats,
}

/// What the rest of Latch needs from storage. Calls are blocking; callers on
/// the async side use a dedicated thread or `spawn_blocking`.
pub trait Store: Send + Sync + 'static {
    /// Every known action class.
    fn load_history(&self) -> anyhow::Result<Vec<HistoryRow>>;
    /// Insert or replace these action classes, atomically.
    fn save_history(&self, rows: &[HistoryRow]) -> anyhow::Result<()>;
    /// A cheap check that the store answers (for `/readyz`).
    fn ping(&self) -> anyhow::Result<()>;
}
