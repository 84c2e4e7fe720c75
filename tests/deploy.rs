//! The monitoring kit under `deploy/` refers only to metrics Latch exports:
//! a Latch is driven through gates, a break-glass override, a grant, an
//! upstream failure, a failing policy and a refused reload, then every
//! `latch_*` metric the alert rules and the Grafana dashboard use must be in
//! its `/metrics`. With `promtool` installed (CI installs Debian's
//! `prometheus`), the rules must also pass `promtool check rules`.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::*;

/// Every `latch_…` metric family named in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("latch_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let family = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        out.insert(family.to_string());
        rest = &tail[end..];
    }
    out
}

fn deploy_file(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[tokio::test]
async fn alert_rules_and_dashboard_use_only_exported_metrics() {
    let up = Upstream::start().await;
    let latch = TestLatch::start(&up.url()).await;
    let adm = latch.admin();
    let lead = r#""approval": {"require": [{"role": "lead", "count": 1}]}"#;

    // A gate approved with a grant, one overridden (break-glass), one left pending.
    let held = |body: String| {
        let req = agent_request("POST", latch.proxy(), "/tools/echo/send")
            .header("content-type", "application/json")
            .header("prefer", "respond-async")
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .unwrap();
        async move {
            send(req).await.json()["approval_id"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    let a = held(format!(r#"{{"gate": true, "n": 1, {lead}}}"#)).await;
    let r = admin(
        adm,
        "POST",
        &format!("/api/v1/approvals/{a}/approve"),
        "alice-token",
        r#"{"grant": {"ttl_s": 60}}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let b = held(format!(r#"{{"gate": true, "to": "x", {lead}}}"#)).await;
    let r = admin(
        adm,
        "POST",
        &format!("/api/v1/approvals/{b}/override"),
        "olga-token",
        r#"{"reason": "outage"}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    held(format!(r#"{{"gate": true, "s": "waiting", {lead}}}"#)).await;
    wait_state(adm, &b, "executed").await;

    // An allowed call, an unreachable upstream, a policy that fails closed.
    assert_eq!(
        call("POST", latch.proxy(), "/tools/echo/x", "{}")
            .await
            .status,
        200
    );
    assert_eq!(
        call("POST", latch.proxy(), "/tools/down/x", "{}")
            .await
            .status,
        502
    );
    assert_eq!(
        call("POST", latch.proxy(), "/broken/x", "{}").await.status,
        403
    );
    // A policy change that does not compile is refused.
    std::fs::write(
        latch.policy_dir().join("policies/bad.rego"),
        "package latch\nnot rego(",
    )
    .unwrap();
    let reload = admin(adm, "POST", "/api/v1/policy/reload", "alice-token", "").await;
    assert_eq!(reload.status, 422, "{:?}", reload.body);

    let metrics = admin(adm, "GET", "/metrics", "alice-token", "").await;
    let exported = String::from_utf8_lossy(&metrics.body).into_owned();
    let exported_families: BTreeSet<String> = exported
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_string)
        .collect();
    let used: BTreeSet<String> = metric_names(&deploy_file("prometheus/latch-alerts.yml"))
        .union(&metric_names(&deploy_file("grafana/latch-dashboard.json")))
        .cloned()
        .collect();
    assert!(used.len() >= 15, "{used:?}");
    let missing: Vec<&String> = used.difference(&exported_families).collect();
    assert!(
        missing.is_empty(),
        "used but not exported: {missing:?}\n{exported}"
    );

    let promtool = ["/usr/bin/promtool", "/usr/local/bin/promtool"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    match promtool {
        Some(tool) => {
            let rules =
                Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus/latch-alerts.yml");
            let out = std::process::Command::new(tool)
                .args(["check", "rules"])
                .arg(&rules)
                .output()
                .unwrap();
            assert_success(&out);
        }
        None => {
            assert!(
                std::env::var("LATCH_REQUIRE_PROMTOOL").as_deref() != Ok("1"),
                "LATCH_REQUIRE_PROMTOOL=1 but promtool is missing"
            );
            eprintln!("skipping promtool check rules: promtool is not installed (apt-get install prometheus)");
        }
    }
}

/// The Kubernetes kit: its `latch.toml` is a valid config (with the
/// Secret's variables set) for replicas on PostgreSQL, and the manifests
/// run three replicas with the probes and the disruption budget.
#[test]
fn the_kubernetes_config_checks_and_the_manifests_run_three_replicas() {
    let dir = tempfile::tempdir().unwrap();
    let policies = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let text = deploy_file("kubernetes/latch.toml")
        .replace("/usr/share/latch/policies", &policies.display().to_string());
    assert!(text.contains("url_env = \"LATCH_DATABASE_URL\""));
    std::fs::write(dir.path().join("latch.toml"), text).unwrap();
    let manifests = deploy_file("kubernetes/latch.yaml");
    // Every variable the config reads is set from the Secret.
    let vars = [
        "LATCH_DATABASE_URL",
        "LATCH_AUDIT_KEY",
        "LATCH_METRICS_TOKEN",
        "SUPPORT_BOT_TOKEN",
        "ALICE_TOKEN",
        "CAROL_TOKEN",
        "EMAIL_API_KEY",
    ];
    let mut check = std::process::Command::new(env!("CARGO_BIN_EXE_latch"));
    check
        .args(["check", "--config"])
        .arg(dir.path().join("latch.toml"));
    for v in vars {
        assert!(
            manifests.contains(&format!("name: {v}")),
            "{v} is not set by the Deployment"
        );
        check.env(v, "0123456789abcdef0123456789abcdef");
    }
    check.env(
        "LATCH_DATABASE_URL",
        "postgres://latch:secret@postgres:5432/latch",
    );
    let out = check.output().unwrap();
    assert_success(&out);
    for needle in [
        "replicas: 3",
        "path: /readyz",
        "path: /healthz",
        "kind: PodDisruptionBudget",
        "minAvailable: 2",
        "kind: Service",
    ] {
        assert!(manifests.contains(needle), "{needle}");
    }
    let kustomization = deploy_file("kubernetes/kustomization.yaml");
    assert!(kustomization.contains("latch.toml") && kustomization.contains("latch.yaml"));
    let dockerfile =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Dockerfile")).unwrap();
    assert!(dockerfile.contains("/usr/share/latch/policies"));
}
