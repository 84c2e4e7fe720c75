//! The gate's notion of "now", injected so deadline tests run on tokio's
//! paused clock instead of sleeping.

use std::sync::Arc;

/// Where Unix milliseconds come from.
#[derive(Clone, Default)]
pub struct Clock(Option<Arc<(i64, tokio::time::Instant)>>);

impl Clock {
    /// The system clock.
    pub fn system() -> Clock {
        Clock(None)
    }

    /// A clock that starts at `start_ms` and moves with tokio's clock, so
    /// `tokio::time::pause` and `advance` move it too.
    pub fn tokio(start_ms: i64) -> Clock {
        Clock(Some(Arc::new((start_ms, tokio::time::Instant::now()))))
    }

    /// Unix milliseconds now.
    pub fn now_ms(&self) -> i64 {
        match &self.0 {
            None => chrono::Utc::now().timestamp_millis(),
            Some(base) => {
                let (start, at) = **base;
                start + i64::try_from(at.elapsed().as_millis()).unwrap_or(i64::MAX - start)
            }
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
}
