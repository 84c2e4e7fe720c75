//! Policy evaluation cost on the shipped policies: the VM (hot path), the
//! interpreter (fallback), and building + converting the input document.
//!
//! `cargo bench --bench policy`

use std::path::Path;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use serde_json::json;

use latch::policy::{input, PolicySet, Sources};

fn input(tool: &str, args: serde_json::Value, seen: u64) -> serde_json::Value {
    json!({
        "request": {"method": "POST", "path": "/tools/x", "query": {}, "headers": {"content-type": "application/json"},
                    "body": args.clone(), "body_sha256": "00", "content_type": "application/json", "size": 64},
        "route": {"name": "x", "upstream": "http://127.0.0.1:9001", "tool": tool},
        "agent": {"id": "support-bot", "roles": ["agent"]},
        "action": {"tool": tool, "args": args},
        "history": {"seen": seen, "first_seen": null, "approved": 0, "rejected": 0, "last_decision": null},
        "now": {"rfc3339": "2026-11-23T10:00:00Z", "unix": 1795431600, "weekday": "Monday", "hour": 10}
    })
}

fn bench(c: &mut Criterion) {
    // LATCH_BENCH_POLICIES points the benchmark at another policy directory.
    let dir = std::env::var_os("LATCH_BENCH_POLICIES")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"));
    let sources = Sources::read_dir(&dir, false).expect("shipped policies");
    let set = PolicySet::compile(&sources, "data.latch.decision", Duration::from_millis(50))
        .expect("compile");

    let cases = [
        ("allow_search", input("search", json!({"q": "rego"}), 3)),
        (
            "gate_trade_value",
            input(
                "execute_trade",
                json!({"symbol": "ACME", "amount": 5000, "currency": "EUR"}),
                3,
            ),
        ),
        ("deny_unknown_tool", input("drop_database", json!({}), 0)),
    ];
    let mut g = c.benchmark_group("policy");
    for (name, doc) in &cases {
        let value = regorus::Value::from(doc.clone());
        g.bench_function(format!("vm/{name}"), |b| {
            b.iter(|| set.evaluate(value.clone()))
        });
        g.bench_function(format!("interpreter/{name}"), |b| {
            b.iter(|| set.evaluate_interpreted(value.clone()))
        });
    }
    // Baseline: the smallest possible policy, to separate VM overhead from policy cost.
    let trivial = Sources {
        modules: vec![(
            "trivial.rego".into(),
            "package latch\ndecision := {\"action\": \"allow\"}\n".to_string(),
        )],
        ..Default::default()
    };
    let trivial = PolicySet::compile(&trivial, "data.latch.decision", Duration::from_millis(50))
        .expect("compile");
    let value = regorus::Value::from(cases[0].1.clone());
    g.bench_function("vm/trivial_policy", |b| {
        b.iter(|| trivial.evaluate(value.clone()))
    });
    // Building the input document as the proxy does (regorus values directly).
    let headers = {
        let mut h = http::HeaderMap::new();
        h.insert(
            "content-type",
            http::HeaderValue::from_static("application/json"),
        );
        h.insert("user-agent", http::HeaderValue::from_static("agent/1.0"));
        h
    };
    let allowed: Vec<http::HeaderName> = latch::config::DEFAULT_INPUT_HEADERS
        .iter()
        .map(|h| http::HeaderName::from_static(h))
        .collect();
    let route =
        latch::upstream::route_facts("trade", "http://127.0.0.1:9001/trade", "execute_trade");
    let agent = latch::identity::agent_facts("support-bot", &["agent".to_string()]);
    let raw = br#"{"symbol": "ACME", "amount": 5000, "currency": "EUR"}"#;
    // An action seen before, as most calls in a steady state are.
    let seen = latch::history::stats::Stats {
        seen: 41,
        first_seen: Some(1_764_000_000),
        last_seen: Some(1_764_990_000),
        approved: 3,
        rejected: 1,
        last_decision: Some("allow".into()),
        decision_ms_total: 90_000,
    };
    g.bench_function("input/build_from_request", |b| {
        b.iter(|| {
            let judged = latch::policy::body::judge(
                &headers,
                bytes::Bytes::from_static(raw),
                1 << 20,
                false,
            )
            .unwrap();
            let body = judged.value;
            let query = latch::http_util::query::parse_query(Some("dry_run=false"));
            let args = input::args(&body, &query);
            let facts = input::RequestFacts {
                method: "POST",
                path: "/tools/trade/orders",
                query: &query,
                headers: &headers,
                allowed_headers: &allowed,
                body: &body,
                body_format: judged.format.as_str(),
                body_sha256: Some("00"),
                size: Some(raw.len() as u64),
            };
            input::build(
                &facts,
                &route,
                &agent,
                ("execute_trade", args, "0123"),
                &seen,
                chrono::Utc::now(),
            )
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
