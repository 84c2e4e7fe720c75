//! The gate's notion of "now", injected so deadline tests run on tokio's
//! paused clock instead of sleeping.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

/// Where Unix milliseconds come from.
#[derive(Clone, Default)]
pub struct Clock(Source);

#[derive(Clone, Default)]
enum Source {
    #[default]
    System,
    Tokio(Arc<(i64, tokio::time::Instant)>),
    Manual(Arc<AtomicI64>),
}

impl Clock {
    /// The system clock.
    pub fn system() -> Clock {
        Clock(Source::System)
    }

    /// A clock that starts at `start_ms` and moves with tokio's clock, so
    /// `tokio::time::pause` and `advance` move it too.
    pub fn tokio(start_ms: i64) -> Clock {
        Clock(Source::Tokio(Arc::new((
            start_ms,
            tokio::time::Instant::now(),
        ))))
    }

    /// A clock that stands at `start_ms` until [`Clock::advance`] moves it
    /// (for tests that must not pause tokio's timers, e.g. around policy
    /// evaluation, whose time limit is a tokio timer).
    pub fn manual(start_ms: i64) -> Clock {
        Clock(Source::Manual(Arc::new(AtomicI64::new(start_ms))))
    }

    /// Move a manual clock forward by `ms` (other clocks ignore this).
    pub fn advance(&self, ms: i64) {
        if let Source::Manual(now) = &self.0 {
            now.fetch_add(ms, Ordering::SeqCst);
        }
    }

    /// Unix milliseconds now.
    pub fn now_ms(&self) -> i64 {
        match &self.0 {
            Source::System => chrono::Utc::now().timestamp_millis(),
            Source::Tokio(base) => {
                let (start, at) = **base;
                start + i64::try_from(at.elapsed().as_millis()).unwrap_or(i64::MAX - start)
            }
            Source::Manual(now) => now.load(Ordering::SeqCst),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_tokio_clock_moves_only_with_tokio_time() {
        let clock = Clock::tokio(1_000);
        assert_eq!(clock.now_ms(), 1_000);
        tokio::time::advance(std::time::Duration::from_secs(90)).await;
        assert_eq!(clock.now_ms(), 91_000);
    }

    #[test]
    fn a_manual_clock_moves_only_when_told() {
        let clock = Clock::manual(5);
        let shared = clock.clone();
        shared.advance(10);
        assert_eq!(clock.now_ms(), 15);
        Clock::system().advance(1);
    }
}
