use super::*;
use crate::config::PrincipalConfig;
use crate::policy::decision::{ApprovalSpec, Escalation, Requirement};
use crate::policy::{Action, Decision, Risk};

fn directory() -> Directory {
    let p = |id: &str, roles: &[&str], owners: &[&str]| PrincipalConfig {
        id: id.into(),
        roles: roles.iter().map(|r| r.to_string()).collect(),
        owners: owners.iter().map(|o| o.to_string()).collect(),
        token_sha256: None,
        cert_names: vec![],
        email: None,
        slack_user: None,
    };
    Directory::new(&[
        p("bot", &["agent"], &["carol"]),
        p("alice", &["lead"], &[]),
        p("carol", &["lead"], &[]),
        p("erin", &["lead", "director"], &[]),
        p("dave", &["director"], &[]),
        p("olga", &["oncall"], &[]),
    ])
}

fn req(role: &str) -> Vec<Requirement> {
    vec![Requirement {
        role: role.into(),
        count: 1,
    }]
}

fn approval(spec: ApprovalSpec) -> Approval {
    Approval {
        id: "a1".into(),
        state: State::Pending,
        agent: "bot".into(),
        route: "r".into(),
        tool: "t".into(),
        method: "POST".into(),
        path: "/t".into(),
        target: "/t".into(),
        headers: vec![],
        body: b"{}".to_vec(),
        body_sha256: "sha".into(),
        original_body: None,
        decision: Decision {
            action: Action::Gate,
            risk: Risk::High,
            reasons: vec![],
            code: "big".into(),
            approval: Some(spec),
            value: None,
            consequences: None,
        },
        reason: None,
        idempotency_key: None,
        peer: "127.0.0.1:1".into(),
        tls: false,
        created_at: 0,
        deadline: 60_000,
        level: 0,
        votes: vec![],
        outcome: None,
        decided_at: None,
        result: None,
        version: 1,
        class: "00112233445566778899aabbccddeeff".into(),
        class_shape: "POST {amount:#,to:s}".into(),
        grant_id: None,
        excluded: vec![],
    }
}

fn spec(require: Vec<Requirement>) -> ApprovalSpec {
    ApprovalSpec {
        require,
        timeout_s: 60,
        on_timeout: OnTimeout::Deny,
        escalate: vec![],
        mode: Mode::Explicit,
        grantable: true,
        notify: vec![],
    }
}

fn act(dir: &Directory, a: &Approval, who: &str, what: Act) -> Result<Transition, GateError> {
    let rules = Rules {
        directory: dir,
        break_glass_roles: &["oncall".to_string()],
        max_grant_s: 3600,
    };
    let actor = dir.get(who).unwrap().as_ref().clone();
    let args = json!({"to": "x@example.com", "amount": 5});
    apply(a, &actor, &what, &rules, None, Some(&args), 1_000)
}

fn approve() -> Act {
    Act::Approve {
        comment: None,
        grant: None,
    }
}

fn approve_granting(ttl_s: u64, class_args: &[&str]) -> Act {
    Act::Approve {
        comment: None,
        grant: Some(GrantAsk {
            ttl_s,
            class_args: class_args.iter().map(|s| s.to_string()).collect(),
        }),
    }
}

#[test]
fn one_person_counts_once_and_quorum_closes_the_approval() {
    let dir = directory();
    let mut both = req("lead");
    both.extend(req("director"));
    let a = approval(spec(both));
    let t = act(&dir, &a, "erin", approve()).unwrap();
    assert_eq!((t.next.state, t.outcome), (State::Pending, "vote"));
    assert_eq!(t.next.version, 2);
    assert!(matches!(
        act(&dir, &t.next, "erin", approve()),
        Err(GateError::AlreadyVoted(_))
    ));
    let done = act(&dir, &t.next, "dave", approve()).unwrap();
    assert_eq!(
        (done.next.state, done.outcome),
        (State::Approved, "approved")
    );
    assert_eq!(done.next.decided_at, Some(1_000));
    assert_eq!(done.next.version, 3, "one change, one version");
    assert_eq!(done.event.details["quorum_met"], true);
}

#[test]
fn agents_owners_and_the_wrong_roles_are_refused() {
    let dir = directory();
    let a = approval(spec(req("lead")));
    for who in ["bot", "carol", "dave"] {
        assert!(
            matches!(act(&dir, &a, who, approve()), Err(GateError::Forbidden(_))),
            "{who}"
        );
    }
    let owner_override = Act::Override {
        reason: "urgent".into(),
    };
    assert!(matches!(
        act(&dir, &a, "alice", owner_override.clone()),
        Err(GateError::Forbidden(_))
    ));
    let t = act(&dir, &a, "olga", owner_override).unwrap();
    assert_eq!((t.next.state, t.outcome), (State::Approved, "overridden"));
}

#[test]
fn a_reject_closes_with_its_reason_and_nothing_moves_a_closed_one() {
    let dir = directory();
    let a = approval(spec(req("lead")));
    let reject = Act::Reject {
        reason: "wrong customer".into(),
        code: Some("wrong_target".into()),
    };
    let t = act(&dir, &a, "alice", reject).unwrap();
    assert_eq!(t.next.state, State::Rejected);
    assert_eq!(t.next.outcome.as_deref(), Some("wrong customer"));
    assert_eq!(t.next.decision.code, "wrong_target");
    assert!(matches!(
        act(&dir, &t.next, "erin", approve()),
        Err(GateError::Closed("rejected"))
    ));
    let modify = Act::Modify {
        body: serde_json::json!({}),
        comment: None,
    };
    assert!(matches!(
        act(&dir, &a, "alice", modify),
        Err(GateError::Invalid(_))
    ));
}

#[test]
fn a_grant_needs_every_quorum_approver_and_takes_the_narrowest_terms() {
    let dir = directory();
    let mut both = req("lead");
    both.extend(req("director"));
    let a = approval(spec(both));
    // alice grants an hour narrowed to the recipient; dave approves only.
    let t = act(&dir, &a, "alice", approve_granting(3600, &["to"])).unwrap();
    assert!(t.grant.is_none(), "no quorum yet");
    let done = act(&dir, &t.next, "dave", approve()).unwrap();
    assert_eq!(done.next.state, State::Approved);
    assert!(done.grant.is_none(), "dave did not grant");

    let t = act(&dir, &a, "alice", approve_granting(3600, &["to"])).unwrap();
    let done = act(&dir, &t.next, "dave", approve_granting(600, &["amount"])).unwrap();
    let g = done.grant.as_ref().expect("both granted");
    assert_eq!(g.expires_at, 1_000 + 600_000, "the shortest time");
    assert_eq!(
        serde_json::to_value(&g.narrow).unwrap(),
        json!({"to": "x@example.com", "amount": 5})
    );
    assert_eq!(g.granted_by, ["alice", "dave"]);
    assert_eq!((g.agent.as_str(), g.risk), ("bot", Risk::High));
    assert_eq!(done.next.grant_id.as_deref(), Some(g.id.as_str()));
    let events = done.events();
    assert_eq!(events[1].event, "grant");
    assert_eq!(events[1].subject, g.id);
}

#[test]
fn bad_grants_are_refused_and_change_nothing() {
    let dir = directory();
    let a = approval(spec(req("lead")));
    for (ask, why) in [
        (approve_granting(3601, &[]), "1 to 3600"),
        (approve_granting(0, &[]), "1 to 3600"),
        (approve_granting(60, &["bcc"]), "no argument `bcc`"),
    ] {
        match act(&dir, &a, "alice", ask) {
            Err(GateError::BadGrant(m)) => assert!(m.contains(why), "{m}"),
            other => panic!("{other:?}"),
        }
    }
    let mut modified = a.clone();
    modified.original_body = Some(b"{}".to_vec());
    assert!(matches!(
        act(&dir, &modified, "alice", approve_granting(60, &[])),
        Err(GateError::BadGrant(_))
    ));
    let mut closed = a.clone();
    closed.decision.approval.as_mut().unwrap().grantable = false;
    assert!(matches!(
        act(&dir, &closed, "alice", approve_granting(60, &[])),
        Err(GateError::BadGrant(_))
    ));
    // Someone who could not approve cannot grant either.
    assert!(matches!(
        act(&dir, &a, "carol", approve_granting(60, &[])),
        Err(GateError::Forbidden(_))
    ));
    let ok = act(&dir, &a, "alice", approve_granting(60, &[])).unwrap();
    assert_eq!(ok.grant.unwrap().expires_at, 61_000);
}

#[test]
fn deadlines_follow_the_spec() {
    let mut s = spec(req("lead"));
    let a = approval(s.clone());
    assert!(on_deadline(&a, 59_999).is_none(), "not due yet");
    let t = on_deadline(&a, 60_000).unwrap();
    assert_eq!((t.next.state, t.outcome), (State::Expired, "expired"));

    s.on_timeout = OnTimeout::Escalate;
    s.escalate = vec![Escalation {
        require: req("director"),
        timeout_s: 3600,
        notify: vec![],
    }];
    let t = on_deadline(&approval(s.clone()), 60_000).unwrap();
    assert_eq!((t.next.level, t.next.deadline), (1, 60_000 + 3_600_000));
    assert_eq!(t.next.requirements()[0].role, "director");
    let t = on_deadline(&t.next, t.next.deadline).unwrap();
    assert_eq!(t.next.state, State::Expired, "no level left");

    s.on_timeout = OnTimeout::Allow;
    let t = on_deadline(&approval(s.clone()), 60_000).unwrap();
    assert_eq!(t.next.state, State::Approved);

    s.mode = Mode::Veto;
    let t = on_deadline(&approval(s), 60_000).unwrap();
    assert_eq!(t.event.event, "veto_window_passed");
}
