//! Change notifications between replicas: every approval change sends its
//! id on a channel (`pg_notify`, delivered at commit); each replica listens
//! on its own connection and wakes the calls it holds. A lost connection is
//! opened again with back-off, and then everyone waiting re-reads (changes
//! made meanwhile were not heard) — the fallback that makes the listener an
//! optimisation, never the only way a held call learns its verdict.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use postgres::fallible_iterator::FallibleIterator;

use crate::store::ChangeHook;

/// The notification channel.
pub(super) const CHANNEL: &str = "latch_approvals";
/// How often the listener looks at the stop flag.
const TICK: Duration = Duration::from_millis(500);
/// Longest pause between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Listen until `stop`.
pub(super) fn run(
    config: postgres::Config,
    tls: super::tls::Rustls,
    changed: ChangeHook,
    stop: Arc<AtomicBool>,
) {
    let mut backoff = Duration::from_millis(100);
    let mut first = true;
    while !stop.load(Ordering::Relaxed) {
        let mut client = match config.connect(tls.clone()) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "PostgreSQL change listener cannot connect; retrying");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        if let Err(e) = client.batch_execute(&format!("LISTEN {CHANNEL}")) {
            tracing::warn!(error = %e, "PostgreSQL LISTEN failed; retrying");
            std::thread::sleep(backoff);
            continue;
        }
        backoff = Duration::from_millis(100);
        if !first {
            tracing::info!(
                "PostgreSQL change listener is back; held calls re-read their approvals"
            );
            changed(None);
        }
        first = false;
        loop {
            let next = client.notifications().timeout_iter(TICK).next();
            match next {
                Ok(Some(n)) => changed(Some(n.payload())),
                Ok(None) if stop.load(Ordering::Relaxed) => return,
                Ok(None) if client.is_closed() => {
                    tracing::warn!("PostgreSQL change listener lost its connection");
                    break;
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "PostgreSQL change listener lost its connection");
                    break;
                }
            }
        }
    }
}
