//! Prometheus metrics (one registry per Latch instance, no globals) and
//! tracing setup.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::config::{LogConfig, LogFormat};

/// Every metric Latch exports.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Requests by route and decision (`allow`, `deny`, `gate`, or an error code).
    pub requests: IntCounterVec,
    /// Policy evaluation time.
    pub policy_eval: Histogram,
    /// Upstream time to response head, by route.
    pub upstream: HistogramVec,
    /// Requests being handled now.
    pub in_flight: IntGauge,
    /// `latch_policy_info{hash, evaluator} 1` for the active policy set.
    pub policy_info: IntGaugeVec,
    /// Policy evaluations that failed (and so denied), by reason.
    pub policy_errors: IntCounterVec,
    /// Approvals waiting for humans, by risk.
    pub approvals_pending: IntGaugeVec,
    /// Time from a gated call to its verdict.
    pub time_to_decision: Histogram,
    /// Approval outcomes (gated, approved, rejected, modified, expired, escalated, overridden, cancelled).
    pub outcomes: IntCounterVec,
    /// Executions of approved calls by result (ok, error, interrupted).
    pub executions: IntCounterVec,
    /// Break-glass overrides.
    pub overrides: IntCounter,
    /// Time to write audit records (with the state they describe).
    pub audit_write: Histogram,
    /// Calls a shadow-mode route let through that the policy would have
    /// denied or held, by route and would-be action.
    pub shadow: IntCounterVec,
    /// Policy reloads by result (`ok`, `error`).
    pub reloads: IntCounterVec,
    /// Grants created, used (a call allowed by one) and revoked.
    pub grant_events: IntCounterVec,
    /// Grants that can still allow calls.
    pub grants_active: IntGauge,
    /// Time a reviewer took to decide, by reviewer and risk.
    pub reviewer_decision: HistogramVec,
    /// Break-glass overrides by principal (repeat use wants a review).
    pub break_glass_by: IntCounterVec,
    /// Age of the oldest pending approval, by risk (0 when none).
    pub oldest_pending: prometheus::GaugeVec,
    /// Notification delivery.
    pub notify: NotifyMetrics,
}

/// `latch_notify_*`.
#[derive(Clone)]
pub struct NotifyMetrics {
    /// Delivery tries by channel, message kind and outcome (`sent`, `retry`, `dead`).
    pub sent: IntCounterVec,
    /// Events and messages waiting to be delivered.
    pub queue_depth: IntGauge,
    /// Time from the event to its delivery, by channel.
    pub delivery_seconds: HistogramVec,
    /// Messages given up on (kept for the admin API and a retry).
    pub dead_letters: IntGauge,
}

impl NotifyMetrics {
    fn new(registry: &Registry) -> anyhow::Result<NotifyMetrics> {
        let sent = IntCounterVec::new(
            Opts::new(
                "latch_notify_sent_total",
                "Notification delivery tries by channel, message kind and outcome (sent, retry, dead)",
            ),
            &["channel", "kind", "outcome"],
        )?;
        let queue_depth = IntGauge::new(
            "latch_notify_queue_depth",
            "Approval events and notification messages not yet delivered",
        )?;
        let delivery_seconds = HistogramVec::new(
            HistogramOpts::new(
                "latch_notify_delivery_seconds",
                "Time from an approval event to its notification being delivered",
            )
            .buckets(vec![
                0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0,
            ]),
            &["channel"],
        )?;
        let dead_letters = IntGauge::new(
            "latch_notify_dead_letters",
            "Notifications given up on after their retries (see /api/v1/notify/dead-letters)",
        )?;
        registry.register(Box::new(sent.clone()))?;
        registry.register(Box::new(queue_depth.clone()))?;
        registry.register(Box::new(delivery_seconds.clone()))?;
        registry.register(Box::new(dead_letters.clone()))?;
        Ok(NotifyMetrics {
            sent,
            queue_depth,
            delivery_seconds,
            dead_letters,
        })
    }
}

impl Metrics {
    /// Create and register every metric.
    pub fn new() -> anyhow::Result<Metrics> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "latch_requests_total",
                "Proxied requests by route and decision",
            ),
            &["route", "decision"],
        )?;
        let policy_eval = Histogram::with_opts(
            HistogramOpts::new("latch_policy_eval_seconds", "Policy evaluation time").buckets(
                vec![
                    0.000_002, 0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25,
                    0.000_5, 0.001, 0.005, 0.025, 0.1,
                ],
            ),
        )?;
        let upstream = HistogramVec::new(
            HistogramOpts::new("latch_upstream_seconds", "Upstream time to response head").buckets(
                vec![
                    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                    5.0, 10.0, 30.0,
                ],
            ),
            &["route"],
        )?;
        let in_flight = IntGauge::new("latch_requests_in_flight", "Requests being handled")?;
        let policy_info = IntGaugeVec::new(
            Opts::new("latch_policy_info", "The active policy set"),
            &["hash", "evaluator"],
        )?;
        let policy_errors = IntCounterVec::new(
            Opts::new(
                "latch_policy_errors_total",
                "Policy evaluations that failed closed",
            ),
            &["reason"],
        )?;
        let approvals_pending = IntGaugeVec::new(
            Opts::new("latch_approvals_pending", "Approvals waiting for humans"),
            &["risk"],
        )?;
        let time_to_decision = Histogram::with_opts(
            HistogramOpts::new(
                "latch_approval_decision_seconds",
                "Time from gate to verdict",
            )
            .buckets(vec![
                0.1, 0.5, 1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 14400.0,
                86400.0,
            ]),
        )?;
        let outcomes = IntCounterVec::new(
            Opts::new("latch_approval_outcomes_total", "Approval outcomes"),
            &["outcome"],
        )?;
        let executions = IntCounterVec::new(
            Opts::new(
                "latch_approval_executions_total",
                "Executions of approved calls",
            ),
            &["result"],
        )?;
        let overrides = IntCounter::new("latch_break_glass_total", "Break-glass overrides")?;
        let audit_write = Histogram::with_opts(
            HistogramOpts::new("latch_audit_write_seconds", "Audit write time").buckets(vec![
                0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05,
                0.1, 0.5,
            ]),
        )?;
        let shadow = IntCounterVec::new(
            Opts::new(
                "latch_shadow_total",
                "Shadow mode: calls forwarded that the policy would have denied or held",
            ),
            &["route", "would"],
        )?;
        let reloads = IntCounterVec::new(
            Opts::new("latch_policy_reloads_total", "Policy reloads by result"),
            &["result"],
        )?;
        let grant_events = IntCounterVec::new(
            Opts::new(
                "latch_grant_events_total",
                "Grants created, used (calls allowed without a human) and revoked",
            ),
            &["event"],
        )?;
        let grants_active =
            IntGauge::new("latch_grants_active", "Grants that can still allow calls")?;
        let reviewer_decision = HistogramVec::new(
            HistogramOpts::new(
                "latch_reviewer_decision_seconds",
                "Time a reviewer took to decide, from the start of the approval level to the vote",
            )
            .buckets(vec![
                1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0,
            ]),
            &["principal", "risk"],
        )?;
        let break_glass_by = IntCounterVec::new(
            Opts::new(
                "latch_break_glass_uses_total",
                "Break-glass overrides by the principal who broke the glass",
            ),
            &["principal"],
        )?;
        let oldest_pending = prometheus::GaugeVec::new(
            Opts::new(
                "latch_approval_oldest_pending_seconds",
                "Age of the oldest approval still waiting for humans, by risk",
            ),
            &["risk"],
        )?;
        for risk in ["low", "medium", "high", "critical"] {
            oldest_pending.with_label_values(&[risk]).set(0.0);
        }
        registry.register(Box::new(break_glass_by.clone()))?;
        registry.register(Box::new(oldest_pending.clone()))?;
        registry.register(Box::new(grant_events.clone()))?;
        registry.register(Box::new(grants_active.clone()))?;
        registry.register(Box::new(reviewer_decision.clone()))?;
        registry.register(Box::new(shadow.clone()))?;
        registry.register(Box::new(reloads.clone()))?;
        registry.register(Box::new(approvals_pending.clone()))?;
        registry.register(Box::new(time_to_decision.clone()))?;
        registry.register(Box::new(outcomes.clone()))?;
        registry.register(Box::new(executions.clone()))?;
        registry.register(Box::new(overrides.clone()))?;
        registry.register(Box::new(audit_write.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(policy_eval.clone()))?;
        registry.register(Box::new(upstream.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(policy_info.clone()))?;
        registry.register(Box::new(policy_errors.clone()))?;
        let notify = NotifyMetrics::new(&registry)?;
        Ok(Metrics {
            registry,
            requests,
            policy_eval,
            upstream,
            in_flight,
            policy_info,
            policy_errors,
            approvals_pending,
            time_to_decision,
            outcomes,
            executions,
            overrides,
            audit_write,
            shadow,
            reloads,
            grant_events,
            grants_active,
            reviewer_decision,
            break_glass_by,
            oldest_pending,
            notify,
        })
    }

    /// Publish which policy set is active (replacing the previous one).
    pub fn set_policy(&self, hash: &str, evaluator: &str) {
        self.policy_info.reset();
        self.policy_info
            .with_label_values(&[hash, evaluator])
            .set(1);
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> anyhow::Result<Vec<u8>> {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf)?;
        Ok(buf)
    }
}

/// Install the global tracing subscriber (text or JSON lines on stderr).
/// `RUST_LOG` overrides the configured level. Safe to call more than once.
pub fn init_tracing(log: &LogConfig) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&log.level));
    use std::io::IsTerminal;
    // Colour codes only for a person at a terminal, never in log files.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match log.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
