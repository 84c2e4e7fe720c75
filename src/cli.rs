//! Command-line commands. `main.rs` only parses arguments and calls these.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, Context};

use crate::config::Config;
use crate::policy::{cases, PolicySet, Sources};

mod audit;
pub use audit::{audit_export, audit_prune, audit_report, audit_verify, audit_verify_file};

/// Exit code for a configuration the user must fix.
pub const EXIT_CONFIG: i32 = 64;

/// Load the config or print every problem and return the exit code.
pub fn load_config(path: &Path) -> Result<Config, i32> {
    Config::load(path).map_err(|errors| {
        for e in &errors {
            eprintln!("error: {e}");
        }
        EXIT_CONFIG
    })
}

/// `latch serve`: run until SIGINT/SIGTERM, then shut down gracefully.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    crate::telemetry::init_tracing(&config.log);
    let running = crate::app::start(config).await?;
    if let Some(demo) = running.demo_addr {
        tracing::info!(%demo, "demo tool upstream started");
    }
    eprintln!(
        "latch: proxy on http://{}  admin on http://{}  (Ctrl-C to stop)",
        running.proxy_addr, running.admin_addr
    );
    #[cfg(unix)]
    {
        // SIGHUP reloads the policy, as operators expect of a daemon.
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut hup) = signal(SignalKind::hangup()) {
            let policy = running.handles.policy.clone();
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    let engine = policy.clone();
                    let _ = tokio::task::spawn_blocking(move || engine.reload()).await;
                }
            });
        }
    }
    shutdown_signal().await;
    tracing::info!("shutting down");
    running.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// `latch check`: config, TLS files and policies. Returns the exit code.
pub fn check(config_path: &Path) -> i32 {
    let config = match load_config(config_path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let mut failed = false;
    for (what, tls) in [
        ("proxy.tls", &config.proxy.tls),
        ("admin.tls", &config.admin.tls),
    ] {
        if let Some(tls) = tls {
            if let Err(e) = crate::tls::server_config(tls) {
                eprintln!("error: {}: {what}: {e:#}", config.path.display());
                failed = true;
            }
        }
    }
    let policy = match PolicySet::load(
        &config.policy.dir,
        &config.policy.entrypoint,
        config.policy.timeout,
    ) {
        Ok(p) => Some(p),
        Err(e) => {
            eprintln!("error: {e:#}");
            failed = true;
            None
        }
    };
    if failed {
        return 1;
    }
    if let Some(p) = policy {
        println!(
            "ok: {} — {} routes, {} principals, policy {} ({:?})",
            config.path.display(),
            config.routes.len(),
            config.principals.len(),
            &p.hash()[..12],
            p.evaluator()
        );
    }
    0
}

/// `latch migrate`: bring the store's schema up to this version of Latch
/// (opening a store migrates it; several replicas take turns).
pub fn migrate(config: &Config) -> anyhow::Result<()> {
    crate::app::open_store(config)?;
    println!(
        "store schema at version {} (up to date)",
        crate::store::migrations::MIGRATIONS.len()
    );
    Ok(())
}

/// `latch policy test [DIR]`: case tables and `test_*` rules. Returns the exit code.
pub fn policy_test(dir: &Path, entrypoint: &str) -> i32 {
    let sources = match Sources::read_dir(dir, true) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e:#}");
            return 1;
        }
    };
    let set = match PolicySet::compile(&sources, entrypoint, Duration::from_secs(1)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e:#}");
            return 1;
        }
    };
    let mut results = match cases::run(&set, &sources.cases) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e:#}");
            return 1;
        }
    };
    results.extend(cases::run_rego_tests(&sources));
    let failed = results.iter().filter(|r| r.failure.is_some()).count();
    for r in &results {
        match &r.failure {
            None => println!("PASS {}", r.name),
            Some(f) => println!("FAIL {}\n      {f}", r.name),
        }
    }
    println!("{} passed, {} failed", results.len() - failed, failed);
    i32::from(failed > 0)
}

/// `latch policy eval --input FILE`: print the decision for one input.
pub fn policy_eval(config: &Config, input: &Path) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(input).with_context(|| format!("reading {}", input.display()))?;
    let doc: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| anyhow!("{}:{}: invalid JSON: {e}", input.display(), e.line()))?;
    let set = PolicySet::load(
        &config.policy.dir,
        &config.policy.entrypoint,
        config.policy.timeout,
    )?;
    let eval = set.evaluate(regorus::Value::from(doc));
    let out = serde_json::json!({
        "decision": eval.decision,
        "error": eval.error,
        "elapsed_us": eval.elapsed.as_secs_f64() * 1e6,
        "policy": set.hash(),
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

/// What `latch insights` is asked for.
#[derive(Debug, Clone)]
pub struct InsightsOptions {
    /// Approvals a class (or decisions a reviewer) needs before it counts.
    pub min: u64,
    /// Window, days.
    pub days: u64,
    /// A median decision time under this many seconds is "fast".
    pub fast_s: u64,
    /// Write the learned-data proposal here.
    pub write: Option<PathBuf>,
    /// Print the report as JSON instead of tables.
    pub json: bool,
}

/// `latch insights`: the automation rate (per tool and overall, and what
/// adopting the learned classes would make it), reviewers and classes that
/// look rubber-stamped, and action classes approved at least `min` times in
/// the window without a rejection or modification; with `write`, the data
/// file that lets the shipped policy stop gating them.
pub fn insights(config: &Config, o: &InsightsOptions) -> anyhow::Result<()> {
    let store = crate::app::open_store(config)?;
    let since = chrono::Utc::now() - chrono::Duration::days(o.days as i64);
    let records = crate::audit::records(&*store, 0, usize::MAX, Some(since), None)?;
    let t = crate::insights::Thresholds {
        min: o.min,
        fast_ms: (o.fast_s as i64).saturating_mul(1000),
    };
    let report = crate::insights::report(&records, t, o.days);
    if o.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report, o);
    }
    let classes = crate::insights::tally(&records);
    if !o.json {
        print_classes(&classes, o);
    }
    if let Some(path) = &o.write {
        let data = crate::insights::learned_data(&classes, o.min, o.days);
        std::fs::write(path, serde_json::to_string_pretty(&data)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!(
            "wrote {}: review it, then commit it as policies/data/learned.json to let the shipped policy auto-approve these classes",
            path.display()
        );
    }
    Ok(())
}

fn percent(v: &serde_json::Value) -> String {
    v.as_f64()
        .map(|r| format!("{:.1}%", r * 100.0))
        .unwrap_or_else(|| "-".into())
}

fn print_report(report: &serde_json::Value, o: &InsightsOptions) {
    println!(
        "automation over {} days: decided without a human (allowed + granted) vs gated",
        o.days
    );
    println!(
        "{:<24} {:>8} {:>8} {:>8} {:>8} {:>8} {:>10}",
        "tool", "allowed", "granted", "gated", "denied", "rate", "if learned"
    );
    let a = &report["automation"];
    let rows = a["tools"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.as_str(), v))
        .chain([("(all)", &a["overall"])]);
    for (tool, c) in rows {
        println!(
            "{tool:<24} {:>8} {:>8} {:>8} {:>8} {:>8} {:>10}",
            c["allowed"],
            c["granted"],
            c["gated"],
            c["denied"],
            percent(&c["rate"]),
            percent(&c["projected_rate"])
        );
    }
    println!("\nreviewers (rubber-stamp signals: fast on high risk under {} s, or never rejecting, after {} decisions)", o.fast_s, o.min);
    for r in report["reviewers"].as_array().into_iter().flatten() {
        let signals: Vec<&str> = r["signals"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str())
            .collect();
        let risks: Vec<String> = r["by_risk"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(risk, s)| {
                let median = s["median_decision_s"]
                    .as_f64()
                    .map(|m| format!("{m:.1}s"))
                    .unwrap_or_else(|| "-".into());
                format!(
                    "{risk}: {}/{} approved, median {median}",
                    s["approved"].as_u64().unwrap_or(0) + s["modified"].as_u64().unwrap_or(0),
                    s["approved"].as_u64().unwrap_or(0)
                        + s["modified"].as_u64().unwrap_or(0)
                        + s["rejected"].as_u64().unwrap_or(0)
                )
            })
            .collect();
        let flag = if signals.is_empty() { " " } else { "!" };
        println!(
            "{flag}{:<23} {}",
            r["principal"].as_str().unwrap_or("-"),
            risks.join("; ")
        );
        for s in signals {
            println!("    ! {s}");
        }
    }
    let fast = report["rubber_stamped_classes"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    if !fast.is_empty() {
        println!("\nclasses approved every time, fast (automate them, or stop gating them):");
        for c in fast {
            println!(
                "  {} {} {} approved {}× median {}s  {}",
                c["class"].as_str().unwrap_or("-"),
                c["agent"].as_str().unwrap_or("-"),
                c["tool"].as_str().unwrap_or("-"),
                c["approved"],
                c["median_decision_s"],
                c["shape"].as_str().unwrap_or("-")
            );
        }
    }
    println!();
}

fn print_classes(
    classes: &std::collections::BTreeMap<String, crate::insights::ClassStats>,
    o: &InsightsOptions,
) {
    println!(
        "{:<34} {:<14} {:<16} {:>5} {:>8} {:>8} {:>8}  shape",
        "class", "agent", "tool", "gated", "approved", "modified", "rejected"
    );
    for (class, s) in classes {
        let mark = if s.auto_approvable(o.min) { "*" } else { " " };
        println!(
            "{mark}{class:<33} {:<14} {:<16} {:>5} {:>8} {:>8} {:>8}  {}",
            s.agent, s.tool, s.gated, s.approved, s.modified, s.rejected, s.shape
        );
    }
    let proposed = classes
        .values()
        .filter(|s| s.auto_approvable(o.min))
        .count();
    println!(
        "{proposed} class(es) marked * were approved at least {} times in {} days with no rejection or modification",
        o.min, o.days
    );
}

/// The config path: `--config` or `latch.toml` in the working directory.
pub fn config_path(arg: Option<PathBuf>) -> PathBuf {
    arg.unwrap_or_else(|| PathBuf::from("latch.toml"))
}
