//! Policy evaluation off the async workers.
//!
//! regorus checks its time limit between instructions, so one slow builtin
//! (a huge regex, a giant `numbers.range`) can run far past the limit. Run on
//! the async workers, that would stall every connection sharing the thread.
//! Evaluations therefore run on a few dedicated threads (each with its own
//! VM), and the async side waits at most the limit plus a grace period: a
//! late answer is a deny, whatever it says (see [`super::PolicySet::evaluate`]).
//! The thread that decides a call may also commit the decision's audit
//! record, so the call waits for one thread instead of two in turn.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use regorus::Value;
use tokio::sync::oneshot;

use super::{Decision, Evaluation, PolicySet};
use crate::audit::chain::Event;
use crate::audit::writer::AuditLog;
use crate::threads::{Job, Threads};

/// Time a request may wait for a free evaluator on top of the policy's own limit.
const QUEUE_GRACE: Duration = Duration::from_secs(1);

/// A fixed set of evaluator threads fed by a bounded queue.
pub struct Evaluators {
    threads: Threads,
}

impl Evaluators {
    /// Start `threads` evaluator threads.
    pub fn start(threads: usize) -> std::io::Result<Evaluators> {
        Ok(Evaluators {
            threads: Threads::start("latch-policy", threads, 4096)?,
        })
    }

    /// Evaluate `input` against `set` on an evaluator thread. Never takes
    /// much longer than the set's time limit: past it the answer is a
    /// `policy_error` deny and the late result is dropped.
    ///
    /// With `record`, the evaluator thread also commits the decision's
    /// audit record when `record` makes one of it (see [`RecordIf`]), and
    /// the answer says how that went: the caller then neither records nor
    /// crosses to the audit writer. Exactly one side records a call: past
    /// the time limit the caller takes the call over (and records its own
    /// deny) only if the evaluator has not yet claimed it; if it has, its
    /// record is committing and the caller waits for that answer instead.
    pub async fn evaluate(
        &self,
        set: Arc<PolicySet>,
        input: Value,
        record: Option<Recorder>,
    ) -> Judged {
        let started = Instant::now();
        let limit = set.time_limit();
        let claim = Arc::new(AtomicBool::new(false));
        let (done, mut result) = oneshot::channel::<Judged>();
        let claimed = claim.clone();
        let job: Job = Box::new(move || {
            let evaluation = set.evaluate(input);
            let Some(Recorder { audit, record }) = record else {
                let _ = done.send(Judged::new(evaluation, None));
                return;
            };
            match record(&set, &evaluation.decision) {
                // The caller has not given up: this thread records the call.
                Some(ToRecord { event, span }) if !claimed.swap(true, Ordering::AcqRel) => {
                    let then = move |ok: bool| {
                        if !ok {
                            span.fail("audit log unavailable");
                        }
                        drop(span);
                        let _ = done.send(Judged::new(evaluation, Some(ok)));
                    };
                    audit.commit_blocking(event, Box::new(then));
                }
                // Too late: the caller answered and recorded a deny.
                Some(_) => {}
                None => {
                    let _ = done.send(Judged::new(evaluation, None));
                }
            }
        });
        let waited = tokio::time::timeout(limit + QUEUE_GRACE, async {
            self.threads.send(job).await.ok()?;
            (&mut result).await.ok()
        })
        .await;
        let detail = match waited {
            Ok(Some(judged)) => return judged,
            Ok(None) => "the policy evaluators are not running",
            Err(_) => "no evaluation result within the time limit",
        };
        if claim.swap(true, Ordering::AcqRel) {
            // The evaluator claimed the call: its record is committing, or
            // went down with the commit (then the log's state is unknown).
            return match result.await {
                Ok(judged) => judged,
                Err(_) => Judged::new(late(started, detail), Some(false)),
            };
        }
        Judged::new(late(started, detail), None)
    }
}

/// Makes a decision's audit record on the evaluator thread, or `None` to
/// leave recording to the caller (e.g. a gated call, recorded with its
/// approval). Gets the set that decided.
pub type RecordIf = Box<dyn FnOnce(&PolicySet, &Decision) -> Option<ToRecord> + Send>;

/// A record to commit, and the span that times its commit.
pub struct ToRecord {
    /// The record.
    pub event: Event,
    /// Ends (failed, if the commit did) once the commit is done.
    pub span: crate::trace::Span,
}

/// Where and what an evaluator thread records.
pub struct Recorder {
    /// The audit log.
    pub audit: Arc<AuditLog>,
    /// The record, if this thread is to make it.
    pub record: RecordIf,
}

/// An evaluation, and whether its decision's record was committed on the
/// evaluator thread (`None`: not recorded there).
pub struct Judged {
    /// The evaluation.
    pub evaluation: Evaluation,
    /// `Some(true)`: recorded; `Some(false)`: the record could not be
    /// committed (do not carry the decision out).
    pub recorded: Option<bool>,
}

impl Judged {
    fn new(evaluation: Evaluation, recorded: Option<bool>) -> Judged {
        Judged {
            evaluation,
            recorded,
        }
    }
}

fn late(started: Instant, detail: &str) -> Evaluation {
    Evaluation {
        decision: Decision::policy_error("evaluation timed out"),
        elapsed: started.elapsed(),
        error: Some(detail.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use super::*;
    use crate::policy::{Action, Sources};
    use crate::store::sqlite::SqliteStore;
    use crate::store::Store;

    fn allow_set(timeout: Duration) -> Arc<PolicySet> {
        let sources = Sources {
            modules: vec![(
                PathBuf::from("p.rego"),
                "package latch\ndecision := {\"action\": \"allow\", \"code\": \"ok\", \"reasons\": []}"
                    .into(),
            )],
            ..Default::default()
        };
        Arc::new(PolicySet::compile(&sources, "data.latch.decision", timeout).unwrap())
    }

    fn audit(store: Arc<dyn Store>) -> Arc<AuditLog> {
        let seconds = prometheus::Histogram::with_opts(prometheus::HistogramOpts::new("w", "w"));
        Arc::new(AuditLog::start(store, seconds.unwrap()).unwrap())
    }

    /// Records the decision after `delay` (standing in for a slow evaluation).
    fn recorder(audit: &Arc<AuditLog>, delay: Duration) -> Recorder {
        Recorder {
            audit: audit.clone(),
            record: Box::new(move |set: &PolicySet, d: &Decision| {
                std::thread::sleep(delay);
                let details = serde_json::json!({"action": d.action, "policy": set.hash()});
                Some(ToRecord {
                    event: Event::new("bot", "decision", "req-1", details),
                    span: Default::default(),
                })
            }),
        }
    }

    fn records(store: &dyn Store) -> Vec<String> {
        let all = store.audit_after(0, 100).unwrap();
        all.iter()
            .map(|r| r.details["action"].to_string())
            .collect()
    }

    #[tokio::test]
    async fn the_evaluator_thread_records_the_decision_it_made() {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::memory(None).unwrap());
        let log = audit(store.clone());
        let pool = Evaluators::start(2).unwrap();
        let set = allow_set(Duration::from_millis(50));
        let judged = pool
            .evaluate(
                set.clone(),
                Value::new_object(),
                Some(recorder(&log, Duration::ZERO)),
            )
            .await;
        assert_eq!(judged.evaluation.decision.action, Action::Allow);
        assert_eq!(judged.recorded, Some(true));
        assert_eq!(records(&*store), ["\"allow\""]);
        // Without a recorder, nothing is recorded there.
        let judged = pool.evaluate(set, Value::new_object(), None).await;
        assert_eq!(judged.recorded, None);
        assert_eq!(records(&*store).len(), 1);
    }

    /// The caller gave up before the evaluator claimed the call: the caller
    /// answers (and records) a deny, and the late allow is never recorded.
    #[tokio::test]
    async fn past_the_limit_the_caller_takes_the_call_over() {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::memory(None).unwrap());
        let log = audit(store.clone());
        let pool = Evaluators::start(1).unwrap();
        let set = allow_set(Duration::from_millis(10));
        let slow = recorder(&log, QUEUE_GRACE + Duration::from_millis(400));
        let judged = pool.evaluate(set, Value::new_object(), Some(slow)).await;
        assert_eq!(judged.evaluation.decision.code, "policy_error");
        assert_eq!(judged.recorded, None, "the caller records its own deny");
        // The evaluator finishes meanwhile, and records nothing.
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert!(records(&*store).is_empty());
    }

    /// The evaluator claimed the call, but its commit is slow: past the
    /// limit the caller waits for that record instead of recording a deny.
    #[tokio::test]
    async fn once_claimed_the_caller_waits_for_the_evaluators_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("latch.db");
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&path, None).unwrap());
        let log = audit(store.clone());
        let pool = Evaluators::start(1).unwrap();
        // Another writer holds the database past the caller's time limit.
        let blocker = rusqlite::Connection::open(&path).unwrap();
        blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
        let release = std::thread::spawn(move || {
            std::thread::sleep(QUEUE_GRACE + Duration::from_millis(500));
            blocker.execute_batch("COMMIT").unwrap();
        });
        let set = allow_set(Duration::from_millis(10));
        let started = Instant::now();
        let judged = pool
            .evaluate(
                set,
                Value::new_object(),
                Some(recorder(&log, Duration::ZERO)),
            )
            .await;
        assert!(started.elapsed() > QUEUE_GRACE + Duration::from_millis(400));
        assert_eq!(judged.evaluation.decision.action, Action::Allow);
        assert_eq!(judged.recorded, Some(true));
        assert_eq!(records(&*store), ["\"allow\""]);
        release.join().unwrap();
    }
}
