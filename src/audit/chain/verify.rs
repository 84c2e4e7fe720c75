//! Verification, one record at a time: [`Verifier`] holds only the last
//! record's position and hash, so a log of any length verifies in constant
//! memory straight from the store or an export file.

use super::{AuditKey, ChainError, Head, Record, GENESIS};

/// What a verification proved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Records checked.
    pub records: u64,
    /// Decision records among them whose details retention pruned.
    pub pruned: u64,
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

/// Checks records in order as they come.
pub struct Verifier<'k> {
    key: Option<&'k AuditKey>,
    prev_seq: i64,
    prev_hash: String,
    done: Verified,
}

impl<'k> Verifier<'k> {
    /// Start after `anchor`; with `key`, MACs are checked too.
    pub fn new(anchor: &Anchor, key: Option<&'k AuditKey>) -> Verifier<'k> {
        Verifier {
            key,
            prev_seq: anchor.seq,
            prev_hash: anchor.hash.clone(),
            done: Verified {
                records: 0,
                pruned: 0,
                keyed_from: None,
            },
        }
    }

    /// Check the next record.
    pub fn push(&mut self, r: &Record) -> Result<(), ChainError> {
        if let Some(k) = self.key {
            match (&r.mac, self.done.keyed_from) {
                (Some(m), _) => {
                    if !AuditKey::check(&k.record_mac(&r.hash), m) {
                        return Err(ChainError::BadMac { seq: r.seq });
                    }
                    self.done.keyed_from.get_or_insert(r.seq);
                }
                (None, Some(_)) => return Err(ChainError::Unkeyed { seq: r.seq }),
                (None, None) => {}
            }
        }
        if r.seq != self.prev_seq + 1 {
            return Err(ChainError::Gap {
                seq: r.seq,
                expected: self.prev_seq + 1,
            });
        }
        if r.prev_hash != self.prev_hash {
            return Err(ChainError::Broken {
                seq: r.seq,
                prev: self.prev_seq,
            });
        }
        if r.check_contents()? {
            self.done.pruned += 1;
        }
        self.prev_hash.clone_from(&r.hash);
        self.prev_seq = r.seq;
        self.done.records += 1;
        Ok(())
    }

    /// After the last record: with a key the head's MAC must be valid, and
    /// the chain must end where the head says.
    pub fn finish(self, head: Option<&Head>) -> Result<Verified, ChainError> {
        match (self.key, head) {
            (Some(k), Some(h)) => {
                let ok = h
                    .mac
                    .as_deref()
                    .is_some_and(|m| AuditKey::check(&k.head_mac(h.seq, &h.hash), m));
                if !ok {
                    return Err(ChainError::BadHead);
                }
            }
            (Some(_), None) if self.done.records > 0 => return Err(ChainError::BadHead),
            _ => {}
        }
        if let Some(h) = head {
            if h.seq != self.prev_seq || h.hash != self.prev_hash {
                return Err(ChainError::Truncated {
                    last: self.prev_seq,
                    head: h.seq,
                });
            }
        }
        Ok(self.done)
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
/// (e.g. an export made with `--since`, or a store pruned to a checkpoint).
pub fn verify_from<'a>(
    anchor: &Anchor,
    records: impl IntoIterator<Item = &'a Record>,
    key: Option<&AuditKey>,
    head: Option<&Head>,
) -> Result<Verified, ChainError> {
    let mut v = Verifier::new(anchor, key);
    for r in records {
        v.push(r)?;
    }
    v.finish(head)
}

/// Recompute the chain over `records` (in stored order); how many records.
pub fn verify<'a>(records: impl IntoIterator<Item = &'a Record>) -> Result<u64, ChainError> {
    let mut v = Verifier::new(&Anchor::genesis(), None);
    for r in records {
        v.push(r)?;
    }
    Ok(v.done.records)
}
