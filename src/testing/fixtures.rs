//! Configs and policies the tests are written against.

use std::collections::BTreeMap;

/// The test agent `bot`'s token.
pub const AGENT_TOKEN: &str = "agent-token";

/// A test policy: behaviour chosen by arguments so one policy covers the
/// proxy tests. `echo_input` denies with the input document as its reason.
pub const TEST_POLICY: &str = r#"package latch
import rego.v1

decision := {"action": "deny", "code": "echo", "reasons": [json.marshal(input)]} if {
    input.action.args.echo_input == true
} else := {"action": "deny", "code": "seen_before", "reasons": [sprintf("seen %d times", [input.history.seen])]} if {
    input.route.name == "novel"
    input.history.seen > 0
} else := {"action": "deny", "code": "blocked", "reasons": ["blocked by test policy", "try something else"]} if {
    input.action.args.block == true
} else := {"action": "gate", "risk": object.get(input.action.args, "risk", "high"), "code": "needs_lead",
           "reasons": ["big"],
           "approval": object.get(input.action.args, "approval",
                                  {"require": [{"role": "lead", "count": 1}, {"role": "director", "count": 1}]})} if {
    input.action.args.gate == true
} else := {"action": "allow", "risk": "low", "code": "ok", "reasons": []} if {
    input.route.name != "broken"
}
"#;

/// A policy that fails in three ways: `?n=nope` is a runtime error,
/// `/broken/slow` never finishes in time, no `n` leaves it undefined.
pub const BROKEN_POLICY: &str = r#"package latch
import rego.v1

default slow := 0

slow := count([1 | some a in numbers.range(1, 5000); some b in numbers.range(1, 5000)]) if {
    input.request.path == "/broken/slow"
}

decision := {"action": "allow", "n": to_number(input.action.args.n), "slow": slow}
"#;

/// The prompt registry's people, to append to [`config_text`]: paula (pm,
/// an editor), sam (support), sofia (safety), ed and emma (engineers).
pub const PROMPT_PEOPLE: &str = r#"
[[principals]]
id = "paula"
roles = ["pm"]
token = "paula-token"

[[principals]]
id = "sam"
roles = ["support"]
token = "sam-token"

[[principals]]
id = "sofia"
roles = ["safety"]
token = "sofia-token"

[[principals]]
id = "ed"
roles = ["engineer"]
token = "ed-token"

[[principals]]
id = "emma"
roles = ["engineer"]
token = "emma-token"
"#;

/// Config text with `{upstream}` and `{dir}` substituted.
pub fn config_text(upstream: &str, extra: &str) -> String {
    format!(
        r#"
[proxy]
listen = "127.0.0.1:0"
max_body_bytes = 1024
header_read_timeout_ms = 2000
hold_s = 5

[admin]
listen = "127.0.0.1:0"

[store]
url = "sqlite://latch.db"

[policy]
dir = "policies"
timeout_ms = 50

[[principals]]
id = "bot"
roles = ["agent"]
owners = ["carol"]
token_env = "BOT_TOKEN"

[[principals]]
id = "bot2"
roles = ["agent"]
token = "bot2-token"

[[principals]]
id = "alice"
roles = ["lead"]
token = "alice-token"

[[principals]]
id = "dave"
roles = ["director"]
token = "dave-token"

[[principals]]
id = "erin"
roles = ["lead", "director"]
token = "erin-token"

[[principals]]
id = "carol"
roles = ["lead"]
token = "carol-token"

[[principals]]
id = "olga"
roles = ["oncall"]
token = "olga-token"

[gate]
break_glass_roles = ["oncall"]

[[routes]]
name = "echo"
prefix = "/tools/echo"
upstream = "{upstream}/base"
tool = "echo"
inject_headers = {{ authorization = "env:UPSTREAM_KEY", x-tool-version = "7" }}

[[routes]]
name = "slow"
prefix = "/tools/slow"
upstream = "{upstream}/slow"
timeout_ms = 300

[[routes]]
name = "stream"
prefix = "/tools/stream"
upstream = "{upstream}"
stream_body = true

[[routes]]
name = "novel"
prefix = "/tools/novel"
upstream = "{upstream}"

[[routes]]
name = "broken"
prefix = "/broken"
upstream = "{upstream}"

[[routes]]
name = "shadowed"
prefix = "/tools/shadow"
upstream = "{upstream}"
mode = "shadow"

[[routes]]
name = "down"
prefix = "/tools/down"
upstream = "http://127.0.0.1:9"
{extra}
"#
    )
}

/// The environment the test configs read (agent token, upstream key).
pub fn test_env() -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    env.insert("BOT_TOKEN".to_string(), AGENT_TOKEN.to_string());
    env.insert(
        "UPSTREAM_KEY".to_string(),
        "Bearer upstream-secret".to_string(),
    );
    env
}

/// A pending approval of `agent`'s call, for store tests.
pub fn sample_approval(id: &str, agent: &str) -> crate::gate::model::Approval {
    use crate::policy::decision::{Action, ApprovalSpec, Decision, Risk};
    let spec: ApprovalSpec = serde_json::from_value(serde_json::json!({
        "require": [{"role": "lead", "count": 1}], "timeout_s": 60, "on_timeout": "deny"
    }))
    .expect("approval spec");
    crate::gate::model::Approval {
        id: id.into(),
        state: crate::gate::model::State::Pending,
        agent: agent.into(),
        route: "echo".into(),
        tool: "echo".into(),
        method: "POST".into(),
        path: "/tools/echo".into(),
        target: "".into(),
        headers: vec![("content-type".into(), "application/json".into())],
        body: br#"{"amount":500}"#.to_vec(),
        body_sha256: crate::digest::body_sha256(br#"{"amount":500}"#),
        original_body: None,
        decision: Decision {
            action: Action::Gate,
            risk: Risk::High,
            reasons: vec!["big".into()],
            code: "big".into(),
            approval: Some(spec),
            value: None,
            consequences: None,
        },
        reason: None,
        idempotency_key: None,
        peer: "127.0.0.1:1".into(),
        tls: false,
        created_at: 1_000,
        deadline: 61_000,
        level: 0,
        votes: vec![],
        outcome: None,
        decided_at: None,
        result: None,
        version: 1,
        class: "00112233445566778899aabbccddeeff".into(),
        class_shape: "POST {amount:#}".into(),
        grant_id: None,
        excluded: vec![],
    }
}
