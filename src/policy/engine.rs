//! The live policy: the active [`PolicySet`], the threads that evaluate it,
//! and reloads that swap in a new set only once it compiles and passes its
//! own tests. One cheap handle shared by the proxy, the gate (a modified
//! call is judged again) and the admin API.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use regorus::Value;
use tokio::sync::watch;

use super::pool::{Evaluators, Judged, Recorder};
use super::{cases, Evaluation, Evaluator, PolicySet, Sources};
use crate::config::PolicyConfig;
use crate::telemetry::Metrics;

/// Why a reload kept the working policy set.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReloadError {
    /// The directory could not be read or did not compile.
    #[error("{0}")]
    Compile(String),
    /// The set's own case tables or `test_*` rules failed.
    #[error("{} policy test(s) failed: {}", .0.len(), .0.join("; "))]
    Tests(Vec<String>),
}

/// What the latest policy reload did (shown on `/readyz`).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ReloadStatus {
    /// Successful reloads since start.
    pub reloads: u64,
    /// Why the latest reload was refused, while the previous set keeps deciding.
    pub last_error: Option<String>,
    /// RFC 3339 time of the latest reload attempt.
    pub last_attempt: Option<String>,
}

/// Cheap-to-clone handle to the live policy.
#[derive(Clone)]
pub struct Engine(Arc<Shared>);

struct Shared {
    config: PolicyConfig,
    active: RwLock<Arc<PolicySet>>,
    evaluators: Evaluators,
    metrics: Metrics,
    status: Mutex<ReloadStatus>,
}

impl Engine {
    /// Compile the configured directory and start the evaluator threads.
    pub fn start(config: &PolicyConfig, metrics: Metrics) -> anyhow::Result<Engine> {
        let set = PolicySet::load(&config.dir, &config.entrypoint, config.timeout)?;
        Engine::with_set(config, set, metrics)
    }

    /// An engine serving `set` (tests and benches build sets in memory).
    pub fn with_set(
        config: &PolicyConfig,
        set: PolicySet,
        metrics: Metrics,
    ) -> anyhow::Result<Engine> {
        metrics.set_policy(set.hash(), evaluator_name(set.evaluator()));
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let evaluators = Evaluators::start(threads)
            .map_err(|e| anyhow::anyhow!("starting the policy evaluators: {e}"))?;
        Ok(Engine(Arc::new(Shared {
            config: config.clone(),
            active: RwLock::new(Arc::new(set)),
            evaluators,
            metrics,
            status: Mutex::new(ReloadStatus::default()),
        })))
    }

    /// The active policy set.
    pub fn current(&self) -> Arc<PolicySet> {
        match self.0.active.read() {
            Ok(p) => p.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Evaluate `input` against the active set, off the async workers and
    /// within its time limit; records the evaluation metrics and logs a
    /// failure (which is already a `policy_error` deny).
    pub async fn evaluate(&self, input: Value) -> (Arc<PolicySet>, Evaluation) {
        let (set, judged) = self.judge(input, None).await;
        (set, judged.evaluation)
    }

    /// [`Engine::evaluate`], with the decision's audit record committed on
    /// the evaluator thread when `recorder` makes one (see [`Evaluators::evaluate`]).
    pub async fn judge(
        &self,
        input: Value,
        recorder: Option<Recorder>,
    ) -> (Arc<PolicySet>, Judged) {
        let set = self.current();
        let judged = self
            .0
            .evaluators
            .evaluate(set.clone(), input, recorder)
            .await;
        let eval = &judged.evaluation;
        let m = &self.0.metrics;
        m.policy_eval.observe(eval.elapsed.as_secs_f64());
        if let Some(err) = &eval.error {
            let reason = eval
                .decision
                .reasons
                .first()
                .map_or("error", String::as_str);
            m.policy_errors.with_label_values(&[reason]).inc();
            tracing::warn!(error = %err, policy = set.hash(), "policy failed; denying");
        }
        (set, judged)
    }

    /// Replace the active set whole.
    pub fn replace(&self, set: PolicySet) {
        self.0
            .metrics
            .set_policy(set.hash(), evaluator_name(set.evaluator()));
        let set = Arc::new(set);
        match self.0.active.write() {
            Ok(mut p) => *p = set,
            Err(poisoned) => *poisoned.into_inner() = set,
        }
    }

    /// The latest reload's outcome.
    pub fn status(&self) -> ReloadStatus {
        match self.0.status.lock() {
            Ok(s) => s.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Compile the policy directory, run its own case tables and `test_*`
    /// rules, and swap it in only if everything passes. Blocking; returns
    /// the new hash, or why the working set was kept.
    pub fn reload(&self) -> Result<String, ReloadError> {
        let result = self.try_reload();
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let mut status = match self.0.status.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        status.last_attempt = Some(now);
        let reloads = &self.0.metrics.reloads;
        match &result {
            Ok(hash) => {
                status.reloads += 1;
                status.last_error = None;
                reloads.with_label_values(&["ok"]).inc();
                tracing::info!(policy = %hash, "policy reloaded");
            }
            Err(e) => {
                status.last_error = Some(e.to_string());
                reloads.with_label_values(&["error"]).inc();
                tracing::error!(error = %e, policy = self.current().hash(), "policy reload refused; the previous policy keeps deciding");
            }
        }
        result
    }

    fn try_reload(&self) -> Result<String, ReloadError> {
        let p = &self.0.config;
        let compile = |e: anyhow::Error| ReloadError::Compile(format!("{e:#}"));
        let with_tests = Sources::read_dir(&p.dir, true).map_err(compile)?;
        let candidate =
            PolicySet::compile(&with_tests, &p.entrypoint, p.timeout).map_err(compile)?;
        let mut results = cases::run(&candidate, &with_tests.cases).map_err(compile)?;
        results.extend(cases::run_rego_tests(&with_tests));
        let failures: Vec<String> = results
            .iter()
            .filter_map(|r| r.failure.as_ref().map(|f| format!("{}: {f}", r.name)))
            .collect();
        if !failures.is_empty() {
            return Err(ReloadError::Tests(failures));
        }
        let serving = PolicySet::load(&p.dir, &p.entrypoint, p.timeout).map_err(compile)?;
        let hash = serving.hash().to_string();
        if hash != self.current().hash() {
            self.replace(serving);
        }
        Ok(hash)
    }

    /// Reload when files in the policy directory change (polled once a
    /// second; a change is acted on once the tree is stable for one poll).
    pub async fn watch(self, stop: watch::Receiver<bool>) {
        let dir = self.0.config.dir.clone();
        let stamp = |d: PathBuf| async move {
            tokio::task::spawn_blocking(move || dir_stamp(&d))
                .await
                .ok()
        };
        let mut applied = stamp(dir.clone()).await;
        let mut seen = applied.clone();
        let mut ticker = crate::ticker::Ticker::new(Duration::from_secs(1), stop);
        while ticker.next().await {
            let now = stamp(dir.clone()).await;
            if now != seen {
                seen = now; // still changing: wait for it to settle
                continue;
            }
            if now != applied {
                applied = now;
                let engine = self.clone();
                let _ = tokio::task::spawn_blocking(move || engine.reload()).await;
            }
        }
    }
}

/// A cheap fingerprint of a directory tree: names, sizes and modification times.
pub fn dir_stamp(dir: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(path),
                Ok(m) => out.push((path, m.len(), m.modified().ok())),
                Err(_) => {}
            }
        }
    }
    out.sort();
    out
}

/// The evaluator's name for metrics and `/readyz`.
pub fn evaluator_name(e: Evaluator) -> &'static str {
    match e {
        Evaluator::Vm => "vm",
        Evaluator::Interpreter => "interpreter",
    }
}
