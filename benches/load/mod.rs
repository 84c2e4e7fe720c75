//! The load generator the proxy benches share: a fixed-rate open loop
//! (latency under a steady load) and a closed loop (throughput), run over
//! several targets in one process so their figures compare.

#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

pub type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

/// Makes the request to send, afresh for each call.
pub type MakeRequest = Arc<dyn Fn() -> Request<Full<Bytes>> + Send + Sync>;

/// A GET of `url` with the bench agent's token.
pub fn get(url: String) -> MakeRequest {
    Arc::new(move || {
        Request::get(url.as_str())
            .header("authorization", "Bearer bench-token")
            .body(Full::new(Bytes::new()))
            .unwrap_or_default()
    })
}

/// The phases' settings: `LOAD_SECS` (per phase, default 5), `LOAD_RATE`
/// (fixed-rate phase, default 1000 req/s), `LOAD_ROUNDS` (fixed-rate rounds,
/// default 3, medians reported), `LOAD_CONNS` (closed loop, default 32).
#[derive(Clone, Copy)]
pub struct Settings {
    pub secs: u64,
    pub rate: u64,
    pub rounds: u64,
    pub conns: u64,
}

impl Settings {
    pub fn from_env() -> Settings {
        Settings {
            secs: env_u64("LOAD_SECS", 5),
            rate: env_u64("LOAD_RATE", 1000),
            rounds: env_u64("LOAD_ROUNDS", 3).max(1),
            conns: env_u64("LOAD_CONNS", 32),
        }
    }
}

pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One call, read to the end; its latency if it answered 200.
pub async fn one(client: &HttpClient, make: &MakeRequest) -> Option<Duration> {
    let req = make();
    let start = Instant::now();
    let resp = client.request(req).await.ok()?;
    let ok = resp.status() == StatusCode::OK;
    resp.into_body().collect().await.ok()?;
    ok.then(|| start.elapsed())
}

pub fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// What one phase measured.
pub struct Outcome {
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: u64,
}

fn outcome(mut all: Vec<Duration>, errors: u64, start: Instant) -> Outcome {
    let elapsed = start.elapsed().as_secs_f64();
    all.sort();
    Outcome {
        rps: all.len() as f64 / elapsed,
        p50_ms: percentile(&all, 0.5),
        p99_ms: percentile(&all, 0.99),
        errors,
    }
}

/// Closed loop: `conns` workers send back to back for `secs`.
pub async fn closed_loop(make: &MakeRequest, conns: u64, secs: u64) -> Outcome {
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    let start = Instant::now();
    for _ in 0..conns {
        let client = client.clone();
        let make = make.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let (mut lat, mut errors) = (Vec::new(), 0u64);
            while !stop.load(Ordering::Relaxed) {
                match one(&client, &make).await {
                    Some(d) => lat.push(d),
                    None => errors += 1,
                }
            }
            (lat, errors)
        }));
    }
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut all, mut errors) = (Vec::new(), 0);
    for t in tasks {
        if let Ok((l, e)) = t.await {
            all.extend(l);
            errors += e;
        }
    }
    outcome(all, errors, start)
}

/// Open loop at a fixed rate: requests start on schedule whatever the
/// previous ones do, so queueing shows in the latency.
pub async fn fixed_rate(make: &MakeRequest, rate: u64, secs: u64) -> Outcome {
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let total = rate * secs;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let due = start + interval * i as u32;
        tokio::time::sleep_until(due.into()).await;
        let client = client.clone();
        let make = make.clone();
        tasks.push(tokio::spawn(async move { one(&client, &make).await }));
    }
    let (mut all, mut errors) = (Vec::new(), 0);
    for t in tasks {
        match t.await {
            Ok(Some(d)) => all.push(d),
            _ => errors += 1,
        }
    }
    outcome(all, errors, start)
}

/// Fixed-rate rounds interleaving the targets (a passing hiccup of the
/// shared machine hits one round of each rather than one target; medians
/// reported), then a closed loop per target. Prints the table.
pub fn compare(
    rt: &tokio::runtime::Runtime,
    targets: &[(&str, MakeRequest)],
    s: Settings,
) -> (Vec<(String, Outcome)>, Vec<(String, Outcome)>) {
    let Settings {
        secs,
        rate,
        rounds: rounds_n,
        conns,
    } = s;
    println!("phase        target   req/s      p50 ms   p99 ms   errors");
    for (_, make) in targets {
        rt.block_on(closed_loop(make, 4, 1));
    }
    let mut rounds: Vec<Vec<Outcome>> = targets.iter().map(|_| Vec::new()).collect();
    for round in 0..rounds_n.max(1) {
        for (i, (name, make)) in targets.iter().enumerate() {
            let r = rt.block_on(fixed_rate(make, rate, secs));
            println!(
                "rate={rate:<6} {name:<8} {:>9.0} {:>8.3} {:>8.3} {:>8}   (round {})",
                r.rps,
                r.p50_ms,
                r.p99_ms,
                r.errors,
                round + 1
            );
            rounds[i].push(r);
        }
    }
    let mut fixed = Vec::new();
    for ((name, _), rs) in targets.iter().zip(rounds) {
        let r = Outcome {
            rps: median(rs.iter().map(|r| r.rps).collect()),
            p50_ms: median(rs.iter().map(|r| r.p50_ms).collect()),
            p99_ms: median(rs.iter().map(|r| r.p99_ms).collect()),
            errors: rs.iter().map(|r| r.errors).sum(),
        };
        println!(
            "median       {name:<8} {:>9.0} {:>8.3} {:>8.3} {:>8}",
            r.rps, r.p50_ms, r.p99_ms, r.errors
        );
        fixed.push((name.to_string(), r));
    }
    let mut closed = Vec::new();
    for (name, make) in targets {
        let r = rt.block_on(closed_loop(make, conns, secs));
        println!(
            "conns={conns:<5} {name:<8} {:>9.0} {:>8.3} {:>8.3} {:>8}",
            r.rps, r.p50_ms, r.p99_ms, r.errors
        );
        closed.push((name.to_string(), r));
    }
    (fixed, closed)
}

/// Print how target `subject` compares with `base`: the latency it adds at
/// the fixed rate, and its closed-loop throughput as a ratio.
pub fn report(
    (fixed, closed): &(Vec<(String, Outcome)>, Vec<(String, Outcome)>),
    base: &str,
    subject: &str,
    rate: u64,
) {
    if let (Some(b), Some(t)) = (find(fixed, base), find(fixed, subject)) {
        println!(
            "at {rate}/s {subject} adds p50 {:+.3} ms, p99 {:+.3} ms over {base} ({:.3}/{:.3} vs {:.3}/{:.3})",
            t.1 - b.1,
            t.2 - b.2,
            t.1,
            t.2,
            b.1,
            b.2
        );
    }
    if let (Some(b), Some(t)) = (find(closed, base), find(closed, subject)) {
        println!(
            "closed loop: {subject} {:.0} req/s, {base} {:.0} (ratio {:.2})",
            t.0,
            b.0,
            t.0 / b.0
        );
    }
}

/// `(req/s, p50, p99)` of target `name`.
pub fn find(v: &[(String, Outcome)], name: &str) -> Option<(f64, f64, f64)> {
    v.iter()
        .find(|(k, _)| k == name)
        .map(|(_, r)| (r.rps, r.p50_ms, r.p99_ms))
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"))
}
