//! A fixed set of named threads that take boxed jobs from one bounded
//! queue: the policy evaluators, and the store's threads in the `latch`
//! binary. A leaf: it imports nothing else of Latch's.

use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

/// Work for one of the threads.
pub type Job = Box<dyn FnOnce() + Send>;

/// The threads' queue. Dropping every `Threads` ends them once the queue
/// is empty.
pub struct Threads {
    tx: mpsc::Sender<Job>,
    name: &'static str,
}

/// The threads are gone (they never started, or their queue closed).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the {0} threads are not running")]
pub struct Stopped(pub &'static str);

impl Threads {
    /// Start `n` (at least one) threads named `{name}-{i}`, with room for
    /// `queue` jobs waiting.
    pub fn start(name: &'static str, n: usize, queue: usize) -> std::io::Result<Threads> {
        let (tx, rx) = mpsc::channel::<Job>(queue.max(1));
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..n.max(1) {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || loop {
                    // One thread waits on the queue at a time; the others wait
                    // for the lock, then for the next job.
                    let job = match rx.lock() {
                        Ok(mut q) => q.blocking_recv(),
                        Err(_) => return,
                    };
                    let Some(job) = job else {
                        return; // every sender is gone
                    };
                    // A job that panics fails alone (its caller hears its
                    // answer was dropped); the thread goes on to the next.
                    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
                        tracing::error!(thread = name, "a job panicked");
                    }
                })?;
        }
        Ok(Threads { tx, name })
    }

    /// Queue `job`, waiting for room if the queue is full.
    pub async fn send(&self, job: Job) -> Result<(), Stopped> {
        self.tx.send(job).await.map_err(|_| Stopped(self.name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_job_leaves_its_thread_running() {
        let threads = Threads::start("t", 1, 4).unwrap();
        threads.send(Box::new(|| panic!("boom"))).await.unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        threads
            .send(Box::new(move || {
                let _ = tx.send(std::thread::current().name().map(str::to_string));
            }))
            .await
            .unwrap();
        assert_eq!(rx.await.unwrap().as_deref(), Some("t-0"));
    }
}
