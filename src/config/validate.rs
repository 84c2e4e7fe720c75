//! Checks every value of the raw file and builds the validated [`Config`],
//! collecting every problem with its key and line.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{HeaderName, HeaderValue, Uri};
use toml::Spanned;

use super::raw::{self, RawConfig};
use super::*;
use crate::digest::sha256;

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

    fn error(&mut self, span: Option<std::ops::Range<usize>>, key: &str, message: String) {
        let line = span.map(|s| self.line_of(s.start));
        self.errors.push(ConfigError {
            file: self.file.clone(),
            line,
            key: key.to_string(),
            message,
        });
    }

    fn addr(&mut self, value: Option<Spanned<String>>, key: &str, default: &str) -> SocketAddr {
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

    fn positive(&mut self, value: Option<Spanned<u64>>, key: &str, default: u64) -> u64 {
        match value {
            None => default,
            Some(s) if *s.get_ref() == 0 => {
                self.error(Some(s.span()), key, "must be greater than 0".into());
                default
            }
            Some(s) => *s.get_ref(),
        }
    }

    fn millis(&mut self, value: Option<Spanned<u64>>, key: &str, default: u64) -> Duration {
        Duration::from_millis(self.positive(value, key, default))
    }

    fn path(
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

    fn tls(
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
        let store = match raw.store.url {
            None => StoreConfig::Sqlite(base.join("latch.db")),
            Some(url) => {
                let u = url.get_ref();
                if u == "sqlite::memory:" {
                    StoreConfig::SqliteMemory
                } else if let Some(file) = u.strip_prefix("sqlite://") {
                    StoreConfig::Sqlite(resolve(base, file))
                } else {
                    self.error(
                        Some(url.span()),
                        "store.url",
                        format!("`{u}` is not supported; use sqlite://PATH or sqlite::memory:"),
                    );
                    StoreConfig::SqliteMemory
                }
            }
        };
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
        };
        let demo = raw
            .demo
            .map(|d| self.addr(Some(d.upstream_listen), "demo.upstream_listen", ""));
        let audit = AuditConfig {
            key: raw
                .audit
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
        let principals = self.principals(raw.principals, env);
        let routes = self.routes(raw.routes, base, env, &proxy, policy.mode);
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
                break_glass_roles: raw.gate.break_glass_roles,
            },
            log,
            audit,
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

    fn mode(&mut self, raw: Option<&Spanned<String>>, key: &str, default: Mode) -> Mode {
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

    fn principals(
        &mut self,
        raw: Vec<Spanned<raw::RawPrincipal>>,
        env: &dyn Env,
    ) -> Vec<PrincipalConfig> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for (i, sp) in raw.into_iter().enumerate() {
            let span = sp.span();
            let p = sp.into_inner();
            let key = format!("principals[{i}]");
            if p.id.is_empty() {
                self.error(
                    Some(span.clone()),
                    &format!("{key}.id"),
                    "must not be empty".into(),
                );
            }
            if !seen.insert(p.id.clone()) {
                self.error(
                    Some(span.clone()),
                    &format!("{key}.id"),
                    format!("`{}` is defined twice", p.id),
                );
            }
            let sources = [
                p.token.is_some(),
                p.token_env.is_some(),
                p.token_sha256.is_some(),
            ]
            .iter()
            .filter(|b| **b)
            .count();
            if sources > 1 {
                self.error(
                    Some(span.clone()),
                    &key,
                    "set only one of token, token_env, token_sha256".into(),
                );
            }
            let token_sha256 = if let Some(t) = &p.token {
                Some(sha256(t.as_bytes()))
            } else if let Some(var) = &p.token_env {
                match env.var(var) {
                    Some(t) if !t.is_empty() => Some(sha256(t.as_bytes())),
                    _ => {
                        self.error(
                            Some(span.clone()),
                            &format!("{key}.token_env"),
                            format!("environment variable {var} is not set"),
                        );
                        None
                    }
                }
            } else if let Some(hex) = &p.token_sha256 {
                match decode_hex32(hex) {
                    Some(h) => Some(h),
                    None => {
                        self.error(
                            Some(span.clone()),
                            &format!("{key}.token_sha256"),
                            "must be 64 hex digits".into(),
                        );
                        None
                    }
                }
            } else {
                None
            };
            out.push(PrincipalConfig {
                id: p.id,
                roles: p.roles,
                owners: p.owners,
                token_sha256,
                cert_names: p.cert_names,
            });
        }
        let ids: HashSet<&str> = out.iter().map(|p| p.id.as_str()).collect();
        let mut unknown = Vec::new();
        for (i, p) in out.iter().enumerate() {
            for o in &p.owners {
                if !ids.contains(o.as_str()) {
                    unknown.push((i, o.clone()));
                }
            }
        }
        for (i, o) in unknown {
            self.error(
                None,
                &format!("principals[{i}].owners"),
                format!("`{o}` is not a principal"),
            );
        }
        out
    }

    fn routes(
        &mut self,
        raw: Vec<Spanned<raw::RawRoute>>,
        base: &Path,
        env: &dyn Env,
        proxy: &ProxyConfig,
        proxy_mode: Mode,
    ) -> Vec<RouteConfig> {
        let mut names = HashSet::new();
        let mut prefixes = HashSet::new();
        let mut out = Vec::new();
        for (i, sp) in raw.into_iter().enumerate() {
            let span = sp.span();
            let r = sp.into_inner();
            let key = format!("routes[{i}]");
            if r.name.is_empty() || !names.insert(r.name.clone()) {
                self.error(
                    Some(span.clone()),
                    &format!("{key}.name"),
                    format!("`{}` must be unique and not empty", r.name),
                );
            }
            let prefix = r.prefix.get_ref().trim_end_matches('/').to_string();
            if !r.prefix.get_ref().starts_with('/')
                || crate::http_util::path::normalize(r.prefix.get_ref()).is_err()
            {
                self.error(
                    Some(r.prefix.span()),
                    &format!("{key}.prefix"),
                    format!(
                        "`{}` must be an absolute, unambiguous path like /tools/email",
                        r.prefix.get_ref()
                    ),
                );
            } else if !prefixes.insert(prefix.clone()) {
                self.error(
                    Some(r.prefix.span()),
                    &format!("{key}.prefix"),
                    format!("`{}` is used by another route", r.prefix.get_ref()),
                );
            }
            let upstream = match r.upstream.get_ref().parse::<Uri>() {
                Ok(u)
                    if matches!(u.scheme_str(), Some("http") | Some("https"))
                        && u.authority().is_some()
                        && u.query().is_none() =>
                {
                    u
                }
                _ => {
                    self.error(
                        Some(r.upstream.span()),
                        &format!("{key}.upstream"),
                        format!(
                            "`{}` must be an http:// or https:// base URL without a query",
                            r.upstream.get_ref()
                        ),
                    );
                    Uri::from_static("http://127.0.0.1:1")
                }
            };
            let mut inject_headers = Vec::new();
            for (name, value) in &r.inject_headers {
                let hkey = format!("{key}.inject_headers.{name}");
                let Ok(hname) = HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()) else {
                    self.error(
                        Some(value.span()),
                        &hkey,
                        format!("`{name}` is not a header name"),
                    );
                    continue;
                };
                let resolved = match value.get_ref().strip_prefix("env:") {
                    Some(var) => match env.var(var) {
                        Some(v) => v,
                        None => {
                            self.error(
                                Some(value.span()),
                                &hkey,
                                format!("environment variable {var} is not set"),
                            );
                            continue;
                        }
                    },
                    None => value.get_ref().clone(),
                };
                match HeaderValue::from_str(&resolved) {
                    Ok(mut hv) => {
                        hv.set_sensitive(true);
                        inject_headers.push((hname, hv));
                    }
                    Err(_) => self.error(
                        Some(value.span()),
                        &hkey,
                        "value is not a valid header value".into(),
                    ),
                }
            }
            let ca_file = r
                .ca_file
                .as_ref()
                .map(|c| self.path(base, c, &format!("{key}.ca_file"), true));
            if r.timeout_ms == Some(0) || r.max_body_bytes == Some(0) {
                self.error(
                    Some(span.clone()),
                    &key,
                    "timeout_ms and max_body_bytes must be greater than 0".into(),
                );
            }
            let mode = self.mode(r.mode.as_ref(), &format!("{key}.mode"), proxy_mode);
            let opaque_body = match r.body.as_ref().map(|b| (b.get_ref().as_str(), b.span())) {
                None | Some(("parsed", _)) => r.stream_body,
                Some(("opaque", _)) => true,
                Some((other, span)) => {
                    self.error(
                        Some(span),
                        &format!("{key}.body"),
                        format!("`{other}` must be \"parsed\" or \"opaque\""),
                    );
                    true
                }
            };
            out.push(RouteConfig {
                opaque_body,
                mode,
                class_args: r.class_args,
                tool: r.tool.unwrap_or_else(|| r.name.clone()),
                name: r.name,
                prefix,
                upstream,
                inject_headers,
                timeout: r
                    .timeout_ms
                    .map(Duration::from_millis)
                    .unwrap_or(proxy.upstream_timeout),
                max_body_bytes: r.max_body_bytes.unwrap_or(proxy.max_body_bytes),
                stream_body: r.stream_body,
                ca_file,
            });
        }
        out
    }
}
