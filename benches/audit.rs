//! `cargo bench --bench audit`: how fast the release binary verifies and
//! exports a large audit log, and how much memory that takes (it streams:
//! the peak must not grow with the log).
//!
//! Builds a SQLite log of `AUDIT_RECORDS` (default 1,000,000) decision
//! records shaped like the proxy's, then times `latch audit verify`,
//! `latch audit export --archive` and `latch audit verify --file` and reads
//! each one's peak RSS (`/usr/bin/time -v`, from Debian's `time`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::Instant;

use latch::audit::chain::Event;
use latch::store::sqlite::SqliteStore;
use latch::store::Store;

fn run(dir: &std::path::Path, args: &[&str]) -> (f64, u64, String) {
    let started = Instant::now();
    let out = Command::new("/usr/bin/time")
        .arg("-v")
        .arg(env!("CARGO_BIN_EXE_latch"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run latch under /usr/bin/time (apt-get install time)");
    let secs = started.elapsed().as_secs_f64();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "latch {args:?}: {err}");
    let kib = err
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Maximum resident set size (kbytes): ")
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    (secs, kib, String::from_utf8_lossy(&out.stdout).to_string())
}

fn main() {
    let n: usize = std::env::var("AUDIT_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    std::fs::write(
        dir.path().join("policies/p.rego"),
        "package latch\nimport rego.v1\ndecision := {\"action\": \"allow\"}\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("latch.toml"),
        "[store]\nurl = \"sqlite://latch.db\"\n[policy]\ndir = \"policies\"\n",
    )
    .unwrap();
    let store = SqliteStore::open(&dir.path().join("latch.db"), None).unwrap();
    let started = Instant::now();
    let mut written = 0;
    while written < n {
        let batch: Vec<Event> = (written..(written + 1000).min(n))
            .map(|i| {
                Event::new(
                    "support-bot",
                    "decision",
                    &format!("01a2{i:028x}"),
                    serde_json::json!({
                        "action": "allow", "code": "ok", "risk": "low", "reasons": [],
                        "route": "search", "tool": "search", "method": "POST", "path": "/tools/search/query",
                        "body_sha256": format!("{i:064x}"), "policy": "9f2c4e1d", "shadow": false,
                    }),
                )
            })
            .collect();
        written += batch.len();
        store.append_audit(batch).unwrap();
    }
    let append_s = started.elapsed().as_secs_f64();
    drop(store);
    let db_mb = std::fs::metadata(dir.path().join("latch.db"))
        .map(|m| m.len())
        .unwrap_or(0) as f64
        / 1e6;
    println!(
        "audit log: {n} records, {db_mb:.0} MB, appended at {:.0} records/s",
        n as f64 / append_s
    );

    let (s, kib, out) = run(dir.path(), &["audit", "verify"]);
    assert!(out.starts_with(&format!("ok: {n} records")), "{out}");
    println!(
        "latch audit verify:         {:>6.2} s  {:>9.0} records/s  peak RSS {:>6} KiB",
        s,
        n as f64 / s,
        kib
    );
    let (s, kib, _) = run(
        dir.path(),
        &["audit", "export", "--archive", "audit.jsonl.gz"],
    );
    let gz_mb = std::fs::metadata(dir.path().join("audit.jsonl.gz"))
        .map(|m| m.len())
        .unwrap_or(0) as f64
        / 1e6;
    println!("latch audit export --archive: {:>4.2} s  {:>9.0} records/s  peak RSS {:>6} KiB  ({gz_mb:.0} MB gzip)", s, n as f64 / s, kib);
    let (s, kib, out) = run(dir.path(), &["audit", "verify", "--file", "audit.jsonl.gz"]);
    assert!(out.starts_with(&format!("ok: {n} records")), "{out}");
    println!(
        "latch audit verify --file:  {:>6.2} s  {:>9.0} records/s  peak RSS {:>6} KiB",
        s,
        n as f64 / s,
        kib
    );
}
