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

/// `latch audit verify`: recompute the chain; names the first bad record.
pub fn audit_verify(config: &Config) -> i32 {
    let store = match crate::app::open_store(config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e:#}");
            return 1;
        }
    };
    let records = match crate::audit::records(&*store, 0, usize::MAX, None, None) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: reading the audit log: {e:#}");
            return 1;
        }
    };
    let head = match store.audit_head() {
        Ok(h) => h,
        Err(e) => {
            eprintln!("error: reading the audit head: {e:#}");
            return 1;
        }
    };
    let key = config.audit.key.as_ref();
    match crate::audit::chain::verify_keyed(&records, key, head.as_ref()) {
        Ok(v) => {
            let last = records
                .last()
                .map(|r| r.hash.as_str())
                .unwrap_or(crate::audit::chain::GENESIS);
            println!("ok: {} records, chain intact, head {last}", v.records);
            match (key, v.keyed_from) {
                (None, _) => println!(
                    "note: no [audit] key_env: this proves the records agree with each other, \
                     not that nobody with write access to the database rewrote or truncated them"
                ),
                (Some(_), Some(1)) => {
                    println!("keyed: every record and the head carry a valid MAC")
                }
                (Some(_), Some(from)) => println!(
                    "keyed: records {from}..{} and the head carry a valid MAC; records before {from} \
                     were written without a key and are only chained",
                    v.records
                ),
                (Some(_), None) => println!("keyed: no record is keyed yet"),
            }
            0
        }
        Err(e) => {
            eprintln!("error: audit chain broken at {e}");
            1
        }
    }
}

/// `latch audit export [--since RFC3339] [--archive FILE]`: audit records
/// as JSON lines on stdout; with `--archive`, a gzip file an auditor can keep
/// — a header line (what it starts after, the head it ends at, how many
/// records) before the records — checked by `latch audit verify --file`.
pub fn audit_export(
    config: &Config,
    since: Option<&str>,
    archive: Option<&Path>,
) -> anyhow::Result<()> {
    use std::io::Write;
    let since_time = since
        .map(|s| {
            chrono::DateTime::parse_from_rfc3339(s)
                .map(|t| t.with_timezone(&chrono::Utc))
                .map_err(|_| {
                    anyhow!("--since must be an RFC 3339 time such as 2026-11-01T00:00:00Z")
                })
        })
        .transpose()?;
    let store = crate::app::open_store(config)?;
    // The head first: records appended meanwhile are left for the next export.
    let head = store.audit_head()?;
    let end = head.as_ref().map_or(0, |h| h.seq);
    let records: Vec<_> = crate::audit::records(&*store, 0, usize::MAX, since_time, None)?
        .into_iter()
        .filter(|r| archive.is_none() || r.seq <= end)
        .collect();
    let Some(path) = archive else {
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        for r in &records {
            serde_json::to_writer(&mut out, r)?;
            out.write_all(b"\n")?;
        }
        return Ok(out.flush()?);
    };
    let anchor = match records.first() {
        Some(r) => serde_json::json!({"seq": r.seq - 1, "hash": r.prev_hash}),
        None => {
            serde_json::json!({"seq": end, "hash": head.as_ref().map_or(crate::audit::chain::GENESIS, |h| h.hash.as_str())})
        }
    };
    let header = serde_json::json!({
        "latch_audit_export": 1,
        "exported_at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "since": since, "anchor": anchor, "head": head, "records": records.len(),
    });
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = std::io::BufWriter::new(flate2::write::GzEncoder::new(
        file,
        flate2::Compression::default(),
    ));
    serde_json::to_writer(&mut out, &header)?;
    out.write_all(b"\n")?;
    for r in &records {
        serde_json::to_writer(&mut out, r)?;
        out.write_all(b"\n")?;
    }
    let gz = out
        .into_inner()
        .map_err(|e| anyhow!("writing {}: {e}", path.display()))?;
    gz.finish()
        .with_context(|| format!("writing {}", path.display()))?
        .sync_all()?;
    eprintln!("wrote {} records to {}", records.len(), path.display());
    Ok(())
}

/// `latch audit verify --file EXPORT`: check an export on its own — the
/// records chain from its anchor to the head it names, and with the key
/// every MAC and the head's. Plain or gzip.
pub fn audit_verify_file(config: Option<&Config>, path: &Path) -> i32 {
    match verify_export(config, path) {
        Ok(msg) => {
            println!("{msg}");
            0
        }
        Err(e) => {
            eprintln!("error: {}: {e:#}", path.display());
            1
        }
    }
}

fn verify_export(config: Option<&Config>, path: &Path) -> anyhow::Result<String> {
    use std::io::{BufRead, Read};
    let mut raw = Vec::new();
    std::fs::File::open(path)?.read_to_end(&mut raw)?;
    let text = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut s = String::new();
        flate2::read::MultiGzDecoder::new(&raw[..])
            .read_to_string(&mut s)
            .context("not a readable gzip file")?;
        s
    } else {
        String::from_utf8(raw).context("not UTF-8 text")?
    };
    let mut lines = text.as_bytes().lines();
    let header: serde_json::Value = serde_json::from_str(
        &lines
            .next()
            .transpose()?
            .ok_or_else(|| anyhow!("the file is empty"))?,
    )
    .context("line 1 is not an export header")?;
    if header["latch_audit_export"] != 1 {
        anyhow::bail!("line 1 is not a Latch audit export header");
    }
    let anchor = crate::audit::chain::Anchor {
        seq: header["anchor"]["seq"]
            .as_i64()
            .ok_or_else(|| anyhow!("the header has no anchor"))?,
        hash: header["anchor"]["hash"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    };
    let head: Option<crate::audit::chain::Head> =
        serde_json::from_value(header["head"].clone()).context("the header's head is malformed")?;
    let mut records = Vec::new();
    for (i, line) in lines.enumerate() {
        let line = line?;
        if line.is_empty() {
            continue;
        }
        records.push(
            serde_json::from_str::<crate::audit::chain::Record>(&line)
                .with_context(|| format!("line {} is not an audit record", i + 2))?,
        );
    }
    if header["records"].as_u64() != Some(records.len() as u64) {
        anyhow::bail!(
            "the header says {} records, the file has {} (cut short or padded)",
            header["records"],
            records.len()
        );
    }
    let key = config.and_then(|c| c.audit.key.as_ref());
    let v = crate::audit::chain::verify_from(&anchor, &records, key, head.as_ref())
        .map_err(|e| anyhow!("audit chain broken at {e}"))?;
    let keyed = match (key, v.keyed_from) {
        (None, _) => "not keyed: consistent records only (no [audit] key_env)".to_string(),
        (Some(_), Some(from)) => format!("keyed from record {from}, head MAC valid"),
        (Some(_), None) => "no keyed records".to_string(),
    };
    Ok(format!(
        "ok: {} records after record {} chain to the head; {keyed}",
        v.records, anchor.seq
    ))
}

/// `latch audit report [--since 7d] [--min N]`: the break-glass review —
/// every override in the window with who, why, what it released and what
/// became of it, and principals with at least `repeat` overrides flagged.
pub fn audit_report(config: &Config, since: &str, repeat: u64, json: bool) -> anyhow::Result<()> {
    let start =
        crate::insights::break_glass::since(since, chrono::Utc::now()).ok_or_else(|| {
            anyhow!("--since must be a window such as 7d, 24h or 90m, or an RFC 3339 time")
        })?;
    let store = crate::app::open_store(config)?;
    let records = crate::audit::records(&*store, 0, usize::MAX, Some(start), None)?;
    let r = crate::insights::break_glass::report(&records, repeat);
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    let list = r["overrides"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    println!("break-glass overrides since {since} ({}):", list.len());
    for o in list {
        let text = |k: &str| o[k].as_str().unwrap_or("-").to_string();
        println!(
            "  {} {} overrode {} ({} {} {} by agent {}, risk {}): {:?} → {}",
            text("at"),
            text("principal"),
            text("approval"),
            text("tool"),
            text("method"),
            text("path"),
            text("agent"),
            text("risk"),
            text("reason"),
            o["outcome"]["result"].as_str().unwrap_or("-")
        );
    }
    for p in r["repeat_users"].as_array().into_iter().flatten() {
        println!(
            "! {} broke the glass {} times: review whether the policy or the on-call process needs to change",
            p["principal"].as_str().unwrap_or("-"),
            p["overrides"]
        );
    }
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
