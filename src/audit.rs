//! The tamper-evident audit trail: the chain itself ([`chain`]: records
//! chained by SHA-256, keyed MACs, verification), the group-commit writer
//! for allow/deny decisions, and paging through stored records.

pub mod chain;

use chain::{Event, Record};

/// Group-commit writer for allow/deny decisions: callers wait for their
/// record to be committed (so nothing is forwarded unrecorded), records from
/// concurrent requests share one commit, and a full queue pushes back.
pub struct AuditLog {
    tx: tokio::sync::mpsc::Sender<(Event, tokio::sync::oneshot::Sender<bool>)>,
}

/// The audit log could not be written.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("audit log unavailable")]
pub struct Unavailable;

impl AuditLog {
    /// Start the writer thread over `store`.
    pub fn start(
        store: std::sync::Arc<dyn crate::store::Store>,
        write_seconds: prometheus::Histogram,
    ) -> std::io::Result<AuditLog> {
        let (tx, mut rx) =
            tokio::sync::mpsc::channel::<(Event, tokio::sync::oneshot::Sender<bool>)>(4096);
        std::thread::Builder::new().name("latch-audit".into()).spawn(move || {
            while let Some(first) = rx.blocking_recv() {
                let mut batch = vec![first];
                while batch.len() < 512 {
                    match rx.try_recv() {
                        Ok(item) => batch.push(item),
                        Err(_) => break,
                    }
                }
                let (events, acks): (Vec<Event>, Vec<_>) = batch.into_iter().unzip();
                let started = std::time::Instant::now();
                let ok = match store.append_audit(&events) {
                    Ok(_) => true,
                    Err(e) => {
                        tracing::error!(error = %e, records = events.len(), "audit write failed");
                        false
                    }
                };
                write_seconds.observe(started.elapsed().as_secs_f64());
                for ack in acks {
                    let _ = ack.send(ok);
                }
            }
        })?;
        Ok(AuditLog { tx })
    }

    /// Append `event`; returns once it is committed.
    pub async fn record(&self, event: Event) -> Result<(), Unavailable> {
        let (ack, done) = tokio::sync::oneshot::channel();
        self.tx.send((event, ack)).await.map_err(|_| Unavailable)?;
        match done.await {
            Ok(true) => Ok(()),
            _ => Err(Unavailable),
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
        store.append_audit(&events(1500)).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
        let since = chrono::Utc::now();
        std::thread::sleep(std::time::Duration::from_millis(5));
        store.append_audit(&events(700)).unwrap();
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
}
