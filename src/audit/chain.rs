//! The audit chain's types and arithmetic: records chained by SHA-256,
//! optional keyed MACs, verification and JSON patches. Imports nothing of
//! Latch's but [`crate::digest`], so the store and the CLI can use it freely.
//!
//!
//! `hash = SHA-256(prev_hash ‖ canonical JSON of the record without its hash)`,
//! where the record names its details by their digest
//! (`details_sha256 = SHA-256(canonical JSON of details)`); canonical JSON
//! has sorted keys and no insignificant whitespace, so anyone can recompute
//! the chain with a few lines of code. Changing, removing or reordering a
//! record breaks every hash after it. (Records written before the digest
//! existed hash their details inline; they verify as they were written.)
//!
//! Retention can *prune* an old allow/deny decision record: its details are
//! dropped, its digest stays, so the chain still verifies and shows that a
//! decision record was there. Only `decision` records may be pruned; any
//! other record without its details is reported as altered. Retention can
//! also drop the oldest records altogether behind a *checkpoint* (the hash
//! at the prune point, with a MAC when keyed) that verification starts from.
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

mod patch;
mod verify;
pub use patch::json_patch;
pub use verify::{verify, verify_from, verify_keyed, Anchor, Verified, Verifier};

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

    /// The MAC of a retention checkpoint.
    pub fn checkpoint_mac(&self, seq: i64, hash: &str) -> String {
        self.mac(
            "latch-audit-checkpoint",
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

/// Where retention cut the chain: every record up to `seq` was dropped; the
/// first record kept follows `hash`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Sequence number of the last dropped record.
    pub seq: i64,
    /// Its hash.
    pub hash: String,
    /// Its time.
    pub ts: String,
    /// `HMAC(key, seq ‖ hash)` when the chain is keyed.
    pub mac: Option<String>,
}

impl Checkpoint {
    /// A checkpoint after record `r` (with a MAC when keyed).
    pub fn after(r: &Record, key: Option<&AuditKey>) -> Checkpoint {
        Checkpoint {
            seq: r.seq,
            hash: r.hash.clone(),
            ts: r.ts.clone(),
            mac: key.map(|k| k.checkpoint_mac(r.seq, &r.hash)),
        }
    }

    /// Where verification starts; with `key`, only from a checkpoint it signed.
    pub fn anchor(&self, key: Option<&AuditKey>) -> Result<Anchor, ChainError> {
        if let Some(k) = key {
            let ok = self
                .mac
                .as_deref()
                .is_some_and(|m| AuditKey::check(&k.checkpoint_mac(self.seq, &self.hash), m));
            if !ok {
                return Err(ChainError::BadCheckpoint { seq: self.seq });
            }
        }
        Ok(Anchor {
            seq: self.seq,
            hash: self.hash.clone(),
        })
    }
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
    /// Details (for a modify, a JSON Patch from the original body); `null`
    /// once pruned by retention.
    pub details: Value,
    /// SHA-256 of the canonical details (absent on records written before
    /// digests: their hash covers the details inline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details_sha256: Option<String>,
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
        self.check_contents().is_ok()
    }

    /// Whether its details were pruned by retention.
    pub fn is_pruned(&self) -> bool {
        self.details.is_null()
            && self
                .details_sha256
                .as_deref()
                .is_some_and(|d| d != details_digest(&Value::Null))
    }

    /// Check the hash against the contents. `Ok(true)`: a decision record
    /// whose details retention pruned (its digest still chains).
    pub fn check_contents(&self) -> Result<bool, ChainError> {
        let altered = ChainError::Altered { seq: self.seq };
        let Some(digest) = &self.details_sha256 else {
            let e = Event {
                actor: self.actor.clone(),
                event: self.event.clone(),
                subject: self.subject.clone(),
                details: self.details.clone(),
            };
            return match hash_inline(self.seq, &self.ts, &e, &self.prev_hash) == self.hash {
                true => Ok(false),
                false => Err(altered),
            };
        };
        if hash_v2(self, digest) != self.hash {
            return Err(altered);
        }
        if self.is_pruned() {
            return match self.event.as_str() {
                "decision" => Ok(true),
                _ => Err(ChainError::PrunedNotDecision { seq: self.seq }),
            };
        }
        match details_digest(&self.details) == *digest {
            true => Ok(false),
            false => Err(altered),
        }
    }

    /// This record with its details pruned (digest and hash unchanged).
    pub fn pruned(&self) -> Record {
        Record {
            details: Value::Null,
            ..self.clone()
        }
    }
}

/// SHA-256 of the canonical JSON of `details`.
pub fn details_digest(details: &Value) -> String {
    let mut buf = Vec::with_capacity(256);
    canonical_bytes(details, &mut buf);
    crate::digest::hex(&Sha256::digest(&buf))
}

/// The hash of record `r` whose details have digest `details_sha256`.
fn hash_v2(r: &Record, details_sha256: &str) -> String {
    header_hash(
        r.seq,
        &r.ts,
        &r.actor,
        &r.event,
        &r.subject,
        details_sha256,
        &r.prev_hash,
    )
}

fn header_hash(
    seq: i64,
    ts: &str,
    actor: &str,
    event: &str,
    subject: &str,
    details_sha256: &str,
    prev_hash: &str,
) -> String {
    // The canonical JSON of {actor, details_sha256, event, prev_hash, seq,
    // subject, ts}, keys in sorted order, written directly.
    let mut text = Vec::with_capacity(320);
    let field = |name: &str, first: bool, text: &mut Vec<u8>| {
        text.push(if first { b'{' } else { b',' });
        json_str(name, text);
        text.push(b':');
    };
    field("actor", true, &mut text);
    json_str(actor, &mut text);
    field("details_sha256", false, &mut text);
    json_str(details_sha256, &mut text);
    field("event", false, &mut text);
    json_str(event, &mut text);
    field("prev_hash", false, &mut text);
    json_str(prev_hash, &mut text);
    field("seq", false, &mut text);
    text.extend_from_slice(seq.to_string().as_bytes());
    field("subject", false, &mut text);
    json_str(subject, &mut text);
    field("ts", false, &mut text);
    json_str(ts, &mut text);
    text.push(b'}');
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(&text);
    crate::digest::hex(&h.finalize())
}

/// The hash of a record written before details digests (details inline).
pub fn hash_inline(seq: i64, ts: &str, e: &Event, prev_hash: &str) -> String {
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
    let mut buf = Vec::with_capacity(256);
    canonical_bytes(v, &mut buf);
    out.push_str(&String::from_utf8_lossy(&buf));
}

/// [`canonical`] into bytes, without intermediate strings (verification
/// runs this for every record).
fn canonical_bytes(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                json_str(k, out);
                out.push(b':');
                canonical_bytes(v, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical_bytes(item, out);
            }
            out.push(b']');
        }
        scalar => {
            // Writing a scalar into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut *out, scalar);
        }
    }
}

/// `s` as a JSON string, escaped as `serde_json` escapes it.
fn json_str(s: &str, out: &mut Vec<u8>) {
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Seal `event` as record `seq` after `prev_hash` (with a MAC when keyed).
pub fn seal(
    seq: i64,
    ts: String,
    event: Event,
    prev_hash: String,
    key: Option<&AuditKey>,
) -> Record {
    seal_with_text(seq, ts, event, prev_hash, key).0
}

/// [`seal`], also returning the canonical JSON of the details that the
/// digest covers — the text to store, so it is not serialised twice.
pub fn seal_with_text(
    seq: i64,
    ts: String,
    event: Event,
    prev_hash: String,
    key: Option<&AuditKey>,
) -> (Record, String) {
    let mut text = Vec::with_capacity(256);
    canonical_bytes(&event.details, &mut text);
    let digest = crate::digest::hex(&Sha256::digest(&text));
    let hash = header_hash(
        seq,
        &ts,
        &event.actor,
        &event.event,
        &event.subject,
        &digest,
        &prev_hash,
    );
    let record = Record {
        mac: key.map(|k| k.record_mac(&hash)),
        seq,
        ts,
        actor: event.actor,
        event: event.event,
        subject: event.subject,
        details: event.details,
        details_sha256: Some(digest),
        prev_hash,
        hash,
    };
    // Canonical JSON is UTF-8: it was written from strings and numbers.
    (record, String::from_utf8(text).unwrap_or_default())
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
    /// A record other than an allow/deny decision lost its details.
    #[error("record {seq}: its details were removed, but retention prunes only allow/deny decision records")]
    PrunedNotDecision {
        /// The record.
        seq: i64,
    },
    /// The checkpoint retention left is missing its MAC or it does not match.
    #[error("the retention checkpoint at record {seq} is forged (its MAC does not match the key)")]
    BadCheckpoint {
        /// Where the checkpoint says the pruned records ended.
        seq: i64,
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

#[cfg(test)]
mod tests;
