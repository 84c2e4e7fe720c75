//! Dashboard sessions: a reviewer logs in with their bearer token once and
//! gets an HttpOnly, SameSite=Strict cookie (Secure on TLS). Every
//! state-changing request made with the cookie must carry the session's CSRF
//! token; requests with a bearer token need none (no ambient credential).

use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use http::HeaderMap;
use subtle::ConstantTimeEq;

use crate::identity::Principal;

/// Name of the session cookie.
pub const COOKIE: &str = "latch_session";
/// How long a session lasts without use.
const IDLE: Duration = Duration::from_secs(8 * 3600);

/// A logged-in reviewer.
#[derive(Clone)]
pub struct Session {
    /// Who.
    pub principal: Arc<Principal>,
    /// Required in `x-csrf-token` (or a `csrf` form field) on state changes.
    pub csrf: String,
    last_used: Instant,
}

/// All live sessions (in memory: a restart logs reviewers out, nothing else).
#[derive(Default)]
pub struct Sessions {
    map: DashMap<String, Session>,
}

fn random_hex() -> String {
    let a = uuid::Uuid::new_v4();
    let b = uuid::Uuid::new_v4();
    format!("{}{}", a.simple(), b.simple())
}

impl Sessions {
    /// Start a session; returns its id.
    pub fn create(&self, principal: Arc<Principal>) -> (String, Session) {
        let id = random_hex();
        let s = Session {
            principal,
            csrf: random_hex(),
            last_used: Instant::now(),
        };
        // Drop expired sessions now and then, so the map cannot grow forever.
        if self.map.len().is_multiple_of(64) {
            self.map.retain(|_, s| s.last_used.elapsed() < IDLE);
        }
        self.map.insert(id.clone(), s.clone());
        (id, s)
    }

    /// The session named by the request's cookie, if live.
    pub fn from_headers(&self, headers: &HeaderMap) -> Option<(String, Session)> {
        let id = cookie(headers, COOKIE)?;
        let mut entry = self.map.get_mut(&id)?;
        if entry.last_used.elapsed() >= IDLE {
            drop(entry);
            self.map.remove(&id);
            return None;
        }
        entry.last_used = Instant::now();
        Some((id, entry.clone()))
    }

    /// End a session.
    pub fn remove(&self, id: &str) {
        self.map.remove(id);
    }
}

/// Whether `presented` is the session's CSRF token (constant time).
pub fn csrf_ok(session: &Session, presented: Option<&str>) -> bool {
    match presented {
        Some(p) => p.as_bytes().ct_eq(session.csrf.as_bytes()).into(),
        None => false,
    }
}

/// A cookie's value.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// `Set-Cookie` for a new session (or, with `None`, one that clears it).
pub fn set_cookie(id: Option<&str>, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    match id {
        Some(id) => format!(
            "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
            IDLE.as_secs()
        ),
        None => format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal() -> Arc<Principal> {
        Arc::new(Principal {
            id: "alice".into(),
            roles: vec!["lead".into()],
            owners: vec![],
            input: regorus::Value::Null,
        })
    }

    #[test]
    fn sessions_round_trip_through_the_cookie() {
        let s = Sessions::default();
        let (id, session) = s.create(principal());
        let mut h = HeaderMap::new();
        h.insert(
            http::header::COOKIE,
            format!("other=1; {COOKIE}={id}").parse().unwrap(),
        );
        let (found, got) = s.from_headers(&h).unwrap();
        assert_eq!(found, id);
        assert_eq!(got.principal.id, "alice");
        assert!(csrf_ok(&got, Some(&session.csrf)));
        assert!(!csrf_ok(&got, Some("guess")));
        assert!(!csrf_ok(&got, None));
        s.remove(&id);
        assert!(s.from_headers(&h).is_none());
    }

    #[test]
    fn cookie_attributes() {
        let c = set_cookie(Some("abc"), true);
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && c.contains("Secure"));
        assert!(!set_cookie(Some("abc"), false).contains("Secure"));
        assert!(set_cookie(None, false).contains("Max-Age=0"));
    }
}
