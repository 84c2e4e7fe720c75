//! Per-class counters: what the store persists and the policy reads as
//! `input.history`. A leaf: it imports nothing else of Latch's.

/// Counters for one action class.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Times the class was carried out (allowed or approved). Denied and
    /// gated attempts do not count, so retrying does not make a call familiar.
    pub seen: u64,
    /// Unix seconds of the first time it was carried out.
    pub first_seen: Option<i64>,
    /// Unix seconds of the latest decision.
    pub last_seen: Option<i64>,
    /// Human approvals.
    pub approved: u64,
    /// Human rejections.
    pub rejected: u64,
    /// Latest policy action for the class.
    pub last_decision: Option<String>,
    /// Sum of the time humans took to decide (approved and rejected), ms.
    pub decision_ms_total: u64,
}

/// The counters of a [`Stats`] at one moment: seen, approved, rejected and
/// decision time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts([u64; 4]);

impl Stats {
    /// The counters alone (cheap to keep across a change).
    pub fn counts(&self) -> Counts {
        Counts([
            self.seen,
            self.approved,
            self.rejected,
            self.decision_ms_total,
        ])
    }

    /// What changed since the counters were `before`: counter increments,
    /// and the sightings and decision as they are now.
    pub fn since(&self, before: Counts) -> Stats {
        let [seen, approved, rejected, ms] = before.0;
        Stats {
            seen: self.seen.saturating_sub(seen),
            first_seen: self.first_seen,
            last_seen: self.last_seen,
            approved: self.approved.saturating_sub(approved),
            rejected: self.rejected.saturating_sub(rejected),
            last_decision: self.last_decision.clone(),
            decision_ms_total: self.decision_ms_total.saturating_sub(ms),
        }
    }

    /// Fold a later change `d` (from [`Stats::since`]) into this one.
    pub fn add(&mut self, d: &Stats) {
        self.seen += d.seen;
        self.approved += d.approved;
        self.rejected += d.rejected;
        self.decision_ms_total += d.decision_ms_total;
        self.first_seen = match (self.first_seen, d.first_seen) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.last_seen = self.last_seen.max(d.last_seen);
        if d.last_decision.is_some() {
            self.last_decision.clone_from(&d.last_decision);
        }
    }

    /// Take in totals `other` read from a shared store: each counter the
    /// larger, the earliest first and latest last sighting.
    pub fn absorb(&mut self, other: &Stats) {
        self.seen = self.seen.max(other.seen);
        self.approved = self.approved.max(other.approved);
        self.rejected = self.rejected.max(other.rejected);
        self.decision_ms_total = self.decision_ms_total.max(other.decision_ms_total);
        self.first_seen = match (self.first_seen, other.first_seen) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if other.last_seen > self.last_seen {
            self.last_seen = other.last_seen;
            self.last_decision.clone_from(&other.last_decision);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_add_up_and_totals_only_grow() {
        let before = Stats {
            seen: 2,
            approved: 1,
            first_seen: Some(5),
            last_seen: Some(9),
            ..Stats::default()
        };
        let after = Stats {
            seen: 3,
            approved: 1,
            first_seen: Some(5),
            last_seen: Some(12),
            last_decision: Some("allow".into()),
            ..Stats::default()
        };
        let d = after.since(before.counts());
        assert_eq!((d.seen, d.approved, d.last_seen), (1, 0, Some(12)));
        let mut queued = d.clone();
        queued.add(&Stats {
            seen: 1,
            rejected: 1,
            last_seen: Some(15),
            ..Stats::default()
        });
        assert_eq!(
            (
                queued.seen,
                queued.rejected,
                queued.last_seen,
                queued.first_seen
            ),
            (2, 1, Some(15), Some(5))
        );
        assert_eq!(queued.last_decision.as_deref(), Some("allow"));
        let mut mine = after.clone();
        mine.absorb(&Stats {
            seen: 7,
            approved: 0,
            last_seen: Some(20),
            last_decision: Some("gate".into()),
            first_seen: Some(1),
            ..Stats::default()
        });
        assert_eq!(
            (
                mine.seen,
                mine.approved,
                mine.first_seen,
                mine.last_decision.as_deref()
            ),
            (7, 1, Some(1), Some("gate"))
        );
    }
}
