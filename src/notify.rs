//! Reviewers where they already are: Slack (signed buttons, messages
//! edited in place), e-mail, signed webhooks and PagerDuty.
//!
//! Nothing here decides anything. Approval changes put their audit records
//! in the store's outbox in the change's own transaction; a worker turns
//! each into messages for the channels it reaches ([`route`]), delivers
//! them with retries (exponential backoff with jitter, `Retry-After`), and
//! parks what cannot be delivered as dead letters. A click in Slack goes
//! through [`Gate::decide`] like any other verdict ([`interact`]). A
//! notification failure never touches the agent's call.

mod email;
pub mod interact;
pub mod route;
pub mod slack;
pub mod webhook;
pub mod wire;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;

use crate::config::{ChannelKind, NotifyConfig};
use crate::gate::model::{Approval, State};
use crate::gate::Gate;
use crate::identity::Directory;
use crate::store::notify::{Delivery, Finished};
use crate::store::{blocking, Store};
use crate::telemetry::NotifyMetrics;
use wire::{Client, Failure};

/// How often the worker looks for due work when nothing wakes it.
const POLL: Duration = Duration::from_millis(500);
/// How often the outbox is cleared when no channel is configured.
const IDLE_DRAIN: Duration = Duration::from_secs(5);
/// Messages delivered at once.
const BATCH: usize = 16;
/// The longest wait between two tries of a message.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// One configured channel, ready to send.
enum Channel {
    Slack(Arc<slack::Slack>),
    Email(email::Mailer),
    Webhook(webhook::Webhook),
    PagerDuty(webhook::PagerDuty),
}

/// What the notifier is built from.
pub struct Parts {
    /// `[notify]`.
    pub config: NotifyConfig,
    /// Durable state (outbox, deliveries).
    pub store: Arc<dyn Store>,
    /// The approval engine (Slack verdicts, the clock, wake-ups).
    pub gate: Gate,
    /// Principals (recipients, Slack users).
    pub directory: Arc<Directory>,
    /// `latch_notify_*`.
    pub metrics: NotifyMetrics,
}

struct Inner {
    parts: Parts,
    channels: HashMap<String, (&'static str, Channel)>,
}

/// Cheap-to-clone handle to the notification channels and their worker.
#[derive(Clone)]
pub struct Notifier(Arc<Inner>);

impl Notifier {
    /// Build every channel's client.
    pub fn new(parts: Parts) -> anyhow::Result<Notifier> {
        let c = &parts.config;
        let roots = if c.channels.is_empty() {
            rustls::RootCertStore::empty()
        } else {
            crate::tls::system_roots()
        };
        let mut channels = HashMap::new();
        for ch in &c.channels {
            let client = || Client::new(&roots, ch.ca_file.as_deref(), c.timeout);
            let built = match &ch.kind {
                ChannelKind::Slack {
                    channel,
                    bot_token,
                    signing_secret,
                    api_url,
                } => Channel::Slack(Arc::new(slack::Slack::new(
                    channel.clone(),
                    bot_token.clone(),
                    signing_secret.clone(),
                    api_url,
                    client()?,
                ))),
                ChannelKind::Email {
                    smtp,
                    from,
                    to,
                    to_roles,
                } => Channel::Email(email::Mailer::new(
                    smtp,
                    ch.ca_file.as_deref(),
                    from,
                    to,
                    to_roles,
                    c.timeout,
                )?),
                ChannelKind::Webhook { url, key } => {
                    Channel::Webhook(webhook::Webhook::new(url, key.0.clone(), client()?))
                }
                ChannelKind::PagerDuty {
                    routing_key,
                    events_url,
                } => Channel::PagerDuty(webhook::PagerDuty::new(
                    events_url,
                    routing_key.clone(),
                    client()?,
                )),
            };
            channels.insert(ch.name.clone(), (ch.kind.as_str(), built));
        }
        Ok(Notifier(Arc::new(Inner { parts, channels })))
    }

    fn parts(&self) -> &Parts {
        &self.0.parts
    }

    /// The Slack apps, by channel name (for interactivity).
    fn slack_apps(&self) -> impl Iterator<Item = &Arc<slack::Slack>> {
        self.0.channels.values().filter_map(|(_, c)| match c {
            Channel::Slack(s) => Some(s),
            _ => None,
        })
    }

    /// Deliver until `stop`: fan out new outbox records, send what is due,
    /// sleep until the gate reports a change or the poll interval passes.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut changes = self.parts().gate.subscribe();
        loop {
            let busy = match self.round().await {
                Ok(busy) => busy,
                Err(e) => {
                    tracing::warn!(error = %e, "notification round failed; retrying");
                    false
                }
            };
            if *stop.borrow() {
                return;
            }
            if busy {
                continue;
            }
            if self.0.channels.is_empty() {
                // No channel: only the outbox needs clearing, now and then.
                tokio::select! {
                    _ = tokio::time::sleep(IDLE_DRAIN) => {}
                    _ = stop.changed() => return,
                }
                continue;
            }
            tokio::select! {
                _ = changes.recv() => {
                    // A burst of changes needs one round, not one each.
                    while changes.try_recv().is_ok() {}
                }
                _ = tokio::time::sleep(POLL) => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// One pass; `Ok(true)` when there may be more to do right away.
    pub async fn round(&self) -> anyhow::Result<bool> {
        let fanned = self.fan_out().await?;
        let store = self.parts().store.clone();
        let now = wall_ms();
        let lease = now + (self.parts().config.timeout.as_millis() as i64) * 3;
        let due = blocking(move || store.claim_deliveries(now, lease, BATCH)).await?;
        let mut tasks = tokio::task::JoinSet::new();
        for d in due.iter().cloned() {
            let me = self.clone();
            tasks.spawn(async move { me.attempt(d).await });
        }
        while let Some(done) = tasks.join_next().await {
            if let Err(e) = done {
                tracing::error!(error = %e, "a notification task failed");
            }
        }
        self.measure().await;
        // After a delivery the next message of the same approval and
        // channel may be due at once (a Slack edit after its post).
        Ok(fanned > 0 || !due.is_empty())
    }

    /// Turn outbox records into deliveries; how many records were taken.
    async fn fan_out(&self) -> anyhow::Result<usize> {
        let store = self.parts().store.clone();
        let records = blocking(move || store.outbox(100)).await?;
        if records.is_empty() {
            return Ok(0);
        }
        let mut seqs = Vec::new();
        let mut deliveries = Vec::new();
        // A verdict and its execution usually arrive together: load each
        // approval once per batch.
        let mut approvals: HashMap<String, Option<Approval>> = HashMap::new();
        for r in &records {
            seqs.push(r.seq);
            if self.0.channels.is_empty() {
                continue; // nobody to tell: just clear the outbox
            }
            if !approvals.contains_key(&r.subject) {
                let a = self.load(&r.subject).await?;
                approvals.insert(r.subject.clone(), a);
            }
            let Some(Some(a)) = approvals.get(&r.subject) else {
                continue;
            };
            let kind_of = |name: &str| self.0.channels.get(name).map(|(k, _)| *k);
            let c = &self.parts().config;
            let (out, unknown) = route::fan_out(&c.default, &kind_of, &c.dashboard_url, r, a);
            for u in unknown {
                tracing::warn!(channel = %u, approval = %a.id, "the policy names a notification channel that is not configured");
            }
            deliveries.extend(out);
        }
        let n = records.len();
        let store = self.parts().store.clone();
        blocking(move || store.fan_out(&seqs, &deliveries)).await?;
        Ok(n)
    }

    async fn load(&self, id: &str) -> anyhow::Result<Option<Approval>> {
        let store = self.parts().store.clone();
        let id = id.to_string();
        blocking(move || store.approval(&id)).await
    }

    /// Try one delivery and record how it went.
    async fn attempt(&self, d: Delivery) {
        let p = self.parts();
        let m = &d.message;
        let result = match self.0.channels.get(&m.channel) {
            None => Err(Failure::permanent(format!(
                "channel {} is no longer configured",
                m.channel
            ))),
            Some((_, channel)) => self.deliver(channel, &d).await,
        };
        let how = match result {
            Ok(()) => {
                let waited = (wall_ms() - m.created_at).max(0) as f64 / 1000.0;
                p.metrics
                    .delivery_seconds
                    .with_label_values(&[m.channel.as_str()])
                    .observe(waited);
                Finished::Sent
            }
            Err(f) if f.permanent || d.attempts + 1 >= p.config.max_attempts => {
                tracing::warn!(channel = %m.channel, approval = %m.approval, kind = %m.kind,
                               attempts = d.attempts + 1, error = %f.error, "notification given up: dead letter");
                Finished::Dead { error: f.error }
            }
            Err(f) => {
                let wait = f
                    .retry_after
                    .unwrap_or_else(|| backoff(p.config.retry_base, d.attempts));
                tracing::info!(channel = %m.channel, approval = %m.approval, error = %f.error,
                               retry_in_ms = wait.as_millis() as u64, "notification failed; will retry");
                Finished::Retry {
                    at: wall_ms() + wait.as_millis() as i64,
                    error: f.error,
                }
            }
        };
        let outcome = match how {
            Finished::Sent => "sent",
            Finished::Retry { .. } => "retry",
            Finished::Dead { .. } => "dead",
        };
        p.metrics
            .sent
            .with_label_values(&[m.channel.as_str(), m.kind.as_str(), outcome])
            .inc();
        let store = p.store.clone();
        let id = d.id;
        if let Err(e) = blocking(move || store.finish_delivery(id, &how)).await {
            tracing::error!(error = %e, delivery = id, "recording a notification outcome failed; it will be tried again");
        }
    }

    /// Send message `d` on `channel`.
    async fn deliver(&self, channel: &Channel, d: &Delivery) -> Result<(), Failure> {
        let p = self.parts();
        let m = &d.message;
        let a = self
            .load(&m.approval)
            .await
            .map_err(|e| Failure::transient(format!("store: {e}")))?
            .ok_or_else(|| Failure::permanent(format!("approval {} is gone", m.approval)))?;
        let url = &p.config.dashboard_url;
        let data = &m.payload["data"];
        let text = |k: &str| {
            data.get(k)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        match channel {
            Channel::Webhook(w) => {
                let ts = wall_ms() / 1000;
                w.send(&format!("msg_{}", d.id), ts, &m.payload).await
            }
            Channel::PagerDuty(pd) if m.kind == route::DECIDED => pd.resolve(&a.id).await,
            Channel::PagerDuty(pd) => {
                let link = format!("{url}/#approval={}", a.id);
                pd.trigger(&a, &link, data.get("level")).await
            }
            Channel::Email(mail) => {
                let by = text("actor");
                let reason = text("reason");
                let bg = (m.kind == route::BREAK_GLASS).then_some((by.as_str(), reason.as_str()));
                let (subject, body, html) = email::compose(&a, url, bg);
                mail.send(&p.directory, &subject, body, html).await
            }
            Channel::Slack(s) if m.kind == route::BREAK_GLASS => {
                let (t, blocks) =
                    slack::render_break_glass(&a, &text("actor"), &text("reason"), url);
                s.post(&t, &blocks).await.map(|_| ())
            }
            Channel::Slack(s) => self.slack_message(s, &m.channel, &a, &m.kind).await,
        }
    }

    /// Post the approval's message, or edit the one posted before.
    async fn slack_message(
        &self,
        s: &slack::Slack,
        channel: &str,
        a: &Approval,
        kind: &str,
    ) -> Result<(), Failure> {
        let p = self.parts();
        let store = p.store.clone();
        let (id, name) = (a.id.clone(), channel.to_string());
        let posted = blocking(move || store.slack_message(&id, &name))
            .await
            .map_err(|e| Failure::transient(format!("store: {e}")))?;
        let (text, blocks) = slack::render(a, &p.directory, &p.config.dashboard_url);
        match posted {
            Some((slack_channel, ts)) => {
                s.update(&slack_channel, &ts, &text, &blocks).await?;
                // Nothing changes a finished approval again: forget its message.
                if matches!(
                    a.state,
                    State::Executed
                        | State::Failed
                        | State::Rejected
                        | State::Expired
                        | State::Cancelled
                ) {
                    let store = p.store.clone();
                    let (id, name) = (a.id.clone(), channel.to_string());
                    if let Err(e) = blocking(move || store.forget_slack_message(&id, &name)).await {
                        tracing::warn!(error = %e, "forgetting a finished Slack message failed");
                    }
                }
                Ok(())
            }
            // Never posted (the post was given up on): nothing to edit.
            None if kind != route::REQUESTED => Ok(()),
            None => {
                let (slack_channel, ts) = s.post(&text, &blocks).await?;
                let store = p.store.clone();
                let (id, name) = (a.id.clone(), channel.to_string());
                blocking(move || store.save_slack_message(&id, &name, &slack_channel, &ts))
                    .await
                    .map_err(|e| {
                        // Posted but not remembered: later edits would post anew.
                        tracing::error!(error = %e, "remembering a Slack message failed");
                        Failure::permanent(format!("store: {e}"))
                    })
            }
        }
    }

    /// Refresh the queue gauges.
    async fn measure(&self) {
        let store = self.parts().store.clone();
        if let Ok((queued, dead)) = blocking(move || store.notify_backlog()).await {
            self.parts().metrics.queue_depth.set(queued as i64);
            self.parts().metrics.dead_letters.set(dead as i64);
        }
    }

    /// Dead letters, newest first.
    pub async fn dead_letters(&self, limit: usize) -> anyhow::Result<Vec<Delivery>> {
        let store = self.parts().store.clone();
        blocking(move || store.dead_letters(limit)).await
    }

    /// Queue dead letter `id` again; `Ok(false)`: there is no such dead letter.
    pub async fn retry_dead(&self, id: i64) -> anyhow::Result<bool> {
        let store = self.parts().store.clone();
        let now = wall_ms();
        let requeued = blocking(move || store.requeue_dead(id, now)).await?;
        self.measure().await;
        Ok(requeued)
    }
}

/// Now, Unix ms, from the wall clock: deliveries, retries and Slack's
/// signatures live in real time, whatever clock the gate's deadlines use.
fn wall_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// `base × 2^attempts`, capped, times a random factor in [0.5, 1.5) so
/// retries from many messages spread out.
fn backoff(base: Duration, attempts: u32) -> Duration {
    let exp = base
        .saturating_mul(1u32 << attempts.min(20))
        .min(MAX_BACKOFF);
    let jitter = (uuid::Uuid::new_v4().as_u128() % 1000) as f64 / 1000.0 + 0.5;
    exp.mul_f64(jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let base = Duration::from_millis(1000);
        for attempts in 0..4u32 {
            let d = backoff(base, attempts).as_millis();
            let exp = 1000u128 << attempts;
            assert!(d >= exp / 2 && d < exp * 3 / 2, "{attempts}: {d}");
        }
        assert!(backoff(base, 40) < MAX_BACKOFF.mul_f64(1.5));
    }
}
