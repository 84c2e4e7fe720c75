//! `latch.toml` → a validated [`Config`].
//!
//! Parsing happens in two steps: [`raw`] mirrors the file and rejects unknown
//! keys; [`Config::from_raw`] checks every value, resolves relative paths
//! against the config file, reads secrets from the environment, and reports
//! problems as `file:line: key: message`.

pub mod raw;
mod validate;
mod validate_notify;
mod validate_routes;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{HeaderName, HeaderValue, Uri};

use raw::RawConfig;
use validate::Validator;

/// A configuration problem, located in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The config file.
    pub file: PathBuf,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// The dotted key, e.g. `routes[1].upstream`.
    pub key: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: ", self.file.display(), line)?,
            None => write!(f, "{}: ", self.file.display())?,
        }
        if self.key.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.key, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this was read from (paths in it are relative to its folder).
    pub path: PathBuf,
    /// Agents' listener.
    pub proxy: ProxyConfig,
    /// Admin listener.
    pub admin: AdminConfig,
    /// Durable state.
    pub store: StoreConfig,
    /// Policy loading and evaluation.
    pub policy: PolicyConfig,
    /// Approval settings.
    pub gate: GateConfig,
    /// Log output.
    pub log: LogConfig,
    /// Audit trail settings.
    pub audit: AuditConfig,
    /// The prompt registry.
    pub prompts: PromptsConfig,
    /// Notification channels.
    pub notify: NotifyConfig,
    /// OpenTelemetry traces.
    pub telemetry: TelemetryConfig,
    /// Built-in demo upstream, if configured.
    pub demo: Option<SocketAddr>,
    /// Agents and humans.
    pub principals: Vec<PrincipalConfig>,
    /// Routes, in file order.
    pub routes: Vec<RouteConfig>,
}

/// `[prompts]`
#[derive(Debug, Clone)]
pub struct PromptsConfig {
    /// Roles that may push versions and move unprotected labels.
    pub editors: Vec<String>,
    /// Labels whose moves the policy decides and the gate may hold.
    pub protected_labels: Vec<String>,
}

impl Default for PromptsConfig {
    fn default() -> PromptsConfig {
        PromptsConfig {
            editors: vec!["engineer".into(), "pm".into()],
            protected_labels: vec!["production".into()],
        }
    }
}

/// `[audit]`
#[derive(Debug, Clone, Default)]
pub struct AuditConfig {
    /// The chain's HMAC key, read from `key_env` (never stored).
    pub key: Option<crate::audit::chain::AuditKey>,
    /// Days to keep every record (`None`: forever).
    pub retain_days: Option<u64>,
    /// Days to keep allow/deny decision details (`None`: forever).
    pub retain_decisions_days: Option<u64>,
}

/// `[proxy]`
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Listen address.
    pub listen: SocketAddr,
    /// How long a gated call is held.
    pub hold: Duration,
    /// Interval of progress notifications to a held MCP client.
    pub progress: Duration,
    /// Default body limit.
    pub max_body_bytes: u64,
    /// Time allowed to read a request head.
    pub header_read_timeout: Duration,
    /// Default upstream timeout.
    pub upstream_timeout: Duration,
    /// Time allowed to read a request body.
    pub body_read_timeout: Duration,
    /// Most connections open at once.
    pub max_connections: usize,
    /// TLS, if any.
    pub tls: Option<TlsConfig>,
}

/// Server TLS files.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// Certificate chain (PEM).
    pub cert: PathBuf,
    /// Private key (PEM).
    pub key: PathBuf,
    /// Client CA bundle; `Some` enables mTLS.
    pub client_ca: Option<PathBuf>,
    /// Whether a client certificate is mandatory.
    pub client_auth_required: bool,
}

/// `[admin]`
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// Listen address.
    pub listen: SocketAddr,
    /// Time allowed to read a request head.
    pub header_read_timeout: Duration,
    /// Time allowed to read a request body.
    pub body_read_timeout: Duration,
    /// Most connections open at once.
    pub max_connections: usize,
    /// SHA-256 of the bearer token `/metrics` requires, if any.
    pub metrics_token_sha256: Option<[u8; 32]>,
    /// TLS, if any.
    pub tls: Option<TlsConfig>,
}

/// `[store]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// SQLite file.
    Sqlite(PathBuf),
    /// SQLite in memory (tests; nothing survives a restart).
    SqliteMemory,
    /// PostgreSQL, shared by any number of replicas.
    Postgres {
        /// The URL (it may hold a password).
        url: Secret,
        /// Extra CA bundle trusted for TLS to the server.
        ca_file: Option<PathBuf>,
    },
}

/// `[policy]`
#[derive(Debug, Clone)]
pub struct PolicyConfig {
    /// Policy directory.
    pub dir: PathBuf,
    /// Decision rule.
    pub entrypoint: String,
    /// Evaluation time limit.
    pub timeout: Duration,
    /// Headers copied into the input.
    pub input_headers: Vec<HeaderName>,
    /// Global mode.
    pub mode: Mode,
    /// Reload on file changes.
    pub watch: bool,
}

/// Whether decisions are enforced or only recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Deny and gate take effect.
    Enforce,
    /// Everything is forwarded; what the policy would have done is recorded.
    Shadow,
}

/// `[gate]`
#[derive(Debug, Clone, Default)]
pub struct GateConfig {
    /// Roles allowed to break glass.
    pub break_glass_roles: Vec<String>,
    /// Most approvals one agent may have pending at once.
    pub max_pending_per_agent: u64,
    /// Longest grant, seconds (0: grants are off).
    pub max_grant_s: u64,
}

/// Log format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `[log]`
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// Output format.
    pub format: LogFormat,
    /// Default filter.
    pub level: String,
    /// One info line per proxied request.
    pub access: bool,
}

/// One principal.
#[derive(Debug, Clone)]
pub struct PrincipalConfig {
    /// Identifier.
    pub id: String,
    /// Roles.
    pub roles: Vec<String>,
    /// Owners (never approve this principal's calls).
    pub owners: Vec<String>,
    /// SHA-256 of the bearer token, if the principal has one.
    pub token_sha256: Option<[u8; 32]>,
    /// Names that identify it by client certificate.
    pub cert_names: Vec<String>,
    /// E-mail address for notifications.
    pub email: Option<String>,
    /// The Slack user id that acts as this principal.
    pub slack_user: Option<String>,
}

/// A secret read from the environment; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret<T = String>(pub T);

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// `[telemetry]`
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    /// OTLP/HTTP collector base URL; `None`: tracing is off.
    pub otlp_endpoint: Option<String>,
    /// `service.name`.
    pub service_name: String,
    /// Share of new traces recorded.
    pub sample_ratio: f64,
    /// Time allowed for one export.
    pub timeout: Duration,
}

impl Default for TelemetryConfig {
    fn default() -> TelemetryConfig {
        TelemetryConfig {
            otlp_endpoint: None,
            service_name: "latch".into(),
            sample_ratio: 1.0,
            timeout: Duration::from_secs(10),
        }
    }
}

/// `[notify]`
#[derive(Debug, Clone)]
pub struct NotifyConfig {
    /// Base URL of the dashboard (no trailing slash).
    pub dashboard_url: String,
    /// Channels told about every gated call.
    pub default: Vec<String>,
    /// Tries per message before it becomes a dead letter.
    pub max_attempts: u32,
    /// First retry delay (doubles per try, with jitter).
    pub retry_base: Duration,
    /// Time allowed for one delivery.
    pub timeout: Duration,
    /// The channels, by name.
    pub channels: Vec<ChannelConfig>,
}

impl Default for NotifyConfig {
    fn default() -> NotifyConfig {
        NotifyConfig {
            dashboard_url: "http://127.0.0.1:8081".into(),
            default: Vec::new(),
            max_attempts: 8,
            retry_base: Duration::from_secs(1),
            timeout: Duration::from_secs(10),
            channels: Vec::new(),
        }
    }
}

/// One notification channel.
#[derive(Debug, Clone)]
pub struct ChannelConfig {
    /// Unique name.
    pub name: String,
    /// Extra CA bundle for its TLS endpoint.
    pub ca_file: Option<PathBuf>,
    /// What it is and where it goes.
    pub kind: ChannelKind,
}

/// The four kinds of channel.
#[derive(Debug, Clone)]
pub enum ChannelKind {
    /// Slack Web API with a bot token; interactivity verified by the signing secret.
    Slack {
        /// Channel name or id.
        channel: String,
        /// Bot token.
        bot_token: Secret,
        /// Signing secret.
        signing_secret: Secret,
        /// Web API base URL, no trailing slash.
        api_url: Uri,
    },
    /// SMTP.
    Email {
        /// Server and how to reach it.
        smtp: SmtpConfig,
        /// Sender.
        from: String,
        /// Fixed recipients.
        to: Vec<String>,
        /// Principals holding these roles.
        to_roles: Vec<String>,
    },
    /// Standard Webhooks.
    Webhook {
        /// Target.
        url: Uri,
        /// The signing key (the `whsec_` secret, decoded).
        key: Secret<Vec<u8>>,
    },
    /// PagerDuty Events v2.
    PagerDuty {
        /// Routing (integration) key.
        routing_key: Secret,
        /// Events endpoint.
        events_url: Uri,
    },
}

impl ChannelKind {
    /// `slack`, `email`, `webhook` or `pagerduty`.
    pub fn as_str(&self) -> &'static str {
        match self {
            ChannelKind::Slack { .. } => "slack",
            ChannelKind::Email { .. } => "email",
            ChannelKind::Webhook { .. } => "webhook",
            ChannelKind::PagerDuty { .. } => "pagerduty",
        }
    }
}

/// How to reach an SMTP server.
#[derive(Debug, Clone)]
pub struct SmtpConfig {
    /// Host name (also the TLS server name).
    pub host: String,
    /// Port.
    pub port: u16,
    /// Transport security.
    pub tls: SmtpTls,
    /// User name and password, if the server wants them.
    pub credentials: Option<(String, Secret)>,
}

/// SMTP transport security.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    /// Plain text (`smtp://`; loopback relays).
    None,
    /// `smtp://…?tls=starttls`: STARTTLS is required.
    StartTls,
    /// `smtps://`: TLS from the first byte.
    Wrapper,
}

/// One route.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// Name.
    pub name: String,
    /// Decoded path prefix without a trailing slash (`""` for the root).
    pub prefix: String,
    /// Upstream base URL.
    pub upstream: Uri,
    /// Tool name.
    pub tool: String,
    /// Headers added upstream, values already resolved.
    pub inject_headers: Vec<(HeaderName, HeaderValue)>,
    /// Upstream timeout.
    pub timeout: Duration,
    /// Body limit.
    pub max_body_bytes: u64,
    /// Stream instead of buffering the request body.
    pub stream_body: bool,
    /// Bodies are forwarded unjudged (`body = "opaque"`, or streamed).
    pub opaque_body: bool,
    /// Extra CA bundle for an https upstream.
    pub ca_file: Option<PathBuf>,
    /// Enforce or shadow.
    pub mode: Mode,
    /// Arguments whose values are part of the action class.
    pub class_args: Vec<String>,
    /// Plain HTTP, or MCP (each JSON-RPC tool call judged).
    pub protocol: Protocol,
    /// A stdio MCP server Latch starts (`upstream` then points at Latch's
    /// bridge to it).
    pub command: Option<Vec<String>>,
}

/// What a route speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Any HTTP call; the route's `tool` is the tool.
    Http,
    /// MCP Streamable HTTP; each `tools/call` is judged by name and arguments.
    Mcp,
}

/// Headers the policy sees unless `[policy] input_headers` says otherwise.
/// Credentials (`authorization`, `cookie`) are deliberately absent.
pub const DEFAULT_INPUT_HEADERS: &[&str] = &[
    "accept",
    "content-type",
    "content-length",
    "user-agent",
    "latch-reason",
    "idempotency-key",
    "prefer",
];

/// Where secrets come from; the process environment in production, a map in tests.
pub trait Env {
    /// The value of `name`, if set.
    fn var(&self, name: &str) -> Option<String>;
}

/// The real process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Env for BTreeMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

impl Config {
    /// Read and validate the file at `path`, taking secrets from the process environment.
    pub fn load(path: &Path) -> Result<Config, Vec<ConfigError>> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            vec![ConfigError {
                file: path.to_path_buf(),
                line: None,
                key: String::new(),
                message: format!("cannot read config file: {e}"),
            }]
        })?;
        Self::parse(path, &text, &ProcessEnv)
    }

    /// Validate `text` as if read from `path`.
    pub fn parse(path: &Path, text: &str, env: &dyn Env) -> Result<Config, Vec<ConfigError>> {
        let mut v = Validator {
            file: path.to_path_buf(),
            text,
            errors: Vec::new(),
        };
        let raw: RawConfig = match toml::from_str(text) {
            Ok(raw) => raw,
            Err(e) => {
                let line = e.span().map(|s| v.line_of(s.start));
                return Err(vec![ConfigError {
                    file: path.to_path_buf(),
                    line,
                    key: String::new(),
                    message: e.message().trim().to_string(),
                }]);
            }
        };
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let config = v.config(raw, &base, env);
        if v.errors.is_empty() {
            Ok(config)
        } else {
            Err(v.errors)
        }
    }

    /// Folder against which relative paths resolve.
    pub fn base_dir(&self) -> PathBuf {
        self.path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."))
    }
}

pub(crate) fn resolve(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

fn decode_hex32(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
        let hi = (chunk[0] as char).to_digit(16)?;
        let lo = (chunk[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

#[cfg(test)]
mod tests;
