//! Command-line commands. `main.rs` only parses arguments and calls these.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, Context};

use crate::config::Config;
use crate::policy::{cases, PolicySet, Sources};

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

/// The config path: `--config` or `latch.toml` in the working directory.
pub fn config_path(arg: Option<PathBuf>) -> PathBuf {
    arg.unwrap_or_else(|| PathBuf::from("latch.toml"))
}
