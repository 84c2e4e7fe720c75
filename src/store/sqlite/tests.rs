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
