use super::*;

/// The chain's arithmetic is a published format: this hash was computed
/// independently (Python: `sha256(prev + json.dumps(body, sort_keys=True,
/// separators=(",", ":")))`). If it changes, old chains stop verifying.
#[test]
fn the_hash_of_a_fixed_record_never_changes() {
    let e = Event::new(
        "alice",
        "approve",
        "a1",
        json!({"b": 1, "a": [1, "x"], "nested": {"z": true, "y": null}}),
    );
    assert_eq!(
        hash_inline(1, "2026-11-22T00:00:00Z", &e, GENESIS),
        "4bc073d474a86c31b9d6ec524d31acf2773ab1498ac35052ec4d5e4272e63c34"
    );
    // Records written today name their details by digest (same Python,
    // with `details` replaced by `details_sha256 = sha256(canonical details)`).
    let r = seal(1, "2026-11-22T00:00:00Z".into(), e, GENESIS.into(), None);
    assert_eq!(
        r.details_sha256.as_deref(),
        Some("0f0619802c23286eb05deb6b276d65fa5ef4dd48d3ed30894c94ae216c2cb997")
    );
    assert_eq!(
        r.hash,
        "b1a6d50cc4a8356c5efdcfa6a007af5783aece8e407c87f9f2205c9ce82e460c"
    );
}

#[test]
fn pruned_decisions_still_chain_but_nothing_else_may_lose_its_details() {
    let mut c: Vec<Record> = Vec::new();
    let mut prev = GENESIS.to_string();
    for (i, event) in ["decision", "gate", "decision", "approve"]
        .iter()
        .enumerate()
    {
        let e = Event::new("bot", event, "x", json!({"reasons": ["r"], "i": i}));
        let r = seal(
            i as i64 + 1,
            format!("2026-11-22T00:00:0{i}Z"),
            e,
            prev,
            None,
        );
        prev = r.hash.clone();
        c.push(r);
    }
    c[0] = c[0].pruned();
    c[2] = c[2].pruned();
    let v = verify_keyed(&c, None, None).unwrap();
    assert_eq!((v.records, v.pruned), (4, 2));
    assert!(c[0].is_pruned() && !c[1].is_pruned());
    // Details swapped for others: their digest no longer matches.
    let mut altered = c.clone();
    altered[2].details = json!({"reasons": ["other"], "i": 2});
    assert_eq!(verify(&altered), Err(ChainError::Altered { seq: 3 }));
    // An approval record cannot be "pruned" to hide what it said.
    let mut hidden = c.clone();
    hidden[3] = hidden[3].pruned();
    assert_eq!(
        verify(&hidden),
        Err(ChainError::PrunedNotDecision { seq: 4 })
    );
    assert!(!hidden[3].hash_matches());
}

#[test]
fn verification_starts_from_a_checkpoint_only_the_key_could_sign() {
    let key = AuditKey::new(&[7; 32]);
    let c = keyed_chain(5, Some(&key));
    let h = head(&c, &key);
    let cp = Checkpoint::after(&c[1], Some(&key));
    let anchor = cp.anchor(Some(&key)).unwrap();
    let v = verify_from(&anchor, &c[2..], Some(&key), Some(&h)).unwrap();
    assert_eq!(v.records, 3);
    // Dropping one more record needs a new checkpoint; reusing the old one fails.
    assert!(verify_from(&anchor, &c[3..], Some(&key), Some(&h)).is_err());
    let forged = Checkpoint::after(&c[2], None);
    assert_eq!(
        forged.anchor(Some(&key)),
        Err(ChainError::BadCheckpoint { seq: 3 })
    );
    assert!(
        forged.anchor(None).is_ok(),
        "without a key a checkpoint is only consistency"
    );
}

#[test]
fn canonical_json_sorts_keys_at_every_depth() {
    let mut out = String::new();
    canonical(
        &json!({"b": {"d": 1, "c": [{"f": 2, "e": "\u{e9}\n"}]}, "a": null}),
        &mut out,
    );
    assert_eq!(out, r#"{"a":null,"b":{"c":[{"e":"é\n","f":2}],"d":1}}"#);
}

fn chain(n: i64) -> Vec<Record> {
    keyed_chain(n, None)
}

fn keyed_chain(n: i64, key: Option<&AuditKey>) -> Vec<Record> {
    let mut prev = GENESIS.to_string();
    (1..=n)
        .map(|seq| {
            let r = seal(
                seq,
                format!("2026-11-22T00:00:0{seq}Z"),
                Event::new("alice", "approve", "a1", json!({"n": seq})),
                prev.clone(),
                key,
            );
            prev = r.hash.clone();
            r
        })
        .collect()
}

#[test]
fn a_clean_chain_verifies() {
    assert_eq!(verify(&chain(5)), Ok(5));
    assert_eq!(verify(&[]), Ok(0));
}

#[test]
fn tampering_is_found_and_located() {
    let mut c = chain(5);
    c[2].details = json!({"n": 99});
    assert_eq!(verify(&c), Err(ChainError::Altered { seq: 3 }));

    let mut c = chain(5);
    c.remove(3);
    assert_eq!(
        verify(&c),
        Err(ChainError::Gap {
            seq: 5,
            expected: 4
        })
    );

    let mut c = chain(5);
    c.swap(1, 2);
    assert!(matches!(verify(&c), Err(ChainError::Gap { seq: 3, .. })));

    // Renumbered after a deletion: the links no longer match.
    let mut c = chain(5);
    c.remove(1);
    for (i, r) in c.iter_mut().enumerate() {
        r.seq = i as i64 + 1;
    }
    assert_eq!(verify(&c), Err(ChainError::Broken { seq: 2, prev: 1 }));
}

fn head(c: &[Record], key: &AuditKey) -> Head {
    let last = c.last().unwrap();
    Head {
        seq: last.seq,
        hash: last.hash.clone(),
        mac: Some(key.head_mac(last.seq, &last.hash)),
    }
}

#[test]
fn a_key_catches_rewrites_and_truncation() {
    let key = AuditKey::new(&[7; 32]);
    let c = keyed_chain(5, Some(&key));
    let h = head(&c, &key);
    assert_eq!(
        verify_keyed(&c, Some(&key), Some(&h)),
        Ok(Verified {
            records: 5,
            pruned: 0,
            keyed_from: Some(1)
        })
    );

    // Rewritten and every later hash recomputed: the chain is consistent
    // again, but the MACs cannot be recomputed without the key.
    let mut forged = c.clone();
    forged[2].details = json!({"n": 99});
    let mut prev = forged[1].hash.clone();
    for r in forged.iter_mut().skip(2) {
        let e = Event::new(&r.actor, &r.event, &r.subject, r.details.clone());
        *r = Record {
            mac: r.mac.clone(),
            ..seal(r.seq, r.ts.clone(), e, prev.clone(), None)
        };
        prev = r.hash.clone();
    }
    assert_eq!(verify(&forged), Ok(5));
    assert_eq!(
        verify_keyed(&forged, Some(&key), Some(&h)),
        Err(ChainError::BadMac { seq: 3 })
    );

    // Truncated: the prefix is intact, but the head names record 5.
    assert_eq!(
        verify_keyed(&c[..3], Some(&key), Some(&h)),
        Err(ChainError::Truncated { last: 3, head: 5 })
    );
    // A head rewritten to match needs the key.
    let fake = Head {
        seq: 3,
        hash: c[2].hash.clone(),
        mac: Some("00".repeat(32)),
    };
    assert_eq!(
        verify_keyed(&c[..3], Some(&key), Some(&fake)),
        Err(ChainError::BadHead)
    );
    // MACs stripped from the end.
    let mut stripped = c.clone();
    stripped[4].mac = None;
    assert_eq!(
        verify_keyed(&stripped, Some(&key), Some(&h)),
        Err(ChainError::Unkeyed { seq: 5 })
    );
    // The wrong key.
    let other = AuditKey::new(&[8; 32]);
    assert_eq!(
        verify_keyed(&c, Some(&other), Some(&h)),
        Err(ChainError::BadMac { seq: 1 })
    );
}

#[test]
fn json_patch_describes_the_change() {
    let from = json!({"to": "a@x", "cc": ["b"], "subject": "hi", "meta": {"a": 1}});
    let to = json!({"to": "a@x", "cc": ["c"], "body": "new", "meta": {"a": 2}});
    assert_eq!(
        json_patch(&from, &to),
        json!([
            {"op": "replace", "path": "/cc", "value": ["c"]},
            {"op": "replace", "path": "/meta/a", "value": 2},
            {"op": "remove", "path": "/subject"},
            {"op": "add", "path": "/body", "value": "new"}
        ])
    );
    assert_eq!(
        json_patch(&json!(1), &json!("x")),
        json!([{"op": "replace", "path": "", "value": "x"}])
    );
}
