//! A periodic background loop that ends when Latch shuts down: deadlines,
//! policy-directory polling. A leaf: it imports nothing else of Latch's.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{interval, Interval, MissedTickBehavior};

/// Ticks every `period` until the stop signal turns true.
pub struct Ticker {
    tick: Interval,
    stop: watch::Receiver<bool>,
}

impl Ticker {
    /// A ticker whose first tick is immediate; a late tick is delayed, not
    /// bunched up.
    pub fn new(period: Duration, stop: watch::Receiver<bool>) -> Ticker {
        let mut tick = interval(period);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Ticker { tick, stop }
    }

    /// Wait for the next tick: `true`, or `false` once stopped.
    pub async fn next(&mut self) -> bool {
        loop {
            tokio::select! {
                _ = self.tick.tick() => return true,
                changed = self.stop.changed() => {
                    if changed.is_err() || *self.stop.borrow() {
                        return false;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn ticks_until_stopped() {
        let (stop, rx) = watch::channel(false);
        let mut t = Ticker::new(Duration::from_secs(1), rx);
        assert!(t.next().await);
        assert!(t.next().await);
        stop.send(true).unwrap();
        assert!(!t.next().await);
    }
}
