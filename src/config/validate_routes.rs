//! `[[principals]]` and `[[routes]]`: identities, credentials, prefixes,
//! upstreams and what each route lets the policy see.

use std::collections::HashSet;

use http::{HeaderName, HeaderValue, Uri};
use toml::Spanned;

use super::raw;
use super::validate::Validator;
use super::*;
use crate::digest::sha256;

impl Validator<'_> {
    pub(super) fn principals(
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
                email: p.email,
                slack_user: p.slack_user,
            });
        }
        let mut slack_users = HashSet::new();
        for (i, p) in out.iter().enumerate() {
            if let Some(u) = &p.slack_user {
                if u.trim().is_empty() || !slack_users.insert(u.as_str()) {
                    let msg = format!("`{u}` must be unique and not empty");
                    self.error(None, &format!("principals[{i}].slack_user"), msg);
                }
            }
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

    pub(super) fn routes(
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
            } else if r.name.starts_with("latch.") {
                self.error(
                    Some(span.clone()),
                    &format!("{key}.name"),
                    format!("`{}`: names starting with `latch.` are Latch's own", r.name),
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
            let protocol = match r
                .protocol
                .as_ref()
                .map(|p| (p.get_ref().as_str(), p.span()))
            {
                None | Some(("http", _)) => Protocol::Http,
                Some(("mcp", _)) => Protocol::Mcp,
                Some((other, span)) => {
                    self.error(
                        Some(span),
                        &format!("{key}.protocol"),
                        format!("`{other}` must be \"http\" or \"mcp\""),
                    );
                    Protocol::Http
                }
            };
            let command = self.command(&r, &key, protocol);
            let upstream = match (&r.upstream, &command) {
                // The bridge's address is known once it listens.
                (None, Some(_)) => Uri::from_static("http://127.0.0.1:1/mcp"),
                (None, None) => {
                    self.error(
                        Some(span.clone()),
                        &format!("{key}.upstream"),
                        "a route needs `upstream` (or, for an MCP route, `command`)".into(),
                    );
                    Uri::from_static("http://127.0.0.1:1")
                }
                (Some(u), _) => match u.get_ref().parse::<Uri>() {
                    Ok(uri)
                        if matches!(uri.scheme_str(), Some("http") | Some("https"))
                            && uri.authority().is_some()
                            && uri.query().is_none() =>
                    {
                        uri
                    }
                    _ => {
                        self.error(
                            Some(u.span()),
                            &format!("{key}.upstream"),
                            format!(
                                "`{}` must be an http:// or https:// base URL without a query",
                                u.get_ref()
                            ),
                        );
                        Uri::from_static("http://127.0.0.1:1")
                    }
                },
            };
            if protocol == Protocol::Mcp && (r.stream_body || r.body.is_some()) {
                self.error(
                    Some(span.clone()),
                    &key,
                    "an MCP route judges every message: `stream_body` and `body` do not apply"
                        .into(),
                );
            }
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
                opaque_body: opaque_body && protocol == Protocol::Http,
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
                protocol,
                command,
            });
        }
        out
    }

    /// `routes[i].command`: only on MCP routes, instead of `upstream`, a
    /// program name first.
    fn command(&mut self, r: &raw::RawRoute, key: &str, protocol: Protocol) -> Option<Vec<String>> {
        let c = r.command.as_ref()?;
        let problem = if protocol != Protocol::Mcp {
            Some("`command` starts a stdio MCP server: it needs `protocol = \"mcp\"`")
        } else if r.upstream.is_some() {
            Some("give `upstream` or `command`, not both")
        } else if c.get_ref().first().is_none_or(|p| p.is_empty()) {
            Some("`command` needs at least the program to run")
        } else {
            None
        };
        match problem {
            Some(p) => {
                self.error(Some(c.span()), &format!("{key}.command"), p.into());
                None
            }
            None => Some(c.get_ref().clone()),
        }
    }
}
