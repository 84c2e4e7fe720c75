//! Who is calling: principals (agents and humans), their roles, and how a
//! request proves it is one of them (bearer token or client certificate).

use std::collections::HashMap;
use std::sync::Arc;

use subtle::ConstantTimeEq;

use crate::config::PrincipalConfig;
use crate::digest::sha256;

/// An authenticated agent or human.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Identifier from the config.
    pub id: String,
    /// Roles.
    pub roles: Vec<String>,
    /// Humans who may never approve this principal's calls.
    pub owners: Vec<String>,
    /// `input.agent` for this principal, built once.
    pub input: regorus::Value,
    /// Where notification e-mail for this person goes.
    pub email: Option<String>,
}

impl Principal {
    /// Whether the principal holds `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}

/// Why a request was not authenticated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No bearer token and no identifying certificate.
    #[error("missing bearer token")]
    Missing,
    /// `Authorization` is not `Bearer <token>`.
    #[error("malformed Authorization header")]
    Malformed,
    /// The token matches no principal.
    #[error("unknown token")]
    Unknown,
    /// Certificate and token name different principals.
    #[error("client certificate and bearer token name different principals")]
    Conflict,
}

/// All principals, indexed for authentication.
#[derive(Debug, Default)]
pub struct Directory {
    principals: Vec<Arc<Principal>>,
    tokens: Vec<([u8; 32], usize)>,
    cert_names: HashMap<String, usize>,
    slack_users: HashMap<String, usize>,
}

impl Directory {
    /// Build from validated config.
    pub fn new(configs: &[PrincipalConfig]) -> Self {
        let mut d = Directory::default();
        for (i, c) in configs.iter().enumerate() {
            d.principals.push(Arc::new(Principal {
                id: c.id.clone(),
                roles: c.roles.clone(),
                owners: c.owners.clone(),
                input: agent_facts(&c.id, &c.roles),
                email: c.email.clone(),
            }));
            if let Some(u) = &c.slack_user {
                d.slack_users.insert(u.clone(), i);
            }
            if let Some(h) = c.token_sha256 {
                d.tokens.push((h, i));
            }
            for n in &c.cert_names {
                d.cert_names.insert(n.to_ascii_lowercase(), i);
            }
        }
        d
    }

    /// The principal by id.
    pub fn get(&self, id: &str) -> Option<&Arc<Principal>> {
        self.principals.iter().find(|p| p.id == id)
    }

    /// The principal a Slack user id acts as.
    pub fn by_slack_user(&self, user: &str) -> Option<&Arc<Principal>> {
        self.slack_users
            .get(user)
            .and_then(|i| self.principals.get(*i))
    }

    /// Every principal, in config order.
    pub fn all(&self) -> &[Arc<Principal>] {
        &self.principals
    }

    /// Match a presented token. Every stored digest is compared, in constant
    /// time, so neither the match nor its position shows in the timing.
    pub fn by_token(&self, token: &str) -> Option<&Arc<Principal>> {
        let digest = sha256(token.as_bytes());
        let mut found = usize::MAX;
        for (h, i) in &self.tokens {
            let eq: bool = h.ct_eq(&digest).into();
            if eq {
                found = *i;
            }
        }
        self.principals.get(found)
    }

    /// Match names taken from a verified client certificate.
    pub fn by_cert_names(&self, names: &[String]) -> Option<&Arc<Principal>> {
        names
            .iter()
            .find_map(|n| self.cert_names.get(&n.to_ascii_lowercase()))
            .and_then(|i| self.principals.get(*i))
    }

    /// Authenticate a request from its `Authorization` header and, on mTLS,
    /// the principal its certificate names.
    pub fn authenticate(
        &self,
        authorization: Option<&[u8]>,
        cert_principal: Option<&Arc<Principal>>,
    ) -> Result<Arc<Principal>, AuthError> {
        let from_token = match authorization {
            None => None,
            Some(raw) => {
                let text = std::str::from_utf8(raw).map_err(|_| AuthError::Malformed)?;
                let (scheme, token) = text.split_once(' ').ok_or(AuthError::Malformed)?;
                if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
                    return Err(AuthError::Malformed);
                }
                Some(self.by_token(token.trim()).ok_or(AuthError::Unknown)?)
            }
        };
        match (cert_principal, from_token) {
            (Some(c), Some(t)) if c.id != t.id => Err(AuthError::Conflict),
            (Some(c), _) => Ok(c.clone()),
            (None, Some(t)) => Ok(t.clone()),
            (None, None) => Err(AuthError::Missing),
        }
    }
}

/// `input.agent`, built once per principal at start-up.
pub fn agent_facts(id: &str, roles: &[String]) -> regorus::Value {
    let roles: Vec<regorus::Value> = roles
        .iter()
        .map(|r| regorus::Value::from(r.as_str()))
        .collect();
    let map: std::collections::BTreeMap<regorus::Value, regorus::Value> = [
        (regorus::Value::from("id"), regorus::Value::from(id)),
        (regorus::Value::from("roles"), regorus::Value::from(roles)),
    ]
    .into_iter()
    .collect();
    regorus::Value::from(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> Directory {
        Directory::new(&[
            PrincipalConfig {
                id: "bot".into(),
                roles: vec!["agent".into()],
                owners: vec![],
                token_sha256: Some(sha256(b"bot-token")),
                cert_names: vec!["bot.agents.test".into()],
                email: None,
                slack_user: None,
            },
            PrincipalConfig {
                id: "alice".into(),
                roles: vec!["lead".into()],
                owners: vec![],
                token_sha256: Some(sha256(b"alice-token")),
                cert_names: vec![],
                email: None,
                slack_user: None,
            },
        ])
    }

    #[test]
    fn bearer_tokens() {
        let d = dir();
        assert_eq!(
            d.authenticate(Some(b"Bearer bot-token"), None).unwrap().id,
            "bot"
        );
        assert_eq!(
            d.authenticate(Some(b"bearer alice-token"), None)
                .unwrap()
                .id,
            "alice"
        );
        assert_eq!(
            d.authenticate(Some(b"Bearer nope"), None),
            Err(AuthError::Unknown)
        );
        assert_eq!(
            d.authenticate(Some(b"Basic eA=="), None),
            Err(AuthError::Malformed)
        );
        assert_eq!(
            d.authenticate(Some(b"Bearer"), None),
            Err(AuthError::Malformed)
        );
        assert_eq!(d.authenticate(None, None), Err(AuthError::Missing));
    }

    #[test]
    fn certificates() {
        let d = dir();
        let bot = d.by_cert_names(&["BOT.agents.test".into()]).cloned();
        assert_eq!(bot.as_ref().unwrap().id, "bot");
        assert_eq!(d.authenticate(None, bot.as_ref()).unwrap().id, "bot");
        assert_eq!(
            d.authenticate(Some(b"Bearer bot-token"), bot.as_ref())
                .unwrap()
                .id,
            "bot"
        );
        assert_eq!(
            d.authenticate(Some(b"Bearer alice-token"), bot.as_ref()),
            Err(AuthError::Conflict)
        );
    }
}
