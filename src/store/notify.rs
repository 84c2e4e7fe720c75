//! What notifications need from storage: the outbox (audit records of
//! approval changes, written in the change's own transaction), deliveries
//! with their retries and dead letters, and where each Slack message is.

use serde::Serialize;

use crate::audit::chain::Record;

/// Audit events that go to the outbox: everything that changes what a
/// reviewer should see about an approval.
pub const OUTBOX_EVENTS: &[&str] = &[
    "gate",
    "approve",
    "reject",
    "modify",
    "override",
    "escalate",
    "veto_window_passed",
    "timeout_allow",
    "expire",
    "cancel",
    "execute",
    "execute_failed",
    "execute_refused",
    "execute_interrupted",
];

/// A message to deliver, as fanned out from one outbox event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NewDelivery {
    /// The approval it is about.
    pub approval: String,
    /// Channel name.
    pub channel: String,
    /// What kind of message (`requested`, `decided`, …).
    pub kind: String,
    /// What was known when the event happened (the webhook body).
    pub payload: serde_json::Value,
    /// Unix ms of the event.
    pub created_at: i64,
}

/// A stored delivery.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Delivery {
    /// Its id (also the order deliveries of one approval and channel go in).
    pub id: i64,
    /// The message.
    #[serde(flatten)]
    pub message: NewDelivery,
    /// Tries so far.
    pub attempts: u32,
    /// `pending`, or `dead` once given up on.
    pub state: String,
    /// Why the last try failed.
    pub last_error: Option<String>,
    /// Unix ms of the next try (pending).
    pub next_at: i64,
}

/// How one try ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finished {
    /// Delivered: the row goes.
    Sent,
    /// Try again at this Unix ms.
    Retry {
        /// When.
        at: i64,
        /// Why this try failed.
        error: String,
    },
    /// Given up: kept as a dead letter.
    Dead {
        /// Why.
        error: String,
    },
}

/// Notification storage.
pub trait NotifyStore {
    /// Outbox records not yet fanned out, oldest first, at most `limit`.
    fn outbox(&self, limit: usize) -> anyhow::Result<Vec<Record>>;
    /// Replace the outbox records `seqs` by `deliveries`, atomically.
    fn fan_out(&self, seqs: &[i64], deliveries: &[NewDelivery]) -> anyhow::Result<()>;
    /// Lease up to `limit` deliveries due at `now` until `lease_until`: per
    /// approval and channel only the oldest pending one (so a Slack update
    /// never overtakes its post, nor a PagerDuty resolve its trigger).
    fn claim_deliveries(
        &self,
        now: i64,
        lease_until: i64,
        limit: usize,
    ) -> anyhow::Result<Vec<Delivery>>;
    /// Record how a try of delivery `id` ended.
    fn finish_delivery(&self, id: i64, how: &Finished) -> anyhow::Result<()>;
    /// Dead letters, newest first.
    fn dead_letters(&self, limit: usize) -> anyhow::Result<Vec<Delivery>>;
    /// Queue dead letter `id` again from now; `Ok(false)`: no such dead letter.
    fn requeue_dead(&self, id: i64, now: i64) -> anyhow::Result<bool>;
    /// (outbox records + pending deliveries, dead letters).
    fn notify_backlog(&self) -> anyhow::Result<(u64, u64)>;
    /// The Slack message posted for `approval` on `channel`: (Slack channel id, ts).
    fn slack_message(
        &self,
        approval: &str,
        channel: &str,
    ) -> anyhow::Result<Option<(String, String)>>;
    /// Remember the Slack message posted for `approval` on `channel`.
    fn save_slack_message(
        &self,
        approval: &str,
        channel: &str,
        slack_channel: &str,
        ts: &str,
    ) -> anyhow::Result<()>;
    /// Forget the Slack message of a closed approval (nothing will edit it again).
    fn forget_slack_message(&self, approval: &str, channel: &str) -> anyhow::Result<()>;
}
