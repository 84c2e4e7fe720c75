//! Durable state behind one trait, so a PostgreSQL backend can stand beside
//! the embedded SQLite default without touching the pipeline.

pub mod sqlite;

use crate::audit::{Event, Record};
use crate::gate::model::{Approval, State};
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

/// The outcome of inserting an approval.
#[derive(Debug, Clone, PartialEq)]
pub enum Inserted {
    /// Stored (with its audit event).
    New,
    /// The agent already has an approval with this idempotency key.
    Existing(Box<Approval>),
}

/// How durable an audit append must be before it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Synced to disk (approval state changes).
    Synced,
    /// Survives a crash of Latch (not of the OS); batched allow/deny decisions.
    Process,
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

    /// Append events to the audit chain, atomically, in order.
    fn append_audit(&self, events: &[Event], durability: Durability)
        -> anyhow::Result<Vec<Record>>;
    /// Audit records with `seq > after`, oldest first, at most `limit`.
    fn audit_after(&self, after: i64, limit: usize) -> anyhow::Result<Vec<Record>>;

    /// Store a new approval and its audit event in one synced transaction,
    /// unless the agent already used the idempotency key.
    fn insert_approval(&self, a: &Approval, event: &Event) -> anyhow::Result<Inserted>;
    /// One approval.
    fn approval(&self, id: &str) -> anyhow::Result<Option<Approval>>;
    /// Approvals in `state` (all when `None`), newest first, at most `limit`.
    fn approvals(&self, state: Option<State>, limit: usize) -> anyhow::Result<Vec<Approval>>;
    /// Pending approvals whose deadline is at or before `now_ms`.
    fn due_approvals(&self, now_ms: i64) -> anyhow::Result<Vec<Approval>>;
    /// Replace an approval if its stored version is `expected_version`, with
    /// its audit events, in one synced transaction. `Ok(false)`: someone else
    /// changed it first.
    fn update_approval(
        &self,
        a: &Approval,
        expected_version: i64,
        events: &[Event],
    ) -> anyhow::Result<bool>;
}
