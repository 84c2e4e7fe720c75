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

/// Read records after `after` (sequence number), at or after `since`, about
/// `subject` if given; at most `limit`.
pub fn records(
    store: &dyn crate::store::Store,
    mut after: i64,
    limit: usize,
    since: Option<chrono::DateTime<chrono::Utc>>,
    subject: Option<&str>,
) -> anyhow::Result<Vec<Record>> {
    // Stored times share one format, so they order as strings.
    let since = since.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true));
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
