use super::*;

fn row(fp: &str, seen: u64) -> HistoryRow {
    HistoryRow {
        fingerprint: fp.into(),
        agent: "bot".into(),
        tool: "email".into(),
        shape: "{to:s}".into(),
        stats: Stats {
            seen,
            first_seen: Some(10),
            last_seen: Some(20),
            approved: 1,
            rejected: 0,
            last_decision: Some("allow".into()),
            decision_ms_total: 1500,
        },
    }
}

#[test]
fn history_round_trips_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/latch.db");
    {
        let s = SqliteStore::open(&path, None).unwrap();
        s.add_history(&[row("a", 1), row("b", 2)]).unwrap();
        let mut later = row("a", 5);
        later.stats.first_seen = Some(30);
        later.stats.last_seen = Some(40);
        later.stats.last_decision = None;
        s.add_history(&[later]).unwrap();
    }
    let s = SqliteStore::open(&path, None).unwrap();
    let mut rows = s.load_history().unwrap();
    rows.sort_by(|x, y| x.fingerprint.cmp(&y.fingerprint));
    // Increments add up; the earliest first and latest last sighting stay.
    let mut a = row("a", 6);
    a.stats.approved = 2;
    a.stats.decision_ms_total = 3000;
    a.stats.last_seen = Some(40);
    assert_eq!(rows, vec![a, row("b", 2)]);
    s.ping().unwrap();
}

#[test]
fn refuses_a_newer_schema() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("latch.db");
    drop(SqliteStore::open(&path, None).unwrap());
    let c = Connection::open(&path).unwrap();
    c.pragma_update(None, "user_version", 99).unwrap();
    drop(c);
    let err = SqliteStore::open(&path, None).err().unwrap();
    assert!(format!("{err:#}").contains("newer"), "{err:#}");
}

fn synchronous(s: &SqliteStore) -> i64 {
    let db = s.lock().unwrap();
    db.conn
        .query_row("PRAGMA synchronous", [], |r| r.get(0))
        .unwrap()
}

fn decision(n: u32) -> Event {
    Event::new(
        "bot",
        "decision",
        &n.to_string(),
        serde_json::json!({"n": n}),
    )
}

/// Decision records and history commit unsynced (`NORMAL` = 1) with no
/// PRAGMA between them; whatever else commits is synced (`FULL` = 2) again.
#[test]
fn only_decision_records_and_history_commit_unsynced() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(&dir.path().join("latch.db"), None).unwrap();
    assert_eq!(synchronous(&s), 2);
    s.append_audit(vec![decision(1)]).unwrap();
    assert_eq!(synchronous(&s), 1);
    s.add_history(&[row("a", 1)]).unwrap();
    s.append_audit(vec![decision(2), decision(3)]).unwrap();
    assert_eq!(synchronous(&s), 1);
    s.ping().unwrap();
    assert_eq!(synchronous(&s), 2, "a synced path syncs again");
    s.append_audit(vec![decision(4)]).unwrap();
    assert_eq!(s.audit_head().unwrap().unwrap().seq, 4);
}

/// A body that fails rolls its transaction back and leaves the connection
/// ready for the next commit; the chain's tail does not move.
#[test]
fn a_failed_unsynced_commit_rolls_back() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(&dir.path().join("latch.db"), None).unwrap();
    s.append_audit(vec![decision(1)]).unwrap();
    let failed: anyhow::Result<()> = unsynced(&mut s.lock().unwrap(), |conn| {
        conn.execute("DELETE FROM audit", [])?;
        anyhow::bail!("the body failed")
    });
    assert!(failed.is_err());
    assert!(s.lock().unwrap().conn.is_autocommit());
    // A statement that fails inside the body.
    let failed = unsynced(&mut s.lock().unwrap(), |conn| {
        conn.execute("INSERT INTO audit (seq) VALUES (1)", [])?;
        Ok(())
    });
    assert!(failed.is_err());
    s.append_audit(vec![decision(2)]).unwrap();
    let head = s.audit_head().unwrap().unwrap();
    assert_eq!(head.seq, 2);
    let db = s.lock().unwrap();
    let mut stmt = db
        .conn
        .prepare("SELECT seq FROM audit ORDER BY seq")
        .unwrap();
    let seqs: Vec<i64> = stmt
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(seqs, vec![1, 2], "the delete was rolled back");
}
