//! # Latch — a policy-as-code approval gate for AI-agent tool calls
//!
//! Agents send their tool calls through Latch; Rego policy decides whether
//! each one is allowed, denied or gated for human approval, and only Latch
//! holds the upstream credentials. Start reading at [`proxy`] (one call's
//! pipeline) and [`gate`] (what happens to a held call).
//!
//! ## A call, end to end
//!
//! ```text
//! server ─ accept, TLS, HTTP/1.1 ─▶ proxy::handle
//!   admit (method, path, identity) → route → read body → build the call
//!   → evaluate (policy::Engine) → record (audit) → forward | deny | hold
//!        forward: upstream::Route::send ──▶ tool
//!        hold:    gate::Gate::propose, then wait for a verdict
//! admin ─ dashboard / API / CLI ─▶ gate::Gate::decide ─ quorum met ─▶ Gate::execute
//!                                                           └▶ upstream::Route::send
//! ```
//!
//! ## Modules, and which way they depend
//!
//! Each layer uses only the layers below it (`tests/layering.rs` enforces
//! this; there are no import cycles):
//!
//! ```text
//! main → cli, testing
//!   → app                        start-up: builds the handles, binds listeners
//!     → proxy, admin, demo       the agents' data plane; the humans' API and dashboard
//!       → server                 accept loop, TLS, client-certificate identity
//!         → prompts              prompt registry: versions, labels, promotions through the gate
//!         → notify               Slack, e-mail, webhooks, PagerDuty: outbox worker, Slack clicks
//!         → gate                 approvals: Gate handle, pure state machine, execution, grants
//!           → insights               automation rate, rubber-stamp signals, learned classes
//!           → policy, upstream, history, audit, identity
//!             → audit::writer, trace     group commit of decision records; spans
//!               → store, telemetry, tls
//!                 → config
//!                   → gate::model, audit::chain,         record types
//!                     prompts::model
//!                     → digest, http_util, throttle,      leaves: import nothing of ours
//!                       ticker, policy::decision, history::stats
//! ```
//!
//! - [`config`]: `latch.toml` → validated [`config::Config`] (errors name key and line).
//! - [`app`]: [`app::build`] makes the handles; [`app::start`] runs them.
//! - [`proxy`]: the pipeline, one stage per file; [`proxy::error`] maps every refusal.
//! - [`gate`]: [`gate::Gate`] (propose, decide, cancel, expire, execute,
//!   recover); the rules in [`gate::machine`] are pure functions of an
//!   approval, an act and the time; [`gate::grants`]: time-boxed grants.
//! - [`prompts`]: versioned prompts; protected labels move through the
//!   policy and the gate (an [`gate::Executor`] moves them once approved).
//! - [`notify`]: approval events (from the store's outbox) to Slack, e-mail,
//!   webhooks and PagerDuty, with retries and dead letters; Slack clicks
//!   decide through [`gate::Gate::decide`].
//! - [`insights`]: from the audit trail, the automation rate, reviewers and
//!   classes that look rubber-stamped, and learned classes to propose.
//! - [`policy`]: Rego load, compile (VM + interpreter), evaluate on
//!   dedicated threads ([`policy::Engine`]), parse the decision; the input
//!   document ([`policy::input`]) and strict body judging ([`policy::body`]).
//! - [`upstream`]: routes and [`upstream::Route::send`], the one way a call leaves.
//! - [`admin`]: `/api/v1`, the dashboard, `/healthz`, `/readyz`, `/metrics`.
//! - [`audit`]: the hash chain ([`audit::chain`]) and the decision writer.
//! - [`history`]: action classes and their counts (novelty).
//! - [`store`]: the storage trait and its SQLite implementation.
//! - [`trace`]: OpenTelemetry spans per call, exported over OTLP/HTTP.
//! - [`identity`], [`throttle`], [`tls`], [`telemetry`], [`digest`], [`http_util`], [`ticker`].
//! - [`demo`]: a built-in tool upstream for the README demo.
//! - [`cli`] and [`client`]: the `latch` commands.
//! - `testing` (feature `test-util`): the harness tests and benches share.

pub mod admin;
pub mod app;
pub mod audit;
pub mod cli;
pub mod client;
pub mod config;
pub mod demo;
pub mod digest;
pub mod gate;
pub mod history;
pub mod http_util;
pub mod identity;
pub mod insights;
pub mod mcp;
pub mod notify;
pub mod policy;
pub mod prompts;
pub mod proxy;
pub mod server;
pub mod store;
pub mod telemetry;
#[cfg(feature = "test-util")]
pub mod testing;
pub mod threads;
pub mod throttle;
pub mod ticker;
pub mod tls;
pub mod trace;
pub mod upstream;
