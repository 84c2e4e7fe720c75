//! The audit chain's types and arithmetic: records chained by SHA-256,
//! optional keyed MACs, verification and JSON patches. Imports nothing of
//! Latch's but [`crate::digest`], so the store and the CLI can use it freely.
//!
//!
//! `hash = SHA-256(prev_hash ‖ canonical JSON of the record without its hash)`;
//! canonical JSON has sorted keys and no insignificant whitespace, so anyone
//! can recompute the chain with a few lines of code. Changing, removing or
//! reordering a record breaks every hash after it.
//!
//! That alone proves little against someone who can write the database: they
//! can rewrite a record and recompute every later hash, or drop the newest
//! records. With `[audit] key_env` set, every record also carries
//! `mac = HMAC-SHA256(key, hash)` and the store keeps a keyed **head**
//! (`HMAC(key, seq ‖ hash)` of the newest record), written in the same
//! transaction as the records. The key never enters the database, so without
//! it a rewritten record cannot get a valid MAC and a truncated chain no
//! longer ends where the head says.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// The key that makes the chain unforgeable without it (`[audit] key_env`).
#[derive(Clone)]
pub struct AuditKey(std::sync::Arc<[u8]>);

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditKey(…)")
    }
}

impl AuditKey {
    /// Shortest key accepted, in bytes.
    pub const MIN_LEN: usize = 32;

    /// A key from its bytes.
    pub fn new(bytes: &[u8]) -> AuditKey {
        AuditKey(bytes.into())
    }

    fn mac(&self, label: &str, parts: &[&[u8]]) -> String {
        // HMAC takes keys of any length; `new_from_slice` cannot fail.
        let Ok(mut m) = Hmac::<Sha256>::new_from_slice(&self.0) else {
            return String::new();
        };
        m.update(label.as_bytes());
        for p in parts {
            m.update(&[0]);
            m.update(p);
        }
        crate::digest::hex(&m.finalize().into_bytes())
    }

    /// The MAC of a record with this hash.
    pub fn record_mac(&self, hash: &str) -> String {
        self.mac("latch-audit-record", &[hash.as_bytes()])
    }

    /// The MAC of a chain head.
    pub fn head_mac(&self, seq: i64, hash: &str) -> String {
        self.mac(
            "latch-audit-head",
            &[seq.to_string().as_bytes(), hash.as_bytes()],
        )
    }

    /// Whether `r` is exactly as Latch wrote it: its hash matches its
    /// contents and its MAC matches the hash.
    pub fn vouches_for(&self, r: &Record) -> bool {
        r.mac
            .as_deref()
            .is_some_and(|m| Self::check(&self.record_mac(&r.hash), m))
            && r.hash_matches()
    }

    fn check(expected: &str, presented: &str) -> bool {
        use subtle::ConstantTimeEq;
        expected.len() == presented.len()
            && bool::from(expected.as_bytes().ct_eq(presented.as_bytes()))
    }
}

/// Where the chain ends, as last written (kept beside the records).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    /// Sequence number of the newest record.
    pub seq: i64,
    /// Its hash.
    pub hash: String,
    /// `HMAC(key, seq ‖ hash)` when a key was configured.
    pub mac: Option<String>,
}

/// `prev_hash` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// An event to be appended (sequence, time and hashes are assigned by the store).
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Who did it: a principal id or `latch`.
    pub actor: String,
    /// What happened, e.g. `decision`, `gate`, `approve`, `execute`.
    pub event: String,
    /// What it happened to: a request or approval id.
    pub subject: String,
    /// Event-specific facts.
    pub details: Value,
}

impl Event {
    /// Build an event.
    pub fn new(actor: &str, event: &str, subject: &str, details: Value) -> Event {
        Event {
            actor: actor.to_string(),
            event: event.to_string(),
            subject: subject.to_string(),
            details,
        }
    }
}

/// A stored audit record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Position in the chain, from 1, without gaps.
    pub seq: i64,
    /// UTC RFC 3339 time from the server clock.
    pub ts: String,
    /// Who.
    pub actor: String,
    /// What.
    pub event: String,
    /// To what.
    pub subject: String,
    /// Details (for a modify, a JSON Patch from the original body).
    pub details: Value,
    /// Hash of the previous record (`GENESIS` for the first).
    pub prev_hash: String,
    /// This record's hash.
    pub hash: String,
    /// `HMAC-SHA256(key, hash)` when the chain is keyed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

impl Record {
    /// Whether the stored hash is the hash of the record's contents.
    pub fn hash_matches(&self) -> bool {
        let e = Event {
            actor: self.actor.clone(),
            event: self.event.clone(),
            subject: self.subject.clone(),
            details: self.details.clone(),
        };
        hash(self.seq, &self.ts, &e, &self.prev_hash) == self.hash
    }
}

/// The hash of a record with these fields.
pub fn hash(seq: i64, ts: &str, e: &Event, prev_hash: &str) -> String {
    let body = json!({
        "seq": seq, "ts": ts, "actor": e.actor, "event": e.event,
        "subject": e.subject, "details": e.details, "prev_hash": prev_hash,
    });
    let mut text = String::with_capacity(256);
    canonical(&body, &mut text);
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(text.as_bytes());
    crate::digest::hex(&h.finalize())
}

/// Canonical JSON: object keys sorted, no insignificant whitespace. Written
/// out here rather than left to `serde_json`'s map order, which a feature
/// (`preserve_order`) enabled anywhere in the build would change.
pub fn canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                canonical(&map[k.as_str()], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// Seal `event` as record `seq` after `prev_hash` (with a MAC when keyed).
pub fn seal(
    seq: i64,
    ts: String,
    event: Event,
    prev_hash: String,
    key: Option<&AuditKey>,
) -> Record {
    let hash = hash(seq, &ts, &event, &prev_hash);
    Record {
        mac: key.map(|k| k.record_mac(&hash)),
        seq,
        ts,
        actor: event.actor,
        event: event.event,
        subject: event.subject,
        details: event.details,
        prev_hash,
        hash,
    }
}

/// The first problem found when verifying a chain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// A record's content does not match its hash.
    #[error("record {seq}: contents were altered (hash mismatch)")]
    Altered {
        /// The record.
        seq: i64,
    },
    /// A record does not point at the one before it.
    #[error("record {seq}: does not follow record {prev} (missing, reordered or inserted record)")]
    Broken {
        /// The record.
        seq: i64,
        /// The previous record's sequence number.
        prev: i64,
    },
    /// Sequence numbers skip.
    #[error("record {seq}: expected sequence number {expected} (a record is missing)")]
    Gap {
        /// The record.
        seq: i64,
        /// What it should have been.
        expected: i64,
    },
    /// A record's MAC does not match: rewritten by someone without the key.
    #[error("record {seq}: its MAC does not match the key (rewritten, or the wrong key)")]
    BadMac {
        /// The record.
        seq: i64,
    },
    /// A record without a MAC after keyed ones.
    #[error("record {seq}: has no MAC although earlier records do")]
    Unkeyed {
        /// The record.
        seq: i64,
    },
    /// The keyed head is missing or its MAC does not match.
    #[error("the keyed head is missing or forged")]
    BadHead,
    /// The chain does not end where the head says.
    #[error("the chain ends at record {last} but its head names record {head} (records were removed or added at the end)")]
    Truncated {
        /// The newest record present.
        last: i64,
        /// The newest record the head vouches for.
        head: i64,
    },
}

/// What a verification proved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Records checked.
    pub records: u64,
    /// The first record covered by a MAC (all later ones are too), when keyed.
    pub keyed_from: Option<i64>,
}

/// Where a verified stretch of the chain starts: the record before its
/// first one (`seq` 0 and [`GENESIS`] for the whole chain).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anchor {
    /// Sequence number of the record before the first one checked.
    pub seq: i64,
    /// Its hash.
    pub hash: String,
}

impl Anchor {
    /// The start of every chain.
    pub fn genesis() -> Anchor {
        Anchor {
            seq: 0,
            hash: GENESIS.to_string(),
        }
    }
}

/// Verify the chain, and with `key` every MAC and the head: without a key
/// this proves the records are consistent with each other; with it, that
/// nobody without the key changed, added or removed any keyed record.
pub fn verify_keyed<'a>(
    records: impl IntoIterator<Item = &'a Record>,
    key: Option<&AuditKey>,
    head: Option<&Head>,
) -> Result<Verified, ChainError> {
    verify_from(&Anchor::genesis(), records, key, head)
}

/// [`verify_keyed`] for a stretch of the chain that starts after `anchor`
/// (e.g. an export made with `--since`).
pub fn verify_from<'a>(
    anchor: &Anchor,
    records: impl IntoIterator<Item = &'a Record>,
    key: Option<&AuditKey>,
    head: Option<&Head>,
) -> Result<Verified, ChainError> {
    let mut last: Option<&Record> = None;
    let mut keyed_from = None;
    let mut count = 0;
    let mut all = Vec::new();
    for r in records {
        all.push(r);
        if let Some(k) = key {
            match (&r.mac, keyed_from) {
                (Some(m), _) => {
                    if !AuditKey::check(&k.record_mac(&r.hash), m) {
                        return Err(ChainError::BadMac { seq: r.seq });
                    }
                    keyed_from.get_or_insert(r.seq);
                }
                (None, Some(_)) => return Err(ChainError::Unkeyed { seq: r.seq }),
                (None, None) => {}
            }
        }
        last = Some(r);
        count += 1;
    }
    chain_from(anchor, all.iter().copied())?;
    let (last_seq, last_hash) = last.map_or((anchor.seq, anchor.hash.as_str()), |r| {
        (r.seq, r.hash.as_str())
    });
    match (key, head) {
        (Some(k), Some(h)) => {
            let ok = h
                .mac
                .as_deref()
                .is_some_and(|m| AuditKey::check(&k.head_mac(h.seq, &h.hash), m));
            if !ok {
                return Err(ChainError::BadHead);
            }
        }
        (Some(_), None) if count > 0 => return Err(ChainError::BadHead),
        _ => {}
    }
    if let Some(h) = head {
        if h.seq != last_seq || h.hash != last_hash {
            return Err(ChainError::Truncated {
                last: last_seq,
                head: h.seq,
            });
        }
    }
    Ok(Verified {
        records: count,
        keyed_from,
    })
}

/// Recompute the chain over `records` (in stored order).
pub fn verify<'a>(records: impl IntoIterator<Item = &'a Record>) -> Result<u64, ChainError> {
    chain_from(&Anchor::genesis(), records)
}

/// Recompute the chain over `records`, which follow `anchor`.
fn chain_from<'a>(
    anchor: &Anchor,
    records: impl IntoIterator<Item = &'a Record>,
) -> Result<u64, ChainError> {
    let mut prev_hash = anchor.hash.clone();
    let mut prev_seq = anchor.seq;
    let mut count = 0;
    for r in records {
        if r.seq != prev_seq + 1 {
            return Err(ChainError::Gap {
                seq: r.seq,
                expected: prev_seq + 1,
            });
        }
        if r.prev_hash != prev_hash {
            return Err(ChainError::Broken {
                seq: r.seq,
                prev: prev_seq,
            });
        }
        let e = Event {
            actor: r.actor.clone(),
            event: r.event.clone(),
            subject: r.subject.clone(),
            details: r.details.clone(),
        };
        if hash(r.seq, &r.ts, &e, &r.prev_hash) != r.hash {
            return Err(ChainError::Altered { seq: r.seq });
        }
        prev_hash = r.hash.clone();
        prev_seq = r.seq;
        count += 1;
    }
    Ok(count)
}

/// A JSON Patch (RFC 6902) turning `from` into `to`: objects are compared
/// key by key, anything else that differs is replaced whole.
pub fn json_patch(from: &Value, to: &Value) -> Value {
    let mut ops = Vec::new();
    diff("", from, to, &mut ops);
    Value::Array(ops)
}

fn pointer_escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn diff(path: &str, from: &Value, to: &Value, ops: &mut Vec<Value>) {
    match (from, to) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, va) in a {
                let p = format!("{path}/{}", pointer_escape(k));
                match b.get(k) {
                    None => ops.push(json!({"op": "remove", "path": p})),
                    Some(vb) => diff(&p, va, vb, ops),
                }
            }
            for (k, vb) in b {
                if !a.contains_key(k) {
                    let p = format!("{path}/{}", pointer_escape(k));
                    ops.push(json!({"op": "add", "path": p, "value": vb}));
                }
            }
        }
        (a, b) if a == b => {}
        (_, b) => ops.push(json!({"op": "replace", "path": path, "value": b})),
    }
}

#[cfg(test)]
mod tests;
