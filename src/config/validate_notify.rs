//! `[notify]` and its channels: every key checked against the channel's
//! kind, secrets read from the environment, channel names resolved.

use std::collections::HashSet;
use std::path::Path;

use base64::Engine as _;
use http::Uri;
use toml::Spanned;

use super::raw::{RawChannel, RawNotify};
use super::validate::Validator;
use super::*;

/// Which optional keys each kind takes (the rest must be absent).
const KEYS: &[(&str, &[&str])] = &[
    (
        "slack",
        &[
            "channel",
            "bot_token_env",
            "signing_secret_env",
            "api_url",
            "ca_file",
        ],
    ),
    (
        "email",
        &[
            "smtp_url",
            "username",
            "password_env",
            "from",
            "to",
            "to_roles",
            "ca_file",
        ],
    ),
    ("webhook", &["url", "secret_env", "ca_file"]),
    ("pagerduty", &["routing_key_env", "events_url", "ca_file"]),
];

impl Validator<'_> {
    pub(super) fn telemetry(&mut self, raw: super::raw::RawTelemetry) -> TelemetryConfig {
        let d = TelemetryConfig::default();
        let otlp_endpoint = raw.otlp_endpoint.and_then(|u| {
            self.http_url(&u, "telemetry.otlp_endpoint")
                .map(|_| u.get_ref().trim_end_matches('/').to_string())
        });
        let sample_ratio = match raw.sample_ratio {
            None => d.sample_ratio,
            Some(r) if (0.0..=1.0).contains(r.get_ref()) => *r.get_ref(),
            Some(r) => {
                let msg = format!("{} must be between 0.0 and 1.0", r.get_ref());
                self.error(Some(r.span()), "telemetry.sample_ratio", msg);
                d.sample_ratio
            }
        };
        TelemetryConfig {
            otlp_endpoint,
            service_name: raw.service_name.unwrap_or(d.service_name),
            sample_ratio,
            timeout: self.millis(raw.timeout_ms, "telemetry.timeout_ms", 10_000),
        }
    }

    pub(super) fn notify(
        &mut self,
        raw: Option<RawNotify>,
        base: &Path,
        env: &dyn Env,
        principals: &[PrincipalConfig],
    ) -> NotifyConfig {
        let d = NotifyConfig::default();
        let Some(raw) = raw else { return d };
        let dashboard_url = match &raw.dashboard_url {
            None => d.dashboard_url,
            Some(u) => match self.http_url(u, "notify.dashboard_url") {
                Some(_) => u.get_ref().trim_end_matches('/').to_string(),
                None => d.dashboard_url,
            },
        };
        let mut names = HashSet::new();
        let mut channels = Vec::new();
        for (i, sp) in raw.channels.into_iter().enumerate() {
            let span = sp.span();
            let c = sp.into_inner();
            let key = format!("notify.channels[{i}]");
            if c.name.is_empty() || !names.insert(c.name.clone()) {
                let msg = format!("name `{}` must be unique and not empty", c.name);
                self.error(Some(span.clone()), &format!("{key}.name"), msg);
            }
            if let Some(ch) = self.channel(c, &key, span, base, env, principals) {
                channels.push(ch);
            }
        }
        let default = match raw.default {
            None => Vec::new(),
            Some(list) => {
                let span = list.span();
                let list = list.into_inner();
                for n in &list {
                    if !names.contains(n) {
                        let msg = format!("`{n}` is not a channel in [[notify.channels]]");
                        self.error(Some(span.clone()), "notify.default", msg);
                    }
                }
                list
            }
        };
        NotifyConfig {
            dashboard_url,
            default,
            max_attempts: self.positive(raw.max_attempts, "notify.max_attempts", 8) as u32,
            retry_base: self.millis(raw.retry_base_ms, "notify.retry_base_ms", 1000),
            timeout: self.millis(raw.timeout_ms, "notify.timeout_ms", 10_000),
            channels,
        }
    }

    fn channel(
        &mut self,
        c: RawChannel,
        key: &str,
        span: std::ops::Range<usize>,
        base: &Path,
        env: &dyn Env,
        principals: &[PrincipalConfig],
    ) -> Option<ChannelConfig> {
        let kind = c.kind.get_ref().as_str();
        let Some((_, allowed)) = KEYS.iter().find(|(k, _)| *k == kind) else {
            let msg = format!("`{kind}` must be slack, email, webhook or pagerduty");
            self.error(Some(c.kind.span()), &format!("{key}.kind"), msg);
            return None;
        };
        for (name, span) in present_keys(&c) {
            if !allowed.contains(&name) {
                let msg = format!("does not apply to a {kind} channel");
                self.error(Some(span), &format!("{key}.{name}"), msg);
            }
        }
        let ca_file = c
            .ca_file
            .as_ref()
            .map(|f| self.path(base, f, &format!("{key}.ca_file"), true));
        let kind = match kind {
            "slack" => {
                // Every problem is reported, not just the first.
                let channel = self.required(&c.channel, key, "channel", &span);
                let token = self.secret(&c.bot_token_env, key, "bot_token_env", &span, env);
                let signing =
                    self.secret(&c.signing_secret_env, key, "signing_secret_env", &span, env);
                let api_url = match &c.api_url {
                    None => Some(Uri::from_static("https://slack.com/api")),
                    Some(u) => self.http_url(u, &format!("{key}.api_url")),
                };
                ChannelKind::Slack {
                    channel: channel?,
                    bot_token: token?,
                    signing_secret: signing?,
                    api_url: api_url?,
                }
            }
            "email" => {
                let url = self.required(&c.smtp_url, key, "smtp_url", &span)?;
                let smtp_key = format!("{key}.smtp_url");
                let Some(mut smtp) = parse_smtp_url(&url) else {
                    let msg = format!(
                        "`{url}` must be smtp://HOST:PORT, smtp://HOST:PORT?tls=starttls or smtps://HOST:PORT"
                    );
                    self.error(c.smtp_url.as_ref().map(|s| s.span()), &smtp_key, msg);
                    return None;
                };
                match (&c.username, &c.password_env) {
                    (Some(user), Some(_)) => {
                        let pass = self.secret(&c.password_env, key, "password_env", &span, env)?;
                        smtp.credentials = Some((user.get_ref().clone(), pass));
                    }
                    (None, None) => {}
                    _ => {
                        let msg = "set both username and password_env, or neither".into();
                        self.error(Some(span.clone()), key, msg);
                    }
                }
                let from = self.required(&c.from, key, "from", &span)?;
                if !plausible_address(&from) {
                    let msg = format!("`{from}` is not an e-mail address");
                    self.error(
                        c.from.as_ref().map(|s| s.span()),
                        &format!("{key}.from"),
                        msg,
                    );
                }
                let to = c.to.map(Spanned::into_inner).unwrap_or_default();
                for a in to.iter().filter(|a| !plausible_address(a)) {
                    let msg = format!("`{a}` is not an e-mail address");
                    self.error(Some(span.clone()), &format!("{key}.to"), msg);
                }
                let to_roles = c.to_roles.map(Spanned::into_inner).unwrap_or_default();
                for r in &to_roles {
                    let reachable = principals
                        .iter()
                        .any(|p| p.email.is_some() && p.roles.contains(r));
                    if !reachable {
                        let msg = format!("no principal with role `{r}` has an email");
                        self.error(Some(span.clone()), &format!("{key}.to_roles"), msg);
                    }
                }
                if to.is_empty() && to_roles.is_empty() {
                    let msg = "an email channel needs `to` or `to_roles`".into();
                    self.error(Some(span.clone()), key, msg);
                }
                ChannelKind::Email {
                    smtp,
                    from,
                    to,
                    to_roles,
                }
            }
            "webhook" => {
                let url = self.required_url(&c.url, key, "url", &span);
                let secret = self.secret(&c.secret_env, key, "secret_env", &span, env)?;
                let decoded = secret
                    .0
                    .strip_prefix("whsec_")
                    .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok());
                let Some(decoded) = decoded.filter(|k| k.len() >= 24) else {
                    let var = c.secret_env.as_ref();
                    let name = var.map(|s| s.get_ref().as_str()).unwrap_or("");
                    let msg = format!(
                        "the secret in {name} must be whsec_ followed by base64 of at least 24 bytes"
                    );
                    self.error(var.map(|v| v.span()), &format!("{key}.secret_env"), msg);
                    return None;
                };
                ChannelKind::Webhook {
                    url: url?,
                    key: Secret(decoded),
                }
            }
            _ => {
                let key_of = self.secret(&c.routing_key_env, key, "routing_key_env", &span, env);
                let events_url = match &c.events_url {
                    None => Some(Uri::from_static("https://events.pagerduty.com/v2/enqueue")),
                    Some(u) => self.http_url(u, &format!("{key}.events_url")),
                };
                ChannelKind::PagerDuty {
                    routing_key: key_of?,
                    events_url: events_url?,
                }
            }
        };
        Some(ChannelConfig {
            name: c.name,
            ca_file,
            kind,
        })
    }

    fn required(
        &mut self,
        value: &Option<Spanned<String>>,
        key: &str,
        name: &str,
        span: &std::ops::Range<usize>,
    ) -> Option<String> {
        match value {
            Some(v) if !v.get_ref().trim().is_empty() => Some(v.get_ref().trim().to_string()),
            _ => {
                self.error(
                    Some(span.clone()),
                    &format!("{key}.{name}"),
                    "is required".into(),
                );
                None
            }
        }
    }

    fn required_url(
        &mut self,
        value: &Option<Spanned<String>>,
        key: &str,
        name: &str,
        span: &std::ops::Range<usize>,
    ) -> Option<Uri> {
        match value {
            Some(v) => self.http_url(v, &format!("{key}.{name}")),
            None => {
                self.error(
                    Some(span.clone()),
                    &format!("{key}.{name}"),
                    "is required".into(),
                );
                None
            }
        }
    }

    /// An `http://` or `https://` URL with a host.
    fn http_url(&mut self, value: &Spanned<String>, key: &str) -> Option<Uri> {
        let text = value.get_ref().trim_end_matches('/');
        match text.parse::<Uri>() {
            Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() => {
                Some(u)
            }
            _ => {
                let msg = format!("`{}` is not an http(s) URL", value.get_ref());
                self.error(Some(value.span()), key, msg);
                None
            }
        }
    }

    /// The non-empty value of the environment variable `var_key` names.
    fn secret(
        &mut self,
        var: &Option<Spanned<String>>,
        key: &str,
        name: &str,
        span: &std::ops::Range<usize>,
        env: &dyn Env,
    ) -> Option<Secret> {
        let Some(var) = var else {
            self.error(
                Some(span.clone()),
                &format!("{key}.{name}"),
                "is required".into(),
            );
            return None;
        };
        match env.var(var.get_ref()) {
            Some(v) if !v.trim().is_empty() => Some(Secret(v.trim().to_string())),
            _ => {
                let msg = format!("environment variable {} is not set", var.get_ref());
                self.error(Some(var.span()), &format!("{key}.{name}"), msg);
                None
            }
        }
    }
}

/// The keys of `c` that are set, with where they are.
fn present_keys(c: &RawChannel) -> Vec<(&'static str, std::ops::Range<usize>)> {
    let s = |name: &'static str, v: &Option<Spanned<String>>| v.as_ref().map(|v| (name, v.span()));
    let l =
        |name: &'static str, v: &Option<Spanned<Vec<String>>>| v.as_ref().map(|v| (name, v.span()));
    [
        s("channel", &c.channel),
        s("bot_token_env", &c.bot_token_env),
        s("signing_secret_env", &c.signing_secret_env),
        s("api_url", &c.api_url),
        s("smtp_url", &c.smtp_url),
        s("username", &c.username),
        s("password_env", &c.password_env),
        s("from", &c.from),
        l("to", &c.to),
        l("to_roles", &c.to_roles),
        s("url", &c.url),
        s("secret_env", &c.secret_env),
        s("routing_key_env", &c.routing_key_env),
        s("events_url", &c.events_url),
        s("ca_file", &c.ca_file),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// `smtp://host:port[?tls=starttls]` or `smtps://host:port`.
fn parse_smtp_url(url: &str) -> Option<SmtpConfig> {
    let (scheme, rest) = url.split_once("://")?;
    let (authority, query) = match rest.split_once('?') {
        Some((a, q)) => (a.trim_end_matches('/'), Some(q)),
        None => (rest.trim_end_matches('/'), None),
    };
    let tls = match (scheme, query) {
        ("smtp", None) => SmtpTls::None,
        ("smtp", Some("tls=starttls")) => SmtpTls::StartTls,
        ("smtps", None) => SmtpTls::Wrapper,
        _ => return None,
    };
    let default_port = if tls == SmtpTls::Wrapper { 465 } else { 587 };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (h, p.parse().ok()?),
        _ => (authority, default_port),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.contains(['/', '@', ' ']) {
        return None;
    }
    Some(SmtpConfig {
        host: host.to_string(),
        port,
        tls,
        credentials: None,
    })
}

/// Good enough to catch a typo; the SMTP server has the last word.
fn plausible_address(a: &str) -> bool {
    match a.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty() && domain.contains('.') || domain == "localhost" && !local.is_empty()
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smtp_urls() {
        let s = parse_smtp_url("smtp://127.0.0.1:2525").unwrap();
        assert_eq!(
            (s.host.as_str(), s.port, s.tls),
            ("127.0.0.1", 2525, SmtpTls::None)
        );
        let s = parse_smtp_url("smtp://mail.example.com?tls=starttls").unwrap();
        assert_eq!((s.port, s.tls), (587, SmtpTls::StartTls));
        let s = parse_smtp_url("smtps://mail.example.com:465").unwrap();
        assert_eq!(s.tls, SmtpTls::Wrapper);
        assert!(parse_smtp_url("http://x").is_none());
        assert!(parse_smtp_url("smtp://user@x:25").is_none());
        assert!(parse_smtp_url("smtp://x:notaport").is_none());
        assert!(parse_smtp_url("smtp://x?tls=maybe").is_none());
    }

    #[test]
    fn addresses() {
        assert!(plausible_address("a@example.com"));
        assert!(plausible_address("root@localhost"));
        assert!(!plausible_address("example.com"));
        assert!(!plausible_address("@example.com"));
    }
}
