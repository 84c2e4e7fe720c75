//! Throttling of failed authentication: a source address (or a principal)
//! that fails too often within a window is refused with 429 until the
//! window ends — correct credentials included, or guessing would go on and
//! merely learn which guess was right.
//!
//! Keys are source addresses and principal ids. The tables forget quiet
//! keys, so a scan from many addresses cannot grow them without bound.

use std::hash::Hash;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use dashmap::DashMap;

/// Failures allowed per key and window.
pub const MAX_FAILURES: u32 = 20;
/// The window.
pub const WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    failures: u32,
}

/// What a failure counts against.
#[derive(Debug, Clone, Copy)]
pub enum Key<'a> {
    /// A source address.
    Ip(IpAddr),
    /// A principal id.
    Principal(&'a str),
}

/// Failure counts by source address and by principal.
#[derive(Debug, Default)]
pub struct Throttle {
    ips: DashMap<IpAddr, Window>,
    principals: DashMap<String, Window>,
}

impl Throttle {
    /// `Err(retry_after)` while `key` is over its limit.
    pub fn check(&self, key: Key<'_>) -> Result<(), Duration> {
        let w = match key {
            Key::Ip(ip) => self.ips.get(&ip).map(|w| *w),
            Key::Principal(id) => self.principals.get(id).map(|w| *w),
        };
        let Some(w) = w else { return Ok(()) };
        let age = w.started.elapsed();
        if age >= WINDOW || w.failures < MAX_FAILURES {
            return Ok(());
        }
        Err(WINDOW - age)
    }

    /// Count a failure against `key`.
    pub fn failed(&self, key: Key<'_>) {
        match key {
            Key::Ip(ip) => count(&self.ips, ip),
            Key::Principal(id) => count(&self.principals, id.to_string()),
        }
    }
}

fn count<K: Eq + Hash>(map: &DashMap<K, Window>, key: K) {
    if map.len() >= 4096 {
        map.retain(|_, w| w.started.elapsed() < WINDOW);
    }
    let mut w = map.entry(key).or_insert(Window {
        started: Instant::now(),
        failures: 0,
    });
    if w.started.elapsed() >= WINDOW {
        *w = Window {
            started: Instant::now(),
            failures: 0,
        };
    }
    w.failures = w.failures.saturating_add(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_after_the_limit_and_only_that_key() {
        let t = Throttle::default();
        let ip = Key::Ip("1.2.3.4".parse().unwrap());
        for _ in 0..MAX_FAILURES - 1 {
            t.failed(ip);
        }
        assert!(t.check(ip).is_ok());
        t.failed(ip);
        let wait = t.check(ip).unwrap_err();
        assert!(wait <= WINDOW && wait > Duration::from_secs(50));
        assert!(t.check(Key::Ip("5.6.7.8".parse().unwrap())).is_ok());
        assert!(t.check(Key::Principal("alice")).is_ok());
    }
}
