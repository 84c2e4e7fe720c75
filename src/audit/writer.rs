//! The group-commit writer for decision records: async callers hand
//! records to the writer thread; threads that may block (the policy
//! evaluators) commit their own when the log is idle. One queue, one chain.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::chain::Event;
use crate::store::Store;

/// Group-commit writer for allow/deny decisions: callers wait for their
/// record to be committed (so nothing is forwarded unrecorded), records from
/// concurrent requests share one commit, and a full queue pushes back.
///
/// Async callers hand their record to the writer thread. A thread that may
/// block (a policy evaluator, which records the decision it just made)
/// commits itself with [`AuditLog::commit_blocking`], so the call does not
/// cross to another thread and back. Both feed one queue: whichever
/// thread finds no commit under way leads, and commits what the others
/// queued meanwhile with its own.
pub struct AuditLog {
    tx: tokio::sync::mpsc::Sender<Msg>,
    commits: Arc<Commits>,
}

/// The audit log could not be written.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("audit log unavailable")]
pub struct Unavailable;

/// What to do once a record's commit succeeded (`true`) or failed.
pub type Then = Box<dyn FnOnce(bool) + Send>;

/// What the writer thread is sent.
enum Msg {
    /// Commit this.
    Record(Pending),
    /// Lead the commits: the sender led one and records wait.
    Lead,
}

/// A record waiting for its commit.
struct Pending {
    event: Event,
    ack: Ack,
}

enum Ack {
    /// An async caller waits on this.
    Wake(tokio::sync::oneshot::Sender<bool>),
    /// A blocking caller moved on; this carries the outcome to whoever waits.
    Then(Then),
}

impl Ack {
    fn send(self, ok: bool) {
        match self {
            Ack::Wake(tx) => {
                let _ = tx.send(ok);
            }
            Ack::Then(f) => f(ok),
        }
    }
}

/// Most records in one commit (keeps each transaction short).
const BATCH: usize = 512;

/// Records waiting for a commit, and whether some thread is committing.
struct Commits {
    store: Arc<dyn Store>,
    write_seconds: prometheus::Histogram,
    queue: Mutex<Queue>,
}

#[derive(Default)]
struct Queue {
    waiting: Vec<Pending>,
    leading: bool,
    /// When the last commit ended, and how long it took.
    last: Option<(Instant, Duration)>,
}

impl Commits {
    fn queue(&self) -> MutexGuard<'_, Queue> {
        // Nothing panics while holding it; a poisoned queue is still sound.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queue `records`. `None` if another thread is leading a commit (it
    /// commits these too); otherwise the caller now leads and must
    /// [`Commits::lead`], and the answer says whether commits are running
    /// back to back (the last one ended less than its own length ago).
    fn enqueue(&self, records: impl IntoIterator<Item = Pending>) -> Option<bool> {
        let mut q = self.queue();
        q.waiting.extend(records);
        if std::mem::replace(&mut q.leading, true) {
            return None;
        }
        Some(q.last.is_some_and(|(ended, took)| ended.elapsed() < took))
    }

    /// As the leader, commit what is waiting, a batch at a time: until
    /// nothing waits, or (`once`) one batch. Blocking. True if records
    /// still wait: the caller still leads and must hand them on.
    fn lead(&self, once: bool) -> bool {
        // Should the store panic, the next caller leads; the records of the
        // failed batch are dropped, and their waiters hear "unavailable".
        let guard = Leading(self);
        let mut last = None;
        loop {
            let mut q = self.queue();
            if last.is_some() {
                q.last = last;
            }
            let done = q.waiting.is_empty();
            if done || (once && last.is_some()) {
                q.leading = !done;
                std::mem::forget(guard);
                return !done;
            }
            let n = q.waiting.len().min(BATCH);
            let batch: Vec<Pending> = q.waiting.drain(..n).collect();
            drop(q);
            let took = self.write(batch);
            last = Some((Instant::now(), took));
        }
    }

    /// Commit `batch`, then tell each waiter; how long the commit took.
    fn write(&self, batch: Vec<Pending>) -> Duration {
        let (events, acks): (Vec<Event>, Vec<Ack>) =
            batch.into_iter().map(|p| (p.event, p.ack)).unzip();
        let started = Instant::now();
        let n = events.len();
        let ok = match self.store.append_audit(events) {
            Ok(_) => true,
            Err(e) => {
                tracing::error!(error = %e, records = n, "audit write failed");
                false
            }
        };
        let took = started.elapsed();
        self.write_seconds.observe(took.as_secs_f64());
        for ack in acks {
            ack.send(ok);
        }
        took
    }
}

/// Hands leadership back if a commit unwinds.
struct Leading<'a>(&'a Commits);

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        self.0.queue().leading = false;
    }
}

impl AuditLog {
    /// Start the writer thread over `store`.
    pub fn start(
        store: Arc<dyn Store>,
        write_seconds: prometheus::Histogram,
    ) -> std::io::Result<AuditLog> {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Msg>(4096);
        let commits = Arc::new(Commits {
            store,
            write_seconds,
            queue: Default::default(),
        });
        let writer = commits.clone();
        std::thread::Builder::new()
            .name("latch-audit".into())
            .spawn(move || {
                while let Some(first) = rx.blocking_recv() {
                    // Take what else is queued; `Lead` hands this thread
                    // the lead of commits another thread began.
                    let (mut batch, mut handed) = (Vec::new(), false);
                    let mut msg = Some(first);
                    while let Some(m) = msg {
                        match m {
                            Msg::Record(p) => batch.push(p),
                            Msg::Lead => handed = true,
                        }
                        msg = (batch.len() < BATCH).then(|| rx.try_recv().ok()).flatten();
                    }
                    if writer.enqueue(batch).is_some() || handed {
                        writer.lead(false);
                    }
                }
            })?;
        Ok(AuditLog { tx, commits })
    }

    /// Append `event`; returns once it is committed.
    pub async fn record(&self, event: Event) -> Result<(), Unavailable> {
        let (ack, done) = tokio::sync::oneshot::channel();
        let pending = Pending {
            event,
            ack: Ack::Wake(ack),
        };
        let sent = self.tx.send(Msg::Record(pending)).await;
        sent.map_err(|_| Unavailable)?;
        match done.await {
            Ok(true) => Ok(()),
            _ => Err(Unavailable),
        }
    }

    /// Append `event` from a thread that may block: commits on this thread
    /// unless another is committing, which then commits it with its own.
    /// `then` runs once the commit is done, on whichever thread did it.
    ///
    /// Under load (commits running back to back) this thread leaves the
    /// commit to the writer thread and goes back to its own work
    /// (evaluating policy): records then gather while the writer wakes and
    /// commits, and share its commits. A commit costs much more than a
    /// record in it, so this keeps commits few when it matters, while a
    /// lone call still commits without a thread hop.
    pub fn commit_blocking(&self, event: Event, then: Then) {
        let pending = Pending {
            event,
            ack: Ack::Then(then),
        };
        let hand_on = match self.commits.enqueue([pending]) {
            None => return, // the leader takes it
            Some(true) => true,
            Some(false) => self.commits.lead(true),
        };
        // The writer's queue is full (or it is gone): keep leading.
        if hand_on && self.tx.try_send(Msg::Lead).is_err() {
            self.commits.lead(false);
        }
    }
}
