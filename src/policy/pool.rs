//! Policy evaluation off the async workers.
//!
//! regorus checks its time limit between instructions, so one slow builtin
//! (a huge regex, a giant `numbers.range`) can run far past the limit. Run on
//! the async workers, that would stall every connection sharing the thread.
//! Evaluations therefore run on a few dedicated threads (each with its own
//! VM), and the async side waits at most the limit plus a grace period: a
//! late answer is a deny, whatever it says (see [`super::PolicySet::evaluate`]).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use regorus::Value;
use tokio::sync::{mpsc, oneshot};

use super::{Decision, Evaluation, PolicySet};

type Job = Box<dyn FnOnce() + Send>;

/// Time a request may wait for a free evaluator on top of the policy's own limit.
const QUEUE_GRACE: Duration = Duration::from_secs(1);

/// A fixed set of evaluator threads fed by a bounded queue.
pub struct Evaluators {
    tx: mpsc::Sender<Job>,
}

impl Evaluators {
    /// Start `threads` evaluator threads.
    pub fn start(threads: usize) -> std::io::Result<Evaluators> {
        let (tx, rx) = mpsc::channel::<Job>(4096);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("latch-policy-{i}"))
                .spawn(move || loop {
                    // One thread waits on the queue at a time; the others wait
                    // for the lock, then for the next job.
                    let job = match rx.lock() {
                        Ok(mut q) => q.blocking_recv(),
                        Err(_) => return,
                    };
                    match job {
                        Some(job) => job(),
                        None => return, // every sender is gone
                    }
                })?;
        }
        Ok(Evaluators { tx })
    }

    /// Evaluate `input` against `set` on an evaluator thread. Never takes
    /// much longer than the set's time limit: past it the answer is a
    /// `policy_error` deny and the late result is dropped.
    pub async fn evaluate(&self, set: Arc<PolicySet>, input: Value) -> Evaluation {
        let started = Instant::now();
        let limit = set.time_limit();
        let (done, result) = oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = done.send(set.evaluate(input));
        });
        let waited = tokio::time::timeout(limit + QUEUE_GRACE, async {
            self.tx.send(job).await.ok()?;
            result.await.ok()
        })
        .await;
        match waited {
            Ok(Some(evaluation)) => evaluation,
            Ok(None) => late(started, "the policy evaluators are not running"),
            Err(_) => late(started, "no evaluation result within the time limit"),
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
