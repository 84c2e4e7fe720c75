//! Action history: how often each agent has carried out each class of action.
//!
//! An action class is (agent, tool, method, shape of the arguments): two
//! e-mails to different people are the same class; an e-mail with a new `bcc`
//! field is a new one. Counts live in a `DashMap` for the hot path and are
//! written behind to the store by one thread, so novelty survives restarts
//! without a disk write on the request path.

pub mod stats;

pub use stats::Stats;

use std::collections::HashMap;
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use regorus::Value;
use sha2::{Digest, Sha256};

use crate::store::{HistoryRow, Store};

/// An action class, identified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionClass {
    /// 16-byte digest of (agent, tool, method, shape).
    pub key: [u8; 16],
    /// Agent id.
    pub agent: String,
    /// Tool.
    pub tool: String,
    /// Canonical shape of the arguments.
    pub shape: String,
}

impl ActionClass {
    /// Classify a call.
    pub fn new(agent: &str, tool: &str, method: &str, args: &Value) -> ActionClass {
        Self::with_values(agent, tool, method, args, &[])
    }

    /// Classify a call where the values of `class_args` also matter (e.g.
    /// `["to"]`: each new recipient is a new class).
    pub fn with_values(
        agent: &str,
        tool: &str,
        method: &str,
        args: &Value,
        class_args: &[String],
    ) -> ActionClass {
        let mut shape = String::new();
        shape_of(args, &mut shape);
        for name in class_args {
            let v = &args[name.as_str()];
            if *v != Value::Undefined {
                shape.push_str(&format!(" {name}={}", v.to_json_str().unwrap_or_default()));
            }
        }
        let mut h = Sha256::new();
        for part in [agent, tool, method, shape.as_str()] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        let digest = h.finalize();
        let mut key = [0u8; 16];
        key.copy_from_slice(&digest[..16]);
        ActionClass {
            key,
            agent: agent.to_string(),
            tool: tool.to_string(),
            shape: format!("{method} {shape}"),
        }
    }

    /// Rebuild a class from its stored fingerprint and description.
    pub fn from_parts(
        fingerprint: &str,
        agent: &str,
        tool: &str,
        shape: &str,
    ) -> Option<ActionClass> {
        let bytes: Vec<u8> = (0..fingerprint.len())
            .step_by(2)
            .filter_map(|i| fingerprint.get(i..i + 2))
            .filter_map(|h| u8::from_str_radix(h, 16).ok())
            .collect();
        let key: [u8; 16] = bytes.try_into().ok()?;
        Some(ActionClass {
            key,
            agent: agent.to_string(),
            tool: tool.to_string(),
            shape: shape.to_string(),
        })
    }

    /// Hex form of the key.
    pub fn fingerprint(&self) -> String {
        crate::digest::hex(&self.key)
    }
}

/// Canonical shape: keys sorted, values replaced by their type, arrays by
/// the sorted set of their element shapes.
fn shape_of(v: &Value, out: &mut String) {
    match v {
        Value::Null | Value::Undefined => out.push('n'),
        Value::Bool(_) => out.push('b'),
        Value::Number(_) => out.push('#'),
        Value::String(_) => out.push('s'),
        Value::Array(items) => set_shape('[', items.iter(), ']', out),
        Value::Set(items) => set_shape('<', items.iter(), '>', out),
        Value::Object(map) => {
            // Sorted iteration makes the shape independent of key order.
            out.push('{');
            for (i, (k, val)) in map.iter_sorted().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                match k.as_string() {
                    Ok(name) => out.push_str(name),
                    Err(_) => shape_of(k, out),
                }
                out.push(':');
                shape_of(val, out);
            }
            out.push('}');
        }
    }
}

fn set_shape<'a>(
    open: char,
    items: impl Iterator<Item = &'a Value>,
    close: char,
    out: &mut String,
) {
    let mut shapes: Vec<String> = items
        .map(|i| {
            let mut s = String::new();
            shape_of(i, &mut s);
            s
        })
        .collect();
    shapes.sort();
    shapes.dedup();
    out.push(open);
    out.push_str(&shapes.join("|"));
    out.push(close);
}

/// How long the writer gathers updates before one commit.
const BATCH_WINDOW: Duration = Duration::from_millis(50);

/// Changes not yet in the store, merged per class, and who waits for them.
#[derive(Default)]
struct Queue {
    rows: HashMap<[u8; 16], HistoryRow>,
    flushes: Vec<mpsc::Sender<anyhow::Result<()>>>,
    closed: bool,
}

/// The queue and the writer's wake-up. A call only wakes the writer when it
/// starts a window (the queue was empty), so a busy proxy costs one wake-up
/// and one commit per window, not one per request.
#[derive(Default)]
struct Pending {
    queue: Mutex<Queue>,
    ready: Condvar,
}

impl Pending {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// In-memory history with write-behind persistence.
pub struct History {
    map: DashMap<[u8; 16], Stats>,
    pending: Arc<Pending>,
}

impl History {
    /// Load every class from `store` and start the writer thread.
    pub fn open(store: Arc<dyn Store>) -> anyhow::Result<History> {
        let map = DashMap::new();
        for row in store.load_history()? {
            if let Some(class) =
                ActionClass::from_parts(&row.fingerprint, &row.agent, &row.tool, &row.shape)
            {
                map.insert(class.key, row.stats);
            }
        }
        let pending = Arc::new(Pending::default());
        let queue = pending.clone();
        std::thread::Builder::new()
            .name("latch-history".into())
            .spawn(move || writer(store, &queue))?;
        Ok(History { map, pending })
    }

    /// Counters for `class` before this call.
    pub fn get(&self, class: &ActionClass) -> Stats {
        self.map
            .get(&class.key)
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    /// Record the policy's action for `class`.
    pub fn record(&self, class: &ActionClass, action: &str, now: i64) {
        self.update(class, |s| {
            if action == "allow" {
                s.seen += 1;
                s.first_seen.get_or_insert(now);
            }
            s.last_seen = Some(now);
            if s.last_decision.as_deref() != Some(action) {
                s.last_decision = Some(action.to_string());
            }
        });
    }

    /// Apply `f` and queue what it changed for the store (increments, so
    /// replicas sharing a store add up). The change is queued under the map
    /// entry's lock, so changes of one class merge in order.
    fn update(&self, class: &ActionClass, f: impl FnOnce(&mut Stats)) {
        let mut entry = self.map.entry(class.key).or_default();
        let before = entry.counts();
        f(&mut entry);
        let change = entry.since(before);
        let mut q = self.pending.lock();
        if q.closed {
            tracing::error!("history writer has stopped; history is no longer persisted");
            return;
        }
        let starts_window = q.rows.is_empty();
        match q.rows.entry(class.key) {
            std::collections::hash_map::Entry::Occupied(mut queued) => {
                queued.get_mut().stats.add(&change)
            }
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(HistoryRow {
                    fingerprint: class.fingerprint(),
                    agent: class.agent.clone(),
                    tool: class.tool.clone(),
                    shape: class.shape.clone(),
                    stats: change,
                });
            }
        }
        drop(q);
        drop(entry);
        if starts_window {
            self.pending.ready.notify_one();
        }
    }

    /// Take in what other replicas wrote to a shared store: each counter
    /// becomes the larger of ours and the store's (counters only grow, so
    /// this never loses a count and settles on the total once all is written).
    pub fn refresh(&self, store: &dyn Store) -> anyhow::Result<()> {
        for row in store.load_history()? {
            let Some(class) =
                ActionClass::from_parts(&row.fingerprint, &row.agent, &row.tool, &row.shape)
            else {
                continue;
            };
            self.map.entry(class.key).or_default().absorb(&row.stats);
        }
        Ok(())
    }

    /// A human verdict on a gated call of `class`.
    pub fn verdict(&self, class: &ActionClass, approved: bool, decision_ms: u64) {
        self.update(class, |s| {
            if approved {
                s.approved += 1;
            } else {
                s.rejected += 1;
            }
            s.decision_ms_total += decision_ms;
        });
    }

    /// An approved call of `class` was carried out.
    pub fn executed(&self, class: &ActionClass, now: i64) {
        self.update(class, |s| {
            s.seen += 1;
            s.first_seen.get_or_insert(now);
            s.last_seen = Some(now);
        });
    }

    /// Wait until everything recorded so far is in the store.
    pub fn flush(&self) -> anyhow::Result<()> {
        let (tx, rx) = mpsc::channel();
        {
            let mut q = self.pending.lock();
            if q.closed {
                return Err(anyhow::anyhow!("history writer has stopped"));
            }
            q.flushes.push(tx);
        }
        self.pending.ready.notify_one();
        rx.recv()
            .map_err(|_| anyhow::anyhow!("history writer has stopped"))?
    }
}

impl Drop for History {
    fn drop(&mut self) {
        // The writer commits what is queued, then ends.
        self.pending.lock().closed = true;
        self.pending.ready.notify_one();
    }
}

/// Wait for a change, let the window gather more (a flush request ends it
/// early), write the merged changes in one transaction, answer any flush
/// waiters; end once the history is dropped and everything is written.
fn writer(store: Arc<dyn Store>, pending: &Pending) {
    loop {
        let mut q = pending.lock();
        while q.rows.is_empty() && q.flushes.is_empty() && !q.closed {
            q = pending.ready.wait(q).unwrap_or_else(|p| p.into_inner());
        }
        if q.flushes.is_empty() && !q.closed {
            let deadline = Instant::now() + BATCH_WINDOW;
            while q.flushes.is_empty() && !q.closed {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                q = pending
                    .ready
                    .wait_timeout(q, left)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
        }
        let rows: Vec<HistoryRow> = std::mem::take(&mut q.rows).into_values().collect();
        let waiters = std::mem::take(&mut q.flushes);
        let closed = q.closed;
        drop(q);
        let result = if rows.is_empty() {
            Ok(())
        } else {
            store.add_history(&rows)
        };
        if let Err(e) = &result {
            tracing::error!(error = %e, rows = rows.len(), "persisting action history failed");
        }
        for w in waiters {
            let _ = w.send(match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(anyhow::anyhow!("{e:#}")),
            });
        }
        if closed {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::SqliteStore;
    use serde_json::json;

    #[test]
    fn shape_ignores_values_and_key_order() {
        let a = ActionClass::new(
            "bot",
            "email",
            "POST",
            &Value::from(json!({"to": "x@y", "cc": ["a"], "n": 1})),
        );
        let b = ActionClass::new(
            "bot",
            "email",
            "POST",
            &Value::from(json!({"n": 99, "cc": ["b", "c"], "to": "z@w"})),
        );
        let c = ActionClass::new(
            "bot",
            "email",
            "POST",
            &Value::from(json!({"n": 99, "cc": ["b"], "to": "z@w", "bcc": "q"})),
        );
        let d = ActionClass::new(
            "other",
            "email",
            "POST",
            &Value::from(json!({"to": "x@y", "cc": ["a"], "n": 1})),
        );
        assert_eq!(a.key, b.key);
        assert_ne!(a.key, c.key);
        assert_ne!(a.key, d.key);
        assert_eq!(a.shape, "POST {cc:[s],n:#,to:s}");
    }

    #[test]
    fn seen_counts_only_carried_out_calls_and_persists() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.db");
        let class = ActionClass::new(
            "bot",
            "trade",
            "POST",
            &Value::from_json_str(r#"{"amount": 1}"#).unwrap(),
        );
        {
            let h = History::open(Arc::new(SqliteStore::open(&path, None).unwrap())).unwrap();
            assert_eq!(h.get(&class).seen, 0);
            h.record(&class, "gate", 100);
            assert_eq!(h.get(&class).seen, 0);
            h.record(&class, "allow", 101);
            h.record(&class, "allow", 102);
            h.flush().unwrap();
        }
        let h = History::open(Arc::new(SqliteStore::open(&path, None).unwrap())).unwrap();
        let s = h.get(&class);
        assert_eq!(
            (s.seen, s.first_seen, s.last_seen),
            (2, Some(101), Some(102))
        );
        assert_eq!(s.last_decision.as_deref(), Some("allow"));
    }
}
