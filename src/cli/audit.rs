//! `latch audit …`: verify the chain (of the store or of an export),
//! export it, apply retention, and the break-glass review.

use std::path::Path;

use anyhow::{anyhow, Context};

use crate::config::Config;

/// `latch audit verify`: recompute the chain; names the first bad record.
pub fn audit_verify(config: &Config) -> i32 {
    let store = match crate::app::open_store(config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e:#}");
            return 1;
        }
    };
    let key = config.audit.key.as_ref();
    let outcome = match crate::audit::verify_store(&*store, key) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: reading the audit log: {e:#}");
            return 1;
        }
    };
    match outcome {
        Ok(crate::audit::StoreVerified {
            verified: v,
            checkpoint,
            head,
        }) => {
            let last = head
                .as_ref()
                .map(|h| h.hash.as_str())
                .unwrap_or(crate::audit::chain::GENESIS);
            println!("ok: {} records, chain intact, head {last}", v.records);
            if let Some(c) = &checkpoint {
                println!(
                    "retention: records up to {} (until {}) were dropped; the chain is verified from their checkpoint{}",
                    c.seq,
                    c.ts,
                    if key.is_some() { ", whose MAC is valid" } else { "" }
                );
            }
            if v.pruned > 0 {
                println!(
                    "retention: {} decision records keep only the digest of their details",
                    v.pruned
                );
            }
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

/// `latch audit prune`: apply `[audit] retain_decisions_days` and
/// `retain_days` now (`latch serve` does it hourly).
pub fn audit_prune(config: &Config) -> anyhow::Result<()> {
    let a = &config.audit;
    if a.retain_days.is_none() && a.retain_decisions_days.is_none() {
        anyhow::bail!("no retention is configured ([audit] retain_days, retain_decisions_days)");
    }
    let store = crate::app::open_store(config)?;
    let r = crate::audit::retain(
        &*store,
        a.retain_decisions_days,
        a.retain_days,
        a.key.as_ref(),
        chrono::Utc::now(),
    )?;
    println!(
        "pruned the details of {} decision records; dropped {} records{}",
        r.pruned,
        r.dropped,
        r.checkpoint
            .map(|c| format!("; the chain now starts after record {} ({})", c.seq, c.ts))
            .unwrap_or_default()
    );
    Ok(())
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
    // The export is the contiguous stretch from the first record at or after
    // `--since` to the head, streamed a page at a time.
    let first = crate::audit::records(&*store, 0, 1, since_time, None)?
        .into_iter()
        .next()
        .filter(|r| r.seq <= end);
    let (after, count) = match &first {
        Some(r) => (r.seq - 1, end - r.seq + 1),
        None => (end, 0),
    };
    let Some(path) = archive else {
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        crate::audit::each_record(&*store, after, end, |r| {
            serde_json::to_writer(&mut out, r)?;
            Ok(out.write_all(b"\n")?)
        })?;
        return Ok(out.flush()?);
    };
    let anchor = match &first {
        Some(r) => serde_json::json!({"seq": after, "hash": r.prev_hash}),
        None => {
            serde_json::json!({"seq": end, "hash": head.as_ref().map_or(crate::audit::chain::GENESIS, |h| h.hash.as_str())})
        }
    };
    let header = serde_json::json!({
        "latch_audit_export": 1,
        "exported_at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "since": since, "anchor": anchor, "head": head, "records": count,
    });
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = std::io::BufWriter::new(flate2::write::GzEncoder::new(
        file,
        flate2::Compression::default(),
    ));
    serde_json::to_writer(&mut out, &header)?;
    out.write_all(b"\n")?;
    crate::audit::each_record(&*store, after, end, |r| {
        serde_json::to_writer(&mut out, r)?;
        Ok(out.write_all(b"\n")?)
    })?;
    let gz = out
        .into_inner()
        .map_err(|e| anyhow!("writing {}: {e}", path.display()))?;
    gz.finish()
        .with_context(|| format!("writing {}", path.display()))?
        .sync_all()?;
    eprintln!("wrote {count} records to {}", path.display());
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
    use std::io::BufRead;
    let mut file = std::io::BufReader::new(std::fs::File::open(path)?);
    let gzip = file.fill_buf()?.starts_with(&[0x1f, 0x8b]);
    // Streamed: a file of any size verifies in constant memory.
    let reader: Box<dyn BufRead> = if gzip {
        Box::new(std::io::BufReader::new(
            flate2::bufread::MultiGzDecoder::new(file),
        ))
    } else {
        Box::new(file)
    };
    let mut lines = reader.lines();
    let first = lines
        .next()
        .transpose()
        .context("not UTF-8 text or not a readable gzip file")?
        .ok_or_else(|| anyhow!("the file is empty"))?;
    let header: serde_json::Value =
        serde_json::from_str(&first).context("line 1 is not an export header")?;
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
    let key = config.and_then(|c| c.audit.key.as_ref());
    let mut verifier = crate::audit::chain::Verifier::new(&anchor, key);
    let mut count: u64 = 0;
    for (i, line) in lines.enumerate() {
        let line = line.with_context(|| format!("reading line {}", i + 2))?;
        if line.is_empty() {
            continue;
        }
        let r = serde_json::from_str::<crate::audit::chain::Record>(&line)
            .with_context(|| format!("line {} is not an audit record", i + 2))?;
        count += 1;
        if header["records"].as_u64().is_some_and(|n| count > n) {
            anyhow::bail!(
                "the header says {} records, the file has more (padded)",
                header["records"]
            );
        }
        verifier
            .push(&r)
            .map_err(|e| anyhow!("audit chain broken at {e}"))?;
    }
    if header["records"].as_u64() != Some(count) {
        anyhow::bail!(
            "the header says {} records, the file has {} (cut short or padded)",
            header["records"],
            count
        );
    }
    let v = verifier
        .finish(head.as_ref())
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
