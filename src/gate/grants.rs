//! Time-boxed grants: "yes, and the same for the next hour". An approver
//! may grant, with an approval, the same agent the same action class for a
//! while; calls the policy would *gate* at no higher risk are then allowed
//! without a human. A grant never turns a deny into an allow, never covers
//! another agent, route or argument shape, and is revocable.
//!
//! The store holds grants (created in the approval's own transaction, so
//! the grant and the approval that made it land together); this index keeps
//! the live ones by action class for the proxy's hot path, which asks one
//! map lookup of every call and nothing more when no grant exists.

use std::sync::Arc;

use bytes::Bytes;
use dashmap::DashMap;
use serde_json::json;

use super::model::{Approval, Grant, Revocation};
use super::{Gate, GateError};
use crate::audit::chain::Event;
use crate::history::ActionClass;
use crate::http_util::query::parse_query;
use crate::identity::Principal;
use crate::policy::body;
use crate::policy::input;
use crate::store::blocking;

/// A live grant with its narrowed values in the policy's value type.
#[derive(Debug)]
pub struct LiveGrant {
    /// The grant.
    pub grant: Grant,
    narrow: Vec<(regorus::Value, regorus::Value)>,
}

impl LiveGrant {
    fn new(grant: Grant) -> LiveGrant {
        let narrow = grant
            .narrow
            .iter()
            .map(|(k, v)| {
                // A value that does not convert matches nothing.
                let v = regorus::Value::from_json_str(&v.to_string())
                    .unwrap_or(regorus::Value::Undefined);
                (regorus::Value::from(k.as_str()), v)
            })
            .collect();
        LiveGrant { grant, narrow }
    }

    /// Whether a call with `args` to `path` on `route` at `now` is covered
    /// (risk aside).
    fn covers(&self, route: &str, path: &str, args: &regorus::Value, now: i64) -> bool {
        self.grant.live(now)
            && self.grant.route == route
            && self.grant.path == path
            && self.narrow.iter().all(|(k, v)| args[k] == *v)
    }

    /// What the policy sees in `input.grants`.
    pub fn input(&self) -> regorus::Value {
        let g = &self.grant;
        input::object([
            ("id", regorus::Value::from(g.id.as_str())),
            ("risk", regorus::Value::from(g.risk.as_str())),
            ("expires_at_ms", regorus::Value::from(g.expires_at)),
            ("approval", regorus::Value::from(g.approval.as_str())),
            (
                "granted_by",
                regorus::Value::from(
                    g.granted_by
                        .iter()
                        .map(|p| regorus::Value::from(p.as_str()))
                        .collect::<Vec<_>>(),
                ),
            ),
        ])
    }
}

/// Live grants by action class.
#[derive(Default)]
pub struct Grants {
    by_class: DashMap<[u8; 16], Vec<Arc<LiveGrant>>>,
}

impl Grants {
    /// Index `g` (grants of unknown class are ignored: they cover nothing).
    pub fn insert(&self, g: Grant) {
        let Some(class) = ActionClass::from_parts(&g.class, &g.agent, &g.tool, &g.shape) else {
            return;
        };
        let mut list = self.by_class.entry(class.key).or_default();
        list.retain(|l| l.grant.id != g.id);
        list.push(Arc::new(LiveGrant::new(g)));
    }

    /// Drop grant `id` of class `class`.
    pub fn remove(&self, class: &str, id: &str) {
        let Some(key) = ActionClass::from_parts(class, "", "", "").map(|c| c.key) else {
            return;
        };
        if let Some(mut list) = self.by_class.get_mut(&key) {
            list.retain(|l| l.grant.id != id);
        }
        self.by_class.remove_if(&key, |_, list| list.is_empty());
    }

    /// Grants covering a call of `class` to `(route, path)` with `args` at `now`.
    pub fn matching(
        &self,
        class: &ActionClass,
        (route, path): (&str, &str),
        args: &regorus::Value,
        now: i64,
    ) -> Vec<Arc<LiveGrant>> {
        match self.by_class.get(&class.key) {
            None => Vec::new(),
            Some(list) => list
                .iter()
                .filter(|l| l.covers(route, path, args, now))
                .cloned()
                .collect(),
        }
    }

    /// Forget grants that can no longer allow anything; how many still can.
    pub fn prune(&self, now: i64) -> usize {
        self.by_class.retain(|_, list| {
            list.retain(|l| l.grant.live(now));
            !list.is_empty()
        });
        self.by_class.iter().map(|e| e.len()).sum()
    }
}

impl Gate {
    /// Grants that cover this call now (for `input.grants` and, if the
    /// policy gates it, to allow it without a human).
    pub fn grants_for(
        &self,
        class: &ActionClass,
        route_and_path: (&str, &str),
        args: &regorus::Value,
    ) -> Vec<Arc<LiveGrant>> {
        self.0
            .grants
            .matching(class, route_and_path, args, self.now_ms())
    }

    /// Count a call a grant let through.
    pub fn grant_used(&self, g: &Grant) {
        self.parts()
            .metrics
            .grant_events
            .with_label_values(&["used"])
            .inc();
        tracing::debug!(grant = %g.id, agent = %g.agent, "call allowed by a grant");
    }

    /// Grants, newest first; with `live_only`, those that can still allow.
    pub async fn list_grants(
        &self,
        live_only: bool,
        limit: usize,
    ) -> Result<Vec<Grant>, GateError> {
        let store = self.parts().store.clone();
        let live_at = live_only.then(|| self.now_ms());
        blocking(move || store.grants(live_at, limit))
            .await
            .map_err(GateError::Store)
    }

    /// One grant.
    pub async fn grant(&self, id: &str) -> Result<Grant, GateError> {
        let store = self.parts().store.clone();
        let id = id.to_string();
        blocking(move || store.grant(&id))
            .await
            .map_err(GateError::Store)?
            .ok_or(GateError::GrantNotFound)
    }

    /// Revoke grant `id`: from now on it allows nothing. Any human may
    /// revoke (it only ever restores the gate); agents may not.
    pub async fn revoke_grant(
        &self,
        id: &str,
        actor: &Principal,
        reason: Option<String>,
    ) -> Result<Grant, GateError> {
        if actor.has_role("agent") {
            return Err(GateError::Forbidden("agents cannot revoke grants".into()));
        }
        let mut g = self.grant(id).await?;
        let now = self.now_ms();
        match g.status(now) {
            "live" => {}
            other => return Err(GateError::GrantClosed(other)),
        }
        g.revoked = Some(Revocation {
            by: actor.id.clone(),
            at: now,
            reason: reason.clone(),
        });
        let event = Event::new(
            &actor.id,
            "grant_revoke",
            &g.id,
            json!({"reason": reason, "agent": g.agent, "class": g.class}),
        );
        let store = self.parts().store.clone();
        let stored = g.clone();
        let changed = blocking(move || store.revoke_grant(&stored, &event))
            .await
            .map_err(GateError::Store)?;
        if !changed {
            return Err(GateError::GrantClosed("revoked"));
        }
        self.0.grants.remove(&g.class, &g.id);
        let metrics = &self.parts().metrics;
        metrics.grant_events.with_label_values(&["revoked"]).inc();
        metrics.grants_active.set(self.0.grants.prune(now) as i64);
        Ok(g)
    }

    /// Index a grant just committed with its approval.
    pub(super) fn granted(&self, g: &Grant) {
        self.0.grants.insert(g.clone());
        let metrics = &self.parts().metrics;
        metrics.grant_events.with_label_values(&["created"]).inc();
        metrics
            .grants_active
            .set(self.0.grants.prune(self.now_ms()) as i64);
    }

    /// Read grant `id` again (another replica created or revoked it).
    pub(super) async fn reload_grant(&self, id: &str) {
        match self.grant(id).await {
            Ok(g) if g.live(self.now_ms()) => self.0.grants.insert(g),
            Ok(g) => self.0.grants.remove(&g.class, &g.id),
            Err(e) => tracing::warn!(grant = %id, error = %e, "reloading a grant failed"),
        }
        self.prune_grants();
    }

    /// Forget expired grants and load the live ones from the store.
    pub(super) async fn load_grants(&self) -> Result<(), GateError> {
        for g in self.list_grants(true, usize::MAX >> 1).await? {
            self.0.grants.insert(g);
        }
        self.prune_grants();
        Ok(())
    }

    /// Forget expired grants (the store keeps them, for the record).
    pub(super) fn prune_grants(&self) {
        let live = self.0.grants.prune(self.now_ms());
        self.parts().metrics.grants_active.set(live as i64);
    }

    /// The approved call's arguments as the policy saw them (to fix the
    /// values a grant is narrowed to).
    pub(super) fn approval_args(&self, a: &Approval) -> Result<serde_json::Value, GateError> {
        let route = self.route_of(a)?;
        let judged = body::judge(
            &a.header_map(),
            Bytes::from(a.body.clone()),
            u64::MAX,
            route.config.opaque_body,
        )
        .map_err(|e| GateError::Invalid(e.to_string()))?;
        let query = parse_query(a.target.split_once('?').map(|(_, q)| q));
        let args = input::args(&judged.value, &query);
        serde_json::to_value(&args).map_err(|e| GateError::Invalid(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Risk;

    fn grant(id: &str, class: &ActionClass, narrow: serde_json::Value, expires_at: i64) -> Grant {
        Grant {
            id: id.into(),
            approval: "a1".into(),
            agent: class.agent.clone(),
            route: "email".into(),
            path: "/mail/send".into(),
            tool: class.tool.clone(),
            class: class.fingerprint(),
            shape: class.shape.clone(),
            narrow: serde_json::from_value(narrow).unwrap(),
            risk: Risk::High,
            granted_by: vec!["alice".into()],
            created_at: 0,
            expires_at,
            revoked: None,
        }
    }

    fn args(v: serde_json::Value) -> regorus::Value {
        regorus::Value::from_json_str(&v.to_string()).unwrap()
    }

    #[test]
    fn a_grant_covers_its_class_route_values_and_time_only() {
        let to_a = args(json!({"to": "a@x.com", "subject": "hi"}));
        let to_b = args(json!({"to": "b@x.com", "subject": "hi"}));
        let class = ActionClass::new("bot", "send_email", "POST", &to_a);
        let grants = Grants::default();
        grants.insert(grant("g1", &class, json!({"to": "a@x.com"}), 1_000));
        let at = ("email", "/mail/send");
        assert_eq!(grants.matching(&class, at, &to_a, 999).len(), 1);
        let none = |at, args, now| grants.matching(&class, at, args, now).is_empty();
        assert!(none(at, &to_a, 1_000), "expired");
        assert!(none(at, &to_b, 0), "narrowed");
        assert!(none(("other", "/mail/send"), &to_a, 0), "another route");
        assert!(none(("email", "/mail/delete"), &to_a, 0), "another path");
        let other_agent = ActionClass::new("bot2", "send_email", "POST", &to_a);
        assert!(grants.matching(&other_agent, at, &to_a, 0).is_empty());
        let other_shape =
            ActionClass::new("bot", "send_email", "POST", &args(json!({"to": "a@x.com"})));
        assert!(grants.matching(&other_shape, at, &to_a, 0).is_empty());

        assert_eq!(grants.prune(999), 1);
        grants.remove(&class.fingerprint(), "g1");
        assert!(grants.matching(&class, at, &to_a, 0).is_empty(), "removed");
        grants.insert(grant("g2", &class, json!({}), 10));
        assert_eq!(grants.prune(10), 0, "expired grants are forgotten");
    }
}
