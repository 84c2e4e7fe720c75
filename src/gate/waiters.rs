//! Held calls: the wait ([`Gate::wait`]) and its wake-ups. A held caller
//! watches its approval; a verdict wakes every watcher. An entry lives
//! exactly as long as someone watches: however a wait ends (verdict,
//! `hold_s` passing, the caller going away), dropping the last [`Watch`]
//! removes it, so entries cannot pile up.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::Notify;

use super::{Gate, GateError, Waited};

/// Notifiers by approval id, one per approval someone is waiting on.
#[derive(Default)]
pub struct Waiters {
    map: DashMap<String, Arc<Notify>>,
}

/// One caller's interest in an approval; removes the entry when the last
/// watcher of that approval lets go.
pub struct Watch<'a> {
    waiters: &'a Waiters,
    id: String,
    notify: Option<Arc<Notify>>,
}

impl Waiters {
    /// Start watching `id`.
    pub fn watch(&self, id: &str) -> Watch<'_> {
        let notify = self.map.entry(id.to_string()).or_default().clone();
        Watch {
            waiters: self,
            id: id.to_string(),
            notify: Some(notify),
        }
    }

    /// Wake everyone watching `id`.
    pub fn wake(&self, id: &str) {
        if let Some(n) = self.map.get(id) {
            n.notify_waiters();
        }
    }

    /// Wake every watcher (changes may have been missed: all re-read).
    pub fn wake_all(&self) {
        for n in self.map.iter() {
            n.notify_waiters();
        }
    }

    /// Approvals someone is watching.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether nobody is watching anything.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

impl Gate {
    /// Wait until approval `id` is final or `hold` passes.
    ///
    /// Not an `async fn`, which would keep its arguments twice (as given and
    /// as bound) in each of thousands of held calls.
    pub fn wait<'a>(
        &'a self,
        id: &'a str,
        hold: Duration,
    ) -> impl Future<Output = Result<Waited, GateError>> + 'a {
        let until = tokio::time::Instant::now() + hold;
        let watch = self.0.waiters.watch(id);
        async move {
            let Some(notify) = watch.notify() else {
                return Ok(Waited::Pending);
            };
            loop {
                // Register for the wake-up before reading the state, so a verdict
                // between the read and the wait is not missed.
                let mut notified = pin!(notify.notified());
                notified.as_mut().enable();
                let a = self.approval(id).await?;
                if a.state.is_final() {
                    return Ok(Waited::Final(Box::new(a)));
                }
                drop(a); // not kept across the wait by each of thousands of held calls
                tokio::select! {
                    _ = notified => {}
                    _ = tokio::time::sleep_until(until) => return Ok(Waited::Pending),
                }
            }
        }
    }
}

impl Watch<'_> {
    /// The notifier to register with before reading the approval's state
    /// (present from construction until drop).
    pub fn notify(&self) -> Option<&Notify> {
        self.notify.as_deref()
    }
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        drop(self.notify.take());
        // `entry`/`remove_if` lock the same shard, so a watcher arriving now
        // either sees the entry (count 2: kept) or creates a fresh one.
        self.waiters
            .map
            .remove_if(&self.id, |_, n| Arc::strong_count(n) == 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_watcher_removes_the_entry() {
        let w = Waiters::default();
        let a = w.watch("x");
        let b = w.watch("x");
        assert_eq!(w.len(), 1);
        drop(a);
        assert_eq!(w.len(), 1, "b still watches");
        drop(b);
        assert!(w.is_empty());
    }

    #[tokio::test]
    async fn a_remaining_watcher_is_still_woken() {
        let w = Arc::new(Waiters::default());
        let first = w.watch("x");
        drop(first);
        let second = w.watch("x");
        let mut woken = std::pin::pin!(second.notify().unwrap().notified());
        woken.as_mut().enable();
        w.wake("x");
        tokio::time::timeout(std::time::Duration::from_secs(1), woken)
            .await
            .unwrap();
    }
}
