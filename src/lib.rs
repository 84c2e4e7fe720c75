//! # Latch — a policy-as-code approval gate for AI-agent tool calls
//!
//! Agents send their tool calls through Latch; Rego policy decides whether
//! each one is allowed, denied or gated for human approval, and only Latch
//! holds the upstream credentials.
//!
//! ## Layout
//!
//! A call flows one way through these modules:
//!
//! ```text
//! server (accept, TLS, HTTP/1.1)
//!   → proxy (path checks → identity → route → body → input → policy → record → forward)
//!       → identity  who is calling (bearer token, client certificate)
//!       → policy    Rego: load, compile (VM + interpreter), evaluate, parse the decision
//!       → history   action classes and their counts (novelty), persisted via store
//!       → proxy::upstream  pooled http/https client per route
//!   → telemetry (Prometheus metrics, one log line per request)
//! ```
//!
//! - [`config`]: `latch.toml` → validated [`config::Config`] (errors name key and line).
//! - [`app`]: the shared state handle ([`app::Latch`]) and start-up.
//! - [`admin`]: health, readiness and `/metrics` on the admin listener.
//! - [`store`]: the storage trait and its SQLite implementation.
//! - [`demo`]: a built-in tool upstream for the README demo.
//! - [`cli`]: the `latch` commands.

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
pub mod policy;
pub mod proxy;
pub mod server;
pub mod store;
pub mod telemetry;
#[cfg(feature = "test-util")]
pub mod testing;
pub mod throttle;
pub mod tls;
pub mod upstream;
