//! The tamper-evident audit trail: the chain itself ([`chain`]: records
//! chained by SHA-256, keyed MACs, verification), the group-commit writer
//! for allow/deny decisions, and paging through stored records.

pub mod chain;
pub mod writer;

use chain::Record;
pub use writer::{AuditLog, Then, Unavailable};

/// Records per page when streaming the chain.
const PAGE: usize = 2_000;

/// Call `f` on every record with `after < seq <= upto`, in order, a page at
/// a time (constant memory however long the log).
pub fn each_record(
    store: &dyn crate::store::Store,
    mut after: i64,
    upto: i64,
    mut f: impl FnMut(&Record) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    while after < upto {
        let page = store.audit_after(after, PAGE)?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        for r in page.iter().take_while(|r| r.seq <= upto) {
            f(r)?;
        }
    }
    Ok(())
}

/// The stored chain, verified from its retention checkpoint (or the
/// start) to the head as read first (records appended meanwhile are left
/// for the next run), streaming. The outer error is the store's; the inner
/// one the first problem in the chain.
pub fn verify_store(
    store: &dyn crate::store::Store,
    key: Option<&chain::AuditKey>,
) -> anyhow::Result<Result<StoreVerified, chain::ChainError>> {
    let head = store.audit_head()?;
    let checkpoint = store.audit_checkpoint()?;
    let anchor = match checkpoint.as_ref().map(|c| c.anchor(key)).transpose() {
        Ok(a) => a.unwrap_or_else(chain::Anchor::genesis),
        Err(e) => return Ok(Err(e)),
    };
    let mut v = chain::Verifier::new(&anchor, key);
    let mut broken = None;
    let upto = head.as_ref().map_or(anchor.seq, |h| h.seq);
    each_record(store, anchor.seq, upto, |r| {
        if broken.is_none() {
            if let Err(e) = v.push(r) {
                broken = Some(e);
            }
        }
        Ok(())
    })?;
    if let Some(e) = broken {
        return Ok(Err(e));
    }
    // Records past a head that has not moved were not written by Latch
    // (a running Latch moves the head with every record it appends).
    if let Some(extra) = store.audit_after(upto, 1)?.first() {
        if store.audit_head()?.as_ref().map(|h| h.seq) == head.as_ref().map(|h| h.seq) {
            return Ok(Err(chain::ChainError::Truncated {
                last: extra.seq,
                head: upto,
            }));
        }
    }
    Ok(v.finish(head.as_ref()).map(|verified| StoreVerified {
        verified,
        checkpoint,
        head,
    }))
}

/// What [`verify_store`] proved, and where the chain starts and ends.
#[derive(Debug)]
pub struct StoreVerified {
    /// Records, pruned records, keyed-from.
    pub verified: chain::Verified,
    /// Where retention cut the chain, if it did.
    pub checkpoint: Option<chain::Checkpoint>,
    /// Where the chain ends.
    pub head: Option<chain::Head>,
}

/// What one retention pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Retained {
    /// Decision records whose details were dropped (their digests stay).
    pub pruned: u64,
    /// Records dropped behind the checkpoint.
    pub dropped: u64,
    /// The checkpoint now in force, if any.
    pub checkpoint: Option<chain::Checkpoint>,
}

/// Decision records pruned per store call (keeps each write short).
const PRUNE_BATCH: usize = 5000;

/// Apply retention as of `now`: drop the details of allow/deny decision
/// records older than `decisions_days`, and every record older than
/// `all_days` behind a checkpoint (signed with `key` when keyed). The
/// newest record is always kept, so the chain goes on from it.
pub fn retain(
    store: &dyn crate::store::Store,
    decisions_days: Option<u64>,
    all_days: Option<u64>,
    key: Option<&chain::AuditKey>,
    now: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<Retained> {
    let cutoff = |days: u64| {
        (now - chrono::Duration::days(days as i64))
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
    };
    let mut out = Retained {
        checkpoint: store.audit_checkpoint()?,
        ..Retained::default()
    };
    let newest = store.audit_head()?.map_or(0, |h| h.seq);
    if let Some(days) = decisions_days {
        let upto = last_before(store, &cutoff(days))?;
        loop {
            let n = store.prune_decision_details(upto, PRUNE_BATCH)?;
            out.pruned += n;
            if n < PRUNE_BATCH as u64 {
                break;
            }
        }
    }
    if let Some(days) = all_days {
        let upto = last_before(store, &cutoff(days))?.min(newest - 1);
        let done = out.checkpoint.as_ref().map_or(0, |c| c.seq);
        if upto > done {
            if let Some(r) = store.audit_after(upto - 1, 1)?.into_iter().next() {
                let cp = chain::Checkpoint::after(&r, key);
                out.dropped = store.drop_audit_before(&cp)?;
                out.checkpoint = Some(cp);
            }
        }
    }
    Ok(out)
}

/// Run retention now and then every `every` until `stop`.
pub async fn run_retention(
    store: std::sync::Arc<dyn crate::store::Store>,
    config: crate::config::AuditConfig,
    every: std::time::Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let (s, c) = (store.clone(), config.clone());
        let pass = crate::store::blocking(move || {
            retain(
                &*s,
                c.retain_decisions_days,
                c.retain_days,
                c.key.as_ref(),
                chrono::Utc::now(),
            )
        })
        .await;
        match pass {
            Ok(r) if r.pruned > 0 || r.dropped > 0 => tracing::info!(
                pruned = r.pruned,
                dropped = r.dropped,
                checkpoint = r.checkpoint.map(|c| c.seq),
                "audit retention applied"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "audit retention failed; will try again"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
    }
}

/// A sequence number shortly before the first record at or after `since`
/// (found by bisection, so a window at the end of a long trail does not
/// read the whole trail). Server clocks can step back a little, so the
/// search backs off by a margin; the caller still filters by time.
fn start_of(store: &dyn crate::store::Store, since: &str) -> anyhow::Result<i64> {
    const MARGIN: i64 = 1000;
    Ok((last_before(store, since)? - MARGIN).max(0))
}

/// The sequence number of the last record older than `since` (0: none),
/// assuming times grow with sequence numbers.
fn last_before(store: &dyn crate::store::Store, since: &str) -> anyhow::Result<i64> {
    let Some(head) = store.audit_head()? else {
        return Ok(0);
    };
    // Invariant: records up to `lo` are older than `since`; none from `hi` on is.
    let (mut lo, mut hi) = (0i64, head.seq + 1);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        match store.audit_after(mid - 1, 1)?.first() {
            Some(r) if r.ts.as_str() < since => lo = if r.seq < hi { r.seq } else { mid },
            _ => hi = mid,
        }
    }
    Ok(lo)
}

/// Read records after `after` (sequence number), at or after `since`, about
/// `subject` if given, oldest first; at most `limit`.
pub fn records(
    store: &dyn crate::store::Store,
    mut after: i64,
    limit: usize,
    since: Option<chrono::DateTime<chrono::Utc>>,
    subject: Option<&str>,
) -> anyhow::Result<Vec<Record>> {
    // Stored times share one format, so they order as strings.
    let since = since.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true));
    if let Some(s) = &since {
        after = after.max(start_of(store, s)?);
    }
    let mut out = Vec::new();
    loop {
        let page = store.audit_after(after, 1000)?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        for r in page {
            let recent = since.as_ref().is_none_or(|s| r.ts.as_str() >= s.as_str());
            if recent && subject.is_none_or(|s| r.subject == s) {
                out.push(r);
                if out.len() >= limit {
                    return Ok(out);
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::chain::Event;
    use super::*;
    use crate::store::sqlite::SqliteStore;
    use crate::store::Store;

    #[test]
    fn a_window_starts_where_its_first_record_is() {
        let store = SqliteStore::memory(None).unwrap();
        let events = |n: usize| -> Vec<Event> {
            (0..n)
                .map(|i| Event::new("bot", "decision", &i.to_string(), serde_json::json!({})))
                .collect()
        };
        store.append_audit(events(1500)).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
        let since = chrono::Utc::now();
        std::thread::sleep(std::time::Duration::from_millis(5));
        store.append_audit(events(700)).unwrap();
        let s = since.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        assert_eq!(last_before(&store, &s).unwrap(), 1500);
        assert_eq!(start_of(&store, &s).unwrap(), 500);
        let window = records(&store, 0, usize::MAX, Some(since), None).unwrap();
        assert_eq!((window.len(), window[0].seq), (700, 1501));
        let early = chrono::Utc::now() - chrono::Duration::days(1);
        assert_eq!(
            records(&store, 0, usize::MAX, Some(early), None)
                .unwrap()
                .len(),
            2200
        );
        let empty = SqliteStore::memory(None).unwrap();
        assert_eq!(last_before(&empty, &s).unwrap(), 0);
    }

    #[test]
    fn retention_prunes_decision_details_then_drops_the_oldest_behind_a_checkpoint() {
        let key = chain::AuditKey::new(&[9; 32]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        let store = SqliteStore::open(&path, Some(key.clone())).unwrap();
        let ev = |event: &str, i: usize| {
            Event::new(
                "bot",
                event,
                &format!("s{i}"),
                serde_json::json!({"reasons": ["why"], "i": i}),
            )
        };
        let events: Vec<Event> = (0..10)
            .map(|i| ev(if i % 3 == 0 { "gate" } else { "decision" }, i))
            .collect();
        store.append_audit(events).unwrap();
        let now = chrono::Utc::now();
        let check = |store: &SqliteStore| {
            let records = records(store, 0, usize::MAX, None, None).unwrap();
            let anchor = match store.audit_checkpoint().unwrap() {
                Some(c) => c.anchor(Some(&key)).unwrap(),
                None => chain::Anchor::genesis(),
            };
            let head = store.audit_head().unwrap();
            chain::verify_from(&anchor, &records, Some(&key), head.as_ref()).unwrap()
        };

        // Nothing is old yet.
        let r = retain(&store, Some(2), Some(30), Some(&key), now).unwrap();
        assert_eq!((r.pruned, r.dropped, r.checkpoint), (0, 0, None));

        // Three days on: decision details go, gate records keep theirs.
        let later = now + chrono::Duration::days(3);
        let r = retain(&store, Some(2), Some(30), Some(&key), later).unwrap();
        assert_eq!((r.pruned, r.dropped), (6, 0));
        let kept = records(&store, 0, usize::MAX, None, None).unwrap();
        assert!(kept
            .iter()
            .all(|r| r.is_pruned() == (r.event == "decision")));
        assert_eq!(check(&store).pruned, 6);

        // A month on: everything but the newest record goes behind a signed checkpoint.
        let much_later = now + chrono::Duration::days(31);
        let r = retain(&store, Some(2), Some(30), Some(&key), much_later).unwrap();
        assert_eq!(r.dropped, 9);
        let cp = r.checkpoint.unwrap();
        assert_eq!(cp.seq, 9);
        assert_eq!(check(&store).records, 1);
        // Again later: the newest record is always kept, so the chain
        // goes on from it, also after a reopen.
        let r = retain(&store, None, Some(30), Some(&key), much_later).unwrap();
        assert_eq!(r.dropped, 0);
        drop(store);
        let store = SqliteStore::open(&path, Some(key.clone())).unwrap();
        store.append_audit(vec![ev("decision", 10)]).unwrap();
        assert_eq!(check(&store).records, 2);
        let r = retain(&store, None, Some(30), Some(&key), much_later).unwrap();
        assert_eq!((r.dropped, check(&store).records), (1, 1));
    }

    #[test]
    fn the_stored_chain_verifies_streaming_and_its_ends_are_guarded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        let store = SqliteStore::open(&path, None).unwrap();
        let events: Vec<Event> = (0..25_000)
            .map(|i| {
                Event::new(
                    "bot",
                    "decision",
                    &i.to_string(),
                    serde_json::json!({"i": i}),
                )
            })
            .collect();
        store.append_audit(events).unwrap();
        let ok = verify_store(&store, None).unwrap().unwrap();
        assert_eq!(ok.verified.records, 25_000, "more than two pages");
        let raw = rusqlite::Connection::open(&path).unwrap();
        // A record beyond a head that did not move: added by someone else.
        raw.execute(
            "UPDATE audit_head SET seq = 24999, hash = (SELECT hash FROM audit WHERE seq = 24999)",
            [],
        )
        .unwrap();
        assert!(matches!(
            verify_store(&store, None).unwrap(),
            Err(chain::ChainError::Truncated { .. })
        ));
        // The newest records removed: the head names one that is gone.
        raw.execute(
            "UPDATE audit_head SET seq = 25000, hash = (SELECT hash FROM audit WHERE seq = 25000)",
            [],
        )
        .unwrap();
        raw.execute("DELETE FROM audit WHERE seq > 24990", [])
            .unwrap();
        assert_eq!(
            verify_store(&store, None).unwrap().unwrap_err(),
            chain::ChainError::Truncated {
                last: 24990,
                head: 25000
            }
        );
    }

    /// Threads committing for themselves and async callers share one
    /// chain: every record lands once, in a chain that verifies, and every
    /// caller hears its record was committed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn blocking_and_async_records_share_one_chain() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        let store: Arc<dyn Store> = Arc::new(SqliteStore::memory(None).unwrap());
        let seconds = prometheus::Histogram::with_opts(prometheus::HistogramOpts::new("w", "w"));
        let log = Arc::new(AuditLog::start(store.clone(), seconds.unwrap()).unwrap());
        let acked = Arc::new(AtomicUsize::new(0));
        let event = |who: &str, i: usize| {
            Event::new(
                who,
                "decision",
                &format!("{who}-{i}"),
                serde_json::json!({}),
            )
        };
        let threads: Vec<_> = (0..3)
            .map(|t| {
                let (log, acked) = (log.clone(), acked.clone());
                std::thread::spawn(move || {
                    for i in 0..300 {
                        let acked = acked.clone();
                        let then = move |ok: bool| {
                            assert!(ok);
                            acked.fetch_add(1, Ordering::SeqCst);
                        };
                        log.commit_blocking(event(&format!("t{t}"), i), Box::new(then));
                    }
                })
            })
            .collect();
        let callers: Vec<_> = (0..100)
            .map(|i| {
                let log = log.clone();
                tokio::spawn(async move { log.record(event("async", i)).await })
            })
            .collect();
        for c in callers {
            c.await.unwrap().unwrap();
        }
        for t in threads {
            t.join().unwrap();
        }
        // A blocking caller's record may still be in another thread's commit.
        for _ in 0..100 {
            if acked.load(Ordering::SeqCst) == 900 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(acked.load(Ordering::SeqCst), 900);
        let verified = verify_store(&*store, None).unwrap().unwrap();
        assert_eq!(verified.verified.records, 1000);
        let mut subjects: Vec<String> = store
            .audit_after(0, 2000)
            .unwrap()
            .into_iter()
            .map(|r| r.subject)
            .collect();
        subjects.sort();
        subjects.dedup();
        assert_eq!(subjects.len(), 1000);
    }
}
