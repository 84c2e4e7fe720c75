//! Durable state behind one trait, so a PostgreSQL backend can stand beside
//! the embedded SQLite default without touching the pipeline.

pub mod migrations;
pub mod notify;
pub mod postgres;
pub mod prompts;
pub mod sqlite;

use crate::audit::chain::{Checkpoint, Event, Head, Record};
use crate::gate::model::{Approval, Grant, State};
use crate::history::stats::Stats;

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
    /// The agent already has this many pending approvals (its cap); nothing
    /// was stored.
    TooMany(u64),
}

/// Which approvals to list, one page at a time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApprovalQuery {
    /// Only this state.
    pub state: Option<State>,
    /// Only this agent's.
    pub agent: Option<String>,
    /// Continue after this position (from the previous page's last item).
    pub after: Option<Cursor>,
    /// Page size.
    pub limit: usize,
}

/// A position in a listing: pending approvals are ordered by deadline
/// (soonest first), all others by creation time (newest first); the id
/// breaks ties, so paging never skips or repeats an approval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// Deadline (pending) or creation time (others), Unix milliseconds.
    pub at: i64,
    /// Approval id.
    pub id: String,
}

impl Cursor {
    /// Where a listing in `state` continues after `a`.
    pub fn after(a: &Approval, state: Option<State>) -> Cursor {
        let at = if state == Some(State::Pending) {
            a.deadline
        } else {
            a.created_at
        };
        Cursor {
            at,
            id: a.id.clone(),
        }
    }

    /// The opaque text form used in the API (`<at>.<id>`).
    pub fn encode(&self) -> String {
        format!("{}.{}", self.at, self.id)
    }

    /// Parse [`Cursor::encode`]'s form.
    pub fn decode(s: &str) -> Option<Cursor> {
        let (at, id) = s.split_once('.')?;
        Some(Cursor {
            at: at.parse().ok()?,
            id: id.to_string(),
        })
    }
}

/// A dashboard session as stored (the cookie itself is never stored, only
/// its SHA-256, so reading the database does not hand out live sessions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSession {
    /// Hex SHA-256 of the session id.
    pub id_sha256: String,
    /// Principal id.
    pub principal: String,
    /// The session's CSRF token.
    pub csrf: String,
    /// Unix seconds of the last use.
    pub last_used: i64,
}

/// What the rest of Latch needs from storage. Calls are blocking; callers on
/// the async side use a dedicated thread or `spawn_blocking`.
pub trait Store: prompts::PromptStore + notify::NotifyStore + Send + Sync + 'static {
    /// Every known action class.
    fn load_history(&self) -> anyhow::Result<Vec<HistoryRow>>;
    /// Add these changes to the action classes, atomically: counters are
    /// increments (`seen`, `approved`, `rejected`, `decision_ms_total`),
    /// `first_seen` keeps the earliest, `last_seen` the latest, and
    /// `last_decision` is replaced when given. Increments add up, so several
    /// replicas can write the same class.
    fn add_history(&self, deltas: &[HistoryRow]) -> anyhow::Result<()>;
    /// Whether other processes write this store too (replicas on one
    /// database): shared state is then read back now and then.
    fn shared(&self) -> bool {
        false
    }
    /// A cheap check that the store answers and can be written (for `/readyz`).
    fn ping(&self) -> anyhow::Result<()>;

    /// Insert or update a dashboard session.
    fn save_session(&self, s: &StoredSession) -> anyhow::Result<()>;
    /// A dashboard session by the SHA-256 of its id.
    fn session(&self, id_sha256: &str) -> anyhow::Result<Option<StoredSession>>;
    /// End a dashboard session.
    fn delete_session(&self, id_sha256: &str) -> anyhow::Result<()>;

    /// Append events to the audit chain, atomically, in order. The commit
    /// survives a crash of Latch; approval changes (which carry their own
    /// events in [`Store::update_approval`]) are synced to disk.
    fn append_audit(&self, events: Vec<Event>) -> anyhow::Result<Vec<Record>>;
    /// Where the chain ends, as last written (with its MAC when keyed).
    fn audit_head(&self) -> anyhow::Result<Option<Head>>;
    /// Every audit record about `subject`, oldest first.
    fn audit_of(&self, subject: &str) -> anyhow::Result<Vec<Record>>;
    /// Audit records with `seq > after`, oldest first, at most `limit`.
    fn audit_after(&self, after: i64, limit: usize) -> anyhow::Result<Vec<Record>>;
    /// Retention: drop the details (keeping their digest) of up to `limit`
    /// allow/deny decision records at or before `up_to_seq`; how many.
    fn prune_decision_details(&self, up_to_seq: i64, limit: usize) -> anyhow::Result<u64>;
    /// Retention: drop every record up to `checkpoint.seq` and keep the
    /// checkpoint (verification starts from it), in one transaction.
    fn drop_audit_before(&self, checkpoint: &Checkpoint) -> anyhow::Result<u64>;
    /// The checkpoint retention left, if any.
    fn audit_checkpoint(&self) -> anyhow::Result<Option<Checkpoint>>;

    /// Store a new approval and its audit event in one synced transaction,
    /// unless the agent already used the idempotency key or already has
    /// `max_pending` approvals pending (checked in the same transaction).
    fn insert_approval(
        &self,
        a: &Approval,
        event: &Event,
        max_pending: u64,
    ) -> anyhow::Result<Inserted>;
    /// One approval.
    fn approval(&self, id: &str) -> anyhow::Result<Option<Approval>>;
    /// Approvals in `state` (all when `None`), newest first, at most `limit`.
    fn approvals(&self, state: Option<State>, limit: usize) -> anyhow::Result<Vec<Approval>> {
        self.list_approvals(&ApprovalQuery {
            state,
            limit,
            ..Default::default()
        })
    }
    /// One page of approvals, in [`Cursor`] order.
    fn list_approvals(&self, q: &ApprovalQuery) -> anyhow::Result<Vec<Approval>>;
    /// How many approvals match `state` and `agent` (all when `None`).
    fn count_approvals(&self, state: Option<State>, agent: Option<&str>) -> anyhow::Result<u64>;
    /// The creation time (Unix ms) of the oldest pending approval per risk.
    fn oldest_pending(&self) -> anyhow::Result<Vec<(String, i64)>>;
    /// Pending approvals whose deadline is at or before `now_ms`.
    fn due_approvals(&self, now_ms: i64) -> anyhow::Result<Vec<Approval>>;
    /// Replace an approval if its stored version is `expected_version`, with
    /// its audit events and the grant it creates, in one synced transaction.
    /// `Ok(false)`: someone else changed it first.
    fn update_approval(
        &self,
        a: &Approval,
        expected_version: i64,
        events: &[Event],
        grant: Option<&Grant>,
    ) -> anyhow::Result<bool>;

    /// Grants, newest first, at most `limit`; with `live_at`, only those
    /// neither revoked nor expired at that Unix millisecond.
    fn grants(&self, live_at: Option<i64>, limit: usize) -> anyhow::Result<Vec<Grant>>;
    /// One grant.
    fn grant(&self, id: &str) -> anyhow::Result<Option<Grant>>;
    /// Store `g`'s revocation with its audit event in one synced
    /// transaction. `Ok(false)`: it was already revoked.
    fn revoke_grant(&self, g: &Grant, event: &Event) -> anyhow::Result<bool>;

    /// Call `changed(Some(id))` whenever another process changes approval
    /// `id`, and `changed(None)` when changes may have been missed (after a
    /// lost connection), until the store is dropped. A store only one process
    /// uses has nothing to report.
    fn watch_changes(&self, changed: ChangeHook) -> anyhow::Result<()> {
        let _ = changed;
        Ok(())
    }
}

/// What [`Store::watch_changes`] calls.
pub type ChangeHook = std::sync::Arc<dyn Fn(Option<&str>) + Send + Sync>;

/// The threads store calls run on, once [`run_calls_on_threads`] started them.
static THREADS: std::sync::OnceLock<crate::threads::Threads> = std::sync::OnceLock::new();

/// Run this process's store calls ([`blocking`]) on as many threads of
/// their own as `store` serves side by side, instead of the runtime's
/// blocking pool (the `latch` binary does this at start-up; the first call
/// wins). SQLite's one connection takes one call at a time, so a few
/// threads keep it busy, and each thread more only adds a stack and an
/// allocator cache that a burst of gated calls fills: 10,000 calls held
/// over HTTP/2 kept 6.2–7.3 KiB each with up to 32 threads, 4.6–4.9 KiB
/// with 4, gating as fast. PostgreSQL serves one call per connection.
/// Other blocking work (DNS lookups, policy reloads) keeps the runtime's
/// pool, so a slow lookup never holds up a store call.
pub fn run_calls_on_threads(store: &crate::config::StoreConfig) -> std::io::Result<()> {
    use crate::config::StoreConfig;
    let n = match store {
        StoreConfig::Sqlite(_) | StoreConfig::SqliteMemory => 4,
        StoreConfig::Postgres { .. } => 32,
    };
    if THREADS.get().is_none() {
        let _ = THREADS.set(crate::threads::Threads::start("latch-store", n, 1024)?);
    }
    Ok(())
}

/// Run a blocking store call off the async workers.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let Some(threads) = THREADS.get() else {
        return tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| anyhow::anyhow!("store task failed: {e}"))?;
    };
    // Boxed: the futures that wait on a store call (a held call's handler
    // among them) keep a pointer across the wait, not the queue's state.
    Box::pin(async move {
        let (tx, rx) = tokio::sync::oneshot::channel();
        threads
            .send(Box::new(move || {
                let _ = tx.send(f());
            }))
            .await?;
        rx.await
            .map_err(|_| anyhow::anyhow!("store task failed: it panicked"))?
    })
    .await
}
