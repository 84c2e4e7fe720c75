//! Checks every value of the raw file and builds the validated [`Config`],
//! collecting every problem with its key and line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::HeaderName;
use toml::Spanned;

use super::raw::{self, RawConfig};
use super::*;
use crate::digest::sha256;

/// `[gate] max_grant_s` when unset: one working day.
const DEFAULT_MAX_GRANT_S: u64 = 8 * 3600;

pub(super) struct Validator<'a> {
    pub(super) file: PathBuf,
    pub(super) text: &'a str,
    pub(super) errors: Vec<ConfigError>,
}

impl Validator<'_> {
    pub(super) fn line_of(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1
    }

    pub(super) fn error(
        &mut self,
        span: Option<std::ops::Range<usize>>,
        key: &str,
        message: String,
    ) {
        let line = span.map(|s| self.line_of(s.start));
        self.errors.push(ConfigError {
            file: self.file.clone(),
            line,
            key: key.to_string(),
            message,
        });
    }

    pub(super) fn addr(
        &mut self,
        value: Option<Spanned<String>>,
        key: &str,
        default: &str,
    ) -> SocketAddr {
        let fallback = SocketAddr::from(([127, 0, 0, 1], 0));
        match value {
            None => default.parse().unwrap_or(fallback),
            Some(s) => match s.get_ref().parse() {
                Ok(a) => a,
                Err(_) => {
                    self.error(
                        Some(s.span()),
                        key,
                        format!(
                            "`{}` is not a socket address like 127.0.0.1:8080",
                            s.get_ref()
                        ),
                    );
                    fallback
                }
            },
        }
    }

    pub(super) fn positive(&mut self, value: Option<Spanned<u64>>, key: &str, default: u64) -> u64 {
        match value {
            None => default,
            Some(s) if *s.get_ref() == 0 => {
                self.error(Some(s.span()), key, "must be greater than 0".into());
                default
            }
            Some(s) => *s.get_ref(),
        }
    }

    /// A retention period in days: at least `min`.
    fn retention(&mut self, value: Option<&Spanned<u64>>, key: &str, min: u64) -> Option<u64> {
        let v = value?;
        if *v.get_ref() < min {
            let msg = format!("must be at least {min} (days)");
            self.error(Some(v.span()), key, msg);
            return None;
        }
        Some(*v.get_ref())
    }

    /// `[gate] max_grant_s`: 0 turns grants off; at most 30 days.
    fn grant_cap(&mut self, value: Option<Spanned<u64>>) -> u64 {
        const MAX: u64 = 30 * 86_400;
        match value {
            None => DEFAULT_MAX_GRANT_S,
            Some(s) if *s.get_ref() > MAX => {
                let msg = format!("must be at most {MAX} (30 days); 0 turns grants off");
                self.error(Some(s.span()), "gate.max_grant_s", msg);
                DEFAULT_MAX_GRANT_S
            }
            Some(s) => *s.get_ref(),
        }
    }

    pub(super) fn millis(
        &mut self,
        value: Option<Spanned<u64>>,
        key: &str,
        default: u64,
    ) -> Duration {
        Duration::from_millis(self.positive(value, key, default))
    }

    pub(super) fn path(
        &mut self,
        base: &Path,
        value: &Spanned<String>,
        key: &str,
        must_exist: bool,
    ) -> PathBuf {
        let p = resolve(base, value.get_ref());
        if must_exist && !p.exists() {
            self.error(
                Some(value.span()),
                key,
                format!("{} does not exist", p.display()),
            );
        }
        p
    }

    pub(super) fn tls(
        &mut self,
        base: &Path,
        raw: Option<Spanned<raw::RawTls>>,
        key: &str,
        mtls: bool,
    ) -> Option<TlsConfig> {
        let raw = raw?;
        let span = raw.span();
        let raw = raw.into_inner();
        let cert = self.path(base, &raw.cert, &format!("{key}.cert"), true);
        let tls_key = self.path(base, &raw.key, &format!("{key}.key"), true);
        let client_ca = match &raw.client_ca {
            Some(ca) if !mtls => {
                self.error(
                    Some(ca.span()),
                    &format!("{key}.client_ca"),
                    "client certificates are only supported on the proxy listener".into(),
                );
                None
            }
            Some(ca) => Some(self.path(base, ca, &format!("{key}.client_ca"), true)),
            None => None,
        };
        let client_auth_required = match raw
            .client_auth
            .as_ref()
            .map(|s| (s.get_ref().as_str(), s.span()))
        {
            None | Some(("optional", _)) => false,
            Some(("required", _)) => true,
            Some((other, span)) => {
                self.error(
                    Some(span),
                    &format!("{key}.client_auth"),
                    format!("`{other}` must be \"optional\" or \"required\""),
                );
                false
            }
        };
        if client_auth_required && client_ca.is_none() {
            self.error(
                Some(span),
                &format!("{key}.client_auth"),
                "\"required\" needs client_ca".into(),
            );
        }
        Some(TlsConfig {
            cert,
            key: tls_key,
            client_ca,
            client_auth_required,
        })
    }

    pub(super) fn config(&mut self, raw: RawConfig, base: &Path, env: &dyn Env) -> Config {
        let p = raw.proxy;
        let proxy = ProxyConfig {
            listen: self.addr(p.listen, "proxy.listen", "127.0.0.1:8080"),
            hold: Duration::from_secs(self.positive(p.hold_s, "proxy.hold_s", 50)),
            progress: self.millis(p.progress_ms, "proxy.progress_ms", 5_000),
            max_body_bytes: self.positive(p.max_body_bytes, "proxy.max_body_bytes", 1 << 20),
            header_read_timeout: self.millis(
                p.header_read_timeout_ms,
                "proxy.header_read_timeout_ms",
                10_000,
            ),
            upstream_timeout: self.millis(
                p.upstream_timeout_ms,
                "proxy.upstream_timeout_ms",
                30_000,
            ),
            body_read_timeout: self.millis(
                p.body_read_timeout_ms,
                "proxy.body_read_timeout_ms",
                30_000,
            ),
            max_connections: self.positive(p.max_connections, "proxy.max_connections", 4096)
                as usize,
            tls: self.tls(base, p.tls, "proxy.tls", true),
        };
        let a = raw.admin;
        let admin = AdminConfig {
            header_read_timeout: self.millis(
                a.header_read_timeout_ms,
                "admin.header_read_timeout_ms",
                10_000,
            ),
            body_read_timeout: self.millis(
                a.body_read_timeout_ms,
                "admin.body_read_timeout_ms",
                10_000,
            ),
            max_connections: self.positive(a.max_connections, "admin.max_connections", 256)
                as usize,
            metrics_token_sha256: a.metrics_token_env.and_then(|var| {
                match env.var(var.get_ref()) {
                    Some(t) if !t.trim().is_empty() => Some(sha256(t.trim().as_bytes())),
                    _ => {
                        self.error(
                            Some(var.span()),
                            "admin.metrics_token_env",
                            format!("environment variable {} is not set", var.get_ref()),
                        );
                        None
                    }
                }
            }),
            listen: self.addr(a.listen, "admin.listen", "127.0.0.1:8081"),
            tls: self.tls(base, a.tls, "admin.tls", false),
        };
        if proxy.listen == admin.listen && proxy.listen.port() != 0 {
            self.error(None, "admin.listen", "must differ from proxy.listen".into());
        }
        let store = self.store(raw.store, base, env);
        let policy = self.policy(raw.policy, base);
        let log = LogConfig {
            format: match raw
                .log
                .format
                .as_ref()
                .map(|s| (s.get_ref().as_str(), s.span()))
            {
                None | Some(("text", _)) => LogFormat::Text,
                Some(("json", _)) => LogFormat::Json,
                Some((other, span)) => {
                    self.error(
                        Some(span),
                        "log.format",
                        format!("`{other}` must be \"text\" or \"json\""),
                    );
                    LogFormat::Text
                }
            },
            level: raw.log.level.unwrap_or_else(|| "info".to_string()),
            access: raw.log.access.unwrap_or(false),
        };
        let demo = raw
            .demo
            .map(|d| self.addr(Some(d.upstream_listen), "demo.upstream_listen", ""));
        let raw_audit = raw.audit;
        let audit = AuditConfig {
            retain_days: self.retention(raw_audit.retain_days.as_ref(), "audit.retain_days", 30),
            retain_decisions_days: self.retention(
                raw_audit.retain_decisions_days.as_ref(),
                "audit.retain_decisions_days",
                1,
            ),
            key: raw_audit
                .key_env
                .and_then(|var| match env.var(var.get_ref()) {
                    Some(k) if k.len() >= crate::audit::chain::AuditKey::MIN_LEN => {
                        Some(crate::audit::chain::AuditKey::new(k.as_bytes()))
                    }
                    Some(_) => {
                        self.error(
                            Some(var.span()),
                            "audit.key_env",
                            format!(
                                "the key in {} must be at least {} bytes",
                                var.get_ref(),
                                crate::audit::chain::AuditKey::MIN_LEN
                            ),
                        );
                        None
                    }
                    None => {
                        self.error(
                            Some(var.span()),
                            "audit.key_env",
                            format!("environment variable {} is not set", var.get_ref()),
                        );
                        None
                    }
                }),
        };
        if let (Some(all), Some(d)) = (audit.retain_days, audit.retain_decisions_days) {
            if d > all {
                let msg = format!("{d} days is longer than audit.retain_days ({all}): every record goes after {all} days");
                self.error(None, "audit.retain_decisions_days", msg);
            }
        }
        let principals = self.principals(raw.principals, env);
        let routes = self.routes(raw.routes, base, env, &proxy, policy.mode);
        let notify = self.notify(raw.notify, base, env, &principals);
        let telemetry = self.telemetry(raw.telemetry);
        Config {
            path: self.file.clone(),
            proxy,
            admin,
            store,
            policy,
            gate: GateConfig {
                max_pending_per_agent: self.positive(
                    raw.gate.max_pending_per_agent,
                    "gate.max_pending_per_agent",
                    100,
                ),
                max_grant_s: self.grant_cap(raw.gate.max_grant_s),
                break_glass_roles: raw.gate.break_glass_roles,
            },
            log,
            audit,
            prompts: {
                let d = PromptsConfig::default();
                PromptsConfig {
                    editors: raw.prompts.editors.unwrap_or(d.editors),
                    protected_labels: raw.prompts.protected_labels.unwrap_or(d.protected_labels),
                }
            },
            notify,
            telemetry,
            demo,
            principals,
            routes,
        }
    }

    fn policy(&mut self, raw: raw::RawPolicy, base: &Path) -> PolicyConfig {
        let dir = match &raw.dir {
            Some(d) => {
                let p = self.path(base, d, "policy.dir", true);
                if p.exists() && !p.is_dir() {
                    self.error(
                        Some(d.span()),
                        "policy.dir",
                        format!("{} is not a directory", p.display()),
                    );
                }
                p
            }
            None => base.join("policies"),
        };
        let entrypoint = match raw.entrypoint {
            None => "data.latch.decision".to_string(),
            Some(e) => {
                let ok = e.get_ref().starts_with("data.")
                    && e.get_ref()[5..].split('.').all(|seg| {
                        !seg.is_empty()
                            && seg.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    });
                if !ok {
                    self.error(
                        Some(e.span()),
                        "policy.entrypoint",
                        format!(
                            "`{}` must be a rule path like data.latch.decision",
                            e.get_ref()
                        ),
                    );
                }
                e.into_inner()
            }
        };
        let timeout = Duration::from_millis(self.positive(raw.timeout_ms, "policy.timeout_ms", 50));
        let input_headers = match raw.input_headers {
            None => DEFAULT_INPUT_HEADERS
                .iter()
                .map(|h| HeaderName::from_static(h))
                .collect(),
            Some(list) => {
                let span = list.span();
                let mut out = Vec::new();
                for h in list.into_inner() {
                    let lower = h.to_ascii_lowercase();
                    if lower == "authorization"
                        || lower == "cookie"
                        || lower == "proxy-authorization"
                    {
                        self.error(
                            Some(span.clone()),
                            "policy.input_headers",
                            format!("`{h}` carries credentials and is never given to the policy"),
                        );
                        continue;
                    }
                    match HeaderName::from_bytes(lower.as_bytes()) {
                        Ok(name) => out.push(name),
                        Err(_) => self.error(
                            Some(span.clone()),
                            "policy.input_headers",
                            format!("`{h}` is not a header name"),
                        ),
                    }
                }
                out
            }
        };
        let mode = self.mode(raw.mode.as_ref(), "policy.mode", Mode::Enforce);
        PolicyConfig {
            dir,
            entrypoint,
            timeout,
            input_headers,
            mode,
            watch: raw.watch.unwrap_or(true),
        }
    }

    pub(super) fn mode(&mut self, raw: Option<&Spanned<String>>, key: &str, default: Mode) -> Mode {
        match raw.map(|s| (s.get_ref().as_str(), s.span())) {
            None => default,
            Some(("enforce", _)) => Mode::Enforce,
            Some(("shadow", _)) => Mode::Shadow,
            Some((other, span)) => {
                self.error(
                    Some(span),
                    key,
                    format!("`{other}` must be \"enforce\" or \"shadow\""),
                );
                default
            }
        }
    }

    /// `[store]`: `url` (SQLite file, SQLite in memory, or PostgreSQL) or
    /// `url_env` naming the variable that holds it.
    fn store(&mut self, raw: raw::RawStore, base: &Path, env: &dyn Env) -> StoreConfig {
        let ca_file = raw
            .ca_file
            .as_ref()
            .map(|c| self.path(base, c, "store.ca_file", true));
        let (url, span, key) = match (raw.url, raw.url_env) {
            (Some(_), Some(var)) => {
                self.error(
                    Some(var.span()),
                    "store.url_env",
                    "give `url` or `url_env`, not both".into(),
                );
                return StoreConfig::SqliteMemory;
            }
            (None, None) => return StoreConfig::Sqlite(base.join("latch.db")),
            (Some(url), None) => (url.get_ref().clone(), url.span(), "store.url"),
            (None, Some(var)) => match env.var(var.get_ref()) {
                Some(url) => (url, var.span(), "store.url_env"),
                None => {
                    self.error(
                        Some(var.span()),
                        "store.url_env",
                        format!("environment variable {} is not set", var.get_ref()),
                    );
                    return StoreConfig::SqliteMemory;
                }
            },
        };
        if url == "sqlite::memory:" {
            StoreConfig::SqliteMemory
        } else if let Some(file) = url.strip_prefix("sqlite://") {
            StoreConfig::Sqlite(resolve(base, file))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            if let Err(e) = url.parse::<postgres::Config>() {
                self.error(
                    Some(span),
                    key,
                    format!("the PostgreSQL URL does not parse: {e}"),
                );
            }
            StoreConfig::Postgres {
                url: Secret(url),
                ca_file,
            }
        } else {
            // Never echo the value: it may hold a password.
            self.error(
                Some(span),
                key,
                "unsupported store; use sqlite://PATH, sqlite::memory: or postgres://USER@HOST:PORT/DB"
                    .into(),
            );
            StoreConfig::SqliteMemory
        }
    }
}
