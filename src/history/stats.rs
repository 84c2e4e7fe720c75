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
