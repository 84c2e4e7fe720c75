//! Dashboard sessions: a reviewer logs in with their bearer token once and
//! gets an HttpOnly, SameSite=Strict cookie (Secure on TLS). Every
//! state-changing request made with the cookie must carry the session's CSRF
//! token; requests with a bearer token need none (no ambient credential).
//!
//! Sessions are kept in memory and written through to the store (by the
//! SHA-256 of their id), so a restart does not log reviewers out. These are
//! rare, small writes (a login, a use at most once a minute), made inline.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use http::HeaderMap;
use subtle::ConstantTimeEq;

use crate::identity::{Directory, Principal};
use crate::store::{blocking, Store, StoredSession};

/// Name of the session cookie.
pub const COOKIE: &str = "latch_session";
/// How long a session lasts without use.
const IDLE: Duration = Duration::from_secs(8 * 3600);
/// How often a session's last use is written to the store.
const TOUCH_EVERY: Duration = Duration::from_secs(60);

/// A logged-in reviewer.
#[derive(Clone)]
pub struct Session {
    /// Who.
    pub principal: Arc<Principal>,
    /// Required in `x-csrf-token` (or a `csrf` form field) on state changes.
    pub csrf: String,
    last_used: Instant,
    /// When `last_used` was last written to the store.
    stored: Instant,
}

/// All live sessions: a cache in front of the store.
pub struct Sessions {
    map: DashMap<String, Session>,
    store: Arc<dyn Store>,
    directory: Arc<Directory>,
}

fn id_digest(id: &str) -> String {
    crate::digest::hex(&crate::digest::sha256(id.as_bytes()))
}

fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn random_hex() -> String {
    let a = uuid::Uuid::new_v4();
    let b = uuid::Uuid::new_v4();
    format!("{}{}", a.simple(), b.simple())
}

impl Sessions {
    /// Sessions kept in `store`, for principals in `directory`.
    pub fn new(store: Arc<dyn Store>, directory: Arc<Directory>) -> Sessions {
        Sessions {
            map: DashMap::new(),
            store,
            directory,
        }
    }

    /// Start a session; returns its id. Fails when the store cannot keep it.
    pub async fn create(&self, principal: Arc<Principal>) -> anyhow::Result<(String, Session)> {
        let id = random_hex();
        let s = Session {
            principal,
            csrf: random_hex(),
            last_used: Instant::now(),
            stored: Instant::now(),
        };
        let stored = StoredSession {
            id_sha256: id_digest(&id),
            principal: s.principal.id.clone(),
            csrf: s.csrf.clone(),
            last_used: unix_now(),
        };
        let store = self.store.clone();
        blocking(move || store.save_session(&stored)).await?;
        // Drop expired sessions now and then, so the map cannot grow forever.
        if self.map.len().is_multiple_of(64) {
            self.map.retain(|_, s| s.last_used.elapsed() < IDLE);
        }
        self.map.insert(id.clone(), s.clone());
        Ok((id, s))
    }

    /// The session named by the request's cookie, if live (from the store
    /// after a restart).
    pub async fn from_headers(&self, headers: &HeaderMap) -> Option<(String, Session)> {
        let id = cookie(headers, COOKIE)?;
        if !self.map.contains_key(&id) {
            let loaded = self.load(&id).await?;
            self.map.insert(id.clone(), loaded);
        }
        // The map entry is let go before anything waits on the store.
        let (session, touched) = {
            let mut entry = self.map.get_mut(&id)?;
            if entry.last_used.elapsed() >= IDLE {
                (None, None)
            } else {
                entry.last_used = Instant::now();
                let touched = (entry.stored.elapsed() >= TOUCH_EVERY).then(|| {
                    entry.stored = Instant::now();
                    StoredSession {
                        id_sha256: id_digest(&id),
                        principal: entry.principal.id.clone(),
                        csrf: entry.csrf.clone(),
                        last_used: unix_now(),
                    }
                });
                (Some(entry.clone()), touched)
            }
        };
        let Some(session) = session else {
            self.remove(&id).await;
            return None;
        };
        if let Some(touched) = touched {
            let store = self.store.clone();
            if let Err(e) = blocking(move || store.save_session(&touched)).await {
                tracing::warn!(error = %e, "could not record a session's use");
            }
        }
        Some((id, session))
    }

    async fn load(&self, id: &str) -> Option<Session> {
        let (store, digest) = (self.store.clone(), id_digest(id));
        let stored = match blocking(move || store.session(&digest)).await {
            Ok(s) => s?,
            Err(e) => {
                tracing::warn!(error = %e, "reading a session failed");
                return None;
            }
        };
        let idle = u64::try_from(unix_now() - stored.last_used).unwrap_or(0);
        // A principal removed from the config loses its sessions too.
        let principal = self.directory.get(&stored.principal)?.clone();
        if idle >= IDLE.as_secs() {
            self.remove(id).await;
            return None;
        }
        let last_used = Instant::now()
            .checked_sub(Duration::from_secs(idle))
            .unwrap_or_else(Instant::now);
        Some(Session {
            principal,
            csrf: stored.csrf,
            last_used,
            stored: last_used,
        })
    }

    /// End a session.
    pub async fn remove(&self, id: &str) {
        self.map.remove(id);
        let (store, digest) = (self.store.clone(), id_digest(id));
        if let Err(e) = blocking(move || store.delete_session(&digest)).await {
            tracing::warn!(error = %e, "could not delete a session");
        }
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

    fn setup() -> (Sessions, Arc<Principal>, Arc<dyn Store>, Arc<Directory>) {
        let cfg = crate::config::PrincipalConfig {
            id: "alice".into(),
            roles: vec!["lead".into()],
            owners: vec![],
            token_sha256: None,
            cert_names: vec![],
            email: None,
            slack_user: None,
        };
        let dir = Arc::new(Directory::new(&[cfg]));
        let store: Arc<dyn Store> =
            Arc::new(crate::store::sqlite::SqliteStore::memory(None).unwrap());
        let p = dir.get("alice").unwrap().clone();
        (Sessions::new(store.clone(), dir.clone()), p, store, dir)
    }

    #[tokio::test]
    async fn sessions_survive_a_restart_through_the_store() {
        let (s, p, store, dir) = setup();
        let (id, session) = s.create(p).await.unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            http::header::COOKIE,
            format!("{COOKIE}={id}").parse().unwrap(),
        );
        // A new process: empty cache, same store.
        let again = Sessions::new(store, dir);
        let (_, got) = again.from_headers(&h).await.unwrap();
        assert_eq!(got.principal.id, "alice");
        assert!(csrf_ok(&got, Some(&session.csrf)));
        again.remove(&id).await;
        assert!(s.store.session(&id_digest(&id)).unwrap().is_none());
    }

    #[tokio::test]
    async fn sessions_round_trip_through_the_cookie() {
        let (s, p, _, _) = setup();
        let (id, session) = s.create(p).await.unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            http::header::COOKIE,
            format!("other=1; {COOKIE}={id}").parse().unwrap(),
        );
        let (found, got) = s.from_headers(&h).await.unwrap();
        assert_eq!(found, id);
        assert_eq!(got.principal.id, "alice");
        assert!(csrf_ok(&got, Some(&session.csrf)));
        assert!(!csrf_ok(&got, Some("guess")));
        assert!(!csrf_ok(&got, None));
        s.remove(&id).await;
        assert!(s.from_headers(&h).await.is_none());
    }

    #[test]
    fn cookie_attributes() {
        let c = set_cookie(Some("abc"), true);
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && c.contains("Secure"));
        assert!(!set_cookie(Some("abc"), false).contains("Secure"));
        assert!(set_cookie(None, false).contains("Max-Age=0"));
    }
}
