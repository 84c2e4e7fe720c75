//! The `latch` binary: parse the command line, call into the library.

use std::path::PathBuf;
use std::process::ExitCode;

use latch::cli;

#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const USAGE: &str = "usage:
  latch serve [--config FILE]           run the proxy and admin listeners
  latch check [--config FILE]           validate config and policies
  latch migrate [--config FILE]         apply the store's schema migrations (serve does it too)
  latch policy test [DIR]               run case tables and test_* rules
  latch policy eval --input FILE [--config FILE]
                                        print the decision for one input
  latch audit verify [--config FILE] [--file EXPORT]
                                        recompute the audit hash chain (of the store, or of an export)
  latch audit export [--since RFC3339] [--archive FILE.jsonl.gz] [--config FILE]
                                        audit records as JSON lines (or a verifiable gzip archive)
  latch audit report [--since 7d] [--min N] [--json] [--config FILE]
                                        break-glass review: overrides, flags N+ per person
  latch audit prune [--config FILE]     apply [audit] retention now (serve does it hourly)
  latch insights [--min N] [--days D] [--fast-s S] [--write FILE] [--json] [--config FILE]
                                        automation rate, rubber-stamp signals, classes
                                        humans always approve; propose learned data
  latch prompts push FILE [--name N] [-m MSG] | list | show N [--label L | --version V]
                | diff N A B | promote N V --label L [--reason R] | rollback N --label L
                | history N     [--json]  prompt registry (LATCH_ADMIN_URL, LATCH_TOKEN)
  latch grants list [--status live|all] | revoke ID [--reason R] [--json]
                                        time-boxed grants (LATCH_ADMIN_URL, LATCH_TOKEN)
  latch approvals list [--status S] | show ID | approve ID [--comment C] [--grant-s S [--grant-args a,b]]
                | reject ID --reason R [--code C] | modify ID --body FILE [--comment C]
                | override ID --reason R        [--json]  (LATCH_ADMIN_URL, LATCH_TOKEN)
The config defaults to ./latch.toml.";

struct Args {
    words: Vec<String>,
    config: Option<PathBuf>,
    input: Option<PathBuf>,
    since: Option<String>,
    min: Option<u64>,
    days: Option<u64>,
    fast_s: Option<u64>,
    write: Option<PathBuf>,
    archive: Option<PathBuf>,
    file: Option<PathBuf>,
    api: latch::client::Options,
}

fn parse(mut raw: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut args = Args {
        words: Vec::new(),
        config: None,
        input: None,
        since: None,
        min: None,
        days: None,
        fast_s: None,
        write: None,
        archive: None,
        file: None,
        api: Default::default(),
    };
    while let Some(a) = raw.next() {
        match a.as_str() {
            "--config" | "-c" => {
                args.config = Some(raw.next().ok_or("--config needs a file")?.into())
            }
            "--input" | "-i" => args.input = Some(raw.next().ok_or("--input needs a file")?.into()),
            "--since" => args.since = Some(raw.next().ok_or("--since needs a time")?),
            "--min" => args.min = Some(number(raw.next(), "--min")?),
            "--days" => args.days = Some(number(raw.next(), "--days")?),
            "--fast-s" => args.fast_s = Some(number(raw.next(), "--fast-s")?),
            "--grant-s" => args.api.grant_s = Some(number(raw.next(), "--grant-s")?),
            "--grant-args" => {
                let list = raw
                    .next()
                    .ok_or("--grant-args needs names, comma-separated")?;
                args.api.grant_args = list.split(',').map(|s| s.trim().to_string()).collect();
            }
            "--write" => args.write = Some(raw.next().ok_or("--write needs a file")?.into()),
            "--archive" => args.archive = Some(raw.next().ok_or("--archive needs a file")?.into()),
            "--file" => args.file = Some(raw.next().ok_or("--file needs a file")?.into()),
            "--status" => args.api.status = Some(raw.next().ok_or("--status needs a state")?),
            "--comment" => args.api.comment = Some(raw.next().ok_or("--comment needs text")?),
            "--reason" => args.api.reason = Some(raw.next().ok_or("--reason needs text")?),
            "--code" => args.api.code = Some(raw.next().ok_or("--code needs text")?),
            "--body" => args.api.body = Some(raw.next().ok_or("--body needs a file")?.into()),
            "--json" => args.api.json = true,
            "--name" => args.api.name = Some(raw.next().ok_or("--name needs a prompt name")?),
            "-m" | "--message" => {
                args.api.message = Some(raw.next().ok_or("--message needs text")?)
            }
            "--label" => args.api.label = Some(raw.next().ok_or("--label needs a label")?),
            "--version" => {
                let v = number(raw.next(), "--version")?;
                args.api.version = Some(u32::try_from(v).map_err(|_| "--version is too large")?);
            }
            "-h" | "--help" => return Err(String::new()),
            s if s.starts_with("--config=") => args.config = Some(s["--config=".len()..].into()),
            s if s.starts_with("--input=") => args.input = Some(s["--input=".len()..].into()),
            s if s.starts_with('-') => return Err(format!("unknown option {s}")),
            _ => args.words.push(a),
        }
    }
    Ok(args)
}

fn number(v: Option<String>, flag: &str) -> Result<u64, String> {
    v.and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("{flag} needs a whole number"))
}

fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(msg) => {
            if !msg.is_empty() {
                eprintln!("error: {msg}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(if msg.is_empty() { 0 } else { 2 });
        }
    };
    let words: Vec<&str> = args.words.iter().map(String::as_str).collect();
    let code = match words.as_slice() {
        ["serve"] => serve(cli::config_path(args.config)),
        ["check"] => cli::check(&cli::config_path(args.config)),
        ["migrate"] => match cli::load_config(&cli::config_path(args.config)) {
            Err(code) => code,
            Ok(config) => report(cli::migrate(&config)),
        },
        ["policy", "test"] => cli::policy_test(&PathBuf::from("policies"), "data.latch.decision"),
        ["policy", "test", dir] => cli::policy_test(&PathBuf::from(dir), "data.latch.decision"),
        ["policy", "eval"] => match args.input {
            None => {
                eprintln!("error: policy eval needs --input FILE\n{USAGE}");
                2
            }
            Some(input) => match cli::load_config(&cli::config_path(args.config)) {
                Err(code) => code,
                Ok(config) => report(cli::policy_eval(&config, &input)),
            },
        },
        ["audit", "verify"] => match (&args.file, &args.config) {
            // An export stands alone; the config only lends the key.
            (Some(file), None) if !std::path::Path::new("latch.toml").exists() => {
                cli::audit_verify_file(None, file)
            }
            (Some(file), _) => match cli::load_config(&cli::config_path(args.config.clone())) {
                Err(code) => code,
                Ok(config) => cli::audit_verify_file(Some(&config), file),
            },
            (None, _) => match cli::load_config(&cli::config_path(args.config)) {
                Err(code) => code,
                Ok(config) => cli::audit_verify(&config),
            },
        },
        ["approvals", verb, rest @ ..] if rest.len() <= 1 => admin_api(latch::client::approvals(
            verb,
            rest.first().copied(),
            &args.api,
        )),
        ["prompts", verb, rest @ ..] => admin_api(latch::client::prompts(verb, rest, &args.api)),
        ["grants", verb, rest @ ..] if rest.len() <= 1 => admin_api(latch::client::grants(
            verb,
            rest.first().copied(),
            &args.api,
        )),
        ["insights"] => match cli::load_config(&cli::config_path(args.config)) {
            Err(code) => code,
            Ok(config) => report(cli::insights(
                &config,
                &cli::InsightsOptions {
                    min: args.min.unwrap_or(5),
                    days: args.days.unwrap_or(30),
                    fast_s: args.fast_s.unwrap_or(10),
                    write: args.write,
                    json: args.api.json,
                },
            )),
        },
        ["audit", "report"] => match cli::load_config(&cli::config_path(args.config)) {
            Err(code) => code,
            Ok(config) => report(cli::audit_report(
                &config,
                args.since.as_deref().unwrap_or("7d"),
                args.min.unwrap_or(2),
                args.api.json,
            )),
        },
        ["audit", "prune"] => match cli::load_config(&cli::config_path(args.config)) {
            Err(code) => code,
            Ok(config) => report(cli::audit_prune(&config)),
        },
        ["audit", "export"] => match cli::load_config(&cli::config_path(args.config)) {
            Err(code) => code,
            Ok(config) => report(cli::audit_export(
                &config,
                args.since.as_deref(),
                args.archive.as_deref(),
            )),
        },
        _ => {
            eprintln!("{USAGE}");
            2
        }
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

/// Most threads for other blocking work (policy reloads, DNS).
const BLOCKING_THREADS: usize = 32;

fn serve(path: PathBuf) -> i32 {
    let config = match cli::load_config(&path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    // A burst of thousands of gated calls waits as queued store calls, not
    // as threads that each keep a stack and an allocator cache.
    if let Err(e) = latch::store::run_calls_on_threads(&config.store) {
        eprintln!("error: cannot start the store's threads: {e}");
        return 1;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Store calls have threads of their own: this bounds the rest.
        .max_blocking_threads(BLOCKING_THREADS)
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return 1;
        }
    };
    report(runtime.block_on(cli::serve(config)))
}

/// Run one admin API command; print its answer.
fn admin_api(command: impl std::future::Future<Output = anyhow::Result<String>>) -> i32 {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    match runtime.block_on(command) {
        Ok(out) => {
            print!("{out}");
            0
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}

fn report(result: anyhow::Result<()>) -> i32 {
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}
