//! The decision parser: whatever a policy returns, parsing never panics,
//! and an accepted decision keeps the contract's promises (a gate has
//! requirements, `on_timeout: allow` never for high or critical risk).
#![no_main]

use latch::policy::decision::{Action, OnTimeout, Risk};
use latch::policy::Decision;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = latch::policy::body::parse_json(data) else {
        return;
    };
    let Ok(d) = Decision::parse(&value) else {
        return;
    };
    if d.action == Action::Gate {
        let spec = d
            .approval
            .as_ref()
            .unwrap_or_else(|| panic!("gate without approval: {d:?}"));
        assert!(!spec.require.is_empty());
        assert!(spec
            .require
            .iter()
            .all(|r| r.count > 0 && !r.role.is_empty()));
        assert!(spec.timeout_s > 0);
        if d.risk >= Risk::High {
            assert_ne!(spec.on_timeout, OnTimeout::Allow);
        }
    }
    // Tightening by anything never loosens it.
    let t = d.tightened(&d, 0);
    assert!(t.risk >= d.risk);
});
