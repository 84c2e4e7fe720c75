//! The TOML file as written: serde structs that reject unknown keys.
//!
//! Nothing here is trusted yet; [`super::Config::from_raw`] validates every
//! field and names the key and line of whatever is wrong.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

/// The whole `latch.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// The agents' listener.
    #[serde(default)]
    pub proxy: RawProxy,
    /// The humans' and SREs' listener.
    #[serde(default)]
    pub admin: RawAdmin,
    /// Where durable state lives.
    #[serde(default)]
    pub store: RawStore,
    /// Where the Rego policies are and how they are evaluated.
    #[serde(default)]
    pub policy: RawPolicy,
    /// Approval settings.
    #[serde(default)]
    pub gate: RawGate,
    /// Log output.
    #[serde(default)]
    pub log: RawLog,
    /// The audit trail.
    #[serde(default)]
    pub audit: RawAudit,
    /// The prompt registry.
    #[serde(default)]
    pub prompts: RawPrompts,
    /// OpenTelemetry traces.
    #[serde(default)]
    pub telemetry: RawTelemetry,
    /// Where reviewers hear about held calls (Slack, e-mail, webhooks, PagerDuty).
    pub notify: Option<RawNotify>,
    /// The built-in demo tool upstream (for the README demo and tests).
    pub demo: Option<RawDemo>,
    /// Agents and humans.
    #[serde(default)]
    pub principals: Vec<Spanned<RawPrincipal>>,
    /// Path prefix → upstream tool.
    #[serde(default)]
    pub routes: Vec<Spanned<RawRoute>>,
}

/// `[proxy]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProxy {
    /// Socket address of the agents' listener.
    pub listen: Option<Spanned<String>>,
    /// Seconds a gated call is held before answering 202.
    pub hold_s: Option<Spanned<u64>>,
    /// How often a held MCP call tells its client it is still waiting.
    pub progress_ms: Option<Spanned<u64>>,
    /// Largest request body accepted, unless a route says otherwise.
    pub max_body_bytes: Option<Spanned<u64>>,
    /// Time allowed for a client to send its request head.
    pub header_read_timeout_ms: Option<Spanned<u64>>,
    /// Time allowed for an upstream to answer, unless a route says otherwise.
    pub upstream_timeout_ms: Option<Spanned<u64>>,
    /// Time allowed for a client to send its request body.
    pub body_read_timeout_ms: Option<Spanned<u64>>,
    /// Most connections open at once (held calls included); more wait to be accepted.
    pub max_connections: Option<Spanned<u64>>,
    /// TLS for the agents' listener (and optional mTLS).
    pub tls: Option<Spanned<RawTls>>,
}

/// `[proxy.tls]` / `[admin.tls]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// PEM certificate chain.
    pub cert: Spanned<String>,
    /// PEM private key.
    pub key: Spanned<String>,
    /// PEM bundle of CAs that sign agent client certificates (enables mTLS).
    pub client_ca: Option<Spanned<String>>,
    /// `"optional"` (default when `client_ca` is set) or `"required"`.
    pub client_auth: Option<Spanned<String>>,
}

/// `[admin]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// Socket address of the admin listener.
    pub listen: Option<Spanned<String>>,
    /// Time allowed for a client to send its request head.
    pub header_read_timeout_ms: Option<Spanned<u64>>,
    /// Time allowed for a client to send its request body.
    pub body_read_timeout_ms: Option<Spanned<u64>>,
    /// Most connections open at once; more wait to be accepted.
    pub max_connections: Option<Spanned<u64>>,
    /// Environment variable holding a bearer token `/metrics` then requires
    /// (Prometheus `authorization.credentials`).
    pub metrics_token_env: Option<Spanned<String>>,
    /// TLS for the admin listener.
    pub tls: Option<Spanned<RawTls>>,
}

/// `[store]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    /// `sqlite://PATH` (relative to the config file), `sqlite::memory:`, or
    /// `postgres://USER:PASSWORD@HOST:PORT/DB` for several replicas.
    pub url: Option<Spanned<String>>,
    /// The environment variable holding the URL (keeps a password out of the file).
    pub url_env: Option<Spanned<String>>,
    /// Extra PEM CA bundle trusted for TLS to PostgreSQL.
    pub ca_file: Option<Spanned<String>>,
}

/// `[policy]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    /// Directory holding `*.rego` and `*.json` data files.
    pub dir: Option<Spanned<String>>,
    /// Rule whose value is the decision object.
    pub entrypoint: Option<Spanned<String>>,
    /// Evaluation time limit; past it the call is denied.
    pub timeout_ms: Option<Spanned<u64>>,
    /// Request headers (lower-case) copied into `input.request.headers`.
    pub input_headers: Option<Spanned<Vec<String>>>,
    /// `"enforce"` (default) or `"shadow"`: record what the policy would do, forward anyway.
    pub mode: Option<Spanned<String>>,
    /// Reload when files in `dir` change (default true).
    pub watch: Option<bool>,
}

/// `[gate]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGate {
    /// Roles that may override a gate with a reason.
    #[serde(default)]
    pub break_glass_roles: Vec<String>,
    /// Most approvals one agent may have pending at once (429 beyond).
    pub max_pending_per_agent: Option<Spanned<u64>>,
    /// Longest grant an approver may give, seconds (0 turns grants off).
    pub max_grant_s: Option<Spanned<u64>>,
}

/// `[prompts]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrompts {
    /// Roles that may push new versions (and move unprotected labels).
    pub editors: Option<Vec<String>>,
    /// Labels whose moves go through the policy and the gate.
    pub protected_labels: Option<Vec<String>>,
}

/// `[audit]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    /// Environment variable holding the HMAC key (at least 32 bytes) that
    /// makes the chain and its head unforgeable without it.
    pub key_env: Option<Spanned<String>>,
    /// Days to keep every record; older ones are dropped behind a checkpoint
    /// verification starts from (unset: keep everything).
    pub retain_days: Option<Spanned<u64>>,
    /// Days to keep the details of allow/deny decision records; older ones
    /// keep only their digest, so the chain still verifies (unset: keep).
    pub retain_decisions_days: Option<Spanned<u64>>,
}

/// `[log]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    /// `"text"` (default) or `"json"`.
    pub format: Option<Spanned<String>>,
    /// A tracing filter such as `"info"` or `"latch=debug"`; `RUST_LOG` wins.
    pub level: Option<String>,
    /// One info line per proxied request (the audit trail records every
    /// decision anyway; off by default, the lines are at debug level).
    pub access: Option<bool>,
}

/// `[demo]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDemo {
    /// Where `latch serve` starts the built-in demo tool upstream.
    pub upstream_listen: Spanned<String>,
}

/// `[[principals]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrincipal {
    /// Unique name used in policy input, logs and audit.
    pub id: String,
    /// Roles, e.g. `agent`, `lead`, `director`.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Humans who may never approve this principal's calls.
    #[serde(default)]
    pub owners: Vec<String>,
    /// Environment variable holding the bearer token.
    pub token_env: Option<String>,
    /// Hex SHA-256 of the bearer token.
    pub token_sha256: Option<String>,
    /// The bearer token in clear (demo and tests only).
    pub token: Option<String>,
    /// Client-certificate names (SAN DNS/URI or subject CN) that identify this
    /// principal on an mTLS proxy listener.
    #[serde(default)]
    pub cert_names: Vec<String>,
    /// Where e-mail notifications for this person go.
    pub email: Option<String>,
    /// The Slack user id that acts as this principal from Slack.
    pub slack_user: Option<String>,
}

/// `[telemetry]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTelemetry {
    /// OTLP/HTTP collector base URL, e.g. `http://127.0.0.1:4318` (spans go
    /// to `/v1/traces`); unset: no tracing at all.
    pub otlp_endpoint: Option<Spanned<String>>,
    /// `service.name` of the spans (default `latch`).
    pub service_name: Option<String>,
    /// Share of new traces recorded, 0.0 to 1.0 (default 1.0); an agent's
    /// sampled `traceparent` is followed either way.
    pub sample_ratio: Option<Spanned<f64>>,
    /// Time allowed for one export (default 10000).
    pub timeout_ms: Option<Spanned<u64>>,
}

/// `[notify]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNotify {
    /// Base URL of the dashboard, for links in every message.
    pub dashboard_url: Option<Spanned<String>>,
    /// Channels told about every gated call.
    pub default: Option<Spanned<Vec<String>>>,
    /// Tries per message before it is parked as a dead letter (default 8).
    pub max_attempts: Option<Spanned<u64>>,
    /// First retry delay; it doubles per try, with jitter (default 1000).
    pub retry_base_ms: Option<Spanned<u64>>,
    /// Time allowed for one delivery (default 10000).
    pub timeout_ms: Option<Spanned<u64>>,
    /// The channels.
    #[serde(default)]
    pub channels: Vec<Spanned<RawChannel>>,
}

/// `[[notify.channels]]`: one flat table; which keys apply depends on `kind`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawChannel {
    /// Unique name, used by `default`, `approval.notify` and `escalate[i].notify`.
    pub name: String,
    /// `slack`, `email`, `webhook` or `pagerduty`.
    pub kind: Spanned<String>,
    /// Slack: the channel to post in (`#approvals` or an id).
    pub channel: Option<Spanned<String>>,
    /// Slack: environment variable holding the bot token (`xoxb-…`).
    pub bot_token_env: Option<Spanned<String>>,
    /// Slack: environment variable holding the app's signing secret.
    pub signing_secret_env: Option<Spanned<String>>,
    /// Slack: Web API base URL (default `https://slack.com/api`).
    pub api_url: Option<Spanned<String>>,
    /// E-mail: `smtp://host:port` (`?tls=starttls` to require STARTTLS) or `smtps://host:port`.
    pub smtp_url: Option<Spanned<String>>,
    /// E-mail: SMTP user name.
    pub username: Option<Spanned<String>>,
    /// E-mail: environment variable holding the SMTP password.
    pub password_env: Option<Spanned<String>>,
    /// E-mail: sender address.
    pub from: Option<Spanned<String>>,
    /// E-mail: fixed recipients.
    pub to: Option<Spanned<Vec<String>>>,
    /// E-mail: principals holding these roles (their `email`).
    pub to_roles: Option<Spanned<Vec<String>>>,
    /// Webhook: where events are POSTed.
    pub url: Option<Spanned<String>>,
    /// Webhook: environment variable holding the `whsec_…` secret.
    pub secret_env: Option<Spanned<String>>,
    /// PagerDuty: environment variable holding the Events v2 routing key.
    pub routing_key_env: Option<Spanned<String>>,
    /// PagerDuty: Events v2 URL (default `https://events.pagerduty.com/v2/enqueue`).
    pub events_url: Option<Spanned<String>>,
    /// Extra PEM CA bundle trusted for this channel's https or TLS endpoint.
    pub ca_file: Option<Spanned<String>>,
}

/// `[[routes]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// Unique route name (metrics label, policy input).
    pub name: String,
    /// Path prefix on the proxy listener, matched at segment boundaries.
    pub prefix: Spanned<String>,
    /// Base URL of the tool (`http://` or `https://`); absent when
    /// `command` starts a stdio MCP server.
    pub upstream: Option<Spanned<String>>,
    /// `"http"` (default) or `"mcp"`: JSON-RPC tool calls judged one by one.
    pub protocol: Option<Spanned<String>>,
    /// An MCP server spoken to over stdio: the program and its arguments.
    pub command: Option<Spanned<Vec<String>>>,
    /// Tool name given to the policy.
    pub tool: Option<String>,
    /// Headers Latch adds upstream; `"env:NAME"` reads the environment.
    #[serde(default)]
    pub inject_headers: BTreeMap<String, Spanned<String>>,
    /// Upstream answer timeout for this route.
    pub timeout_ms: Option<u64>,
    /// Body limit for this route.
    pub max_body_bytes: Option<u64>,
    /// Stream the request body instead of buffering it for the policy
    /// (implies `body = "opaque"`).
    #[serde(default)]
    pub stream_body: bool,
    /// `"parsed"` (default: JSON and forms are judged, other media types
    /// refused) or `"opaque"` (forwarded unjudged; the policy is told).
    pub body: Option<Spanned<String>>,
    /// Extra PEM CA bundle trusted for this route's https upstream.
    pub ca_file: Option<Spanned<String>>,
    /// `"enforce"` or `"shadow"`; defaults to `[policy] mode`.
    pub mode: Option<Spanned<String>>,
    /// Arguments whose values are part of the action class (e.g. `["to"]`
    /// makes each new recipient a new class for novelty).
    #[serde(default)]
    pub class_args: Vec<String>,
}
