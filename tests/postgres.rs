//! Latch on PostgreSQL: the store against a real server the test starts
//! (Debian's `postgresql` binaries, `initdb` in a temporary directory), the
//! gate end to end on it, and two replicas sharing it.

use std::sync::Arc;

use latch::audit::chain::Event;
use latch::gate::model::State;
use latch::store::notify::{NewDelivery, NotifyStore};
use latch::store::postgres::PgStore;
use latch::store::{Inserted, Store};
use latch::testing::Postgres;
use serde_json::json;

fn event(subject: &str) -> Event {
    Event::new("bot", "decision", subject, json!({"action": "allow"}))
}

#[test]
fn two_stores_on_one_database_write_one_unbroken_chain() {
    let Some(pg) = Postgres::start() else { return };
    let a = Arc::new(PgStore::connect(&pg.url, None).unwrap());
    // A second replica migrates nothing and shares everything.
    let b = Arc::new(PgStore::connect(&pg.url, None).unwrap());
    assert_eq!(b.migrate().unwrap(), 0);
    let writers: Vec<_> = [a.clone(), b.clone()]
        .into_iter()
        .enumerate()
        .map(|(n, s)| {
            std::thread::spawn(move || {
                for i in 0..50 {
                    s.append_audit(&[event(&format!("r{n}-{i}")), event(&format!("r{n}-{i}b"))])
                        .unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let head = a.audit_head().unwrap().unwrap();
    assert_eq!(head.seq, 200);
    let records = b.audit_after(0, 1000).unwrap();
    assert_eq!(records.len(), 200);
    for pair in records.windows(2) {
        assert_eq!(pair[1].prev_hash, pair[0].hash, "one chain, in order");
        assert_eq!(pair[1].seq, pair[0].seq + 1);
    }
    let verified = latch::audit::verify_store(a.as_ref(), None).unwrap();
    assert!(verified.is_ok(), "{verified:?}");
}

#[test]
fn approvals_are_shared_and_a_change_wins_once() {
    let Some(pg) = Postgres::start() else { return };
    let a = PgStore::connect(&pg.url, None).unwrap();
    let b = PgStore::connect(&pg.url, None).unwrap();
    let mut approval = latch::testing::sample_approval("ap-1", "bot");
    approval.idempotency_key = Some("k1".into());
    assert_eq!(
        a.insert_approval(&approval, &event("ap-1"), 10).unwrap(),
        Inserted::New
    );
    // The same key on another replica finds the first approval.
    let mut again = latch::testing::sample_approval("ap-2", "bot");
    again.idempotency_key = Some("k1".into());
    assert!(
        matches!(b.insert_approval(&again, &event("ap-2"), 10).unwrap(), Inserted::Existing(e) if e.id == "ap-1")
    );
    let stored = b.approval("ap-1").unwrap().unwrap();
    assert_eq!(stored.body, approval.body);
    // Two replicas expire it at once: one wins.
    let mut expired = stored.next_version();
    expired.state = State::Expired;
    let wins = [&a, &b]
        .iter()
        .filter(|s| {
            s.update_approval(&expired, stored.version, &[event("ap-1")], None)
                .unwrap()
        })
        .count();
    assert_eq!(wins, 1);
    assert_eq!(a.approval("ap-1").unwrap().unwrap().state, State::Expired);
    assert_eq!(
        b.count_approvals(Some(State::Expired), Some("bot"))
            .unwrap(),
        1
    );
    assert_eq!(
        a.audit_of("ap-1").unwrap().len(),
        2,
        "proposal and the one expiry"
    );
}

#[test]
fn each_notification_delivery_goes_to_one_replica() {
    let Some(pg) = Postgres::start() else { return };
    let a = PgStore::connect(&pg.url, None).unwrap();
    let b = PgStore::connect(&pg.url, None).unwrap();
    let d = |n: usize| NewDelivery {
        approval: format!("ap-{n}"),
        channel: "slack".into(),
        kind: "requested".into(),
        payload: json!({}),
        created_at: 1,
    };
    a.fan_out(&[], &(0..20).map(d).collect::<Vec<_>>()).unwrap();
    let mine = a.claim_deliveries(10, 1000, 15).unwrap();
    let theirs = b.claim_deliveries(10, 1000, 15).unwrap();
    assert_eq!(mine.len() + theirs.len(), 20);
    assert!(mine.iter().all(|m| theirs.iter().all(|t| t.id != m.id)));
}
